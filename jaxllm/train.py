"""Training: one jit-compiled step for any loss and any batch source, on one device or many.

The model lives as Flax NNX state split into a static graph definition and a pytree of
parameters. :func:`train_step` is a pure function of ``(TrainState, batch)``: it rebuilds the
model from the parameters, asks the loss function for ``(loss, metrics)``, differentiates, and
applies one Optax update (AdamW with decay on matrices and embeddings only, linear warmup then
cosine decay, global-norm clipping). :class:`Trainer` compiles it once with ``jax.jit``, the
incoming state donated so XLA updates parameters and optimizer moments in place; given a
``mesh`` it compiles the *same* function with shardings (see :mod:`jaxllm.sharding`), so one
code path serves a laptop, simulated CPU devices, a GPU node and a TPU pod slice.

What is trained on is a *batch source* (``source[step] -> dict of arrays``, deterministic in
the step: :mod:`jaxllm.data`) and what is minimised a *loss function* (``loss_fn(model, batch,
rng) -> (loss, metrics)``: :mod:`jaxllm.losses`), so pre-training, supervised fine-tuning,
reward models, DPO and policy gradients all use this loop, its evaluation, its history, its
checkpoints and its exact resume.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from . import _memory
from .checkpoint import CHECKPOINT_DIR, Checkpointer, read_run_info
from .config import ModelConfig, TrainConfig
from .data import Batches, BatchSource
from .losses import LossFn, next_token_loss
from .model import GPT
from .sharding import RULES, Rule, batch_sharding, replicated, shard_batch, shardings
from .validate import check_callable, check_int

Batch = Mapping[str, Any]
#: ``callback(step, evaluation, trainer)``, called after every evaluation; return True to stop.
Callback = Callable[[int, dict[str, float], "Trainer"], bool | None]


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


def dropout_seed(model_cfg: ModelConfig, train_cfg: TrainConfig) -> int | None:
    """Seed of the dropout masks (``None`` without dropout); step ``s`` uses
    ``fold_in(key(seed), s)``, so a resumed run draws the masks it would have drawn."""
    return train_cfg.seed + 3 if model_cfg.dropout > 0 else None


# -- the pure steps ---------------------------------------------------------------------------

def train_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation, loss_fn: LossFn,
               seed: int | None, state: TrainState, batch: Batch,
               ) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimisation step; pure, so it can be jitted with or without shardings."""
    key = None if seed is None else jax.random.fold_in(jax.random.key(seed), state.step)

    def objective(params: nnx.State) -> tuple[jax.Array, dict[str, jax.Array]]:
        return loss_fn(nnx.merge(graphdef, params), batch, key)

    (loss, metrics), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {"loss": loss, **metrics, "grad_norm": optax.tree.norm(grads)}
    return TrainState(state.step + 1, params, opt_state), metrics


def eval_step(graphdef: nnx.GraphDef, loss_fn: LossFn, params: nnx.State, batch: Batch
              ) -> dict[str, jax.Array]:
    """The loss and metrics of one batch, without dropout."""
    loss, metrics = loss_fn(nnx.merge(graphdef, params), batch, None)
    return {"loss": loss, **metrics}


# -- the state, abstract and real --------------------------------------------------------------

def _new_model(model_cfg: ModelConfig, seed: int) -> GPT:
    return GPT(model_cfg, rngs=nnx.Rngs(params=jax.random.key(seed)))


def abstract_train_state(model_cfg: ModelConfig, train_cfg: TrainConfig, *,
                         mesh: jax.sharding.Mesh | None = None, rules: Sequence[Rule] = RULES,
                         model_fn: Callable[[], nnx.Module] | None = None,
                         ) -> tuple[nnx.GraphDef, TrainState]:
    """The graph definition and the shapes, dtypes and placements of a train state, with
    nothing allocated: on ``mesh`` by the partition ``rules``, else on this process's first
    device. The one place where a state's structure is built: the trainer creates its state
    against it and restores checkpoints into it (whatever devices saved them), and
    :func:`load_run` loads a run's model through it.

    ``model_fn`` builds the module (default: ``GPT(model_cfg)``); it is only traced.
    """
    build = model_fn or (lambda: _new_model(model_cfg, train_cfg.seed))
    graphdef, params = nnx.split(nnx.eval_shape(build))
    tx = make_optimizer(train_cfg)
    shapes = jax.eval_shape(
        lambda: TrainState(jnp.zeros((), jnp.int32), params, tx.init(params)))
    if mesh is None:
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        where = jax.tree.map(lambda _: device, shapes)
    else:
        where = shardings(shapes, mesh, rules)
    return graphdef, jax.tree.map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, where)


def _placement(abstract: Any) -> Any:
    return jax.tree.map(lambda a: a.sharding, abstract)


# -- the trainer --------------------------------------------------------------------------------

class Trainer:
    """Holds a model's training state and the compiled functions that advance it.

    >>> trainer = Trainer(model_cfg, train_cfg, train_tokens, val_tokens)
    >>> history = trainer.fit()            # doctest: +SKIP
    >>> model = trainer.model              # an nnx.Module with the current parameters

    ``train`` is a token stream (a 1-D array of ids: windows of it are drawn by
    :class:`jaxllm.data.Batches`, and a second, fixed set of windows is evaluated as
    ``"train"``) or any batch source. ``val`` is a token stream, a batch source or ``None``;
    ``eval_sets`` adds named batch sources to evaluate. ``loss_fn`` is the objective
    (default: next-token cross-entropy, masked when batches carry a ``mask``) and
    ``eval_loss_fn`` the one evaluated (default: ``loss_fn``). ``model`` starts from an
    existing NNX module (fine-tuning, a reward model...) instead of ``GPT(model_cfg)``.
    ``mesh`` spreads the state and every batch over its devices by the partition ``rules``
    (:mod:`jaxllm.sharding`); the batch size must divide by the number of devices.
    """

    def __init__(self, model_cfg: ModelConfig, train_cfg: TrainConfig,
                 train: np.ndarray | BatchSource, val: np.ndarray | BatchSource | None = None,
                 *, loss_fn: LossFn = next_token_loss, eval_loss_fn: LossFn | None = None,
                 eval_sets: Mapping[str, BatchSource] | None = None,
                 model: nnx.Module | None = None, mesh: jax.sharding.Mesh | None = None,
                 rules: Sequence[Rule] = RULES):
        if not isinstance(model_cfg, ModelConfig):
            raise TypeError(f"model_cfg must be a ModelConfig, got {type(model_cfg).__name__}")
        if not isinstance(train_cfg, TrainConfig):
            raise TypeError(f"train_cfg must be a TrainConfig, got {type(train_cfg).__name__}")
        check_callable("loss_fn", loss_fn)
        check_callable("eval_loss_fn", eval_loss_fn, none_ok=True)
        if model is not None and not isinstance(model, nnx.Module):
            raise TypeError(f"model must be an nnx.Module, got {type(model).__name__}")
        if mesh is not None:
            if not isinstance(mesh, jax.sharding.Mesh):
                raise TypeError(f"mesh must be a jax.sharding.Mesh, got {type(mesh).__name__}")
            n = mesh.devices.size
            if train_cfg.batch_size % n:
                raise ValueError(f"batch_size must be divisible by the {n} devices of the "
                                 f"mesh, got {train_cfg.batch_size}")
        T, B, seed = model_cfg.context_length, train_cfg.batch_size, train_cfg.seed
        sources: dict[str, BatchSource] = {}
        self.train_batches = self._source("train", train, model_cfg, B, T, seed)
        if not _is_source(train):
            sources["train"] = Batches(self.train_batches.tokens, B, T, seed + 1)
        if val is not None:
            sources["val"] = self._source("val", val, model_cfg, B, T, seed + 2)
        for name, src in (eval_sets or {}).items():
            if not _is_source(src) or name in sources:
                raise ValueError(f"eval_sets[{name!r}] must be a batch source with a new name "
                                 f"(taken: {sorted(sources)}), got {type(src).__name__}")
            sources[name] = src
        self.eval_sets = sources

        _memory.keep_freed_memory()
        self.model_cfg, self.train_cfg, self.mesh, self.rules = model_cfg, train_cfg, mesh, rules
        self.loss_fn, self.eval_loss_fn = loss_fn, eval_loss_fn or loss_fn
        self.tx = make_optimizer(train_cfg)
        self.schedule = learning_rate_schedule(train_cfg)
        self.dropout_seed = dropout_seed(model_cfg, train_cfg)
        model_fn = None if model is None else (lambda: model)
        self.graphdef, self._abstract = abstract_train_state(
            model_cfg, train_cfg, mesh=mesh, rules=rules, model_fn=model_fn)
        self.state = self._initial_state(model)
        step = partial(train_step, self.graphdef, self.tx, loss_fn, self.dropout_seed)
        evaluate = partial(eval_step, self.graphdef, self.eval_loss_fn)
        if mesh is None:
            self._train_step = jax.jit(step, donate_argnums=0)
            self._eval_step = jax.jit(evaluate)
        else:
            state_sh, batch_sh = _placement(self._abstract), batch_sharding(mesh)
            self._train_step = jax.jit(step, in_shardings=(state_sh, batch_sh),
                                       out_shardings=(state_sh, replicated(mesh)),
                                       donate_argnums=0)
            self._eval_step = jax.jit(evaluate, in_shardings=(state_sh.params, batch_sh),
                                      out_shardings=replicated(mesh))
        self._compiled = {"train": False, "eval": False}
        _memory.release_free_memory()
        self.history: dict[str, list[float]] = {"step": [], "loss": [], "grad_norm": [],
                                                "lr": [], "eval_step": []}

    @staticmethod
    def _source(name: str, data: Any, cfg: ModelConfig, B: int, T: int, seed: int
                ) -> BatchSource:
        if _is_source(data):
            return data
        toks = np.asarray(data)
        if toks.ndim != 1 or not np.issubdtype(toks.dtype, np.integer):
            raise ValueError(f"{name} must be a 1-D array of token ids or a batch source, got "
                             f"{type(data).__name__} of shape {toks.shape}")
        if toks.size and (toks.min() < 0 or toks.max() >= cfg.vocab_size):
            raise ValueError(
                f"{name} must hold ids in [0, vocab_size={cfg.vocab_size}), got values from "
                f"{toks.min()} to {toks.max()}")
        return Batches(toks.astype(np.int32), B, T, seed)

    def _initial_state(self, model: nnx.Module | None) -> TrainState:
        cfg, tcfg = self.model_cfg, self.train_cfg
        if self.mesh is None:
            # Built eagerly: the same values as GPT(cfg, rngs=...) in a notebook.
            params = nnx.split(model if model is not None else _new_model(cfg, tcfg.seed))[1]
            return TrainState(jnp.zeros((), jnp.int32), params, jax.jit(self.tx.init)(params))
        where = _placement(self._abstract)
        if model is not None:  # an existing module: moved onto the mesh
            params = jax.device_put(nnx.split(model)[1], where.params)
            return TrainState(jax.device_put(jnp.zeros((), jnp.int32), where.step), params,
                              jax.jit(self.tx.init, out_shardings=where.opt_state)(params))

        def init() -> TrainState:  # created already split: no full copy on any device
            params = nnx.split(_new_model(cfg, tcfg.seed))[1]
            return TrainState(jnp.zeros((), jnp.int32), params, self.tx.init(params))

        return jax.jit(init, out_shardings=where)()

    # -- state ---------------------------------------------------------------------------
    @property
    def step(self) -> int:
        return int(self.state.step)

    @property
    def model(self) -> nnx.Module:
        """The model with the current parameters (a fresh NNX module sharing no buffers)."""
        params = jax.tree.map(jnp.copy, self.state.params)
        return nnx.merge(self.graphdef, params)

    def abstract_state(self) -> TrainState:
        """Shapes, dtypes and placements of this trainer's state (nothing allocated)."""
        return self._abstract

    # -- steps ---------------------------------------------------------------------------
    def _put(self, batch: Batch) -> Batch:
        if self.mesh is None:
            return batch
        return jax.tree.map(lambda x: shard_batch(x, self.mesh), dict(batch))

    def _run(self, fn: Callable, *args: Any) -> Any:
        if self.mesh is None:
            return fn(*args)
        with jax.set_mesh(self.mesh):  # the model keeps its activations split by batch
            return fn(*args)

    def train_step(self, batch: Batch) -> dict[str, jax.Array]:
        """Advance by one step on ``batch``; returns device-side metrics."""
        self.state, metrics = self._run(self._train_step, self.state, self._put(batch))
        if not self._compiled["train"]:  # the first call compiled the step
            self._compiled["train"] = True
            _memory.release_free_memory()
        return metrics

    def evaluate(self, batches: int | None = None) -> dict[str, float]:
        """Mean loss and metrics over the same first ``eval_batches`` batches of every
        evaluation set, as ``{"<set>_loss": ..., "<set>_<metric>": ...}``."""
        n = check_int("batches", self.train_cfg.eval_batches if batches is None else batches,
                      min=1)
        out: dict[str, float] = {}
        for name, data in self.eval_sets.items():
            results = [self._run(self._eval_step, self.state.params, self._put(data[i]))
                       for i in range(n)]
            for key, values in jax.device_get(_stack(results)).items():
                out[f"{name}_{key}"] = float(np.mean(values))
        if not self._compiled["eval"]:
            self._compiled["eval"] = True
            _memory.release_free_memory()
        return out

    def fit(self, steps: int | None = None, *, progress: bool = True,
            checkpoint_dir: str | os.PathLike | None = None,
            checkpoint_every: int | None = None, callback: Callback | None = None,
            ) -> dict[str, list[float]]:
        """Train until step ``steps`` (default: the config's total), evaluating every
        ``eval_interval`` steps and at the end, and saving a checkpoint every
        ``checkpoint_every`` steps and at the end when ``checkpoint_dir`` is given.

        After each evaluation ``callback(step, evaluation, trainer)`` is called; when it
        returns True (see :class:`EarlyStopping`) training stops there (and is checkpointed).
        Returns the metrics history (also kept in ``self.history``).
        """
        from tqdm.auto import tqdm

        total = check_int("steps", self.train_cfg.steps if steps is None else steps,
                          min=self.step)
        check_int("checkpoint_every", checkpoint_every, min=1, none_ok=True)
        check_callable("callback", callback, none_ok=True)
        ckpt = None if checkpoint_dir is None else Checkpointer(checkpoint_dir)
        pending: list[tuple[int, dict[str, jax.Array]]] = []

        def flush() -> float | None:
            if not pending:
                return None
            # One call of the schedule for all pending steps (it is a jnp function).
            lrs = np.asarray(self.schedule(np.array([s for s, _ in pending])))
            for (s, m), lr in zip(jax.device_get(pending), lrs, strict=True):
                self.history["step"].append(s)
                self.history["lr"].append(float(lr))
                for k, v in m.items():
                    self.history.setdefault(k, []).append(float(v))
            pending.clear()
            return self.history["loss"][-1]

        # Read the step counter off the device once, then count on the host: asking the
        # device every iteration would wait for each step to finish before the next one is
        # dispatched, where JAX's asynchronous dispatch lets the host sample and send batch
        # s + 1 while step s is still running.
        s = self.step
        bar = tqdm(total=total, initial=s, disable=not progress, unit="step",
                   dynamic_ncols=True)
        t0 = time.perf_counter()
        stop = False
        while s < total and not stop:
            pending.append((s, self.train_step(self.train_batches[s])))
            s = done = s + 1
            at_eval = done % self.train_cfg.eval_interval == 0 or done == total
            at_ckpt = ckpt is not None and (
                done == total or (checkpoint_every is not None and done % checkpoint_every == 0))
            if at_eval or at_ckpt or len(pending) >= 50:
                postfix = {"loss": f"{flush():.3f}"}
                ev: dict[str, float] = {}
                if at_eval and self.eval_sets:
                    ev = self.evaluate()
                    self.history["eval_step"].append(done)
                    for k, v in ev.items():
                        self.history.setdefault(k, []).append(v)
                    postfix.update({k.removesuffix("_loss"): f"{v:.3f}" for k, v in ev.items()
                                    if k.endswith("_loss")})
                if at_eval and callback is not None:
                    stop = bool(callback(done, ev, self))
                bar.set_postfix(postfix, refresh=False)
                if at_ckpt or (stop and ckpt is not None):
                    self.save(ckpt)
            bar.update(1)
        flush()
        bar.close()
        self.history.setdefault("seconds", []).append(time.perf_counter() - t0)
        return self.history

    # -- checkpoints ---------------------------------------------------------------------
    def save(self, checkpointer: Checkpointer | str | os.PathLike) -> None:
        """Save state and history at the current step (atomically, see :mod:`.checkpoint`)."""
        if not isinstance(checkpointer, Checkpointer):
            checkpointer = Checkpointer(checkpointer)
        meta = {"step": self.step, "data_step": self.step, "history": self.history,
                "model": self.model_cfg.to_dict(), "train": self.train_cfg.to_dict()}
        checkpointer.save(self.step, self.state, meta)

    def restore(self, checkpoint_dir: str | os.PathLike, step: int | None = None) -> int:
        """Load the latest (or the given) checkpoint into this trainer, onto its own devices
        whatever devices saved it; returns its step."""
        ckpt = Checkpointer(checkpoint_dir, create=False)
        meta = ckpt.read_meta(step)
        if meta.get("model") != self.model_cfg.to_dict():
            raise ValueError("checkpoint_dir holds a checkpoint of a different model config: "
                             f"{meta.get('model')}")
        self.state, meta = ckpt.restore(self._abstract, step)
        self.history = {k: list(v) for k, v in meta["history"].items()}
        return self.step


def _is_source(x: Any) -> bool:
    """A batch source, not a token array (NumPy, JAX, list or tuple: those index too)."""
    return (isinstance(x, BatchSource) and not hasattr(x, "ndim")
            and not isinstance(x, list | tuple))


def _stack(results: list[dict[str, jax.Array]]) -> dict[str, jax.Array]:
    return {k: jnp.stack([r[k] for r in results]) for k in results[0]}


class EarlyStopping:
    """A :meth:`Trainer.fit` callback that stops when ``monitor`` (an evaluation key such as
    ``"val_loss"``) has not improved by more than ``min_delta`` for ``patience`` evaluations
    in a row. ``best`` and ``best_step`` record the best value seen."""

    def __init__(self, monitor: str = "val_loss", *, patience: int = 3,
                 min_delta: float = 0.0, mode: str = "min"):
        from .validate import check_choice, check_number

        self.monitor = monitor
        self.patience = check_int("patience", patience, min=1)
        self.min_delta = check_number("min_delta", min_delta, low=0.0)
        self.mode = check_choice("mode", mode, ("min", "max"))
        self.best: float | None = None
        self.best_step: int | None = None
        self.bad = 0

    def __call__(self, step: int, evaluation: dict[str, float], trainer: Trainer) -> bool:
        if self.monitor not in evaluation:
            raise ValueError(f"monitor must be one of the evaluated values "
                             f"{sorted(evaluation)}, got {self.monitor!r}")
        value = evaluation[self.monitor]
        sign = 1.0 if self.mode == "min" else -1.0
        if self.best is None or sign * (self.best - value) > self.min_delta:
            self.best, self.best_step, self.bad = value, step, 0
        else:
            self.bad += 1
        return self.bad >= self.patience


# -- trained runs ---------------------------------------------------------------------------------

def load_run(run_dir: str | os.PathLike, step: int | None = None):
    """The trained model, its tokenizer and its run info from a run directory written by
    ``jaxllm train`` (loaded onto this process's first device, whatever mesh trained it)."""
    from .tokenizer import load_tokenizer

    run_dir = os.fspath(run_dir)
    info = read_run_info(run_dir)
    model_cfg = ModelConfig.from_dict(info["model"])
    train_cfg = TrainConfig.from_dict(info["train"])
    graphdef, abstract = abstract_train_state(model_cfg, train_cfg)
    state, _ = Checkpointer(os.path.join(run_dir, CHECKPOINT_DIR), create=False).restore(
        abstract, step)
    tokenizer = load_tokenizer(os.path.join(run_dir, info.get("tokenizer", "tokenizer.json")))
    return nnx.merge(graphdef, state.params), tokenizer, info


class TextScore(NamedTuple):
    """How well a model predicts a text: ``nats`` summed over the ``tokens`` it predicted, for a
    text of ``characters`` characters and ``bytes`` UTF-8 bytes."""

    tokens: int
    nats: float
    characters: int
    bytes: int

    @property
    def loss(self) -> float:
        """Mean cross-entropy per token, in nats."""
        return self.nats / self.tokens

    @property
    def perplexity(self) -> float:
        return float(np.exp(self.loss))

    @property
    def bits(self) -> float:
        """Total code length of the predicted tokens, in bits (what an arithmetic coder driven
        by the model would need, to within a few bits)."""
        return self.nats / float(np.log(2.0))

    @property
    def bits_per_character(self) -> float:
        return self.bits / self.characters

    @property
    def bits_per_byte(self) -> float:
        return self.bits / self.bytes


def score_text(model: nnx.Module, tokenizer: Any, text: str, *, batch_size: int = 16
               ) -> TextScore:
    """The model's loss on ``text``: the text is encoded, cut into consecutive windows of
    ``context_length + 1`` tokens that overlap by one (each token after the first is
    predicted once, from the tokens before it in its window), and scored in batches of
    ``batch_size`` windows (the last batch padded and masked)."""
    from .losses import token_logprobs

    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    check_int("batch_size", batch_size, min=1)
    ids = np.asarray(tokenizer.encode(text), np.int32)
    if len(ids) < 2:
        raise ValueError(f"text must encode to at least 2 tokens, got {len(ids)}")
    T = model.cfg.context_length
    starts = np.arange(0, len(ids) - 1, T)
    n_batches = -(-len(starts) // batch_size)
    padded = np.zeros(n_batches * batch_size * T + 1, np.int32)
    padded[:len(ids)] = ids
    valid = np.zeros(len(padded), bool)
    valid[1:len(ids)] = True  # targets that exist
    graphdef, params = nnx.split(model)

    @jax.jit
    def batch_nats(params, x, y, mask):
        logp = token_logprobs(nnx.merge(graphdef, params)(x), y)
        return -(logp * mask).sum()

    total = 0.0
    for b in range(n_batches):
        rows = (b * batch_size + np.arange(batch_size))[:, None] * T + np.arange(T + 1)
        window, mask = padded[rows], valid[rows]
        total += float(batch_nats(params, window[:, :-1], window[:, 1:], mask[:, 1:]))
    return TextScore(tokens=len(ids) - 1, nats=total, characters=len(text),
                     bytes=len(text.encode("utf-8")))
