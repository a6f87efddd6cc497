"""jaxllm.from_pretrained against the reference implementation (transformers), offline.

Each test architecture is a tiny random checkpoint built with ``transformers`` on the CPU and
saved with ``save_pretrained`` (safetensors), then loaded by :func:`jaxllm.from_pretrained`.
Logits on random tokens must agree within 1e-4 (float32), and greedy generations token for
token. Weights are drawn with a larger spread than transformers' default (std 0.02) so that
the logits are far apart and greedy decoding never hinges on a near tie.
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip("torch", reason="parity tests need torch (pip install "
                            "'jaxllm[test]')")
transformers = pytest.importorskip("transformers", reason="parity tests need transformers "
                                   "(pip install 'jaxllm[test]')")

import jaxllm  # noqa: E402
from jaxllm.hub import SUPPORTED, config_from_hf, read_safetensors, resolve_checkpoint  # noqa: E402
from jaxllm.model import load_balancing_loss  # noqa: E402
from jaxllm.sample import generate, generate_text  # noqa: E402

WINDOW = 5
LLAMA_LIKE = dict(hidden_size=32, intermediate_size=40, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                  initializer_range=0.3, bos_token_id=None, eos_token_id=None,
                  pad_token_id=None)
CONFIGS = {
    "gpt2": lambda: transformers.GPT2Config(
        vocab_size=300, n_positions=48, n_embd=32, n_layer=2, n_head=4, initializer_range=0.3,
        bos_token_id=None, eos_token_id=None),
    "llama": lambda: transformers.LlamaConfig(vocab_size=61, rope_theta=500000.0,
                                              rms_norm_eps=1e-5, **LLAMA_LIKE),
    "mistral": lambda: transformers.MistralConfig(vocab_size=61, sliding_window=WINDOW,
                                                  **LLAMA_LIKE),
    "mixtral": lambda: transformers.MixtralConfig(vocab_size=61, num_local_experts=4,
                                                  num_experts_per_tok=2, **LLAMA_LIKE),
}


def _tokenizer_json(path):
    """A byte-level BPE trained on a few sentences, saved as a checkpoint's tokenizer.json."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(["the cat sat on the mat", "a dog and a cat met"] * 20, trainer)
    tok.save(str(path))


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """{architecture: (folder, transformers model)}, built once for this module."""
    root = tmp_path_factory.mktemp("hub")
    out = {}
    for i, (name, make) in enumerate(CONFIGS.items()):
        torch.manual_seed(i)
        model = transformers.AutoModelForCausalLM.from_config(make()).eval()
        model.save_pretrained(root / name)
        out[name] = (root / name, model)
    _tokenizer_json(root / "gpt2" / "tokenizer.json")
    return out


@nnx.jit
def _logits(model, x):
    return model(x, return_aux=True)


def _reference(model, x):
    with torch.no_grad():
        out = model(torch.tensor(np.asarray(x)), output_router_logits=False)
    return out.logits.float().numpy()


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_logits_and_greedy_generations_match_transformers(checkpoints, name):
    folder, ref = checkpoints[name]
    model = jaxllm.from_pretrained(folder)
    cfg = model.cfg
    assert cfg.vocab_size == ref.config.vocab_size
    # Random tokens; for Mistral three times its window.
    x = np.random.default_rng(0).integers(0, cfg.vocab_size, (2, 16))
    ours, extras = _logits(model, jnp.asarray(x))
    want = _reference(ref, x)
    assert np.abs(want).max() > 1.0  # spread-out logits: not a trivially small comparison
    np.testing.assert_allclose(np.asarray(ours), want, rtol=0, atol=1e-4)

    prompt = [3, 14, 15, 9, 2, 6]
    n = 12  # past the window for Mistral (the rolling cache wraps twice)
    got = generate(model, [prompt], n, temperature=0.0)[0]
    with torch.no_grad():
        seq = ref.generate(torch.tensor([prompt]), max_new_tokens=n, min_new_tokens=n,
                           do_sample=False, pad_token_id=0)
    assert got == seq[0, len(prompt):].tolist()
    assert len(set(got)) > 1
    if name == "mistral":
        assert cfg.sliding_window == WINDOW
    if name == "mixtral":
        counts = np.asarray(extras["expert_counts"])
        assert counts.shape == (2, 4) and ((counts > 0).sum(axis=1) >= 3).all()


def test_the_load_balancing_loss_is_transformers_over_k(checkpoints):
    from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func

    _, ref = checkpoints["mixtral"]
    x = torch.tensor(np.random.default_rng(1).integers(0, 61, (2, 10)))
    with torch.no_grad():
        router = ref(x, output_router_logits=True).router_logits[0]  # [tokens, E] layer 0
    theirs = float(load_balancing_loss_func((router,), 4, 2))
    logits = jnp.asarray(router.numpy())
    ours = float(load_balancing_loss(logits, jax.lax.top_k(logits, 2)[1], 4))
    assert ours == pytest.approx(theirs / 2, rel=1e-5)


def test_bfloat16_and_scanned_layers(checkpoints):
    folder, ref = checkpoints["llama"]
    x = jnp.asarray(np.random.default_rng(2).integers(0, 61, (1, 12)))
    want = _reference(ref, x)
    scanned = jaxllm.from_pretrained(folder, scan_layers=True)
    np.testing.assert_allclose(np.asarray(_logits(scanned, x)[0]), want, rtol=0, atol=1e-4)
    half = jaxllm.from_pretrained(folder, dtype="bfloat16")
    kernel = half.blocks[0].attn.qkv.kernel[...]
    assert kernel.dtype == jnp.bfloat16 and half.cfg.dtype == "bfloat16"
    got = np.asarray(_logits(half, x)[0]).astype(np.float32)
    # bfloat16 keeps 8 bits of mantissa: within a few percent of the logits' range.
    assert np.abs(got - want).max() < 0.05 * np.abs(want).max()
    assert (got.argmax(-1) == want.argmax(-1)).mean() >= 0.9


def test_bfloat16_safetensors_are_read(tmp_path, checkpoints):
    folder, ref = checkpoints["gpt2"]
    half = tmp_path / "gpt2-bf16"
    ref.to(torch.bfloat16).save_pretrained(half)
    ref.to(torch.float32)
    tensors = read_safetensors(half / "model.safetensors")
    assert str(tensors["transformer.wte.weight"].dtype) == "bfloat16"
    model = jaxllm.from_pretrained(half)  # float32 model from bfloat16 weights
    want = ref.transformer.wte.weight.detach().to(torch.bfloat16).float().numpy()
    np.testing.assert_array_equal(np.asarray(model.wte.embedding[...]), want)


def test_tokenizer_json_and_generate_text_end_to_end(checkpoints):
    folder, _ = checkpoints["gpt2"]
    model, tok = jaxllm.from_pretrained(folder, with_tokenizer=True)
    assert tok.vocab_size <= model.cfg.vocab_size
    text = "the cat met a dog"
    ids = tok.encode(text)
    assert tok.decode(ids) == text and len(ids) < len(text)
    assert jaxllm.load_hf_tokenizer(folder).encode(text) == ids
    out = generate_text(model, tok, text, 8, temperature=0.0)
    assert isinstance(out, str) and out
    # The model's vocabulary (300) is padded past the tokenizer's: those ids decode to "".
    assert tok.decode([*ids, model.cfg.vocab_size - 1]) == text
    with pytest.raises(ValueError, match="ids must be >= 0"):
        tok.decode([-1])


def test_a_hub_name_is_downloaded_with_huggingface_hub(checkpoints, monkeypatch):
    huggingface_hub = pytest.importorskip("huggingface_hub")
    folder, _ = checkpoints["gpt2"]
    calls = []

    def fake_download(repo_id, allow_patterns=None, **kw):
        calls.append((repo_id, allow_patterns))
        return str(folder)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    assert resolve_checkpoint("gpt2") == folder
    assert calls[0][0] == "gpt2" and "model*.safetensors" in calls[0][1]
    assert not any(p.endswith(".bin") for p in calls[0][1])  # never PyTorch pickles


def test_unsupported_and_missing_checkpoints_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"model_type must be one of .*'mixtral'.*got 'bert'"):
        config_from_hf({"model_type": "bert", "vocab_size": 10})
    with pytest.raises(ValueError, match="rope_type must be 'default'.*'llama3'"):
        config_from_hf({"model_type": "llama", "vocab_size": 10, "hidden_size": 8,
                        "num_attention_heads": 2, "num_hidden_layers": 1,
                        "intermediate_size": 16,
                        "rope_scaling": {"rope_type": "llama3", "factor": 8.0}})
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", "vocab_size": 10}))
    with pytest.raises(ValueError, match="got 'bert'"):
        jaxllm.from_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="no such folder"):
        jaxllm.from_pretrained(tmp_path / "absent")
    with pytest.raises(ValueError, match="dtype must be one of"):
        jaxllm.from_pretrained(tmp_path, dtype="int8")
    assert SUPPORTED == ("gpt2", "llama", "mistral", "mixtral")
