"""Decoding speed on the CPU: jaxllm's compiled KV-cache loop against recomputing the context.

The model is the ``shakespeare-char`` preset with freshly initialised weights (speed does not
depend on what the weights are) and the vocabulary of the bundled corpus. Each run generates
``--new-tokens`` tokens (default 256) after a short prompt, for a batch of 1 and of 8:

* ``jaxllm.sample.generate``: prefill, then one token per iteration of a compiled
  ``lax.while_loop`` that feeds only the newest token through the model and reads every earlier
  key and value from the cache (with a sliding re-prefill when the context is full);
* the baseline, ``jaxllm.sample.generate_recompute``: the textbook loop without a cache, also
  compiled into one ``lax.fori_loop`` so that it is not slowed by Python: at every step the
  whole (cropped) context of ``context_length`` tokens goes through the model and the last
  position's logits are sampled.

Both sample the same way (temperature 0.8, the same ``jaxllm.sample.sample_logits``). Times are
the best of ``--repeats`` calls after a first call that compiles (its extra time is reported
as compile time). As a check, greedy decoding by both gives the same tokens as long as the
sequence fits in the context.

    python benchmarks/sample_cpu.py [--new-tokens 256] [--batches 1 8] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import jax
import numpy as np
from flax import nnx

from jaxllm.config import get_preset
from jaxllm.data import load_corpus
from jaxllm.model import GPT, count_params
from jaxllm.sample import generate, generate_recompute
from jaxllm.tokenizer import CharTokenizer

PROMPT = "ROMEO:\n"
TEMPERATURE = 0.8


def best_of(fn, repeats: int) -> tuple[float, float, object]:
    """(first call seconds, best later call seconds, result of the last call)."""
    t = time.perf_counter()
    out = jax.block_until_ready(fn())
    first = time.perf_counter() - t
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        out = jax.block_until_ready(fn())
        best = min(best, time.perf_counter() - t)
    return first, best, out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--new-tokens", type=int, default=256,
                        help="tokens to generate per sequence (default: %(default)s)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8],
                        help="batch sizes (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="timed calls after the compiling one; the best counts "
                        "(default: %(default)s)")
    args = parser.parse_args(argv)
    if args.new_tokens < 1:
        parser.error(f"--new-tokens must be positive, got {args.new_tokens}")
    if args.repeats < 1:
        parser.error(f"--repeats must be positive, got {args.repeats}")
    if any(b < 1 for b in args.batches):
        parser.error(f"--batches must be positive, got {args.batches}")

    text = load_corpus()
    tok = CharTokenizer.from_text(text)
    cfg = get_preset("shakespeare-char").model.replace(vocab_size=tok.vocab_size)
    model = GPT(cfg, rngs=nnx.Rngs(params=jax.random.key(0)))
    prompt_ids = tok.encode(PROMPT)
    P, N = len(prompt_ids), args.new_tokens

    print(f"shakespeare-char preset: {count_params(cfg):,} parameters, {cfg.n_layer} layers, "
          f"width {cfg.d_model}, context {cfg.context_length}; prompt {P} tokens, {N} new "
          f"tokens; temperature {TEMPERATURE}")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"jax {jax.__version__}, backend {jax.default_backend()}")
    head = (f"{'batch':>5s}  {'method':<34s}{'tokens/s':>10s}{'ms/token':>10s}"
            f"{'compile':>9s}{'speed-up':>10s}")
    print(head)
    print("-" * len(head))
    for B in args.batches:
        prompts = [prompt_ids] * B

        def cached(prompts=prompts):
            return generate(model, prompts, N, temperature=TEMPERATURE, seed=1)

        def recompute(prompts=prompts):
            return generate_recompute(model, prompts, N, temperature=TEMPERATURE, seed=1)

        first_c, best_c, _ = best_of(cached, args.repeats)
        first_r, best_r, _ = best_of(recompute, args.repeats)
        for name, first, best in (("generate (KV cache, while_loop)", first_c, best_c),
                                  ("recompute context (fori_loop)", first_r, best_r)):
            tps = B * N / best
            speed = best_r / best
            print(f"{B:5d}  {name:<34s}{tps:10.0f}{1e3 * best / N:10.2f}"
                  f"{first - best:8.1f}s{speed:9.1f}x")

    # Check: greedy decoding agrees while the sequence fits in the context (after that the
    # cache slides by re-prefilling three quarters of the window, the baseline by one token).
    n_check = min(N, cfg.context_length - P)
    a = np.array(generate(model, [prompt_ids], n_check, temperature=0.0)[0])
    b = np.array(generate_recompute(model, [prompt_ids], n_check, temperature=0.0)[0])
    same = int(np.sum(np.cumprod(a == b)))
    print(f"greedy check: the two methods agree on the first {same} of {n_check} tokens")
    return 0 if same == n_check else 1


if __name__ == "__main__":
    sys.exit(main())
