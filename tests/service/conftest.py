"""One real `bentoml serve` per session, on a free port, over a tiny model built here without torch.

The model honours the manifest contract: uint8 NHWC "image" (N, 32, 32, 3) -> Cast -> normalise
-> mean over H, W -> Gemm -> Sigmoid -> "scores" (N, 3). best and last have different heads so the
tests can tell them apart. The store lives in a temp BENTOML_HOME, written by a subprocess so this
process's BentoML singletons are never pointed at it.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator

import httpx
import pytest
from bentoserve import free_port, start_serve, stop, wait_ready
from servekit import PYTHON, REPO, SERVER_ENV, Server, build_model, image_bytes
from tinymodel import SAVE_SCRIPT


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("serve")
    home = root / "bentoml_home"
    build_model(root / "model")
    env = {**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "true", **SERVER_ENV}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    tag = subprocess.run(
        [PYTHON, "-c", SAVE_SCRIPT, str(root / "model")], env=env, check=True, capture_output=True, text=True
    ).stdout.strip()
    port = free_port()
    log = root / "server.log"
    proc = start_serve(env, log, port)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc, log)
        yield Server(url=url, home=home, env=env, log=log, tag=tag)
    finally:
        stop(proc)


@pytest.fixture(scope="session")
def client(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


# --- images -------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def images() -> dict[str, bytes]:
    return {
        "red.jpg": image_bytes(1),
        "green.png": image_bytes(2, fmt="PNG"),
        "grey.jpg": image_bytes(3, mode="L"),
        "blue.webp": image_bytes(4, fmt="WEBP", size=(40, 90)),
        "rgba.png": image_bytes(5, fmt="PNG", mode="RGBA"),
        "small.jpg": image_bytes(6, size=(20, 20)),
    }
