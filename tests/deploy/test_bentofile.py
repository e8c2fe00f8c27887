"""The two bento variants: static checks of deploy/bento/*.yaml, then a real `bentoml build` of each
into a temp BENTOML_HOME and checks on the Dockerfile it generates.

The build test locks nothing (`lock_packages: false` in a temp copy): locking asks PyPI, and the
test must run offline. Everything else is the committed file.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
BENTO_DIR = REPO / "deploy" / "bento"
VARIANTS = ("cpu", "gpu")
BENTOML = str(Path(sys.executable).parent / "bentoml")

# A tiny model under the name the bentofiles package, saved by a subprocess so this process's BentoML
# never looks at the temp store (BentoML reads BENTOML_HOME once).
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


def bentofile(variant: str) -> dict:
    return yaml.safe_load((BENTO_DIR / f"bentofile-{variant}.yaml").read_text())


def envs(spec: dict) -> dict[str, str]:
    return {e["name"]: str(e["value"]) for e in spec["envs"]}


@pytest.mark.parametrize("variant", VARIANTS)
def test_bentofile_packages_the_service_without_training_code(variant: str) -> None:
    spec = bentofile(variant)
    assert spec["service"] == "service.service:ManyLabel"
    assert all(pattern.startswith("service/") for pattern in spec["include"])
    packages = " ".join(spec["python"]["packages"]).lower()
    assert "torch" not in packages and "onnx==" not in packages
    model = envs(spec)["MANYLABEL_MODEL"]
    assert spec["models"] == [f"{model}:latest"]
    # BentoML 1.4.39 builds a v2 bento: docker.env and docker.cuda_version would be ignored or
    # switch to the legacy builder.
    assert set(spec["docker"]) <= {"distro", "python_version", "system_packages"}
    # The deployment's ConfigMap names the same model the image carries.
    config = (REPO / "deploy" / "base" / "config.env").read_text()
    assert f"MANYLABEL_MODEL={model}\n" in config


def test_gpu_variant_carries_the_cuda_libraries_onnxruntime_gpu_needs() -> None:
    import onnxruntime.capi.build_and_package_info as info

    cpu, gpu = bentofile("cpu"), bentofile("gpu")
    major = info.cuda_version.split(".")[0]
    assert "onnxruntime-gpu[cuda,cudnn]==" + info.__version__ in gpu["python"]["packages"]
    assert "onnxruntime==" + info.__version__ in cpu["python"]["packages"]  # same scores on both
    library_path = envs(gpu)["LD_LIBRARY_PATH"].split(":")
    site = f"/app/.venv/lib/python{gpu['docker']['python_version']}/site-packages/nvidia"
    assert f"{site}/cu{major}/lib" in library_path and f"{site}/cudnn/lib" in library_path
    assert "compute" in envs(gpu)["NVIDIA_DRIVER_CAPABILITIES"]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """variant -> the built bento's folder."""
    root = tmp_path_factory.mktemp("bento")
    env = {**os.environ, "BENTOML_HOME": str(root / "home"), "BENTOML_DO_NOT_TRACK": "true"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    model = envs(bentofile("cpu"))["MANYLABEL_MODEL"]
    subprocess.run(
        [sys.executable, "-c", SAVE_DEMO_MODEL, str(root / "model"), str(REPO), model],
        env=env,
        check=True,
        capture_output=True,
        cwd=REPO,
    )
    bentos = {}
    for variant in VARIANTS:
        spec = bentofile(variant)
        spec["python"]["lock_packages"] = False
        offline = root / f"bentofile-{variant}.yaml"
        offline.write_text(yaml.safe_dump(spec))
        done = subprocess.run(
            [BENTOML, "build", "-f", str(offline), ".", "-o", "tag"],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        tag = done.stdout.strip().rsplit("__tag__:", 1)[1].strip()
        name, version = tag.split(":")
        bentos[variant] = root / "home" / "bentos" / name / version
    return bentos


@pytest.mark.slow
@pytest.mark.parametrize("variant", VARIANTS)
def test_bentoml_build_generates_a_non_root_dockerfile(built: dict[str, Path], variant: str) -> None:
    bento = built[variant]
    dockerfile = (bento / "env" / "docker" / "Dockerfile").read_text()
    lines = [line.strip() for line in dockerfile.splitlines()]
    assert "FROM python:3.11-slim AS base-container" in lines
    assert "ARG BENTO_USER_UID=1034" in lines  # the uid the manifests pin with runAsUser
    users = [line for line in lines if line.startswith("USER ")]
    assert users[-1] == "USER bentoml", "the image must end as the non-root bentoml user"
    assert lines.index(users[-1]) > max(i for i, line in enumerate(lines) if line.startswith("RUN "))
    for name, value in envs(bentofile(variant)).items():
        assert f"ENV {name}=${name}" in lines and f"ARG {name}={value}" in lines
    assert 'ENTRYPOINT [ "/home/bentoml/bento/env/docker/entrypoint.sh" ]' in lines
    requirements = (bento / "env" / "python" / "requirements.txt").read_text()
    assert "torch" not in requirements and "bentoml==1.4.39" in requirements
    assert ("onnxruntime-gpu[cuda,cudnn]" in requirements) == (variant == "gpu")
    sources = {p.relative_to(bento / "src").as_posix() for p in (bento / "src").rglob("*.py")}
    assert "service/service.py" in sources and "service/batch_cli.py" in sources
    assert not any(s.startswith(("training/", "tests/")) for s in sources)
    info = yaml.safe_load((bento / "bento.yaml").read_text())
    assert [m["tag"].split(":")[0] for m in info["models"]] == [envs(bentofile(variant))["MANYLABEL_MODEL"]]
