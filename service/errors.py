"""Errors a user can act on. Each message names the thing that is wrong and what to do."""

from __future__ import annotations


class ManylabelError(Exception):
    """Base class for every error manylabel raises on purpose."""


class InvalidImageError(ManylabelError):
    """A file is not an image manylabel can read (corrupt, truncated, unknown format)."""


class ImageTooLargeError(InvalidImageError):
    """An image has more pixels than the configured limit (decompression-bomb guard)."""


class ManifestError(ManylabelError):
    """A model manifest is missing, malformed, of an unknown schema, or its files do not match."""


class ModelNotFoundError(ManylabelError):
    """No model of that name/version is in the BentoML model store."""


class ArchiveError(ManylabelError):
    """A .zip is unsafe (path traversal, bomb) or unreadable."""


class ThresholdError(ManylabelError):
    """A threshold is not a number in [0, 1] or names an unknown label."""


class BatchError(ManylabelError):
    """A batch run cannot start: bad options, a damaged journal, another client on the same output."""
