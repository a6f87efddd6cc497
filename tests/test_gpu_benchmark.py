"""benchmarks/gpu.py runs on a CPU at toy sizes and prints the tables it prints on a GPU."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu.py"

COLUMNS_124M = ["model", "params", "devices", "batch", "context", "compile s", "step ms",
                "tokens/s", "TFLOP/s", "MFU %", "peak mem GiB"]
COLUMNS_SHAKESPEARE = ["model", "params", "batch", "context", "target val", "reached",
                       "at step", "wall s to target", "compile s", "best val", "steps run",
                       "tokens/s"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu") / "result.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "XLA_"))}
    env.update(JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_backend_optimization_level=0")
    proc = subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--json", str(out)],
                          capture_output=True, text=True, env=env, cwd=str(ROOT), timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc.stdout, json.loads(out.read_text())


def _header(stdout: str, first: str) -> list[str]:
    for line in stdout.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0] == "model" and first in cells:
            return cells
    raise AssertionError(f"no table with column {first!r} in:\n{stdout}")


def test_tables_have_the_expected_columns(tiny_run):
    stdout, _ = tiny_run
    assert _header(stdout, "MFU %") == COLUMNS_124M
    assert _header(stdout, "wall s to target") == COLUMNS_SHAKESPEARE
    assert "TINY sizes" in stdout


def test_throughput_numbers_are_sane(tiny_run):
    _, res = tiny_run
    assert res["backend"] == "cpu" and res["tiny"] is True
    t = res["throughput"]
    assert t["devices"] == 1 and t["batch"] == 4 and t["context"] == 64
    assert t["dtype"] == "bfloat16"
    assert t["step_ms"] > 0 and t["compile_s"] > 0
    # tokens/s is batch * context / step time, and achieved FLOP/s follow from it.
    assert math.isclose(t["tokens_per_s"], 4 * 64 / (t["step_ms"] / 1e3), rel_tol=1e-6)
    assert t["tflops_per_s"] > 0
    assert t["mfu"] is None and res["peak_tflops"] is None  # a CPU has no entry in the table
    assert math.isfinite(t["loss_first"]) and abs(t["loss_first"] - math.log(256)) < 0.3


def test_shakespeare_reaches_its_target_and_reports_the_time(tiny_run):
    _, res = tiny_run
    s = res["shakespeare"]
    assert s["reached"] is True
    assert s["step"] is not None and s["step"] % 10 == 0
    assert s["best_val"] <= s["target"] == 3.3
    assert 0 < s["compile_s"] < s["wall_s"]
    evals = [h[2] for h in s["history"]]
    assert evals[-1] == round(s["best_val"], 4) and evals[0] < math.log(65)


def test_peak_table_and_flops_formula():
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import gpu
    finally:
        sys.path.remove(str(SCRIPT.parent))
    from jaxllm.config import get_preset

    assert gpu.peak_tflops("NVIDIA H200") == 989.0
    assert gpu.peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert gpu.peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert gpu.peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert gpu.peak_tflops("cpu") is None
    # nanoGPT's estimate for GPT-2 124M at context 1024: 6 N + 12 L T d with N the
    # parameters without position embeddings (123.65M for vocab 50257).
    cfg = get_preset("gpt2").model
    n = 124_439_808 - 1024 * 768
    assert gpu.flops_per_token(cfg, 1024) == 6 * n + 12 * 12 * 1024 * 768
