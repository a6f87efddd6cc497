"""Sliding-window attention (Mistral): the mask, its reach, and the rolling KV cache."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import random_model
from jaxllm.config import ModelConfig
from jaxllm.model import KVCache, init_cache
from jaxllm.sample import decode_cache_length, generate

W = 4
LEARNED = ModelConfig(vocab_size=29, context_length=40, n_layer=2, n_head=2, d_model=16,
                      sliding_window=W)
MISTRAL = ModelConfig(vocab_size=29, context_length=64, n_layer=2, n_head=4, n_kv_head=2,
                      d_model=32, mlp="swiglu", norm="rmsnorm", positions="rope", bias=False,
                      tie_embeddings=False, sliding_window=W)


def _model(cfg, seed=0):
    return random_model(cfg, seed)


def _apply(model):
    """The model as one compiled function (an eager first call compiles every op on its own
    and is several times slower)."""
    graphdef, state = nnx.split(model)

    @jax.jit
    def apply(state, x, positions=None, valid=None, cache=None, cache_index=0):
        return nnx.merge(graphdef, state)(x, positions=positions, valid=valid, cache=cache,
                                          cache_index=cache_index)

    return lambda x, **kw: apply(state, x, **kw)


def _tokens(cfg, batch, length, seed=1):
    return jax.random.randint(jax.random.key(seed), (batch, length), 0, cfg.vocab_size)


def test_a_window_as_long_as_the_sequence_is_full_attention():
    cfg = MISTRAL
    x = _tokens(cfg, 2, 24)
    full = _apply(_model(cfg.replace(sliding_window=None)))(x)
    windowed = _apply(_model(cfg.replace(sliding_window=24)))(x)  # same seed, same weights
    np.testing.assert_array_equal(windowed, full)
    # a short window changes the output beyond it, and nothing before
    short = _apply(_model(cfg))(x)
    assert float(jnp.abs(short[:, W:] - full[:, W:]).max()) > 1e-4
    np.testing.assert_array_equal(short[:, :W], full[:, :W])


def test_a_position_beyond_the_reach_of_the_windows_has_exactly_zero_gradient():
    # Each layer looks W - 1 positions back, so after L layers position t depends on the
    # positions t - L (W - 1) ... t and on nothing earlier.
    model = _model(LEARNED)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    x = _tokens(LEARNED, 1, 20)
    t, reach = 17, LEARNED.n_layer * (W - 1)

    def out(params):
        return nnx.merge(graphdef, params, rest)(x)[0, t].sum()

    g = np.asarray(jax.jit(jax.grad(out))(params)["wpe"]["embedding"][...])  # [context, d_model]
    per_position = np.abs(g).sum(axis=1)
    assert np.all(per_position[: t - reach] == 0.0)
    assert np.all(per_position[t - reach: t + 1] > 0.0)
    assert np.all(per_position[t + 1:] == 0.0)  # causality


def test_changing_a_token_outside_the_window_changes_nothing():
    model = _apply(_model(MISTRAL.replace(n_layer=1)))
    x = np.asarray(_tokens(MISTRAL, 2, 16))
    y = x.copy()
    y[:, 3] = (y[:, 3] + 1) % MISTRAL.vocab_size
    a, b = np.asarray(model(jnp.asarray(x))), np.asarray(model(jnp.asarray(y)))
    np.testing.assert_array_equal(a[:, 3 + W:], b[:, 3 + W:])  # one layer: reach W - 1
    assert np.abs(a[:, 3:3 + W] - b[:, 3:3 + W]).min(axis=-1).max() > 0


@pytest.mark.parametrize("cfg", [MISTRAL, MISTRAL.replace(scan_layers=True)],
                         ids=["layers", "scanned"])
def test_rolling_cache_token_by_token_and_in_chunks_equals_the_full_forward(cfg):
    model = _apply(_model(cfg))
    T = 6 * W
    x = _tokens(cfg, 2, T)
    full = model(x)
    cache = init_cache(cfg, 2, length=T)
    assert cache.k.shape == (cfg.n_layer, 2, W, cfg.kv_heads, cfg.head_dim)  # bounded
    assert cache.pos.shape == (2, W)
    for t in range(T if not cfg.scan_layers else 0):  # scanned: the chunks below suffice
        logits, extras = model(x[:, t:t + 1], cache=cache, cache_index=t)
        cache = extras["cache"]
        assert cache.k.shape[2] == W
        np.testing.assert_allclose(logits[:, 0], full[:, t], atol=2e-5, rtol=1e-5)
    if not cfg.scan_layers:
        np.testing.assert_array_equal(np.asarray(cache.pos),
                                      np.tile(_slot_positions(T), (2, 1)))
    # a prefill longer than the window, then chunks that wrap around the end of the cache
    cache = init_cache(cfg, 2)
    start = 0
    for size in (2 * W + 1, 3, 3, 1, 1):
        logits, extras = model(x[:, start:start + size], cache=cache, cache_index=start)
        cache = extras["cache"]
        np.testing.assert_allclose(logits, full[:, start:start + size], atol=2e-5, rtol=1e-5)
        start += size


def _slot_positions(T):
    """The positions held by the W slots after T tokens: slot s holds the latest p with
    p % W == s."""
    return np.array([max(p for p in range(T) if p % W == s) for s in range(W)])


def test_greedy_generation_past_the_window_equals_recomputing_with_the_mask():
    model = _model(MISTRAL)
    apply = _apply(model)
    prompt, other = [3, 1, 4, 1, 5, 9], [6, 6, 1]
    n = 5 * W
    # A left-padded batch: each row must decode as it would alone.
    got, got_other = generate(model, [prompt, other], n, temperature=0.0)
    assert got_other == generate(model, [other], n, temperature=0.0)[0]
    # Reference: the whole sequence recomputed at every step (one fixed-length buffer; causal
    # attention makes the zeros after position t irrelevant to the logits at t).
    buf = np.zeros((1, len(prompt) + n), np.int32)
    buf[0, :len(prompt)] = prompt
    for t in range(len(prompt), len(prompt) + n):
        buf[0, t] = int(jnp.argmax(apply(jnp.asarray(buf))[0, t - 1]))
    assert got == buf[0, len(prompt):].tolist()
    assert len(set(got)) > 1  # not a degenerate constant stream
    # Past the context length the decoder re-prefills the last tokens with positions from 0.
    # Rotary scores and the window depend only on differences of positions, so with the same
    # weights and a context of 16 < 26 tokens the tokens must not change.
    short = random_model(MISTRAL.replace(context_length=16))
    assert generate(short, [prompt], n, temperature=0.0)[0] == got


def test_decoding_memory_is_bounded_by_the_window():
    assert decode_cache_length(MISTRAL, 16, 16, 10_000) == W
    assert decode_cache_length(MISTRAL.replace(sliding_window=None), 16, 16, 10_000) == 64
    assert decode_cache_length(MISTRAL.replace(sliding_window=4096), 16, 16, 10) == 26
    assert init_cache(MISTRAL, 3, length=10_000).k.shape == (2, 3, W, 2, 8)


def test_a_cache_of_the_wrong_kind_or_valid_of_the_wrong_shape_is_refused():
    model = _model(MISTRAL)
    x = _tokens(MISTRAL, 1, 3)
    plain = init_cache(MISTRAL.replace(sliding_window=None), 1)
    with pytest.raises(ValueError, match="rolling cache"):
        model(x, cache=KVCache(plain.k, plain.v), cache_index=0)
    with pytest.raises(ValueError, match="valid must have shape"):
        model(x, cache=init_cache(MISTRAL, 1), valid=jnp.ones((1, W), bool))
