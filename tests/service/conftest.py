"""One real `bentoml serve` per session, on a free port, over a tiny model built here without torch.

The model honours the manifest contract: uint8 NHWC "image" (N, 32, 32, 3) -> Cast -> normalise
-> mean over H, W -> Gemm -> Sigmoid -> "scores" (N, 3). best and last have different heads so the
tests can tell them apart. The store lives in a temp BENTOML_HOME, written by a subprocess so this
process's BentoML singletons are never pointed at it.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from servekit import SERVER_ENV, Server, image_bytes, serve_tiny_model


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with serve_tiny_model(tmp_path_factory.mktemp("serve"), SERVER_ENV) as server:
        yield server


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
