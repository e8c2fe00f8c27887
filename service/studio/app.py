"""The studio's HTTP API, a FastAPI app mounted on the production service (`service.py`).

POST   /datasets                    multipart: name, images (files and/or .zip), labels (CSV, optional) -> 201
GET    /datasets                    every dataset: id, name, version, images, labelled, unlabelled, labels
GET    /datasets/{id}               one of them
POST   /datasets/{id}/images        multipart: more images (and optionally labels)
POST   /datasets/{id}/labels        multipart: a labels CSV; each image a row names gets that row's labels
GET    /datasets/{id}/labels.csv    ?version=N: the labels now (or at version N), in the training CSV format
POST   /jobs/estimate               JSON job request -> label counts, images to featurise, seconds, steps
POST   /jobs                        JSON job request -> 202 {"id", "state": "queued"}
GET    /jobs                        every job, newest first
GET    /jobs/{id}                   state, stage, progress, epoch, losses, ETA, model when done, error
GET    /jobs/{id}/events            the same, as server-sent events, until the job ends
DELETE /jobs/{id}                   cancel: a queued job at once, a running one is stopped (no model left)

Labelling and suspects (`labelling_routes.py`; `model` below is the newest model a finished studio job
trained on the dataset, "NAME:VERSION", or null):
GET    /datasets/{id}/images        ?filter=all|unlabelled|suspects&label=L&page=N (from 1)&page_size=M (60,
                                    at most 500) -> {"dataset", "version", "filter", "label", "page",
                                    "page_size", "total", "labels": [every label of the dataset], "model",
                                    "images": [{"id", "name", "labels", "labelled", "suggestions": [{"label",
                                    "score", "threshold"}], "suspects": [{"label", "kind", "score",
                                    "threshold"}]}]}; by name, `suspects` in suspect rank order; suggestions
                                    only for unlabelled images (labels at or above the threshold)
GET    /datasets/{id}/images/{image_id}            one image as above + "version", "model",
                                    "history": [{"version", "labels", "source", "at"}] (oldest first)
GET    /datasets/{id}/images/{image_id}/thumbnail  JPEG, at most 256 px on its long side, long Cache-Control
PATCH  /datasets/{id}/images/{image_id}  {"add": [...], "remove": [...]} or {"labels": [...]} ->
                                    {"id", "name", "labels", "labelled": true, "version"}
POST   /datasets/{id}/images/labels {"images": [ids], "add": [...], "remove": [...]} -> {"changed", "version"}
GET    /datasets/{id}/suspects      ?model=NAME:VERSION (or NAME)&limit=N (100, at most 500) -> {"dataset",
                                    "version", "model", "total", "suspects": [{"image_id", "name", "label",
                                    "kind": "missing"|"wrong", "score", "threshold"}]}, most suspicious first
POST   /datasets/{id}/suspects/decisions  [{"image_id", "label", "decision": "accept"|"reject"}] ->
                                    {"accepted", "rejected", "version"}
POST   /datasets/{id}/retrain       -> 202 {"id", "state": "queued", "model_name"}: the newest job's request
                                    on this dataset, on the labels now (409 while that name trains)

Label changes: each request is one transaction and bumps the dataset's version once (none when nothing
changes); new labels join the dataset's list; a label name must survive the CSV export (see
`labelling.py`). Unknown dataset, image, model or version: 404 naming `id`, `image_id` (bulk:
`images[i]`; decisions: `[i].image_id`), `model` or `version`. A malformed body: 400 naming its field
(`add[2]`, `[0].decision`, ...). Suspects and suggestions use the best model's thresholds from the
manifest.

Writes (POST except /jobs/estimate, PATCH, DELETE) pass `service.server.http.guard.check_writer`. Every
refusal is `RequestError.to_dict()` ``{"error", "field"}`` with its 4xx status, as everywhere in manylabel.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException

from service.errors import RequestError
from service.server.http.guard import check_writer
from service.studio.labelling_routes import router as labelling_router
from service.studio.plan import JobSpec
from service.studio.settings import get_studio_settings
from service.studio.studio import Studio
from service.studio.web import (
    ErrorBody,
    in_thread,
    json_body,
    on_bug,
    on_http_error,
    on_request_error,
    on_validation_error,
    upload,
)

MULTIPART = {
    "requestBody": {
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "name": {"type": "string", "description": "dataset name (POST /datasets)"},
                        "images": {"type": "array", "items": {"type": "string", "format": "binary"}},
                        "labels": {"type": "string", "format": "binary", "description": "labels CSV"},
                    },
                }
            }
        }
    }
}
JOB_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": JobSpec.model_json_schema()}},
    }
}


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    studio = Studio(get_studio_settings())  # settings read and database opened here, never at import
    studio.open()
    app.state.studio = studio
    try:
        yield
    finally:
        await studio.close()


studio_app = FastAPI(
    title="manylabel studio",
    docs_url=None,  # BentoML serves /docs for the whole service, this app's routes included
    redoc_url=None,
    openapi_url=None,
    lifespan=lifespan,
    responses={"4XX": {"model": ErrorBody, "description": 'refused: {"error", "field"} names the cause'}},
    exception_handlers={
        RequestError: on_request_error,
        RequestValidationError: on_validation_error,
        HTTPException: on_http_error,
        Exception: on_bug,
    },
)


studio_app.include_router(labelling_router)


def _studio(request: Request) -> Studio:
    return request.app.state.studio


# --- datasets -------------------------------------------------------------------------------------


@studio_app.post("/datasets", status_code=201, openapi_extra=MULTIPART)
async def create_dataset(request: Request) -> Response:
    """A new dataset from images (files and/or zips) and, optionally, a labels CSV."""
    check_writer(request)
    studio = _studio(request)
    async with upload(request, fields=("name",)) as form:
        if "name" not in form.fields:
            raise RequestError("name: give the dataset a name", field="name")
        files = await in_thread(form.collect)
        if not files:
            raise RequestError("images: send image files or zips of images", field="images")
        body = await in_thread(studio.store.create, form.fields["name"], files, form.labels)
    return JSONResponse(body, status_code=201)


@studio_app.get("/datasets")
async def list_datasets(request: Request) -> Response:
    return JSONResponse({"datasets": await in_thread(_studio(request).store.list)})


@studio_app.get("/datasets/{id}")
async def get_dataset(request: Request, id: int) -> Response:
    return JSONResponse(await in_thread(_studio(request).store.summary, id))


@studio_app.post("/datasets/{id}/images", openapi_extra=MULTIPART)
async def add_images(request: Request, id: int) -> Response:
    """More images (and optionally labels) for a dataset; names it has already are reported."""
    check_writer(request)
    studio = _studio(request)
    await in_thread(studio.store.summary, id)  # 404 before reading the body
    async with upload(request) as form:
        files = await in_thread(form.collect)
        if not files:
            raise RequestError("images: send image files or zips of images", field="images")
        body = await in_thread(studio.store.add, id, files, form.labels)
    return JSONResponse(body)


@studio_app.post("/datasets/{id}/labels", openapi_extra=MULTIPART)
async def merge_labels(request: Request, id: int) -> Response:
    """Merge a labels CSV: each image a row names gets that row's labels; the others keep theirs."""
    check_writer(request)
    studio = _studio(request)
    await in_thread(studio.store.summary, id)
    async with upload(request) as form:
        if form.images:
            raise RequestError("images: send images to POST /datasets/{id}/images", field="images")
        if form.labels is None:
            raise RequestError("labels: send a labels CSV in the 'labels' field", field="labels")
        body = await in_thread(studio.store.merge_labels, id, form.labels)
    return JSONResponse(body)


@studio_app.get("/datasets/{id}/labels.csv", response_class=Response)
async def labels_csv(
    request: Request, id: int, version: int | None = Query(None, description="the labels at this version")
) -> Response:
    """The labels now, or as they were at a version of the dataset (every change bumps it)."""
    text = await in_thread(_studio(request).store.labels_csv, id, version)
    suffix = "" if version is None else f"-v{version}"
    headers = {"Content-Disposition": f'attachment; filename="dataset-{id}{suffix}-labels.csv"'}
    return Response(text, media_type="text/csv; charset=utf-8", headers=headers)


# --- jobs -----------------------------------------------------------------------------------------


@studio_app.post("/jobs/estimate", openapi_extra=JOB_BODY)
async def estimate_job(request: Request) -> Response:
    """What a job would train on and cost: label counts, images to featurise, seconds, steps."""
    spec = JobSpec.parse(await json_body(request), need_name=False)
    return JSONResponse(await in_thread(_studio(request).estimate, spec))


@studio_app.post("/jobs", status_code=202, openapi_extra=JOB_BODY)
async def start_job(request: Request) -> Response:
    """Queue a training job on a dataset as it is now; one job runs at a time."""
    check_writer(request)
    spec = JobSpec.parse(await json_body(request), need_name=True)
    job = await in_thread(_studio(request).submit, spec)
    return JSONResponse({"id": job, "state": "queued"}, status_code=202)


@studio_app.get("/jobs")
async def list_jobs(request: Request) -> Response:
    return JSONResponse({"jobs": await in_thread(_studio(request).book.list)})


@studio_app.get("/jobs/{id}")
async def get_job(request: Request, id: int) -> Response:
    return JSONResponse(_studio(request).book.get(id))


@studio_app.get("/jobs/{id}/events", response_class=StreamingResponse)
async def job_events(request: Request, id: int) -> Response:
    """Server-sent events: the job's view (as GET /jobs/{id}) at once and at every change, until it ends."""
    book = _studio(request).book
    book.get(id)  # 404 before the stream starts

    async def stream() -> AsyncIterator[str]:
        async for view in book.changes(id):
            yield ": keep-alive\n\n" if view is None else f"data: {json.dumps(view)}\n\n"

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(stream(), media_type="text/event-stream", headers=headers)


@studio_app.delete("/jobs/{id}")
async def cancel_job(request: Request, id: int) -> Response:
    """Cancel a job: answered once it has stopped (state cancelled); 409 for a job that has ended."""
    check_writer(request)
    studio = _studio(request)
    state = studio.book.get(id)["state"]
    if state in ("done", "failed"):
        raise RequestError(f"id: job {id} has already ended ({state})", field="id", status=409)
    await studio.runner.cancel(id)
    return JSONResponse(studio.book.get(id))
