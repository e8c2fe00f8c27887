"""Suggestions for unlabelled images, and thumbnails of a dataset's images.

Suggestions are the labels the dataset's newest model scores at or above its thresholds (the best
model's, from the manifest, as for the suspects). Unlabelled images are not in the model's records,
so they are scored by the service's own open model (`service.server.models.Models`: its onnxruntime
sessions, adaptive batching and the manifest's preprocessing, exactly as /predict scores), only for
the page asked for, and each content once per model: the scores are kept in SQLite
(`suggestion_scores`: model, sha256 -> JSON list aligned with the model's labels).

Thumbnails are JPEGs at most `THUMBNAIL_PX` on the long side, made by
`service.preprocess.thumbnail_jpeg` (decoded as training and serving decode) from the stored content
on first use and kept under the data folder by content hash (written atomically), so the
URL of an image's thumbnail can be cached by browsers for long.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import bentoml

from service.errors import ImageTooLargeError, InvalidImageError, RequestError
from service.files import atomic_write_bytes
from service.preprocess import thumbnail_jpeg
from service.server.batcher import OverloadedError
from service.server.http.uploads import InputFile
from service.studio.db import Database
from service.studio.suspects import Ranking

logger = logging.getLogger("bentoml.manylabel")

THUMBNAIL_PX = 256
THUMBNAIL_QUALITY = 85


# --- suggestions ------------------------------------------------------------------------------------


def cached_scores(db: Database, tag: str, shas: Sequence[str]) -> dict[str, list[float]]:
    if not shas:
        return {}
    marks = ",".join("?" * len(shas))
    rows = db.all(
        f"SELECT sha256, scores FROM suggestion_scores WHERE model = ? AND sha256 IN ({marks})", (tag, *shas)
    )
    return {r[0]: json.loads(r[1]) for r in rows}


def keep_scores(db: Database, tag: str, scores: Mapping[str, list[float]]) -> None:
    with db.transaction() as tx:
        tx.executemany(
            "INSERT OR REPLACE INTO suggestion_scores (model, sha256, scores) VALUES (?, ?, ?)",
            [(tag, sha, json.dumps(values)) for sha, values in scores.items()],
        )


async def score(ranking: Ranking, images: Mapping[str, bytes]) -> dict[str, list[float]]:
    """sha256 -> the model's best scores (aligned with `ranking.labels`) of each image content.

    Runs on the service's event loop; an image that does not decode is logged and left out."""
    if not images:
        return {}
    models = bentoml.get_current_service().models
    async with models.use(ranking.tag) as served:
        predictor = served.predictor
        results = await asyncio.gather(
            *(predictor.predict_async([InputFile(sha, data)], which="best") for sha, data in images.items()),
            return_exceptions=True,
        )
    out = {}
    for sha, result in zip(images, results, strict=True):
        if isinstance(result, OverloadedError):
            error = RequestError(f"the server is busy scoring images ({result}); try again", status=503)
            error.retry_after = 1
            raise error
        if isinstance(result, RequestError):
            logger.warning("studio: image %s not scored for suggestions: %s", sha, result)
            continue
        if isinstance(result, BaseException):
            raise result
        scores = result.images[0].scores
        out[sha] = [float(scores[label]) for label in ranking.labels]
    return out


def suggested(ranking: Ranking, scores: list[float] | None) -> list[dict[str, Any]]:
    """The labels scored at or above their thresholds, highest score first."""
    if scores is None:
        return []
    rows = [
        {"label": label, "score": round(s, 6), "threshold": round(float(t), 6)}
        for label, s, t in zip(ranking.labels, scores, ranking.thresholds, strict=True)
        if s >= t
    ]
    return sorted(rows, key=lambda r: (-r["score"], r["label"]))


# --- thumbnails ---------------------------------------------------------------------------------------


def thumbnail(folder: Path, blob: Path, sha256: str, *, max_pixels: int) -> bytes:
    """The JPEG thumbnail of a stored content: from the cache, else made now and cached."""
    path = folder / sha256[:2] / f"{sha256}.jpg"
    try:
        return path.read_bytes()
    except FileNotFoundError:
        pass
    try:
        data = thumbnail_jpeg(
            blob, size=THUMBNAIL_PX, quality=THUMBNAIL_QUALITY, name=sha256, max_pixels=max_pixels
        )
    except ImageTooLargeError as exc:
        raise RequestError(f"image_id: {exc}", field="image_id", status=413) from None
    except (InvalidImageError, OSError) as exc:
        # Uploads were decoded once before they were kept, so this is a damaged store, not the request.
        logger.warning("studio: no thumbnail of %s: %s", sha256, exc)
        raise RequestError(
            f"image_id: the stored image cannot be read ({exc})", field="image_id", status=404
        ) from None
    atomic_write_bytes(path, data)
    return data
