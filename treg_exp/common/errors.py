"""Errors a user can act on. The app prints them as one line and exits non-zero, before expensive work."""


class UserError(RuntimeError):
    """A configuration, input or environment problem, reported as one line without a traceback."""


class WeightsNotFoundError(UserError):
    """Model or metric weights are not available locally (and may not be downloaded)."""


class OutputError(UserError):
    """The run directory cannot be written (read-only, missing, a file in a folder's place, disk full)."""


def find_user_error(error: BaseException) -> UserError | None:
    """The :class:`UserError` behind ``error`` (Hydra's ``instantiate`` wraps what constructors raise), if any."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, UserError):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None
