"""Errors a user can act on. Each message names the thing that is wrong and what to do."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pydantic import ValidationError


class ManylabelError(Exception):
    """Base class for every error manylabel raises on purpose."""


class RequestError(ManylabelError):
    """A request manylabel refuses, for every route and the CLIs alike.

    `status` is the HTTP status, `field` the form / query / body field at fault, `file` the uploaded
    file (or zip member) when one is to blame. The one HTTP body shape is `to_dict()`:
    ``{"error": message, "field": name or null, "file": name}`` (``file`` only when known).
    """

    status: int = 400
    field: str | None = None
    retry_after: int | None = None  # seconds, sent as Retry-After (503 answers)

    def __init__(
        self, message: str, *, field: str | None = None, file: str | None = None, status: int | None = None
    ) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status
        if field is not None:
            self.field = field
        self.file = file

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"error": str(self), "field": self.field}
        if self.file is not None:
            body["file"] = self.file
        return body


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


class ThresholdError(RequestError):
    """A threshold is not a number in [0, 1] or names an unknown label."""

    field = "thresholds"


class CustomThresholdsError(RequestError):
    """custom_thresholds.json is damaged or cannot be written: the server's fault, not the request's."""

    status = 503
    field = "custom_thresholds"


class BatchError(ManylabelError):
    """A batch run cannot start: bad options, a damaged journal, another client on the same output."""


def first_error(exc: ValidationError, *, show_input: bool = True) -> tuple[str, str]:
    """(dotted location, message) of a pydantic error's first problem: what a user needs to fix first.

    With `show_input`, a scalar input is quoted in the message, cut to 100 characters."""
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "value"
    given = first.get("input")
    scalar = show_input and given is not None and not isinstance(given, dict | list)
    shown = f" (got {str(given)[:100]!r})" if scalar else ""
    return where, first["msg"] + shown
