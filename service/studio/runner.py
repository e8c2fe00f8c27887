"""Training jobs, one at a time, each in a child process: `python -m service train ...`.

The child is `manylabel train` itself (the same code as the command line), in its own process group
and at a lower CPU priority, so a crash or a memory blow-up there never takes the server down and
`/predict` keeps its cores first. The server never imports torch. The runner follows the child's
`progress.jsonl` (`progress.Tracker`), and when it ends:
  * exit 0: the version training saved to the model store is the job's model (served at once);
  * otherwise, or cancelled: the job failed (the log's error line) or was cancelled, and any version
    of its model saved since it started is deleted: a job that did not finish leaves no model.
A second studio on the same data folder is refused (a lock file). At start-up, jobs the last
server left unfinished are marked failed, their orphaned child (if still alive) is stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from service.studio.export import (
    discard_versions,
    job_plan,
    job_request,
    mark_featurised,
    saved_version,
    training_config,
)
from service.studio.jobs import JobBook
from service.studio.progress import Tail, Tracker

logger = logging.getLogger("bentoml.manylabel")

POLL_S = 0.5
STOP_GRACE_S = 10.0  # SIGTERM, then SIGKILL
NICE = 10  # the child's CPU priority below the server's
ROOT = Path(__file__).resolve().parents[2]  # where the `service` package lives
LOG = "job.log"
WORK = "work"


class StudioLocked(RuntimeError):
    """Another studio process uses this data folder."""


class Runner:
    def __init__(self, book: JobBook, data: Path, cache: Path) -> None:
        self.book = book
        self.data = data
        self.cache = cache
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._proc: subprocess.Popen | None = None
        self._current: int | None = None
        self._cancelled: set[int] = set()
        self._finished: dict[int, asyncio.Event] = {}
        self._lock_file: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # --- life cycle -----------------------------------------------------------------------------

    def start(self) -> None:
        self._lock()
        self.recover()
        self._loop = asyncio.get_running_loop()
        self._task = self._loop.create_task(self._run_queue(), name="manylabel-studio-jobs")

    async def stop(self) -> None:
        """The server is stopping: a running job's processes are killed and the job failed."""
        job, proc = self._current, self._proc
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if job is not None and proc is not None and self.book.row(job)["state"] == "running":
            _stop_group(proc, 0)
            await asyncio.to_thread(proc.wait)
            row = self.book.row(job)
            await asyncio.to_thread(discard_versions, row["name"], row["started"] or row["created"])
            self._end(job, "failed", error="the studio stopped while this job ran; start it again")
        for event in self._finished.values():  # a DELETE waiting for its job answers now
            event.set()
        if self._lock_file is not None:
            self._lock_file.close()

    def _lock(self) -> None:
        self.data.mkdir(parents=True, exist_ok=True)
        handle = open(self.data / "studio.lock", "a+")  # noqa: SIM115 - held for the server's life
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise StudioLocked(f"another manylabel studio uses {self.data}; stop it or give --data") from None
        self._lock_file = handle

    def recover(self) -> None:
        """Jobs a previous server left queued or running are failed; a surviving child is stopped."""
        for job in self.book.unfinished():
            if job["state"] == "running" and job["pid"]:
                _kill_orphan(job["pid"], self.folder(job["id"]))
                discard_versions(job["name"], job["started"] or job["created"])
            reason = "running" if job["state"] == "running" else "waiting to run"
            self.book.update(
                job["id"],
                state="failed",
                finished=time.time(),
                error=f"the studio restarted while this job was {reason}; start it again",
            )

    def folder(self, job: int) -> Path:
        return self.data / "jobs" / str(job)

    # --- the queue ------------------------------------------------------------------------------

    def submitted(self) -> None:
        """A job was queued (called from a request's worker thread: the loop is woken thread-safely)."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._wake.set)

    async def cancel(self, job: int) -> None:
        """Stop a job: a queued one at once; a running one's process group, then wait for its end."""
        row = self.book.row(job)
        if row["state"] == "queued":
            self._end(job, "cancelled")
            return
        if row["state"] != "running" or self._current != job or self._proc is None:
            return
        self._cancelled.add(job)
        finished = self._finished.setdefault(job, asyncio.Event())
        _stop_group(self._proc, STOP_GRACE_S)
        await finished.wait()

    async def _run_queue(self) -> None:
        while True:
            job = self.book.next_queued()
            if job is None:
                self._wake.clear()
                await self._wake.wait()
                continue
            try:
                await self._run(job)
            except Exception:  # a bug here must not stop the queue
                logger.exception("studio job %s", job["id"])
                self._end(job["id"], "failed", error="internal error in the studio; the server log has it")

    async def _run(self, job: dict[str, Any]) -> None:
        folder = self.folder(job["id"])
        prepared = job_plan(folder)
        tracker = Tracker(prepared["expected"], prepared["budget_s"], prepared["to_featurise"], time.time())
        log = open(folder / LOG, "ab")  # noqa: SIM115 - the child writes it; closed below
        try:
            self._proc = subprocess.Popen(
                train_command(job, folder, self.cache),
                cwd=ROOT,
                env=child_env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: cancel stops it and its workers
            )
        finally:
            log.close()
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, self._proc.pid, NICE)  # before it starts any thread
        self._current = job["id"]
        self.book.update(
            job["id"], tracker.view(), state="running", started=tracker.started, pid=self._proc.pid
        )
        tail = Tail(folder / WORK / "progress.jsonl")
        while self._proc.poll() is None:
            await asyncio.sleep(POLL_S)
            for row in tail.read():
                tracker.feed(row)
            self.book.update(job["id"], tracker.view())
        for row in tail.read():
            tracker.feed(row)
        await self._finish(job, self._proc.returncode, tracker, folder)

    async def _finish(self, job: dict[str, Any], code: int, tracker: Tracker, folder: Path) -> None:
        job_id, now = job["id"], time.time()
        try:
            if job_id in self._cancelled:
                await asyncio.to_thread(discard_versions, job["name"], tracker.started)
                self._end(job_id, "cancelled", view=tracker.view())
            elif code == 0 and (tag := await asyncio.to_thread(saved_version, job["name"], tracker.started)):
                measured = {**tracker.measured(now), **await asyncio.to_thread(training_config, tag)}
                if measured.get("epochs"):
                    measured["epoch_images"] = measured["epochs"] * job_plan(folder)["train_images"]
                await asyncio.to_thread(mark_featurised, self.book.db, job_id, folder, tag)
                self._end(job_id, "done", view=tracker.view(), model=tag, measured=json.dumps(measured))
            else:
                await asyncio.to_thread(discard_versions, job["name"], tracker.started)
                self._end(job_id, "failed", view=tracker.view(), error=error_line(folder / LOG, code))
        finally:
            self._current, self._proc = None, None
            self._cancelled.discard(job_id)
            await asyncio.to_thread(tidy, folder)
            event = self._finished.pop(job_id, None)
            if event is not None:
                event.set()

    def _end(self, job: int, state: str, *, view: dict | None = None, **columns: Any) -> None:
        self.book.update(job, view, state=state, finished=time.time(), **columns)


# --- the child process ------------------------------------------------------------------------------


def train_command(job: dict[str, Any], folder: Path, cache: Path) -> list[str]:
    """`manylabel train` on the job folder's export (see `export.py`)."""
    spec = job_request(job)
    cmd = [sys.executable, "-m", "service", "train", "--images", str(folder / "images")]
    cmd += [
        "--labels",
        str(folder / "labels.csv"),
        "--name",
        job["name"],
        "--minutes",
        repr(float(spec["minutes"])),
    ]
    cmd += ["--workdir", str(folder / WORK), "--cache-dir", str(cache)]
    if job.get("dataset") is not None:  # the labels' provenance, kept in the manifest
        cmd += ["--dataset", f"{job['dataset']}@{job['dataset_version']}"]
    if (folder / "validation.csv").exists():
        cmd += ["--val-labels", str(folder / "validation.csv")]
    elif spec.get("val_size") is not None:
        cmd += ["--val-size", repr(float(spec["val_size"]))]
    for key in ("lr", "seed"):
        if spec.get(key) is not None:
            cmd += [f"--{key}", str(spec[key])]
    return cmd


def child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}  # BentoML's, not its
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env.update(PYTHONUNBUFFERED="1", TQDM_DISABLE="1", MPLBACKEND="Agg")
    return env


def _stop_group(proc: subprocess.Popen, grace_s: float) -> None:
    """SIGTERM to the child's process group; SIGKILL after `grace_s` (at once when 0)."""

    def kill(sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)

    if grace_s <= 0:
        kill(signal.SIGKILL)
        return
    kill(signal.SIGTERM)
    asyncio.get_running_loop().call_later(grace_s, lambda: proc.poll() is None and kill(signal.SIGKILL))


def _kill_orphan(pid: int, folder: Path) -> None:
    """SIGKILL a previous server's child, if `pid` is still that child (its command names the folder)."""
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return
    if str(folder) in command:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
        logger.warning("studio: stopped training process %d left by the previous server", pid)


def error_line(log: Path, code: int) -> str:
    """The child's own error message (`manylabel: error: ...`), else its exception, else its last lines."""
    try:
        lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        lines = []
    for line in reversed(lines):
        if line.startswith("manylabel: error:"):
            return line.removeprefix("manylabel: error:").strip()[:2000]
    how = f"killed by signal {-code}" if code < 0 else f"exit status {code}"
    if any(line.startswith("Traceback (most recent call last)") for line in lines):
        return f"training crashed ({how}): {lines[-1][:2000]}; the job's job.log has the traceback"
    return f"training ended with {how}: " + " | ".join(lines[-3:])[-2000:]


def tidy(folder: Path) -> None:
    """Keep a finished job's log and progress; its image links and model files are in the store."""
    shutil.rmtree(folder / "images", ignore_errors=True)
    work = folder / WORK
    if work.is_dir():
        for path in work.iterdir():
            if path.name != "progress.jsonl":
                shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
