"""Prediction is compression: a model's code length for a text, general-purpose compressors
on the same bytes, and an arithmetic coder that turns a model's probabilities into bits
(chapter 11.1).

A model that gives the next symbol probability ``p`` can encode it in ``-log2 p`` bits with
arithmetic coding, to within about two bits for the whole message: the code length of a
text *is* the model's total log-loss in bits. :class:`ArithmeticCoder` is such a coder
(integer arithmetic, 32-bit registers, the textbook scheme of Witten, Neal and Cleary with
"pending" bits for the underflow case) driven by integer frequency tables, so encoder and
decoder compute exactly the same intervals on every machine.

>>> coder = ArithmeticCoder()
>>> freqs = [[3, 1]] * 4           # p(0) = 3/4, p(1) = 1/4 at each of 4 steps
>>> bits = coder.encode([0, 0, 1, 0], freqs)
>>> coder.decode(bits, freqs)
[0, 0, 1, 0]
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .validate import check_int

__all__ = ["ArithmeticCoder", "code_length_bits", "compressed_bits", "model_tables",
           "quantize_probs", "COMPRESSORS"]

#: The general-purpose compressors compared, each at its strongest standard setting.
COMPRESSORS: dict[str, Callable[[bytes], bytes]] = {
    "gzip": lambda b: gzip.compress(b, compresslevel=9, mtime=0),
    "bz2": lambda b: bz2.compress(b, compresslevel=9),
    "lzma": lambda b: lzma.compress(b, preset=9 | lzma.PRESET_EXTREME),
}


def compressed_bits(data: bytes | str) -> dict[str, int]:
    """Size in bits of ``data`` (a str is UTF-8 encoded) compressed by each of
    :data:`COMPRESSORS`, headers included, and its raw size as ``"raw"``."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    if not isinstance(data, bytes | bytearray):
        raise TypeError(f"data must be bytes or str, got {type(data).__name__}")
    out = {"raw": 8 * len(data)}
    for name, fn in COMPRESSORS.items():
        out[name] = 8 * len(fn(bytes(data)))
    return out


def code_length_bits(token_logprobs: Any, vocab_size: int) -> float:
    """Bits to encode a whole text with a model: ``-sum log2 p`` over the predicted tokens
    (``token_logprobs``, natural log, every token after the first) plus ``log2 V`` for the
    first token, which nothing predicts."""
    lp = np.asarray(token_logprobs, np.float64)
    if lp.ndim != 1:
        raise ValueError(f"token_logprobs must be 1-D, got shape {lp.shape}")
    if lp.size and lp.max() > 1e-9:
        raise ValueError(f"token_logprobs must be log-probabilities (<= 0), got a maximum of "
                         f"{lp.max()}")
    check_int("vocab_size", vocab_size, min=1)
    return float(-lp.sum() / math.log(2.0) + math.log2(vocab_size))


def quantize_probs(probs: Any, total: int = 1 << 16) -> np.ndarray:
    """Integer frequencies (each >= 1, summing to about ``total``) proportional to ``probs``
    ``[..., V]``: what an arithmetic coder needs, since encoder and decoder must agree on every
    interval exactly. The rounding costs a small fraction of a bit per symbol."""
    p = np.asarray(probs, np.float64)
    check_int("total", total, min=2, max=ArithmeticCoder.MAX_TOTAL)
    if p.ndim < 1 or p.shape[-1] < 1 or (p < 0).any() or not np.isfinite(p).all():
        raise ValueError(f"probs must be non-negative and finite with a last axis of symbols, "
                         f"got shape {p.shape}")
    if p.shape[-1] > total // 2:
        raise ValueError(f"total must be at least twice the {p.shape[-1]} symbols, got {total}")
    p = p / p.sum(axis=-1, keepdims=True)
    return np.maximum(1, np.floor(p * (total - p.shape[-1]))).astype(np.int64)


class ArithmeticCoder:
    """Arithmetic coding with integer frequency tables.

    ``encode(symbols, freqs)`` takes one table per symbol (``freqs[i]`` a sequence of
    positive integer counts over the alphabet; its sum at most :attr:`MAX_TOTAL`) and returns
    the code as a list of bits; ``decode(bits, freqs)`` inverts it. ``freqs`` may also be a
    function ``freqs(i, decoded_so_far)`` returning the table for step ``i``, which is how a
    decoder driven by a model works: the table for the next symbol depends on the symbols
    already decoded. The code is at most ``-sum log2(freq[s] / total) + 2`` bits long.
    """

    PRECISION = 32
    MAX_TOTAL = 1 << 16
    _FULL = (1 << 32) - 1
    _HALF = 1 << 31
    _QUARTER = 1 << 30

    @staticmethod
    def _cumulative(f: Any, where: str) -> np.ndarray:
        """Cumulative counts ``[..., V + 1]`` (starting at 0) of tables ``[..., V]``."""
        f = np.asarray(f)
        if f.ndim < 1 or f.shape[-1] < 1 or not np.issubdtype(f.dtype, np.integer) or (
                f < 1).any():
            raise ValueError(f"{where} must be tables of positive integers, got {f!r}")
        cum = np.cumsum(f, axis=-1, dtype=np.int64)
        if (cum[..., -1] > ArithmeticCoder.MAX_TOTAL).any():
            raise ValueError(f"{where} must sum to at most {ArithmeticCoder.MAX_TOTAL}, got "
                             f"{int(cum[..., -1].max())}")
        return np.concatenate([np.zeros(f.shape[:-1] + (1,), np.int64), cum], axis=-1)

    def _tables(self, freqs: Any):
        """A function ``(i, done) -> cumulative table`` for ``freqs`` (all tables checked and
        summed up front when they are given as an array)."""
        if callable(freqs):
            return lambda i, done: self._cumulative(freqs(i, done), f"freqs({i}, ...)")
        cums = self._cumulative(freqs, "freqs")
        if cums.ndim != 2:
            raise ValueError(f"freqs must be one table per symbol [n, V], got shape "
                             f"{cums.shape[:-1] + (cums.shape[-1] - 1,)}")
        return lambda i, done: cums[i]

    def encode(self, symbols: Sequence[int], freqs: Any) -> list[int]:
        symbols = [int(s) for s in symbols]
        table = self._tables(freqs)
        if not callable(freqs) and len(freqs) < len(symbols):
            raise ValueError(f"freqs must hold a table for each of the {len(symbols)} symbols, "
                             f"got {len(freqs)}")
        low, high, pending, bits = 0, self._FULL, 0, []

        def emit(bit: int) -> None:
            nonlocal pending
            bits.append(bit)
            bits.extend([1 - bit] * pending)
            pending = 0

        for i, s in enumerate(symbols):
            cum = table(i, symbols[:i] if callable(freqs) else None)
            if not 0 <= s < len(cum) - 1:
                raise ValueError(f"symbols[{i}] must be in [0, {len(cum) - 1}), got {s}")
            span, total = high - low + 1, int(cum[-1])
            high = low + span * int(cum[s + 1]) // total - 1
            low = low + span * int(cum[s]) // total
            while True:
                if high < self._HALF:
                    emit(0)
                elif low >= self._HALF:
                    emit(1)
                    low, high = low - self._HALF, high - self._HALF
                elif low >= self._QUARTER and high < 3 * self._QUARTER:
                    pending += 1
                    low, high = low - self._QUARTER, high - self._QUARTER
                else:
                    break
                low, high = 2 * low, 2 * high + 1
        pending += 1  # two more bits single out a point inside the final interval
        emit(0 if low < self._QUARTER else 1)
        return bits

    def decode(self, bits: Sequence[int], freqs: Any, n_symbols: int | None = None
               ) -> list[int]:
        """The ``n_symbols`` symbols (default: ``len(freqs)``) that ``bits`` encode."""
        if n_symbols is None:
            if callable(freqs):
                raise ValueError("n_symbols must be given when freqs is a function, got None")
            n_symbols = len(freqs)
        check_int("n_symbols", n_symbols, min=0)
        bits = [int(b) for b in bits]
        table = self._tables(freqs)
        pos = 0

        def next_bit() -> int:
            nonlocal pos
            pos += 1
            return bits[pos - 1] if pos - 1 < len(bits) else 0

        value = 0
        for _ in range(self.PRECISION):
            value = 2 * value + next_bit()
        low, high, out = 0, self._FULL, []
        for i in range(n_symbols):
            cum = table(i, out)
            span, total = high - low + 1, int(cum[-1])
            target = ((value - low + 1) * total - 1) // span
            s = int(np.searchsorted(cum, target, side="right")) - 1
            out.append(s)
            high = low + span * int(cum[s + 1]) // total - 1
            low = low + span * int(cum[s]) // total
            while True:
                if high < self._HALF:
                    pass
                elif low >= self._HALF:
                    low, high, value = low - self._HALF, high - self._HALF, value - self._HALF
                elif low >= self._QUARTER and high < 3 * self._QUARTER:
                    low, high = low - self._QUARTER, high - self._QUARTER
                    value -= self._QUARTER
                else:
                    break
                low, high, value = 2 * low, 2 * high + 1, 2 * value + next_bit()
        return out


def model_tables(model: Any, first_token: int, *, total: int = 1 << 16) -> Callable:
    """Frequency tables from a GPT for :class:`ArithmeticCoder`, as a function
    ``tables(i, decoded)``: the table for symbol ``i`` of a message that follows
    ``first_token`` (sent as is), given the ``decoded`` symbols before it.

    The context is cut into windows of ``context_length`` exactly as
    :func:`jaxllm.probes.model_next_logprobs` and :func:`jaxllm.train.score_text` cut a text,
    so the code is as long as the model's loss on the message says. Encoder and decoder call
    the same compiled function on the same inputs, so they compute identical tables (tables
    from a batched evaluation could differ in the last bit of a float, and a decoder must
    not depend on that)."""
    import jax
    from flax import nnx

    T, V = model.cfg.context_length, model.cfg.vocab_size
    first = check_int("first_token", first_token, min=0, max=V - 1)
    graphdef, params = nnx.split(model)

    @jax.jit
    def probs(params, window, pos):
        logits = nnx.merge(graphdef, params)(window[None])[0, pos]
        return jax.nn.softmax(logits.astype(np.float32))

    def tables(i: int, decoded: Sequence[int]) -> np.ndarray:
        t = i + 1  # the position of symbol i in [first_token, *message]
        start = (t - 1) // T * T
        prefix = ([first] + [int(s) for s in decoded[:i]])[start:t]
        window = np.zeros(T, np.int32)
        window[:len(prefix)] = prefix
        return quantize_probs(np.asarray(probs(params, window, len(prefix) - 1)), total)

    return tables
