"""keep_freed_memory: the train step reuses XLA's per-step buffer instead of faulting in fresh
pages every step (the mechanism behind a quarter of the CPU step time; see
``benchmarks/README.md``). Page faults are counted, not time, so the test does not depend on
the machine's speed or load."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc only")]

WORKER = r"""
import json, resource, sys
import jax, numpy as np
from jaxllm.config import ModelConfig, TrainConfig
from jaxllm._memory import keep_freed_memory
from jaxllm.train import Trainer

# nanoGPT's CPU shape: a 45 MB temporary buffer per train step, above glibc's mmap threshold
mcfg = ModelConfig(vocab_size=65, context_length=64, n_layer=4, n_head=4, d_model=128,
                   bias=False)
tcfg = TrainConfig(steps=40, batch_size=12)
tokens = np.random.default_rng(0).integers(0, 65, 20_000).astype(np.int32)
trainer = Trainer(mcfg, tcfg, tokens)
for s in range(10):
    trainer.train_step(trainer.train_batches[s])
jax.block_until_ready(trainer.state)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for s in range(10, 40):
    trainer.train_step(trainer.train_batches[s])
jax.block_until_ready(trainer.state)
after = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
print(json.dumps({"tuned": keep_freed_memory(), "faults_per_step": (after - before) / 30}))
"""


def _faults_per_step(keep: str) -> dict:
    env = {**os.environ, "JAXLLM_KEEP_FREED_MEMORY": keep, "JAX_PLATFORMS": "cpu"}
    env.pop("MALLOC_ARENA_MAX", None)
    proc = subprocess.run([sys.executable, "-c", WORKER], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_train_steps_reuse_their_buffer():
    on, off = _faults_per_step("1"), _faults_per_step("0")
    assert on["tuned"] and not off["tuned"]
    # Without the settings each step maps its 45 MB buffer afresh: ~11,000 faults (4 KiB pages).
    assert off["faults_per_step"] > 5000, off
    assert on["faults_per_step"] < 500, on
