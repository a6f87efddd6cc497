"""Corpora, splits and the deterministic batch sampler."""

from __future__ import annotations

import numpy as np
import pytest

from jaxllm.data import (
    Batches,
    BatchSource,
    ExampleBatches,
    SentenceBatches,
    load_corpus,
    load_text,
    train_val_split,
)


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
    batch = b[3]
    x, y = batch["inputs"], batch["targets"]
    assert sorted(batch) == ["inputs", "targets"]
    assert x.shape == y.shape == (4, 8)
    np.testing.assert_array_equal(y, x + 1)  # consecutive tokens: target = next id
    np.testing.assert_array_equal(np.diff(x, axis=1), 1)


def test_batches_are_a_function_of_seed_and_step():
    tokens = np.arange(10_000, dtype=np.int32)
    a = Batches(tokens, 4, 8, seed=0)
    b = Batches(tokens, 4, 8, seed=0)
    c = Batches(tokens, 4, 8, seed=1)
    np.testing.assert_array_equal(a[7]["inputs"], b[7]["inputs"])
    assert not np.array_equal(a[7]["inputs"], c[7]["inputs"])
    assert not np.array_equal(a[7]["inputs"], a[8]["inputs"])
    it = a.iterate(start=5)
    np.testing.assert_array_equal(next(it)["inputs"], a[5]["inputs"])
    np.testing.assert_array_equal(next(it)["inputs"], a[6]["inputs"])


def test_batches_reject_bad_arguments():
    with pytest.raises(ValueError, match="batch_size"):
        Batches(np.arange(100), 0, 8)
    with pytest.raises(ValueError, match="tokens"):
        Batches(np.arange(5), 2, 8)
    with pytest.raises(ValueError, match="step"):
        Batches(np.arange(100), 2, 8)[-1]


# -- sentence-aligned batches -------------------------------------------------------------------

def test_sentence_batches_start_every_row_at_a_sentence():
    sep = 9
    # Sentences of different lengths separated by 9; ids encode (sentence, position).
    stream, first_ids = [], set()
    for i in range(40):
        sentence = [10 * (i % 7) + 20 + j for j in range(3 + i % 4)]
        first_ids.add(sentence[0])
        stream += sentence + [sep]
    batches = SentenceBatches(np.array(stream), separator=sep, batch_size=16,
                                    context_length=5, seed=2)
    x, y = batches[7]["inputs"], batches[7]["targets"]
    assert x.shape == y.shape == (16, 5) and x.dtype == np.int32
    assert set(x[:, 0]) <= first_ids
    np.testing.assert_array_equal(x[:, 1:], y[:, :-1])
    np.testing.assert_array_equal(x, batches[7]["inputs"])
    assert not np.array_equal(x, batches[8]["inputs"])


def test_sentence_batches_reject_bad_arguments():
    with pytest.raises(ValueError, match="context_length"):
        SentenceBatches(np.arange(5), separator=1, batch_size=2, context_length=0)
    with pytest.raises(ValueError, match="no window"):
        SentenceBatches(np.array([1, 2, 0, 3]), separator=0, batch_size=2,
                              context_length=8)
    with pytest.raises(ValueError, match="step"):
        SentenceBatches(np.arange(20), separator=3, batch_size=2, context_length=4)[-1]


# -- tables of examples -----------------------------------------------------------------------

def test_example_batches_draw_whole_rows_deterministically():
    n = 50
    examples = {"ids": np.arange(n * 6).reshape(n, 6), "mask": np.arange(n * 6).reshape(n, 6) % 2,
                "reward": np.arange(n, dtype=np.float32)}
    src = ExampleBatches(examples, batch_size=8, seed=3)
    assert isinstance(src, BatchSource)
    batch = src[4]
    assert sorted(batch) == ["ids", "mask", "reward"]
    # every row of the batch is one example, all of its arrays from the same row
    rows = batch["ids"][:, 0] // 6
    np.testing.assert_array_equal(batch["reward"], rows.astype(np.float32))
    np.testing.assert_array_equal(batch["mask"], examples["mask"][rows])
    np.testing.assert_array_equal(src[4]["ids"], batch["ids"])
    assert not np.array_equal(src[5]["ids"], batch["ids"])
    assert not np.array_equal(ExampleBatches(examples, 8, seed=4)[4]["ids"], batch["ids"])
    # in order, for evaluation: step s holds rows s*B ... (s+1)*B - 1, wrapping around
    ordered = ExampleBatches(examples, batch_size=8, shuffle=False)
    np.testing.assert_array_equal(ordered[6]["reward"], [48, 49, 0, 1, 2, 3, 4, 5])


def test_example_batches_reject_bad_tables():
    with pytest.raises(ValueError, match="same first dimension"):
        ExampleBatches({"a": np.zeros((4, 2)), "b": np.zeros(5)}, 2)
    with pytest.raises(ValueError, match="non-empty mapping"):
        ExampleBatches({}, 2)
    with pytest.raises(ValueError, match="batch_size"):
        ExampleBatches({"a": np.zeros(4)}, 0)
    with pytest.raises(ValueError, match="step"):
        ExampleBatches({"a": np.zeros(4)}, 2)[-1]
