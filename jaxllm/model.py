"""A GPT in Flax NNX: embeddings, causal (grouped-query) self-attention, MLP, pre-norm blocks.

One module serves training, evaluation, plotting and decoding:

* ``model(tokens)`` gives next-token logits for every position (training, evaluation);
* ``model(tokens, return_attention=True)`` also gives each layer's attention weights;
* ``model(tokens, cache=cache, cache_index=i, positions=p, valid=v)`` runs a step of decoding
  against a fixed-size key/value cache (see :func:`init_cache`) and returns the updated cache.

The cache is a named tuple of two arrays, ``KVCache(k, v)``, each ``[L, B, S, KV, hd]``, so it
travels through ``jax.jit`` and ``lax.while_loop`` like any other pytree. Causality is decided by
*slot* (the index in the cache), padding by the ``valid`` mask, and token positions by
``positions``, which lets one compiled decode loop serve a batch of prompts of different
lengths (left-padded).

Two options of the open models change the default path only when they are on:

* ``cfg.sliding_window`` (Mistral): a query at position ``t`` sees the keys at positions
  ``t - window < s <= t``. Its cache is a *rolling* one of ``min(window, length)`` slots that
  also stores each slot's position (``KVCache.pos``), so decoding can run far past the window
  with bounded memory; with a rolling cache, ``valid`` is ``[B, T]`` and says which of the
  *new* tokens are real (the cache remembers the old ones by their stored positions).
* ``cfg.n_experts`` (Mixtral): every MLP is a mixture of experts (:class:`MoE`);
  ``model(tokens, return_aux=True)`` also returns the load-balancing loss and how many tokens
  each expert got.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from .config import ModelConfig
from .validate import check_bool, check_int

Array = jax.Array

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def dtype_of(name: str) -> Any:
    return _DTYPES[name]


def constrain_batch(x: Array) -> Array:
    """Keep activations ``x`` split along their batch axis over the ``data`` and ``fsdp`` axes
    of the mesh set by :mod:`jaxllm.sharding` around its steps; without a mesh, a no-op.

    Without this hint XLA may follow an FSDP-split weight and gather whole batches of
    activations onto every device, instead of gathering the (smaller) weight."""
    mesh = jax.sharding.get_abstract_mesh()
    axes = tuple(a for a in ("data", "fsdp") if a in mesh.axis_names)
    if not axes or x.shape[0] % math.prod(mesh.shape[a] for a in axes):
        return x
    return jax.lax.with_sharding_constraint(x, jax.sharding.PartitionSpec(axes))


def causal_mask(length: int) -> Array:
    """Boolean ``[length, length]`` mask: entry ``[t, s]`` is True when position ``t`` may
    attend to position ``s``, i.e. when ``s <= t``."""
    check_int("length", length, min=1)
    return jnp.tril(jnp.ones((length, length), dtype=bool))


def rope_tables(positions: Array, head_dim: int, theta: float) -> tuple[Array, Array]:
    """cos and sin tables ``[..., head_dim // 2]`` for rotary position embeddings."""
    inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    angles = positions.astype(jnp.float32)[..., None] * inv_freq
    return jnp.cos(angles), jnp.sin(angles)


def apply_rope(x: Array, cos: Array, sin: Array) -> Array:
    """Rotate pairs of features of ``x`` ``[B, T, heads, hd]`` by position-dependent angles.

    Uses the "rotate half" layout (first half / second half of each head's features), as in
    the GPT-NeoX and LLaMA implementations.
    """
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half].astype(jnp.float32), x[..., half:].astype(jnp.float32)
    cos, sin = cos[:, :, None, :], sin[:, :, None, :]
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x.dtype)


class KVCache(NamedTuple):
    """Keys and values of every layer, ``[L, B, S, KV, hd]`` each.

    ``pos`` (``[B, S]`` int32) is set only in the rolling cache of a sliding-window model: the
    position of the token held in each slot, ``-1`` for an empty (or padding) slot. Slots are
    reused modulo ``S``, so the mask is decided by these positions rather than by slot order.
    """

    k: Array
    v: Array
    pos: Array | None = None


def init_cache(cfg: ModelConfig, batch_size: int, length: int | None = None) -> KVCache:
    """An empty (all-zero) cache for ``batch_size`` sequences of up to ``length`` slots.

    For a sliding-window model the cache is a rolling one of ``min(sliding_window, length)``
    slots, whatever the length of the text that will be decoded with it: a query never sees
    more than ``sliding_window`` keys (itself included), so older slots are overwritten.
    """
    length = cfg.context_length if length is None else length
    # A batch of left-padded prompts may need a few slots more than the context length
    # (the padding); positions, not slots, are bounded by the context length.
    check_int("length", length, min=1)
    pos = None
    if cfg.sliding_window is not None:
        length = min(length, cfg.sliding_window)
        pos = jnp.full((batch_size, length), -1, jnp.int32)
    shape = (cfg.n_layer, batch_size, length, cfg.kv_heads, cfg.head_dim)
    dtype = dtype_of(cfg.dtype)
    return KVCache(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype), pos)


def _normal(std: float) -> nnx.Initializer:
    return nnx.initializers.normal(stddev=std)


def _norm(cfg: ModelConfig, rngs: nnx.Rngs) -> nnx.Module:
    kw = dict(epsilon=cfg.norm_eps, dtype=dtype_of(cfg.dtype),
              param_dtype=dtype_of(cfg.param_dtype), rngs=rngs)
    if cfg.norm == "rmsnorm":
        return nnx.RMSNorm(cfg.d_model, **kw)
    return nnx.LayerNorm(cfg.d_model, use_bias=cfg.bias, **kw)


class Linear(nnx.Linear):
    """:class:`flax.nnx.Linear` applied to its input seen as one matrix ``[tokens, features]``.

    The same parameters and the same math as ``nnx.Linear``. Why flatten: for an input
    ``[B, T, features]`` the gradient of the kernel sums over two axes (batch and time) at
    once, and XLA:CPU computes that contraction with a slower general routine after copying
    a transposed operand. As one ``[B * T, features]`` matrix product, every matrix product
    of the forward and backward pass stays in the fast library path (a train step of
    ``benchmarks/train_cpu.py`` gets about 9% faster on a 2-core CPU). On a GPU or TPU the
    reshape is free.
    """

    def __call__(self, inputs: Array, out_sharding: Any = None) -> Array:
        lead = inputs.shape[:-1]
        flat = inputs.reshape(-1, inputs.shape[-1])
        # out_sharding only exists from flax 0.12.1 on; pass it only when it is set.
        y = (super().__call__(flat) if out_sharding is None
             else super().__call__(flat, out_sharding=out_sharding))
        return y.reshape(*lead, y.shape[-1])


def _linear(cfg: ModelConfig, n_in: int, n_out: int, std: float, rngs: nnx.Rngs) -> Linear:
    return Linear(n_in, n_out, use_bias=cfg.bias, kernel_init=_normal(std),
                  dtype=dtype_of(cfg.dtype), param_dtype=dtype_of(cfg.param_dtype), rngs=rngs)


class Attention(nnx.Module):
    """Causal multi-head self-attention with ``n_kv_head`` key/value heads (GQA when fewer
    than ``n_head``). Queries, keys and values come from one fused projection."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.n_head, self.n_kv, self.head_dim = cfg.n_head, cfg.kv_heads, cfg.head_dim
        self.rope = cfg.positions == "rope"
        self.rope_theta = cfg.rope_theta
        width = (self.n_head + 2 * self.n_kv) * self.head_dim
        self.qkv = _linear(cfg, cfg.d_model, width, cfg.init_std, rngs)
        self.proj = _linear(cfg, self.n_head * self.head_dim, cfg.d_model,
                            cfg.init_std / math.sqrt(2 * cfg.n_layer), rngs)
        self.dropout = nnx.Dropout(cfg.dropout)

    def __call__(self, x: Array, positions: Array, mask: Array,
                 cache: tuple[Array, Array, Array | int, Array | None] | None = None,
                 cache_index: Array | int = 0,
                 dropout_key: Array | None = None, return_attention: bool = False):
        B, T, _ = x.shape
        H, KV, hd = self.n_head, self.n_kv, self.head_dim
        qkv = self.qkv(x)
        q = qkv[..., : H * hd].reshape(B, T, H, hd)
        k = qkv[..., H * hd: (H + KV) * hd].reshape(B, T, KV, hd)
        v = qkv[..., (H + KV) * hd:].reshape(B, T, KV, hd)
        if self.rope:
            cos, sin = rope_tables(positions, hd, self.rope_theta)
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        new_cache = None
        if cache is not None and cache[3] is not None:
            # Rolling cache (sliding window): attend to the S cached slots *and* the T new
            # keys (the mask, built from positions, says which are in the window), then keep
            # only the last min(T, S) new keys, in slots (index + j) % S.
            k_all, v_all, layer, slots = cache
            n = slots.shape[0]
            k, v = k.astype(k_all.dtype), v.astype(v_all.dtype)
            k_new, v_new = k, v
            k = jnp.concatenate([k_all[layer], k_new], axis=1)  # [B, S + T, KV, hd]
            v = jnp.concatenate([v_all[layer], v_new], axis=1)
            # Indexing [layer, :, slots] puts the slot axis first: [n, B, KV, hd].
            k_all = k_all.at[layer, :, slots].set(jnp.swapaxes(k_new[:, T - n:], 0, 1))
            v_all = v_all.at[layer, :, slots].set(jnp.swapaxes(v_new[:, T - n:], 0, 1))
            new_cache = (k_all, v_all)
        elif cache is not None:
            # The cache of *all* layers, [L, B, S, KV, hd], and this layer's index: writing
            # into the stacked arrays lets XLA update them in place inside a decode loop
            # (slicing out one layer and stacking the layers again would copy all of it).
            k_all, v_all, layer, _ = cache
            zero = jnp.zeros((), jnp.int32)
            start = (jnp.asarray(layer, jnp.int32), zero, jnp.asarray(cache_index, jnp.int32),
                     zero, zero)
            k_all = jax.lax.dynamic_update_slice(k_all, k.astype(k_all.dtype)[None], start)
            v_all = jax.lax.dynamic_update_slice(v_all, v.astype(v_all.dtype)[None], start)
            new_cache = (k_all, v_all)
            k, v = k_all[layer], v_all[layer]
        S = k.shape[1]
        G = H // KV
        q = q * (1.0 / math.sqrt(hd))
        # Scores [B, H, T, S]. With one key/value head per query head (G == 1) the einsums
        # stay four-dimensional: the grouped five-dimensional form below gives the same
        # numbers, but XLA:CPU spends about 7% more of a train step on transposes with it.
        if G == 1:
            scores = jnp.einsum("bthd,bshd->bhts", q, k, preferred_element_type=jnp.float32)
        else:  # grouped-query attention: query heads k*G ... k*G + G - 1 share kv head k
            scores = jnp.einsum("btkgd,bskd->bkgts", q.reshape(B, T, KV, G, hd), k,
                                preferred_element_type=jnp.float32).reshape(B, H, T, S)
        scores = jnp.where(mask[:, None, :, :], scores, jnp.finfo(jnp.float32).min)
        weights = jax.nn.softmax(scores, axis=-1)
        if dropout_key is not None:
            weights = self.dropout(weights, deterministic=False,
                                   rngs=jax.random.fold_in(dropout_key, 0))
        w = weights.astype(v.dtype)
        if G == 1:
            out = jnp.einsum("bhts,bshd->bthd", w, v)
        else:
            out = jnp.einsum("bkgts,bskd->btkgd", w.reshape(B, KV, G, T, S), v)
        out = self.proj(out.reshape(B, T, H * hd))
        attn = weights if return_attention else None
        return out, new_cache, attn


class MLP(nnx.Module):
    """Position-wise feed-forward network: GELU (GPT-2) or SwiGLU (LLaMA)."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.kind = cfg.mlp
        width = cfg.mlp_width * (2 if cfg.mlp == "swiglu" else 1)
        self.fc = _linear(cfg, cfg.d_model, width, cfg.init_std, rngs)
        self.proj = _linear(cfg, cfg.mlp_width, cfg.d_model,
                            cfg.init_std / math.sqrt(2 * cfg.n_layer), rngs)

    def __call__(self, x: Array) -> Array:
        h = self.fc(x)
        if self.kind == "swiglu":
            gate, up = jnp.split(h, 2, axis=-1)
            h = jax.nn.silu(gate) * up
        else:
            h = jax.nn.gelu(h, approximate=True)
        return self.proj(h)


def load_balancing_loss(router_logits: Array, top_idx: Array, n_experts: int) -> Array:
    """The Switch Transformer's auxiliary loss ``E * sum_i f_i * P_i`` (Fedus et al., 2021,
    eq. 4; the one Mixtral is trained with).

    ``f_i`` is the fraction of the token-to-expert assignments that went to expert ``i`` (the
    top-k choices of every token, so the ``f_i`` sum to 1) and ``P_i`` the mean router
    probability of expert ``i`` over all experts' softmax. Why this shape: ``f`` counts the
    load but has no gradient, ``P`` carries the gradient towards the overloaded experts. Its
    minimum is 1, reached when both are uniform (``1 / E``); a router that sends every token to
    the same ``k`` experts scores about ``E / k``. transformers' ``load_balancing_loss_func``
    normalises ``f`` by tokens instead of assignments, so its value is ``k`` times this one.

    ``router_logits`` is ``[N, E]``, ``top_idx`` the ``[N, k]`` experts chosen per token.
    """
    n, k = top_idx.shape
    counts = jnp.sum(jax.nn.one_hot(top_idx, n_experts, dtype=jnp.float32), axis=(0, 1))
    frac = counts / (n * k)
    mean_prob = jnp.mean(jax.nn.softmax(router_logits.astype(jnp.float32), axis=-1), axis=0)
    return n_experts * jnp.sum(frac * mean_prob)


class MoE(nnx.Module):
    """Mixture-of-experts MLP (Mixtral): a linear router picks ``experts_per_token`` of
    ``n_experts`` MLPs for each token and mixes their outputs with a softmax over the chosen
    experts' logits (equal to Mixtral's softmax over all experts renormalised to the top k).

    Each expert has the shape of :class:`MLP` (GELU or SwiGLU, biases if ``cfg.bias``); their
    weights are stacked along a leading expert axis (``w_in [E, d_model, width]``,
    ``w_out [E, d_mlp, d_model]``), which is the axis :mod:`jaxllm.sharding` splits.

    Why every expert runs on every token here: the course's MoE models are small, and a dense
    evaluation weighted by the (mostly zero) gates is exact (no token is ever dropped for lack
    of capacity, so every token gets the experts transformers gives it; tests/test_hub.py),
    deterministic, has static shapes, and shards like any einsum. It costs ``E / k`` times
    the MLP FLOPs of a sparse dispatch, which a large-scale implementation would avoid with
    grouped matrix products.
    Ties between router logits go to the lower expert index (``lax.top_k``).
    """

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        E, d, m = cfg.n_experts, cfg.d_model, cfg.mlp_width
        self.kind, self.n_experts, self.top_k = cfg.mlp, E, cfg.experts_per_token
        self.dtype = dtype_of(cfg.dtype)
        pdt = dtype_of(cfg.param_dtype)
        width = m * (2 if cfg.mlp == "swiglu" else 1)
        self.router = _linear(cfg.replace(bias=False), d, E, cfg.init_std, rngs)
        self.w_in = nnx.Param(_normal(cfg.init_std)(rngs.params(), (E, d, width), pdt))
        self.w_out = nnx.Param(_normal(cfg.init_std / math.sqrt(2 * cfg.n_layer))(
            rngs.params(), (E, m, d), pdt))
        self.use_bias = cfg.bias
        if cfg.bias:
            self.b_in = nnx.Param(jnp.zeros((E, width), pdt))
            self.b_out = nnx.Param(jnp.zeros((E, d), pdt))

    def __call__(self, x: Array) -> tuple[Array, tuple[Array, Array]]:
        """``(y, (aux_loss, counts))``: the output ``[B, T, d_model]``, the load-balancing
        loss of this call and the number of token assignments of each expert (int32 ``[E]``).
        """
        B, T, d = x.shape
        flat = x.reshape(B * T, d)  # [N, d]
        logits = self.router(flat).astype(jnp.float32)  # [N, E]
        top_logits, top_idx = jax.lax.top_k(logits, self.top_k)  # [N, k]
        gates = jax.nn.softmax(top_logits, axis=-1)  # [N, k]
        onehot = jax.nn.one_hot(top_idx, self.n_experts, dtype=jnp.float32)  # [N, k, E]
        combine = jnp.einsum("nk,nke->ne", gates, onehot)  # [N, E], k nonzero per row
        counts = jnp.sum(onehot, axis=(0, 1)).astype(jnp.int32)
        aux = load_balancing_loss(logits, top_idx, self.n_experts)

        dt = self.dtype
        h = jnp.einsum("nd,edf->enf", flat.astype(dt), self.w_in[...].astype(dt))
        if self.use_bias:
            h = h + self.b_in[...].astype(dt)[:, None, :]
        if self.kind == "swiglu":
            gate, up = jnp.split(h, 2, axis=-1)
            h = jax.nn.silu(gate) * up
        else:
            h = jax.nn.gelu(h, approximate=True)
        y = jnp.einsum("enf,efd->end", h, self.w_out[...].astype(dt))  # [E, N, d]
        if self.use_bias:
            y = y + self.b_out[...].astype(dt)[:, None, :]
        out = jnp.einsum("end,ne->nd", y, combine.astype(dt))
        return out.reshape(B, T, d), (aux, counts)


class Block(nnx.Module):
    """Pre-norm transformer block: ``x + attn(norm(x))`` then ``x + mlp(norm(x))``; the MLP
    is a :class:`MoE` when ``cfg.n_experts > 0``."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.norm1 = _norm(cfg, rngs)
        self.attn = Attention(cfg, rngs=rngs)
        self.norm2 = _norm(cfg, rngs)
        self.moe = cfg.n_experts > 0
        self.mlp = MoE(cfg, rngs=rngs) if self.moe else MLP(cfg, rngs=rngs)
        self.dropout = nnx.Dropout(cfg.dropout)

    def __call__(self, x, positions, mask, cache=None, cache_index=0, dropout_key=None,
                 return_attention=False):
        h, new_cache, attn = self.attn(self.norm1(x), positions, mask, cache, cache_index,
                                       dropout_key, return_attention)
        if dropout_key is not None:
            h = self.dropout(h, deterministic=False, rngs=jax.random.fold_in(dropout_key, 1))
        x = x + h
        stats = None
        if self.moe:
            h, stats = self.mlp(self.norm2(x))
        else:
            h = self.mlp(self.norm2(x))
        if dropout_key is not None:
            h = self.dropout(h, deterministic=False, rngs=jax.random.fold_in(dropout_key, 2))
        return x + h, new_cache, attn, stats


class GPT(nnx.Module):
    """Decoder-only transformer language model.

    Parameters are created from ``rngs`` (``nnx.Rngs(seed)`` or ``nnx.Rngs(params=key)``).
    With ``cfg.scan_layers`` the blocks are stored stacked (a leading layer axis) and applied
    with ``lax.scan``, which keeps compile time flat in depth; with ``cfg.remat`` each block's
    activations are recomputed in the backward pass instead of stored.
    """

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        pdt, cdt = dtype_of(cfg.param_dtype), dtype_of(cfg.dtype)
        self.wte = nnx.Embed(cfg.vocab_size, cfg.d_model, embedding_init=_normal(cfg.init_std),
                             dtype=cdt, param_dtype=pdt, rngs=rngs)
        if cfg.positions == "learned":
            self.wpe = nnx.Embed(cfg.context_length, cfg.d_model,
                                 embedding_init=_normal(cfg.init_std), dtype=cdt,
                                 param_dtype=pdt, rngs=rngs)
        self.drop = nnx.Dropout(cfg.dropout)
        if cfg.scan_layers:
            keys = jax.random.split(rngs.params(), cfg.n_layer)
            graphdef = nnx.graphdef(nnx.eval_shape(lambda: Block(cfg, rngs=nnx.Rngs(0))))
            states = jax.vmap(lambda k: nnx.state(Block(cfg, rngs=nnx.Rngs(params=k))))(keys)
            self.blocks = nnx.merge(graphdef, states)
        else:
            self.blocks = nnx.List([Block(cfg, rngs=rngs) for _ in range(cfg.n_layer)])
        self.norm_f = _norm(cfg, rngs)
        if not cfg.tie_embeddings:
            self.lm_head = Linear(cfg.d_model, cfg.vocab_size, use_bias=False,
                                  kernel_init=_normal(cfg.init_std), dtype=cdt,
                                  param_dtype=pdt, rngs=rngs)

    def __call__(self, tokens: Array, *, positions: Array | None = None,
                 valid: Array | None = None, cache: KVCache | None = None,
                 cache_index: Array | int = 0, dropout_key: Array | None = None,
                 return_attention: bool = False, return_aux: bool = False,
                 return_hidden: bool = False):
        """Logits ``[B, T, vocab]`` for ``tokens`` ``[B, T]``.

        Returns just the logits, or a tuple ``(logits, extras)`` when a cache is given,
        attention is asked for or ``return_aux`` is set; ``extras`` has ``"cache"``,
        ``"attention"`` (a list of ``[B, heads, T, S]`` arrays, one per layer; with a rolling
        cache ``S + T`` keys: the cached slots, then the new tokens) and, with
        ``return_aux``, ``"aux_loss"`` (float32 scalar: the load-balancing loss of
        :func:`load_balancing_loss` averaged over the layers, 0.0 for a dense model) and
        ``"expert_counts"`` (int32 ``[n_layer, n_experts]``: token assignments per expert in
        this call; ``[n_layer, 0]`` for a dense model) and, with ``return_hidden``, ``"hidden"``
        (``[B, T, d_model]``: the final-normed states the logits are read from, for heads such as
        a reward model's; under ``jit`` the unused logits are not computed).
        """
        cfg = self.cfg
        check_bool("return_aux", return_aux)
        check_bool("return_hidden", return_hidden)
        B, T = tokens.shape
        rolling = cache is not None and cache.pos is not None
        if cache is not None and (cfg.sliding_window is not None) != rolling:
            raise ValueError(
                "cache must come from init_cache(cfg, ...): a sliding-window model needs a "
                f"rolling cache (with positions), got sliding_window={cfg.sliding_window} "
                f"and a cache {'with' if rolling else 'without'} positions")
        S = T if cache is None else cache.k.shape[2]
        if cache is None and T > cfg.context_length:
            raise ValueError(
                f"tokens has length {T}, more than context_length={cfg.context_length}")
        q_slots = jnp.asarray(cache_index, jnp.int32) + jnp.arange(T, dtype=jnp.int32)
        write_slots = new_pos = None
        if rolling:
            if positions is None:
                positions = jnp.broadcast_to(q_slots[None, :], (B, T))
            mask, write_slots, new_pos = _rolling_mask(cache.pos, positions, valid, q_slots,
                                                       cfg.sliding_window)
        else:
            mask = jnp.arange(S, dtype=jnp.int32)[None, :] <= q_slots[:, None]  # [T, S]
            mask = jnp.broadcast_to(mask[None], (B, T, S))
            if valid is not None:
                mask = mask & valid[:, None, :].astype(bool)
            if positions is None:
                positions = jnp.broadcast_to(q_slots[None, :], (B, T))
            if cfg.sliding_window is not None:  # no cache: keys are these tokens
                mask = mask & (positions[:, :, None] - positions[:, None, :]
                               < cfg.sliding_window)
        x = self.wte(tokens)
        if cfg.positions == "learned":
            x = x + self.wpe(positions)
        if dropout_key is not None:
            x = self.drop(x, deterministic=False, rngs=jax.random.fold_in(dropout_key, 0))

        layer_keys = (None if dropout_key is None
                      else jax.random.split(jax.random.fold_in(dropout_key, 7), cfg.n_layer))
        x, new_cache, attn, stats = self._blocks(x, positions, mask, cache, cache_index,
                                                 layer_keys, return_attention, write_slots)
        x = self.norm_f(x)
        if cfg.tie_embeddings:  # as one [B * T, d_model] matrix product (see Linear)
            logits = self.wte.attend(x.reshape(B * T, -1)).reshape(B, T, -1)
        else:
            logits = self.lm_head(x)
        if cache is None and not return_attention and not return_aux and not return_hidden:
            return logits
        extras: dict[str, Any] = {}
        if return_hidden:
            extras["hidden"] = x
        if cache is not None:
            extras["cache"] = new_cache if new_pos is None else new_cache._replace(pos=new_pos)
        if return_attention:
            extras["attention"] = attn
        if return_aux:
            if stats is None:
                extras["aux_loss"] = jnp.zeros((), jnp.float32)
                extras["expert_counts"] = jnp.zeros((cfg.n_layer, 0), jnp.int32)
            else:
                extras["aux_loss"] = jnp.mean(stats[0]).astype(jnp.float32)
                extras["expert_counts"] = stats[1]
        return logits, extras

    def _blocks(self, x, positions, mask, cache, cache_index, layer_keys, return_attention,
                write_slots=None):
        cfg = self.cfg

        def run(block, x, layer_cache, key):
            y, c, a, st = block(constrain_batch(x), positions, mask, layer_cache, cache_index,
                                key, return_attention)
            return constrain_batch(y), c, a, st

        if cfg.scan_layers:
            graphdef, state = nnx.split(self.blocks)

            def body(carry, xs):
                x, kv = carry
                layer_state, key, layer = xs
                block = nnx.merge(graphdef, layer_state)
                y, c, a, st = run(block, x, None if kv is None else (*kv, layer, write_slots),
                                  key)
                return (y, c), (a, st)

            if cfg.remat:
                body = jax.checkpoint(body)
            kv = None if cache is None else (cache.k, cache.v)
            xs = (state, layer_keys, jnp.arange(cfg.n_layer, dtype=jnp.int32))
            (x, kv), (attn, stats) = jax.lax.scan(body, (x, kv), xs)
            new_cache = None if cache is None else KVCache(*kv)
            attn = None if attn is None else list(attn)
            return x, new_cache, attn, stats

        kv = None if cache is None else (cache.k, cache.v)
        attns, stats = [], []
        for i, block in enumerate(self.blocks):
            layer_cache = None if kv is None else (*kv, i, write_slots)
            key = None if layer_keys is None else layer_keys[i]
            if cfg.remat:
                graphdef, state = nnx.split(block)

                def fn(state, x, layer_cache, key, graphdef=graphdef):
                    return run(nnx.merge(graphdef, state), x, layer_cache, key)

                x, kv, a, st = jax.checkpoint(fn)(state, x, layer_cache, key)
            else:
                x, kv, a, st = run(block, x, layer_cache, key)
            attns.append(a)
            stats.append(st)
        new_cache = None if cache is None else KVCache(*kv)
        stacked = None
        if cfg.n_experts:  # [L] losses and [L, E] counts, like the scanned layers give
            stacked = (jnp.stack([st[0] for st in stats]), jnp.stack([st[1] for st in stats]))
        return x, new_cache, (attns if return_attention else None), stacked


def _rolling_mask(cache_pos: Array, positions: Array, valid: Array | None, q_slots: Array,
                  window: int) -> tuple[Array, Array, Array]:
    """Mask ``[B, T, S + T]`` of ``T`` new queries over a rolling cache of ``S`` slots followed
    by the ``T`` new keys, the cache slots the last ``min(T, S)`` new keys go to, and the
    cache's positions after the write.

    A cached key at position ``p`` is visible from a query at position ``t`` when the slot is
    filled (``p >= 0``) and ``t - window < p <= t``; a new key ``j`` when ``j <= t`` in this
    chunk, it is a real token (``valid``, ``[B, T]``) and it lies in the window.
    """
    B, T = positions.shape
    S = cache_pos.shape[1]
    new_valid = (jnp.ones((B, T), bool) if valid is None else valid.astype(bool))
    if new_valid.shape != (B, T):
        raise ValueError(f"valid must have shape {(B, T)} (the new tokens) with a rolling "
                         f"cache, got {new_valid.shape}")
    q = positions.astype(jnp.int32)[:, :, None]  # [B, T, 1]
    old = cache_pos[:, None, :]  # [B, 1, S]
    old_ok = (old >= 0) & (old <= q) & (q - old < window)
    new = positions.astype(jnp.int32)[:, None, :]  # [B, 1, T]
    order = jnp.arange(T)[None, :] <= jnp.arange(T)[:, None]  # [T, T]: key j <= query t
    new_ok = order[None] & new_valid[:, None, :] & (q - new < window)
    mask = jnp.concatenate([old_ok, new_ok], axis=-1)
    n = min(T, S)
    write_slots = (q_slots[T - n:]) % S
    written = jnp.where(new_valid, positions.astype(jnp.int32), -1)[:, T - n:]
    new_pos = cache_pos.at[:, write_slots].set(written)
    return mask, write_slots, new_pos


def count_params(cfg_or_preset: ModelConfig | str, *, active: bool = False) -> int:
    """Number of parameters of a model, computed with ``jax.eval_shape`` (nothing allocated).

    Accepts a :class:`ModelConfig` or a preset name such as ``"gpt2"`` or ``"llama2-70b"``.
    With ``active=True``, only the parameters one token uses: of each layer's ``n_experts``
    expert MLPs only ``experts_per_token`` count (the router, attention and embeddings all do),
    the figure Mixtral's "12.9B active" refers to. For a dense model both counts agree.
    """
    check_bool("active", active)
    if isinstance(cfg_or_preset, str):
        from .config import get_preset

        cfg = get_preset(cfg_or_preset).model
    elif isinstance(cfg_or_preset, ModelConfig):
        cfg = cfg_or_preset
    else:
        raise TypeError(
            f"cfg_or_preset must be a ModelConfig or a preset name, got {cfg_or_preset!r}")
    # Stacked (scanned) layers have the same parameters and trace one block instead of L.
    stacked = cfg.replace(scan_layers=True)
    shapes = jax.eval_shape(lambda: nnx.state(GPT(stacked, rngs=nnx.Rngs(0)), nnx.Param))
    total = 0
    for path, x in jax.tree_util.tree_flatten_with_path(shapes)[0]:
        size = math.prod(x.shape)
        names = [str(getattr(k, "key", getattr(k, "name", k))) for k in path]
        if active and "mlp" in names and any(n in names for n in _EXPERT_PARAMS):
            size = size // cfg.n_experts * cfg.experts_per_token
        total += size
    return total


#: Parameters of :class:`MoE` stacked along the expert axis (the router is not one of them).
_EXPERT_PARAMS = ("w_in", "w_out", "b_in", "b_out")


def flops_per_token(cfg: ModelConfig, context: int | None = None) -> float:
    """Training FLOPs per token (forward and backward), the PaLM paper's ``6N + 12 L T d``
    with N the non-embedding parameters a token uses (for a mixture of experts: its active
    experts, as a sparse dispatch would compute), plus the LM head's matmul."""
    T = cfg.context_length if context is None else context
    d, L = cfg.d_model, cfg.n_layer
    attn = d * (cfg.n_head + 2 * cfg.kv_heads) * cfg.head_dim + cfg.n_head * cfg.head_dim * d
    mlp = d * cfg.mlp_width * (3 if cfg.mlp == "swiglu" else 2)
    if cfg.n_experts:  # each token runs through its experts_per_token experts and the router
        mlp = mlp * cfg.experts_per_token + d * cfg.n_experts
    n = L * (attn + mlp)
    return 6.0 * (n + d * cfg.vocab_size) + 12.0 * L * T * d


def ablate_head(params: nnx.State, layer: int, head: int, head_dim: int) -> nnx.State:
    """A copy of a GPT's parameters in which the output of attention head ``head`` of block
    ``layer`` is multiplied by zero (its rows of the output projection are zeroed), the
    intervention that tests whether the model needs that head. ``params`` is unchanged."""
    blocks = params["blocks"]
    n_layer = len(blocks) if hasattr(blocks, "__len__") else None
    check_int("layer", layer, min=0, max=None if n_layer is None else n_layer - 1)
    check_int("head", head, min=0)
    check_int("head_dim", head_dim, min=1)
    kernel = params["blocks"][layer]["attn"]["proj"]["kernel"]
    if (head + 1) * head_dim > kernel.shape[0]:
        raise ValueError(f"head must be below {kernel.shape[0] // head_dim} heads of "
                         f"head_dim={head_dim}, got {head}")
    out = jax.tree.map(lambda a: a, params)  # a new tree; arrays are immutable
    target = out["blocks"][layer]["attn"]["proj"]["kernel"]
    target[...] = target[...].at[head * head_dim:(head + 1) * head_dim].set(0.0)
    return out
