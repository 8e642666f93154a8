"""Errors a user can act on. The CLI prints their message on one line and exits non-zero."""


class CifarlabError(Exception):
    """Base class: something the user can fix (bad data, bad flags, missing tools)."""


class DataError(CifarlabError):
    """Missing, corrupt or malformed data set files."""


class ChecksumError(DataError):
    """A file's checksum differs from the expected one."""


class SourceError(DataError):
    """A data source could not deliver (network down, tool missing, unsafe archive)."""


class ConfigError(CifarlabError):
    """Flags or configuration that do not make sense together."""
