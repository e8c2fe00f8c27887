"""What ships is what we test: serve each *built* bento (`bentoml serve manylabel-cpu:<version>`,
not the working tree) and run the `manylabel` command from the bento's own files.

Both variants are built from their committed bentofiles (conftest.py) and served here on the CPU:
the GPU bento lists the same onnxruntime-gpu as the CPU one, whose CUDA provider needs the CUDA
wheels only the GPU image installs, so MANYLABEL_PROVIDER=cpu for both. What the GPU image adds
(CUDA wheels, LD_LIBRARY_PATH) is checked statically in test_bentofile.py.

Everything runs in a *clean* virtual environment: one that sees this venv's packages (bentoml,
onnxruntime, ...) through a .pth path line but not the editable install of this project, whose
import hook would quietly fill in any module the bento left out. The only `service` it can import
is the bento's, as in the image.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from bentokit import SETUP_SCRIPT, VARIANTS, Bento, Store, bentofile, envs
from PIL import Image
from support.bentoserve import free_port, stop, wait_ready

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class Served:
    bento: Bento
    url: str


@pytest.fixture(scope="module")
def python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The interpreter of a clean venv: this venv's packages, not this project."""
    venv = tmp_path_factory.mktemp("clean-venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", "--clear", str(venv)], check=True)
    site = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (clean,) = venv.glob("lib/python*/site-packages")
    # A path line adds the folder but runs none of its .pth files (the editable install's finder).
    (clean / "deps.pth").write_text("\n".join(sorted(site)) + "\n")
    python = venv / "bin" / "python"
    found = subprocess.run(
        [python, "-c", "import importlib.util as u; print(u.find_spec('service'), u.find_spec('bentoml'))"],
        cwd=venv,
        env=_env({}),
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert found[0] == "None" and found[1] != "None", "the clean venv must see bentoml but not this project"
    return python


def _env(store_env: dict[str, str], **extra: str) -> dict[str, str]:
    env = {**os.environ, **store_env, "MANYLABEL_PROVIDER": "cpu"}
    for name in ("PYTHONPATH", "VIRTUAL_ENV", "MANYLABEL_CUDA_WHEELS"):
        env.pop(name, None)
    return {**env, **extra}


@pytest.fixture(scope="module", params=VARIANTS)
def served(
    request: pytest.FixtureRequest, store: Store, python: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    """`bentoml serve <the built bento's tag>` on a free port; one variant at a time (2 cores)."""
    bento = store.bentos[request.param]
    port = free_port()
    log = tmp_path_factory.mktemp(f"serve-{request.param}") / "server.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [python, "-m", "bentoml", "serve", bento.tag, "--host", "127.0.0.1", "--port", str(port)],
            cwd=log.parent,  # not the repository: nothing to import from the working directory
            env=_env(store.env),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc, log)
        yield Served(bento=bento, url=url)
    finally:
        stop(proc)


def jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (48, 36), (200, 40, 30)).save(buffer, "JPEG")
    return buffer.getvalue()


def test_the_built_bento_is_ready(served: Served) -> None:
    r = httpx.get(f"{served.url}/readyz", timeout=10)
    assert r.status_code == 200, r.text


def test_the_built_bento_serves_the_page(served: Served) -> None:
    page = httpx.get(f"{served.url}/ui", timeout=10)
    assert page.status_code == 200, page.text
    assert page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    script = httpx.get(f"{served.url}/ui/app.js", timeout=10)  # what `service/*.py` left out
    assert script.status_code == 200 and script.headers["content-type"].startswith("text/javascript")


def test_the_built_bento_predicts(served: Served, store: Store) -> None:
    r = httpx.post(f"{served.url}/predict", files=[("images", ("red.jpg", jpeg(), "image/jpeg"))], timeout=60)
    assert r.status_code == 200, r.text
    body = r.json()
    assert f"{body['model']}:{body['version']}" == store.model_tag and body["count"] == 1
    (row,) = body["images"]
    assert row["filename"] == "red.jpg" and list(row["scores"]) == body["labels"] and body["labels"]
    assert all(0.0 <= s <= 1.0 for s in row["scores"].values())
    assert row["predicted"] == [label for label in body["labels"] if row["above"][label]]


@pytest.mark.parametrize("variant", VARIANTS)
def test_manylabel_runs_from_the_bento_files(store: Store, python: Path, variant: str) -> None:
    src = store.bentos[variant].path / "src"

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [python, *args], cwd=src, env=_env(store.env), capture_output=True, text=True, timeout=60
        )

    where = run("-c", "import service; print(service.__file__)")
    assert Path(where.stdout.strip()).resolve() == (src / "service" / "__init__.py").resolve(), where.stderr
    done = run("-m", "service", "--help")
    assert done.returncode == 0, done.stderr
    for command in ("serve", "predict", "batch", "stats", "report", "thresholds"):
        assert command in done.stdout
    # The bento carries no training code: the command says how to get it.
    train = run("-m", "service", "train")
    assert train.returncode == 2 and "pip install 'manylabel[train]'" in train.stderr


@pytest.mark.parametrize("variant", VARIANTS)
def test_setup_script_writes_a_manylabel_command(
    store: Store, python: Path, variant: str, tmp_path: Path
) -> None:
    """Run the bento's copy of deploy/bento/setup.sh as the image build does (the variant's envs, the
    venv's python first on PATH), into a temp bin folder and with a stand-in `uv` that records what it
    is asked to install; then call the `manylabel` it wrote from another directory."""
    bento = store.bentos[variant].path
    (script,) = (bento / "env" / "docker").glob("script__*")
    assert script.read_text() == SETUP_SCRIPT.read_text()
    bin_dir, tools = tmp_path / "bin", tmp_path / "tools"
    tools.mkdir()
    (tools / "uv").write_text(f'#!/bin/sh\necho "$@" >> {tmp_path / "uv.log"}\n')
    (tools / "uv").chmod(0o755)
    path = os.pathsep.join([str(tools), str(python.parent), os.environ["PATH"]])
    image_env = {k: v for k, v in envs(bentofile(variant)).items() if k.startswith("MANYLABEL_")}
    env = _env(store.env, **image_env, PATH=path, MANYLABEL_BIN_DIR=str(bin_dir), BENTO_PATH=str(bento))
    subprocess.run(["sh", str(script)], cwd=bento, env=env, check=True, timeout=30)

    installed = (tmp_path / "uv.log").read_text() if (tmp_path / "uv.log").exists() else ""
    wheels = envs(bentofile(variant)).get("MANYLABEL_CUDA_WHEELS")
    assert installed == (f"pip install {wheels}\n" if wheels else "")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    done = subprocess.run(
        [bin_dir / "manylabel", "batch", "--help"],
        cwd=elsewhere,
        env=_env(store.env),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "--shard" in done.stdout and "--url" in done.stdout
