"""Error types raised on bad input; messages name the file, column or field at fault."""


class InfluMixError(Exception):
    """Base class for all user-facing influmix errors."""


class ConfigError(InfluMixError):
    """The configuration is invalid (unknown key, wrong type, out-of-range value)."""


class CorpusError(InfluMixError):
    """A corpus or target shard is missing, unreadable, corrupt or lacks a required column."""


class StorageError(InfluMixError):
    """A storage location (local path or s3:// URI) could not be read or written."""


class ModelError(InfluMixError):
    """A model checkpoint or tokenizer could not be loaded or is unsuitable."""


def is_transient(exc: BaseException) -> bool:
    """Whether retrying the work that raised ``exc`` can help: storage and other I/O errors, lost workers
    and unknown failures can pass; an influmix input, config or model error (anything but
    :class:`StorageError`) fails the same way every time, so it is not retried."""
    if isinstance(exc, StorageError):
        return True
    return not isinstance(exc, InfluMixError)
