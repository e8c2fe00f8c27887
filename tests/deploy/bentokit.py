"""Helpers for the bento tests (imported by conftest.py and the test modules): the bentofiles, and a
real `bentoml build` of each variant into a private BentoML home."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
BENTOFILES = {
    "root": REPO / "bentofile.yaml",
    "cpu": REPO / "deploy" / "bento" / "bentofile-cpu.yaml",
    "gpu": REPO / "deploy" / "bento" / "bentofile-gpu.yaml",
}
VARIANTS = ("cpu", "gpu")  # the images deploy/ ships; the root bentofile is the quick-start one
REQUIREMENTS = REPO / "service" / "requirements.txt"
SETUP_SCRIPT = REPO / "deploy" / "bento" / "setup.sh"
MODEL = "manylabel-demo"  # what every bentofile packs and MANYLABEL_MODEL names

# The tiny model of the service tests, stored under the name the bentofiles pack. A subprocess, so
# this process's BentoML never looks at the private store (BentoML reads BENTOML_HOME once).
SAVE_DEMO_MODEL = """
import sys
from pathlib import Path
sys.path[:0] = [str(Path(sys.argv[2]) / "tests" / "service"), str(Path(sys.argv[2]) / "tests")]
from servekit import build_model
from service.manifest import Manifest
from service.store import save_model
folder = Path(sys.argv[1])
build_model(folder)
Manifest.read(folder).model_copy(update={"name": sys.argv[3]}).write(folder)
print(save_model(folder, Manifest.read(folder)).tag)
"""


@dataclass(frozen=True)
class Bento:
    tag: str  # name:version
    path: Path  # the built bento's folder in the private store


@dataclass(frozen=True)
class Store:
    home: Path  # the private BENTOML_HOME
    env: dict[str, str]  # the environment every bentoml command of the tests runs in
    model_tag: str
    bentos: dict[str, Bento]  # variant -> the built bento


def bentofile(name: str) -> dict:
    return yaml.safe_load(BENTOFILES[name].read_text())


def envs(spec: dict) -> dict[str, str]:
    return {e["name"]: str(e["value"]) for e in spec.get("envs", [])}


def build_store(root: Path) -> Store:
    """Store the tiny model as MODEL, then `bentoml build` each variant's committed bentofile."""
    home = root / "bentoml_home"
    env = {**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "true"}
    env.pop("PYTHONPATH", None)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env["PATH"]])  # `uv`, for the build
    saved = subprocess.run(
        [sys.executable, "-c", SAVE_DEMO_MODEL, str(root / "model"), str(REPO), MODEL],
        env={**env, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert saved.returncode == 0, saved.stderr
    bentos = {}
    for variant in VARIANTS:
        done = subprocess.run(
            [sys.executable, "-m", "bentoml", "build", "-f", str(BENTOFILES[variant]), ".", "-o", "tag"],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        tag = done.stdout.strip().rsplit("__tag__:", 1)[1].strip()
        name, version = tag.split(":")
        bentos[variant] = Bento(tag=tag, path=home / "bentos" / name / version)
    return Store(home=home, env=env, model_tag=saved.stdout.strip().splitlines()[-1], bentos=bentos)
