"""The open models' presets: exact published parameter counts, total and active per token."""

from __future__ import annotations

import pytest

from jaxllm.config import ModelConfig, get_preset
from jaxllm.model import count_params

# The published counts of the hub checkpoints
# (meta-llama/Meta-Llama-3-8B, mistralai/Mistral-7B-v0.1, mistralai/Mixtral-8x7B-v0.1).
PUBLISHED = {
    "llama3-8b": (8_030_261_248, None),
    "mistral-7b": (7_241_732_096, None),
    "mixtral-8x7b": (46_702_792_704, 12_879_925_248),
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_open_model_counts_are_exact(name):
    total, active = PUBLISHED[name]
    preset = get_preset(name)
    assert count_params(name) == total == preset.published_params
    assert preset.published_active_params == active
    assert count_params(name, active=True) == (total if active is None else active)


def test_open_model_shapes():
    llama3 = get_preset("llama3-8b").model
    assert (llama3.vocab_size, llama3.kv_heads, llama3.mlp_width, llama3.rope_theta) == (
        128256, 8, 14336, 500000.0)
    assert get_preset("mistral-7b").model.sliding_window == 4096
    mixtral = get_preset("mixtral-8x7b").model
    assert (
        mixtral.n_experts, mixtral.experts_per_token, mixtral.sliding_window) == (8, 2, None)


def test_active_count_by_hand():
    cfg = ModelConfig(vocab_size=10, context_length=8, n_layer=2, n_head=2, d_model=4, d_mlp=6,
                      mlp="swiglu", norm="rmsnorm", positions="rope", bias=False,
                      tie_embeddings=False, n_experts=4, experts_per_token=2)
    d, v, m, E = 4, 10, 6, 4
    attn = d * 3 * d + d * d
    expert = 3 * d * m
    shared = v * d + d * v + d + 2 * (attn + 2 * d + d * E)
    assert count_params(cfg) == shared + 2 * E * expert
    assert count_params(cfg, active=True) == shared + 2 * 2 * expert
    with pytest.raises(TypeError, match="active"):
        count_params(cfg, active=1)


@pytest.mark.parametrize(("kwargs", "name"), [
    ({"sliding_window": 0}, "sliding_window"),
    ({"n_experts": -1}, "n_experts"),
    ({"n_experts": 2, "experts_per_token": 3}, "experts_per_token"),
    ({"experts_per_token": 0}, "experts_per_token"),
    ({"moe_aux_coef": -0.1}, "moe_aux_coef"),
])
def test_new_fields_are_validated(kwargs, name):
    with pytest.raises(ValueError, match=name):
        ModelConfig(**kwargs)
