"""The studio of one server process: its database, datasets, jobs and job runner, opened together.

Opened by the studio app's lifespan (never at import time) inside the BentoML worker, closed when
the server stops. The routes (`routes.py`) call these methods; the slow ones in a thread.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import uuid
from pathlib import Path

from service.errors import RequestError
from service.server.settings import get_settings
from service.studio.datasets import DatasetStore
from service.studio.db import Database
from service.studio.export import export_job, to_featurise
from service.studio.jobs import JobBook
from service.studio.labelling import images_by_id
from service.studio.plan import Estimate, JobSpec, Plan, estimate, plan
from service.studio.runner import Runner
from service.studio.settings import StudioSettings
from service.studio.suggestions import thumbnail
from service.studio.suspects import Rankings

logger = logging.getLogger("bentoml.manylabel")


class Studio:
    def __init__(self, settings: StudioSettings) -> None:
        self.settings = settings
        self.db = Database(settings.database)
        self.store = DatasetStore(self.db, settings.images, max_pixels=get_settings().max_pixels)
        self.book = JobBook(self.db)
        self.runner = Runner(self.book, settings.data, settings.cache)
        self.rankings = Rankings()  # suspects of the models trained on the datasets, computed once each
        self._submitting = threading.Lock()

    def open(self) -> None:
        """Start the job runner (marks jobs a previous server left unfinished failed); tidy uploads."""
        try:
            self.runner.start()
        except BaseException:
            self.db.close()
            raise
        self.store.sweep()
        logger.info("studio: data in %s", self.settings.data)

    async def close(self) -> None:
        await self.runner.stop()
        self.db.close()

    # --- jobs -----------------------------------------------------------------------------------

    def _plan(self, spec: JobSpec) -> tuple[Plan, Estimate]:
        snapshot = self.store.snapshot(self.store.find(spec.dataset))
        p = plan(snapshot, spec)
        return p, estimate(p, spec, to_featurise(self.db, p.shas), self.book.history())

    def estimate(self, spec: JobSpec) -> dict:
        """POST /jobs/estimate."""
        return self._plan(spec)[1].body

    def submit(self, spec: JobSpec) -> int:
        """POST /jobs: check, export the dataset now into the job folder, queue the job."""
        assert spec.name is not None
        with self._submitting:  # the name check and the insert, as one step
            self.book.check_name_free(spec.name)
            p, est = self._plan(spec)
            jobs = self.settings.jobs
            staging = jobs / f".new-{uuid.uuid4().hex}"
            export_job(self.store, p, est, spec.minutes * 60, staging)
            view = {"stage": "queued", "progress": 0.0, "eta_s": est.body["seconds"]}
            view["to_featurise"] = est.body["to_featurise"]
            request = spec.model_dump(exclude_none=True)
            try:
                # The folder gets its job's name before the row commits: the runner never sees a
                # queued job without its folder.
                job = self.book.add(
                    p.snapshot.id,
                    p.snapshot.version,
                    spec.name,
                    request,
                    view,
                    before_commit=lambda job_id: _move(staging, self.runner.folder(job_id)),
                )
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
        self.runner.submitted()
        return job

    def retrain(self, dataset: int) -> tuple[int, str]:
        """POST /datasets/{id}/retrain: the newest job's request on this dataset again, on its labels now."""
        self.store.summary(dataset)  # 404 for an unknown dataset
        row = self.db.one("SELECT spec FROM jobs WHERE dataset = ? ORDER BY id DESC LIMIT 1", (dataset,))
        if row is None:
            raise RequestError(
                f"id: dataset {dataset} has had no training job to repeat; start one with POST /jobs",
                field="id",
                status=404,
            )
        spec = JobSpec.parse({**json.loads(row["spec"]), "dataset": dataset}, need_name=True)
        assert spec.name is not None
        return self.submit(spec), spec.name

    def folder(self, job: int) -> Path:
        return self.runner.folder(job)

    # --- images ---------------------------------------------------------------------------------

    def thumbnail(self, dataset: int, image: int) -> tuple[str, bytes]:
        """(sha256, JPEG) of an image's thumbnail, made once per content (see `suggestions.py`)."""
        self.store.summary(dataset)
        (found,) = images_by_id(self.db, dataset, [image])
        folder = self.settings.data / "thumbnails"
        data = thumbnail(
            folder, self.store.blob_path(found.sha256), found.sha256, max_pixels=self.store.max_pixels
        )
        return found.sha256, data


def _move(staging: Path, folder: Path) -> None:
    if folder.exists():  # left by a database that was removed since: the new job's id owns it now
        shutil.rmtree(folder)
    os.rename(staging, folder)
