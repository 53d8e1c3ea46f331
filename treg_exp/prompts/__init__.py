"""Where each image's prompt comes from (``conf/prompt/``): given, class name, mismatch, none, or a caption."""
