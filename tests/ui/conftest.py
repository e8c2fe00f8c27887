"""One real `bentoml serve` per session over the tiny model of `kit.py`, with an API token configured.

The store lives in a temp BENTOML_HOME written by a subprocess, so this process's BentoML singletons
are never pointed at it. Tests that change the saved thresholds put them back before they end.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from kit import TOKEN, Server, build_model, save_to_store


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("ui-model")
    build_model(folder)
    return folder


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("ui-serve")
    home = root / "bentoml_home"
    save_to_store(model_dir, home)
    server = Server.start(home, root / "server.log", MANYLABEL_API_TOKEN=TOKEN)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def client(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


@pytest.fixture(scope="session")
def auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKEN}"}
