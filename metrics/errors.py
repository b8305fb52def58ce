"""Narrow exceptions raised by domain code; the CLI and HTTP API translate them."""

from __future__ import annotations


class MetricsError(Exception):
    """Base class of every error this package raises on purpose."""


class ConfigError(MetricsError):
    """A setting (environment variable or config file entry) has a bad value."""


class ValidationError(MetricsError):
    """Input data was rejected; the message names the field and the reason."""


class StorageError(MetricsError):
    """The lake or the write-ahead log could not be read or written."""


class QueryError(MetricsError):
    """A query was malformed or could not be answered."""


class UnsupportedStorageError(ConfigError):
    """An unknown storage backend was requested."""
