"""Errors a user can act on. The app prints them as one line and exits non-zero, before expensive work."""


class UserError(RuntimeError):
    """A configuration, input or environment problem, reported as one line without a traceback."""


class WeightsNotFoundError(UserError):
    """Model or metric weights are not available locally (and may not be downloaded)."""
