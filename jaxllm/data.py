"""Corpora, train/validation splits and deterministic batch sources.

A *batch source* is anything with ``source[step] -> batch``, where a batch is a dict of NumPy
arrays whose first axis is the batch. :class:`jaxllm.train.Trainer` accepts any of them, with
any loss that understands its dict. The sources here are *stateless*: the batch for step ``s``
depends only on ``(seed, s)``. So the data position of a run is just its step number, and a
run resumed from a checkpoint at step ``s`` sees exactly the batches an uninterrupted run would
have seen.

* :class:`Batches`: random windows of a token stream (pre-training; ``inputs``/``targets``);
* :class:`SentenceBatches`: windows that start at the beginning of a sentence;
* :class:`ExampleBatches`: rows drawn from a table of fixed-size examples (padded chat
  transcripts with a loss mask, preference pairs, anything with a leading example axis).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Protocol, runtime_checkable

import numpy as np

from .validate import check_int

#: A batch: arrays with a leading batch axis, by name (e.g. ``inputs``, ``targets``, ``mask``).
Batch = dict[str, np.ndarray]


@runtime_checkable
class BatchSource(Protocol):
    """What :class:`jaxllm.train.Trainer` trains on: ``source[step]`` is the batch of step
    ``step``, the same every time it is asked for (so that a resumed run is exact)."""

    def __getitem__(self, step: int) -> Batch: ...

CORPORA = ("shakespeare",)


def resource_path(name: str) -> str:
    """Path of a file shipped in ``jaxllm/resources``."""
    path = resources.files("jaxllm") / "resources" / name
    if not path.is_file():
        raise ValueError(f"name must be a file in jaxllm/resources, got {name!r}")
    return str(path)


def load_corpus(name: str = "shakespeare") -> str:
    """A corpus shipped with the package (see ``jaxllm/resources/SHAKESPEARE-SOURCE.md``)."""
    if name not in CORPORA:
        raise ValueError(f"name must be one of {', '.join(CORPORA)}, got {name!r}")
    with open(resource_path(f"{name}.txt"), encoding="utf-8") as f:
        return f.read()


def load_text(path: str | os.PathLike) -> str:
    """The text of a UTF-8 file."""
    if not os.path.isfile(path):
        raise ValueError(f"path must be an existing text file, got {os.fspath(path)!r}")
    with open(path, encoding="utf-8") as f:
        return f.read()


def train_val_split(tokens: Sequence[int] | np.ndarray,
                    val_fraction: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Split a token stream into its first ``1 - val_fraction`` and the rest (int32 arrays)."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction!r}")
    arr = np.asarray(tokens, dtype=np.int32)
    if arr.ndim != 1:
        raise ValueError(f"tokens must be one-dimensional, got shape {arr.shape}")
    n = int(round(len(arr) * (1.0 - val_fraction)))
    return arr[:n], arr[n:]


@dataclass(frozen=True)
class Batches:
    """Random windows of ``context_length + 1`` tokens, as inputs and next-token targets.

    ``batches[step]`` is ``{"inputs": x, "targets": y}``, int32 arrays
    ``[batch_size, context_length]`` with ``y`` shifted one token to the left of ``x``. Offsets
    are drawn from ``np.random.default_rng([seed, step])``, so any step can be regenerated on
    its own.
    """

    tokens: np.ndarray
    batch_size: int
    context_length: int
    seed: int = 0

    def __post_init__(self) -> None:
        tokens = np.asarray(self.tokens, dtype=np.int32)
        object.__setattr__(self, "tokens", tokens)
        check_int("batch_size", self.batch_size, min=1)
        check_int("context_length", self.context_length, min=1)
        check_int("seed", self.seed, min=0)
        if tokens.ndim != 1 or len(tokens) < self.context_length + 2:
            raise ValueError(
                f"tokens must hold at least context_length + 2 = {self.context_length + 2} "
                f"tokens, got {len(tokens)}")

    def offsets(self, step: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, step])
        return rng.integers(0, len(self.tokens) - self.context_length - 1, self.batch_size)

    def __getitem__(self, step: int) -> Batch:
        check_int("step", step, min=0)
        idx = self.offsets(step)[:, None] + np.arange(self.context_length + 1)
        return _shifted(self.tokens[idx])

    def iterate(self, start: int = 0) -> Iterator[Batch]:
        """Batches ``start, start + 1, ...`` forever."""
        return _iterate(self, start)


def _shifted(window: np.ndarray) -> Batch:
    """Inputs and next-token targets of windows ``[B, T + 1]``."""
    return {"inputs": window[:, :-1], "targets": window[:, 1:]}


def _iterate(source: Any, start: int) -> Iterator[Batch]:
    step = check_int("start", start, min=0)
    while True:
        yield source[step]
        step += 1


@dataclass(frozen=True)
class SentenceBatches:
    """Training windows that each start at the beginning of a sentence.

    Like :class:`Batches`, ``batches[step]`` is ``{"inputs": x, "targets": y}`` (int32
    ``[batch_size, context_length]``, ``y`` is ``x`` shifted by one token), drawn from
    ``np.random.default_rng([seed, step])``; but every window starts right after a
    ``separator`` token (and at the very start), so each row begins with a whole sentence at
    position 0. Short synthetic sentences (chapter 11.2) are learned much faster this way than
    from windows at random offsets, where most sentences are cut and land at arbitrary
    positions.
    """

    tokens: np.ndarray
    separator: int
    batch_size: int
    context_length: int
    seed: int = 0
    starts: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        tokens = np.asarray(self.tokens, dtype=np.int32)
        if tokens.ndim != 1:
            raise ValueError(f"tokens must be one-dimensional, got shape {tokens.shape}")
        object.__setattr__(self, "tokens", tokens)
        check_int("batch_size", self.batch_size, min=1)
        check_int("context_length", self.context_length, min=1)
        check_int("seed", self.seed, min=0)
        check_int("separator", self.separator, min=0)
        starts = np.concatenate([[0], np.flatnonzero(tokens == self.separator) + 1])
        starts = starts[starts + self.context_length + 1 <= len(tokens)]
        if not len(starts):
            raise ValueError(
                f"tokens hold no window of context_length + 1 = {self.context_length + 1} "
                f"tokens after a separator {self.separator}")
        object.__setattr__(self, "starts", starts)

    def __getitem__(self, step: int) -> Batch:
        step = check_int("step", step, min=0)
        rng = np.random.default_rng([self.seed, step])
        offsets = self.starts[rng.integers(len(self.starts), size=self.batch_size)]
        return _shifted(self.tokens[offsets[:, None] + np.arange(self.context_length + 1)])

    def iterate(self, start: int = 0) -> Iterator[Batch]:
        return _iterate(self, start)


@dataclass(frozen=True)
class ExampleBatches:
    """Batches of rows drawn from a table of examples.

    ``examples`` maps names to arrays that share their first axis (one row per example):
    padded token ids with a loss mask for supervised fine-tuning, the two answers of a
    preference pair, a reward, anything. ``batches[step]`` holds ``batch_size`` rows of every
    array, drawn with replacement by ``np.random.default_rng([seed, step])``, so any step can
    be regenerated on its own; with ``shuffle=False`` step ``s`` takes the rows
    ``s * batch_size, ...`` in order, wrapping around (for evaluation sets).
    """

    examples: Mapping[str, Any]
    batch_size: int
    seed: int = 0
    shuffle: bool = True
    size: int = field(init=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.examples, Mapping) or not self.examples:
            raise ValueError("examples must be a non-empty mapping of names to arrays, got "
                             f"{type(self.examples).__name__}")
        arrays = {str(k): np.asarray(v) for k, v in self.examples.items()}
        sizes = {k: (a.shape[0] if a.ndim else None) for k, a in arrays.items()}
        if None in sizes.values() or len(set(sizes.values())) != 1:
            raise ValueError("examples must be arrays with the same first dimension, got "
                             f"shapes { {k: a.shape for k, a in arrays.items()} }")
        n = next(iter(sizes.values()))
        if n < 1:
            raise ValueError("examples must hold at least one row, got 0")
        object.__setattr__(self, "examples", arrays)
        object.__setattr__(self, "size", n)
        check_int("batch_size", self.batch_size, min=1)
        check_int("seed", self.seed, min=0)
        if not isinstance(self.shuffle, bool):
            raise ValueError(f"shuffle must be True or False, got {self.shuffle!r}")

    def rows(self, step: int) -> np.ndarray:
        step = check_int("step", step, min=0)
        if self.shuffle:
            return np.random.default_rng([self.seed, step]).integers(0, self.size,
                                                                      self.batch_size)
        return (step * self.batch_size + np.arange(self.batch_size)) % self.size

    def __getitem__(self, step: int) -> Batch:
        rows = self.rows(step)
        return {k: a[rows] for k, a in self.examples.items()}

    def iterate(self, start: int = 0) -> Iterator[Batch]:
        return _iterate(self, start)
