"""Count-based n-gram models, code lengths and compressors, arithmetic coding, and the
structure probes of chapter 11.1."""

from __future__ import annotations

import math

import jax
import numpy as np
import pytest

from conftest import random_model
from jaxllm import compression, probes
from jaxllm.config import ModelConfig
from jaxllm.ngram import NGramModel, uniform_logprobs
from jaxllm.tokenizer import CharTokenizer

TOKENS = np.array([0, 1, 2, 0, 1, 2, 0, 1, 1, 0])  # V = 3


# -- n-gram models ------------------------------------------------------------------------------

def test_unigram_is_smoothed_frequencies():
    m = NGramModel.fit(TOKENS, vocab_size=4, order=1, k=1.0)
    counts = np.bincount(TOKENS, minlength=4)
    np.testing.assert_allclose(m.probs([]), (counts + 1) / (len(TOKENS) + 4))
    # The context is ignored by a unigram model.
    np.testing.assert_allclose(m.probs([2, 1]), m.probs([]))


def test_bigram_counts_pairs_with_add_k():
    m = NGramModel.fit(TOKENS, vocab_size=3, order=2, k=0.5)
    # After 1: 2 twice, 1 once, 0 once.
    np.testing.assert_allclose(m.probs([1]), (np.array([1, 1, 2]) + 0.5) / (4 + 1.5))
    assert m.counts[1].sum() == len(TOKENS) - 1
    np.testing.assert_allclose(np.exp(m.logprobs_table()).sum(1), 1.0)


def test_k_zero_gives_zero_to_unseen_pairs_and_uniform_to_unseen_contexts():
    m = NGramModel.fit(np.array([0, 1, 0, 1]), vocab_size=3, order=2, k=0.0)
    np.testing.assert_allclose(m.probs([0]), [0, 1, 0])
    np.testing.assert_allclose(m.probs([2]), [1 / 3] * 3)


def test_token_logprobs_match_a_direct_loop_with_short_contexts_at_the_start():
    rng = np.random.default_rng(0)
    train, text = rng.integers(0, 5, 400), rng.integers(0, 5, 30)
    for order in (1, 2, 3):
        m = NGramModel.fit(train, vocab_size=5, order=order, k=0.3)
        expect = [math.log(m.probs(text[max(0, t - order + 1):t])[text[t]])
                  for t in range(1, len(text))]
        np.testing.assert_allclose(m.token_logprobs(text), expect, rtol=1e-10)
        lp = m.next_logprobs(text)
        assert lp.shape == (len(text) - 1, 5)
        np.testing.assert_allclose(np.exp(lp).sum(1), 1.0)


def test_higher_order_fits_its_training_text_better_and_score_agrees():
    text = "the cat sat on the mat and the rat sat on the hat " * 20
    tok = CharTokenizer.from_text(text)
    ids = np.array(tok.encode(text))
    losses = [NGramModel.fit(ids, tok.vocab_size, n, k=0.01).score(ids).loss for n in (1, 2, 3)]
    assert losses[0] > losses[1] > losses[2]
    s = NGramModel.fit(ids, tok.vocab_size, 2).score(ids)
    assert s.tokens == len(ids) - 1 and s.characters == len(ids)
    assert s.perplexity == pytest.approx(math.exp(s.loss))
    assert s.bits_per_character == pytest.approx(s.nats / math.log(2) / len(ids))


def test_uniform_baseline_is_log_vocab():
    lp = uniform_logprobs(7, 65)
    assert lp.shape == (7,) and lp[0] == pytest.approx(-math.log(65))


def test_sampling_follows_the_counts_and_is_a_function_of_the_key():
    m = NGramModel.fit(np.array([0, 1] * 50), vocab_size=2, order=2, k=0.0)
    out = m.sample(jax.random.key(0), [0], 9)
    assert out == [1, 0] * 4 + [1]  # deterministic counts: 0 -> 1 -> 0 ...
    m = NGramModel.fit(np.random.default_rng(0).integers(0, 4, 500), vocab_size=4, order=2)
    a = m.sample(jax.random.key(1), [0], 20)
    assert a == m.sample(jax.random.key(1), [0], 20)
    assert a != m.sample(jax.random.key(2), [0], 20)


@pytest.mark.parametrize("kwargs, match", [
    (dict(tokens=[0, 1], vocab_size=2, order=0), "order"),
    (dict(tokens=[0, 5], vocab_size=2, order=1), "tokens must hold ids"),
    (dict(tokens=[[0, 1]], vocab_size=2, order=1), "tokens must be a 1-D"),
    (dict(tokens=[0, 1], vocab_size=2, order=1, k=-1), "k must be"),
    (dict(tokens=[0, 1], vocab_size=1000, order=3), "vocab_size \\*\\* order"),
    (dict(tokens=[0], vocab_size=2, order=2), "at least order=2"),
])
def test_fit_rejects_bad_arguments(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        NGramModel.fit(**kwargs)


# -- compression --------------------------------------------------------------------------------

def test_compressed_bits_of_a_repetitive_text_are_far_below_raw():
    sizes = compression.compressed_bits("to be or not to be " * 200)
    assert sizes["raw"] == 8 * 19 * 200
    for name in ("gzip", "bz2", "lzma"):
        assert 0 < sizes[name] < sizes["raw"] / 10
    with pytest.raises(TypeError, match="data must be bytes or str"):
        compression.compressed_bits(3)


def test_code_length_adds_the_first_token():
    lp = np.log([0.5, 0.25])
    assert compression.code_length_bits(lp, 8) == pytest.approx(1 + 2 + 3)
    with pytest.raises(ValueError, match="log-probabilities"):
        compression.code_length_bits([0.5], 8)


def test_arithmetic_coder_round_trips_within_two_bits_of_the_log_loss():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.full(20, 0.3), size=3000)
    symbols = [int(rng.choice(20, p=p)) for p in probs]
    freqs = compression.quantize_probs(probs)
    coder = compression.ArithmeticCoder()
    bits = coder.encode(symbols, freqs)
    ideal = -sum(math.log2(f[s] / f.sum()) for f, s in zip(freqs, symbols, strict=True))
    assert ideal <= len(bits) <= ideal + 2
    assert coder.decode(bits, freqs) == symbols
    # A decoder driven by a function of the symbols decoded so far (as a model would be).
    cond = lambda i, done: [5, 1] if (done and done[-1] == 0) else [1, 5]  # noqa: E731
    msg = [0, 0, 1, 1, 0, 1, 0, 0]
    assert coder.decode(coder.encode(msg, cond), cond, n_symbols=len(msg)) == msg


def test_arithmetic_coder_rejects_bad_tables():
    coder = compression.ArithmeticCoder()
    with pytest.raises(ValueError, match="positive integers"):
        coder.encode([0], [[0, 1]])
    with pytest.raises(ValueError, match="at most 65536"):
        coder.encode([0], [[1 << 16, 1]])
    with pytest.raises(ValueError, match="symbols\\[0\\] must be in"):
        coder.encode([2], [[1, 1]])
    with pytest.raises(ValueError, match="n_symbols must be given"):
        coder.decode([0], lambda i, d: [1, 1])


def test_a_model_driven_coder_round_trips_at_the_models_code_length():
    text = "to be or not to be, that is the question. " * 3
    tok = CharTokenizer.from_text(text)
    model = random_model(ModelConfig(vocab_size=tok.vocab_size, context_length=8, n_layer=1,
                                     n_head=2, d_model=16), seed=1, std=0.3)
    ids = tok.encode(text)[:30]
    tables = compression.model_tables(model, ids[0])
    coder = compression.ArithmeticCoder()
    bits = coder.encode(ids[1:], tables)
    assert coder.decode(bits, tables, n_symbols=len(ids) - 1) == ids[1:]
    # As long as the model's loss on the message (windows of 8 as in score_text), within the
    # rounding of the tables and the final two bits.
    lp = probes.model_next_logprobs(model, np.array(ids), batch_size=2)
    ideal = -lp[np.arange(len(ids) - 1), ids[1:]].sum() / math.log(2)
    assert ideal - 1 <= len(bits) <= ideal + 3


def test_quantize_keeps_every_symbol_codable():
    f = compression.quantize_probs([[1.0, 0.0, 0.0]])
    assert (f >= 1).all() and f[0, 0] > 60000
    with pytest.raises(ValueError, match="non-negative"):
        compression.quantize_probs([[-0.1, 1.1]])


# -- probes -------------------------------------------------------------------------------------

PLAY = ("VIOLA.\nWhat country, friends, is this?\n\n[Exit.]\n\nCAPTAIN.\nThis is Illyria, "
        "lady.\n\nSIR TOBY.\nWhat a plague means my niece.\n[Aside.] I am sure.\n")


def test_bracket_positions_split_by_an_open_bracket():
    inside, outside = probes.bracket_positions(PLAY)
    assert [PLAY[t - 1] for t in [*inside, *outside]] == ["."] * (len(inside) + len(outside))
    assert [PLAY[t] for t in inside] == ["]", "]"]
    # After the names "VIOLA.", "CAPTAIN.", "SIR TOBY." and after "lady.", "niece.", "sure."
    assert len(outside) == 6


def test_speaker_spans_and_speech_starts():
    spans = probes.speaker_name_spans("\n\n" + PLAY)
    names = [("\n\n" + PLAY)[s:e] for s, e in spans]
    assert names == ["VIOLA.\n", "CAPTAIN.\n", "SIR TOBY.\n"]
    starts = probes.line_capital_positions("\n\n" + PLAY)
    assert [("\n\n" + PLAY)[t:t + 4] for t in starts] == ["What", "This", "What"]


def test_probes_of_a_bigram_cannot_see_the_open_bracket():
    text = "\n\n" + PLAY * 3
    tok = CharTokenizer.from_text(text)
    ids = np.array(tok.encode(text))
    m = NGramModel.fit(ids, tok.vocab_size, 2)
    lp = m.next_logprobs(ids)
    inside, outside = probes.bracket_probe(text, lp, tok)
    assert inside.n == 6 and inside.value == pytest.approx(outside.value)
    # A trigram sees "t." / "y." / "e." before the bracket and tells them apart.
    lp3 = NGramModel.fit(ids, tok.vocab_size, 3, k=0.01).next_logprobs(ids)
    inside3, outside3 = probes.bracket_probe(text, lp3, tok)
    assert inside3.value > 0.5 > outside3.value
    per_char, per_name = probes.speaker_probe(text, lp, tok)
    assert per_char.n == sum(e - s for s, e in probes.speaker_name_spans(text))
    assert per_name.value == pytest.approx(per_char.value * per_char.n / per_name.n)
    right, any_cap = probes.line_capital_probe(text, lp, tok)
    assert 0 < right.value <= any_cap.value <= 1
    assert len(probes.structure_probes(text, lp, tok)) == 6
    with pytest.raises(ValueError, match="next_lp must have shape"):
        probes.bracket_probe(text, lp[1:], tok)


def test_model_next_logprobs_agree_with_score_text():
    from jaxllm.train import score_text

    text = PLAY * 2
    tok = CharTokenizer.from_text(text)
    model = random_model(ModelConfig(vocab_size=tok.vocab_size, context_length=16, n_layer=1,
                                     n_head=2, d_model=16), seed=0, std=0.3)
    ids = np.array(tok.encode(text))
    lp = probes.model_next_logprobs(model, ids, batch_size=4)
    assert lp.shape == (len(ids) - 1, tok.vocab_size)
    np.testing.assert_allclose(np.exp(lp).sum(1), 1.0, rtol=1e-5)
    nats = -lp[np.arange(len(lp)), ids[1:]].sum()
    assert nats == pytest.approx(score_text(model, tok, text, batch_size=4).nats, rel=1e-5)
