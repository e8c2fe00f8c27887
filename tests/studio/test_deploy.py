"""The studio's bentofile: the studio service, training code, the one serving list plus the train extra,
no packed models; and what a real `bentoml build` of it writes."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
BENTOFILE = REPO / "deploy" / "bento" / "bentofile-studio.yaml"


def spec() -> dict:
    return yaml.safe_load(BENTOFILE.read_text())


def envs() -> dict[str, str]:
    return {e["name"]: str(e["value"]) for e in spec()["envs"]}


def test_the_studio_bento_serves_the_studio_with_training_code_and_no_packed_models() -> None:
    s = spec()
    assert s["service"] == "service.studio.service:ManyLabel"
    assert s["include"] == ["service/**", "training/**"] and "training/" not in s["exclude"]
    assert "models" not in s, "a bento with models serves its own store, not the one jobs save to"
    assert s["python"] == {"requirements_txt": "service/requirements.txt", "lock_packages": False}
    assert s["docker"]["setup_script"] == "deploy/bento/setup.sh"
    assert set(s["docker"]) <= {"distro", "python_version", "system_packages", "setup_script"}


def test_the_studio_image_installs_the_train_extra_as_pyproject_lists_it() -> None:
    extra = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["train"]
    assert envs()["MANYLABEL_CUDA_WHEELS"].split() == extra  # deploy/bento/setup.sh installs this list


@pytest.mark.slow
def test_bentoml_build_packs_the_studio(tmp_path: Path) -> None:
    env = {**os.environ, "BENTOML_HOME": str(tmp_path / "home"), "BENTOML_DO_NOT_TRACK": "true"}
    env.pop("PYTHONPATH", None)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env["PATH"]])
    done = subprocess.run(
        [sys.executable, "-m", "bentoml", "build", "-f", str(BENTOFILE), ".", "-o", "tag"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    name, version = done.stdout.strip().rsplit("__tag__:", 1)[1].strip().split(":")
    bento = tmp_path / "home" / "bentos" / name / version
    src = bento / "src"
    for path in ("service/studio/service.py", "service/server/service.py", "training/fit.py"):
        assert (src / path).is_file(), path
    assert (src / "training" / "sample" / "labels.csv").is_file()
    assert not list(src.rglob("__pycache__")) and not (src / "tests").exists()
    assert yaml.safe_load((bento / "bento.yaml").read_text())["models"] == []
    dockerfile = (bento / "env" / "docker" / "Dockerfile").read_text()
    assert "ARG MANYLABEL_CUDA_WHEELS=" in dockerfile and "torch" in dockerfile
