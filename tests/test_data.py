"""Corpora, splits and the deterministic batch sampler."""

from __future__ import annotations

import numpy as np
import pytest

from jaxllm.data import Batches, load_corpus, load_text, train_val_split


def test_bundled_corpus_is_shakespeare():
    text = load_corpus("shakespeare")
    assert len(text) > 1_000_000
    assert "HAMLET" in text.upper() and "Romeo" in text
    with pytest.raises(ValueError, match="name"):
        load_corpus("wikipedia")


def test_load_text(tmp_path):
    p = tmp_path / "t.txt"
    p.write_text("héllo\n", encoding="utf-8")
    assert load_text(p) == "héllo\n"
    with pytest.raises(ValueError, match="path"):
        load_text(tmp_path / "missing.txt")


def test_split_keeps_order_and_sizes():
    train, val = train_val_split(list(range(100)), 0.1)
    assert train.tolist() == list(range(90)) and val.tolist() == list(range(90, 100))
    with pytest.raises(ValueError, match="val_fraction"):
        train_val_split([1, 2, 3], 1.5)


def test_batches_are_windows_with_shifted_targets():
    tokens = np.arange(1000, dtype=np.int32)
    b = Batches(tokens, batch_size=4, context_length=8, seed=0)
    x, y = b[3]
    assert x.shape == y.shape == (4, 8)
    np.testing.assert_array_equal(y, x + 1)  # consecutive tokens: target = next id
    np.testing.assert_array_equal(np.diff(x, axis=1), 1)


def test_batches_are_a_function_of_seed_and_step():
    tokens = np.arange(10_000, dtype=np.int32)
    a = Batches(tokens, 4, 8, seed=0)
    b = Batches(tokens, 4, 8, seed=0)
    c = Batches(tokens, 4, 8, seed=1)
    np.testing.assert_array_equal(a[7][0], b[7][0])
    assert not np.array_equal(a[7][0], c[7][0])
    assert not np.array_equal(a[7][0], a[8][0])
    it = a.iterate(start=5)
    np.testing.assert_array_equal(next(it)[0], a[5][0])
    np.testing.assert_array_equal(next(it)[0], a[6][0])


def test_batches_reject_bad_arguments():
    with pytest.raises(ValueError, match="batch_size"):
        Batches(np.arange(100), 0, 8)
    with pytest.raises(ValueError, match="tokens"):
        Batches(np.arange(5), 2, 8)
    with pytest.raises(ValueError, match="step"):
        Batches(np.arange(100), 2, 8)[-1]
