"""Training: one jit-compiled step, evaluation, and a ``fit`` loop with a metrics history.

The model lives as Flax NNX state split into a static graph definition and a pytree of
parameters. The train step is a pure function of ``(TrainState, batch)``, compiled once with
``jax.jit`` and with the incoming state donated, so XLA updates parameters and optimizer
moments in place. Optimisation is Optax: AdamW (decay on matrices and embeddings only),
linear warmup then cosine decay, and global-norm gradient clipping.
"""

from __future__ import annotations

import ctypes
import json
import math
import os
import platform
import time
from collections.abc import Callable
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from .config import ModelConfig, TrainConfig
from .data import Batches
from .model import GPT

# glibc malloc settings (see keep_freed_memory): blocks up to MMAP_THRESHOLD come from the
# heap rather than from their own mmap, the heap keeps up to TRIM_THRESHOLD of free memory at
# its top instead of handing it back to the operating system, and all threads share one arena.
MMAP_THRESHOLD = 512 * 2**20
TRIM_THRESHOLD = 1024 * 2**20
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8  # mallopt parameters (malloc.h)
_malloc_tuned: bool | None = None


def keep_freed_memory() -> bool:
    """Let glibc's ``malloc`` reuse the memory of XLA's per-call buffers instead of returning
    it to the operating system. Called by :class:`Trainer`; calling it again does nothing.

    Why: every call of a compiled function on the CPU allocates its temporary buffer afresh
    (45 MB for the train step of ``benchmarks/train_cpu.py``) and frees it at the end. glibc
    serves blocks above 32 MB with a fresh ``mmap`` and unmaps them when they are freed, so
    each step touches 45 MB of new pages: about 12,000 page faults, a quarter of the step's
    time on a 2-core CPU. With higher thresholds the block stays in the heap and the next
    step reuses it. The cost: the process keeps memory it has freed (its resident size does
    not shrink back after a peak).

    Threads: JAX runs CPU computations on worker threads, and glibc gives threads arenas of
    their own, which cannot keep a block above 64 MB and hand freed memory back by other
    rules; which arena served a step depended on what the process had done before (a harmless
    change to model initialisation brought 7,700 faults a step back). So the settings also
    limit malloc to one arena (``M_ARENA_MAX``): threads that have no arena yet then allocate
    from the main heap, where the thresholds above apply, and bigger per-step buffers are
    reused too (batch 32: 125 MB, 34,000 faults and 130 ms a step before, none and 84 ms
    after; see ``benchmarks/README.md``).

    Only glibc (Linux) has these settings; elsewhere, or when the environment variable
    ``JAXLLM_KEEP_FREED_MEMORY=0`` is set, nothing changes. Returns whether the settings are
    in force.
    """
    global _malloc_tuned
    if _malloc_tuned is None:
        _malloc_tuned = False
        wanted = os.environ.get("JAXLLM_KEEP_FREED_MEMORY", "1") != "0"
        if wanted and platform.libc_ver()[0] == "glibc":
            try:
                libc = ctypes.CDLL("libc.so.6")
                _malloc_tuned = bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
                                     and libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
                                     and libc.mallopt(_M_ARENA_MAX, 1))
            except (OSError, AttributeError):
                pass
    return _malloc_tuned


def release_free_memory() -> None:
    """Give the pages of memory that ``malloc`` holds free back to the operating system.

    The complement of :func:`keep_freed_memory`, which stops glibc from doing so on its own:
    :class:`Trainer` calls this after XLA has compiled something (initialisation, the first
    train and evaluation steps), whose scratch memory would otherwise stay resident for the
    rest of the run (about 150 MB for ``benchmarks/train_cpu.py``). A no-op unless the
    ``keep_freed_memory`` settings are in force.
    """
    if _malloc_tuned:
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass


class TrainState(NamedTuple):
    """Everything a step changes: the step counter, parameters and optimizer state."""

    step: jax.Array
    params: nnx.State
    opt_state: optax.OptState


def learning_rate_schedule(cfg: TrainConfig) -> optax.Schedule:
    """Linear warmup from 0 to ``learning_rate``, then cosine decay to ``min_learning_rate``."""
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=cfg.learning_rate, warmup_steps=cfg.warmup_steps,
        decay_steps=cfg.steps, end_value=cfg.min_learning_rate)


def make_optimizer(cfg: TrainConfig) -> optax.GradientTransformation:
    """Global-norm clipping followed by AdamW; weight decay applies to tensors of rank >= 2."""
    return optax.chain(
        optax.clip_by_global_norm(cfg.grad_clip),
        optax.adamw(learning_rate_schedule(cfg), b1=cfg.beta1, b2=cfg.beta2,
                    weight_decay=cfg.weight_decay,
                    mask=lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)),
    )


def cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Mean next-token cross-entropy in nats, computed in float32."""
    return optax.softmax_cross_entropy_with_integer_labels(
        logits.astype(jnp.float32), targets).mean()


def loss_fn(params: nnx.State, graphdef: nnx.GraphDef, x: jax.Array, y: jax.Array,
            dropout_key: jax.Array | None = None) -> jax.Array:
    model = nnx.merge(graphdef, params)
    return cross_entropy(model(x, dropout_key=dropout_key), y)


def train_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation,
               dropout_seed: int | None, state: TrainState, x: jax.Array,
               y: jax.Array) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimisation step; pure, so it can be jitted (see :class:`Trainer`)."""
    key = None
    if dropout_seed is not None:
        key = jax.random.fold_in(jax.random.key(dropout_seed), state.step)
    loss, grads = jax.value_and_grad(loss_fn)(state.params, graphdef, x, y, key)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads)}
    return TrainState(state.step + 1, params, opt_state), metrics


def eval_step(graphdef: nnx.GraphDef, params: nnx.State, x: jax.Array,
              y: jax.Array) -> jax.Array:
    return loss_fn(params, graphdef, x, y)


class Trainer:
    """Holds a model's training state and the compiled functions that advance it.

    >>> trainer = Trainer(model_cfg, train_cfg, train_tokens, val_tokens)
    >>> history = trainer.fit()            # doctest: +SKIP
    >>> model = trainer.model              # an nnx.Module with the current parameters
    """

    def __init__(self, model_cfg: ModelConfig, train_cfg: TrainConfig,
                 train_tokens: np.ndarray, val_tokens: np.ndarray | None = None,
                 *, model: GPT | None = None):
        if not isinstance(model_cfg, ModelConfig):
            raise TypeError(f"model_cfg must be a ModelConfig, got {type(model_cfg).__name__}")
        if not isinstance(train_cfg, TrainConfig):
            raise TypeError(f"train_cfg must be a TrainConfig, got {type(train_cfg).__name__}")
        train_tokens = np.asarray(train_tokens, np.int32)
        for name, toks in (("train_tokens", train_tokens), ("val_tokens", val_tokens)):
            if toks is None:
                continue
            toks = np.asarray(toks)
            if toks.size and (toks.min() < 0 or toks.max() >= model_cfg.vocab_size):
                raise ValueError(
                    f"{name} must hold ids in [0, vocab_size={model_cfg.vocab_size}), got "
                    f"values from {toks.min()} to {toks.max()}")
        keep_freed_memory()
        self.model_cfg, self.train_cfg = model_cfg, train_cfg
        T, B, seed = model_cfg.context_length, train_cfg.batch_size, train_cfg.seed
        self.train_batches = Batches(train_tokens, B, T, seed)
        self.eval_sets = {"train": Batches(train_tokens, B, T, seed + 1)}
        if val_tokens is not None:
            self.eval_sets["val"] = Batches(np.asarray(val_tokens, np.int32), B, T, seed + 2)

        self.tx = make_optimizer(train_cfg)
        self.schedule = learning_rate_schedule(train_cfg)
        if model is None:
            model = GPT(model_cfg, rngs=nnx.Rngs(params=jax.random.key(seed)))
        self.graphdef, params = nnx.split(model)
        opt_state = jax.jit(self.tx.init)(params)
        self.state = TrainState(jnp.zeros((), jnp.int32), params, opt_state)
        #: seed of the dropout masks (None without dropout); step s uses fold_in(key, s)
        self.dropout_seed = seed + 3 if model_cfg.dropout > 0 else None
        self._train_step = jax.jit(
            partial(train_step, self.graphdef, self.tx, self.dropout_seed), donate_argnums=0)
        self._eval_step = jax.jit(partial(eval_step, self.graphdef))
        self._compiled = {"train": False, "eval": False}
        release_free_memory()
        self.history: dict[str, list[float]] = {
            "step": [], "loss": [], "grad_norm": [], "lr": [],
            "eval_step": [], **{f"{k}_loss": [] for k in self.eval_sets}}

    # -- state ---------------------------------------------------------------------------
    @property
    def step(self) -> int:
        return int(self.state.step)

    @property
    def model(self) -> GPT:
        """The model with the current parameters (a fresh NNX module sharing no buffers)."""
        params = jax.tree.map(jnp.copy, self.state.params)
        return nnx.merge(self.graphdef, params)

    def abstract_state(self) -> TrainState:
        """Shapes, dtypes and shardings of the state: a checkpoint restored against it lands
        on this trainer's devices, whatever devices saved it."""
        return jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), self.state)

    # -- steps ---------------------------------------------------------------------------
    def train_step(self, x: np.ndarray, y: np.ndarray) -> dict[str, jax.Array]:
        """Advance by one step on the batch ``(x, y)``; returns device-side metrics."""
        self.state, metrics = self._train_step(self.state, x, y)
        if not self._compiled["train"]:  # the first call compiled the step
            self._compiled["train"] = True
            release_free_memory()
        return metrics

    def evaluate(self, batches: int | None = None) -> dict[str, float]:
        """Mean loss over the same ``eval_batches`` batches of each split every time."""
        n = self.train_cfg.eval_batches if batches is None else batches
        out = {}
        for name, data in self.eval_sets.items():
            losses = [self._eval_step(self.state.params, *data[i]) for i in range(n)]
            out[name] = float(np.mean(jax.device_get(losses)))
        if not self._compiled["eval"]:
            self._compiled["eval"] = True
            release_free_memory()
        return out

    def fit(self, steps: int | None = None, *, progress: bool = True,
            checkpoint_dir: str | os.PathLike | None = None,
            checkpoint_every: int | None = None,
            callback: Callable[[int, dict[str, float]], None] | None = None,
            ) -> dict[str, list[float]]:
        """Train until step ``steps`` (default: the config's total), evaluating every
        ``eval_interval`` steps and at the end, and saving a checkpoint every
        ``checkpoint_every`` steps and at the end when ``checkpoint_dir`` is given.

        Returns the metrics history (also kept in ``self.history``).
        """
        from tqdm.auto import tqdm

        total = self.train_cfg.steps if steps is None else steps
        if isinstance(total, bool) or not isinstance(total, int) or total < self.step:
            raise ValueError(f"steps must be an int >= the current step {self.step}, "
                             f"got {total!r}")
        if checkpoint_every is not None and (not isinstance(checkpoint_every, int)
                                             or checkpoint_every < 1):
            raise ValueError(f"checkpoint_every must be a positive int, got {checkpoint_every!r}")
        ckpt = None
        if checkpoint_dir is not None:
            from .checkpoint import Checkpointer

            ckpt = Checkpointer(checkpoint_dir)
        pending: list[tuple[int, dict[str, jax.Array]]] = []

        def flush() -> dict[str, float]:
            last: dict[str, float] = {}
            if not pending:
                return last
            # One call of the schedule for all pending steps (it is a jnp function).
            lrs = np.asarray(self.schedule(np.array([s for s, _ in pending])))
            for (s, m), lr in zip(jax.device_get(pending), lrs, strict=True):
                self.history["step"].append(s)
                self.history["loss"].append(float(m["loss"]))
                self.history["grad_norm"].append(float(m["grad_norm"]))
                self.history["lr"].append(float(lr))
                last = {"loss": float(m["loss"])}
            pending.clear()
            return last

        # Read the step counter off the device once, then count on the host: asking the
        # device every iteration would wait for each step to finish before the next one is
        # dispatched, where JAX's asynchronous dispatch lets the host sample and send batch
        # s + 1 while step s is still running.
        s = self.step
        bar = tqdm(total=total, initial=s, disable=not progress, unit="step",
                   dynamic_ncols=True)
        t0 = time.perf_counter()
        while s < total:
            pending.append((s, self.train_step(*self.train_batches[s])))
            s = done = s + 1
            at_eval = done % self.train_cfg.eval_interval == 0 or done == total
            at_ckpt = ckpt is not None and (
                done == total or (checkpoint_every is not None and done % checkpoint_every == 0))
            if at_eval or at_ckpt or len(pending) >= 50:
                last = flush()
                postfix = {"loss": f"{last['loss']:.3f}"}
                if at_eval:
                    ev = self.evaluate()
                    self.history["eval_step"].append(done)
                    for k, v in ev.items():
                        self.history[f"{k}_loss"].append(v)
                        postfix[k] = f"{v:.3f}"
                    if callback is not None:
                        callback(done, ev)
                bar.set_postfix(postfix, refresh=False)
                if at_ckpt:
                    self.save(ckpt)
            bar.update(1)
        flush()
        bar.close()
        self.history.setdefault("seconds", []).append(time.perf_counter() - t0)
        return self.history

    # -- checkpoints ---------------------------------------------------------------------
    def save(self, checkpointer: Any) -> None:
        """Save state and history at the current step (atomically, see :mod:`.checkpoint`)."""
        meta = {"step": self.step, "data_step": self.step, "history": self.history,
                "model": self.model_cfg.to_dict(), "train": self.train_cfg.to_dict()}
        checkpointer.save(self.step, self.state, meta)

    def restore(self, checkpoint_dir: str | os.PathLike, step: int | None = None) -> int:
        """Load the latest (or the given) checkpoint into this trainer; returns its step."""
        from .checkpoint import Checkpointer

        ckpt = Checkpointer(checkpoint_dir, create=False)
        meta = ckpt.read_meta(step)
        if meta.get("model") != self.model_cfg.to_dict():
            raise ValueError("checkpoint_dir holds a checkpoint of a different model config: "
                             f"{meta.get('model')}")
        state, meta = ckpt.restore(self.abstract_state(), step)
        self.state = state
        self.history = {k: list(v) for k, v in meta["history"].items()}
        return self.step


def tokens_per_second(history: dict[str, list[float]], batch_size: int, context: int) -> float:
    """Training throughput of the last ``fit`` call."""
    secs = history.get("seconds", [math.nan])[-1]
    return len(history["step"]) * batch_size * context / secs


def save_history(path: str | os.PathLike, history: dict[str, list[float]]) -> None:
    tmp = f"{os.fspath(path)}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(history, f)
    os.replace(tmp, path)
