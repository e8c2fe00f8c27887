"""The labelling and suspects routes of the studio app (`app.py` includes them; the contract is there).

Reads run in a thread (SQLite, the model's records); suggestions are scored on the event loop by the
service's own model (`suggestions.score`). Writes pass `check_writer` first, then one transaction each.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response

from service.errors import RequestError
from service.inspect.records import MAX_PAGE_SIZE
from service.server.http.guard import check_writer
from service.studio.labelling import Current, edit, history, images_by_id, page_of, parse_change
from service.studio.studio import Studio
from service.studio.suggestions import cached_scores, keep_scores, score, suggested
from service.studio.suspects import (
    Open,
    Ranking,
    choose_model,
    decide,
    open_suspects,
    parse_decisions,
    trained_models,
)
from service.studio.web import in_thread, json_body

router = APIRouter()

DEFAULT_PAGE_SIZE = 60
DEFAULT_SUSPECTS = 100
MAX_PAGE = 1_000_000
THUMBNAIL_CACHE = "public, max-age=31536000, immutable"  # an image id's content never changes


def _studio(request: Request) -> Studio:
    return request.app.state.studio


@dataclass
class Listing:
    """What one request shows: images, and the model's open suspects and scores for them."""

    dataset: int
    version: int
    labels: list[str]
    ranking: Ranking | None
    images: list[Current]
    suspects: dict[int, list[Open]] = field(default_factory=dict)
    scores: dict[str, list[float]] = field(default_factory=dict)  # sha256 -> model scores
    total: int = 0

    def image(self, im: Current) -> dict[str, Any]:
        unlabelled = self.ranking is not None and not im.labelled
        return {
            "id": im.id,
            "name": im.name,
            "labels": sorted(im.labels),
            "labelled": im.labelled,
            "suggestions": suggested(self.ranking, self.scores.get(im.sha256)) if unlabelled else [],
            "suspects": [s.short() for s in self.suspects.get(im.id, [])],
        }

    @property
    def model(self) -> str | None:
        return self.ranking.tag if self.ranking is not None else None


def _listing(
    studio: Studio, dataset: int, filter: str, label: str | None, page: int, page_size: int
) -> Listing:
    summary = studio.store.summary(dataset)  # 404 for an unknown dataset
    if label is not None and label not in summary["labels"]:
        raise RequestError(f"label: {label[:100]!r} is not a label of dataset {dataset}", field="label")
    ranking = studio.rankings.newest(studio.db, dataset)
    opened = open_suspects(studio.db, dataset, ranking) if ranking is not None else []
    offset = (page - 1) * page_size
    if filter == "suspects":
        having = _having(studio, dataset, label) if label is not None else None
        order = list(dict.fromkeys(s.image_id for s in opened if having is None or s.image_id in having))
        total, images = len(order), images_by_id(studio.db, dataset, order[offset : offset + page_size])
    else:
        total, images = page_of(
            studio.db, dataset, unlabelled=filter == "unlabelled", label=label, offset=offset, limit=page_size
        )
    listing = Listing(dataset, summary["version"], sorted(summary["labels"]), ranking, images, total=total)
    shown = {im.id for im in images}
    for s in opened:
        if s.image_id in shown:
            listing.suspects.setdefault(s.image_id, []).append(s)
    return listing


def _having(studio: Studio, dataset: int, label: str) -> set[int]:
    rows = studio.db.all(
        "SELECT i.id FROM images i JOIN image_labels l ON l.dataset = i.dataset AND l.name = i.name "
        "WHERE i.dataset = ? AND l.label = ?",
        (dataset, label),
    )
    return {r[0] for r in rows}


async def _add_scores(studio: Studio, listing: Listing) -> None:
    """The model's scores of the listing's unlabelled images: cached, else scored now and cached."""
    if listing.ranking is None:
        return
    tag = listing.ranking.tag
    shas = list(dict.fromkeys(im.sha256 for im in listing.images if not im.labelled))
    listing.scores = await in_thread(cached_scores, studio.db, tag, shas)
    missing = [sha for sha in shas if sha not in listing.scores]
    if not missing:
        return
    contents = await in_thread(lambda: {sha: studio.store.blob_path(sha).read_bytes() for sha in missing})
    try:
        new = await score(listing.ranking, contents)
    except RequestError as exc:
        if exc.status != 404:
            raise
        return  # the model left the store since: no suggestions
    await in_thread(keep_scores, studio.db, tag, new)
    listing.scores.update(new)


# --- reading --------------------------------------------------------------------------------------------


@router.get("/datasets/{id}/images")
async def list_images(
    request: Request,
    id: int,
    filter: Literal["all", "unlabelled", "suspects"] = "all",
    label: str | None = None,
    page: int = Query(1, ge=1, le=MAX_PAGE),
    page_size: int = Query(DEFAULT_PAGE_SIZE, ge=1, le=MAX_PAGE_SIZE),
) -> Response:
    """A page of the dataset's images (by name; `suspects`: in suspect rank order) with their labels,
    the newest model's suggestions (unlabelled images) and open suspects (labelled ones)."""
    studio = _studio(request)
    listing = await in_thread(_listing, studio, id, filter, label, page, page_size)
    await _add_scores(studio, listing)
    body = {
        "dataset": id,
        "version": listing.version,
        "filter": filter,
        "label": label,
        "page": page,
        "page_size": page_size,
        "total": listing.total,
        "labels": listing.labels,
        "model": listing.model,
        "images": [listing.image(im) for im in listing.images],
    }
    return JSONResponse(body)


def _one(studio: Studio, dataset: int, image_id: int) -> tuple[Listing, list[dict]]:
    summary = studio.store.summary(dataset)
    (image,) = images_by_id(studio.db, dataset, [image_id])
    ranking = studio.rankings.newest(studio.db, dataset)
    listing = Listing(dataset, summary["version"], sorted(summary["labels"]), ranking, [image])
    if ranking is not None:
        listing.suspects[image_id] = [
            s for s in open_suspects(studio.db, dataset, ranking) if s.image_id == image_id
        ]
    return listing, history(studio.db, dataset, image.name)


@router.get("/datasets/{id}/images/{image_id}")
async def get_image(request: Request, id: int, image_id: int) -> Response:
    """One image as the listing shows it, plus its label history (oldest first)."""
    studio = _studio(request)
    listing, events = await in_thread(_one, studio, id, image_id)
    await _add_scores(studio, listing)
    body = {**listing.image(listing.images[0]), "version": listing.version, "model": listing.model}
    return JSONResponse({**body, "history": events})


@router.get("/datasets/{id}/images/{image_id}/thumbnail", response_class=Response)
async def get_thumbnail(request: Request, id: int, image_id: int) -> Response:
    """A JPEG at most 256 px on its long side; cacheable for long (an image's content never changes)."""
    sha, data = await in_thread(_studio(request).thumbnail, id, image_id)
    headers = {"Cache-Control": THUMBNAIL_CACHE, "ETag": f'"{sha}"'}
    return Response(data, media_type="image/jpeg", headers=headers)


@router.get("/datasets/{id}/suspects")
async def list_suspects(
    request: Request,
    id: int,
    model: str | None = None,
    limit: int = Query(DEFAULT_SUSPECTS, ge=1, le=MAX_PAGE_SIZE),
) -> Response:
    """The open suspected label errors of a model trained on the dataset (default: the newest), ranked."""
    studio = _studio(request)

    def work() -> dict[str, Any]:
        version = studio.store.summary(id)["version"]
        ranking = studio.rankings.get(choose_model(studio.db, id, model))
        opened = open_suspects(studio.db, id, ranking)
        items = [s.item() for s in opened[:limit]]
        return {
            "dataset": id,
            "version": version,
            "model": ranking.tag,
            "total": len(opened),
            "suspects": items,
        }

    return JSONResponse(await in_thread(work))


# --- writes ---------------------------------------------------------------------------------------------


@router.patch("/datasets/{id}/images/{image_id}")
async def edit_image(request: Request, id: int, image_id: int) -> Response:
    """`{"add": [...], "remove": [...]}` or `{"labels": [...]}`: the image's labels after, and the version."""
    check_writer(request)
    change, _ = parse_change(await json_body(request))
    studio = _studio(request)
    after, _, version = await in_thread(edit, studio.db, id, [image_id], change, "edit", ["image_id"])
    image = after[0]
    return JSONResponse(
        {
            "id": image.id,
            "name": image.name,
            "labels": sorted(image.labels),
            "labelled": True,
            "version": version,
        }
    )


@router.post("/datasets/{id}/images/labels")
async def edit_images(request: Request, id: int) -> Response:
    """`{"images": [ids], "add": [...], "remove": [...]}` for many images at once: one version."""
    check_writer(request)
    change, ids = parse_change(await json_body(request), bulk=True)
    studio = _studio(request)
    _, changed, version = await in_thread(edit, studio.db, id, list(ids), change, "bulk", list(ids.values()))
    return JSONResponse({"changed": changed, "version": version})


@router.post("/datasets/{id}/suspects/decisions")
async def decide_suspects(request: Request, id: int) -> Response:
    """`[{"image_id", "label", "decision": "accept"|"reject"}]`: accepts edit labels; all are kept."""
    check_writer(request)
    decisions = parse_decisions(await json_body(request))
    studio = _studio(request)

    def work() -> dict[str, int]:
        studio.store.summary(id)  # 404 for an unknown dataset
        models = trained_models(studio.db, id)
        return decide(studio.db, id, decisions, models[0] if models else None)

    return JSONResponse(await in_thread(work))


@router.post("/datasets/{id}/retrain", status_code=202)
async def retrain(request: Request, id: int) -> Response:
    """A job with the newest job's request on this dataset, on its labels now (the model's next version)."""
    check_writer(request)
    job, name = await in_thread(_studio(request).retrain, id)
    return JSONResponse({"id": job, "state": "queued", "model_name": name}, status_code=202)
