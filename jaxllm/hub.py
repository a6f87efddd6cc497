"""Real open weights: GPT-2, LLaMA, Mistral and Mixtral checkpoints from Hugging Face.

:func:`from_pretrained` reads a checkpoint folder (``config.json`` and ``*.safetensors``, as
``save_pretrained`` writes it and the hub serves it) into the same :class:`~jaxllm.model.GPT`
that the course trains, so ``model(tokens)`` gives logits and :func:`jaxllm.sample.generate`
decodes. Nothing of ``transformers`` or ``torch`` is needed to load: the safetensors format is
a JSON header followed by raw little-endian arrays, read here with NumPy (memory-mapped and
moved to the device one array at a time, so without ``scan_layers`` a 14 GB checkpoint is
never held twice in host memory), with ``bfloat16`` through ``ml_dtypes`` (safetensors' own
NumPy reader refuses bfloat16).

How the checkpoints' layouts map onto ours (checked against ``transformers`` on tiny random
checkpoints, ``tests/test_hub.py``):

* GPT-2 stores its linear layers as ``Conv1D`` with weights ``[in, out]``, already our kernel
  layout; ``c_attn`` is fused ``[q | k | v]`` like our ``qkv``; positions are learned and the
  LM head is the token embedding (tied). ``gelu_new`` is the tanh approximation of GELU,
  which is what our MLP computes.
* LLaMA, Mistral and Mixtral store ``torch.nn.Linear`` weights ``[out, in]`` (transposed
  here); the separate ``q_proj``, ``k_proj``, ``v_proj`` are concatenated into our fused
  ``qkv`` (``[q heads | k heads | v heads]``, each head's features contiguous), and
  ``gate_proj``/``up_proj`` into our SwiGLU ``fc`` (``[gate | up]``). Their rotary embedding
  uses the rotate-half layout, as ours does.
* Mixtral's experts (``experts.{i}.w1`` gate, ``w3`` up, ``w2`` down, as on the hub; or the
  fused ``gate_up_proj [E, 2 I, d]`` and ``down_proj [E, d, I]`` of newer ``transformers``)
  are stacked into our ``w_in [E, d, 2 I]`` and ``w_out [E, I, d]``; the router is
  ``block_sparse_moe.gate``. transformers' auxiliary loss is ``k`` times ours (it normalises
  the load by tokens, we by assignments), so ``moe_aux_coef`` is set to
  ``router_aux_loss_coef * k`` to train with the same penalty.

Only what the model's architecture needs is supported; anything else (another
``model_type``, rotary scaling as in LLaMA 3.1, biases where LLaMA has none, a head size that
is not ``hidden_size / heads``) is refused with a message that names it.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .config import ModelConfig
from .validate import ArgumentTypeError, check_bool, check_choice

__all__ = ["SUPPORTED", "from_pretrained", "load_hf_tokenizer", "read_safetensors",
           "resolve_checkpoint"]

#: ``model_type`` values of config.json that :func:`from_pretrained` reads.
SUPPORTED = ("gpt2", "llama", "mistral", "mixtral")
_DTYPES = ("float32", "bfloat16", "float16")
#: Files fetched from the hub: the config, the weights in transformers' layout, the tokenizer.
#: Not PyTorch pickles, nor the ``consolidated.safetensors`` (Mistral's own layout) that some
#: repositories keep beside them, which would double the download.
_HUB_PATTERNS = ["config.json", "model*.safetensors", "model.safetensors.index.json",
                 "tokenizer.json", "tokenizer_config.json", "generation_config.json"]
#: Checkpoint entries that are buffers, not weights (old GPT-2 files keep the causal mask).
_IGNORED = re.compile(r"(\.attn\.bias|\.attn\.masked_bias|rotary_emb\.inv_freq)$")


# -- reading safetensors --------------------------------------------------------------------

def _np_dtype(code: str, where: str) -> Any:
    import ml_dtypes  # a dependency of jax

    table = {"F64": np.float64, "F32": np.float32, "F16": np.float16,
             "BF16": ml_dtypes.bfloat16, "I64": np.int64, "I32": np.int32, "I16": np.int16,
             "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}
    if code not in table:
        raise ValueError(f"{where}: unsupported safetensors dtype {code!r}; "
                         f"supported: {', '.join(table)}")
    return table[code]


def read_safetensors(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Every tensor of one ``.safetensors`` file as a read-only, memory-mapped NumPy array.

    The format: 8 bytes (little-endian uint64) giving the length ``n`` of a JSON header, the
    header (name -> dtype, shape, byte offsets into the data that follows), then the data.
    """
    path = Path(path)
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
    data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + n)
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        dtype = _np_dtype(info["dtype"], str(path))
        out[name] = data[begin:end].view(dtype).reshape(info["shape"])
    return out


def _read_weights(folder: Path) -> dict[str, np.ndarray]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    else:  # transformers' names first; any other safetensors file only if there are none
        files = sorted(p.name for p in folder.glob("model*.safetensors")) or \
            sorted(p.name for p in folder.glob("*.safetensors"))
    if not files:
        raise ValueError(f"no .safetensors weights in {str(folder)!r} (PyTorch .bin "
                         "checkpoints are not read: convert them with save_pretrained("
                         "..., safe_serialization=True))")
    weights: dict[str, np.ndarray] = {}
    for name in files:
        weights.update(read_safetensors(folder / name))
    return weights


# -- locating a checkpoint ------------------------------------------------------------------

def resolve_checkpoint(path_or_name: str | os.PathLike[str]) -> Path:
    """The local folder of a checkpoint: ``path_or_name`` itself if it is a folder, else a
    hub name such as ``"gpt2"`` or ``"mistralai/Mistral-7B-v0.1"`` downloaded (config,
    safetensors and tokenizer files only) with ``huggingface_hub`` into its cache."""
    if not isinstance(path_or_name, str | os.PathLike):
        raise ArgumentTypeError(f"path_or_name must be a folder or a hub name (str), got "
                                f"{path_or_name!r} ({type(path_or_name).__name__})")
    text = os.fspath(path_or_name)
    local = Path(text).expanduser()
    if local.is_dir():
        return local
    looks_local = isinstance(path_or_name, os.PathLike) or text.startswith(("/", ".", "~")) \
        or text.count("/") > 1 or not text
    if looks_local:
        raise FileNotFoundError(f"path_or_name must be a checkpoint folder or a hub name, got "
                                f"{text!r}: no such folder")
    try:
        from huggingface_hub import snapshot_download
    except ImportError as e:
        raise ImportError(f"downloading {text!r} needs huggingface_hub: pip install "
                          "'jaxllm[hub]' (or give a local checkpoint folder)") from e
    return Path(snapshot_download(text, allow_patterns=_HUB_PATTERNS))


# -- configs --------------------------------------------------------------------------------

def _rope_theta(hf: Mapping[str, Any]) -> float:
    params = hf.get("rope_parameters") or {}
    scaling = hf.get("rope_scaling") or {}
    kind = params.get("rope_type", scaling.get("rope_type", scaling.get("type", "default")))
    if kind != "default":
        raise ValueError(f"rope_type must be 'default' (plain rotary embeddings), got {kind!r} "
                         f"in config.json (model_type={hf.get('model_type')!r})")
    return float(params.get("rope_theta", hf.get("rope_theta", 10000.0)))


def _require(hf: Mapping[str, Any], key: str, allowed: tuple[Any, ...], default: Any) -> None:
    value = hf.get(key, default)
    if value not in allowed:
        raise ValueError(f"config.json field {key} must be one of {allowed} for "
                         f"model_type={hf.get('model_type')!r}, got {value!r}")


def config_from_hf(hf: Mapping[str, Any], dtype: str = "float32") -> ModelConfig:
    """The :class:`ModelConfig` of a Hugging Face ``config.json`` (as a dict)."""
    kind = hf.get("model_type")
    if kind not in SUPPORTED:
        raise ValueError(f"model_type must be one of {', '.join(map(repr, SUPPORTED))}, got "
                         f"{kind!r} in config.json")
    common = dict(dtype=dtype, param_dtype=dtype, vocab_size=int(hf["vocab_size"]))
    if kind == "gpt2":
        _require(hf, "activation_function", ("gelu_new", "gelu_pytorch_tanh"), "gelu_new")
        _require(hf, "scale_attn_by_inverse_layer_idx", (False,), False)
        _require(hf, "scale_attn_weights", (True,), True)
        d = int(hf["n_embd"])
        return ModelConfig(
            **common, context_length=int(hf["n_positions"]), n_layer=int(hf["n_layer"]),
            n_head=int(hf["n_head"]), d_model=d, d_mlp=int(hf.get("n_inner") or 4 * d),
            mlp="gelu", norm="layernorm", positions="learned", bias=True,
            tie_embeddings=True, norm_eps=float(hf.get("layer_norm_epsilon", 1e-5)))
    _require(hf, "hidden_act", ("silu",), "silu")
    _require(hf, "attention_bias", (False,), False)
    _require(hf, "mlp_bias", (False,), False)
    d, heads = int(hf["hidden_size"]), int(hf["num_attention_heads"])
    head_dim = hf.get("head_dim") or d // heads
    if head_dim * heads != d:
        raise ValueError(f"config.json head_dim must be hidden_size / num_attention_heads = "
                         f"{d // heads}, got {head_dim} (model_type={kind!r})")
    moe: dict[str, Any] = {}
    if kind == "mixtral":
        k = int(hf.get("num_experts_per_tok", 2))
        moe = dict(n_experts=int(hf["num_local_experts"]), experts_per_token=k,
                   moe_aux_coef=float(hf.get("router_aux_loss_coef", 0.001)) * k)
    window = hf.get("sliding_window") if kind in ("mistral", "mixtral") else None
    return ModelConfig(
        **common, context_length=int(hf.get("max_position_embeddings", 4096)),
        n_layer=int(hf["num_hidden_layers"]), n_head=heads,
        n_kv_head=int(hf.get("num_key_value_heads") or heads), d_model=d,
        d_mlp=int(hf["intermediate_size"]), mlp="swiglu", norm="rmsnorm", positions="rope",
        bias=False, tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        norm_eps=float(hf.get("rms_norm_eps", 1e-6)), rope_theta=_rope_theta(hf),
        sliding_window=None if window is None else int(window), **moe)


# -- weights --------------------------------------------------------------------------------

class _Weights:
    """The checkpoint's tensors by name, with its optional prefix stripped; remembers which
    were used so that a tensor the mapping forgot is an error, not a silent omission."""

    def __init__(self, tensors: dict[str, np.ndarray], prefixes: tuple[str, ...]):
        self.tensors: dict[str, np.ndarray] = {}
        for name, x in tensors.items():
            if _IGNORED.search(name):
                continue
            for p in prefixes:
                if name.startswith(p):
                    name = name[len(p):]
                    break
            self.tensors[name] = x
        self.used: set[str] = set()

    def __contains__(self, name: str) -> bool:
        return name in self.tensors

    def __call__(self, name: str) -> np.ndarray:
        if name not in self.tensors:
            raise ValueError(f"checkpoint has no tensor {name!r}")
        self.used.add(name)
        return self.tensors[name]

    def check_all_used(self) -> None:
        unused = sorted(set(self.tensors) - self.used)
        if unused:
            raise ValueError(f"checkpoint tensors not mapped onto the model: "
                             f"{', '.join(unused[:8])}{' ...' if len(unused) > 8 else ''}")


#: A weight in our layout, or a function that makes it (a concatenation or a stack of
#: memory-mapped arrays): evaluated one at a time while the model is built, so host memory
#: holds one new array at a time instead of, for a 7B model, 9 GB of them.
Tensor = np.ndarray | Callable[[], np.ndarray]


def _concat(arrays: list[np.ndarray], axis: int) -> Callable[[], np.ndarray]:
    return lambda: np.concatenate(arrays, axis=axis)


def _stack(arrays: list[Tensor]) -> Callable[[], np.ndarray]:
    return lambda: np.stack([a() if callable(a) else a for a in arrays])


def _gpt2_params(cfg: ModelConfig, w: _Weights) -> dict[str, Tensor]:
    p = {"wte/embedding": w("wte.weight"), "wpe/embedding": w("wpe.weight"),
         "norm_f/scale": w("ln_f.weight"), "norm_f/bias": w("ln_f.bias")}
    if "lm_head.weight" in w:  # tied: the same numbers as wte
        w("lm_head.weight")
    for i in range(cfg.n_layer):
        h, b = f"h.{i}.", f"blocks/{i}/"
        for ours, theirs in (("norm1", "ln_1"), ("norm2", "ln_2")):
            p[b + ours + "/scale"] = w(h + theirs + ".weight")
            p[b + ours + "/bias"] = w(h + theirs + ".bias")
        # Conv1D weights are [in, out]: already our kernel layout.
        for ours, theirs in (("attn/qkv", "attn.c_attn"), ("attn/proj", "attn.c_proj"),
                             ("mlp/fc", "mlp.c_fc"), ("mlp/proj", "mlp.c_proj")):
            p[b + ours + "/kernel"] = w(h + theirs + ".weight")
            p[b + ours + "/bias"] = w(h + theirs + ".bias")
    return p


def _llama_params(cfg: ModelConfig, w: _Weights) -> dict[str, Tensor]:
    p = {"wte/embedding": w("embed_tokens.weight"), "norm_f/scale": w("norm.weight")}
    if cfg.tie_embeddings:
        if "lm_head.weight" in w:
            w("lm_head.weight")
    else:
        p["lm_head/kernel"] = w("lm_head.weight").T
    for i in range(cfg.n_layer):
        h, b = f"layers.{i}.", f"blocks/{i}/"
        p[b + "norm1/scale"] = w(h + "input_layernorm.weight")
        p[b + "norm2/scale"] = w(h + "post_attention_layernorm.weight")
        # nn.Linear weights are [out, in]; ours are [in, out]. Fused [q | k | v] columns.
        p[b + "attn/qkv/kernel"] = _concat(
            [w(h + f"self_attn.{n}_proj.weight").T for n in "qkv"], axis=1)
        p[b + "attn/proj/kernel"] = w(h + "self_attn.o_proj.weight").T
        if cfg.n_experts:
            p.update(_mixtral_experts(cfg, w, h, b))
        else:
            p[b + "mlp/fc/kernel"] = _concat(
                [w(h + "mlp.gate_proj.weight").T, w(h + "mlp.up_proj.weight").T], axis=1)
            p[b + "mlp/proj/kernel"] = w(h + "mlp.down_proj.weight").T
    return p


def _mixtral_experts(cfg: ModelConfig, w: _Weights, h: str, b: str) -> dict[str, Tensor]:
    moe = next((h + m for m in ("block_sparse_moe.", "mlp.") if h + m + "gate.weight" in w),
               None)
    if moe is None:
        raise ValueError(f"checkpoint has no router {h}block_sparse_moe.gate.weight")
    p: dict[str, Tensor] = {b + "mlp/router/kernel": w(moe + "gate.weight").T}  # [d, E]
    if moe + "experts.gate_up_proj" in w:  # fused, as newer transformers keep them
        p[b + "mlp/w_in"] = np.swapaxes(w(moe + "experts.gate_up_proj"), 1, 2)
        p[b + "mlp/w_out"] = np.swapaxes(w(moe + "experts.down_proj"), 1, 2)
        return p
    e = [f"{moe}experts.{j}." for j in range(cfg.n_experts)]
    # w1 = gate, w3 = up (each [I, d]), w2 = down ([d, I]).
    p[b + "mlp/w_in"] = _stack([_concat([w(x + "w1.weight").T, w(x + "w3.weight").T], axis=1)
                                for x in e])
    p[b + "mlp/w_out"] = _stack([w(x + "w2.weight").T for x in e])
    return p


_MAPPERS: dict[str, tuple[tuple[str, ...], Callable[[ModelConfig, _Weights],
                                                    dict[str, Tensor]]]] = {
    "gpt2": (("transformer.",), _gpt2_params),
    "llama": (("model.",), _llama_params),
    "mistral": (("model.",), _llama_params),
    "mixtral": (("model.",), _llama_params),
}


def _path_name(path: tuple[Any, ...]) -> str:
    parts = [str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path]
    return "/".join(parts[:-1] if parts and parts[-1] == "value" else parts)


def _stack_layers(params: dict[str, Tensor], n_layer: int) -> dict[str, Tensor]:
    out = {k: v for k, v in params.items() if not k.startswith("blocks/")}
    names = {k.split("/", 2)[2] for k in params if k.startswith("blocks/")}
    for name in names:
        out[f"blocks/{name}"] = _stack([params[f"blocks/{i}/{name}"] for i in range(n_layer)])
    return out


# -- the entry points -----------------------------------------------------------------------

def from_pretrained(path_or_name: str | os.PathLike[str], *, dtype: str = "float32",
                    scan_layers: bool = False, with_tokenizer: bool = False) -> Any:
    """A :class:`~jaxllm.model.GPT` holding the weights of a Hugging Face checkpoint.

    ``path_or_name`` is a folder with ``config.json`` and ``*.safetensors`` files, or a hub
    name (``"gpt2"``, ``"mistralai/Mistral-7B-v0.1"``) that is downloaded with
    ``huggingface_hub`` (a network connection and, for gated models, a token are needed).
    The architecture comes from config.json's ``model_type``: one of :data:`SUPPORTED`.

    ``dtype`` (``"float32"``, ``"bfloat16"`` or ``"float16"``) is both the dtype the
    parameters are stored in and the compute dtype. ``scan_layers=True`` stacks the layers,
    so the model compiles in constant time in depth, but the host then builds each stacked
    weight whole (7.5 GB for a 7B model's MLP in bfloat16): with little RAM (free Colab),
    leave it off. With
    ``with_tokenizer=True`` the result is ``(model, tokenizer)``, the tokenizer read from the
    folder's ``tokenizer.json`` by :func:`load_hf_tokenizer` (``None`` if it has none).
    """
    check_choice("dtype", dtype, _DTYPES)
    check_bool("scan_layers", scan_layers)
    check_bool("with_tokenizer", with_tokenizer)
    folder = resolve_checkpoint(path_or_name)
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise ValueError(f"path_or_name must hold a config.json, none in {str(folder)!r}")
    hf = json.loads(config_file.read_text())
    cfg = config_from_hf(hf, dtype).replace(scan_layers=scan_layers)
    prefixes, mapper = _MAPPERS[hf["model_type"]]
    weights = _Weights(_read_weights(folder), prefixes)
    params = mapper(cfg, weights)
    weights.check_all_used()
    model = _build(cfg, _stack_layers(params, cfg.n_layer) if scan_layers else params)
    if not with_tokenizer:
        return model
    tok = load_hf_tokenizer(folder) if (folder / "tokenizer.json").is_file() else None
    return model, tok


def _build(cfg: ModelConfig, params: dict[str, Tensor]) -> Any:
    """The model with ``params`` (our names) in place of an initialisation: the shapes come
    from ``nnx.eval_shape``, so no random weights are ever allocated."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from .model import GPT, dtype_of

    graphdef, abstract = nnx.split(nnx.eval_shape(lambda: GPT(cfg, rngs=nnx.Rngs(0))))
    target = dtype_of(cfg.param_dtype)
    missing = []

    def fill(path: tuple[Any, ...], leaf: Any) -> Any:
        name = _path_name(path)
        if name not in params:
            missing.append(name)
            return leaf
        x = params.pop(name)
        x = x() if callable(x) else x
        if tuple(x.shape) != tuple(leaf.shape):
            raise ValueError(f"checkpoint tensor for {name} has shape {tuple(x.shape)}, the "
                             f"model expects {tuple(leaf.shape)}")
        return jnp.asarray(np.asarray(x).astype(target))

    state = jax.tree_util.tree_map_with_path(fill, abstract)
    if missing or params:
        raise ValueError(f"checkpoint and model disagree: missing {missing[:8]}, "
                         f"extra {sorted(params)[:8]}")
    return nnx.merge(graphdef, state)


def load_hf_tokenizer(path_or_name: str | os.PathLike[str]) -> Any:
    """The tokenizer of a checkpoint folder (its ``tokenizer.json``) or hub name, as a
    :class:`jaxllm.tokenizer.HFTokenizer`: ``encode(str) -> list[int]``,
    ``decode(list[int]) -> str`` and ``vocab_size``, what :func:`jaxllm.sample.generate_text`
    needs."""
    from .tokenizer import HFTokenizer

    folder = resolve_checkpoint(path_or_name)
    return HFTokenizer.from_file(folder / "tokenizer.json")
