"""Training: the step compiles once, loss falls, the schedule, evaluation."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from conftest import count_compiles
from jaxllm.config import ModelConfig, TrainConfig
from jaxllm.train import Trainer, learning_rate_schedule

MCFG = ModelConfig(vocab_size=16, context_length=16, n_layer=1, n_head=2, d_model=16)


def _trainer(ids, steps=30, **kw):
    tcfg = TrainConfig(steps=steps, batch_size=8, learning_rate=1e-2, min_learning_rate=1e-3,
                       warmup_steps=3, eval_interval=10, eval_batches=2, **kw)
    cfg = MCFG.replace(vocab_size=int(ids.max()) + 1)
    return Trainer(cfg, tcfg, ids[: len(ids) * 9 // 10], ids[len(ids) * 9 // 10:])


def test_loss_falls_on_a_tiny_corpus(char_corpus):
    _, ids = char_corpus
    trainer = _trainer(ids, steps=80)
    before = trainer.evaluate()
    history = trainer.fit(progress=False)
    after = trainer.evaluate()
    # a uniform guess over the vocabulary costs ln(V) nats; training gets far below it
    assert before["train"] > 0.9 * np.log(trainer.model_cfg.vocab_size)
    assert after["train"] < 0.6 * before["train"]
    assert after["val"] < 0.6 * before["val"]
    assert np.mean(history["loss"][-10:]) < np.mean(history["loss"][:10])
    assert history["eval_step"] == [10, 20, 30, 40, 50, 60, 70, 80]


def test_train_step_compiles_once(char_corpus):
    _, ids = char_corpus
    trainer = _trainer(ids)
    batches = [trainer.train_batches[s] for s in range(6)]  # host arrays, no JAX work
    with count_compiles() as compiles:
        trainer.train_step(*batches[0])
        first = len(compiles)
        for x, y in batches[1:]:
            trainer.train_step(x, y)
        jax.block_until_ready(trainer.state)
    assert first >= 1
    assert len(compiles) == first, "the train step compiled again after its first call"
    assert trainer._train_step._cache_size() == 1
    assert trainer.step == 6


def test_state_is_donated(char_corpus):
    _, ids = char_corpus
    trainer = _trainer(ids)
    old = trainer.state
    trainer.train_step(*trainer.train_batches[0])
    leaf = jax.tree.leaves(old.params)[0]
    assert leaf.is_deleted(), "the previous parameters should have been donated to the step"


def test_same_seed_gives_identical_losses(char_corpus):
    _, ids = char_corpus
    a = _trainer(ids, steps=12).fit(progress=False)["loss"]
    b = _trainer(ids, steps=12).fit(progress=False)["loss"]
    c = _trainer(ids, steps=12, seed=1).fit(progress=False)["loss"]
    assert a == b
    assert a != c


def test_schedule_warms_up_then_decays_to_min():
    cfg = TrainConfig(steps=100, learning_rate=1e-3, min_learning_rate=1e-4, warmup_steps=10)
    lr = learning_rate_schedule(cfg)
    assert float(lr(0)) == 0.0
    assert float(lr(10)) == pytest.approx(1e-3)
    assert float(lr(5)) == pytest.approx(5e-4)
    assert float(lr(100)) == pytest.approx(1e-4)
    values = [float(lr(s)) for s in range(10, 101)]
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))


def test_history_records_each_step_and_lr(char_corpus):
    _, ids = char_corpus
    trainer = _trainer(ids, steps=12)
    h = trainer.fit(progress=False)
    assert h["step"] == list(range(12))
    assert len(h["loss"]) == len(h["grad_norm"]) == len(h["lr"]) == 12
    assert h["lr"][0] == 0.0 and h["lr"][3] == pytest.approx(1e-2)


def test_bad_inputs_are_named(char_corpus):
    _, ids = char_corpus
    tcfg = TrainConfig(steps=10, warmup_steps=1)
    with pytest.raises(ValueError, match="train_tokens"):
        Trainer(MCFG.replace(vocab_size=4), tcfg, ids)
    with pytest.raises(TypeError, match="model_cfg"):
        Trainer({"vocab_size": 4}, tcfg, ids)
    trainer = _trainer(ids, steps=10)
    with pytest.raises(ValueError, match="steps"):
        trainer.fit(steps=-1, progress=False)
    with pytest.raises(ValueError, match="checkpoint_every"):
        trainer.fit(checkpoint_every=0, progress=False)
