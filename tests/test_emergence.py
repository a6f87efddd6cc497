"""Multi-digit addition (jaxllm.tasks) and the emergence sweep's pieces (jaxllm.emergence)."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import random_model
from jaxllm import emergence, tasks
from jaxllm.config import ModelConfig


def test_addition_line_pads_and_reverses_the_sum():
    assert tasks.addition_line(123, 989, 4) == "0123+0989=21110\n"  # 1112 reversed, 5 digits
    assert tasks.addition_line(5, 7, 1, reverse=False) == "5+7=12\n"
    assert tasks.addition_line(99, 99, 2) == "99+99=891\n"
    with pytest.raises(ValueError, match="a must be"):
        tasks.addition_line(100, 1, 2)


def test_addition_task_has_distinct_disjoint_problems_and_is_seeded():
    t = tasks.make_addition_task(2, n_train=300, n_test=100, seed=3)
    pairs = [tuple(p) for p in np.concatenate([t.train, t.test])]
    assert len(set(pairs)) == 400 and t.train.shape == (300, 2)
    assert (t.train >= 0).all() and (t.train < 100).all()
    again = tasks.make_addition_task(2, n_train=300, n_test=100, seed=3)
    np.testing.assert_array_equal(t.test, again.test)
    assert not np.array_equal(t.test, tasks.make_addition_task(2, n_train=300, n_test=100,
                                                               seed=4).test)
    line = t.lines("test")[0]
    a, b = t.test[0]
    assert line == tasks.addition_line(int(a), int(b), 2)
    assert t.prompt_length == 6 and t.answer_length == 3
    with pytest.raises(ValueError, match="n_train \\+ n_test"):
        tasks.make_addition_task(1, n_train=40, n_test=20)


def test_examples_mask_exactly_the_answer_digits():
    t = tasks.make_addition_task(3, n_train=50, n_test=10)
    ex = emergence.addition_examples(t, "test")
    tok = emergence.addition_tokenizer()
    assert ex["inputs"].shape == ex["targets"].shape == ex["mask"].shape == (10, 12)
    for row, (a, b) in enumerate(t.test):
        answer = tok.decode(ex["targets"][row][ex["mask"][row]].tolist())
        assert answer == f"{a + b:04d}"[::-1]
        np.testing.assert_array_equal(ex["inputs"][row, 1:], ex["targets"][row, :-1])
    with pytest.raises(ValueError, match="split"):
        emergence.addition_examples(t, "dev")


def test_evaluation_metrics_are_consistent():
    t = tasks.make_addition_task(2, n_train=50, n_test=40)
    cfg = ModelConfig(vocab_size=len(tasks.ADDITION_ALPHABET), context_length=9, n_layer=1,
                      n_head=2, d_model=16)
    res = emergence.evaluate_addition(random_model(cfg, seed=2, std=0.5), t, batch_size=16)
    assert len(res.per_position) == t.answer_length
    assert res.digit_accuracy == pytest.approx(np.mean(res.per_position))
    assert 0 <= res.exact_match <= min(res.per_position) and res.answer_loss > 0


def test_sweep_csv_round_trips_with_its_command(tmp_path):
    row = dict(n_layer=1, n_head=2, d_model=16, params=3712, seed=0, digits=3, steps=600,
               batch_size=64, learning_rate=0.01, exact_match=0.01, digit_accuracy=0.47,
               answer_loss=1.43, seconds=10.0)
    path = tmp_path / "sweep.csv"
    emergence.write_sweep(path, [row], "python -m jaxllm.emergence --out sweep.csv")
    rows, command = emergence.read_sweep(path)
    assert rows == [row] and command == "python -m jaxllm.emergence --out sweep.csv"
    (tmp_path / "bad.csv").write_text("n_layer\n1\n")
    with pytest.raises(ValueError, match="write_sweep"):
        emergence.read_sweep(tmp_path / "bad.csv")


def test_shipped_sweep_was_made_by_the_module_and_shows_the_metric_effect():
    rows, command = emergence.read_sweep()
    assert command.startswith("python -m jaxllm.emergence ")
    assert len(rows) >= 5
    for r in rows:
        # Exact match needs every digit right: it can never beat the least accurate position,
        # nor (on average) the per-digit accuracy.
        assert 0 <= r["exact_match"] <= r["digit_accuracy"] <= 1
    assert max(r["exact_match"] for r in rows) > 0.5 > min(r["exact_match"] for r in rows)
