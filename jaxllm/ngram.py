"""Count-based n-gram language models: the baseline every neural language model is measured
against (chapter 11.1).

An order-``n`` model predicts the next token from the ``n - 1`` tokens before it, with the
probabilities read off a table of counts: ``p(x | c) = (count(c, x) + k) / (count(c) + k V)``
(add-``k`` smoothing; ``k = 1`` is Laplace's rule, small ``k`` trusts the counts more). Order 1
is the unigram model (no context: letter frequencies), order 2 the bigram model (the previous
token only). The tables are dense NumPy arrays of ``V ** n`` entries, so this is for small
vocabularies (characters) and small ``n``.

The first ``n - 2`` predictions of a text have less context than the model's order; they use
the tables of lower order (every table up to ``n`` is kept), so an n-gram model scores exactly
the same targets as :func:`jaxllm.train.score_text` does for a transformer: every token after
the first.

>>> import numpy as np
>>> m = NGramModel.fit(np.array([0, 1, 0, 1, 0, 1]), vocab_size=2, order=2, k=0.0)
>>> float(m.probs([0])[1])
1.0
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .validate import check_int, check_number

__all__ = ["NGramModel", "MAX_TABLE_SIZE", "uniform_logprobs"]

#: The largest count table (entries) :meth:`NGramModel.fit` builds: ``V ** n`` must fit.
MAX_TABLE_SIZE = 50_000_000


def _token_array(name: str, tokens: Any, vocab_size: int | None = None) -> np.ndarray:
    arr = np.asarray(tokens)
    if arr.ndim != 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"{name} must be a 1-D sequence of integer token ids, got "
                         f"{type(tokens).__name__} of shape {arr.shape} and dtype {arr.dtype}")
    arr = arr.astype(np.int64)
    if vocab_size is not None and arr.size and (arr.min() < 0 or arr.max() >= vocab_size):
        raise ValueError(f"{name} must hold ids in [0, vocab_size={vocab_size}), got values "
                         f"from {arr.min()} to {arr.max()}")
    return arr


def _context_index(tokens: np.ndarray, ends: np.ndarray, m: int, vocab_size: int) -> np.ndarray:
    """Row index, in a table of order ``m + 1``, of the ``m`` tokens before each position in
    ``ends`` (mixed-radix number of those tokens; 0 when ``m == 0``)."""
    index = np.zeros(len(ends), np.int64)
    for j in range(m, 0, -1):
        index = index * vocab_size + tokens[ends - j]
    return index


@dataclass(frozen=True)
class NGramModel:
    """An order-``n`` model of counts with add-``k`` smoothing (build it with :meth:`fit`).

    ``counts[m]`` (for ``m = 0 .. order - 1``) is the ``[V ** m, V]`` table of how often each
    token followed each context of ``m`` tokens in the training tokens.
    """

    order: int
    vocab_size: int
    k: float
    counts: tuple[np.ndarray, ...]

    @classmethod
    def fit(cls, tokens: Sequence[int] | np.ndarray, vocab_size: int, order: int = 2, *,
            k: float = 1.0) -> NGramModel:
        """Count every (context, next token) pair of ``tokens`` for contexts of up to
        ``order - 1`` tokens."""
        vocab_size = check_int("vocab_size", vocab_size, min=1)
        order = check_int("order", order, min=1)
        k = check_number("k", k, low=0.0)
        if vocab_size ** order > MAX_TABLE_SIZE:
            raise ValueError(f"order must keep vocab_size ** order <= {MAX_TABLE_SIZE:,} "
                             f"(vocab_size={vocab_size}), got {order}")
        toks = _token_array("tokens", tokens, vocab_size)
        if len(toks) < order:
            raise ValueError(f"tokens must hold at least order={order} ids, got {len(toks)}")
        counts = []
        for m in range(order):
            ends = np.arange(m, len(toks))
            rows = _context_index(toks, ends, m, vocab_size)
            table = np.zeros(vocab_size ** m * vocab_size, np.int64)
            np.add.at(table, rows * vocab_size + toks[ends], 1)
            counts.append(table.reshape(vocab_size ** m, vocab_size))
        return cls(order, vocab_size, float(k), tuple(counts))

    @property
    def n_parameters(self) -> int:
        """Entries of the largest table: the numbers this model has to store."""
        return int(self.counts[-1].size)

    def _logprobs_rows(self, m: int, rows: np.ndarray) -> np.ndarray:
        c = self.counts[m][rows].astype(np.float64) + self.k
        total = c.sum(axis=-1, keepdims=True)
        # k = 0: an unseen pair has probability 0, and a context never seen at all (no counts
        # to divide) gets the uniform distribution.
        unseen = total == 0
        c = np.where(unseen, 1.0, c)
        total = np.where(unseen, self.vocab_size, total)
        with np.errstate(divide="ignore"):
            return np.log(c) - np.log(total)

    def logprobs_table(self) -> np.ndarray:
        """``log p(x | context)`` for every context of ``order - 1`` tokens: ``[V ** (n-1), V]``
        (natural log)."""
        return self._logprobs_rows(self.order - 1, np.arange(self.counts[-1].shape[0]))

    def probs(self, context: Sequence[int]) -> np.ndarray:
        """The next-token distribution ``[V]`` after ``context`` (its last ``order - 1``
        tokens count; a shorter context uses the table of its length)."""
        ctx = _token_array("context", context, self.vocab_size)
        m = min(len(ctx), self.order - 1)
        row = _context_index(ctx, np.array([len(ctx)]), m, self.vocab_size)
        return np.exp(self._logprobs_rows(m, row)[0])

    def next_logprobs(self, tokens: Sequence[int] | np.ndarray) -> np.ndarray:
        """``[len(tokens) - 1, V]``: row ``t`` is ``log p(. | tokens[:t + 1])``, the
        distribution the model gives the token at position ``t + 1`` (natural log)."""
        toks = _token_array("tokens", tokens, self.vocab_size)
        if len(toks) < 2:
            raise ValueError(f"tokens must hold at least 2 ids, got {len(toks)}")
        out = np.empty((len(toks) - 1, self.vocab_size))
        targets = np.arange(1, len(toks))
        m_full = self.order - 1
        for t in targets[targets < m_full]:  # the first targets have fewer tokens before them
            row = _context_index(toks, np.array([t]), int(t), self.vocab_size)
            out[t - 1] = self._logprobs_rows(int(t), row)[0]
        ends = targets[targets >= m_full]
        out[ends - 1] = self.logprobs_table()[_context_index(toks, ends, m_full,
                                                             self.vocab_size)]
        return out

    def token_logprobs(self, tokens: Sequence[int] | np.ndarray) -> np.ndarray:
        """``[len(tokens) - 1]``: ``log p(tokens[t] | tokens[:t])`` for ``t >= 1``."""
        toks = _token_array("tokens", tokens, self.vocab_size)
        lp = self.next_logprobs(toks)
        return lp[np.arange(len(lp)), toks[1:]]

    def score(self, tokens: Sequence[int] | np.ndarray, *, characters: int | None = None,
              n_bytes: int | None = None):
        """A :class:`jaxllm.train.TextScore` of ``tokens`` (every token after the first is
        predicted); ``characters`` and ``n_bytes`` default to the number of tokens (right
        for a character tokenizer of ASCII text)."""
        from .train import TextScore

        toks = _token_array("tokens", tokens, self.vocab_size)
        nats = -float(self.token_logprobs(toks).sum())
        n = len(toks)
        return TextScore(tokens=n - 1, nats=nats,
                         characters=n if characters is None else
                         check_int("characters", characters, min=1),
                         bytes=n if n_bytes is None else check_int("n_bytes", n_bytes, min=1))

    def sample(self, key: Any, prompt: Sequence[int], length: int, *,
               temperature: float = 1.0) -> list[int]:
        """``length`` new tokens after ``prompt``, each drawn from the model's distribution
        (log-probabilities divided by ``temperature``). The randomness comes only from the
        JAX ``key``: Gumbel noise ``[length, V]`` drawn once, and each token is the argmax of
        its log-probabilities plus its row of noise (the Gumbel-max trick, which is how
        :func:`jax.random.categorical` samples too)."""
        import jax

        check_int("length", length, min=1)
        check_number("temperature", temperature, low=0.0, low_open=True)
        toks = [int(t) for t in _token_array("prompt", prompt, self.vocab_size)]
        noise = np.asarray(jax.random.gumbel(key, (length, self.vocab_size)), np.float64)
        m = self.order - 1
        tables = [self._logprobs_rows(j, np.arange(self.vocab_size ** j)) / temperature
                  for j in range(m + 1)]
        out: list[int] = []
        for i in range(length):
            ctx = np.asarray(toks[len(toks) - min(m, len(toks)):], np.int64)
            j = len(ctx)
            row = int(_context_index(ctx, np.array([j]), j, self.vocab_size)[0]) if j else 0
            nxt = int(np.argmax(tables[j][row] + noise[i]))
            toks.append(nxt)
            out.append(nxt)
        return out


def uniform_logprobs(n_targets: int, vocab_size: int) -> np.ndarray:
    """The uniform baseline: ``log(1 / V)`` for each of ``n_targets`` predictions."""
    check_int("n_targets", n_targets, min=0)
    check_int("vocab_size", vocab_size, min=1)
    return np.full(n_targets, -math.log(vocab_size))
