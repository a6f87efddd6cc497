"""Shipped models: export to a folder (bfloat16 or float32), load back, errors before writing."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxllm
from jaxllm.checkpoint import CHECKPOINT_DIR, write_run_info
from jaxllm.config import ModelConfig, TrainConfig
from jaxllm.model import GPT
from jaxllm.pretrained import export_pretrained, list_pretrained, load_pretrained, models_dir
from jaxllm.tokenizer import CharTokenizer
from jaxllm.train import Trainer

CFG = ModelConfig(vocab_size=12, context_length=16, d_model=16, n_layer=2, n_head=2)
TOK = CharTokenizer.from_text("abcdefghij k")
IDS = jnp.array([[1, 2, 3, 4, 5, 6, 7, 8]])


@pytest.fixture(scope="module")
def model():
    return GPT(CFG, rngs=nnx.Rngs(params=jax.random.key(3)))


def params_of(m):
    return jax.tree.leaves(nnx.to_pure_dict(nnx.state(m, nnx.Param)))


def test_float32_export_round_trips_exactly(model, tmp_path):
    path = export_pretrained(model, tmp_path / "m", card="# A card\n", tokenizer=TOK,
                             dtype="float32", extra={"command": "made by a test"})
    loaded = load_pretrained(path)
    for a, b in zip(params_of(model), params_of(loaded.model), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_array_equal(np.asarray(model(IDS)), np.asarray(loaded.model(IDS)))
    assert loaded.tokenizer == TOK and loaded.config == CFG
    assert loaded.card == "# A card\n"
    assert '"command": "made by a test"' in (path / "config.json").read_text()


def test_bfloat16_export_stores_rounded_weights_in_half_the_bytes(model, tmp_path):
    p16 = export_pretrained(model, tmp_path / "b", card="card", tokenizer=TOK)
    p32 = export_pretrained(model, tmp_path / "f", card="card", tokenizer=TOK, dtype="float32")
    size16 = os.path.getsize(p16 / "model.safetensors")
    size32 = os.path.getsize(p32 / "model.safetensors")
    assert size16 < 0.6 * size32
    loaded = load_pretrained(p16)
    for a, b in zip(params_of(model), params_of(loaded.model), strict=True):
        assert b.dtype == jnp.float32
        np.testing.assert_array_equal(np.asarray(a.astype(jnp.bfloat16).astype(jnp.float32)),
                                      np.asarray(b))


@pytest.mark.integration  # compiles a train step and writes an Orbax checkpoint: ~10-20 s
def test_export_from_a_run_folder(tmp_path):
    run = tmp_path / "run"
    tcfg = TrainConfig(batch_size=2, steps=2, learning_rate=1e-2, warmup_steps=0, seed=0)
    write_run_info(run, CFG, tcfg, TOK)
    stream = np.random.default_rng(0).integers(0, CFG.vocab_size, 400)
    trainer = Trainer(CFG, tcfg, stream)
    trainer.fit(progress=False, checkpoint_dir=run / CHECKPOINT_DIR)
    path = export_pretrained(run, tmp_path / "exported", card="card", dtype="float32")
    loaded = load_pretrained(path)
    np.testing.assert_allclose(np.asarray(loaded.model(IDS)), np.asarray(trainer.model(IDS)),
                               rtol=1e-6, atol=1e-6)


def test_bad_arguments_are_refused_before_writing(model, tmp_path):
    dest = tmp_path / "m"
    with pytest.raises(ValueError, match="card must be"):
        export_pretrained(model, dest, card="  ", tokenizer=TOK)
    with pytest.raises(ValueError, match="dtype must be one of"):
        export_pretrained(model, dest, card="c", tokenizer=TOK, dtype="int8")
    with pytest.raises(ValueError, match="needs its tokenizer"):
        export_pretrained(model, dest, card="c")
    with pytest.raises(TypeError, match="source must be"):
        export_pretrained(42, dest, card="c")
    assert not dest.exists()
    export_pretrained(model, dest, card="first", tokenizer=TOK)
    with pytest.raises(ValueError, match="exists; pass overwrite=True"):
        export_pretrained(model, dest, card="second", tokenizer=TOK)
    export_pretrained(model, dest, card="second", tokenizer=TOK, overwrite=True)
    assert load_pretrained(dest).card == "second\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no temporary folders left
    umask = os.umask(0)
    os.umask(umask)
    assert dest.stat().st_mode & 0o777 == 0o777 & ~umask  # not mkdtemp's private 0700
    assert all(f.stat().st_mode & 0o777 == 0o666 & ~umask for f in dest.iterdir())


def test_unknown_name_lists_the_shipped_models(tmp_path):
    with pytest.raises(ValueError, match=r"one of \[.*\], or a folder"):
        load_pretrained("no-such-model")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="without config.json"):
        load_pretrained(tmp_path / "empty")


def test_every_shipped_model_is_listed_with_a_card():
    for name in list_pretrained():
        folder = models_dir() / name
        assert (folder / "MODEL_CARD.md").read_text().strip(), name
        assert os.path.getsize(folder / "model.safetensors") < 20e6, name
    assert jaxllm.load_pretrained is load_pretrained
