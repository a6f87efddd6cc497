"""Mixture of experts (Mixtral): routing, the load-balancing loss, expert counts, training."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import random_model
from jaxllm.config import ModelConfig, TrainConfig
from jaxllm.losses import cross_entropy
from jaxllm.model import GPT, init_cache, load_balancing_loss
from jaxllm.sharding import param_placements
from jaxllm.train import Trainer

GELU = ModelConfig(vocab_size=31, context_length=16, n_layer=2, n_head=2, d_model=16)
SWIGLU = GELU.replace(mlp="swiglu", norm="rmsnorm", positions="rope", bias=False,
                      tie_embeddings=False, n_kv_head=1)
MIXTRAL = SWIGLU.replace(n_experts=4, experts_per_token=2)


def _tokens(cfg, batch=2, length=12, seed=1):
    return jax.random.randint(jax.random.key(seed), (batch, length), 0, cfg.vocab_size)


@nnx.jit
def _plain(model, x):
    return model(x)


@nnx.jit
def _aux(model, x):
    """Compiled once per model shape (an eager first call compiles every op on its own and
    is several times slower)."""
    return model(x, return_aux=True)


def _flat(state):
    return {tuple(str(k) for k in path): v for path, v in nnx.to_flat_state(state)}


def test_one_expert_equals_the_dense_mlp():
    # GELU with biases: every expert parameter has a dense counterpart (SwiGLU experts are
    # checked against the formula in the test of ties below).
    dense = GELU
    moe_cfg = dense.replace(n_experts=1, experts_per_token=1)
    dense_model = random_model(dense, 0)
    moe_model = random_model(moe_cfg, 1)
    src = _flat(nnx.state(dense_model, nnx.Param))
    graphdef, state = nnx.split(moe_model)
    copied = 0
    for path, var in nnx.to_flat_state(state):
        key = tuple(str(k) for k in path)
        if key in src:
            var.set_value(src[key].get_value())
            copied += 1
            continue
        head, name = key[:-1], key[-1]
        dense_name = {"w_in": ("fc", "kernel"), "b_in": ("fc", "bias"),
                      "w_out": ("proj", "kernel"), "b_out": ("proj", "bias")}.get(name)
        if dense_name is not None:
            var.set_value(src[head + dense_name].get_value()[None])
            copied += 1
    assert copied == len(src)  # every dense parameter found its place
    moe_model = nnx.merge(graphdef, state)
    x = _tokens(dense)
    want = _aux(dense_model, x)[0]  # compiled once for this and the dense-model test
    got, extras = _aux(moe_model, x)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(extras["expert_counts"], [[x.size]] * dense.n_layer)
    assert float(extras["aux_loss"]) == pytest.approx(1.0)  # one expert: perfectly balanced


@pytest.fixture(scope="module")
def mixtral():
    """A small random Mixtral, a batch of tokens and its (logits, extras), computed once."""
    model = random_model(MIXTRAL)
    x = _tokens(MIXTRAL, batch=3, length=10)
    return model, x, _aux(model, x)


def test_routing_is_deterministic_and_counts_every_assignment(mixtral):
    model, x, (a, ea) = mixtral
    b, eb = _aux(model, x)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(ea["expert_counts"], eb["expert_counts"])
    counts = np.asarray(ea["expert_counts"])
    assert counts.shape == (MIXTRAL.n_layer, 4) and counts.dtype == np.int32
    np.testing.assert_array_equal(counts.sum(axis=1), [3 * 10 * 2] * MIXTRAL.n_layer)
    assert (counts > 0).sum() > 2  # a random router uses several experts
    assert ea["aux_loss"].dtype == jnp.float32 and ea["aux_loss"].shape == ()


def test_ties_go_to_the_lower_expert_and_the_gates_mix_the_chosen_experts():
    cfg = MIXTRAL.replace(n_layer=1)
    layer = random_model(cfg).blocks[0].mlp
    layer.router.kernel[...] = jnp.zeros_like(layer.router.kernel[...])  # all logits tie
    x = jax.random.normal(jax.random.key(2), (2, 5, cfg.d_model))
    y, (aux, counts) = nnx.jit(lambda layer, x: layer(x))(layer, x)
    np.testing.assert_array_equal(counts, [10, 10, 0, 0])
    # Equal logits: each chosen expert gets weight 1/2.
    w_in, w_out = layer.w_in[...], layer.w_out[...]
    ref = 0
    for e in (0, 1):
        gate, up = jnp.split(x @ w_in[e], 2, axis=-1)
        ref = ref + 0.5 * (jax.nn.silu(gate) * up) @ w_out[e]
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-6)


def test_the_load_balancing_loss_is_one_for_uniform_routing_and_grows_with_imbalance():
    E, k, N = 4, 2, 64
    balanced = (jnp.arange(N * k).reshape(N, k)) % E  # every expert gets N k / E tokens
    uniform = jnp.zeros((N, E))
    assert float(load_balancing_loss(uniform, balanced, E)) == pytest.approx(1.0, abs=1e-6)
    # Confident routers (probabilities close to their top-k choices): the loss is E sum f^2,
    # which is >= 1 with equality only for balanced loads.
    for seed in range(10):
        logits = 30.0 * jax.random.normal(jax.random.key(seed), (N, E))
        top = jax.lax.top_k(logits, 1)[1]
        value = float(load_balancing_loss(logits, top, E))
        assert value >= 1.0 - 1e-3
    collapsed = jnp.zeros((N, E)).at[:, 0].set(30.0)
    assert float(load_balancing_loss(collapsed, jnp.zeros((N, 1), jnp.int32), E)) \
        == pytest.approx(E, rel=1e-3)


def test_dense_model_reports_zero_aux_loss_and_no_experts():
    model = random_model(GELU)
    x = _tokens(GELU)
    logits, extras = _aux(model, x)
    assert float(extras["aux_loss"]) == 0.0 and extras["aux_loss"].dtype == jnp.float32
    assert extras["expert_counts"].shape == (GELU.n_layer, 0)
    np.testing.assert_array_equal(logits, _plain(model, x))


def test_extras_combine_with_the_cache_and_attention(mixtral):
    model, x, (full, full_extras) = mixtral
    cfg = model.cfg
    logits, extras = nnx.jit(lambda m, x, c: m(x, cache=c, cache_index=0, return_aux=True,
                                               return_attention=True))(model, x,
                                                                       init_cache(cfg, 3))
    assert set(extras) == {"cache", "attention", "aux_loss", "expert_counts"}
    np.testing.assert_array_equal(extras["expert_counts"], full_extras["expert_counts"])
    assert len(extras["attention"]) == cfg.n_layer
    np.testing.assert_allclose(logits, full, rtol=1e-5, atol=1e-6)


def test_the_aux_loss_trains_the_router():
    # A loss of the shape jaxllm's training loss uses: cross-entropy + coef * aux_loss.
    cfg = MIXTRAL.replace(moe_aux_coef=0.5, n_layer=1)
    graphdef, params = nnx.split(random_model(cfg), nnx.Param)
    x = _tokens(cfg, batch=4, length=16)

    def loss(params):
        logits, extras = nnx.merge(graphdef, params)(x[:, :-1], return_aux=True)
        return cross_entropy(logits, x[:, 1:]) + cfg.moe_aux_coef * extras["aux_loss"], \
            extras["aux_loss"]

    (_, aux), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
    router = grads["blocks"][0]["mlp"]["router"]["kernel"][...]
    assert 0.0 < float(aux) < cfg.n_experts and float(jnp.abs(router).max()) > 0


def test_a_tiny_mixtral_trains_through_the_trainer_and_reports_expert_usage(char_corpus):
    # Scanned layers: the per-layer losses and counts also come out of lax.scan.
    tok, ids = char_corpus
    cfg = ModelConfig(vocab_size=tok.vocab_size, context_length=16, n_layer=2, n_head=2,
                      d_model=32, mlp="swiglu", norm="rmsnorm", positions="rope", bias=False,
                      tie_embeddings=False, n_experts=4, experts_per_token=2,
                      scan_layers=True)
    tcfg = TrainConfig(steps=20, batch_size=8, learning_rate=2e-2, min_learning_rate=2e-3,
                       warmup_steps=2, eval_interval=20, eval_batches=1)
    trainer = Trainer(cfg, tcfg, ids[:3000], model=random_model(cfg, std=0.02))
    history = trainer.fit(progress=False)
    assert history["loss"][-1] < history["loss"][0] - 0.3  # from ln(16) = 2.77
    # the trainer's default loss adds the load-balancing loss and reports it
    assert len(history["moe_aux_loss"]) == 20 and len(history["lm_loss"]) == 20
    np.testing.assert_allclose(
        history["loss"], np.add(history["lm_loss"],
                                np.multiply(cfg.moe_aux_coef, history["moe_aux_loss"])),
        rtol=1e-5)
    x = jnp.asarray(ids[:64].reshape(4, 16))
    _, extras = _aux(trainer.model, x)
    counts = np.asarray(extras["expert_counts"])
    print("expert usage per layer:", counts.tolist())  # what a notebook would plot
    assert counts.shape == (2, 4)
    np.testing.assert_array_equal(counts.sum(axis=1), [4 * 16 * 2] * 2)


@pytest.mark.parametrize(("n_experts", "spec"), [(4, ("fsdp", None, None)),
                                                 (3, (None, "fsdp", None))])
def test_expert_weights_are_split_along_the_expert_axis_when_it_divides(n_experts, spec):
    cfg = MIXTRAL.replace(n_experts=n_experts)
    params = nnx.state(nnx.eval_shape(lambda: GPT(cfg, rngs=nnx.Rngs(0))), nnx.Param)
    placements = {p.path: p for p in param_placements(params, {"fsdp": 4})}
    assert tuple(placements["blocks/0/mlp/w_in"].spec) == spec
    assert tuple(placements["blocks/0/mlp/w_out"].spec) == spec
    assert tuple(placements["blocks/0/mlp/router/kernel"].spec) == ("fsdp", None)
    stacked = cfg.replace(scan_layers=True)
    params = nnx.state(nnx.eval_shape(lambda: GPT(stacked, rngs=nnx.Rngs(0))), nnx.Param)
    placements = {p.path: p for p in param_placements(params, {"fsdp": 4})}
    assert tuple(placements["blocks/mlp/w_in"].spec) == (None, *spec)


@pytest.mark.integration
def test_moe_trains_sharded_over_four_devices_like_on_one(tmp_path):
    """In a fresh process with 4 simulated CPU devices (see tests/moe_sharding_worker.py)."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    worker = Path(__file__).with_name("moe_sharding_worker.py")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "XLA_"))}
    # Less LLVM optimisation halves XLA's compile time; both runs use the same flag.
    env.update(JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES="4",
               XLA_FLAGS="--xla_backend_optimization_level=0")
    proc = subprocess.run([sys.executable, str(worker)], env=env, capture_output=True,
                          text=True, timeout=600, cwd=str(worker.parent.parent))
    assert proc.returncode == 0, proc.stderr[-4000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    assert r["devices"] == 4
    assert r["w_in_spec"] == "('fsdp', None, None)"  # one whole expert per device
    assert r["w_in_shard_shapes"] == [[1, 32, 96]] * 4
    np.testing.assert_allclose(r["fsdp"], r["one"], rtol=0, atol=5e-5)
    assert r["counts_mesh"] == r["counts_one"]
    assert np.asarray(r["counts_one"]).sum() == 1 * 8 * 16 * 2  # layers x tokens x k
