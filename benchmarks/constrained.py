"""What structured output costs: decoding speed with and without the llguidance mask.

Three ways of running the same host-driven decode loop (:class:`jaxllm.sample.Stepper`, the
one `jaxllm serve` uses) for the same number of steps:

- ``no mask``: the step samples from the raw logits;
- ``mask, all allowed``: an all-ones packed bitmask is copied to the device and applied at
  every step (the cost of the mechanism alone);
- ``JSON schema``: llguidance computes each row's mask from a JSON schema before every step
  and consumes the drawn token after it (the schema is an array of at least 10,000 integers,
  so no row finishes early and every setting makes the same number of tokens).

Prints tokens per second for batches of 1 and 8 and the ratio to ``no mask``.

    python benchmarks/constrained.py [--steps 64]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(__file__))

SCHEMA = {"type": "array", "items": {"type": "integer"}, "minItems": 10_000}


def run(model, tok, batch: int, steps: int, mode: str) -> float:
    from jaxllm import chat
    from jaxllm.sample import Stepper
    from jaxllm.structured import Constraint, compile_grammar

    prompt = chat.encode_chat(tok, [{"role": "user", "content": "Numbers, please."}],
                              add_generation_prompt=True).ids
    grammar = compile_grammar(tok, "json_schema", SCHEMA) if mode == "schema" else None
    st = Stepper(model, [prompt] * batch, steps + 1, temperature=[1.0] * batch,
                 top_k=[0] * batch, top_p=[1.0] * batch, seeds=list(range(batch)))
    cons = [Constraint(tok, grammar) for _ in range(batch)] if grammar else []
    mask = np.full((batch, (tok.vocab_size + 31) // 32), -1, np.int32)
    st.step([True] * batch, None if mode == "none" else mask)  # compile, outside the timing
    t0 = time.perf_counter()
    for _ in range(steps):
        for i, c in enumerate(cons):
            c.fill(mask, i)
        toks = st.step([True] * batch, None if mode == "none" else mask)
        for i, c in enumerate(cons):
            c.consume(int(toks[i]))
    return batch * steps / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=64)
    args = ap.parse_args()
    from serve_load import bench_model

    model, tok = bench_model(n_layer=4, d_model=128, vocab=512, context=256)
    print(f"model: {model.cfg.n_layer} layers, width {model.cfg.d_model}, vocabulary "
          f"{tok.vocab_size}; {args.steps} steps per run (best of 3)")
    print("\n| batch | no mask tok/s | mask, all allowed tok/s | JSON schema tok/s | "
          "schema / no mask |")
    print("|------:|--------------:|------------------------:|------------------:|"
          "-----------------:|")
    for batch in (1, 8):
        r = {m: max(run(model, tok, batch, args.steps, m) for _ in range(3))
             for m in ("none", "ones", "schema")}
        print(f"| {batch:>5} | {r['none']:>13.0f} | {r['ones']:>23.0f} | "
              f"{r['schema']:>17.0f} | {r['schema'] / r['none']:>16.2f} |")


if __name__ == "__main__":
    main()
