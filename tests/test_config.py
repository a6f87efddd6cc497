"""Configs, presets and parameter counts."""

from __future__ import annotations

import pytest

from jaxllm.config import PRESETS, ModelConfig, TrainConfig, get_preset
from jaxllm.model import count_params

PUBLISHED = {
    "gpt2": 124_439_808,
    "gpt2-xl": 1_557_611_200,
    "llama2-7b": 6_738_415_616,
    "llama2-70b": 68_976_648_192,
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_parameter_counts_exact(name):
    assert count_params(name) == PUBLISHED[name]
    assert get_preset(name).published_params == PUBLISHED[name]


def test_gpt3_within_half_a_percent_of_175b():
    n = count_params("gpt3")
    assert abs(n - 175e9) / 175e9 < 0.005


def test_count_params_allocates_nothing():
    # 70B float32 parameters would need 280 GB; eval_shape must not allocate any of it.
    import resource

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    count_params("llama2-70b")
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert after - before < 200_000  # KiB: far below one layer's worth of weights


def test_count_params_matches_a_hand_count():
    cfg = ModelConfig(vocab_size=10, context_length=8, n_layer=1, n_head=2, d_model=4)
    d, v, t, m = 4, 10, 8, 16
    per_layer = 2 * (2 * d) + (d * 3 * d + 3 * d) + (d * d + d) + (d * m + m) + (m * d + d)
    assert count_params(cfg) == v * d + t * d + per_layer + 2 * d


def test_untied_rope_gqa_swiglu_hand_count():
    cfg = ModelConfig(vocab_size=10, context_length=8, n_layer=2, n_head=4, n_kv_head=2,
                      d_model=8, d_mlp=12, mlp="swiglu", norm="rmsnorm", positions="rope",
                      bias=False, tie_embeddings=False)
    d, v, hd, m = 8, 10, 2, 12
    attn = d * (4 + 2 * 2) * hd + 4 * hd * d
    mlp = 3 * d * m
    assert count_params(cfg) == v * d + 2 * (attn + mlp + 2 * d) + d + d * v


def test_presets_are_valid_and_named():
    for name, p in PRESETS.items():
        assert p.name == name
        assert isinstance(p.model, ModelConfig)
    assert {"tiny", "shakespeare-char"} <= {n for n, p in PRESETS.items() if p.train}


def test_round_trip_through_dict():
    cfg = get_preset("llama2-70b").model
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    tcfg = TrainConfig(steps=10, warmup_steps=2)
    assert TrainConfig.from_dict(tcfg.to_dict()) == tcfg


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"vocab_size": 0}, "vocab_size"),
        ({"n_layer": -1}, "n_layer"),
        ({"d_model": 30, "n_head": 4}, "d_model"),
        ({"n_head": 4, "n_kv_head": 3, "d_model": 32}, "n_kv_head"),
        ({"mlp": "relu"}, "mlp"),
        ({"norm": "batchnorm"}, "norm"),
        ({"positions": "alibi"}, "positions"),
        ({"dropout": 1.0}, "dropout"),
        ({"dtype": "int8"}, "dtype"),
        ({"positions": "rope", "d_model": 6, "n_head": 2}, "head_dim"),
    ],
)
def test_bad_model_config_names_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        ModelConfig(**kwargs)


def test_bad_types_raise_type_error():
    with pytest.raises(TypeError, match="n_layer"):
        ModelConfig(n_layer=2.0)
    with pytest.raises(TypeError, match="bias"):
        ModelConfig(bias="yes")


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"steps": 0}, "steps"),
        ({"steps": 10, "warmup_steps": 10}, "warmup_steps"),
        ({"learning_rate": 0.0}, "learning_rate"),
        ({"learning_rate": 1e-3, "min_learning_rate": 1e-2}, "min_learning_rate"),
        ({"beta2": 1.0}, "beta2"),
        ({"grad_clip": -1.0}, "grad_clip"),
        ({"val_fraction": 1.0}, "val_fraction"),
        ({"batch_size": 0}, "batch_size"),
    ],
)
def test_bad_train_config_names_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        TrainConfig(**kwargs)


def test_unknown_fields_and_presets_are_named():
    with pytest.raises(ValueError, match="n_layers"):
        ModelConfig().replace(n_layers=3)
    with pytest.raises(ValueError, match="gpt5"):
        get_preset("gpt5")
