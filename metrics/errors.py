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


class AuthenticationError(MetricsError):
    """No credentials, or credentials that are not valid (unknown key, bad or expired token)."""


class PermissionDeniedError(MetricsError):
    """Valid credentials whose role does not allow the action, or a client address not allowed."""


class RequestTooLargeError(ValidationError):
    """A request body above the configured limit."""


class UnsupportedMediaTypeError(ValidationError):
    """A request body in a content type or encoding the endpoint does not take."""


class RateLimitedError(MetricsError):
    """Too many requests for one key; ``retry_after`` says when to try again (seconds)."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ScrapeError(MetricsError):
    """A scrape target could not be read: unreachable, HTTP error, too slow or large, or not the exposition format."""


class DeliveryError(MetricsError):
    """A notification could not be delivered (channel down, refused, misconfigured); the outbox retries it."""

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent  # retrying cannot help (bad credentials, a refused recipient)


class NotFoundError(MetricsError):
    """The thing asked for does not exist (a rule, an alert, a silence)."""


class ConflictError(MetricsError):
    """The request contradicts the current state (a rule defined in the rules file, an alert not firing)."""
