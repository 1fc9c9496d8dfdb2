"""deploy/k8s/serve renders offline (kubectl kustomize), validates against the Kubernetes schema,
and selects only serve pods (never the worker's, which deploy/k8s/base runs beside it)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from simstream.settings import Settings

K8S = Path(__file__).resolve().parents[2] / "deploy" / "k8s"
KUBECTL = shutil.which("kubectl")
pytestmark = pytest.mark.skipif(KUBECTL is None, reason="kubectl is not on PATH: cannot render deploy/k8s")


def render(path: Path) -> list[dict]:
    proc = subprocess.run([KUBECTL, "kustomize", str(path)], capture_output=True, text=True, timeout=120)  # type: ignore[list-item]
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def by_kind(docs: list[dict]) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for d in docs:
        assert d["kind"] not in out, f"two {d['kind']}s"
        out[d["kind"]] = d
    return out


def matches(selector: dict, labels: dict) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


@pytest.fixture(scope="module")
def serve() -> dict[str, dict]:
    return by_kind(render(K8S / "serve"))


def test_every_resource_is_valid(serve: dict[str, dict]) -> None:
    import kubernetes_validate

    assert set(serve) == {"ServiceAccount", "ConfigMap", "Deployment", "Service", "PodDisruptionBudget",
                          "HorizontalPodAutoscaler", "NetworkPolicy"}
    for doc in serve.values():
        kubernetes_validate.validate(doc, "1.33", strict=True)
        assert doc["metadata"]["namespace"] == "simstream"


def test_the_deployment_serves_with_probes_on_its_port(serve: dict[str, dict]) -> None:
    pod = serve["Deployment"]["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["args"] == ["serve"] and "command" not in c
    assert not c["image"].endswith(":latest") and ":" in c["image"].rsplit("/", 1)[-1]
    assert c["image"].endswith("-serve")  # the image built with the serve extra; the worker's has no web framework
    cfg = serve["ConfigMap"]["data"]
    port = int(cfg["SIMSTREAM_SERVE_PORT"])
    assert cfg["SIMSTREAM_SERVE_HOST"] == "0.0.0.0"
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"http": port}
    for probe, path in (("startupProbe", "/healthz"), ("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        assert c[probe]["httpGet"] == {"path": path, "port": "http"}
    assert pod["securityContext"]["runAsNonRoot"] and c["securityContext"]["readOnlyRootFilesystem"]
    assert pod["automountServiceAccountToken"] is False
    assert set(cfg) <= {f"SIMSTREAM_{f.upper()}" for f in Settings.model_fields}, "unknown settings"
    svc = serve["Service"]["spec"]
    assert svc["ports"][0]["targetPort"] == "http" and svc["ports"][0]["port"] == port


def test_selectors_pick_serve_pods_and_never_the_workers(serve: dict[str, dict]) -> None:
    labels = serve["Deployment"]["spec"]["template"]["metadata"]["labels"]
    worker = next(d for d in render(K8S / "overlays" / "cpu") if d["kind"] == "Deployment")
    worker_labels = worker["spec"]["template"]["metadata"]["labels"]
    selectors = [serve["Deployment"]["spec"]["selector"]["matchLabels"], serve["Service"]["spec"]["selector"],
                 serve["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"],
                 serve["NetworkPolicy"]["spec"]["podSelector"]["matchLabels"]]
    for sel in selectors:
        assert matches(sel, labels) and not matches(sel, worker_labels), sel
    assert not matches(worker["spec"]["selector"]["matchLabels"], labels)
    hpa = serve["HorizontalPodAutoscaler"]["spec"]
    assert hpa["scaleTargetRef"]["name"] == serve["Deployment"]["metadata"]["name"]
    assert hpa["metrics"][0]["resource"]["name"] == "cpu" and hpa["minReplicas"] >= 2
    assert "replicas" not in serve["Deployment"]["spec"]
    assert serve["PodDisruptionBudget"]["spec"]["minAvailable"] < hpa["minReplicas"]


def test_keys_from_a_secret_a_pre_stop_pause_and_an_optional_service_monitor(serve: dict[str, dict],
                                                                           tmp_path: Path) -> None:
    (c,) = serve["Deployment"]["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in c["env"]}
    ref = env["SIMSTREAM_SERVE_API_KEYS"]["valueFrom"]["secretKeyRef"]
    assert ref["name"] == "simstream-serve-api-keys" and ref["optional"] is True
    assert "SIMSTREAM_SERVE_API_KEYS" not in serve["ConfigMap"]["data"]  # never in a ConfigMap
    pause = c["lifecycle"]["preStop"]["exec"]["command"]
    assert pause[0] == "python" and "sleep" in pause[-1]
    grace = serve["Deployment"]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace >= 5 + 10 + 5  # the pause, uvicorn's drain (serve/server.py), a margin
    # the ServiceMonitor component, rendered with serve as a user's kustomization would include them
    import os

    rel = os.path.relpath(K8S / "serve", tmp_path)  # kustomize takes relative paths only
    (tmp_path / "kustomization.yaml").write_text(
        f"resources:\n  - {rel}\ncomponents:\n  - {rel}/components/servicemonitor\n")
    docs = render(tmp_path)
    monitor = next(d for d in docs if d["kind"] == "ServiceMonitor")
    labels = serve["Deployment"]["spec"]["template"]["metadata"]["labels"]
    service_labels = serve["Service"]["metadata"]["labels"]
    worker = next(d for d in render(K8S / "overlays" / "cpu") if d["kind"] == "Service")
    assert matches(monitor["spec"]["selector"]["matchLabels"], service_labels)
    assert not matches(monitor["spec"]["selector"]["matchLabels"], worker["metadata"]["labels"])
    assert monitor["spec"]["endpoints"][0]["port"] == serve["Service"]["spec"]["ports"][0]["name"]
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics" and labels
