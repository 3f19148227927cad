"""The project's exception types, in one leaf module every layer can import.

Each names the bad value and where it came from (a config key and its file or override, a storage path and its
endpoint, an image and why it cannot be used).
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration value is unknown, of the wrong type or out of range."""


class StorageError(RuntimeError):
    """A storage operation failed after the configured retries; the message names the endpoint and path."""


class ImageDecodeError(ValueError):
    """An image cannot be used; ``reason`` is a short code for reports, the message says why."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
