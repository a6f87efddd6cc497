"""GPU benchmark: GPT-2 124M training throughput and MFU, and nanoGPT's Shakespeare run.

Two measurements, one script, meant to finish in under 5 minutes on one H100 or H200 (the
Shakespeare run stops itself after ``--time-limit`` seconds, 170 by default):

1. **GPT-2 124M shape** (12 layers, 12 heads, width 768, context 1024, vocabulary padded from
   50257 to 50304 as nanoGPT does), bf16 compute with float32 parameters and Adam moments,
   ``jaxllm.train.Trainer`` on a mesh of every local device (:mod:`jaxllm.sharding`). It
   reports step time, tokens per second, model FLOPs utilisation (MFU) against the chip's
   dense bf16 peak and the peak device memory. Tokens are random (throughput does not depend
   on them).
2. **Shakespeare, character level, nanoGPT's GPU settings** (6 layers, 6 heads, width 384,
   context 256, batch 64, dropout 0.2, learning rate 1e-3 with 100 warmup steps and cosine
   decay to 1e-4 over 5000 steps, beta2 0.99, weight decay 0.1, no biases, bf16): trains on
   the first 90 % of ``tinyshakespeare.txt``, evaluates on the rest every 250 steps (200
   batches, as nanoGPT), and reports the wall time until the validation loss reaches 1.47,
   the best value nanoGPT's README reports for this setting (1.4697).

MFU follows the PaLM paper (Chowdhery et al., 2022, appendix B) and nanoGPT's
``estimate_mfu``: ``6 N + 12 L T d`` FLOPs per trained token, where N counts the parameters
that take part in matrix multiplications (the tied token embedding counts once, as the output
layer; position embeddings do not count). Peaks are dense (no 2:4 sparsity) bf16 tensor-core
figures from the vendors' data sheets, in :data:`PEAK_BF16_TFLOPS`.

On a CPU (or with ``--tiny``) the same code runs at toy sizes in seconds, for the tests:

    python benchmarks/gpu.py                 # full sizes on a GPU/TPU, tiny on CPU
    python benchmarks/gpu.py --tiny --json out.json
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import math
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if importlib.util.find_spec("jaxllm") is None:  # run from a checkout without installing
    sys.path.insert(0, str(REPO))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from jaxllm import sharding as sh  # noqa: E402
from jaxllm.config import ModelConfig, TrainConfig, get_preset  # noqa: E402
from jaxllm.data import Batches, load_corpus, load_text, train_val_split  # noqa: E402
from jaxllm.losses import next_token_loss  # noqa: E402
from jaxllm.model import count_params  # noqa: E402
from jaxllm.tokenizer import CharTokenizer  # noqa: E402
from jaxllm.train import Trainer, eval_step  # noqa: E402

#: Where tinyshakespeare.txt is looked for when --text is not given: beside the repository
#: (the course's shared/ folder), then inside it.
TEXT_CANDIDATES = (REPO.parent / "shared" / "data" / "tinyshakespeare.txt",
                   REPO / "shared" / "data" / "tinyshakespeare.txt")
NANOGPT_VAL_LOSS = 1.47

#: Dense (not 2:4 sparse) bf16 peak per chip, TFLOP/s, matched against ``device_kind`` in this
#: order. Sources: NVIDIA H100 and H200 data sheets (SXM: 1,979 TFLOP/s "with sparsity", so
#: 989 dense; H100 PCIe 1,513 -> 756), A100 data sheet (312 dense), L4 (242 -> 121),
#: L40S (733 -> 362); Google Cloud TPU system-architecture pages (v4 275, v5e 197, v5p 459,
#: v6e 918).
PEAK_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756.0),
    ("H100", 989.0),
    ("H200", 989.0),
    ("GH200", 989.0),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("L4", 121.0),
    ("TPU v4", 275.0),
    ("TPU v5 lite", 197.0),
    ("TPU v5e", 197.0),
    ("TPU v5p", 459.0),
    ("TPU v5", 459.0),
    ("TPU v6 lite", 918.0),
    ("TPU v6e", 918.0),
)


def peak_tflops(device_kind: str) -> float | None:
    """The dense bf16 peak of one chip of this kind, or None if unknown (e.g. a CPU)."""
    for key, value in PEAK_BF16_TFLOPS:
        if key.lower() in device_kind.lower():
            return value
    return None


def flops_per_token(cfg: ModelConfig, context: int) -> float:
    """Training FLOPs per token, ``6 N + 12 L T d`` (PaLM appendix B; nanoGPT's estimate)."""
    n = count_params(cfg)
    if cfg.positions == "learned":
        n -= cfg.context_length * cfg.d_model  # a lookup, not a matmul
    if not cfg.tie_embeddings:
        n -= cfg.vocab_size * cfg.d_model  # the input embedding is a lookup
    return 6.0 * n + 12.0 * cfg.n_layer * context * cfg.d_model


def peak_memory_bytes() -> int | None:
    """Largest ``peak_bytes_in_use`` over the local devices (None where not reported)."""
    peaks = []
    for d in jax.local_devices():
        stats = d.memory_stats() if hasattr(d, "memory_stats") else None
        if stats and "peak_bytes_in_use" in stats:
            peaks.append(int(stats["peak_bytes_in_use"]))
    return max(peaks) if peaks else None


def _fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) \
        else format(value, spec)


def print_table(title: str, columns: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(columns)]
    print(f"\n{title}")
    print("| " + " | ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print("| " + " | ".join(v.rjust(w) for v, w in zip(r, widths, strict=True)) + " |")
    sys.stdout.flush()


def _is_oom(err: Exception) -> bool:
    text = str(err)
    return "RESOURCE_EXHAUSTED" in text or "Out of memory" in text or "OOM" in text


# -- 1. throughput of the GPT-2 124M shape ---------------------------------------------------

@dataclass
class Throughput:
    model: str
    params: int
    devices: int
    batch: int
    context: int
    dtype: str
    compile_s: float
    step_ms: float
    tokens_per_s: float
    tflops_per_s: float
    mfu: float | None
    peak_memory_gib: float | None
    loss_first: float
    loss_last: float


def throughput(cfg: ModelConfig, name: str, batch_per_device: int, steps: int,
               peak: float | None, seed: int = 0) -> Throughput:
    mesh = sh.make_mesh()
    n_dev = mesh.devices.size
    batch = batch_per_device * n_dev
    T = cfg.context_length
    tcfg = TrainConfig(steps=10_000, batch_size=batch, learning_rate=6e-4,
                       min_learning_rate=6e-5, warmup_steps=10, weight_decay=0.1, beta2=0.95,
                       seed=seed)
    trainer = Trainer(cfg, tcfg, Batches(np.zeros(2 * T + 2, np.int32), batch, T), mesh=mesh)
    rng = np.random.default_rng(seed)
    data = [rng.integers(0, cfg.vocab_size, (batch, T + 1), dtype=np.int32) for _ in range(4)]
    # Placed on the devices beforehand: the timings leave out host-to-device copies.
    batches = [{"inputs": sh.shard_batch(d[:, :-1], mesh),
                "targets": sh.shard_batch(d[:, 1:], mesh)} for d in data]

    t0 = time.perf_counter()
    first = float(trainer.train_step(batches[0])["loss"])
    compile_s = time.perf_counter() - t0
    for i in range(2):  # warm-up
        m = trainer.train_step(batches[(i + 1) % 4])
    jax.block_until_ready(m)
    t0 = time.perf_counter()
    for i in range(steps):
        m = trainer.train_step(batches[i % 4])
    last = float(m["loss"])  # waits for the last step
    secs = (time.perf_counter() - t0) / steps
    tok_s = batch * T / secs
    achieved = flops_per_token(cfg, T) * tok_s / 1e12
    mfu = None if peak is None else achieved / (peak * n_dev)
    mem = peak_memory_bytes()
    return Throughput(name, count_params(cfg), n_dev, batch, T, cfg.dtype, compile_s,
                      secs * 1e3, tok_s, achieved, mfu, None if mem is None else mem / 2**30,
                      first, last)


# -- 2. nanoGPT's Shakespeare character run --------------------------------------------------

@dataclass
class TimeToLoss:
    model: str
    params: int
    corpus: str
    batch: int
    context: int
    target: float
    reached: bool
    step: int | None
    wall_s: float | None
    train_s: float
    compile_s: float
    best_val: float
    steps_run: int
    tokens_per_s: float
    history: list[tuple[int, float, float]]


def shakespeare(cfg: ModelConfig, tcfg: TrainConfig, text: str, corpus: str, target: float,
                eval_interval: int, eval_batches: int, time_limit: float) -> TimeToLoss:
    tok = CharTokenizer.from_text(text)
    cfg = cfg.replace(vocab_size=tok.vocab_size)
    train, val = train_val_split(tok.encode(text), 0.1)
    mesh = sh.make_mesh()
    if tcfg.batch_size % mesh.devices.size:
        tcfg = tcfg.replace(batch_size=tcfg.batch_size // mesh.devices.size * mesh.devices.size)
    B, T = tcfg.batch_size, cfg.context_length
    train_batches = Batches(train, B, T, tcfg.seed)
    # Train through the package's trainer; its evaluations are replaced by the callback below
    # (no evaluation sets), which scores a fixed validation set kept on the devices in one
    # compiled call, and stops the run at the target loss or the time limit.
    trainer = Trainer(cfg, tcfg.replace(eval_interval=eval_interval), train_batches, mesh=mesh)

    # A fixed validation set (the same batches at every evaluation), kept on the devices.
    vb = Batches(val, B, T, tcfg.seed + 2)
    stacked = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, ("data",
                                                                                 "fsdp")))
    val_set = {k: jax.device_put(np.stack([vb[i][k] for i in range(eval_batches)]), stacked)
               for k in ("inputs", "targets")}

    @jax.jit
    def evaluate(params, batches):
        losses = jax.lax.map(
            lambda b: eval_step(trainer.graphdef, next_token_loss, params, b)["loss"], batches)
        return jnp.mean(losses)

    float(evaluate(trainer.state.params, val_set))  # compile the evaluation outside the timings
    history: list[tuple[int, float, float]] = []
    best, reached_at, wall_at = math.inf, None, None
    eval_s = 0.0

    def on_eval(step: int, _: dict, t: Trainer) -> bool:
        nonlocal best, reached_at, wall_at, eval_s
        t_eval = time.perf_counter()
        v = float(evaluate(t.state.params, val_set))
        now = time.perf_counter()
        eval_s += now - t_eval
        history.append((step, round(t.history["loss"][-1], 4), round(v, 4)))
        best = min(best, v)
        if v <= target:
            reached_at, wall_at = step, now - t_start
            return True
        return now - t_start > time_limit

    t_start = time.perf_counter()
    jax.block_until_ready(trainer.train_step(train_batches[0]))
    compile_s = time.perf_counter() - t_start
    trainer.fit(progress=False, callback=on_eval)
    s = trainer.step
    total = time.perf_counter() - t_start
    train_s = total - eval_s
    tok_s = (s - 1) * B * T / max(train_s - compile_s, 1e-9)
    return TimeToLoss(f"{cfg.n_layer}L/{cfg.n_head}H/{cfg.d_model}", count_params(cfg), corpus,
                      B, T, target, reached_at is not None, reached_at, wall_at, train_s,
                      compile_s, best, s, tok_s, history)


# -- main ------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    size = p.add_mutually_exclusive_group()
    size.add_argument("--tiny", action="store_true", help="toy sizes (default on CPU)")
    size.add_argument("--full", action="store_true", help="real sizes even on CPU (slow)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="per-device batch for the 124M shape (default 16; tiny 4)")
    p.add_argument("--steps", type=int, default=None,
                   help="timed steps for the 124M shape (default 30; tiny 3)")
    p.add_argument("--vocab-size", type=int, default=50304,
                   help="vocabulary of the 124M shape (default 50304, GPT-2's 50257 padded "
                   "to a multiple of 64 as nanoGPT does)")
    p.add_argument("--text", default=None,
                   help="Shakespeare text (default: shared/data/tinyshakespeare.txt in or next "
                   "to the checkout, else the bundled corpus)")
    p.add_argument("--target-loss", type=float, default=None,
                   help=f"validation loss to reach (default {NANOGPT_VAL_LOSS}; tiny 3.3)")
    p.add_argument("--time-limit", type=float, default=None,
                   help="seconds after which the Shakespeare run stops (default 170)")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="dense bf16 peak per chip, for chips not in the table")
    p.add_argument("--skip", choices=["124m", "shakespeare"], action="append", default=[],
                   help="leave out a part")
    p.add_argument("--json", help="also write the results to this JSON file")
    args = p.parse_args(argv)
    for name in ("batch_size", "steps"):
        v = getattr(args, name)
        if v is not None and v < 1:
            p.error(f"--{name.replace('_', '-')} must be a positive integer, got {v}")
    if args.time_limit is not None and args.time_limit <= 0:
        p.error(f"--time-limit must be positive, got {args.time_limit}")
    if args.text is not None and not os.path.isfile(args.text):
        p.error(f"--text must be an existing file, got {args.text!r}")

    backend = jax.default_backend()
    tiny = args.tiny or (backend == "cpu" and not args.full)
    dev = jax.local_devices()[0]
    peak = args.peak_tflops if args.peak_tflops is not None else peak_tflops(dev.device_kind)
    print(f"jaxllm GPU benchmark: jax {jax.__version__}, backend {backend}, "
          f"{jax.device_count()} x {dev.device_kind}, dense bf16 peak "
          f"{_fmt(peak, '.0f')} TFLOP/s per chip, python {platform.python_version()}"
          f"{', TINY sizes' if tiny else ''}")
    results: dict = {"backend": backend, "device_kind": dev.device_kind,
                     "devices": jax.device_count(), "tiny": tiny, "peak_tflops": peak}
    t_all = time.perf_counter()

    if "124m" not in args.skip:
        if tiny:
            cfg = ModelConfig(vocab_size=256, context_length=64, n_layer=1, n_head=2,
                              d_model=64, dtype="bfloat16")
            name, bs, steps = "tiny (GPT-2 layout)", args.batch_size or 4, args.steps or 3
        else:
            cfg = get_preset("gpt2").model.replace(vocab_size=args.vocab_size,
                                                   dtype="bfloat16")
            name, bs, steps = "GPT-2 124M", args.batch_size or 16, args.steps or 30
        while True:
            try:
                r = throughput(cfg, name, bs, steps, peak)
                break
            except Exception as e:  # out of device memory: halve the batch and retry
                if not _is_oom(e) or bs == 1:
                    raise
                print(f"out of memory at batch {bs} per device; retrying with {bs // 2}")
                bs //= 2
            gc.collect()
        results["throughput"] = r.__dict__
        print_table(
            f"{r.model}: vocab {cfg.vocab_size}, bf16 compute, fp32 params and Adam moments, "
            f"{steps} timed steps after compile + 2 warm-up; loss {r.loss_first:.3f} -> "
            f"{r.loss_last:.3f}",
            ["model", "params", "devices", "batch", "context", "compile s", "step ms",
             "tokens/s", "TFLOP/s", "MFU %", "peak mem GiB"],
            [[r.model, f"{r.params / 1e6:.1f}M", str(r.devices), str(r.batch), str(r.context),
              f"{r.compile_s:.1f}", f"{r.step_ms:.1f}", f"{r.tokens_per_s:,.0f}",
              f"{r.tflops_per_s:.1f}", _fmt(None if r.mfu is None else 100 * r.mfu, ".1f"),
              _fmt(r.peak_memory_gib, ".2f")]])

    if "shakespeare" not in args.skip:
        path = args.text or next((str(c) for c in TEXT_CANDIDATES if c.is_file()), None)
        text, corpus = (load_text(path), Path(path).name) if path else (
            load_corpus(), "bundled shakespeare.txt (tinyshakespeare.txt not found)")
        if tiny:
            text = text[:200_000]
            cfg = ModelConfig(vocab_size=65, context_length=64, n_layer=1, n_head=2,
                              d_model=64, bias=False, dropout=0.2, dtype="bfloat16")
            tcfg = TrainConfig(steps=60, batch_size=16, learning_rate=1e-2,
                               min_learning_rate=1e-3, warmup_steps=5, beta2=0.99)
            interval, n_eval = 10, 4
            target = args.target_loss if args.target_loss is not None else 3.3
            limit = args.time_limit or 60.0
        else:
            cfg = ModelConfig(vocab_size=65, context_length=256, n_layer=6, n_head=6,
                              d_model=384, bias=False, dropout=0.2, dtype="bfloat16")
            tcfg = TrainConfig(steps=5000, batch_size=64, learning_rate=1e-3,
                               min_learning_rate=1e-4, warmup_steps=100, weight_decay=0.1,
                               beta1=0.9, beta2=0.99, grad_clip=1.0)
            interval, n_eval = 250, 200
            target = args.target_loss if args.target_loss is not None else NANOGPT_VAL_LOSS
            limit = args.time_limit or 170.0
        r2 = shakespeare(cfg, tcfg, text, corpus, target, interval, n_eval, limit)
        results["shakespeare"] = r2.__dict__
        print_table(
            f"Shakespeare char ({r2.corpus}), nanoGPT settings{' (tiny)' if tiny else ''}: "
            f"dropout {cfg.dropout}, lr {tcfg.learning_rate} -> {tcfg.min_learning_rate}, "
            f"warmup {tcfg.warmup_steps}, max {tcfg.steps} steps; val loss every {interval} "
            f"steps on {n_eval} batches; stop at {limit:.0f} s. Wall time counts from the "
            f"first step: compilation and evaluations included",
            ["model", "params", "batch", "context", "target val", "reached", "at step",
             "wall s to target", "compile s", "best val", "steps run", "tokens/s"],
            [[r2.model, f"{r2.params / 1e6:.2f}M", str(r2.batch), str(r2.context),
              f"{r2.target:.2f}", "yes" if r2.reached else "no",
              "-" if r2.step is None else str(r2.step), _fmt(r2.wall_s, ".1f"),
              f"{r2.compile_s:.1f}", f"{r2.best_val:.4f}", str(r2.steps_run),
              f"{r2.tokens_per_s:,.0f}"]])
        print("(step, train loss, val loss): " + ", ".join(map(str, r2.history)))

    results["total_s"] = time.perf_counter() - t_all
    print(f"\ntotal {results['total_s']:.1f} s")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
