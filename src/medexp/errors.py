"""User-facing errors: one line that names the problem and the fix, never a stack of library internals."""


class MedexpError(Exception):
    """A problem with the user's input or config. The entry points print its message alone and exit 2."""


class DataError(MedexpError):
    """Missing, unreadable or inconsistent data (paths, keys, shapes, label ranges)."""


class ConfigError(MedexpError):
    """A config value that composes but cannot work (e.g. a metric name that is never logged)."""
