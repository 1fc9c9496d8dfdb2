"""Render the kustomize overlays under deploy/k8s and check what comes out.

Every built-in resource is validated against the Kubernetes OpenAPI schemas
shipped with `kubernetes-validate` (strict: unknown fields are errors). Custom
resources (KEDA ScaledObject, Prometheus Operator ServiceMonitor) are not in
those schemas, so their required fields and cross-references are checked here.
On top of that: the pod security settings, probes, secrets handling, and the
CPU/GPU differences.

Needs `kubectl` (or `kustomize`) on PATH to render; skipped otherwise.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

kubernetes_validate = pytest.importorskip(
    "kubernetes_validate", reason="pip install kubernetes-validate to validate manifests"
)

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"
OVERLAYS = ("cpu", "gpu")

# Schemas shipped by kubernetes-validate 1.37 go from 1.25 to 1.37; we target
# clusters >= 1.33 (PDB unhealthyPodEvictionPolicy is GA since 1.31).
K8S_VERSION = "1.33"

WEB_PORT = 6066
RUN_AS_USER = 10001
SECRET_NAME = "simstream-credentials"
SECRET_ENV = {
    "SIMSTREAM_KAFKA_SASL_PASSWORD": "kafka-sasl-password",
    "SIMSTREAM_MILVUS_TOKEN": "milvus-token",
}
# Every setting the worker understands (catches typos in the ConfigMap: the
# settings class ignores unknown SIMSTREAM_* variables). Taken from the real
# settings class when it imports, else this copy.
_FALLBACK_SETTINGS = {
    "SIMSTREAM_KAFKA",
    "SIMSTREAM_KAFKA_SECURITY_PROTOCOL",
    "SIMSTREAM_KAFKA_SASL_MECHANISM",
    "SIMSTREAM_KAFKA_SASL_USERNAME",
    "SIMSTREAM_KAFKA_SASL_PASSWORD",
    "SIMSTREAM_KAFKA_SSL_CAFILE",
    "SIMSTREAM_MILVUS_URI",
    "SIMSTREAM_MILVUS_TOKEN",
    "SIMSTREAM_APP_ID",
    "SIMSTREAM_EVENTS_TOPIC",
    "SIMSTREAM_NEIGHBORS_TOPIC",
    "SIMSTREAM_DLQ_TOPIC",
    "SIMSTREAM_REFRESH_TOPIC",
    "SIMSTREAM_TOPIC_PARTITIONS",
    "SIMSTREAM_TOPIC_REPLICATION",
    "SIMSTREAM_CREATE_TOPICS",
    "SIMSTREAM_BATCH_SIZE",
    "SIMSTREAM_BATCH_WITHIN_S",
    "SIMSTREAM_TOP_K",
    "SIMSTREAM_DEVICE",
    "SIMSTREAM_TORCH_THREADS",
    "SIMSTREAM_LOG_FORMAT",
    "SIMSTREAM_LOG_LEVEL",
    "SIMSTREAM_WEB_HOST",
    "SIMSTREAM_WEB_PORT",
    "SIMSTREAM_DATA_DIR",
    "SIMSTREAM_IMAGE_ROOT",
}


def _settings_class():
    try:
        from simstream.settings import Settings
    except Exception:  # noqa: BLE001 - the worker's deps may be absent where only deploy/ is tested
        return None
    return Settings


def known_settings() -> set[str]:
    settings = _settings_class()
    if settings is None:
        return _FALLBACK_SETTINGS
    return {f"SIMSTREAM_{name.upper()}" for name in settings.model_fields}


SECRETISH = re.compile(r"PASSWORD|TOKEN|SECRET|CREDENTIAL|PRIVATE|API_?KEY", re.I)

# Kinds that kubernetes-validate has no schema for, with a checker each.
CRD_KINDS = {
    ("keda.sh/v1alpha1", "ScaledObject"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
}
NAMESPACED_KINDS = {
    "ConfigMap", "Deployment", "Service", "ServiceAccount", "PodDisruptionBudget",
    "NetworkPolicy", "ScaledObject", "ServiceMonitor", "PrometheusRule", "Secret",
}


# --------------------------------------------------------------------------- helpers


def _renderer() -> list[str]:
    kubectl = shutil.which("kubectl")
    if kubectl:
        return [kubectl, "kustomize"]
    kustomize = shutil.which("kustomize")
    if kustomize:
        return [kustomize, "build"]
    pytest.skip("neither kubectl nor kustomize is on PATH: cannot render deploy/k8s overlays")


def render(path: Path) -> list[dict[str, Any]]:
    proc = subprocess.run(
        [*_renderer(), str(path)], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, f"kustomize failed for {path}:\n{proc.stderr}"
    docs = [d for d in yaml.safe_load_all(proc.stdout) if d]
    assert docs, f"{path} rendered no resources"
    return docs


def one(docs: list[dict], kind: str) -> dict:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"expected exactly one {kind}, got {[d['metadata']['name'] for d in found]}"
    return found[0]


def config(docs: list[dict]) -> dict[str, str]:
    return one(docs, "ConfigMap").get("data", {})


def pod_spec(docs: list[dict]) -> dict:
    return one(docs, "Deployment")["spec"]["template"]["spec"]


def worker(docs: list[dict]) -> dict:
    containers = pod_spec(docs)["containers"]
    assert [c["name"] for c in containers] == ["worker"]
    return containers[0]


def selector_matches(match_labels: dict, labels: dict) -> bool:
    return bool(match_labels) and all(labels.get(k) == v for k, v in match_labels.items())


def matches_expressions(expressions: list[dict], labels: dict) -> bool:
    """Whether ``labels`` satisfy a selector's matchExpressions (operator In only)."""
    assert all(e["operator"] == "In" for e in expressions)
    return all(labels.get(e["key"]) in e["values"] for e in expressions)


def resolve_port(container: dict, port: int | str) -> int:
    if isinstance(port, int):
        return port
    named = {p["name"]: p["containerPort"] for p in container.get("ports", []) if "name" in p}
    assert port in named, f"probe/service port {port!r} is not a named container port"
    return named[port]


def validate_builtin(doc: dict) -> None:
    kind = f"{doc['kind']}/{doc['metadata'].get('name')}"
    try:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        pytest.fail(f"{kind} is invalid for Kubernetes {K8S_VERSION}: {e.message} at {list(e.path)}")
    except kubernetes_validate.SchemaNotFoundError as e:
        pytest.fail(f"{kind}: {e.message} (CRD kinds must be listed in CRD_KINDS and checked)")


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request) -> tuple[str, list[dict]]:
    return request.param, render(K8S / "overlays" / request.param)


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    return {name: render(K8S / "overlays" / name) for name in OVERLAYS}


# --------------------------------------------------------------------------- schema


def test_validator_is_not_a_no_op():
    """Guard against a validator that silently accepts anything."""
    good = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "x"},
        "data": {"A": "b"},
    }
    kubernetes_validate.validate(good, K8S_VERSION, strict=True)
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate({**good, "data": {"A": 1}}, K8S_VERSION, strict=True)
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate({**good, "dta": {}}, K8S_VERSION, strict=True)


def test_every_resource_is_valid(overlay):
    _, docs = overlay
    kinds = {d["kind"] for d in docs}
    expected = {
        "ConfigMap", "Deployment", "Service", "ServiceAccount",
        "PodDisruptionBudget", "NetworkPolicy", "ScaledObject",
    }
    assert expected <= kinds, f"missing kinds: {expected - kinds}"
    for doc in docs:
        if (doc["apiVersion"], doc["kind"]) in CRD_KINDS:
            continue  # checked by the dedicated tests below
        validate_builtin(doc)


def test_validation_catches_a_broken_deployment(overlay):
    _, docs = overlay
    broken = yaml.safe_load(yaml.safe_dump(one(docs, "Deployment")))
    broken["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGet"]["pth"] = "/x"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def test_all_in_one_namespace(overlay):
    _, docs = overlay
    namespaces = {d["metadata"].get("namespace") for d in docs if d["kind"] in NAMESPACED_KINDS}
    assert namespaces == {"simstream"}


# --------------------------------------------------------------------------- pod security


def test_pod_security(overlay):
    _, docs = overlay
    spec = pod_spec(docs)
    psc = spec["securityContext"]
    assert psc["runAsNonRoot"] is True
    assert psc["runAsUser"] == RUN_AS_USER
    assert psc["seccompProfile"]["type"] == "RuntimeDefault"
    assert not spec.get("hostNetwork") and not spec.get("hostPID") and not spec.get("hostIPC")
    assert spec["automountServiceAccountToken"] is False

    for c in spec["containers"] + spec.get("initContainers", []):
        sc = c["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False, c["name"]
        assert sc["readOnlyRootFilesystem"] is True, c["name"]
        assert sc.get("privileged", False) is False, c["name"]
        assert sc["capabilities"]["drop"] == ["ALL"], c["name"]
        assert not sc["capabilities"].get("add"), c["name"]
        assert sc.get("runAsUser", RUN_AS_USER) == RUN_AS_USER, c["name"]
        assert sc.get("runAsNonRoot", True) is True, c["name"]


def test_service_account_has_no_token(overlay):
    _, docs = overlay
    sa = one(docs, "ServiceAccount")
    assert pod_spec(docs)["serviceAccountName"] == sa["metadata"]["name"]
    assert sa["automountServiceAccountToken"] is False


def test_writable_dirs_are_empty_dirs(overlay):
    """Read-only root: /tmp and the data dir must be emptyDir mounts."""
    _, docs = overlay
    spec = pod_spec(docs)
    empty_dirs = {v["name"] for v in spec["volumes"] if "emptyDir" in v}
    mounts = {m["mountPath"]: m["name"] for m in worker(docs)["volumeMounts"]}
    data_dir = config(docs)["SIMSTREAM_DATA_DIR"]
    for path in ("/tmp", data_dir):
        assert path in mounts, f"{path} is not mounted"
        assert mounts[path] in empty_dirs, f"{path} is not an emptyDir"
        assert not any(
            m.get("readOnly") for m in worker(docs)["volumeMounts"] if m["mountPath"] == path
        )


_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(m|k|M|G|T|Ki|Mi|Gi|Ti)?$")
_FACTOR = {None: 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12,
           "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


def quantity(value: int | float | str) -> float:
    match = _QUANTITY.match(str(value))
    assert match, f"not a Kubernetes quantity: {value!r}"
    return float(match.group(1)) * _FACTOR[match.group(2)]


def test_resources_have_requests_and_limits(overlay):
    _, docs = overlay
    res = worker(docs)["resources"]
    for key in ("cpu", "memory"):
        assert key in res["requests"], key
        assert key in res["limits"], key
    for key, limit in res["limits"].items():
        assert quantity(res["requests"].get(key, limit)) <= quantity(limit), key
    assert quantity(res["requests"]["memory"]) >= 2**30, "the encoders need at least 1Gi"


def test_image_is_pinned_and_runs_the_worker(overlay):
    name, docs = overlay
    c = worker(docs)
    image = c["image"]
    assert ":" in image.rsplit("/", 1)[-1], f"{image} has no tag"
    tag = image.rsplit(":", 1)[-1]
    assert tag != "latest"
    assert tag.endswith(f"-{name}"), f"{name} overlay uses image tag {tag}"
    assert "command" not in c, "keep the image ENTRYPOINT (simstream)"
    assert c.get("args") == ["worker"]


# --------------------------------------------------------------------------- probes and ports


def test_probes(overlay):
    _, docs = overlay
    c = worker(docs)
    for probe, path in (
        ("startupProbe", "/healthz"),
        ("livenessProbe", "/healthz"),
        ("readinessProbe", "/readyz"),
    ):
        http = c[probe]["httpGet"]
        assert http["path"] == path, probe
        assert resolve_port(c, http["port"]) == WEB_PORT, probe
    sp = c["startupProbe"]
    window = sp.get("initialDelaySeconds", 0) + sp.get("periodSeconds", 10) * sp.get(
        "failureThreshold", 3
    )
    assert window >= 180, f"startupProbe allows only {window}s for the model load"


def test_web_settings_match_the_container(overlay):
    _, docs = overlay
    cfg = config(docs)
    assert cfg["SIMSTREAM_WEB_HOST"] == "0.0.0.0", "probes cannot reach a loopback-only server"
    assert int(cfg["SIMSTREAM_WEB_PORT"]) == WEB_PORT
    ports = {p["name"]: p["containerPort"] for p in worker(docs)["ports"]}
    assert ports == {"metrics": WEB_PORT}


def named(docs: list[dict], kind: str, name: str) -> dict:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}"
    return found[0]


def test_service_exposes_metrics(overlay):
    _, docs = overlay
    svc = named(docs, "Service", "simstream-worker")
    labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert selector_matches(svc["spec"]["selector"], labels)
    ports = svc["spec"]["ports"]
    assert [p["name"] for p in ports] == ["metrics"]
    assert ports[0]["port"] == WEB_PORT
    assert resolve_port(worker(docs), ports[0]["targetPort"]) == WEB_PORT


def test_pdb_selects_the_workers(overlay):
    _, docs = overlay
    pdb = one(docs, "PodDisruptionBudget")
    labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert selector_matches(pdb["spec"]["selector"]["matchLabels"], labels)
    assert "maxUnavailable" in pdb["spec"] or "minAvailable" in pdb["spec"]


# --------------------------------------------------------------------------- config and secrets


def test_configmap_is_known_settings_without_secrets(overlay):
    _, docs = overlay
    cfg = config(docs)
    unknown = set(cfg) - known_settings()
    assert not unknown, f"unknown settings (typo?): {sorted(unknown)}"
    leaked = [k for k in cfg if SECRETISH.search(k)]
    assert not leaked, f"secret settings in the ConfigMap: {leaked}"
    for key, value in cfg.items():
        # No credentials embedded in URIs (scheme://user:pass@host).
        assert not re.search(r"://[^/@\s]+:[^/@\s]+@", value), key
    assert not one(docs, "ConfigMap").get("binaryData")


def test_configmap_values(overlay):
    _, docs = overlay
    cfg = config(docs)
    assert cfg["SIMSTREAM_KAFKA"].startswith("kafka://")
    assert cfg["SIMSTREAM_KAFKA_SECURITY_PROTOCOL"] in {
        "PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL",
    }
    if "SIMSTREAM_KAFKA_SASL_MECHANISM" in cfg:
        assert cfg["SIMSTREAM_KAFKA_SASL_MECHANISM"] in {"PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"}
    assert cfg["SIMSTREAM_DEVICE"] in {"auto", "cpu", "cuda"}
    assert cfg["SIMSTREAM_LOG_FORMAT"] in {"json", "console", "auto"}
    assert cfg["SIMSTREAM_CREATE_TOPICS"] in {"true", "false"}
    for key in ("SIMSTREAM_TOPIC_PARTITIONS", "SIMSTREAM_TOPIC_REPLICATION",
                "SIMSTREAM_BATCH_SIZE", "SIMSTREAM_TOP_K", "SIMSTREAM_TORCH_THREADS"):
        assert int(cfg[key]) > 0, key
    assert float(cfg["SIMSTREAM_BATCH_WITHIN_S"]) > 0
    topics = [cfg[k] for k in cfg if k.endswith("_TOPIC")]
    assert len(topics) >= 3 and len(set(topics)) == len(topics), topics


def test_configmap_parses_with_the_worker_settings(overlay, monkeypatch):
    """The real settings class accepts the rendered ConfigMap plus the Secret env."""
    settings_cls = _settings_class()
    if settings_cls is None:
        pytest.skip("streams.settings does not import here (worker deps missing)")
    _, docs = overlay
    for key in list(os.environ):
        if key.startswith("SIMSTREAM_"):
            monkeypatch.delenv(key)
    for key, value in config(docs).items():
        monkeypatch.setenv(key, value)
    for name in SECRET_ENV:
        monkeypatch.setenv(name, "not-a-real-secret")
    settings = settings_cls()
    cfg = config(docs)
    assert settings.web_port == int(cfg["SIMSTREAM_WEB_PORT"])
    assert settings.topic_partitions == int(cfg["SIMSTREAM_TOPIC_PARTITIONS"])
    assert str(settings.data_dir) == cfg["SIMSTREAM_DATA_DIR"]
    assert settings.create_topics is (cfg["SIMSTREAM_CREATE_TOPICS"] == "true")


def test_env_wiring(overlay):
    _, docs = overlay
    c = worker(docs)
    cm_name = one(docs, "ConfigMap")["metadata"]["name"]
    assert {"configMapRef": {"name": cm_name}} in c["envFrom"]
    assert not any("secretRef" in e for e in c["envFrom"]), "map Secret keys explicitly"

    env = {e["name"]: e for e in c.get("env", [])}
    for name, key in SECRET_ENV.items():
        assert name in env, f"{name} is not wired"
        assert "value" not in env[name], f"{name} has a literal value"
        ref = env[name]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": SECRET_NAME, "key": key, "optional": True}
    for name, e in env.items():
        if SECRETISH.search(name):
            assert "value" not in e, f"{name} has a literal value"
    # The overlays must not ship credentials themselves.
    assert not [d for d in docs if d["kind"] == "Secret"]


# --------------------------------------------------------------------------- network policy


def test_network_policy(overlay):
    _, docs = overlay
    np = one(docs, "NetworkPolicy")["spec"]
    labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert selector_matches(np["podSelector"]["matchLabels"], labels)
    assert set(np["policyTypes"]) == {"Ingress", "Egress"}

    # Ingress: only the web port, only from the monitoring namespace (metrics) and from the
    # workers themselves (a joining worker downloads a peer's snapshot: streams/peers.py).
    assert np["ingress"], "no ingress rule: Prometheus cannot scrape"
    for rule in np["ingress"]:
        assert [(p.get("protocol", "TCP"), p["port"]) for p in rule["ports"]] == [("TCP", WEB_PORT)]
        assert rule.get("from"), "ingress open to every pod"
        for peer in rule["from"]:
            assert "ipBlock" not in peer
            if "namespaceSelector" in peer:
                assert peer["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "monitoring"}
            else:  # same namespace: the worker pods only
                assert matches_expressions(peer["podSelector"]["matchExpressions"], labels)
                assert not matches_expressions(peer["podSelector"]["matchExpressions"],
                                               {**labels, "app.kubernetes.io/component": "serve"})
    egress_to_workers = [r for r in np["egress"] for peer in r.get("to", [])
                         if "podSelector" in peer and "namespaceSelector" not in peer]
    assert egress_to_workers and all([p["port"] for p in r["ports"]] == [WEB_PORT] for r in egress_to_workers)

    egress_ports = {
        (p.get("protocol", "TCP"), p["port"]) for rule in np["egress"] for p in rule.get("ports", [])
    }
    assert {("UDP", 53), ("TCP", 53), ("TCP", 9092), ("TCP", 9093), ("TCP", 19530)} <= egress_ports
    for rule in np["egress"]:
        assert rule.get("ports"), "egress rule without ports allows everything"

    # The kustomize `labels` transformer would add our own labels to peers'
    # matchLabels, which then match nothing.
    for rule in np["ingress"] + np["egress"]:
        for peer in rule.get("from", []) + rule.get("to", []):
            peer_labels = peer.get("podSelector", {}).get("matchLabels", {})
            assert "app.kubernetes.io/part-of" not in peer_labels, peer


# --------------------------------------------------------------------------- KEDA


def test_scaled_object(overlay):
    _, docs = overlay
    so = one(docs, "ScaledObject")
    assert so["apiVersion"] == "keda.sh/v1alpha1"
    assert so["metadata"].get("name")
    spec = so["spec"]
    deployment = one(docs, "Deployment")
    target = spec["scaleTargetRef"]
    assert target["name"] == deployment["metadata"]["name"]
    assert target.get("kind", "Deployment") == "Deployment"
    assert target.get("apiVersion", "apps/v1") == "apps/v1"
    assert "replicas" not in deployment["spec"], "KEDA owns the replica count"

    cfg = config(docs)
    partitions = int(cfg["SIMSTREAM_TOPIC_PARTITIONS"])
    min_r, max_r = int(spec.get("minReplicaCount", 0)), int(spec["maxReplicaCount"])
    assert 1 <= min_r <= max_r <= partitions, (min_r, max_r, partitions)

    triggers = spec["triggers"]
    assert [t["type"] for t in triggers] == ["kafka"]
    meta = triggers[0]["metadata"]
    brokers = cfg["SIMSTREAM_KAFKA"].removeprefix("kafka://").replace(";", ",")
    assert meta["bootstrapServers"] == brokers
    assert meta["consumerGroup"] == cfg["SIMSTREAM_APP_ID"]
    assert meta["topic"] == cfg["SIMSTREAM_EVENTS_TOPIC"]
    assert int(meta["lagThreshold"]) > 0
    assert meta.get("allowIdleConsumers", "false") == "false"
    # KEDA wants strings in trigger metadata.
    assert all(isinstance(v, str) for v in meta.values()), meta


# --------------------------------------------------------------------------- cpu vs gpu


def _gpu_amount(docs: list[dict]) -> dict[str, Any]:
    res = worker(docs)["resources"]
    return {
        part: res.get(part, {}).get("nvidia.com/gpu")
        for part in ("requests", "limits")
        if "nvidia.com/gpu" in res.get(part, {})
    }


def test_gpu_overlay_requests_a_gpu(rendered):
    docs = rendered["gpu"]
    amounts = _gpu_amount(docs)
    assert int(amounts.get("limits", 0)) == 1
    if "requests" in amounts:
        assert int(amounts["requests"]) == int(amounts["limits"])
    spec = pod_spec(docs)
    assert spec["nodeSelector"].get("nvidia.com/gpu.present") == "true"
    assert {
        "key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"
    } in spec["tolerations"]
    assert config(docs)["SIMSTREAM_DEVICE"] == "cuda"
    assert int(config(docs)["SIMSTREAM_BATCH_SIZE"]) > int(config(rendered["cpu"])["SIMSTREAM_BATCH_SIZE"])


def test_cpu_overlay_requests_no_gpu(rendered):
    docs = rendered["cpu"]
    assert _gpu_amount(docs) == {}
    spec = pod_spec(docs)
    assert "nvidia.com/gpu.present" not in spec.get("nodeSelector", {})
    assert config(docs)["SIMSTREAM_DEVICE"] == "cpu"


def test_torch_threads_fit_the_cpu_limit(overlay):
    _, docs = overlay
    cores = quantity(worker(docs)["resources"]["limits"]["cpu"])
    assert int(config(docs)["SIMSTREAM_TORCH_THREADS"]) <= max(1, cores)


# --------------------------------------------------------------------------- optional component


def test_servicemonitor_component(tmp_path):
    """The optional ServiceMonitor must select the Service and its named port."""
    rel = lambda p: os.path.relpath(p, tmp_path)  # noqa: E731  (kustomize rejects absolute roots)
    (tmp_path / "kustomization.yaml").write_text(
        yaml.safe_dump({
            "apiVersion": "kustomize.config.k8s.io/v1beta1",
            "kind": "Kustomization",
            "namespace": "simstream",
            "resources": [rel(K8S / "overlays" / "cpu")],
            "components": [rel(K8S / "components" / "servicemonitor")],
        })
    )
    docs = render(tmp_path)
    sm = one(docs, "ServiceMonitor")
    svc = named(docs, "Service", "simstream-worker")
    peers = named(docs, "Service", "simstream-worker-peers")
    selected = [s["metadata"]["name"] for s in docs if s["kind"] == "Service"
                and selector_matches(sm["spec"]["selector"]["matchLabels"], s["metadata"]["labels"])
                and not any(s["metadata"]["labels"].get(e["key"]) in e["values"]
                            for e in sm["spec"]["selector"].get("matchExpressions", []) if e["operator"] == "NotIn")]
    assert selected == ["simstream-worker"], "each pod scraped once: the peers Service left out"
    assert peers["spec"]["clusterIP"] == "None" and peers["spec"]["publishNotReadyAddresses"] is False
    assert sm["metadata"]["namespace"] == svc["metadata"]["namespace"]
    assert selector_matches(sm["spec"]["selector"]["matchLabels"], svc["metadata"]["labels"])
    svc_ports = {p["name"] for p in svc["spec"]["ports"]}
    assert sm["spec"]["endpoints"], "no endpoints"
    for ep in sm["spec"]["endpoints"]:
        assert ep["port"] in svc_ports
        assert ep.get("path", "/metrics") == "/metrics"
    for doc in docs:
        if (doc["apiVersion"], doc["kind"]) not in CRD_KINDS:
            validate_builtin(doc)


def test_alerts_component(tmp_path):
    """The optional PrometheusRule: on metrics the worker really exports, in the workers' namespace."""
    rel = lambda p: os.path.relpath(p, tmp_path)  # noqa: E731  (kustomize rejects absolute roots)
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization", "namespace": "simstream",
        "resources": [rel(K8S / "overlays" / "cpu")], "components": [rel(K8S / "components" / "alerts")]}))
    docs = render(tmp_path)
    rule = one(docs, "PrometheusRule")
    assert rule["metadata"]["namespace"] == "simstream"
    from simstream.streams import metrics

    exported = {m.name for m in metrics.REGISTRY.collect()}
    rules = [r for g in rule["spec"]["groups"] for r in g["rules"]]
    assert {r["alert"] for r in rules} >= {"SimstreamStuckPartition", "SimstreamPartitionStalled", "SimstreamRebalanceStuck"}
    for r in rules:
        used = {re.sub(r"_(total|bucket|sum|count)$", "", m) for m in re.findall(r"simstream_[a-z_]+", r["expr"])}
        assert used <= exported, (r["alert"], used - exported)


def test_peers_service_is_what_the_workers_are_told(overlay):
    """SIMSTREAM_SNAPSHOT_PEERS names the headless Service of the ready workers, on their web port."""
    _, docs = overlay
    peers = named(docs, "Service", "simstream-worker-peers")
    labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert selector_matches(peers["spec"]["selector"], labels)
    host, port = config(docs)["SIMSTREAM_SNAPSHOT_PEERS"].split(":")
    assert host == peers["metadata"]["name"] and int(port) == WEB_PORT == peers["spec"]["ports"][0]["port"]


def test_standby_component(tmp_path):
    """The optional standby workers of `simstream migrate`: the worker's image, settings and Secret,
    `worker --role standby`, and labels that neither side's selectors share."""
    rel = lambda p: os.path.relpath(p, tmp_path)  # noqa: E731  (kustomize rejects absolute roots)
    cpu = yaml.safe_load((K8S / "overlays" / "cpu" / "kustomization.yaml").read_text())
    # as the component's comment says: enabled in an overlay, so the overlay's image applies to it too
    (tmp_path / "kustomization.yaml").write_text(
        yaml.safe_dump({**cpu, "resources": [rel(K8S / "base")], "components": [rel(K8S / "components" / "standby")]})
    )
    docs = render(tmp_path)
    deployments = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    live, standby = deployments["simstream-worker"], deployments["simstream-standby"]
    for doc in docs:
        if (doc["apiVersion"], doc["kind"]) not in CRD_KINDS:
            validate_builtin(doc)
        assert doc["metadata"].get("namespace", "simstream") == "simstream"
    live_c, standby_c = (d["spec"]["template"]["spec"]["containers"][0] for d in (live, standby))
    assert standby_c["args"] == ["worker", "--role", "standby"] and standby["spec"]["replicas"] == 1
    assert standby_c["image"] == live_c["image"] and standby_c["envFrom"] == live_c["envFrom"]
    assert standby_c["env"] == live_c["env"]  # the same Secret
    standby_pods = standby["spec"]["template"]["metadata"]["labels"]
    live_pods = live["spec"]["template"]["metadata"]["labels"]
    assert not selector_matches(live["spec"]["selector"]["matchLabels"], standby_pods)
    assert not selector_matches(standby["spec"]["selector"]["matchLabels"], live_pods)
    assert selector_matches(standby["spec"]["selector"]["matchLabels"], standby_pods)
    for doc in docs:
        if doc["kind"] in ("Service", "PodDisruptionBudget"):
            selector = doc["spec"]["selector"]
            assert not selector_matches(selector.get("matchLabels", selector), standby_pods), doc["metadata"]["name"]
    assert all(d["spec"]["scaleTargetRef"]["name"] == "simstream-worker" for d in docs if d["kind"] == "ScaledObject")
