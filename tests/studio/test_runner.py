"""The job runner's start-up: one studio per data folder, unfinished jobs failed, orphans stopped."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from service.cli import build_parser, main
from service.studio.db import Database
from service.studio.jobs import JobBook
from service.studio.runner import Runner, StudioLocked, error_line, train_command


def test_a_restart_fails_unfinished_jobs_and_stops_an_orphaned_training(tmp_path: Path) -> None:
    book = JobBook(Database(tmp_path / "studio.db"))
    with book.db.transaction() as tx:
        tx.execute("INSERT INTO datasets (id, name, created) VALUES (1, 'd', 0)")
    runner = Runner(book, tmp_path, tmp_path / "cache")
    running = book.add(
        1, 1, "m", {"minutes": 1}, {}, before_commit=lambda job: runner.folder(job).mkdir(parents=True)
    )
    queued = book.add(1, 1, "n", {"minutes": 1}, {}, before_commit=lambda job: None)
    # A child the previous server left behind: its command line names its job folder.
    orphan = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)", str(runner.folder(running))],
        start_new_session=True,
    )
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    try:
        book.update(running, state="running", pid=orphan.pid, started=time.time())
        book.update(queued, view={"stage": "queued"})
        book.update(queued, state="queued")
        runner.recover()
        assert orphan.wait(timeout=10) == -9
        assert stranger.poll() is None, "a pid reused by another process is left alone"
        first, second = book.get(running), book.get(queued)
        assert first["state"] == second["state"] == "failed"
        assert "restarted while this job was running" in first["error"]
        assert "restarted while this job was waiting" in second["error"]
    finally:
        orphan.kill()
        stranger.kill()


def test_one_studio_per_data_folder(tmp_path: Path) -> None:
    book = JobBook(Database(tmp_path / "studio.db"))
    first, second = Runner(book, tmp_path, tmp_path), Runner(book, tmp_path, tmp_path)
    first._lock()
    with pytest.raises(StudioLocked, match="another manylabel studio uses"):
        second._lock()
    first._lock_file.close()
    second._lock()


def test_the_child_is_manylabel_train_on_the_job_folder(tmp_path: Path) -> None:
    job = {"name": "m", "spec": '{"minutes": 1, "val_size": 0.3, "seed": 4, "lr": 0.001}'}
    cmd = train_command(job, tmp_path, tmp_path / "cache")
    assert cmd[:4] == [sys.executable, "-m", "service", "train"]
    args = build_parser().parse_args(cmd[3:])  # what `manylabel train` will parse
    assert args.images == [str(tmp_path / "images")] and args.labels == tmp_path / "labels.csv"
    assert (args.name, args.minutes, args.val_size, args.seed, args.lr) == ("m", 1.0, 0.3, 4, 0.001)
    assert args.workdir == tmp_path / "work" and args.cache_dir == tmp_path / "cache"


def test_the_error_shown_is_the_childs_own(tmp_path: Path) -> None:
    log = tmp_path / "job.log"
    log.write_text("INFO x\nmanylabel: error: labels.csv: the labels file is empty\n")
    assert error_line(log, 2) == "labels.csv: the labels file is empty"
    log.write_text("Traceback (most recent call last):\n  File x\nMemoryError: out of memory\n")
    assert error_line(log, 1).startswith("training crashed (exit status 1): MemoryError: out of memory")
    log.write_text("")
    assert error_line(log, -9) == "training ended with killed by signal 9: "


def test_studio_needs_the_train_extra(monkeypatch, capsys) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "torch" else real(name, *a)
    )
    assert main(["studio"]) == 2
    assert "pip install 'manylabel[train]'" in capsys.readouterr().err
