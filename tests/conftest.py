"""Test-wide settings: never touch the network, keep runs small."""

import os

# No test may reach the Hugging Face Hub or W&B servers; real-weight paths must fail fast instead.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TQDM_DISABLE", "1")
