"""Sharding: one train step for 1 CPU, N simulated devices, a GPU node or a TPU pod slice.

Everything here is JAX's own machinery: a :class:`jax.sharding.Mesh` of devices with two named
axes, :class:`~jax.sharding.NamedSharding` placements for every array, and ``jax.jit`` with
``in_shardings``/``out_shardings`` around the pure :func:`jaxllm.train.train_step`. XLA's SPMD
partitioner then inserts the collectives (all-gathers of sharded parameters, reduce-scatters and
all-reduces of gradients); the model code does not change.

The mesh has two axes:

* ``"data"``: data parallelism. Each group of devices along it sees a different slice of the
  batch; parameters are replicated along it.
* ``"fsdp"``: fully sharded data parallelism. The batch is split along it *too*, and each
  parameter and both Adam moments are split into ``fsdp`` pieces, so a device holds only
  ``1 / fsdp`` of the model and optimizer state; XLA gathers a full weight just before use.

So the batch is sharded over ``("data", "fsdp")`` (all devices) and the parameters over
``"fsdp"`` only. ``make_mesh()`` with no arguments puts every device on ``"data"``;
``make_mesh(fsdp=n)`` is pure FSDP. With one device both are the ordinary single-device step.

Where each parameter goes is decided by :data:`RULES`, matched against the parameter's path
(``blocks/3/attn/qkv/kernel``) and rank; :func:`param_placements` reports the rule and the
reason for every array, including the fallback to replication when a dimension does not divide.

Several hosts: call :func:`initialize_distributed` first thing in the program; it calls
:func:`jax.distributed.initialize` when a multi-host launcher is detected and does nothing on
one host. Every process then runs the same program on the same global batch (the batch sampler
is deterministic), and :func:`shard_batch` keeps only each process's own pieces.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import re
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from .config import ModelConfig, TrainConfig
from .model import GPT
from .train import TrainState, eval_step, make_optimizer, train_step

AXES = ("data", "fsdp")
BATCH_SPEC = PartitionSpec(("data", "fsdp"))
REPLICATED = PartitionSpec()

# -- the mesh -------------------------------------------------------------------------------


def _check_size(name: str, value: Any) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                              or value < 1):
        raise ValueError(f"{name} must be None or a positive int, got {value!r}")


def make_mesh(data: int | None = None, fsdp: int | None = None,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A ``(data, fsdp)`` mesh over ``devices`` (default: all devices of all processes).

    Give either size and the other is ``len(devices) // size``; give neither and every device
    is on ``"data"`` (pure data parallelism); give both and their product must be the number
    of devices. Devices are laid out by :func:`jax.make_mesh`, which knows TPU and GPU
    topologies, so neighbouring ``fsdp`` devices are close (the same host where possible).
    """
    _check_size("data", data)
    _check_size("fsdp", fsdp)
    devices = list(jax.devices() if devices is None else devices)
    if not devices:
        raise ValueError("devices must hold at least one device, got an empty sequence")
    n = len(devices)
    if data is None and fsdp is None:
        data, fsdp = n, 1
    elif data is None:
        if n % fsdp:
            raise ValueError(f"fsdp must divide the number of devices {n}, got {fsdp}")
        data = n // fsdp
    elif fsdp is None:
        if n % data:
            raise ValueError(f"data must divide the number of devices {n}, got {data}")
        fsdp = n // data
    if data * fsdp != n:
        raise ValueError(f"data * fsdp must equal the number of devices {n}, got "
                         f"data={data}, fsdp={fsdp}")
    # Auto axes: shardings are propagated by XLA (GSPMD), which the model code relies on.
    return jax.make_mesh((data, fsdp), AXES, axis_types=(AxisType.Auto, AxisType.Auto),
                         devices=devices)


def _axis_sizes(mesh: Mesh | jax.sharding.AbstractMesh | Mapping[str, int]) -> dict[str, int]:
    shape = mesh if isinstance(mesh, Mapping) else mesh.shape
    sizes = {name: int(shape.get(name, 1)) for name in AXES}
    unknown = sorted(set(shape) - set(AXES))
    if unknown:
        raise ValueError(f"mesh must have axes from {AXES}, got extra axes {unknown}")
    return sizes


# -- partition rules ------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Rule:
    """Where a family of parameters goes.

    ``pattern`` is a regular expression searched in the parameter's path (``/``-joined, without
    the trailing ``value``); ``specs`` are candidate placements of the *unstacked* parameter,
    tried in order until one divides the shape (a stacked, scanned parameter gets an extra
    leading ``None`` for its layer axis). An empty ``specs`` means: always replicate.
    """

    name: str
    pattern: str
    rank: int
    specs: tuple[tuple[str | None, ...], ...]
    why: str


_ROW, _COL = ("fsdp", None), (None, "fsdp")

#: The rules, first match wins. Every matrix is split along one dimension over ``"fsdp"``;
#: vectors (biases, norm scales) are a tiny fraction of the model and stay replicated.
RULES: tuple[Rule, ...] = (
    Rule("token embedding", r"(^|/)wte/embedding$", 2, (_COL, _ROW),
         "[vocab, d_model]: split d_model (vocabularies such as 50257 rarely divide)"),
    Rule("position embedding", r"(^|/)wpe/embedding$", 2, (_COL, _ROW),
         "[context, d_model]: split d_model"),
    Rule("attention qkv", r"(^|/)attn/qkv/kernel$", 2, (_ROW, _COL),
         "[d_model, (heads + 2 kv_heads) * head_dim]: split the input dimension"),
    Rule("attention output", r"(^|/)attn/proj/kernel$", 2, (_ROW, _COL),
         "[heads * head_dim, d_model]: split the input dimension"),
    Rule("mlp in", r"(^|/)mlp/fc/kernel$", 2, (_ROW, _COL),
         "[d_model, d_mlp (x2 for SwiGLU)]: split the input dimension"),
    Rule("mlp out", r"(^|/)mlp/proj/kernel$", 2, (_ROW, _COL),
         "[d_mlp, d_model]: split the input dimension"),
    Rule("moe router", r"(^|/)mlp/router/kernel$", 2, (_ROW, _COL),
         "[d_model, n_experts]: split d_model (expert counts such as 8 are small)"),
    Rule("expert weights", r"(^|/)mlp/w_(in|out)$", 3,
         (("fsdp", None, None), (None, "fsdp", None), (None, None, "fsdp")),
         "[n_experts, in, out] stacked experts: split the expert axis (each device holds "
         "whole experts), else the input dimension"),
    Rule("expert biases", r"(^|/)mlp/b_(in|out)$", 2, (("fsdp", None), (None, None)),
         "[n_experts, width]: split the expert axis when it divides, else replicated"),
    Rule("lm head", r"(^|/)lm_head/kernel$", 2, (_ROW, _COL),
         "[d_model, vocab]: split d_model"),
    Rule("vector", r"(^|/)(bias|scale)$", 1, (),
         "a bias or norm scale: too small to be worth splitting, replicated"),
)


@dataclasses.dataclass(frozen=True)
class Placement:
    """The placement chosen for one array: its path, shape, spec, rule and the reason."""

    path: str
    shape: tuple[int, ...]
    spec: PartitionSpec
    rule: str
    reason: str

    @property
    def replicated(self) -> bool:
        return all(s is None for s in self.spec)


def path_name(path: Sequence[Any]) -> str:
    """``blocks/0/attn/qkv/kernel`` for a pytree key path (NNX's trailing ``.value`` dropped)."""
    parts = []
    for k in path:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
        else:
            parts.append(str(k))
    if parts and parts[-1] == "value":
        parts.pop()
    return "/".join(parts)


def _place(name: str, shape: tuple[int, ...], sizes: Mapping[str, int],
           rules: Sequence[Rule]) -> Placement:
    if len(shape) == 0:
        return Placement(name, shape, REPLICATED, "scalar", "a scalar (step or count)")
    for rule in rules:
        if not re.search(rule.pattern, name):
            continue
        if len(shape) == rule.rank:
            lead: tuple[None, ...] = ()
        elif len(shape) == rule.rank + 1 and re.search(r"(^|/)blocks/", name):
            lead = (None,)  # the layer axis of scanned (stacked) blocks
        else:
            raise ValueError(
                f"parameter {name!r} has shape {shape}, but rule {rule.name!r} expects rank "
                f"{rule.rank} (or {rule.rank + 1} for stacked blocks)")
        if not rule.specs:
            return Placement(name, shape, PartitionSpec(*lead, *([None] * rule.rank)),
                             rule.name, rule.why)
        misses = []
        for spec in rule.specs:
            full = (*lead, *spec)
            bad = [(dim, ax) for dim, ax in zip(shape, full, strict=True)
                   if ax is not None and dim % sizes[ax]]
            if not bad:
                return Placement(name, shape, PartitionSpec(*full), rule.name, rule.why)
            misses.extend(f"{dim} is not divisible by {ax}={sizes[ax]}" for dim, ax in bad)
        return Placement(name, shape, PartitionSpec(*([None] * len(shape))), rule.name,
                         "replicated because no candidate split divides the shape: "
                         + "; ".join(misses))
    raise ValueError(f"no partition rule matches parameter {name!r} of shape {shape}; "
                     "add one to jaxllm.sharding.RULES")


def param_placements(tree: Any, mesh: Mesh | jax.sharding.AbstractMesh | Mapping[str, int],
                     rules: Sequence[Rule] = RULES) -> list[Placement]:
    """The :class:`Placement` of every array leaf of ``tree`` (parameters, an optimizer state,
    a :class:`~jaxllm.train.TrainState`, or their abstract ``jax.eval_shape`` versions).

    ``mesh`` may be a real mesh, a :class:`jax.sharding.AbstractMesh`, or a mapping of axis
    sizes such as ``{"data": 2, "fsdp": 4}``; no devices are needed to plan a placement.
    Raises ``ValueError`` for a matrix that no rule covers.
    """
    sizes = _axis_sizes(mesh)
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return [_place(path_name(p), tuple(np.shape(x)), sizes, rules) for p, x in leaves]


def partition_specs(tree: Any, mesh: Mesh | jax.sharding.AbstractMesh | Mapping[str, int],
                    rules: Sequence[Rule] = RULES) -> Any:
    """A pytree like ``tree`` with a :class:`~jax.sharding.PartitionSpec` at every leaf."""
    treedef = jax.tree.structure(tree)
    return jax.tree.unflatten(treedef, [p.spec for p in param_placements(tree, mesh, rules)])


def shardings(tree: Any, mesh: Mesh, rules: Sequence[Rule] = RULES) -> Any:
    """A pytree like ``tree`` with a :class:`~jax.sharding.NamedSharding` at every leaf."""
    return jax.tree.map(lambda spec: NamedSharding(mesh, spec),
                        partition_specs(tree, mesh, rules),
                        is_leaf=lambda x: isinstance(x, PartitionSpec))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Batches ``[B, T]`` are split along ``B`` over every device (``("data", "fsdp")``)."""
    return NamedSharding(mesh, BATCH_SPEC)


def _check_batch(name: str, x: Any, mesh: Mesh) -> None:
    n = mesh.shape["data"] * mesh.shape["fsdp"]
    shape = np.shape(x)
    if len(shape) < 1 or shape[0] % n:
        raise ValueError(f"{name} must have a batch dimension divisible by the {n} devices of "
                         f"the mesh (data x fsdp), got shape {shape}")


def shard_batch(x: Any, mesh: Mesh) -> jax.Array:
    """The global batch ``x`` (the same NumPy array on every process) as an array split over
    the mesh's devices; each process only copies the rows its own devices hold."""
    if isinstance(x, jax.Array) and x.sharding == batch_sharding(mesh):
        return x
    _check_batch("x", x, mesh)
    sharding = batch_sharding(mesh)
    if jax.process_count() == 1:
        return jax.device_put(x, sharding)
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])


# -- sharded initialisation and state --------------------------------------------------------


def init_params(model_cfg: ModelConfig, mesh: Mesh, *, seed: int = 0,
                rules: Sequence[Rule] = RULES) -> tuple[nnx.GraphDef, nnx.State]:
    """The graph definition and parameters of ``GPT(model_cfg)``, created already sharded.

    The initialiser is compiled with ``out_shardings``, so each device computes only its own
    pieces and no full copy of the model exists anywhere. The values equal those of
    ``GPT(model_cfg, rngs=nnx.Rngs(params=jax.random.key(seed)))`` (what
    :class:`~jaxllm.train.Trainer` builds).
    """
    graphdef, params, _, _ = _plan(model_cfg, None, mesh, rules)

    def init() -> nnx.State:
        return nnx.split(GPT(model_cfg, rngs=nnx.Rngs(params=jax.random.key(seed))))[1]

    return graphdef, jax.jit(init, out_shardings=params)()


def _plan(model_cfg: ModelConfig, tx: optax.GradientTransformation | None, mesh: Mesh,
          rules: Sequence[Rule]):
    if not isinstance(model_cfg, ModelConfig):
        raise TypeError(f"model_cfg must be a ModelConfig, got {type(model_cfg).__name__}")
    abstract = nnx.eval_shape(lambda: GPT(model_cfg, rngs=nnx.Rngs(0)))
    graphdef, abstract_params = nnx.split(abstract)
    param_sh = shardings(abstract_params, mesh, rules)
    abstract_state = state_sh = None
    if tx is not None:
        abstract_state = jax.eval_shape(
            lambda: TrainState(jnp.zeros((), jnp.int32), abstract_params,
                               tx.init(abstract_params)))
        state_sh = shardings(abstract_state, mesh, rules)
    return graphdef, param_sh, state_sh, abstract_state


def init_train_state(model_cfg: ModelConfig, train_cfg: TrainConfig, mesh: Mesh, *,
                     rules: Sequence[Rule] = RULES,
                     ) -> tuple[nnx.GraphDef, optax.GradientTransformation, TrainState]:
    """Graph definition, optimizer and a fresh :class:`~jaxllm.train.TrainState` whose
    parameters and Adam moments are created already sharded (seeded by ``train_cfg.seed``,
    like :class:`~jaxllm.train.Trainer`)."""
    if not isinstance(train_cfg, TrainConfig):
        raise TypeError(f"train_cfg must be a TrainConfig, got {type(train_cfg).__name__}")
    tx = make_optimizer(train_cfg)
    graphdef, _, state_sh, _ = _plan(model_cfg, tx, mesh, rules)

    def init() -> TrainState:
        model = GPT(model_cfg, rngs=nnx.Rngs(params=jax.random.key(train_cfg.seed)))
        params = nnx.split(model)[1]
        return TrainState(jnp.zeros((), jnp.int32), params, tx.init(params))

    return graphdef, tx, jax.jit(init, out_shardings=state_sh)()


def abstract_train_state(model_cfg: ModelConfig, train_cfg: TrainConfig, mesh: Mesh, *,
                         rules: Sequence[Rule] = RULES) -> TrainState:
    """Shapes, dtypes and target shardings of a train state (nothing allocated): pass it to
    :meth:`jaxllm.checkpoint.Checkpointer.restore` to load a checkpoint straight onto
    ``mesh``, whatever mesh it was saved from."""
    _, _, state_sh, shapes = _plan(model_cfg, make_optimizer(train_cfg), mesh, rules)
    return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                        shapes, state_sh)


def shard_train_state(state: TrainState, mesh: Mesh, *,
                      rules: Sequence[Rule] = RULES) -> TrainState:
    """Move an existing state (e.g. a :class:`~jaxllm.train.Trainer`'s, or one restored on
    one device) onto ``mesh`` by the rules."""
    if not isinstance(state, TrainState):
        raise TypeError(f"state must be a TrainState, got {type(state).__name__}")
    return jax.device_put(state, shardings(state, mesh, rules))


# -- the sharded steps ----------------------------------------------------------------------


class ShardedTrainStep:
    """``step(state, x, y) -> (state, metrics)``: :func:`jaxllm.train.train_step` compiled with
    ``jax.jit`` for ``mesh``: the state (donated) and the batch enter and leave with their
    shardings, the metrics come back replicated. ``x`` and ``y`` may be NumPy arrays holding
    the global batch; they are split over the devices by :func:`shard_batch`."""

    def __init__(self, graphdef: nnx.GraphDef, tx: optax.GradientTransformation, mesh: Mesh,
                 state_shardings: TrainState, dropout_seed: int | None = None):
        self.mesh = mesh
        self.state_shardings = state_shardings
        batch = batch_sharding(mesh)
        self._step = jax.jit(partial(train_step, graphdef, tx, dropout_seed),
                             in_shardings=(state_shardings, batch, batch),
                             out_shardings=(state_shardings, NamedSharding(mesh, REPLICATED)),
                             donate_argnums=0)

    def __call__(self, state: TrainState, x: Any, y: Any
                 ) -> tuple[TrainState, dict[str, jax.Array]]:
        x, y = shard_batch(x, self.mesh), shard_batch(y, self.mesh)
        with jax.set_mesh(self.mesh):  # the model keeps its activations split by batch
            try:
                return self._step(state, x, y)
            except ValueError as e:
                # A state placed elsewhere (e.g. restored onto the mesh it was saved from):
                # jit refuses it before running anything, so move it here and try again.
                if "does not match the sharding" not in str(e):
                    raise
                return self._step(jax.device_put(state, self.state_shardings), x, y)

    def lower(self, state: Any, x: Any, y: Any) -> Any:
        """The lowered program (``.compile().cost_analysis()``, ``.as_text()``)."""
        with jax.set_mesh(self.mesh):
            return self._step.lower(state, shard_batch(x, self.mesh), shard_batch(y, self.mesh))


class ShardedEvalStep:
    """``evaluate(params, x, y) -> loss``: the mean loss of a batch, sharded like training."""

    def __init__(self, graphdef: nnx.GraphDef, mesh: Mesh, param_shardings: Any):
        self.mesh = mesh
        batch = batch_sharding(mesh)
        self._step = jax.jit(partial(eval_step, graphdef),
                             in_shardings=(param_shardings, batch, batch),
                             out_shardings=NamedSharding(mesh, REPLICATED))

    def __call__(self, params: Any, x: Any, y: Any) -> jax.Array:
        with jax.set_mesh(self.mesh):
            return self._step(params, shard_batch(x, self.mesh), shard_batch(y, self.mesh))


def make_train_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation, mesh: Mesh,
                    state: TrainState, *, dropout_seed: int | None = None,
                    rules: Sequence[Rule] = RULES) -> ShardedTrainStep:
    """The sharded train step for states shaped like ``state`` (real or abstract)."""
    return ShardedTrainStep(graphdef, tx, mesh, shardings(state, mesh, rules), dropout_seed)


def make_eval_step(graphdef: nnx.GraphDef, mesh: Mesh, params: Any, *,
                   rules: Sequence[Rule] = RULES) -> ShardedEvalStep:
    """The sharded evaluation step for parameters shaped like ``params``."""
    return ShardedEvalStep(graphdef, mesh, shardings(params, mesh, rules))


def dropout_seed_of(model_cfg: ModelConfig, train_cfg: TrainConfig) -> int | None:
    """The dropout seed :class:`~jaxllm.train.Trainer` uses (``None`` without dropout)."""
    return train_cfg.seed + 3 if model_cfg.dropout > 0 else None


def shard_trainer(trainer: Any, mesh: Mesh, *, rules: Sequence[Rule] = RULES) -> Any:
    """Make a :class:`~jaxllm.train.Trainer` train and evaluate on ``mesh``: its state is moved
    onto the mesh, its compiled steps are replaced by the sharded ones, and ``restore`` loads
    checkpoints straight onto the mesh (whatever mesh saved them). ``fit``, ``save``,
    ``evaluate``, ``restore`` and ``model`` work as before.

    The train batch size must be divisible by the number of devices.
    """
    n = mesh.shape["data"] * mesh.shape["fsdp"]
    if trainer.train_cfg.batch_size % n:
        raise ValueError(f"batch_size must be divisible by the {n} devices of the mesh, got "
                         f"{trainer.train_cfg.batch_size}")
    seed = getattr(trainer, "dropout_seed",
                   dropout_seed_of(trainer.model_cfg, trainer.train_cfg))
    trainer.state = shard_train_state(trainer.state, mesh, rules=rules)
    # Restore checkpoints straight onto this mesh, whatever mesh they were saved from.
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                          trainer.state)
    trainer.abstract_state = lambda: target
    trainer._train_step = make_train_step(trainer.graphdef, trainer.tx, mesh, trainer.state,
                                          dropout_seed=seed, rules=rules)
    trainer._eval_step = make_eval_step(trainer.graphdef, mesh, trainer.state.params,
                                        rules=rules)
    trainer.mesh = mesh
    return trainer


# -- several hosts --------------------------------------------------------------------------


def _env_int(environ: Mapping[str, str], name: str) -> int | None:
    text = environ.get(name)
    if text is None or text == "":
        return None
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer, got {text!r}") \
            from None


def _on_cloud_tpu_vm() -> bool:
    has_chip = any(os.path.exists(p) for p in ("/dev/accel0", "/dev/vfio/0"))
    return has_chip and importlib.util.find_spec("libtpu") is not None


def detect_launcher(environ: Mapping[str, str] | None = None) -> str | None:
    """Which multi-host launcher started this process, or ``None`` for a single host.

    * ``"env"``: ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES`` (> 1) and
      ``JAX_PROCESS_ID`` are set (any launcher, e.g. a shell loop over ``ssh``);
    * ``"slurm"``: started by ``srun`` with more than one task;
    * ``"openmpi"``: started by ``mpirun`` with more than one process;
    * ``"tpu"``: a Cloud TPU VM (``libtpu`` and a TPU chip present) or a multi-host TPU slice
      announced by ``TPU_WORKER_HOSTNAMES``/``MEGASCALE_COORDINATOR_ADDRESS``; JAX asks the
      TPU metadata for the workers of the slice.

    ``JAXLLM_DISTRIBUTED=0`` forces ``None``; ``JAXLLM_DISTRIBUTED=1`` forces ``"auto"``
    (let :func:`jax.distributed.initialize` detect everything).
    """
    env = os.environ if environ is None else environ
    force = env.get("JAXLLM_DISTRIBUTED", "").strip().lower()
    if force in ("0", "false", "no", "off"):
        return None
    if force in ("1", "true", "yes", "on"):
        return "auto"
    if force:
        raise ValueError(f"environment variable JAXLLM_DISTRIBUTED must be 0 or 1, got "
                         f"{env['JAXLLM_DISTRIBUTED']!r}")
    if env.get("JAX_COORDINATOR_ADDRESS"):
        n = _env_int(env, "JAX_NUM_PROCESSES")
        if n is None or n < 1:
            raise ValueError("JAX_COORDINATOR_ADDRESS is set, so JAX_NUM_PROCESSES must be a "
                             f"positive integer, got {env.get('JAX_NUM_PROCESSES')!r}")
        if n > 1:
            pid = _env_int(env, "JAX_PROCESS_ID")
            if pid is None or not 0 <= pid < n:
                raise ValueError(f"JAX_PROCESS_ID must be an integer in [0, {n}), got "
                                 f"{env.get('JAX_PROCESS_ID')!r}")
            return "env"
        return None
    slurm = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_PROCID", "SLURM_LOCALID")
    if all(k in env for k in slurm):
        n = _env_int(env, "SLURM_STEP_NUM_TASKS") or _env_int(env, "SLURM_NTASKS") or 1
        if n > 1:
            return "slurm"
    if "OMPI_MCA_orte_hnp_uri" in env and (_env_int(env, "OMPI_COMM_WORLD_SIZE") or 1) > 1:
        return "openmpi"
    hosts = env.get("TPU_PROCESS_ADDRESSES") or env.get("TPU_WORKER_HOSTNAMES") or ""
    if len([h for h in hosts.split(",") if h.strip()]) > 1 \
            or env.get("MEGASCALE_COORDINATOR_ADDRESS"):
        return "tpu"
    if environ is None and _on_cloud_tpu_vm():
        return "tpu"
    return None


def initialize_distributed(environ: Mapping[str, str] | None = None) -> str | None:
    """Join the other processes of a multi-host run; do nothing on a single host.

    Call it before anything else touches JAX devices (``jaxllm train`` does). When
    :func:`detect_launcher` finds a launcher, this calls :func:`jax.distributed.initialize`:
    with the coordinator address, process count and id from the ``JAX_*`` variables, or with
    no arguments so that JAX reads them from Slurm, Open MPI or the TPU metadata. Afterwards
    ``jax.devices()`` lists the devices of every host, and :func:`make_mesh` spans them all.

    Returns the launcher's name, or ``None`` when there was nothing to do. Calling it again
    is harmless.
    """
    launcher = detect_launcher(environ)
    if launcher is None:
        return None
    if jax.distributed.is_initialized():
        return launcher
    env = os.environ if environ is None else environ
    if launcher == "env":
        jax.distributed.initialize(coordinator_address=env["JAX_COORDINATOR_ADDRESS"],
                                   num_processes=int(env["JAX_NUM_PROCESSES"]),
                                   process_id=int(env["JAX_PROCESS_ID"]))
    else:
        jax.distributed.initialize()
    return launcher


def describe(mesh: Mesh) -> str:
    """One line about the mesh and the processes, for logs."""
    kinds = sorted({d.device_kind for d in mesh.devices.flat})
    return (f"mesh data={mesh.shape['data']} x fsdp={mesh.shape['fsdp']} over "
            f"{mesh.devices.size} {'/'.join(kinds)} device(s) in {jax.process_count()} "
            f"process(es)")


def bytes_per_device(tree: Any) -> int:
    """Bytes of ``tree``'s arrays held by the first local device (to see FSDP's saving)."""
    dev = jax.local_devices()[0]
    total = 0
    for x in jax.tree.leaves(tree):
        for shard in x.addressable_shards:
            if shard.device == dev:
                total += shard.data.size * shard.data.dtype.itemsize
    return total


__all__ = [
    "AXES", "RULES", "Placement", "Rule", "ShardedEvalStep", "ShardedTrainStep",
    "abstract_train_state", "batch_sharding", "bytes_per_device", "describe",
    "detect_launcher", "dropout_seed_of", "init_params", "init_train_state",
    "initialize_distributed", "make_eval_step", "make_mesh", "make_train_step",
    "param_placements", "partition_specs", "shard_batch", "shard_train_state",
    "shard_trainer", "shardings",
]
