"""The one /predict path: typed options -> thresholds -> scores -> a JSON answer or a bundle.

Three callers, one function (`answer`):
  * HTTP: `http.predict.PredictRoutes` parses the multipart form; `options_from_form` turns its text
    fields into `PredictOptions` (JSON numbers and objects decoded, then pydantic-validated);
  * BentoML's API methods (the OpenAPI page, BentoML's client, in-process `ManyLabel().predict(...)`)
    build `PredictOptions` from their typed arguments directly;
  * `manylabel predict` builds them from its flags and runs `answer` in its own event loop.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from service.bundles import spool_bundle
from service.errors import RequestError, first_error
from service.server.batcher import OverloadedError
from service.server.http.predict import Reply
from service.server.http.uploads import IMAGES_FIELD, InputFile
from service.server.predictor import Predictor
from service.thresholds import check_threshold

MAX_JSON_DEPTH = 4  # {"label": 0.4} is depth 2; deeper nesting is refused before json.loads recurses


class PredictOptions(BaseModel):
    """The fields of /predict and /predict_bundle besides `images`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str | None = Field(
        None, max_length=300, description="stored model NAME or NAME:VERSION (default: the one served)"
    )
    which: Literal["best", "last"] = Field("best", description="best (lowest validation loss) or last")
    precision: Literal["fp32", "int8"] | None = Field(
        None, description="fp32 or int8 graph (default: the served model's, see GET /model precision)"
    )
    # Values in [0, 1] are checked by `service.thresholds`, the one rule, with its messages.
    threshold: float | None = Field(None, strict=True, description="one threshold in [0, 1] for every label")
    thresholds: dict[str, Any] | None = Field(
        None, description='JSON object label -> threshold in [0, 1], e.g. {"cat": 0.4}; others keep theirs'
    )

    @classmethod
    def checked(cls, values: Mapping[str, Any]) -> PredictOptions:
        """Validate typed values; RequestError naming the first bad field."""
        try:
            return cls.model_validate(dict(values))
        except ValidationError as exc:
            field, message = first_error(exc)
            raise RequestError(f"{field}: {message}", field=field) from None


class BundleOptions(PredictOptions):
    """/predict_bundle's fields: /predict's and the file format."""

    format: Literal["zip", "json", "csv"] = Field("zip", description="bundle file format")


def options_from_form(fields: Mapping[str, list[str]], *, bundle: bool) -> PredictOptions:
    """The options of an HTTP form: text values, JSON-decoded where a number or object is expected.

    Values may be plain (`best`, `0.5`) or JSON strings (`"best"`), as BentoML's client sends them.
    """
    kind = BundleOptions if bundle else PredictOptions
    allowed = set(kind.model_fields)
    values: dict[str, Any] = {}
    for name, given in fields.items():
        if name not in allowed:
            raise RequestError(
                f"unknown form field {name!r}; this endpoint takes {sorted(allowed | {IMAGES_FIELD})}",
                field=name,
            )
        if len(given) > 1:
            raise RequestError(f"form field {name!r} is given {len(given)} times; give it once", field=name)
        raw = given[0].strip()
        values[name] = _json(name, raw) if name in ("threshold", "thresholds") else _text(raw)
    return kind.checked(values)


def _json(name: str, raw: str) -> Any:
    depth = max(raw.count("{"), raw.count("["))
    if depth > MAX_JSON_DEPTH:
        raise RequestError(f"{name}: nested {depth} deep; send a flat object label -> threshold", field=name)
    try:
        value = json.loads(raw)
    except ValueError:
        raise RequestError(f"{name}: {raw[:100]!r} is not valid JSON or a number", field=name) from None
    if name == "threshold":
        return check_threshold(name, value, shown=raw)
    if not isinstance(value, dict):
        example = '{"cat": 0.4}'
        raise RequestError(f"{name}: {raw[:100]!r} is not a JSON object; send e.g. {example}", field=name)
    return value


def _text(raw: str) -> str:
    if len(raw) >= 2 and raw[0] == raw[-1] == '"':
        try:
            decoded = json.loads(raw)
        except ValueError:
            return raw
        return decoded if isinstance(decoded, str) else raw
    return raw


async def answer(
    predictor: Predictor,
    options: PredictOptions,
    files: Sequence[InputFile],
    alone: Callable[[], bool] | None = None,
) -> Reply:
    """One predict request. Raises RequestError for a request to refuse; 503 when overloaded.
    `alone`: whether it is the only request in progress (`Predictor.predict_async`)."""
    which = options.which
    thresholds = predictor.thresholds(which, threshold=options.threshold, overrides=options.thresholds)
    try:
        result = await predictor.predict_async(
            files, which=options.which, thresholds=thresholds, precision=options.precision, alone=alone
        )
    except OverloadedError as exc:
        return Reply.json(503, {"error": str(exc), "field": None}, headers=(("Retry-After", "1"),))
    body = result.to_dict()
    if not isinstance(options, BundleOptions):
        return Reply.json(200, body)
    images = [f.data for f in files]
    max_bytes = predictor.settings.max_bundle_bytes
    bundle = await asyncio.to_thread(spool_bundle, options.format, body, images, max_bytes=max_bytes)
    disposition = f'attachment; filename="{bundle.filename}"'
    return Reply(200, b"", bundle.media_type, (("Content-Disposition", disposition),), stream=bundle)
