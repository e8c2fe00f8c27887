"""The Kubernetes manifests: kustomize renders each overlay, every document passes the Kubernetes
JSON schema of a pinned version offline (kubernetes-validate, strict: unknown fields fail), and the
properties the deployment relies on hold in the rendered YAML.
"""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from service.cli import build_parser

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
K8S_VERSION = "1.32.0"  # the kubectl client's minor version; schemas ship with kubernetes-validate
TARGETS = ("overlays/cpu", "overlays/gpu", "overlays/studio", "batch")
BENTO_UID = 1034  # the user BentoML 1.4.39's Dockerfile creates and switches to


@functools.cache
def render(target: str) -> tuple[dict[str, Any], ...]:
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl (with its built-in kustomize) renders deploy/; it is in the base image"
    out = subprocess.run(
        [kubectl, "kustomize", str(DEPLOY / target)], check=True, capture_output=True, text=True
    ).stdout
    return tuple(doc for doc in yaml.safe_load_all(out) if doc)


def one(docs: tuple[dict[str, Any], ...], kind: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"{len(found)} {kind} documents"
    return found[0]


def container(docs: tuple[dict[str, Any], ...], kind: str = "Deployment") -> dict[str, Any]:
    return one(docs, kind)["spec"]["template"]["spec"]["containers"][0]


def config(docs: tuple[dict[str, Any], ...]) -> dict[str, str]:
    return one(docs, "ConfigMap")["data"]


@pytest.mark.parametrize("target", TARGETS)
def test_renders_and_passes_the_schema(target: str) -> None:
    docs = render(target)
    assert docs
    for doc in docs:
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = "/".join(str(p) for p in exc.path)
            pytest.fail(f"{target}: {doc['kind']}/{doc['metadata']['name']} at {where}: {exc.message}")


@pytest.mark.parametrize("overlay", ["overlays/cpu", "overlays/gpu"])
def test_serving_objects_fit_together(overlay: str) -> None:
    docs = render(overlay)
    kinds = {d["kind"] for d in docs}
    assert kinds == {
        "ConfigMap",
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "NetworkPolicy",
    }
    deployment = one(docs, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    for kind in ("PodDisruptionBudget", "NetworkPolicy"):
        selector = one(docs, kind)["spec"].get("selector") or one(docs, kind)["spec"]["podSelector"]
        assert selector["matchLabels"].items() <= pod_labels.items(), kind
    service = one(docs, "Service")
    assert service["spec"]["selector"].items() <= pod_labels.items()
    ports = {p["name"]: p["containerPort"] for p in container(docs)["ports"]}
    assert service["spec"]["ports"][0]["targetPort"] in ports
    hpa = one(docs, "HorizontalPodAutoscaler")["spec"]
    target = {"apiVersion": "apps/v1", "kind": "Deployment", "name": deployment["metadata"]["name"]}
    assert hpa["scaleTargetRef"] == target
    assert 1 <= hpa["minReplicas"] <= hpa["maxReplicas"]
    assert container(docs)["resources"]["requests"]["cpu"], "HPA utilisation is measured against it"
    # The generated ConfigMap (name with a content hash) is the one the pods read.
    generated = one(docs, "ConfigMap")["metadata"]["name"]
    assert container(docs)["envFrom"] == [{"configMapRef": {"name": generated}}]
    assert config(docs)["MANYLABEL_MODEL"]


@pytest.mark.parametrize("overlay", ["overlays/cpu", "overlays/gpu"])
def test_probes_use_the_bentoml_health_endpoints(overlay: str) -> None:
    c = container(render(overlay))
    assert c["startupProbe"]["httpGet"]["path"] == "/readyz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/livez"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"]["port"] == "http"
    startup = c["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 120, "room for model load and warm-up"


@pytest.mark.parametrize("target", TARGETS)
def test_pods_run_non_root_on_a_read_only_root_filesystem(target: str) -> None:
    docs = render(target)
    kind = "Job" if target == "batch" else "Deployment"
    pod = one(docs, kind)["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == BENTO_UID
    assert pod["automountServiceAccountToken"] is False
    for c in pod["containers"]:
        sc = c["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"]["drop"] == ["ALL"]
        # Everything the process writes is a mounted volume: emptyDirs, or the Job's results claim.
        volumes = {v["name"]: v for v in pod["volumes"]}
        mounts = {m["mountPath"]: volumes[m["name"]] for m in c["volumeMounts"]}
        assert "emptyDir" in mounts["/tmp"]
        env = {e["name"]: e.get("value") for e in c.get("env", [])}
        if kind == "Deployment" and target == "overlays/studio":
            assert "persistentVolumeClaim" in mounts[env["BENTOML_HOME"]]  # the models its jobs save
        elif kind == "Deployment":
            assert "emptyDir" in mounts[env["BENTOML_HOME"]]  # prometheus multiprocess files, tmp


@pytest.mark.parametrize("overlay", ["overlays/cpu", "overlays/gpu"])
def test_shutdown_outlasts_the_longest_request(overlay: str) -> None:
    docs = render(overlay)
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    c = container(docs)
    grace = pod["terminationGracePeriodSeconds"]
    drain = int(c["args"][c["args"].index("--timeout-graceful-shutdown") + 1])
    pre_stop = int(c["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert grace > pre_stop + drain
    assert drain > float(config(docs)["MANYLABEL_MAX_LATENCY_MS"]) / 1000
    # Measured here: 250 500-px images in one request take ~2 s on 2 cores; 256 files is the cap.
    assert int(config(docs)["MANYLABEL_MAX_FILES"]) <= 1000 and drain >= 30


@pytest.mark.parametrize("overlay", ["overlays/cpu", "overlays/gpu"])
def test_prometheus_scrapes_metrics_on_the_http_port(overlay: str) -> None:
    docs = render(overlay)
    annotations = one(docs, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/path"] == "/metrics"
    assert int(annotations["prometheus.io/port"]) == container(docs)["ports"][0]["containerPort"] == 3000
    policy = one(docs, "NetworkPolicy")["spec"]
    assert any("namespaceSelector" in peer for rule in policy["ingress"] for peer in rule["from"])


def test_gpu_overlay_asks_for_a_gpu_and_bigger_batches() -> None:
    cpu, gpu = render("overlays/cpu"), render("overlays/gpu")
    pod = one(gpu, "Deployment")["spec"]["template"]["spec"]
    assert container(gpu)["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert pod["nodeSelector"]
    assert config(gpu)["MANYLABEL_PROVIDER"] == "cuda"  # fail loudly rather than score on the CPU
    assert int(config(gpu)["MANYLABEL_MAX_BATCH_SIZE"]) == 64
    assert "MANYLABEL_MAX_BATCH_SIZE" not in config(cpu)  # the CPU's per-precision defaults (settings.py)
    assert float(config(gpu)["MANYLABEL_MAX_LATENCY_MS"]) > 0
    assert "nvidia.com/gpu" not in container(cpu)["resources"]["limits"]
    assert "tolerations" not in one(cpu, "Deployment")["spec"]["template"]["spec"]
    assert config(cpu)["MANYLABEL_PROVIDER"] == "cpu"
    assert container(gpu)["image"].endswith(":gpu") and container(cpu)["image"].endswith(":cpu")


def test_batch_job_shards_its_input_and_runs_the_batch_cli() -> None:
    docs = render("batch")
    job = one(docs, "Job")["spec"]
    c = container(docs, "Job")
    assert job["completionMode"] == "Indexed" and job["template"]["spec"]["restartPolicy"] == "Never"
    env = {e["name"]: e for e in c["env"]}
    assert env["SHARD_INDEX"]["valueFrom"]["fieldRef"]["fieldPath"] == (
        "metadata.annotations['batch.kubernetes.io/job-completion-index']"
    )
    args = c["args"]
    # The bento entrypoint runs the `manylabel` every bentofile's setup script writes.
    assert args[:2] == ["manylabel", "batch"]
    shard = next(a for a in args if a.startswith("--shard="))
    assert re.fullmatch(r"--shard=\$\(SHARD_INDEX\)/(\d+)", shard)
    assert int(shard.rsplit("/", 1)[1]) == job["completions"] == job["parallelism"]
    output = next(a for a in args if a.startswith("--output="))
    assert "$(SHARD_INDEX)" in output, "one journal per shard, so a retried pod resumes its own"
    # The arguments are valid for the `manylabel` CLI, as Kubernetes will expand them for pod 0.
    parsed = build_parser().parse_args([a.replace("$(SHARD_INDEX)", "0") for a in args[1:]])
    assert parsed.command == "batch"
    assert parsed.url == "http://" + one(render("overlays/cpu"), "Service")["metadata"]["name"]
    mounts = {m["mountPath"] for m in c["volumeMounts"]}
    assert str(parsed.images) in mounts and str(parsed.output.parent) in mounts
    rules = job["podFailurePolicy"]["rules"]
    assert any(r["action"] == "FailIndex" and 1 in r["onExitCodes"]["values"] for r in rules)


def test_studio_is_one_replica_with_its_state_on_a_claim_and_its_token_from_a_secret() -> None:
    docs = render("overlays/studio")
    kinds = {d["kind"] for d in docs}
    assert kinds == {"ConfigMap", "Deployment", "Service", "NetworkPolicy", "PersistentVolumeClaim"}
    deployment = one(docs, "Deployment")["spec"]
    assert deployment["replicas"] == 1
    assert deployment["strategy"] == {"type": "Recreate"}, "one studio per claim: the old pod goes first"
    volumes = {v["name"]: v for v in deployment["template"]["spec"]["volumes"]}
    mounts = {m["mountPath"]: volumes[m["name"]] for m in container(docs)["volumeMounts"]}
    env = {e["name"]: e for e in container(docs)["env"]}
    home = env["BENTOML_HOME"]["value"]
    claim = one(docs, "PersistentVolumeClaim")
    assert mounts[home]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert config(docs)["MANYLABEL_DATA"].startswith(home + "/"), "datasets and jobs on the claim too"
    assert config(docs)["MANYLABEL_MODEL"] == "", "the store's newest: a new studio has no model yet"
    token = env["MANYLABEL_API_TOKEN"]["valueFrom"]["secretKeyRef"]
    assert token == {"name": "manylabel-studio", "key": "token"}
    assert container(docs)["image"].endswith(":studio")
    studio_memory = container(docs)["resources"]["limits"]["memory"]
    assert studio_memory != container(render("overlays/cpu"))["resources"]["limits"]["memory"], "training"
