"""Model and training settings as frozen dataclasses, plus named presets.

Everything here is plain Python: nothing is allocated and nothing imports JAX at module level,
so a config can be built, validated and compared anywhere. The presets range from a toy that
trains in seconds to the published shapes of GPT-2, GPT-3, LLaMA 2 and 3, Mistral and Mixtral
(those are only ever used for counting parameters with :func:`jax.eval_shape`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from .validate import check_bool, check_choice, check_int, check_number

MlpKind = Literal["gelu", "swiglu"]
NormKind = Literal["layernorm", "rmsnorm"]
PositionKind = Literal["learned", "rope"]
DType = Literal["float32", "bfloat16", "float16"]

_MLP_KINDS = ("gelu", "swiglu")
_NORM_KINDS = ("layernorm", "rmsnorm")
_POSITION_KINDS = ("learned", "rope")
_DTYPES = ("float32", "bfloat16", "float16")


def _check_int(name: str, value: Any, minimum: int) -> None:
    check_int(name, value, min=minimum)


def _check_float(name: str, value: Any, low: float, high: float, *, low_open: bool = False,
                 high_open: bool = False) -> None:
    check_number(name, value, low=low, high=high, low_open=low_open, high_open=high_open)


@dataclass(frozen=True)
class ModelConfig:
    """The shape of a decoder-only transformer.

    ``n_kv_head`` below ``n_head`` gives grouped-query attention (LLaMA 2 70B); ``d_mlp``
    defaults to ``4 * d_model``. ``dtype`` is the compute dtype (``bfloat16`` for mixed
    precision); parameters are always stored in ``param_dtype``.

    ``sliding_window`` (Mistral 7B: 4096) lets the query at position ``t`` see only the keys at
    positions ``t - sliding_window < s <= t`` (itself and the ``sliding_window - 1`` before it,
    transformers' definition); decoding then keeps a rolling cache of ``sliding_window``
    slots. ``n_experts > 0`` replaces every MLP by a mixture of that many experts of which each
    token uses ``experts_per_token`` (Mixtral: 8 and 2); ``moe_aux_coef`` weighs the
    load-balancing loss added to the training loss.
    """

    vocab_size: int = 65
    context_length: int = 64
    n_layer: int = 2
    n_head: int = 2
    d_model: int = 64
    n_kv_head: int | None = None
    d_mlp: int | None = None
    mlp: MlpKind = "gelu"
    norm: NormKind = "layernorm"
    positions: PositionKind = "learned"
    bias: bool = True
    tie_embeddings: bool = True
    dropout: float = 0.0
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    init_std: float = 0.02
    dtype: DType = "float32"
    param_dtype: DType = "float32"
    remat: bool = False
    scan_layers: bool = False
    sliding_window: int | None = None
    n_experts: int = 0
    experts_per_token: int = 2
    moe_aux_coef: float = 0.01

    def __post_init__(self) -> None:
        _check_int("vocab_size", self.vocab_size, 1)
        _check_int("context_length", self.context_length, 1)
        _check_int("n_layer", self.n_layer, 1)
        _check_int("n_head", self.n_head, 1)
        _check_int("d_model", self.d_model, 1)
        if self.n_kv_head is not None:
            _check_int("n_kv_head", self.n_kv_head, 1)
            if self.n_head % self.n_kv_head:
                raise ValueError(
                    f"n_kv_head must divide n_head={self.n_head}, got {self.n_kv_head}")
        if self.d_mlp is not None:
            _check_int("d_mlp", self.d_mlp, 1)
        if self.d_model % self.n_head:
            raise ValueError(
                f"d_model must be divisible by n_head={self.n_head}, got {self.d_model}")
        check_choice("mlp", self.mlp, _MLP_KINDS)
        check_choice("norm", self.norm, _NORM_KINDS)
        check_choice("positions", self.positions, _POSITION_KINDS)
        check_choice("dtype", self.dtype, _DTYPES)
        check_choice("param_dtype", self.param_dtype, _DTYPES)
        _check_float("dropout", self.dropout, 0.0, 1.0, high_open=True)
        _check_float("norm_eps", self.norm_eps, 0.0, 1.0, low_open=True)
        _check_float("init_std", self.init_std, 0.0, 10.0, low_open=True)
        _check_float("rope_theta", self.rope_theta, 1.0, 1e12)
        if self.positions == "rope" and self.head_dim % 2:
            raise ValueError(f"positions='rope' needs an even head_dim, got {self.head_dim}")
        for name in ("bias", "tie_embeddings", "remat", "scan_layers"):
            check_bool(name, getattr(self, name))
        check_int("sliding_window", self.sliding_window, min=1, none_ok=True)
        check_int("n_experts", self.n_experts, min=0)
        check_int("experts_per_token", self.experts_per_token, min=1)
        if self.n_experts and self.experts_per_token > self.n_experts:
            raise ValueError(f"experts_per_token must be <= n_experts={self.n_experts}, "
                             f"got {self.experts_per_token}")
        check_number("moe_aux_coef", self.moe_aux_coef, low=0.0, high=1e3)

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    @property
    def kv_heads(self) -> int:
        return self.n_head if self.n_kv_head is None else self.n_kv_head

    @property
    def mlp_width(self) -> int:
        return 4 * self.d_model if self.d_mlp is None else self.d_mlp

    def replace(self, **changes: Any) -> ModelConfig:
        """A copy with some fields changed (validated again)."""
        _check_fields(ModelConfig, changes)
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ModelConfig:
        _check_fields(cls, d)
        return cls(**d)


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation and bookkeeping for :func:`jaxllm.train.fit`.

    The learning rate warms up linearly from 0 to ``learning_rate`` over ``warmup_steps`` and
    then follows a cosine down to ``min_learning_rate`` at ``steps`` (Optax's
    ``warmup_cosine_decay_schedule``).
    """

    steps: int = 200
    batch_size: int = 16
    learning_rate: float = 1e-3
    min_learning_rate: float = 1e-4
    warmup_steps: int = 20
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0
    eval_interval: int = 100
    eval_batches: int = 10
    val_fraction: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        _check_int("steps", self.steps, 1)
        _check_int("batch_size", self.batch_size, 1)
        _check_int("warmup_steps", self.warmup_steps, 0)
        _check_int("eval_interval", self.eval_interval, 1)
        _check_int("eval_batches", self.eval_batches, 1)
        _check_int("seed", self.seed, 0)
        if self.warmup_steps >= self.steps:
            raise ValueError(
                f"warmup_steps must be < steps={self.steps}, got {self.warmup_steps}")
        _check_float("learning_rate", self.learning_rate, 0.0, 10.0, low_open=True)
        _check_float("min_learning_rate", self.min_learning_rate, 0.0, self.learning_rate)
        _check_float("weight_decay", self.weight_decay, 0.0, 10.0)
        _check_float("beta1", self.beta1, 0.0, 1.0, high_open=True)
        _check_float("beta2", self.beta2, 0.0, 1.0, high_open=True)
        _check_float("grad_clip", self.grad_clip, 0.0, 1e9, low_open=True)
        _check_float("val_fraction", self.val_fraction, 0.0, 1.0, low_open=True, high_open=True)

    def replace(self, **changes: Any) -> TrainConfig:
        _check_fields(TrainConfig, changes)
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrainConfig:
        _check_fields(cls, d)
        return cls(**d)


def _check_fields(cls: type, d: Mapping[str, Any]) -> None:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ValueError(
            f"unknown {cls.__name__} field(s) {', '.join(unknown)}; "
            f"allowed: {', '.join(sorted(names))}")


@dataclass(frozen=True)
class Preset:
    """A named model shape, with training settings where the preset is meant to be trained."""

    name: str
    model: ModelConfig
    train: TrainConfig | None = None
    description: str = ""
    published_params: int | None = None
    published_active_params: int | None = None
    tokenizer: str = "char"
    notes: tuple[str, ...] = field(default_factory=tuple)
    #: What ``jaxllm train`` trains a trainable preset on by default: ``"shakespeare"`` (the
    #: bundled plays) or ``"world"`` (the corpus of :mod:`jaxllm.world`).
    data: str = "shakespeare"
    #: BPE vocabulary size for ``tokenizer="bpe"`` (``None``: the CLI's default).
    vocab_size: int | None = None


_GPT2_VOCAB = 50257
_LLAMA_VOCAB = 32000
_LLAMA3_VOCAB = 128256


def _gpt(n_layer: int, n_head: int, d_model: int, context_length: int) -> ModelConfig:
    return ModelConfig(vocab_size=_GPT2_VOCAB, context_length=context_length, n_layer=n_layer,
                       n_head=n_head, d_model=d_model, mlp="gelu", norm="layernorm",
                       positions="learned", bias=True, tie_embeddings=True, norm_eps=1e-5)


def _llama(n_layer: int, n_head: int, d_model: int, d_mlp: int,
           n_kv_head: int | None = None, **changes: Any) -> ModelConfig:
    cfg = ModelConfig(vocab_size=_LLAMA_VOCAB, context_length=4096, n_layer=n_layer,
                      n_head=n_head, n_kv_head=n_kv_head, d_model=d_model, d_mlp=d_mlp,
                      mlp="swiglu", norm="rmsnorm", positions="rope", bias=False,
                      tie_embeddings=False, norm_eps=1e-5)
    return cfg.replace(**changes)


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in [
        Preset(
            "tiny",
            ModelConfig(vocab_size=65, context_length=32, n_layer=2, n_head=2, d_model=32),
            TrainConfig(steps=60, batch_size=8, learning_rate=3e-3, min_learning_rate=3e-4,
                        warmup_steps=5, eval_interval=20, eval_batches=2),
            "A toy for tests and quick checks: trains in seconds.",
        ),
        Preset(
            "shakespeare-char",
            # Sized on a 2-core CPU (see benchmarks/README.md): this shape keeps XLA's
            # per-step buffer (63 MB) small enough for malloc to reuse it, ~40 ms a step.
            ModelConfig(vocab_size=65, context_length=64, n_layer=4, n_head=4, d_model=128,
                        dropout=0.0),
            TrainConfig(steps=10000, batch_size=16, learning_rate=2e-3, min_learning_rate=2e-4,
                        warmup_steps=200, weight_decay=0.1, beta2=0.99, eval_interval=500,
                        eval_batches=20),
            "Character-level model of the bundled Shakespeare corpus, sized to train on a "
            "2-core CPU in under 15 minutes.",
        ),
        Preset(
            "world-base",
            # Sized on the 2-core CPU (benchmarks/README.md): about 30 minutes on an idle
            # machine for ~20 passes over the world's corpus (1.2M tokens), enough for the
            # facts to be recalled; vocabulary 2048 makes each invented name one token.
            ModelConfig(vocab_size=2048, context_length=128, n_layer=4, n_head=4,
                        d_model=128, dropout=0.0),
            TrainConfig(steps=5000, batch_size=32, learning_rate=3e-3, min_learning_rate=3e-4,
                        warmup_steps=200, weight_decay=0.1, beta2=0.99, eval_interval=500,
                        eval_batches=10, val_fraction=0.05),
            "Base model of the course's generated world (jaxllm.world), BPE of 2048 tokens "
            "with the chat format's special tokens; about 30 minutes on an idle 2-core CPU.",
            tokenizer="bpe", data="world", vocab_size=2048,
        ),
        Preset(
            "world-base-gpu",
            # The same data and tokenizer, a model ~20x larger for one GPU.
            ModelConfig(vocab_size=2048, context_length=256, n_layer=8, n_head=8,
                        d_model=512, dropout=0.0),
            TrainConfig(steps=6000, batch_size=64, learning_rate=1e-3, min_learning_rate=1e-4,
                        warmup_steps=300, weight_decay=0.1, beta2=0.99, eval_interval=500,
                        eval_batches=10, val_fraction=0.05),
            "world-base's data and tokenizer at GPU scale (8 layers, width 512).",
            tokenizer="bpe", data="world", vocab_size=2048,
        ),
        Preset("gpt2", _gpt(12, 12, 768, 1024), None, "GPT-2 small (124M).",
               published_params=124_439_808, tokenizer="gpt2"),
        Preset("gpt2-xl", _gpt(48, 25, 1600, 1024), None, "GPT-2 XL (1.5B).",
               published_params=1_557_611_200, tokenizer="gpt2"),
        Preset("gpt3", _gpt(96, 96, 12288, 2048), None, "GPT-3 175B (Brown et al., 2020).",
               published_params=175_000_000_000, tokenizer="gpt2",
               notes=("GPT-3 alternates dense and locally banded sparse attention; that "
                      "changes no parameter count.",)),
        Preset("llama2-7b", _llama(32, 32, 4096, 11008), None, "LLaMA 2 7B.",
               published_params=6_738_415_616, tokenizer="llama"),
        Preset("llama2-70b", _llama(80, 64, 8192, 28672, n_kv_head=8), None,
               "LLaMA 2 70B (grouped-query attention, 8 key/value heads).",
               published_params=68_976_648_192, tokenizer="llama"),
        # The shapes of each model's config.json on the Hugging Face hub.
        Preset("llama3-8b",
               _llama(32, 32, 4096, 14336, n_kv_head=8, vocab_size=_LLAMA3_VOCAB,
                      context_length=8192, rope_theta=500000.0),
               None, "LLaMA 3 8B (grouped-query attention, 8 key/value heads; 128K vocabulary).",
               published_params=8_030_261_248, tokenizer="llama3"),
        Preset("mistral-7b",
               _llama(32, 32, 4096, 14336, n_kv_head=8, context_length=32768,
                      sliding_window=4096),
               None, "Mistral 7B v0.1 (sliding-window attention over 4096 tokens).",
               published_params=7_241_732_096, tokenizer="mistral"),
        Preset("mixtral-8x7b",
               _llama(32, 32, 4096, 14336, n_kv_head=8, context_length=32768,
                      rope_theta=1e6, n_experts=8, experts_per_token=2),
               None, "Mixtral 8x7B (8 experts per layer, 2 used per token).",
               published_params=46_702_792_704, published_active_params=12_879_925_248,
               tokenizer="mistral"),
    ]
}


def get_preset(name: str) -> Preset:
    """The preset called ``name`` (see :data:`PRESETS`)."""
    if name not in PRESETS:
        raise ValueError(f"preset must be one of {', '.join(PRESETS)}, got {name!r}")
    return PRESETS[name]
