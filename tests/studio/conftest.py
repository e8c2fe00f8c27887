"""A real `manylabel studio` on 127.0.0.1 for the HTTP tests: a temp data folder, a temp BENTOML_HOME
holding the service tests' tiny model (served before any job: the model whose predictions must keep
answering while a job trains), started and restarted by the tests."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "service"))  # servekit: the tiny model of the service tests

from servekit import image_bytes, save_tiny_model  # noqa: E402
from studiokit import SERVED, StudioServer  # noqa: E402


@pytest.fixture(scope="module")
def studio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StudioServer]:
    root = tmp_path_factory.mktemp("studio")
    env = {**os.environ, "BENTOML_HOME": str(root / "bentoml_home"), "BENTOML_DO_NOT_TRACK": "true"}
    env.update(MANYLABEL_PROVIDER="cpu", MANYLABEL_MODEL=SERVED, MANYLABEL_MAX_LATENCY_MS="0")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    env.pop("MANYLABEL_API_TOKEN", None)
    save_tiny_model(root, env, name=SERVED)
    server = StudioServer(root, env)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def client(studio: StudioServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=studio.url, timeout=120) as c:
        yield c


@pytest.fixture(scope="module")
def probe_image() -> bytes:
    return image_bytes(7)
