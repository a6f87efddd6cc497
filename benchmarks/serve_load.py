"""Load on `jaxllm serve`: requests per second and latency percentiles with 1, 8 and 32
concurrent clients on 127.0.0.1, batched (requests waiting together decode together) against
one request at a time (the same server with ``max_batch=1``).

Each client sends OpenAI chat requests back to back over raw HTTP (``http.client``: the
client's own cost stays small beside the server's), each for exactly ``--tokens`` new tokens
(the model is random and the chat tokens are masked out of nothing, so a reply may end early
at ``<|end|>``; the table reports the tokens actually generated). Compilation is done before
timing: every batch shape is warmed up first.

    python benchmarks/serve_load.py                       # a random model of 4 layers, width 128
    python benchmarks/serve_load.py --model world-base    # a shipped model or a run folder
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import sys
import threading
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))


def bench_model(n_layer: int, d_model: int, vocab: int, context: int, seed: int = 0):
    """A random GPT with a BPE tokenizer trained with the chat tokens (on Shakespeare if it is
    at hand, else on the package's capitals)."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from jaxllm import chat
    from jaxllm.config import ModelConfig
    from jaxllm.model import GPT
    from jaxllm.tasks import load_capitals
    from jaxllm.tokenizer import BPETokenizer

    path = "/work/shared/data/tinyshakespeare.txt"
    if os.path.isfile(path):
        text = open(path, encoding="utf-8").read()[:200_000]
    else:
        text = " ".join(f"The capital of {a} is {b}." for a, b in load_capitals()) * 20
    text += "".join(chat.render([{"role": "user", "content": "hi"},
                                 {"role": "assistant", "content": "hello"}]) for _ in range(5))
    tok = BPETokenizer.train(text, vocab, special_tokens=chat.SPECIAL_TOKENS)
    cfg = ModelConfig(vocab_size=tok.vocab_size, context_length=context, n_layer=n_layer,
                      n_head=4, d_model=d_model)
    graphdef, state = nnx.split(nnx.eval_shape(lambda: GPT(cfg, rngs=nnx.Rngs(0))))
    rng = np.random.default_rng(seed)
    state = jax.tree.map(lambda s: jnp.asarray(rng.normal(0, 0.05, s.shape).astype(s.dtype)),
                         state)
    return nnx.merge(graphdef, state), tok


def post(port: int, body: dict) -> dict:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    conn.request("POST", "/v1/chat/completions", body=json.dumps(body).encode(),
                 headers={"Content-Type": "application/json"})
    r = conn.getresponse()
    out = json.loads(r.read())
    conn.close()
    if r.status != 200:
        raise RuntimeError(out)
    return out


def run_load(port: int, model: str, clients: int, per_client: int, tokens: int) -> dict:
    latencies: list[float] = []
    generated = [0]
    lock = threading.Lock()

    def client(c: int) -> None:
        for k in range(per_client):
            body = {"model": model, "max_tokens": tokens, "seed": c * 1000 + k,
                    "messages": [{"role": "user", "content": f"Tell me about thing {k}."}]}
            t0 = time.perf_counter()
            out = post(port, body)
            dt = time.perf_counter() - t0
            with lock:
                latencies.append(dt)
                generated[0] += out["usage"]["completion_tokens"]

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    lat = np.array(latencies)
    return {"requests": len(lat), "req_s": len(lat) / wall, "tok_s": generated[0] / wall,
            "p50": np.percentile(lat, 50), "p90": np.percentile(lat, 90),
            "p99": np.percentile(lat, 99)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="run folder or shipped model (default: a random model)")
    ap.add_argument("--tokens", type=int, default=32, help="new tokens per request")
    ap.add_argument("--requests", type=int, default=64,
                    help="requests per setting (split among the clients)")
    ap.add_argument("--clients", default="1,8,32")
    args = ap.parse_args()

    from jaxllm.serve import load_model, start_server

    if args.model:
        model, tok, _ = load_model(args.model)
    else:
        model, tok = bench_model(n_layer=4, d_model=128, vocab=512, context=256)
    levels = [int(c) for c in args.clients.split(",")]
    print(f"model: {model.cfg.n_layer} layers, width {model.cfg.d_model}, vocabulary "
          f"{model.cfg.vocab_size}; {args.tokens} new tokens per request; "
          f"{args.requests} requests per row; JAX backend {__import__('jax').default_backend()}")
    rows = []
    for mode, max_batch in (("one at a time", 1), ("batched", max(levels))):
        srv = start_server(model, tok, model_name="bench", max_batch=max_batch,
                           max_queue=4 * max(levels))
        try:
            # Compile every batch shape this mode will use before timing.
            srv.engine.warm_up(args.tokens, srv.engine.buckets())
            for c in levels:
                r = run_load(srv.port, "bench", c, max(1, args.requests // c), args.tokens)
                rows.append((mode, c, r))
        finally:
            srv.stop()
    print(f"\n| {'server':<14} | clients | requests | req/s | tokens/s | p50 s | p90 s | p99 s |")
    print(f"|{'-' * 16}|--------:|---------:|------:|---------:|------:|------:|------:|")
    for mode, c, r in rows:
        print(f"| {mode:<14} | {c:>7} | {r['requests']:>8} | {r['req_s']:>5.2f} | "
              f"{r['tok_s']:>8.0f} | {r['p50']:>5.2f} | {r['p90']:>5.2f} | {r['p99']:>5.2f} |")
    serial = {c: r for m, c, r in rows if m == "one at a time"}
    print()
    for m, c, r in rows:
        if m == "batched":
            print(f"{c:>2} clients: batched serves {r['req_s'] / serial[c]['req_s']:.1f}x the "
                  f"requests per second of one at a time; p50 latency "
                  f"{r['p50'] / serial[c]['p50']:.2f}x")


if __name__ == "__main__":
    main()
