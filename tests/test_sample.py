"""Sampling: filters, the compiled decode loop, batches of prompts, errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import count_compiles
from jaxllm.sample import (
    WINDOW_KEEP,
    generate,
    generate_recompute,
    generate_text,
    sample_logits,
    softmax_with_temperature,
    top_k_filter,
    top_p_filter,
)

# Most tests use the same batch size (3 or 1) and length so the compiled loop is reused.
N = 12


def _greedy_reference(model, prompt, n, context):
    """Token-by-token greedy decoding with a full forward each step, cropping the context
    the way :func:`generate` does once its cache is full (keep the last 3/4, then grow)."""
    # Right-padding to the full context keeps one compiled shape; a causal model's logits at
    # position t do not depend on what follows t.
    apply = jax.jit(lambda x: model(x))
    keep = max(1, min(context - 1, int(context * WINDOW_KEEP)))
    toks = list(prompt)
    start = 0
    for _ in range(n):
        if len(toks) - start > context:
            start = len(toks) - keep
        window = toks[start:]
        logits = apply(jnp.asarray([window + [0] * (context - len(window))]))
        toks.append(int(jnp.argmax(logits[0, len(window) - 1])))
    return toks[len(prompt):]


def test_greedy_decoding_equals_argmax_of_the_full_forward(trained_tiny):
    model, tok, _ = trained_tiny
    prompts = [tok.encode("the cat"), tok.encode("a dog met on"), tok.encode("t")]
    outs = generate(model, prompts, N, temperature=0)
    for p, out in zip(prompts, outs, strict=True):
        assert out == _greedy_reference(model, p, N, model.cfg.context_length)
    assert len({tuple(o) for o in outs}) == 3  # a trained model: varied continuations


def test_greedy_beyond_the_context_follows_the_sliding_window(trained_tiny):
    model, tok, _ = trained_tiny
    prompt = tok.encode("the dog sat on the log. ")
    out = generate(model, [prompt], 40, temperature=0)[0]  # 24 + 40 > context 32
    assert out == _greedy_reference(model, prompt, 40, model.cfg.context_length)
    assert "the" in tok.decode(out)


def test_batch_of_different_lengths_equals_each_prompt_alone(trained_tiny):
    model, tok, _ = trained_tiny
    prompts = [tok.encode("the mat was"), tok.encode("a"), tok.encode("the dog sat on")]
    together = generate(model, prompts, N, temperature=0)
    alone = [generate(model, [p], N, temperature=0)[0] for p in prompts]
    assert together == alone


def test_sampling_is_reproducible_from_the_seed(trained_tiny):
    model, tok, _ = trained_tiny
    p = [tok.encode("the ")] * 3
    a = generate(model, p, N, temperature=1.5, seed=3)
    b = generate(model, p, N, temperature=1.5, seed=3)
    c = generate(model, p, N, temperature=1.5, seed=4)
    d = generate(model, p, N, temperature=1.5, key=jax.random.key(3))
    assert a == b == d
    assert a != c
    assert len({tuple(r) for r in a}) > 1  # rows of a batch draw independently


def test_stop_token_ends_each_row(trained_tiny):
    model, tok, _ = trained_tiny
    stop = tok.encode(".")[0]
    prompts = [tok.encode(t) for t in ("the cat sat on", "a dog met on a",
                                       "the log was wet")]
    outs = generate(model, prompts, N, temperature=0, stop_token=stop)
    full = generate(model, prompts, N, temperature=0)
    assert sum(stop in f for f in full) >= 2
    for cut, whole in zip(outs, full, strict=True):
        assert stop not in cut
        if stop in whole:
            assert whole[: len(cut)] == cut and whole[len(cut)] == stop
        else:
            assert cut == whole


def test_decode_loop_compiles_once_for_new_settings(trained_tiny):
    model, tok, _ = trained_tiny
    p = [tok.encode("the cat"), tok.encode("a dog sat"), tok.encode("t")]
    generate(model, p, N, temperature=0.7, seed=0)
    with count_compiles() as compiles:
        generate(model, p, N, temperature=1.3, top_k=5, top_p=0.8, seed=7)
        generate(model, [tok.encode("the log"), tok.encode("wet"), tok.encode("a mat")], N,
                 temperature=0, stop_token=3, seed=1)
    assert compiles == []


def test_generate_text_round_trip(trained_tiny):
    model, tok, _ = trained_tiny
    text = generate_text(model, tok, "the cat", N, temperature=0)
    assert len(text) == N
    assert set(text) <= set(tok.chars)


# Three prompts of one length (generate_recompute does not pad), long enough that N new tokens
# run past the context of 32: both tests below share one compiled loop.
SAME_LENGTH = ("the dog sat on the log. ", "a cat sat on the mat. th", "the log was wet. the cat")


def test_recompute_loop_greedy_equals_generate_and_the_reference(trained_tiny):
    """generate_recompute (no cache) writes the tokens generate (KV cache) writes, greedily,
    while the sequence fits in the context; past it, it slides its window by one token."""
    model, tok, _ = trained_tiny
    ctx = model.cfg.context_length
    prompts = [tok.encode(t) for t in SAME_LENGTH]
    fits = ctx - len(prompts[0])
    assert 0 < fits < N
    recomputed = generate_recompute(model, prompts, N, temperature=0)
    cached = generate(model, prompts, N, temperature=0)
    assert [r[:fits] for r in recomputed] == [c[:fits] for c in cached]
    assert len({tuple(r) for r in recomputed}) == 3
    # Beyond the context: each step reads the logits of the last context_length tokens.
    apply = jax.jit(lambda x: model(x))
    for p, r in zip(prompts, recomputed, strict=True):
        toks = p + r
        for t in range(ctx + 1, len(toks)):
            assert int(jnp.argmax(apply(jnp.asarray([toks[t - ctx:t]]))[0, -1])) == toks[t]


def test_recompute_loop_samples_from_the_key_and_checks_its_arguments(trained_tiny):
    model, tok, _ = trained_tiny
    p = [tok.encode(t) for t in SAME_LENGTH]
    a = generate_recompute(model, p, N, temperature=1.5, seed=3)
    assert a == generate_recompute(model, p, N, temperature=1.5, key=jax.random.key(3))
    assert a != generate_recompute(model, p, N, temperature=1.5, seed=4)
    assert a != generate_recompute(model, p, N, temperature=0)
    # Lengths are traced: another prompt length or count of new tokens that fits in the
    # context reuses the compiled loop.
    generate_recompute(model, [tok.encode("the")], 5, temperature=0)
    with count_compiles() as compiles:
        generate_recompute(model, [tok.encode("a cat")], 9, temperature=0.5)
    assert compiles == []
    with pytest.raises(ValueError, match="same length"):
        generate_recompute(model, [tok.encode("the"), tok.encode("a")], 5)
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate_recompute(model, p, 0)
    with pytest.raises(ValueError, match="temperature"):
        generate_recompute(model, p, 5, temperature=-1.0)


# -- filters and the sampler ------------------------------------------------------------

def test_softmax_with_temperature():
    logits = jnp.array([1.0, 3.0, 2.0, 3.0])
    np.testing.assert_allclose(softmax_with_temperature(logits, 1.0), jax.nn.softmax(logits))
    np.testing.assert_allclose(softmax_with_temperature(logits, 0.5),
                               jax.nn.softmax(logits * 2), rtol=1e-6)
    np.testing.assert_array_equal(softmax_with_temperature(logits, 0), [0, 1, 0, 0])
    high = softmax_with_temperature(logits, 100.0)
    assert float(high.max() - high.min()) < 0.01
    with pytest.raises(ValueError, match="temperature"):
        softmax_with_temperature(logits, -1)


def test_top_k_and_top_p_keep_the_right_sets():
    logits = jnp.log(jnp.array([0.05, 0.4, 0.1, 0.3, 0.15]))
    kept = np.isfinite(np.asarray(top_k_filter(logits, 2)))
    np.testing.assert_array_equal(kept, [False, True, False, True, False])
    # nucleus: 0.4 + 0.3 = 0.7 < 0.75 so 0.15 is needed too
    kept = np.isfinite(np.asarray(top_p_filter(logits, 0.75)))
    np.testing.assert_array_equal(kept, [False, True, False, True, True])
    kept = np.isfinite(np.asarray(top_p_filter(logits, 0.7)))
    np.testing.assert_array_equal(kept, [False, True, False, True, False])
    assert np.isfinite(np.asarray(top_p_filter(logits, 1e-6))).sum() == 1
    assert np.isfinite(np.asarray(top_p_filter(logits, 1.0))).all()
    assert np.isfinite(np.asarray(top_k_filter(logits, 0))).all()


@pytest.mark.parametrize(("top_k", "top_p", "temperature"),
                         [(3, 1.0, 1.0), (0, 0.8, 1.0), (4, 0.7, 0.7), (0, 1.0, 1.3)])
def test_sampler_stays_in_the_kept_set_with_the_right_frequencies(top_k, top_p, temperature):
    rng = np.random.default_rng(0)
    logits = jnp.asarray(rng.normal(size=8) * 1.5, jnp.float32)
    n = 40_000
    keys = jax.random.split(jax.random.key(1), n)
    draws = np.asarray(jax.vmap(lambda k: sample_logits(k, logits, temperature, top_k,
                                                        top_p))(keys))
    expected_logits = top_p_filter(top_k_filter(logits / temperature, top_k), top_p)
    kept = np.isfinite(np.asarray(expected_logits))
    assert kept.sum() >= 1
    assert set(np.unique(draws)) <= set(np.flatnonzero(kept))
    expected = np.asarray(jax.nn.softmax(expected_logits))
    freq = np.bincount(draws, minlength=8) / n
    # each frequency within 5 standard errors of its probability
    se = np.sqrt(expected * (1 - expected) / n) + 1e-9
    assert np.all(np.abs(freq - expected) <= 5 * se + 1e-4), (freq, expected)
    if top_k == 0 and top_p == 1.0:
        assert kept.all()


def test_temperature_zero_is_argmax_even_with_filters():
    logits = jnp.array([[0.1, 2.0, -1.0], [3.0, 0.0, 2.9]])
    out = sample_logits(jax.random.key(0), logits, 0.0, 1, 0.5)
    np.testing.assert_array_equal(out, [1, 0])


# -- errors ------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"temperature": -0.5}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"top_k": 0}, "top_k"),
        ({"top_k": 10_000}, "top_k"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"stop_token": -1}, "stop_token"),
        ({"seed": "x"}, "seed"),
        ({"logits_hook": 3}, "logits_hook"),
    ],
)
def test_bad_settings_are_named(trained_tiny, kwargs, name):
    model, tok, _ = trained_tiny
    args = {"max_new_tokens": 5, **kwargs}
    n = args.pop("max_new_tokens")
    with pytest.raises(ValueError, match=name):
        generate(model, [tok.encode("the")], n, **args)


def test_bad_prompts_are_named(trained_tiny):
    model, tok, _ = trained_tiny
    ctx = model.cfg.context_length
    with pytest.raises(ValueError, match="context_length"):
        generate(model, [[1] * (ctx + 1)], 5)
    with pytest.raises(ValueError, match=r"prompts\[1\]"):
        generate(model, [[1, 2], []], 5)
    with pytest.raises(ValueError, match=r"prompts\[0\]"):
        generate(model, [[1, 10_000]], 5)
    with pytest.raises(ValueError, match="prompts"):
        generate(model, "the cat", 5)
    with pytest.raises(ValueError, match="prompt"):
        generate_text(model, tok, "", 5)


def test_logits_hook_can_forbid_a_token(trained_tiny):
    model, tok, _ = trained_tiny
    banned = tok.encode(" ")[0]

    def ban(logits, tokens, length):
        return logits.at[:, banned].set(-jnp.inf)

    out = generate(model, [tok.encode("the cat sat")], N, temperature=0, logits_hook=ban)[0]
    free = generate(model, [tok.encode("the cat sat")], N, temperature=0)[0]
    assert banned in free and banned not in out
