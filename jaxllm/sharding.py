"""Sharding: one train step for 1 CPU, N simulated devices, a GPU node or a TPU pod slice.

Everything here is JAX's own machinery: a :class:`jax.sharding.Mesh` of devices with two named
axes and :class:`~jax.sharding.NamedSharding` placements for every array. This module only
*plans* placements; :class:`jaxllm.train.Trainer` (``Trainer(..., mesh=mesh)``) compiles the
pure :func:`jaxllm.train.train_step` with ``jax.jit`` and these ``in_shardings`` and
``out_shardings``. XLA's SPMD partitioner then inserts the collectives (all-gathers of sharded
parameters, reduce-scatters and all-reduces of gradients); the model code does not change.

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
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from .config import ModelConfig
from .model import GPT
from .validate import check_int

AXES = ("data", "fsdp")
BATCH_SPEC = PartitionSpec(("data", "fsdp"))
REPLICATED = PartitionSpec()

# -- the mesh -------------------------------------------------------------------------------


def make_mesh(data: int | None = None, fsdp: int | None = None,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A ``(data, fsdp)`` mesh over ``devices`` (default: all devices of all processes).

    Give either size and the other is ``len(devices) // size``; give neither and every device
    is on ``"data"`` (pure data parallelism); give both and their product must be the number
    of devices. Devices are laid out by :func:`jax.make_mesh`, which knows TPU and GPU
    topologies, so neighbouring ``fsdp`` devices are close (the same host where possible).
    """
    check_int("data", data, min=1, none_ok=True)
    check_int("fsdp", fsdp, min=1, none_ok=True)
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


def replicated(mesh: Mesh) -> NamedSharding:
    """A full copy on every device of ``mesh`` (metrics, scalars)."""
    return NamedSharding(mesh, REPLICATED)


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


# -- sharded initialisation ---------------------------------------------------------------------


def init_params(model_cfg: ModelConfig, mesh: Mesh, *, seed: int = 0,
                rules: Sequence[Rule] = RULES) -> tuple[nnx.GraphDef, nnx.State]:
    """The graph definition and parameters of ``GPT(model_cfg)``, created already sharded.

    The initialiser is compiled with ``out_shardings``, so each device computes only its own
    pieces and no full copy of the model exists anywhere. The values equal those of
    ``GPT(model_cfg, rngs=nnx.Rngs(params=jax.random.key(seed)))`` up to the last bit of the
    normal sampler's rounding. (:class:`jaxllm.train.Trainer` creates its whole train state
    this way when given a mesh.)
    """
    if not isinstance(model_cfg, ModelConfig):
        raise TypeError(f"model_cfg must be a ModelConfig, got {type(model_cfg).__name__}")
    graphdef, abstract = nnx.split(nnx.eval_shape(lambda: GPT(model_cfg, rngs=nnx.Rngs(0))))

    def init() -> nnx.State:
        return nnx.split(GPT(model_cfg, rngs=nnx.Rngs(params=jax.random.key(seed))))[1]

    return graphdef, jax.jit(init, out_shardings=shardings(abstract, mesh, rules))()


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
    "AXES", "RULES", "Placement", "Rule", "batch_sharding", "bytes_per_device", "describe",
    "detect_launcher", "init_params", "initialize_distributed", "make_mesh",
    "param_placements", "partition_specs", "replicated", "shard_batch", "shardings",
]
