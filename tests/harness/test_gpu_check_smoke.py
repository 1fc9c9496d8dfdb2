"""bench/gpu_check.py, the script a session lent a GPU runs once, runs here on the CPU at a small
size (the same code: resident rows on a device, the scan, the all-pairs pass, the exactness checks),
so it cannot rot unseen between GPU sessions; and it skips cleanly where no GPU is asked for."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "gpu_check.py"


def test_the_gpu_check_runs_on_the_cpu_and_finds_every_list_exact(tmp_path: Path) -> None:
    out = tmp_path / "gpu.json"
    run = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--catalog", "3000", "--big", "5000",
                          "--items", "8", "--batches", "4", "--json", str(out)],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    report = json.loads(out.read_text())
    side, big = report["side_index"], report["big"]
    assert report["exact"] and "EXACT" in run.stdout
    assert side["scan_lists_equal"] == side["all_pairs_lists_equal"] == side["sampled_lists"] == 64
    assert side["all_pairs_candidates_held"] > 0 and big["candidates_hold_the_top"] == 8
    assert report["encoders"]["batch_4"]["text_items_per_s"] > 0


def test_without_a_gpu_the_check_says_so_and_passes() -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible: the check runs for real there")
    run = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and "skipped, no CUDA device" in run.stdout
