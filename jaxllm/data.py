"""Corpora, train/validation splits and a deterministic batch sampler.

The sampler is *stateless*: the batch for step ``s`` depends only on ``(seed, s)``. So the
data position of a run is just its step number, and a run resumed from a checkpoint at step
``s`` sees exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib import resources

import numpy as np

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

    ``batches[step]`` is a pair ``(x, y)`` of int32 arrays ``[batch_size, context_length]``
    with ``y`` shifted one token to the left of ``x``. Offsets are drawn from
    ``np.random.default_rng([seed, step])``, so any step can be regenerated on its own.
    """

    tokens: np.ndarray
    batch_size: int
    context_length: int
    seed: int = 0

    def __post_init__(self) -> None:
        tokens = np.asarray(self.tokens, dtype=np.int32)
        object.__setattr__(self, "tokens", tokens)
        for name in ("batch_size", "context_length"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {self.seed!r}")
        if tokens.ndim != 1 or len(tokens) < self.context_length + 2:
            raise ValueError(
                f"tokens must hold at least context_length + 2 = {self.context_length + 2} "
                f"tokens, got {len(tokens)}")

    def offsets(self, step: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, step])
        return rng.integers(0, len(self.tokens) - self.context_length - 1, self.batch_size)

    def __getitem__(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        idx = self.offsets(step)[:, None] + np.arange(self.context_length + 1)
        window = self.tokens[idx]
        return window[:, :-1], window[:, 1:]

    def iterate(self, start: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Batches ``start, start + 1, ...`` forever."""
        step = start
        while True:
            yield self[step]
            step += 1
