"""User-facing errors: one line that names the problem and the fix, never a stack of library internals."""
import contextlib


class MedexpError(Exception):
    """A problem with the user's input or config. The entry points print its message alone and exit 2."""


class DataError(MedexpError):
    """Missing, unreadable or inconsistent data (paths, keys, shapes, label ranges)."""


class ConfigError(MedexpError):
    """A config value that composes but cannot work (e.g. a metric name that is never logged)."""


@contextlib.contextmanager
def unwrapped_user_errors():
    """Raise a ``MedexpError`` that a library wrapped in its own exception as itself: Hydra's ``instantiate`` wraps
    errors of the constructors it calls ("Error in call to target ..."), MONAI those of transforms ("applying
    transform ..."); the user should read our one line, not theirs around it."""
    try:
        yield
    except MedexpError:
        raise
    except Exception as exc:
        cause = exc.__cause__
        while cause is not None and not isinstance(cause, MedexpError):
            cause = cause.__cause__
        if cause is None:
            raise
        raise cause from None
