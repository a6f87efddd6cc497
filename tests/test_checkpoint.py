"""Orbax checkpoints: exact resume, run folders, errors."""

from __future__ import annotations

import os

import jax
import numpy as np
import pytest

from jaxllm.checkpoint import Checkpointer, write_run_info
from jaxllm.config import ModelConfig, TrainConfig
from jaxllm.train import Trainer, load_run

MCFG = ModelConfig(vocab_size=16, context_length=16, n_layer=2, n_head=2, d_model=16,
                   dropout=0.1)
TCFG = TrainConfig(steps=20, batch_size=4, learning_rate=5e-3, min_learning_rate=5e-4,
                   warmup_steps=4, eval_interval=5, eval_batches=2)


def _trainer(ids):
    cfg = MCFG.replace(vocab_size=int(ids.max()) + 1)
    return Trainer(cfg, TCFG, ids[:3000], ids[3000:])


def test_resumed_run_gives_exactly_the_same_losses(char_corpus, tmp_path):
    _, ids = char_corpus
    straight = _trainer(ids)
    straight.fit(progress=False)

    first = _trainer(ids)
    first.fit(steps=10, progress=False, checkpoint_dir=tmp_path)
    del first  # the "interruption": nothing survives but the checkpoint

    resumed = _trainer(ids)
    assert resumed.restore(tmp_path) == 10
    resumed.fit(progress=False)
    # dropout is on, so this also checks that the random stream resumes where it stopped
    assert resumed.history["loss"] == straight.history["loss"]
    assert resumed.history["val_loss"] == straight.history["val_loss"]
    for a, b in zip(jax.tree.leaves(resumed.state), jax.tree.leaves(straight.state),
                    strict=True):
        np.testing.assert_array_equal(a, b)


def test_checkpointer_keeps_the_newest_and_restores_a_given_step(tmp_path):
    state = {"w": np.arange(4.0), "step": np.asarray(0, np.int32)}
    ck = Checkpointer(tmp_path, max_to_keep=2)
    for s in (1, 2, 3):
        ck.save(s, {**state, "step": np.asarray(s, np.int32)}, {"note": f"step {s}"})
    assert ck.all_steps() == [2, 3]
    abstract = jax.eval_shape(lambda: state)
    restored, meta = ck.restore(abstract, step=2)
    assert int(restored["step"]) == 2 and meta == {"note": "step 2"}
    restored, meta = ck.restore(abstract)
    assert int(restored["step"]) == 3
    with pytest.raises(ValueError, match="step"):
        ck.restore(abstract, step=1)


def test_no_half_written_checkpoint_is_ever_visible(tmp_path):
    """Orbax writes into a temporary folder and renames it when complete: a temporary
    folder left by a crash is not a checkpoint."""
    ck = Checkpointer(tmp_path)
    ck.save(5, {"w": np.ones(3)}, {})
    os.makedirs(tmp_path / "6.orbax-checkpoint-tmp-1234")  # what a crash mid-save leaves
    assert Checkpointer(tmp_path).all_steps() == [5]
    assert Checkpointer(tmp_path).restore(jax.eval_shape(lambda: {"w": np.ones(3)}))[0]


def test_errors_name_the_problem(tmp_path, char_corpus):
    with pytest.raises(ValueError, match="exist"):
        Checkpointer(tmp_path / "missing", create=False)
    empty = Checkpointer(tmp_path / "empty")
    with pytest.raises(ValueError, match="no checkpoint"):
        empty.restore({"w": jax.ShapeDtypeStruct((3,), np.float32)})
    with pytest.raises(ValueError, match="max_to_keep"):
        Checkpointer(tmp_path / "x", max_to_keep=0)
    with pytest.raises(ValueError, match="run_dir"):
        load_run(tmp_path)
    _, ids = char_corpus
    other = Trainer(MCFG.replace(vocab_size=int(ids.max()) + 1, d_model=8), TCFG, ids)
    t = _trainer(ids)
    t.fit(steps=2, progress=False, checkpoint_dir=tmp_path / "run")
    with pytest.raises(ValueError, match="different model"):
        other.restore(tmp_path / "run")


def test_load_run_gives_the_trained_model(char_corpus, tmp_path):
    tok, ids = char_corpus
    t = _trainer(ids)
    write_run_info(tmp_path, t.model_cfg, t.train_cfg, tok)
    t.fit(steps=3, progress=False, checkpoint_dir=tmp_path / "checkpoints")
    model, tok2, info = load_run(tmp_path)
    assert tok2.encode("the cat") == tok.encode("the cat")
    assert info["model"] == t.model_cfg.to_dict()
    x = np.asarray([ids[:16]])
    np.testing.assert_array_equal(model(x), t.model(x))
