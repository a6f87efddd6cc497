"""jaxllm.sharding: meshes, partition rules, sharded steps on simulated devices, multi-host.

JAX fixes its device count when it starts, so the multi-device runs happen in fresh processes
(``tests/sharding_worker.py``) that this module starts once, all at the same time, and whose
JSON results the tests read:

* one process with 4 simulated CPU devices (``JAX_NUM_CPU_DEVICES=4``) trains the same model
  with ``Trainer(..., mesh=...)`` on 1 device, on a ``data=4`` mesh, on an ``fsdp=4`` mesh
  (checkpointed halfway) and, from that checkpoint, on a ``data=2 x fsdp=2`` mesh; and a
  custom masked loss on a table of examples on 1 device and on ``fsdp=4``;
* two processes with 2 devices each, joined by ``initialize_distributed`` through the
  ``JAX_COORDINATOR_ADDRESS``/``JAX_NUM_PROCESSES``/``JAX_PROCESS_ID`` variables (the real
  multi-host code path, with Gloo collectives between the processes), train on a global
  ``data=2 x fsdp=2`` mesh.

Tolerance for "the same losses": 5e-5 nats absolute on losses of 3 to 4.4, about 100 float32
ulps. Splitting a batch over devices changes only the order of the sums in the mean loss and
the gradient all-reduce (1e-7 relative), which 20 Adam steps at learning rate 1e-2 with
dropout amplify to the 3e-6 observed on a 2-core CPU. A restored checkpoint must be bit-exact.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import AbstractMesh, PartitionSpec

from jaxllm import sharding as sh
from jaxllm.config import ModelConfig, TrainConfig, get_preset
from jaxllm.model import GPT
from jaxllm.train import Trainer, make_optimizer

WORKER = Path(__file__).with_name("sharding_worker.py")
LOSS_TOL = 5e-5
TIMEOUT = 600


def _env(devices: int, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("JAX_", "XLA_", "SLURM_", "OMPI_", "TPU_", "JAXLLM_"))}
    # Less LLVM optimisation halves XLA's compile time, which is most of these runs; every
    # number compared comes from programs compiled with the same flag.
    env.update(JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES=str(devices),
               XLA_FLAGS="--xla_backend_optimization_level=0", **extra)
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _result(proc: subprocess.Popen) -> dict:
    out, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 0, f"worker failed ({proc.returncode}):\n{err[-4000:]}"
    return json.loads(out.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Start the 4-device worker and the two multi-host workers together; wait for all."""
    out = tmp_path_factory.mktemp("sharding")
    popen = dict(stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                 cwd=str(WORKER.parent.parent))
    mesh = subprocess.Popen([sys.executable, str(WORKER), "mesh", str(out)], env=_env(4),
                            **popen)
    port = str(_free_port())
    hosts = [subprocess.Popen(
        [sys.executable, str(WORKER), "multihost", str(out)],
        env=_env(2, JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2",
                 JAX_PROCESS_ID=str(i)), **popen) for i in range(2)]
    try:
        return {"mesh": _result(mesh), "hosts": [_result(h) for h in hosts]}
    finally:
        for p in (mesh, *hosts):
            if p.poll() is None:
                p.kill()


def _close(a, b, tol=LOSS_TOL):
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape and a.size > 0
    np.testing.assert_allclose(a, b, rtol=0, atol=tol)


# -- multi-device runs ----------------------------------------------------------------------

def test_reference_run_learns(runs):
    one = runs["mesh"]["one"]
    assert runs["mesh"]["devices"] == 4
    assert len(one) == 20 and one[-1] < one[0] - 0.5


def test_data_parallel_matches_one_device(runs):
    r = runs["mesh"]
    _close(r["data"], r["one"])
    _close(r["data_eval"], r["one_eval"])


def test_fsdp_matches_one_device_and_splits_the_state(runs):
    r = runs["mesh"]
    _close(r["fsdp"], r["one"])
    # Matrices and their Adam moments are split four ways; vectors and counters are not.
    specs = r["fsdp_specs"]
    assert specs["params/blocks/0/attn/qkv/kernel"] == "('fsdp', None)"
    assert specs["opt_state/1/0/mu/blocks/0/attn/qkv/kernel"] == "('fsdp', None)"
    assert specs["opt_state/1/0/nu/wte/embedding"] == "(None, 'fsdp')"
    assert specs["params/norm_f/scale"] == "(None,)"
    assert specs["step"] == "()"
    assert r["fsdp_qkv_shard_shapes"] == [[8, 96]] * 4  # a [32, 96] kernel in 4 row blocks
    # Each device holds about a quarter of the parameters (vectors are replicated).
    assert r["fsdp_param_bytes"] < 0.3 * r["data_param_bytes"]


def test_sharded_initialisation_equals_the_unsharded_one(runs):
    # Same random bits; only the jit-compiled normal sampler's last-bit rounding may differ.
    assert runs["mesh"]["fsdp_init_maxdiff"] <= 1e-7


def test_checkpoint_restores_onto_another_mesh_and_continues(runs):
    r = runs["mesh"]
    assert r["restored_step"] == 10
    assert r["restored_exact"]
    assert r["restored_on_target_mesh"]
    _close(r["restored"], r["fsdp"][10:])
    _close(r["restored"], r["one"][10:])


def test_sharded_trainer_restores_onto_its_own_mesh(runs):
    r = runs["mesh"]
    assert r["trainer_restore_step"] == 20
    assert r["trainer_restore_exact"]
    assert r["trainer_restore_spec"] == "('fsdp', None)"  # saved from data=4, now fsdp=4


def test_batch_not_divisible_by_devices_is_refused(runs):
    msg = runs["mesh"]["indivisible_batch_error"]
    assert "divisible" in msg and "(6, 16)" in msg


def test_two_processes_train_like_one_device(runs):
    hosts = runs["hosts"]
    assert [h["process_index"] for h in hosts] == [0, 1]
    for h in hosts:
        assert h["launcher"] == "env"
        assert (h["process_count"], h["devices"], h["local_devices"]) == (2, 4, 2)
        _close(h["losses"], runs["mesh"]["one"][:len(h["losses"])])


# -- one device, in this process ------------------------------------------------------------

def test_a_custom_loss_and_batch_source_shard_like_one_device(runs):
    custom = runs["mesh"]["custom"]
    _close(custom["fsdp"], custom["one"])


def test_one_device_mesh_trainer_equals_the_plain_trainer():
    assert jax.device_count() == 1
    mcfg = ModelConfig(vocab_size=20, context_length=8, n_layer=1, n_head=2, d_model=16)
    tcfg = TrainConfig(steps=4, batch_size=4, warmup_steps=1, learning_rate=1e-2)
    tokens = np.random.default_rng(0).integers(0, 20, 500).astype(np.int32)
    plain = Trainer(mcfg, tcfg, tokens)
    ref = [float(plain.train_step(plain.train_batches[s])["loss"]) for s in range(4)]
    mesh = sh.make_mesh()
    assert dict(mesh.shape) == {"data": 1, "fsdp": 1}
    meshed = Trainer(mcfg, tcfg, tokens, mesh=mesh)
    losses = [float(meshed.train_step(meshed.train_batches[s])["loss"]) for s in range(4)]
    np.testing.assert_allclose(losses, ref, rtol=0, atol=1e-6)
    assert meshed.step == 4
    assert all(isinstance(x.sharding, jax.sharding.NamedSharding)
               for x in jax.tree.leaves(meshed.state))
    # init_params gives the parameters of GPT(...) with the same seed, placed by the rules.
    graphdef, params = sh.init_params(mcfg, mesh, seed=tcfg.seed)
    init = nnx.split(GPT(mcfg, rngs=nnx.Rngs(params=jax.random.key(tcfg.seed))))[1]
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(init), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-7)
        assert isinstance(a.sharding, jax.sharding.NamedSharding)


# -- partition rules ------------------------------------------------------------------------

SMALL = ModelConfig(vocab_size=65, context_length=32, n_layer=2, n_head=4, d_model=64)
CONFIGS = {
    "gpt2-like": SMALL,
    "llama-like": SMALL.replace(n_kv_head=2, mlp="swiglu", norm="rmsnorm", positions="rope",
                                bias=False, tie_embeddings=False),
    "scanned": SMALL.replace(scan_layers=True),
    "scanned-llama": SMALL.replace(n_kv_head=1, mlp="swiglu", norm="rmsnorm",
                                   positions="rope", bias=False, tie_embeddings=False,
                                   scan_layers=True),
    "gpt2": get_preset("gpt2").model,
    "llama2-70b": get_preset("llama2-70b").model.replace(scan_layers=True),
}


def _abstract_state(cfg: ModelConfig):
    params = nnx.split(nnx.eval_shape(lambda: GPT(cfg, rngs=nnx.Rngs(0))))[1]
    tx = make_optimizer(TrainConfig())
    return jax.eval_shape(lambda: (params, tx.init(params)))


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("sizes", [(1, 4), (2, 4), (1, 8)], ids=lambda s: f"data{s[0]}xfsdp{s[1]}")
def test_every_parameter_gets_a_rule_that_divides_or_a_reason(name, sizes):
    cfg = CONFIGS[name]
    tree = _abstract_state(cfg)
    mesh = AbstractMesh(sizes, sh.AXES)
    placements = sh.param_placements(tree, mesh)
    leaves = jax.tree.leaves(tree)
    assert len(placements) == len(leaves)
    n_params = len(jax.tree.leaves(tree[0]))
    for pl, leaf in zip(placements, leaves, strict=True):
        assert pl.shape == leaf.shape and len(pl.spec) == len(leaf.shape)
        assert pl.rule and pl.reason
        for dim, axis in zip(pl.shape, pl.spec, strict=True):
            if axis is not None:
                assert dim % dict(mesh.shape)[axis] == 0, pl
        if pl.rule != "scalar" and pl.rule != "vector":
            # A matrix is split over fsdp, or says why it is not.
            assert not pl.replicated or "not divisible" in pl.reason, pl
    # Every parameter's placement equals its two Adam moments' placements.
    by_path = {pl.path: pl.spec for pl in placements}
    for pl in placements[:n_params]:
        for moment in ("mu", "nu"):
            assert by_path[f"1/1/0/{moment}/{pl.path[2:]}"] == pl.spec
    if name in ("gpt2", "llama2-70b"):  # the real shapes all divide by 8
        assert not any(pl.replicated for pl in placements if pl.rule not in ("scalar",
                                                                               "vector"))
    if cfg.scan_layers:
        qkv = next(pl for pl in placements if pl.path.endswith("blocks/attn/qkv/kernel"))
        assert qkv.shape[0] == cfg.n_layer and qkv.spec == PartitionSpec(None, "fsdp", None)


def test_indivisible_shapes_fall_back_to_replication_with_a_reason():
    cfg = ModelConfig(vocab_size=30, context_length=8, n_layer=1, n_head=3, d_model=6)
    placements = {pl.path: pl for pl in sh.param_placements(_abstract_state(cfg)[0],
                                                            {"fsdp": 4})}
    qkv = placements["blocks/0/attn/qkv/kernel"]  # [6, 18]: neither dimension divides by 4
    assert qkv.replicated
    assert "6 is not divisible by fsdp=4" in qkv.reason
    assert "18 is not divisible by fsdp=4" in qkv.reason
    fc = placements["blocks/0/mlp/fc/kernel"]  # [6, 24]: the second candidate divides
    assert fc.spec == PartitionSpec(None, "fsdp")


def test_unknown_matrix_and_wrong_rank_are_refused():
    with pytest.raises(ValueError, match="no partition rule matches parameter 'extra/kernel'"):
        sh.param_placements({"extra": {"kernel": jnp.zeros((4, 4))}}, {"fsdp": 2})
    with pytest.raises(ValueError, match="expects rank 2"):
        sh.param_placements({"attn": {"qkv": {"kernel": jnp.zeros((4, 4, 4))}}}, {"fsdp": 2})
    with pytest.raises(ValueError, match="extra axes"):
        sh.param_placements({"x": jnp.zeros(())}, {"fsdp": 2, "model": 2})


@pytest.mark.parametrize("kwargs,match", [
    ({"data": 0}, "data must be None or an int >= 1"),
    ({"fsdp": 2.0}, "fsdp must be None or an int >= 1"),
    ({"fsdp": 2}, "fsdp must divide the number of devices 1"),
    ({"data": 3}, "data must divide the number of devices 1"),
    ({"data": 1, "fsdp": 2}, "data \\* fsdp must equal the number of devices 1"),
    ({"devices": []}, "devices must hold at least one device"),
])
def test_make_mesh_refuses_bad_sizes(kwargs, match):
    with pytest.raises(ValueError, match=match):
        sh.make_mesh(**kwargs)


# -- launchers ------------------------------------------------------------------------------

SLURM = {"SLURM_JOB_ID": "42", "SLURM_STEP_NODELIST": "node[01-02]", "SLURM_PROCID": "3",
         "SLURM_LOCALID": "1", "SLURM_NTASKS": "8"}


@pytest.mark.parametrize("environ,expected", [
    ({}, None),
    ({"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "JAX_NUM_PROCESSES": "2",
      "JAX_PROCESS_ID": "1"}, "env"),
    ({"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "JAX_NUM_PROCESSES": "1",
      "JAX_PROCESS_ID": "0"}, None),
    (SLURM, "slurm"),
    ({**SLURM, "SLURM_NTASKS": "1"}, None),
    ({**SLURM, "SLURM_STEP_NUM_TASKS": "1"}, None),  # srun -n1 inside a larger allocation
    ({k: v for k, v in SLURM.items() if k != "SLURM_STEP_NODELIST"}, None),  # batch script
    ({"OMPI_MCA_orte_hnp_uri": "x", "OMPI_COMM_WORLD_SIZE": "4"}, "openmpi"),
    ({"TPU_WORKER_HOSTNAMES": "t0,t1,t2,t3"}, "tpu"),
    ({"TPU_WORKER_HOSTNAMES": "t0"}, None),
    ({**SLURM, "JAXLLM_DISTRIBUTED": "0"}, None),
    ({"JAXLLM_DISTRIBUTED": "1"}, "auto"),
])
def test_detect_launcher(environ, expected):
    assert sh.detect_launcher(environ) == expected


@pytest.mark.parametrize("environ,match", [
    ({"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "two"}, "JAX_NUM_PROCESSES"),
    ({"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "2"},
     "JAX_PROCESS_ID must be an integer in \\[0, 2\\)"),
    ({"JAXLLM_DISTRIBUTED": "maybe"}, "JAXLLM_DISTRIBUTED must be 0 or 1"),
])
def test_detect_launcher_refuses_bad_variables(environ, match):
    with pytest.raises(ValueError, match=match):
        sh.detect_launcher(environ)


def test_initialize_distributed_does_nothing_on_one_host():
    assert sh.initialize_distributed({}) is None
    assert not jax.distributed.is_initialized()
    assert jax.process_count() == 1
