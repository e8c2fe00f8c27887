"""The bentofiles: static checks of bentofile.yaml and deploy/bento/*.yaml against the one
requirements list and the layout of `service/`, then checks on what a real `bentoml build` of each
variant wrote (Dockerfile, requirements, sources). test_bento_build.py serves the same builds.
"""

from __future__ import annotations

import os
import shlex
import tomllib
from pathlib import Path

import pytest
import yaml
from bentokit import BENTOFILES, MODEL, REPO, REQUIREMENTS, SETUP_SCRIPT, VARIANTS, Store, bentofile, envs
from packaging.requirements import Requirement
from packaging.version import Version
from setuptools.config.pyprojecttoml import read_configuration


def requirement_lines(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]


def service_files(root: Path) -> set[str]:
    """Every file under root/service, as a relative path, without bytecode caches."""
    return {
        p.relative_to(root).as_posix()
        for p in (root / "service").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }


def test_pyproject_reads_its_dependencies_from_the_one_requirements_list() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "dependencies" not in pyproject["project"] and "dependencies" in pyproject["project"]["dynamic"]
    dynamic = pyproject["tool"]["setuptools"]["dynamic"]
    assert dynamic["dependencies"] == {"file": ["service/requirements.txt"]}
    expanded = read_configuration(REPO / "pyproject.toml", expand=True)["project"]["dependencies"]
    assert expanded == requirement_lines(REQUIREMENTS)
    # setuptools hands each line to a PEP 508 parser as it is: no options (-r), no trailing comments.
    requirements = {r.name: r for r in map(Requirement, expanded)}
    assert {"bentoml", "onnxruntime-gpu", "numpy", "pillow", "pydantic"} <= set(requirements)
    assert "python-multipart" in requirements
    assert {"httpx", "tqdm", "jinja2", "rich"} <= set(requirements)  # batch client, CLI, inspection
    assert {"uvloop", "httptools"} <= set(requirements)  # uvicorn's fast loop and parser, in every bento
    assert not {"torch", "onnx", "onnxruntime"} & set(requirements), "serving only; never plain onnxruntime"
    assert not requirements["python-multipart"].specifier.contains(Version("0.0.33")), "part-header limits"


@pytest.mark.parametrize("name", list(BENTOFILES))
def test_every_bentofile_ships_the_whole_service_package_and_the_one_list(name: str) -> None:
    spec = bentofile(name)
    assert spec["service"] == "service.server.service:ManyLabel"
    # gitwildmatch: `service/*.py` stops at the first `/` and left the page and subpackages out.
    assert spec["include"] == ["service/**"]
    assert {"training/", "tests/", "benchmarks/", "**/__pycache__/"} <= set(spec["exclude"])
    # With requirements_txt, BentoML 1.4.39 ignores `packages`; lock_packages would ask PyPI.
    assert spec["python"] == {"requirements_txt": "service/requirements.txt", "lock_packages": False}
    assert spec["docker"]["setup_script"] == SETUP_SCRIPT.relative_to(REPO).as_posix()
    assert os.access(SETUP_SCRIPT, os.X_OK), "BentoML refuses a setup_script that is not executable"
    # A v2 bento ignores docker.env and falls back to the legacy builder for docker.cuda_version.
    assert set(spec["docker"]) <= {"distro", "python_version", "system_packages", "setup_script"}
    model = envs(spec)["MANYLABEL_MODEL"]
    assert model == MODEL and [m.split(":")[0] for m in spec["models"]] == [model]


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_deployment_serves_the_model_the_image_carries(variant: str) -> None:
    config = (REPO / "deploy" / "base" / "config.env").read_text()
    assert f"MANYLABEL_MODEL={envs(bentofile(variant))['MANYLABEL_MODEL']}\n" in config


def test_gpu_variant_adds_the_cuda_libraries_onnxruntime_gpu_needs() -> None:
    import onnxruntime.capi.build_and_package_info as info

    gpu = bentofile("gpu")
    # deploy/bento/setup.sh installs it on top of the shared list: the onnxruntime-gpu tested here,
    # with the extras that pull the CUDA and cuDNN wheels of its CUDA major.
    assert envs(gpu)["MANYLABEL_CUDA_WHEELS"] == f"onnxruntime-gpu[cuda,cudnn]=={info.__version__}"
    shared = {r.name: r for r in map(Requirement, requirement_lines(REQUIREMENTS))}
    assert shared["onnxruntime-gpu"].specifier.contains(info.__version__)
    assert all("MANYLABEL_CUDA_WHEELS" not in envs(bentofile(name)) for name in BENTOFILES if name != "gpu")
    major = info.cuda_version.split(".")[0]
    library_path = envs(gpu)["LD_LIBRARY_PATH"].split(":")
    site = f"/app/.venv/lib/python{gpu['docker']['python_version']}/site-packages/nvidia"
    assert f"{site}/cu{major}/lib" in library_path and f"{site}/cudnn/lib" in library_path
    assert "compute" in envs(gpu)["NVIDIA_DRIVER_CAPABILITIES"]


@pytest.mark.slow
@pytest.mark.parametrize("variant", VARIANTS)
def test_bentoml_build_generates_a_non_root_dockerfile(store: Store, variant: str) -> None:
    bento = store.bentos[variant].path
    lines = [line.strip() for line in (bento / "env" / "docker" / "Dockerfile").read_text().splitlines()]
    assert "FROM python:3.11-slim AS base-container" in lines
    assert "ARG BENTO_USER_UID=1034" in lines  # the uid the manifests pin with runAsUser
    users = [line for line in lines if line.startswith("USER ")]
    assert users[-1] == "USER bentoml", "the image must end as the non-root bentoml user"
    assert lines.index(users[-1]) > max(i for i, line in enumerate(lines) if line.startswith("RUN "))
    for name, value in envs(bentofile(variant)).items():
        assert f"ENV {name}=${name}" in lines and f"ARG {name}={shlex.quote(value)}" in lines
    assert 'ENTRYPOINT [ "/home/bentoml/bento/env/docker/entrypoint.sh" ]' in lines
    # The setup script runs once the shared list is installed, as root, before the bento's files
    # arrive: the bento carries it verbatim.
    install = next(i for i, line in enumerate(lines) if "pip install -r" in line)
    (script,) = (bento / "env" / "docker").glob("script__*")
    assert script.read_text() == SETUP_SCRIPT.read_text()
    run = lines.index(f"RUN chmod +x ./env/docker/{script.name} && ./env/docker/{script.name}")
    assert install < run < lines.index("COPY --chown=bentoml:bentoml . ./")


@pytest.mark.slow
@pytest.mark.parametrize("variant", VARIANTS)
def test_bentoml_build_packs_the_service_tree_and_the_one_list(store: Store, variant: str) -> None:
    bento = store.bentos[variant].path
    # BentoML rewrites each line in its own spelling (quotes of markers): compare them parsed.
    requirements = [Requirement(r) for r in requirement_lines(bento / "env" / "python" / "requirements.txt")]
    shared = [Requirement(r) for r in requirement_lines(REQUIREMENTS)]
    assert requirements[: len(shared)] == shared
    assert {r.name for r in requirements[len(shared) :]} <= {"bentoml"}  # BentoML adds its own pin
    # Everything under service/ (page, CLI, batch client, inspection), and nothing else but the
    # copy of the bentofile BentoML keeps.
    assert service_files(bento / "src") == service_files(REPO)
    assert {p.name for p in (bento / "src").iterdir()} == {"service", "bentofile.yaml"}
    assert "service/server/ui/app.js" in service_files(bento / "src")
    info = yaml.safe_load((bento / "bento.yaml").read_text())
    assert [m["tag"] for m in info["models"]] == [store.model_tag]
