"""Exceptions for mistakes a user can make. The CLI prints them as one line and exits 2."""


class GatedSAEError(Exception):
    """Base class: bad input, with a message naming the bad value and what is accepted."""


class ConfigError(GatedSAEError):
    """An option, size, rate or name that is not accepted."""


class DataError(GatedSAEError):
    """Missing, corrupt or unusable input data (files, tensors, caches)."""


class WriteError(GatedSAEError):
    """An output that could not be written for want of space: a full disk or quota, or a
    file larger than the file system or a file-size limit allows."""


def check_positive_int(name: str, value: object) -> int:
    """`value` if it is an integer >= 1 (a bool is not), else a ConfigError naming `name`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    return value
