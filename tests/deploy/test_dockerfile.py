"""Static checks of deploy/Dockerfile (no Docker engine is needed or used).

They keep the image consistent with the Kubernetes manifests: same uid, same
entrypoint/args, offline model loading, read-only-root friendly paths.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "deploy" / "Dockerfile"


def instructions() -> list[tuple[str, str, int]]:
    """(INSTRUCTION, arguments, stage index) with line continuations joined."""
    out: list[tuple[str, str, int]] = []
    stage = -1
    buf = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue  # comment inside a continued instruction
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        full = (buf + line).strip()
        buf = ""
        word, _, args = full.partition(" ")
        word = word.upper()
        if word == "FROM":
            stage += 1
        out.append((word, args.strip(), stage))
    assert not buf, "Dockerfile ends inside a line continuation"
    return out


def final_stage() -> list[tuple[str, str]]:
    ins = instructions()
    last = max(s for _, _, s in ins)
    return [(w, a) for w, a, s in ins if s == last]


def env_of(stage: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for word, args in stage:
        if word == "ENV":
            for key, value in re.findall(r"([A-Za-z_][A-Za-z0-9_]*)=(\S+)", args):
                env[key] = value
    return env


def test_multi_stage():
    stages = [a for w, a, _ in instructions() if w == "FROM"]
    assert len(stages) >= 2
    assert any(" AS builder" in s or " as builder" in s for s in stages)
    copies = [a for w, a in final_stage() if w == "COPY"]
    assert any(a.startswith("--from=builder") for a in copies), "runtime must copy from the builder"


def test_runs_as_uid_10001_matching_the_deployment():
    users = [a for w, a in final_stage() if w == "USER"]
    assert users, "no USER in the runtime stage"
    uid = users[-1].split(":")[0]
    deployment = yaml.safe_load((REPO / "deploy/k8s/base/deployment.yaml").read_text())
    run_as = deployment["spec"]["template"]["spec"]["securityContext"]["runAsUser"]
    assert uid == str(run_as) == "10001"


def test_entrypoint_and_cmd():
    stage = final_stage()
    entry = [json.loads(a) for w, a in stage if w == "ENTRYPOINT"]
    cmd = [json.loads(a) for w, a in stage if w == "CMD"]
    assert entry and entry[-1] == ["simstream"]
    assert cmd and cmd[-1] == ["worker"]


def test_offline_and_read_only_root_friendly():
    env = env_of(final_stage())
    assert env.get("HF_HUB_OFFLINE") == "1"
    assert env.get("TRANSFORMERS_OFFLINE") == "1"
    assert env.get("SIMSTREAM_DATA_DIR") == "/var/lib/simstream"
    for key in ("HOME", "XDG_CACHE_HOME", "HF_HOME", "TORCH_HOME"):
        assert key in env, key
        assert env[key].startswith(("/tmp", "/var/lib/simstream")), f"{key}={env[key]}"


def test_torch_comes_from_the_variant_index():
    ins = instructions()
    args = {a.split("=", 1)[0]: a.split("=", 1)[-1] for w, a, _ in ins if w == "ARG"}
    assert args.get("TORCH_VARIANT") == "cpu", "default build must be the CPU image"
    runs = " ".join(a for w, a, _ in ins if w == "RUN")
    assert "download.pytorch.org/whl/${TORCH_VARIANT}" in runs
    # torch must be installed before the project, or pip pulls the CUDA wheel.
    torch_at = runs.index("download.pytorch.org")
    project_at = runs.index(project_install())
    assert torch_at < project_at


def project_install() -> str:
    """The builder's ``pip install <the project>`` as written in the Dockerfile."""
    runs = " ".join(a for w, a, _ in instructions() if w == "RUN")
    found = re.findall(r"pip install (\.|\"\.[^\"]*\")", runs)
    assert len(found) == 1, found
    return f"pip install {found[0]}"


def test_the_worker_image_installs_only_the_base_and_serve_is_a_build_arg():
    """Slim installs: by default the image gets only what `simstream worker` imports (no quality,
    embedded, test extras); SIMSTREAM_EXTRAS=serve adds the query API's."""
    args = {a.split("=", 1)[0]: a.split("=", 1)[-1] for w, a, s in instructions() if w == "ARG" and s == 0}
    assert args.get("SIMSTREAM_EXTRAS") in ('""', ""), "the default image installs no extra"

    def installed(extras: str) -> str:  # what /bin/sh makes of the install line
        return subprocess.run(["sh", "-c", f"echo {project_install()}"], env={"SIMSTREAM_EXTRAS": extras},
                              capture_output=True, text=True, check=True).stdout.strip()

    assert installed("") == "pip install ."
    assert installed("serve") == "pip install .[serve]"
    text = DOCKERFILE.read_text()
    for extra in ("quality", "embedded", "test"):
        assert f"[{extra}" not in text and f",{extra}" not in text, extra


def test_dockerignore_keeps_the_context_small():
    ignore = (REPO / "deploy" / "Dockerfile.dockerignore").read_text().split()
    for entry in (".git", ".venv"):
        assert entry in ignore, entry
    assert "pyproject.toml" not in ignore and "README.md" not in ignore


def test_the_healthcheck_probes_the_port_of_the_command_the_container_runs(tmp_path: Path) -> None:
    """Run HEALTHCHECK's own command against a local /healthz: a `serve` container is probed on
    SIMSTREAM_SERVE_PORT, a worker on SIMSTREAM_WEB_PORT (PID 1's arguments stood in by a file)."""
    import http.server
    import os
    import socket
    import sys
    import threading

    (check,) = [args for word, args in final_stage() if word == "HEALTHCHECK"]
    cmd = json.loads(check[check.index("CMD") + 3:].strip())
    assert cmd[:2] == ["python", "-c"]

    class Healthz(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            self.send_response(200 if self.path == "/healthz" else 404)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Healthz)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]  # nothing listens here once the socket is closed
    up = str(server.server_address[1])
    try:
        def probe(args: bytes, serve_port: str, web_port: str) -> int:
            cmdline = tmp_path / "cmdline"
            cmdline.write_bytes(args)
            code = cmd[2].replace("/proc/1/cmdline", str(cmdline))
            env = {**os.environ, "SIMSTREAM_SERVE_PORT": serve_port, "SIMSTREAM_WEB_PORT": web_port}
            return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, timeout=30).returncode

        assert probe(b"/usr/local/bin/simstream\0serve\0", up, str(closed)) == 0
        assert probe(b"/usr/local/bin/simstream\0serve\0", str(closed), up) != 0
        assert probe(b"/usr/local/bin/simstream\0worker\0", str(closed), up) == 0
        assert probe(b"/usr/local/bin/simstream\0worker\0", up, str(closed)) != 0
    finally:
        server.shutdown()
