"""What a batch run is asked to do: `BatchOptions`, the journal header it pins, the form it sends."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from service.batch.files import Shard
from service.batch.http import RetryPolicy
from service.batch.journal import JOURNAL_VERSION
from service.batch.outputs import Format


@dataclass(frozen=True)
class BatchOptions:
    url: str  # service base URL, e.g. http://manylabel
    images: Path  # a folder (walked recursively) or one image file
    output: Path  # folder for the journal and the final file
    format: Format = "json"
    concurrency: int = 4  # requests in flight
    per_request: int = 4  # images per request (measured: see the README's scaling note)
    max_request_bytes: int = 16 << 20  # a request holds fewer images when they are large
    shard: Shard = Shard()
    which: Literal["best", "last"] = "best"  # the model's best or last export
    model: str | None = None  # a stored model, NAME or NAME:VERSION; None: the one the service serves
    precision: Literal["auto", "fp32", "int8"] = "auto"  # the graph; auto: the service's default
    threshold: float | None = None
    thresholds: dict[str, float] | None = None
    retry: RetryPolicy = RetryPolicy()
    timeout_s: float = 120.0  # per request
    retry_failed: bool = False  # also resend images a previous run recorded as refused (4xx, too large)
    max_file_bytes: int | None = None  # larger files fail unread; None: the service's max_request_bytes

    def header(self) -> dict[str, Any]:
        """The journal's first record: the options a rerun must repeat to add to the same output."""
        return {
            "kind": "header",
            "journal": JOURNAL_VERSION,
            "images": str(self.images.resolve()),
            "shard": str(self.shard),
            "which": self.which,
            "model": self.model,
            "precision": None if self.precision == "auto" else self.precision,  # as journals before it
            "threshold": self.threshold,
            "thresholds": self.thresholds,
        }

    def form_fields(self) -> dict[str, str]:
        """The `/predict` form fields besides the images."""
        fields = {"which": self.which}
        if self.model is not None:
            fields["model"] = self.model
        if self.precision != "auto":
            fields["precision"] = self.precision
        if self.threshold is not None:
            fields["threshold"] = repr(float(self.threshold))
        if self.thresholds is not None:
            fields["thresholds"] = json.dumps(self.thresholds)
        return fields
