"""The catalog's rows decoded to float32 and resident on an accelerator, kept in step with writes.

On a GPU the side index's scans multiply float32 rows (index/packed_scan.py: "decoded", the
window of a float32 sum over every column). Decoding the packed rows on the CPU and copying every
block over PCIe on every pass would make a scan cost the catalog's size in host work each time;
here the decoded rows live on the device, and each write copies only the rows it changed. The
values are the packed rows' own (``PackedRows.read``), so a device scan scores exactly the vectors
a CPU scan and the oracle do.

Memory: 4 bytes a column a row on the device (3,232 columns: 12.9 GB per million products),
beside the packed rows in host memory (which stay the source of every decoded vector).
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import numpy as np
import torch

__all__ = ["DeviceRows", "exact_float32_matmul"]


@contextlib.contextmanager
def exact_float32_matmul() -> Iterator[None]:
    """float32 matrix products summed in float32: no TF32 (10-bit inputs) or bf16 shortcuts, which
    cuBLAS takes when allowed. The scan's window bounds a float32 sum in any order, nothing
    coarser. The settings are process-wide; they are put back afterwards."""
    precision, tf32 = torch.get_float32_matmul_precision(), torch.backends.cuda.matmul.allow_tf32
    torch.set_float32_matmul_precision("highest")
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.set_float32_matmul_precision(precision)


class DeviceRows:
    """A float32 matrix of ``capacity`` rows on ``device``: row r is the decoded vector of the side
    index's row r (zeros where none is held)."""

    def __init__(self, dim: int, capacity: int, device: torch.device) -> None:
        self.dim = dim
        self.device = device
        self.data = torch.zeros((max(int(capacity), 1), dim), dtype=torch.float32, device=device)

    @property
    def nbytes(self) -> int:
        return self.data.numel() * self.data.element_size()

    def grow(self, capacity: int) -> None:
        """Room for ``capacity`` rows (one copy on the device, as the host matrix grows)."""
        if capacity <= len(self.data):
            return
        grown = torch.zeros((capacity, self.dim), dtype=torch.float32, device=self.device)
        grown[:len(self.data)] = self.data
        self.data = grown

    def write(self, rows: np.ndarray, decoded: np.ndarray) -> None:
        """Set ``rows`` to their decoded vectors (one copy of just those rows)."""
        if len(rows) == 0:
            return
        index = torch.from_numpy(np.asarray(rows, np.int64)).to(self.device)
        self.data[index] = torch.from_numpy(np.ascontiguousarray(decoded, np.float32)).to(self.device)

    def clear(self, row: int) -> None:
        """A deleted row: zeros (scans skip it by the live flags anyway)."""
        self.data[row] = 0.0

    def block(self, first: int, stop: int) -> torch.Tensor:
        """Rows [first, stop) as a view on the device."""
        return self.data[first:stop]
