"""Training speed on the CPU: jaxllm against the same model and loop in eager PyTorch.

nanoGPT's published CPU settings for character-level Shakespeare: 4 layers, 4 heads, width
128, context 64, batch 12, 2000 iterations, learning rate 1e-3 with 100 warmup steps and a
cosine decay to 1e-4, AdamW (beta2 0.99, weight decay 0.1), gradient clipping at 1.0, no
dropout; a 90/10 train/validation split of tinyshakespeare at character level.

Every run happens in its own subprocess, so that peak memory is measured per framework and
the two frameworks' imports and thread pools do not meet:

* ``peak``: this machine's fp32 matrix-multiply speed, the best of several jitted
  2048 x 2048 products (the ceiling for the GFLOP/s column);
* ``jax``: :class:`jaxllm.train.Trainer`, trained with ``Trainer.fit`` (no progress bar; its
  evaluation sets are left out, so that only training steps are timed);
* ``jax-dp`` (only when asked for with ``--runs``): the same, with JAX started with one
  CPU device per core (``JAX_NUM_CPU_DEVICES``) and ``Trainer(..., mesh=make_mesh())``:
  data parallelism across the cores instead of XLA's threads inside each operation;
* ``torch``: ``benchmarks/torch_gpt.py``, the same model, initialisation, optimizer and
  schedule in eager PyTorch with as many threads as cores.

All runs train on the same batches (the offsets of :class:`jaxllm.data.Batches` for
``--seed``, default 0).
Time per iteration excludes the first step (which compiles, for JAX; reported apart);
the validation loss is the mean next-token loss over the validation split cut into windows
of 64 (in batches of 12, so the last 178 of its 111,539 tokens are left out).

    python benchmarks/train_cpu.py [--data PATH] [--iters N] [--runs jax jax-dp torch]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np

#: tinyshakespeare.txt in the course's shared/ folder beside the repository (pass --data
#: to use another copy).
DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare.txt"

LAYERS, HEADS, WIDTH, CONTEXT, BATCH = 4, 4, 128, 64, 12
LR, MIN_LR, WARMUP, BETA2, WEIGHT_DECAY, CLIP = 1e-3, 1e-4, 100, 0.99, 0.1, 1.0
EVAL_BATCH = BATCH  # evaluation batches as big as training ones
NANOGPT_VAL_LOSS = 1.88  # nanoGPT README, "baby GPT" on a CPU (MacBook), 2000 iterations


def peak_rss_mb() -> float:
    # ru_maxrss is in KiB on Linux, bytes on macOS.
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def load_tokens(path: str) -> tuple[np.ndarray, np.ndarray, int]:
    from jaxllm.data import load_text, train_val_split
    from jaxllm.tokenizer import CharTokenizer

    text = load_text(path)
    tok = CharTokenizer.from_text(text)
    # Encoded in pieces: one Python list of a million ints would add ~40 MB to the peak
    # memory of the process, which the table reports.
    ids = np.concatenate([np.asarray(tok.encode(text[i: i + 2**16]), np.int32)
                          for i in range(0, len(text), 2**16)])
    train, val = train_val_split(ids, 0.1)
    return train, val, tok.vocab_size


def val_windows(val: np.ndarray) -> np.ndarray:
    """Non-overlapping windows ``[N, CONTEXT + 1]`` of the validation split (targets of one
    window start where its inputs end), in whole batches of ``EVAL_BATCH``."""
    n = (len(val) - 1) // CONTEXT // EVAL_BATCH * EVAL_BATCH
    idx = np.arange(n)[:, None] * CONTEXT + np.arange(CONTEXT + 1)
    return val[idx]


# -- workers (each runs in its own process) ------------------------------------------------

def worker_peak() -> dict:
    import jax
    import jax.numpy as jnp

    n = 2048
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    matmul = jax.jit(lambda a, b: a @ b)
    matmul(a, b).block_until_ready()
    best = float("inf")
    for _ in range(10):
        t = time.perf_counter()
        matmul(a, b).block_until_ready()
        best = min(best, time.perf_counter() - t)
    return {"gflops": 2 * n**3 / best / 1e9}


def worker_jax(data: str, iters: int, seed: int, data_parallel: bool) -> dict:
    import jax
    import jax.numpy as jnp

    from jaxllm.config import ModelConfig, TrainConfig
    from jaxllm.data import Batches
    from jaxllm.losses import next_token_loss
    from jaxllm.model import flops_per_token
    from jaxllm.train import Trainer, eval_step

    train, val, vocab = load_tokens(data)
    mcfg = ModelConfig(vocab_size=vocab, context_length=CONTEXT, n_layer=LAYERS,
                       n_head=HEADS, d_model=WIDTH, dropout=0.0, bias=False)
    tcfg = TrainConfig(steps=iters, batch_size=BATCH, learning_rate=LR,
                       min_learning_rate=MIN_LR, warmup_steps=min(WARMUP, iters - 1),
                       beta2=BETA2, weight_decay=WEIGHT_DECAY, grad_clip=CLIP, seed=seed,
                       eval_interval=iters)
    mesh = None
    if data_parallel:
        from jaxllm.sharding import make_mesh

        mesh = make_mesh()
    # A batch source rather than the token array: no evaluation sets, only training is timed.
    trainer = Trainer(mcfg, tcfg, Batches(train, BATCH, CONTEXT, seed), mesh=mesh)
    devices = 1 if mesh is None else mesh.devices.size

    t = time.perf_counter()
    metrics = trainer.train_step(trainer.train_batches[0])
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - t
    t = time.perf_counter()
    history = trainer.fit(progress=False)
    jax.block_until_ready(trainer.state)
    seconds = time.perf_counter() - t
    losses = [float(metrics["loss"]), *history["loss"]]

    loss_of = jax.jit(partial(eval_step, trainer.graphdef, next_token_loss))
    windows = val_windows(val)
    val_loss = float(np.mean([loss_of(trainer.state.params,
                                      {"inputs": jnp.asarray(w[:, :-1]),
                                       "targets": jnp.asarray(w[:, 1:])})["loss"]
                              for w in np.split(windows, len(windows) // EVAL_BATCH)]))
    return {"ms_per_iter": 1e3 * seconds / max(1, iters - 1), "compile_s": compile_s,
            "val_loss": val_loss, "final_train_loss": float(losses[-1]),
            "peak_rss_mb": peak_rss_mb(), "flops_per_token": flops_per_token(mcfg),
            "devices": devices, "version": f"jax {jax.__version__}"}


def worker_torch(data: str, iters: int, seed: int) -> dict:
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from torch_gpt import TorchGPT, TorchGPTConfig, evaluate, lr_at, make_optimizer, train_step

    from jaxllm.data import Batches

    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    torch.autograd.set_detect_anomaly(False)
    train, val, vocab = load_tokens(data)
    model = TorchGPT(TorchGPTConfig(vocab, CONTEXT, LAYERS, HEADS, WIDTH), seed=seed)
    opt = make_optimizer(model, LR, (0.9, BETA2), WEIGHT_DECAY)
    batches = Batches(train, BATCH, CONTEXT, seed)  # the offsets jaxllm's Trainer uses
    warmup = min(WARMUP, iters - 1)

    def step(s: int) -> torch.Tensor:
        x, y = batches[s]["inputs"], batches[s]["targets"]
        return train_step(model, opt, torch.from_numpy(x).long(), torch.from_numpy(y).long(),
                          lr_at(s, LR, MIN_LR, warmup, iters), CLIP)

    t = time.perf_counter()
    losses = [step(0)]
    first_s = time.perf_counter() - t
    t = time.perf_counter()
    for s in range(1, iters):
        losses.append(step(s))
    seconds = time.perf_counter() - t
    val_loss = evaluate(model, torch.from_numpy(val_windows(val)).long(), EVAL_BATCH)
    return {"ms_per_iter": 1e3 * seconds / max(1, iters - 1), "compile_s": first_s,
            "val_loss": val_loss, "final_train_loss": float(losses[-1]),
            "peak_rss_mb": peak_rss_mb(), "threads": threads,
            "optimizer": getattr(opt, "fused_kind", "?"),
            "version": f"torch {torch.__version__}"}


# -- the driver ------------------------------------------------------------------------------

def run_worker(kind: str, args: argparse.Namespace) -> dict | None:
    env = dict(os.environ)
    cmd = [sys.executable, __file__, "--worker", kind, "--data", str(args.data),
           "--iters", str(args.iters), "--seed", str(args.seed)]
    if kind == "jax-dp":
        env["JAX_NUM_CPU_DEVICES"] = str(os.cpu_count() or 1)
    print(f"running {kind} ...", file=sys.stderr, flush=True)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        print(f"{kind} failed:\n{proc.stderr[-3000:]}", file=sys.stderr)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA,
                        help="tinyshakespeare.txt (default: %(default)s)")
    parser.add_argument("--iters", type=int, default=2000,
                        help="training iterations (default: %(default)s)")
    parser.add_argument("--runs", nargs="+", default=["jax", "torch"],
                        choices=["jax", "jax-dp", "torch"],
                        help="what to run (default: jax torch; jax-dp is the data-parallel "
                        "variant over one CPU device per core)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the initialisation and of the batches (default: 0)")
    parser.add_argument("--worker", choices=["peak", "jax", "jax-dp", "torch"],
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.iters < 2:
        parser.error(f"--iters must be at least 2, got {args.iters}")
    if not args.data.is_file():
        parser.error(f"--data must be an existing text file, got {str(args.data)!r}")

    if args.worker:
        out = {"peak": lambda: worker_peak(),
               "jax": lambda: worker_jax(str(args.data), args.iters, args.seed, False),
               "jax-dp": lambda: worker_jax(str(args.data), args.iters, args.seed, True),
               "torch": lambda: worker_torch(str(args.data), args.iters, args.seed),
               }[args.worker]()
        print(json.dumps(out))
        return 0

    peak = run_worker("peak", args)
    results = {kind: run_worker(kind, args) for kind in args.runs}
    flops = next((r["flops_per_token"] for r in results.values()
                  if r and "flops_per_token" in r), None)
    tokens = BATCH * CONTEXT
    cores = os.cpu_count()
    print(f"\nnanoGPT CPU settings (no biases): {LAYERS} layers, {HEADS} heads, width {WIDTH}, "
          f"context {CONTEXT}, batch {BATCH}, {args.iters} iterations, seed {args.seed}; "
          f"{args.data.name}")
    print(f"machine: {platform.processor() or platform.machine()}, {cores} cores; "
          f"fp32 matmul peak (jitted 2048^3): "
          f"{peak['gflops']:.0f} GFLOP/s" if peak else "fp32 matmul peak: failed")
    names = {"jax": "jaxllm (1 device)", "jax-dp": f"jaxllm ({cores} CPU devices, "
             "data parallel)", "torch": "PyTorch eager"}
    head = (f"{'':40s}{'ms/iter':>9s}{'tokens/s':>10s}{'GFLOP/s':>9s}{'% peak':>8s}"
            f"{'peak RSS':>10s}{'val loss':>10s}{'1st step':>10s}")
    print(head)
    print("-" * len(head))
    for kind, r in results.items():
        if r is None:
            print(f"{names[kind]:40s} failed")
            continue
        tps = tokens / (r["ms_per_iter"] / 1e3)
        gf = flops * tps / 1e9 if flops else float("nan")
        pct = 100 * gf / peak["gflops"] if peak else float("nan")
        print(f"{names[kind]:40s}{r['ms_per_iter']:9.1f}{tps:10.0f}{gf:9.1f}{pct:7.0f}%"
              f"{r['peak_rss_mb']:8.0f}MB{r['val_loss']:10.4f}{r['compile_s']:9.1f}s")
    torch_r = results.get("torch")
    if torch_r:
        for kind in ("jax", "jax-dp"):
            if results.get(kind):
                ratio = results[kind]["ms_per_iter"] / torch_r["ms_per_iter"]
                print(f"time per iteration, {names[kind]} / PyTorch: {ratio:.2f}")
        print(f"({torch_r['version']}, {torch_r['threads']} threads, AdamW "
              f"{torch_r['optimizer']}; " + ", ".join(
                  r["version"] for k, r in results.items() if k != "torch" and r) + ")")
    print(f"targets: val loss <= {NANOGPT_VAL_LOSS} (nanoGPT's figure), ratio < 1.0 "
          "(aim 0.6), peak RSS < 500 MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
