"""Sampling: temperature, top-k and top-p, and a compiled decode loop with a KV cache.

:func:`generate` compiles the *whole* loop (prefill of the prompts, then one token per
iteration of a ``lax.while_loop``) into one XLA program. Per-call settings that are numbers
(temperature, top-k, top-p, the seed) are traced values, so changing them does not compile
again; shapes are static, and prompt lengths are rounded up to a multiple of
``PROMPT_BUCKET`` so that prompts of similar length share one compiled program.

Prompts of different lengths are left-padded; the model sees padding as masked slots and
gets positions that count only real tokens, so each row is decoded exactly as it would be
alone. When the longest sequence reaches the context length, the cache is rebuilt from the
last ``WINDOW_KEEP`` (three quarters) of the context and decoding continues: a sliding
window with an amortised re-prefill, rather than a re-computation of the whole context at
every token. The window slides for the whole batch at once, so beyond the context length a
shorter prompt in a batch can be cut earlier than it would be alone.

A sliding-window model (``cfg.sliding_window``, Mistral) decodes with its rolling cache of
``min(sliding_window, prompt + new tokens)`` slots instead (see :func:`jaxllm.model.init_cache`):
memory stays bounded by the window however long the generation, and nothing is re-prefilled
until the *positions* reach the context length.

:func:`generate_recompute` is the same loop without the cache (a full forward pass per
token), the reference against which the cache is measured.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from .model import GPT, init_cache
from .validate import check_callable, check_int, check_number, check_probability

PROMPT_BUCKET = 16
WINDOW_KEEP = 0.75

LogitsHook = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]


# -- distributions ------------------------------------------------------------------------

def softmax_with_temperature(logits: jax.Array, temperature: float) -> jax.Array:
    """Probabilities ``softmax(logits / temperature)`` over the last axis.

    Temperature 0 means greedy decoding: all mass on the largest logit. With one largest
    logit that is the limit as the temperature goes to zero. With several equal largest
    logits the limit would share the mass equally among them; taking the first of them is a
    convention (the one ``argmax`` follows), not that limit.
    """
    check_number("temperature", temperature, low=0.0)
    logits = jnp.asarray(logits, jnp.float32)
    if temperature == 0:
        return jax.nn.one_hot(jnp.argmax(logits, axis=-1), logits.shape[-1])
    return jax.nn.softmax(logits / temperature, axis=-1)


def top_k_filter(logits: jax.Array, k: int | jax.Array) -> jax.Array:
    """Keep the ``k`` largest logits of each row (ties at the threshold are kept too) and set
    the rest to ``-inf``. ``k <= 0`` keeps everything."""
    logits = jnp.asarray(logits, jnp.float32)
    V = logits.shape[-1]
    k = jnp.asarray(k, jnp.int32)
    kth = jnp.take_along_axis(jnp.sort(logits, axis=-1),
                              jnp.broadcast_to(jnp.clip(V - k, 0, V - 1), logits.shape[:-1])[
                                  ..., None], axis=-1)
    return jnp.where((k > 0) & (logits < kth), -jnp.inf, logits)


def top_p_filter(logits: jax.Array, p: float | jax.Array) -> jax.Array:
    """Nucleus filtering: keep the smallest set of most likely tokens whose probabilities
    sum to at least ``p`` (always at least the most likely one; ties at the threshold are
    kept), set the rest to ``-inf``. ``p >= 1`` keeps everything."""
    logits = jnp.asarray(logits, jnp.float32)
    order = jnp.sort(logits, axis=-1)[..., ::-1]
    probs = jax.nn.softmax(order, axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs  # mass of strictly more likely tokens
    n_keep = jnp.maximum(jnp.sum(before < p, axis=-1), 1)
    cutoff = jnp.take_along_axis(order, (n_keep - 1)[..., None], axis=-1)
    return jnp.where((p < 1.0) & (logits < cutoff), -jnp.inf, logits)


def sample_logits(key: jax.Array, logits: jax.Array, temperature: float | jax.Array = 1.0,
                  top_k: int | jax.Array = 0, top_p: float | jax.Array = 1.0) -> jax.Array:
    """Draw one token id per row of ``logits`` ``[..., V]``.

    The logits are divided by the temperature, then filtered by top-k, then by top-p (on the
    tempered distribution); temperature 0 returns the argmax. All three settings may be
    traced values. ``top_k=0`` and ``top_p=1`` switch those filters off.
    """
    logits = jnp.asarray(logits, jnp.float32)
    temperature = jnp.asarray(temperature, jnp.float32)
    top_k, top_p = jnp.asarray(top_k, jnp.int32), jnp.asarray(top_p, jnp.float32)
    scaled = logits / jnp.where(temperature > 0, temperature, 1.0)
    # Both filters sort the vocabulary; skip them (at run time, no recompilation) when off.
    scaled = jax.lax.cond((top_k > 0) | (top_p < 1.0),
                          lambda z: top_p_filter(top_k_filter(z, top_k), top_p),
                          lambda z: z, scaled)
    sampled = jax.random.categorical(key, scaled, axis=-1)
    return jnp.where(temperature > 0, sampled, jnp.argmax(logits, axis=-1)).astype(jnp.int32)


# -- the decode loop ----------------------------------------------------------------------

def _positions(valid: jax.Array) -> jax.Array:
    return jnp.maximum(jnp.cumsum(valid.astype(jnp.int32), axis=-1) - 1, 0)


def _prompt_pass(model: GPT, prompt: jax.Array, prompt_valid: jax.Array, cache_len: int):
    """Run the (left-padded) prompts through ``model`` into a new KV cache of ``cache_len``
    slots: the logits, the filled cache and which of its slots hold real tokens. A sliding-window
    model's rolling cache is masked by the positions it stores, so its validity starts empty and
    ``valid`` describes the new tokens only."""
    B, P = prompt.shape
    rolling = model.cfg.sliding_window is not None
    cache = init_cache(model.cfg, B, cache_len)
    cache_valid = jnp.zeros((B, cache.k.shape[2]), bool)
    if not rolling:
        cache_valid = cache_valid.at[:, :P].set(prompt_valid)
    logits, extras = model(prompt, positions=_positions(prompt_valid),
                           valid=prompt_valid if rolling else cache_valid,
                           cache=cache, cache_index=0)
    return logits, extras["cache"], cache_valid


@partial(jax.jit, static_argnames=("graphdef", "max_new_tokens", "cache_len", "hook"))
def _decode(graphdef, params, prompt, prompt_valid, key, temperature, top_k, top_p,
            stop_token, *, max_new_tokens: int, cache_len: int, hook: LogitsHook | None):
    model = nnx.merge(graphdef, params)
    cfg = model.cfg
    B, P = prompt.shape
    N = max_new_tokens
    S = cache_len
    ctx = cfg.context_length
    # A sliding-window model's rolling cache holds the last `S` tokens whatever the slot, and
    # is masked by the positions it stores; `valid` then describes the new tokens only.
    rolling = cfg.sliding_window is not None
    # Tokens kept when the window slides; never more than the buffers hold.
    keep = min(max(1, min(ctx - 1, int(ctx * WINDOW_KEEP))), P + N)
    if not rolling:
        keep = min(keep, S)

    buf = jnp.concatenate([prompt, jnp.zeros((B, N), jnp.int32)], axis=1)
    buf_valid = jnp.concatenate([prompt_valid, jnp.zeros((B, N), bool)], axis=1)

    logits, cache, cache_valid = _prompt_pass(model, prompt, prompt_valid, S)
    S = cache.k.shape[2]  # a rolling cache may be shorter than asked
    carry = dict(buf=buf, buf_valid=buf_valid, cache=cache, cache_valid=cache_valid,
                 slot=jnp.int32(P), limit=jnp.int32(S),
                 pos=jnp.sum(prompt_valid, axis=1).astype(jnp.int32),
                 logits=logits[:, -1].astype(jnp.float32), t=jnp.int32(0),
                 done=jnp.zeros((B,), bool), key=key)

    def cond(c):
        return (c["t"] < N) & ~jnp.all(c["done"])

    def body(c):
        key, sub = jax.random.split(c["key"])
        logits = c["logits"]
        if hook is not None:
            logits = hook(logits, c["buf"], P + c["t"])
        tok = sample_logits(sub, logits, temperature, top_k, top_p)
        tok = jnp.where(c["done"], 0, tok)
        idx = P + c["t"]
        buf = jax.lax.dynamic_update_slice(c["buf"], tok[:, None], (0, idx))
        buf_valid = jax.lax.dynamic_update_slice(c["buf_valid"], ~c["done"][:, None], (0, idx))
        done = c["done"] | (tok == stop_token)

        def step(_):
            if rolling:
                cache_valid, valid = c["cache_valid"], ~c["done"][:, None]
            else:
                cache_valid = jax.lax.dynamic_update_slice(
                    c["cache_valid"], ~c["done"][:, None], (0, c["slot"]))
                valid = cache_valid
            lg, ex = model(tok[:, None], positions=c["pos"][:, None], valid=valid,
                           cache=c["cache"], cache_index=c["slot"])
            return lg[:, -1].astype(jnp.float32), ex["cache"], cache_valid, c["slot"] + 1, \
                c["pos"] + (~c["done"]).astype(jnp.int32)

        def shift(_):
            # The cache is full: rebuild it from the last `keep` tokens (this one included).
            window = jax.lax.dynamic_slice(buf, (0, idx + 1 - keep), (B, keep))
            wvalid = jax.lax.dynamic_slice(buf_valid, (0, idx + 1 - keep), (B, keep))
            cache_valid = jnp.zeros((B, S), bool)
            if not rolling:
                cache_valid = cache_valid.at[:, :keep].set(wvalid)
            lg, ex = model(window, positions=_positions(wvalid),
                           valid=wvalid if rolling else cache_valid,
                           cache=init_cache(cfg, B, S), cache_index=0)
            return lg[:, -1].astype(jnp.float32), ex["cache"], cache_valid, jnp.int32(keep), \
                jnp.sum(wvalid, axis=1).astype(jnp.int32)

        # A rolling cache never fills: only the positions are bounded (by the context).
        room = jnp.max(c["pos"]) < ctx if rolling else c["slot"] < c["limit"]
        logits, cache, cache_valid, slot, pos = jax.lax.cond(room, step, shift, None)
        # Before the first slide, left padding occupies `P - longest` extra slots; after it,
        # the window holds real tokens only, and the context length is the limit.
        limit = jnp.where(c["slot"] < c["limit"], c["limit"], jnp.int32(ctx))
        return dict(buf=buf, buf_valid=buf_valid, cache=cache, cache_valid=cache_valid,
                    slot=slot, limit=limit, pos=pos, logits=logits, t=c["t"] + 1, done=done,
                    key=key)

    c = jax.lax.while_loop(cond, body, carry)
    return c["buf"][:, P:], c["buf_valid"][:, P:]


def _check_prompts(prompts: Any, vocab_size: int, context_length: int) -> list[list[int]]:
    if isinstance(prompts, np.ndarray | jax.Array):
        prompts = np.asarray(prompts).tolist()
    if not isinstance(prompts, Sequence) or isinstance(prompts, str) or not prompts:
        raise ValueError(f"prompts must be a non-empty list of token-id lists, got {prompts!r}")
    if all(isinstance(t, int | np.integer) for t in prompts):
        prompts = [prompts]
    out = []
    for i, p in enumerate(prompts):
        if isinstance(p, str) or not isinstance(p, Sequence) or len(p) == 0:
            raise ValueError(f"prompts[{i}] must be a non-empty list of token ids, got {p!r}")
        if len(p) > context_length:
            raise ValueError(f"prompts[{i}] has {len(p)} tokens, more than the model's "
                             f"context_length={context_length}")
        bad = [t for t in p if isinstance(t, bool) or not isinstance(t, int | np.integer)
               or not 0 <= t < vocab_size]
        if bad:
            raise ValueError(f"prompts[{i}] holds token ids outside [0, {vocab_size}): "
                             f"{bad[:5]}")
        out.append([int(t) for t in p])
    return out


def decode_cache_length(cfg: Any, padded: int, longest: int, max_new_tokens: int) -> int:
    """Slots of the KV cache :func:`generate` decodes with, for prompts left-padded to
    ``padded`` tokens (the longest has ``longest``) and ``max_new_tokens`` new tokens.

    The longest prompt may use the whole context before the window first slides. A
    sliding-window model needs no more than its window, however many tokens are generated:
    its rolling cache overwrites the oldest slot (see :func:`jaxllm.model.init_cache`).
    """
    length = min(padded + max_new_tokens, cfg.context_length + padded - longest)
    if cfg.sliding_window is not None:
        length = min(length, cfg.sliding_window)
    return length


def generate(model: GPT, prompts: Sequence[Sequence[int]] | Sequence[int],
             max_new_tokens: int, *, temperature: float = 1.0, top_k: int | None = None,
             top_p: float | None = None, stop_token: int | None = None, seed: int = 0,
             key: jax.Array | None = None,
             logits_hook: LogitsHook | None = None) -> list[list[int]]:
    """Continue each prompt by up to ``max_new_tokens`` tokens.

    ``prompts`` is a list of token-id lists (or one list). Returns the new tokens of each
    prompt, cut before the first ``stop_token``. Randomness comes from ``key`` if given,
    else from ``jax.random.key(seed)``. ``logits_hook(logits [B, V], tokens [B, P + N],
    length)`` may edit the logits before each draw (``tokens[:, :length]`` are the prompt,
    left-padded to ``P``, and the tokens generated so far); it must be a hashable function
    (it is part of the compiled program).
    """
    cfg = model.cfg
    prompts = _check_prompts(prompts, cfg.vocab_size, cfg.context_length)
    check_int("max_new_tokens", max_new_tokens, min=1)
    check_number("temperature", temperature, low=0.0)
    check_int("top_k", top_k, min=1, max=cfg.vocab_size, none_ok=True)
    check_probability("top_p", top_p, none_ok=True)
    check_int("stop_token", stop_token, min=0, max=cfg.vocab_size - 1, none_ok=True)
    if key is None:
        key = jax.random.key(check_int("seed", seed))
    check_callable("logits_hook", logits_hook, none_ok=True)

    B = len(prompts)
    longest = max(len(p) for p in prompts)
    P = min(cfg.context_length, -(-longest // PROMPT_BUCKET) * PROMPT_BUCKET)
    tokens = np.zeros((B, P), np.int32)
    valid = np.zeros((B, P), bool)
    for i, p in enumerate(prompts):
        tokens[i, P - len(p):] = p
        valid[i, P - len(p):] = True
    cache_len = decode_cache_length(cfg, P, longest, max_new_tokens)
    graphdef, params = nnx.split(model)
    out, out_valid = _decode(
        graphdef, params, jnp.asarray(tokens), jnp.asarray(valid), key,
        jnp.float32(temperature), jnp.int32(top_k or 0), jnp.float32(top_p or 1.0),
        jnp.int32(-1 if stop_token is None else stop_token),
        max_new_tokens=max_new_tokens, cache_len=cache_len, hook=logits_hook)
    out, out_valid = np.asarray(out), np.asarray(out_valid)
    results = []
    for row, ok in zip(out, out_valid, strict=True):
        toks = row[ok].tolist()
        if stop_token is not None and stop_token in toks:
            toks = toks[: toks.index(stop_token)]
        results.append(toks)
    return results


@partial(jax.jit, static_argnames=("graphdef",))
def _recompute(graphdef, params, buf, prompt_len, new_tokens, key, temperature):
    # `buf` [B, max(P + N, T)] holds the prompt in its first `prompt_len` slots. Lengths are
    # traced values: every call with the same buffer shape (all sequences that fit in the
    # context) reuses one compiled program.
    model = nnx.merge(graphdef, params)
    T = model.cfg.context_length
    B = buf.shape[0]

    def body(i, carry):
        buf, key = carry
        length = prompt_len + i                   # tokens so far
        start = jnp.maximum(length - T, 0)        # crop to the last T tokens
        window = jax.lax.dynamic_slice(buf, (0, start), (B, T))
        logits = model(window)                    # [B, T, V]: the full forward
        last = jax.lax.dynamic_index_in_dim(logits, length - start - 1, axis=1,
                                            keepdims=False)
        key, sub = jax.random.split(key)
        tok = sample_logits(sub, last, temperature)
        return jax.lax.dynamic_update_slice(buf, tok[:, None], (0, length)), key

    buf, _ = jax.lax.fori_loop(0, new_tokens, body, (buf, key))
    return buf


def generate_recompute(model: GPT, prompts: Sequence[Sequence[int]] | Sequence[int],
                       max_new_tokens: int, *, temperature: float = 1.0, seed: int = 0,
                       key: jax.Array | None = None) -> list[list[int]]:
    """:func:`generate` without a KV cache: the reference that shows what the cache saves.

    The textbook loop, compiled into one ``lax.fori_loop``: at every step the whole window of
    ``context_length`` token slots goes through the model (right-padded while the sequence is
    shorter: causal attention makes the padding invisible to the position that is read;
    cropped to the last ``context_length`` tokens once it is longer) and the last real
    position's logits are sampled with :func:`sample_logits`. The work per token is therefore
    one full forward pass, whatever the length so far. All prompts must have the same length
    (there is no left padding here); no top-k, top-p or stop token. Greedy decoding
    (``temperature=0``) gives the same tokens as :func:`generate` while the sequence fits in
    the context (beyond it the two slide their windows differently). While prompt and new
    tokens fit in the context, all lengths share one compiled program.
    """
    cfg = model.cfg
    prompts = _check_prompts(prompts, cfg.vocab_size, cfg.context_length)
    if len({len(p) for p in prompts}) != 1:
        raise ValueError("prompts must all have the same length for generate_recompute, got "
                         f"lengths {sorted({len(p) for p in prompts})}")
    check_int("max_new_tokens", max_new_tokens, min=1)
    check_number("temperature", temperature, low=0.0)
    if key is None:
        key = jax.random.key(check_int("seed", seed))
    B, P = len(prompts), len(prompts[0])
    buf = np.zeros((B, max(P + max_new_tokens, cfg.context_length)), np.int32)
    buf[:, :P] = prompts
    graphdef, params = nnx.split(model)
    out = _recompute(graphdef, params, jnp.asarray(buf), jnp.int32(P),
                     jnp.int32(max_new_tokens), key, jnp.float32(temperature))
    return np.asarray(out)[:, P:P + max_new_tokens].tolist()


def generate_text(model: GPT, tokenizer: Any, prompt: str, max_new_tokens: int,
                  **kwargs: Any) -> str:
    """Encode ``prompt``, :func:`generate` a continuation and decode it (prompt excluded)."""
    if not isinstance(prompt, str) or not prompt:
        raise ValueError(f"prompt must be a non-empty string, got {prompt!r}")
    ids = tokenizer.encode(prompt)
    return tokenizer.decode(generate(model, [ids], max_new_tokens, **kwargs)[0])


# -- host-driven decoding: one compiled call per token --------------------------------------
#
# `generate` keeps the whole loop on the device, which is fastest but gives nothing back
# until the end. A server needs three things that loop cannot do: send each token as soon as
# it exists (streaming), drop a row whose client went away, and ask a host-side grammar
# matcher (llguidance, a Rust library that runs on the CPU) which tokens may come next. A
# logits hook is traced into the compiled program, so it cannot call such a matcher; a
# `jax.pure_callback` could, but would stop the device at every token anyway. `Stepper`
# therefore compiles one *step* (sample a token under a mask, feed it through the model with
# the KV cache) and the Python loop around it runs on the host.


def unpack_bitmask(bitmask: jax.Array, vocab_size: int) -> jax.Array:
    """Allowed tokens ``[B, V]`` (bool) from a packed bitmask ``[B, ceil(V / 32)]`` (int32,
    bit ``i % 32`` of word ``i // 32`` set when token ``i`` is allowed): llguidance's layout,
    which is 32 times smaller to copy to the device than a boolean mask."""
    ids = jnp.arange(vocab_size)
    words = jnp.asarray(bitmask, jnp.int32)[:, ids // 32]
    return ((words >> (ids % 32)) & 1).astype(bool)


@partial(jax.jit, static_argnames=("graphdef", "cache_len"))
def _prefill(graphdef, params, prompt, prompt_valid, *, cache_len: int):
    model = nnx.merge(graphdef, params)
    P = prompt.shape[1]
    logits, cache, cache_valid = _prompt_pass(model, prompt, prompt_valid, cache_len)
    return dict(cache=cache, cache_valid=cache_valid, slot=jnp.int32(P),
                pos=jnp.sum(prompt_valid, axis=1).astype(jnp.int32),
                logits=logits[:, -1].astype(jnp.float32))


@partial(jax.jit, static_argnames=("graphdef",), donate_argnames=("state",))
def _step(graphdef, params, state, bitmask, active, seeds, t, temperature, top_k, top_p):
    model = nnx.merge(graphdef, params)
    V = model.cfg.vocab_size
    rolling = model.cfg.sliding_window is not None
    logits = jnp.where(unpack_bitmask(bitmask, V), state["logits"], -jnp.inf)
    # One key per row from the row's own seed and step: a request draws the same tokens
    # whichever other requests share its batch.
    keys = jax.vmap(lambda s: jax.random.fold_in(jax.random.key(s), t))(seeds)
    tok = jax.vmap(sample_logits)(keys, logits, temperature, top_k, top_p)
    tok = jnp.where(active, tok, 0)
    if rolling:
        cache_valid, valid = state["cache_valid"], active[:, None]
    else:
        cache_valid = jax.lax.dynamic_update_slice(state["cache_valid"], active[:, None],
                                                   (0, state["slot"]))
        valid = cache_valid
    lg, ex = model(tok[:, None], positions=state["pos"][:, None], valid=valid,
                   cache=state["cache"], cache_index=state["slot"])
    return tok, dict(cache=ex["cache"], cache_valid=cache_valid, slot=state["slot"] + 1,
                     pos=state["pos"] + active.astype(jnp.int32),
                     logits=lg[:, -1].astype(jnp.float32))


class Stepper:
    """Decode a batch of prompts one token per :meth:`step`, driven from the host.

    Each row has its own temperature, top-k (0: off), top-p (1: off) and seed; each step
    takes an optional packed bitmask of allowed tokens per row (see :func:`unpack_bitmask`)
    and the rows still active (an inactive row's token is ignored and does not enter its
    cache). Prompts are left-padded to a multiple of ``PROMPT_BUCKET`` and the batch may be
    padded with ``pad_rows`` inactive rows, so that few shapes are compiled. Unlike
    :func:`generate` there is no sliding window: every prompt plus ``max_new_tokens`` must fit
    in the context.
    """

    def __init__(self, model: GPT, prompts: Sequence[Sequence[int]], max_new_tokens: int, *,
                 temperature: Sequence[float], top_k: Sequence[int], top_p: Sequence[float],
                 seeds: Sequence[int], pad_rows: int = 0) -> None:
        cfg = model.cfg
        prompts = _check_prompts(prompts, cfg.vocab_size, cfg.context_length)
        check_int("max_new_tokens", max_new_tokens, min=1)
        check_int("pad_rows", pad_rows, min=0)
        n = len(prompts)
        for name, values in (("temperature", temperature), ("top_k", top_k), ("top_p", top_p),
                             ("seeds", seeds)):
            if len(values) != n:
                raise ValueError(f"{name} must have one value per prompt ({n}); got "
                                 f"{len(values)}")
        longest = max(len(p) for p in prompts)
        if longest + max_new_tokens > cfg.context_length:
            raise ValueError(f"a prompt of {longest} tokens plus max_new_tokens="
                             f"{max_new_tokens} exceeds the context_length="
                             f"{cfg.context_length}")
        B = n + pad_rows
        P = -(-longest // PROMPT_BUCKET) * PROMPT_BUCKET
        tokens = np.zeros((B, P), np.int32)
        valid = np.zeros((B, P), bool)
        for i, p in enumerate(prompts):
            tokens[i, P - len(p):] = p
            valid[i, P - len(p):] = True
        valid[n:, -1] = True  # padding rows: one dummy token, never active
        # Cache slots rounded up to a multiple of 128: fewer step programs to compile.
        S = -(-(P + max_new_tokens) // 128) * 128
        self.vocab_size = cfg.vocab_size
        self.batch_size = B
        self.max_new_tokens = max_new_tokens
        self.t = 0
        self._graphdef, self._params = nnx.split(model)
        pad = [0] * pad_rows
        self._temperature = jnp.asarray([*temperature, *pad], jnp.float32)
        self._top_k = jnp.asarray([*top_k, *pad], jnp.int32)
        self._top_p = jnp.asarray([*top_p, *([1.0] * pad_rows)], jnp.float32)
        self._seeds = jnp.asarray([int(s) % (2**31) for s in seeds] + pad, jnp.int32)
        self._state = _prefill(self._graphdef, self._params, jnp.asarray(tokens),
                               jnp.asarray(valid), cache_len=S)
        # Unconstrained steps reuse one all-allowed mask already on the device.
        self._all = jnp.full((B, (cfg.vocab_size + 31) // 32), -1, jnp.int32)

    def step(self, active: Sequence[bool], bitmask: np.ndarray | None = None) -> np.ndarray:
        """Sample one token for each row (``0`` for inactive rows) and advance the cache.
        ``active`` has one flag per real row (padding rows are inactive)."""
        if self.t >= self.max_new_tokens:
            raise ValueError(f"Stepper: all max_new_tokens={self.max_new_tokens} steps taken")
        flags = np.zeros(self.batch_size, bool)
        flags[: len(active)] = active
        mask = self._all if bitmask is None else jnp.asarray(bitmask)
        tok, self._state = _step(self._graphdef, self._params, self._state, mask,
                                 jnp.asarray(flags), self._seeds, jnp.int32(self.t),
                                 self._temperature, self._top_k, self._top_p)
        self.t += 1
        return np.asarray(tok)
