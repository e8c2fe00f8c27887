"""A job's folder and a job's models: the dataset exported for `manylabel train`, and the store after.

`jobs/<id>/` holds what the child trains on, made when the job is submitted, so a job trains on the
dataset version the user saw when starting it:
  images/<name>     hard links to the stored contents (a copy across filesystems), under their names
  labels.csv        every labelled image with its kept labels (`labels_csv.write_labels`)
  validation.csv    the images named by `val_images`, when given (`manylabel train --val-labels`)
  plan.json         what the estimate expected (progress shares), the contents it trains on
  work/             `manylabel train --workdir`: progress.jsonl, then the model files
  job.log           the child's output
A job ends with the version training saved (`saved_version`); a job that did not end well leaves
none (`discard_versions`).
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

from service.labels_csv import write_labels
from service.store import load_model
from service.studio.datasets import DatasetStore
from service.studio.db import Database
from service.studio.plan import Estimate, Plan

logger = logging.getLogger("bentoml.manylabel")

PLAN = "plan.json"
SLACK_S = 1.0  # clock slack between the job's start and the store's creation time


def export_job(store: DatasetStore, p: Plan, est: Estimate, budget_s: float, folder: Path) -> None:
    """Write the job folder (see the module docstring); a half-written folder is removed."""
    folder.mkdir(parents=True)
    try:
        for name in p.images:
            store.link(p.snapshot.images[name].sha256, folder / "images" / name)
        (folder / "labels.csv").write_text(write_labels(p.rows(p.images)), encoding="utf-8")
        if p.validation is not None:
            (folder / "validation.csv").write_text(write_labels(p.rows(p.validation)), encoding="utf-8")
        plan = {
            "expected": est.expected,
            "budget_s": budget_s,
            "to_featurise": est.body["to_featurise"],
            "train_images": est.body["train_images"],
            "shas": sorted(p.shas),
        }
        (folder / PLAN).write_text(json.dumps(plan), encoding="utf-8")
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise


def job_plan(folder: Path) -> dict[str, Any]:
    return json.loads((folder / PLAN).read_text(encoding="utf-8"))


def job_request(job: dict[str, Any]) -> dict[str, Any]:
    return json.loads(job["spec"])


# --- the feature cache, as finished jobs left it --------------------------------------------------


def newest_backbone(db: Database) -> str | None:
    row = db.one("SELECT backbone FROM featurised ORDER BY job DESC LIMIT 1")
    return row[0] if row else None


def to_featurise(db: Database, shas: set[str]) -> int:
    """Contents no finished job has featurised with the newest backbone (training's cache key)."""
    backbone = newest_backbone(db)
    if backbone is None:
        return len(shas)
    done = {r[0] for r in db.all("SELECT sha256 FROM featurised WHERE backbone = ?", (backbone,))}
    return len(shas - done)


def mark_featurised(db: Database, job: int, folder: Path, tag: str) -> None:
    """Record that the contents job `job` trained on are in training's cache for its backbone."""
    backbone = load_model(tag, verify=False).manifest.backbone.id
    with db.transaction() as tx:
        tx.executemany(
            "INSERT OR REPLACE INTO featurised (sha256, backbone, job) VALUES (?, ?, ?)",
            [(sha, backbone, job) for sha in job_plan(folder)["shas"]],
        )


# --- the model store ----------------------------------------------------------------------------


def _versions_since(name: str, since: float) -> list[Any]:
    import bentoml

    try:
        refs = bentoml.models.list(name)
    except Exception:  # no model of that name yet
        return []
    return [r for r in refs if r.info.creation_time.timestamp() >= since - SLACK_S]


def saved_version(name: str, since: float) -> str | None:
    """NAME:VERSION of the newest version of `name` saved since `since` (the job's own)."""
    refs = _versions_since(name, since)
    return str(max(refs, key=lambda r: r.info.creation_time).tag) if refs else None


def discard_versions(name: str, since: float) -> None:
    """Delete the versions of `name` saved since `since`: what a cancelled or failed job saved."""
    import bentoml

    for ref in _versions_since(name, since):
        logger.info("studio: deleting %s, saved by a job that did not finish", ref.tag)
        bentoml.models.delete(ref.tag)


def training_config(tag: str) -> dict[str, Any]:
    """The knobs of the saved model that the next estimates use."""
    manifest = load_model(tag, verify=False).manifest
    training = manifest.training or {}
    return {"batch_size": training.get("batch_size"), "max_epochs": training.get("max_epochs")}
