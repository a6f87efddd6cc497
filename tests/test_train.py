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
    assert before["train_loss"] > 0.9 * np.log(trainer.model_cfg.vocab_size)
    assert after["train_loss"] < 0.6 * before["train_loss"]
    assert after["val_loss"] < 0.6 * before["val_loss"]
    assert np.mean(history["loss"][-10:]) < np.mean(history["loss"][:10])
    assert history["eval_step"] == [10, 20, 30, 40, 50, 60, 70, 80]


def test_train_step_compiles_once(char_corpus):
    _, ids = char_corpus
    trainer = _trainer(ids)
    batches = [trainer.train_batches[s] for s in range(6)]  # host arrays, no JAX work
    with count_compiles() as compiles:
        trainer.train_step(batches[0])
        first = len(compiles)
        for batch in batches[1:]:
            trainer.train_step(batch)
        jax.block_until_ready(trainer.state)
    assert first >= 1
    assert len(compiles) == first, "the train step compiled again after its first call"
    assert trainer._train_step._cache_size() == 1
    assert trainer.step == 6


def test_state_is_donated(char_corpus):
    _, ids = char_corpus
    trainer = _trainer(ids)
    old = trainer.state
    trainer.train_step(trainer.train_batches[0])
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
    with pytest.raises(ValueError, match="train must hold ids"):
        Trainer(MCFG.replace(vocab_size=4), tcfg, ids)
    with pytest.raises(TypeError, match="model_cfg"):
        Trainer({"vocab_size": 4}, tcfg, ids)
    trainer = _trainer(ids, steps=10)
    with pytest.raises(ValueError, match="steps"):
        trainer.fit(steps=-1, progress=False)
    with pytest.raises(ValueError, match="checkpoint_every"):
        trainer.fit(checkpoint_every=0, progress=False)


# -- any loss, any batch source ---------------------------------------------------------------

def _accuracy_loss(model, batch, rng):
    """A custom objective: masked cross-entropy plus a metric the trainer must record."""
    from jaxllm.losses import cross_entropy

    logits = model(batch["inputs"], dropout_key=rng)
    hits = (logits.argmax(-1) == batch["targets"]) & batch["mask"]
    return (cross_entropy(logits, batch["targets"], batch["mask"]),
            {"accuracy": hits.sum() / batch["mask"].sum()})


def _examples(ids, T=16, n=96):
    from jaxllm.data import ExampleBatches

    rows = np.stack([ids[i * 37: i * 37 + T + 1] for i in range(n)])
    mask = np.ones((n, T), bool)
    mask[:, :4] = False
    table = {"inputs": rows[:, :-1], "targets": rows[:, 1:], "mask": mask}
    return ExampleBatches(table, 8, seed=7), ExampleBatches(table, 8, shuffle=False)


def test_custom_loss_and_source_resume_exactly(char_corpus, tmp_path):
    """Interrupted at step 10 and resumed in a new trainer, a custom objective on a custom
    batch source (with dropout) reproduces the uninterrupted run's losses bit for bit."""
    _, ids = char_corpus
    cfg = MCFG.replace(vocab_size=int(ids.max()) + 1, dropout=0.1)
    tcfg = TrainConfig(steps=20, batch_size=8, learning_rate=1e-2, min_learning_rate=1e-3,
                       warmup_steps=3, eval_interval=5, eval_batches=2)
    train, val = _examples(ids)

    def trainer():
        return Trainer(cfg, tcfg, train, val, loss_fn=_accuracy_loss)

    whole = trainer()
    whole.fit(progress=False)
    assert "train_loss" not in whole.eval_sets and sorted(whole.eval_sets) == ["val"]
    assert len(whole.history["accuracy"]) == 20
    assert whole.history["eval_step"] == [5, 10, 15, 20]
    assert len(whole.history["val_accuracy"]) == 4

    first = trainer()
    first.fit(10, progress=False, checkpoint_dir=tmp_path)
    resumed = trainer()
    assert resumed.restore(tmp_path) == 10
    resumed.fit(progress=False)
    for key in ("loss", "accuracy", "grad_norm", "val_loss", "val_accuracy"):
        assert resumed.history[key] == whole.history[key], key
    assert np.mean(whole.history["accuracy"][-5:]) > np.mean(whole.history["accuracy"][:5])


def test_early_stopping_and_callbacks(char_corpus, tmp_path):
    from jaxllm.train import EarlyStopping

    _, ids = char_corpus
    seen = []
    trainer = _trainer(ids, steps=80)
    trainer.fit(progress=False, callback=lambda step, ev, t: seen.append((step, ev)))
    assert [s for s, _ in seen] == list(range(10, 81, 10))
    assert sorted(seen[0][1]) == ["train_loss", "val_loss"]
    # a callback returning True stops at that evaluation (and the checkpoint is written)
    stopper = _trainer(ids, steps=80)
    stopper.fit(progress=False, checkpoint_dir=tmp_path,
                callback=lambda step, ev, t: step >= 30)
    assert stopper.step == 30 and len(stopper.history["loss"]) == 30
    from jaxllm.checkpoint import Checkpointer

    assert Checkpointer(tmp_path, create=False).all_steps() == [30]
    # EarlyStopping: no improvement for `patience` evaluations
    es = EarlyStopping("val_loss", patience=2)
    fake = [3.0, 2.0, 2.5, 1.9, 1.95, 2.1]
    stops = [es(10 * (i + 1), {"val_loss": v}, None) for i, v in enumerate(fake)]
    assert stops == [False, False, False, False, False, True]
    assert (es.best, es.best_step) == (1.9, 40)
    with pytest.raises(ValueError, match="monitor"):
        EarlyStopping("val_acc")(1, {"val_loss": 1.0}, None)
    with pytest.raises(ValueError, match="patience"):
        EarlyStopping(patience=0)


def test_score_text_matches_a_plain_loop(char_corpus):
    import optax
    from flax import nnx

    from jaxllm.model import GPT
    from jaxllm.train import score_text

    tok, _ = char_corpus
    text = "the cat sat on the mat. " * 9
    cfg = MCFG.replace(vocab_size=tok.vocab_size, context_length=8)
    model = GPT(cfg, rngs=nnx.Rngs(0))
    score = score_text(model, tok, text, batch_size=3)
    ids = np.asarray(tok.encode(text))
    total = 0.0
    for start in range(0, len(ids) - 1, 8):
        w = ids[start:start + 9]
        total += float(optax.softmax_cross_entropy_with_integer_labels(
            model(w[None, :-1])[0], w[1:]).sum())
    assert score.tokens == len(ids) - 1
    assert score.nats == pytest.approx(total, rel=1e-5)
    assert score.perplexity == pytest.approx(np.exp(total / (len(ids) - 1)), rel=1e-5)
    assert score.bits_per_character == pytest.approx(total / np.log(2) / len(text), rel=1e-5)
    with pytest.raises(ValueError, match="at least 2 tokens"):
        score_text(model, tok, "t")


def test_token_arrays_of_any_kind_are_tokens_not_batch_sources(char_corpus):
    import jax.numpy as jnp

    _, ids = char_corpus
    cfg = MCFG.replace(vocab_size=int(ids.max()) + 1)
    tcfg = TrainConfig(steps=2, batch_size=4, warmup_steps=1)
    for tokens in (ids[:500], jnp.asarray(ids[:500]), list(ids[:500])):
        trainer = Trainer(cfg, tcfg, tokens)
        assert sorted(trainer.eval_sets) == ["train"]  # windows of the stream, evaluated too
        assert trainer.train_batches[0]["inputs"].shape == (4, cfg.context_length)
