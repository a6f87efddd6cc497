"""Benchmark of jaxllm's byte-level BPE: training time, encoding speed and compression.

For each corpus (the bundled Shakespeare plays, and tinyshakespeare if the file exists) and each
vocabulary size, it trains a BPETokenizer on the whole corpus, then encodes the same corpus and
prints a table:

- train s: wall time of ``BPETokenizer.train`` (best of ``--repeats`` runs),
- bytes/token: UTF-8 bytes of the corpus per token of its encoding (higher packs more),
- ours MB/s: ``encode`` throughput of a freshly loaded tokenizer (empty chunk cache),
- tiktoken MB/s: the same vocabulary run by tiktoken's Rust encoder (``to_tiktoken``),

and, for comparison, OpenAI's cl100k_base through tiktoken on the same text (if available).

    python benchmarks/bpe_train.py [--tiny PATH] [--vocab-sizes 512 1024 4096]
"""

from __future__ import annotations

import argparse
import importlib.resources
import importlib.util
import os
import platform
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

from jaxllm.tokenizer import BPETokenizer, tiktoken_encoding

DEFAULT_TINY = Path("/work/shared/data/tinyshakespeare.txt")


def best_time(fn: Callable[[], object], repeats: int) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def encode_fresh(saved: dict, text: str) -> list[int]:
    """Encode with a freshly loaded tokenizer, so its chunk cache starts empty."""
    return BPETokenizer.from_dict(saved).encode(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", type=Path, default=DEFAULT_TINY,
                        help="path to tinyshakespeare.txt (default: %(default)s)")
    parser.add_argument("--vocab-sizes", type=int, nargs="+", default=[512, 1024, 4096],
                        help="vocabulary sizes to train (default: %(default)s)")
    parser.add_argument("--pattern", default="gpt4", choices=["gpt2", "gpt4"],
                        help="split pattern (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="timed runs per measurement; the best is reported (default: 3)")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1; got {args.repeats}")
    if any(v < 256 for v in args.vocab_sizes):
        parser.error(f"--vocab-sizes must all be at least 256; got {args.vocab_sizes}")

    corpora: list[tuple[str, str]] = [
        ("bundled shakespeare.txt",
         importlib.resources.files("jaxllm").joinpath("resources/shakespeare.txt")
         .read_text(encoding="utf-8")),
    ]
    if args.tiny.is_file():
        corpora.append((args.tiny.name, args.tiny.read_text(encoding="utf-8")))
    else:
        print(f"note: {args.tiny} not found; skipping it (pass --tiny PATH)\n")

    have_tiktoken = importlib.util.find_spec("tiktoken") is not None
    try:
        cl100k = tiktoken_encoding("cl100k_base")
    except RuntimeError as e:
        cl100k = None
        print(f"note: tiktoken cl100k_base unavailable, its rows are skipped ({e})\n")

    print(f"Python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} CPUs; "
          f"pattern {args.pattern!r}; best of {args.repeats}\n")
    header = (f"{'corpus':<26} {'MB':>5} {'vocab':>6} {'train s':>8} {'bytes/token':>11} "
              f"{'ours MB/s':>10} {'tiktoken MB/s':>14}")
    print(header)
    print("-" * len(header))
    for name, text in corpora:
        n_bytes = len(text.encode("utf-8"))
        mb = n_bytes / 1e6
        for vocab_size in args.vocab_sizes:
            t_train, tok = best_time(
                partial(BPETokenizer.train, text, vocab_size, pattern=args.pattern), args.repeats
            )
            assert isinstance(tok, BPETokenizer)
            t_enc, ids = best_time(partial(encode_fresh, tok.to_dict(), text), args.repeats)
            assert isinstance(ids, list) and tok.decode(ids) == text
            tik_col = "n/a"
            if have_tiktoken:
                enc = tok.to_tiktoken()
                t_tik, tik_ids = best_time(partial(enc.encode_ordinary, text), args.repeats)
                same = "" if tik_ids == ids else " (ids differ!)"
                tik_col = f"{mb / t_tik:.1f}{same}"
            print(f"{name:<26} {mb:5.2f} {vocab_size:6d} {t_train:8.2f} {n_bytes / len(ids):11.2f} "
                  f"{mb / t_enc:10.2f} {tik_col:>14}")
        if cl100k is not None:
            t_cl, cl_ids = best_time(partial(cl100k.encode_ordinary, text), args.repeats)
            print(f"{name:<26} {mb:5.2f} {'cl100k':>6} {'-':>8} {n_bytes / len(cl_ids):11.2f} "
                  f"{'-':>10} {mb / t_cl:14.1f}")
    print("\nours MB/s includes the cost of an empty cache: every distinct chunk is merged once.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
