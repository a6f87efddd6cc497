"""The GPT module: shapes, causality, the KV cache, attention weights."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxllm.config import ModelConfig
from jaxllm.model import GPT, causal_mask, init_cache

VARIANTS = {
    "gpt2-like": ModelConfig(vocab_size=37, context_length=24, n_layer=2, n_head=4,
                             d_model=32),
    "llama-like": ModelConfig(vocab_size=37, context_length=24, n_layer=2, n_head=4,
                              n_kv_head=2, d_model=32, mlp="swiglu", norm="rmsnorm",
                              positions="rope", bias=False, tie_embeddings=False),
    "scanned": ModelConfig(vocab_size=37, context_length=24, n_layer=3, n_head=2,
                           d_model=16, scan_layers=True),
}


def _model(cfg, seed=0):
    return GPT(cfg, rngs=nnx.Rngs(seed))


def _jitted(model):
    """``model`` as one compiled function (eager NNX calls dispatch op by op: slow)."""
    graphdef, state = nnx.split(model)

    @jax.jit
    def apply(state, x, positions=None, valid=None, cache=None, cache_index=0,
              dropout_key=None):
        return nnx.merge(graphdef, state)(x, positions=positions, valid=valid, cache=cache,
                                          cache_index=cache_index, dropout_key=dropout_key)

    return lambda x, **kw: apply(state, x, **kw)


def _tokens(cfg, batch=3, length=None, seed=1):
    length = cfg.context_length if length is None else length
    return jax.random.randint(jax.random.key(seed), (batch, length), 0, cfg.vocab_size)


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_shapes(name):
    cfg = VARIANTS[name]
    model = _model(cfg)
    x = _tokens(cfg, batch=3, length=10)
    assert model(x).shape == (3, 10, cfg.vocab_size)
    logits, extras = model(x, return_attention=True)
    assert logits.shape == (3, 10, cfg.vocab_size)
    assert len(extras["attention"]) == cfg.n_layer
    for w in extras["attention"]:
        assert w.shape == (3, cfg.n_head, 10, 10)
        np.testing.assert_allclose(np.asarray(w).sum(-1), 1.0, rtol=1e-5)
        # attention weights above the diagonal (the future) are zero
        assert float(jnp.abs(jnp.triu(w, k=1)).max()) == 0.0


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_changing_a_future_token_never_changes_an_earlier_logit(name):
    cfg = VARIANTS[name]
    model = _jitted(_model(cfg))
    x = np.asarray(_tokens(cfg, batch=2))
    base = np.asarray(model(jnp.asarray(x)))
    rng = np.random.default_rng(0)
    for t in [0, 5, cfg.context_length - 1]:
        y = x.copy()
        y[:, t] = (y[:, t] + 1 + rng.integers(0, cfg.vocab_size - 1, size=2)) % cfg.vocab_size
        out = np.asarray(model(jnp.asarray(y)))
        np.testing.assert_array_equal(out[:, :t], base[:, :t])
        assert np.abs(out[:, t:] - base[:, t:]).max() > 0  # and the token does matter


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_cached_forward_equals_full_forward_token_by_token(name):
    cfg = VARIANTS[name]
    model = _jitted(_model(cfg))
    x = _tokens(cfg, batch=2, length=12)
    full = model(x)
    cache = init_cache(cfg, 2)
    for t in range(12):
        step_logits, extras = model(x[:, t:t + 1], cache=cache, cache_index=t)
        cache = extras["cache"]
        np.testing.assert_allclose(step_logits[:, 0], full[:, t], atol=2e-5, rtol=1e-5)


def test_cached_prefill_then_decode_equals_full_forward():
    cfg = VARIANTS["llama-like"]
    model = _jitted(_model(cfg))
    x = _tokens(cfg, batch=2, length=9)
    full = model(x)
    logits, extras = model(x[:, :6], cache=init_cache(cfg, 2), cache_index=0)
    np.testing.assert_allclose(logits, full[:, :6], atol=2e-5, rtol=1e-5)
    step, _ = model(x[:, 6:9], cache=extras["cache"], cache_index=6)
    np.testing.assert_allclose(step, full[:, 6:9], atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["gpt2-like", "llama-like"])
def test_left_padding_with_positions_matches_the_unpadded_sequence(name):
    cfg = VARIANTS[name]
    model = _jitted(_model(cfg))
    x = _tokens(cfg, batch=1, length=7)
    pad = 5
    padded = jnp.concatenate([jnp.zeros((1, pad), x.dtype), x], axis=1)
    valid = jnp.arange(pad + 7)[None] >= pad
    positions = jnp.maximum(jnp.cumsum(valid, axis=1) - 1, 0)
    out = model(padded, positions=positions, valid=valid)
    np.testing.assert_allclose(out[:, pad:], model(x), atol=2e-5, rtol=1e-5)


def test_grouped_query_attention_shares_key_value_heads():
    cfg = VARIANTS["llama-like"]
    model = _model(cfg)
    kernel = model.blocks[0].attn.qkv.kernel[...]
    assert kernel.shape == (32, (4 + 2 * 2) * 8)
    cache = init_cache(cfg, 1)
    assert cache.k.shape == (cfg.n_layer, 1, cfg.context_length, 2, 8)


def test_causal_mask():
    m = np.asarray(causal_mask(4))
    assert m.dtype == bool
    np.testing.assert_array_equal(m, np.tril(np.ones((4, 4), bool)))
    with pytest.raises(ValueError, match="length"):
        causal_mask(0)


def test_too_long_input_is_rejected_with_its_length():
    cfg = VARIANTS["gpt2-like"]
    with pytest.raises(ValueError, match="context_length"):
        _model(cfg)(jnp.zeros((1, cfg.context_length + 1), jnp.int32))


def test_init_cache_rejects_bad_length():
    with pytest.raises(ValueError, match="length"):
        init_cache(VARIANTS["gpt2-like"], 1, length=0)


def test_same_seed_same_parameters_different_seed_different():
    cfg = VARIANTS["gpt2-like"]
    a, b, c = _model(cfg, 0), _model(cfg, 0), _model(cfg, 1)
    la, lb, lc = (jax.tree.leaves(nnx.state(m)) for m in (a, b, c))
    assert all(bool(jnp.array_equal(x, y)) for x, y in zip(la, lb, strict=True))
    assert any(not bool(jnp.array_equal(x, y)) for x, y in zip(la, lc, strict=True))


def test_dropout_changes_training_outputs_only_when_a_key_is_given():
    cfg = VARIANTS["gpt2-like"].replace(dropout=0.5)
    model = _jitted(_model(cfg))
    x = _tokens(cfg, batch=2, length=8)
    np.testing.assert_array_equal(model(x), model(x))
    k = jax.random.key(0)
    assert float(jnp.abs(model(x, dropout_key=k) - model(x)).max()) > 0
    np.testing.assert_array_equal(model(x, dropout_key=k), model(x, dropout_key=k))


# Logits [0, ::6, :4] of VARIANTS (seed 0) on _tokens(cfg, batch=2), computed by the model
# code before sliding windows and experts were added (commit 48c16a9): with those options
# off, the dense path must compute what it computed then (bit for bit on the machine that
# recorded them; 1e-6 allows another CPU's rounding).
BEFORE_OPEN_MODELS = {
    "gpt2-like": [[-0.066659, 0.1538416, 0.2493109, 0.2204204],
                  [0.0395476, 0.2333258, -0.0739982, 0.1590762],
                  [0.0755787, -0.1959999, 0.0528331, 0.0307447],
                  [0.1019147, -0.0770815, 0.039613, -0.045788]],
    "llama-like": [[0.0573255, 0.0953086, -0.1040288, -0.1512733],
                   [0.1564463, 0.0916488, -0.0349924, -0.1145711],
                   [0.0111733, -0.0036342, -0.287638, -0.0276089],
                   [0.1098336, 0.0273802, 0.1870752, -0.1719418]],
    "scanned": [[-0.134645, -0.0373608, 0.047833, -0.1268577],
                [-0.1733924, -0.1481809, -0.1158157, 0.0438684],
                [0.0735178, 0.0581484, -0.0081956, -0.1134571],
                [-0.0551768, 0.0404367, 0.0075937, -0.0543128]],
}


@pytest.mark.parametrize("name", sorted(BEFORE_OPEN_MODELS))
def test_dense_forward_is_unchanged_by_the_open_model_options(name):
    cfg = VARIANTS[name]
    assert cfg.sliding_window is None and cfg.n_experts == 0
    logits = np.asarray(_jitted(_model(cfg))(_tokens(cfg, batch=2)))
    np.testing.assert_allclose(logits[0, ::6, :4], BEFORE_OPEN_MODELS[name], rtol=0,
                               atol=1e-6)
