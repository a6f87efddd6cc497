"""What a language model has learned about the structure of a text, measured with numbers
(chapter 11.1): "to predict well it must learn grammar and facts".

Everything here works on a matrix of next-token log-probabilities ``next_lp`` ``[N - 1, V]``
for a text of ``N`` characters: row ``t - 1`` is the distribution a model gave the character
at position ``t`` from the characters before it. :func:`model_next_logprobs` computes it for
a :class:`jaxllm.model.GPT` (the same windows as :func:`jaxllm.train.score_text`, so the two
agree), :meth:`jaxllm.ngram.NGramModel.next_logprobs` for a count model. The probes then pick
positions where the right answer needs more than the previous character, and compare what the
models put there:

* :func:`bracket_probe`: after a full stop, the probability of ``]``, split by whether a
  ``[`` is open (stage directions in the plays: "[Exit.]"). A bigram model sees only the full
  stop and must give both cases the same probability.
* :func:`speaker_probe`: the code length, in bits per character, of the speaker names that
  follow a blank line ("VIOLA.").
* :func:`line_capital_probe`: at the first character of a speech (the line after the
  speaker's name), the probability of a capital letter, and of the right one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from .validate import check_int

__all__ = ["ProbeResult", "bracket_positions", "bracket_probe", "line_capital_positions",
           "line_capital_probe", "model_next_logprobs", "speaker_name_spans", "speaker_probe",
           "structure_probes"]

#: A speaker's name on its own line after a blank line, as the corpus writes it: capitals
#: (with spaces, apostrophes, hyphens) and a full stop.
SPEAKER_LINE = re.compile(r"(?<=\n\n)([A-Z][A-Z' -]*[A-Z]\.)\n")


def model_next_logprobs(model: Any, tokens: Any, *, batch_size: int = 16) -> np.ndarray:
    """``[len(tokens) - 1, V]`` log-probabilities (natural log, float32) of a GPT for every
    next token of ``tokens``, cut into consecutive windows of ``context_length`` predictions
    exactly as :func:`jaxllm.train.score_text` does (each token is predicted from the tokens
    before it in its window)."""
    import jax
    from flax import nnx

    check_int("batch_size", batch_size, min=1)
    ids = np.asarray(tokens)
    if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer) or len(ids) < 2:
        raise ValueError(f"tokens must be a 1-D array of at least 2 token ids, got shape "
                         f"{ids.shape} and dtype {ids.dtype}")
    T, V = model.cfg.context_length, model.cfg.vocab_size
    if ids.min() < 0 or ids.max() >= V:
        raise ValueError(f"tokens must hold ids in [0, {V}), got {ids.min()} to {ids.max()}")
    starts = np.arange(0, len(ids) - 1, T)
    n_batches = -(-len(starts) // batch_size)
    padded = np.zeros(n_batches * batch_size * T + 1, np.int32)
    padded[:len(ids)] = ids
    graphdef, params = nnx.split(model)

    @jax.jit
    def window_logprobs(params, x):
        return jax.nn.log_softmax(nnx.merge(graphdef, params)(x).astype(np.float32), axis=-1)

    out = np.empty((n_batches * batch_size * T, V), np.float32)
    for b in range(n_batches):
        rows = (b * batch_size + np.arange(batch_size))[:, None] * T + np.arange(T)
        lp = window_logprobs(params, padded[rows])  # [batch, T, V]
        out[b * batch_size * T:(b + 1) * batch_size * T] = np.asarray(lp).reshape(-1, V)
    return out[:len(ids) - 1]


def _check_lp(text: str, next_lp: Any) -> np.ndarray:
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    lp = np.asarray(next_lp)
    if lp.ndim != 2 or lp.shape[0] != len(text) - 1:
        raise ValueError(f"next_lp must have shape [len(text) - 1 = {len(text) - 1}, V], got "
                         f"{lp.shape}")
    return lp


def _ids(tokenizer: Any, chars: str) -> list[int]:
    ids = tokenizer.encode(chars)
    if len(ids) != len(chars):
        raise ValueError(f"tokenizer must give one token per character, got {len(ids)} tokens "
                         f"for {chars!r}")
    return ids


@dataclass(frozen=True)
class ProbeResult:
    """One number a probe measured (``value``), what it is, and on how many positions."""

    name: str
    value: float
    n: int
    unit: str = "probability"


def bracket_positions(text: str, *, open_char: str = "[", close_char: str = "]",
                      after: str = ".") -> tuple[np.ndarray, np.ndarray]:
    """Positions ``t`` whose previous character is ``after``, split in two: those where a
    bracket is open (more ``open_char`` than ``close_char`` before ``t``) and those where none
    is."""
    chars = np.frombuffer(text.encode("utf-32-le"), np.uint32)
    step = (chars == ord(open_char)).astype(np.int64) - (chars == ord(close_char))
    depth = np.concatenate([[0], np.cumsum(step)])[:-1]  # depth[t]: brackets open before t
    t = np.flatnonzero(chars[:-1] == ord(after)) + 1
    return t[depth[t] > 0], t[depth[t] <= 0]


def bracket_probe(text: str, next_lp: Any, tokenizer: Any, *, open_char: str = "[",
                  close_char: str = "]", after: str = ".") -> tuple[ProbeResult, ProbeResult]:
    """Mean probability of ``close_char`` right after ``after``, when a bracket is open and
    when none is."""
    lp = _check_lp(text, next_lp)
    (close,) = _ids(tokenizer, close_char)
    inside, outside = bracket_positions(text, open_char=open_char, close_char=close_char,
                                        after=after)
    p = np.exp(lp[:, close].astype(np.float64))
    return (ProbeResult(f"p({close_char!r}) after {after!r}, {open_char!r} open",
                        float(p[inside - 1].mean()) if len(inside) else float("nan"),
                        len(inside)),
            ProbeResult(f"p({close_char!r}) after {after!r}, none open",
                        float(p[outside - 1].mean()) if len(outside) else float("nan"),
                        len(outside)))


def speaker_name_spans(text: str) -> list[tuple[int, int]]:
    """``(start, end)`` of each speaker name that follows a blank line: ``text[start:end]`` is
    the name with its full stop and the newline after it."""
    return [(m.start(1), m.end()) for m in SPEAKER_LINE.finditer(text)]


def _text_ids(text: str, tokenizer: Any) -> np.ndarray:
    ids = np.asarray(tokenizer.encode(text), np.int64)
    if len(ids) != len(text):
        raise ValueError(f"tokenizer must give one token per character, got {len(ids)} tokens "
                         f"for {len(text)} characters")
    return ids


def speaker_probe(text: str, next_lp: Any, tokenizer: Any) -> tuple[ProbeResult, ProbeResult]:
    """Bits per character over the speaker names after blank lines (name, full stop and
    newline), and the mean bits of a whole name line."""
    lp = _check_lp(text, next_lp)
    ids = _text_ids(text, tokenizer)
    spans = [(s, e) for s, e in speaker_name_spans(text) if s >= 1]
    if not spans:
        nan = float("nan")
        return (ProbeResult("bits per name character", nan, 0, "bits"),
                ProbeResult("bits per name line", nan, 0, "bits"))
    positions = np.concatenate([np.arange(s, e) for s, e in spans])
    bits = -lp[positions - 1, ids[positions]].astype(np.float64) / np.log(2.0)
    return (ProbeResult("bits per name character", float(bits.mean()), len(positions), "bits"),
            ProbeResult("bits per name line", float(bits.sum() / len(spans)), len(spans),
                        "bits"))


def line_capital_positions(text: str) -> np.ndarray:
    """Positions of the first character of each speech, where it is a capital letter: the
    line right after a speaker's name (:func:`speaker_name_spans`)."""
    ends = [e for _, e in speaker_name_spans(text)]
    return np.asarray([e for e in ends if e < len(text) and text[e].isupper()], np.int64)


def line_capital_probe(text: str, next_lp: Any, tokenizer: Any
                       ) -> tuple[ProbeResult, ProbeResult]:
    """At the first character of each speech (:func:`line_capital_positions`): the mean
    probability of the capital letter that comes, and the mean probability of any capital
    letter. After a newline a bigram model cannot tell a speech's first line from any other."""
    lp = _check_lp(text, next_lp)
    ids = _text_ids(text, tokenizer)
    t = line_capital_positions(text)
    t = t[t >= 1]
    capitals = [i for i, c in enumerate(_alphabet(tokenizer, lp.shape[1])) if c.isupper()]
    p = np.exp(lp[t - 1].astype(np.float64))
    right = p[np.arange(len(t)), ids[t]]
    any_capital = p[:, capitals].sum(axis=1)
    return (ProbeResult("p(the right capital) starting a speech", float(right.mean()), len(t)),
            ProbeResult("p(any capital) starting a speech", float(any_capital.mean()), len(t)))


def _alphabet(tokenizer: Any, vocab_size: int) -> list[str]:
    chars = [tokenizer.decode([i]) for i in range(vocab_size)]
    if any(len(c) != 1 for c in chars):
        raise ValueError("tokenizer must be a character tokenizer (one character per id)")
    return chars


def structure_probes(text: str, next_lp: Any, tokenizer: Any) -> list[ProbeResult]:
    """All the probes of this module on one text, in the order the chapter shows them."""
    return [*bracket_probe(text, next_lp, tokenizer), *speaker_probe(text, next_lp, tokenizer),
            *line_capital_probe(text, next_lp, tokenizer)]
