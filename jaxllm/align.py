"""Alignment: supervised fine-tuning, a Bradley–Terry reward model, RL with a KL penalty, DPO
and AI feedback from a judge that reads a principle (chapter 11.4).

Everything here is generic: it works for any :class:`jaxllm.model.GPT` and any tokenizer that
knows the chat format's special tokens (:mod:`jaxllm.chat`). What a "good" answer is comes from
outside, as a *labeller*: a callable ``labeller(prompt, response) -> float`` where ``prompt`` is
a list of chat messages and ``response`` the assistant's text. The course world
(:mod:`jaxllm.world`) supplies its hidden labeller; tests use toy ones. Nothing here imports the
world.

The pieces, in the order of the textbook's pipeline:

* **SFT** — :func:`sft_examples` / :func:`sft_batches` turn conversations into padded ids with
  the loss mask on the assistant's tokens; :func:`sft` fine-tunes through
  :class:`jaxllm.train.Trainer` (the masked next-token loss of :mod:`jaxllm.losses`).
* **Preferences** — :class:`PreferencePair`; :func:`sample_responses` draws a policy's own
  answers with :func:`jaxllm.sample.generate`; :func:`label_pairs` asks a labeller which of two
  answers is better, flipping a seeded fraction of the labels (label noise, as human raters
  disagree); :func:`preference_pairs` does both.
* **Reward model** — :class:`RewardModel`: the GPT trunk with a scalar head that reads the last
  real token; :func:`train_reward_model` minimises the Bradley–Terry loss
  (:func:`jaxllm.losses.pairwise_reward_loss`); :func:`pairwise_accuracy`.
* **RL** — :func:`rl_finetune`: REINFORCE with a leave-one-out (RLOO) group baseline, the reward
  being the reward model's score minus ``beta`` times the sampled KL to a frozen reference;
  it records reward, KL and an optional hidden score per step. :func:`sampled_kl` measures any
  model's KL to a reference from its samples, :func:`win_rate` compares two models' replies
  by a labeller.
* **DPO** — :func:`dpo`: the same pairs, no reward model (reference log-probabilities computed
  once, prompt and padding masked out).
* **AI feedback** — :func:`judge_examples`, :func:`train_judge`, :func:`judge_labeller`: a
  small judge model reads ``principle + prompt + response`` and says whether the response
  follows the principle; summed over a constitution it is a labeller, so :func:`label_pairs`
  turns it into preference labels; :func:`agreement` measures it against another labeller.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from .chat import check_messages, decode_reply, encode_chat, end_id
from .config import ModelConfig, TrainConfig
from .data import ExampleBatches
from .losses import (
    Metrics,
    dpo_objective,
    next_token_loss,
    pairwise_reward_loss,
    policy_gradient_loss,
    sequence_logprobs,
    token_logprobs,
)
from .model import GPT
from .sample import generate
from .train import Trainer
from .validate import check_callable, check_int, check_number

__all__ = [
    "JudgeExample", "Labeller", "PreferencePair", "Principle", "RLResult", "RewardModel",
    "agreement", "dpo", "dpo_batches", "judge_examples", "judge_labeller", "judge_loss",
    "label_pairs", "pair_examples", "pairwise_accuracy", "preference_pairs",
    "reference_logprobs", "reward_loss", "reward_scores", "rl_finetune", "rloo_advantages",
    "rloo_loss", "sample_responses", "sampled_kl", "sft", "sft_batches", "sft_examples",
    "train_judge", "train_reward_model", "win_rate",
]

Messages = list[dict[str, str]]
#: ``labeller(prompt_messages, response_text) -> score``: higher is better.
Labeller = Callable[[Messages, str], float]

PAD_MULTIPLE = 8  # sequence lengths are rounded up to this, so few shapes get compiled


# -- small helpers -------------------------------------------------------------------------------

def _as_messages(prompt: Any, where: str) -> Messages:
    """A prompt as chat messages: a string is one user message."""
    if isinstance(prompt, str):
        prompt = [{"role": "user", "content": prompt}]
    msgs = check_messages(prompt, where=where)
    if msgs[-1]["role"] == "assistant":
        raise ValueError(f"{where} must end with a user (or system) message, not an "
                         "assistant's: the response is what follows it")
    return msgs


def _padded_length(longest: int, limit: int, what: str) -> int:
    if longest > limit:
        raise ValueError(f"{what} has {longest} tokens, more than the {limit} allowed by the "
                         "model's context_length; shorten it or use a longer context")
    return min(limit, -(-longest // PAD_MULTIPLE) * PAD_MULTIPLE)


def _check_model(name: str, model: Any, kind: type = GPT) -> Any:
    if not isinstance(model, kind):
        raise TypeError(f"{name} must be a jaxllm {kind.__name__}, got {type(model).__name__}")
    return model


def _train_config(steps: int, batch_size: int, learning_rate: float, seed: int,
                  warmup_steps: int | None = None) -> TrainConfig:
    steps = check_int("steps", steps, min=1)
    warmup = min(steps // 10, 20) if warmup_steps is None else warmup_steps
    lr = check_number("learning_rate", learning_rate, low=0.0, low_open=True)
    return TrainConfig(steps=steps, batch_size=check_int("batch_size", batch_size, min=1),
                       learning_rate=lr, min_learning_rate=lr / 10, warmup_steps=warmup,
                       weight_decay=0.0, eval_interval=max(1, steps // 10), eval_batches=1,
                       seed=check_int("seed", seed, min=0))


def _copy(model: nnx.Module) -> nnx.Module:
    """An independent copy (no shared buffers: trainers donate theirs)."""
    graphdef, state = nnx.split(model)
    return nnx.merge(graphdef, jax.tree.map(jnp.copy, state))


# -- SFT -----------------------------------------------------------------------------------------

def sft_examples(tokenizer: Any, conversations: Sequence[Sequence[Mapping[str, str]]],
                 context_length: int) -> dict[str, np.ndarray]:
    """Padded arrays for supervised fine-tuning: ``inputs`` and ``targets`` (int32
    ``[N, L]``, ``targets`` shifted by one) and ``mask`` (true where the *target* is an
    assistant token: its text and its ``<|end|>``). ``L`` is the longest conversation minus
    one, rounded up to a multiple of 8 and at most ``context_length``; a longer conversation
    raises. Padding (id 0) is never counted."""
    if isinstance(conversations, (str, Mapping)) or not isinstance(conversations, Sequence) \
            or not conversations:
        raise ValueError("conversations must be a non-empty list of conversations (lists of "
                         f"messages), got {type(conversations).__name__}")
    check_int("context_length", context_length, min=1)
    encoded = [encode_chat(tokenizer, c) for c in conversations]
    for i, enc in enumerate(encoded):
        if not any(enc.assistant_mask):
            raise ValueError(f"conversations[{i}] has no assistant message: nothing to learn")
    L = _padded_length(max(len(e.ids) for e in encoded) - 1, context_length,
                       "the longest conversation (minus one)")
    N = len(encoded)
    ids = np.zeros((N, L + 1), np.int32)
    mask = np.zeros((N, L + 1), bool)
    for i, enc in enumerate(encoded):
        ids[i, :len(enc.ids)] = enc.ids
        mask[i, :len(enc.ids)] = enc.assistant_mask
    return {"inputs": ids[:, :-1], "targets": ids[:, 1:], "mask": mask[:, 1:]}


def sft_batches(tokenizer: Any, conversations: Sequence[Sequence[Mapping[str, str]]],
                batch_size: int, context_length: int, seed: int = 0, shuffle: bool = True
                ) -> ExampleBatches:
    """A batch source of :func:`sft_examples` for :class:`jaxllm.train.Trainer`, whose default
    loss (:func:`jaxllm.losses.next_token_loss`) then counts the assistant's tokens only."""
    return ExampleBatches(sft_examples(tokenizer, conversations, context_length), batch_size,
                          seed, shuffle)


def sft(model: GPT, tokenizer: Any, conversations: Sequence[Sequence[Mapping[str, str]]], *,
        steps: int = 200, batch_size: int = 16, learning_rate: float = 3e-4, seed: int = 0,
        val_conversations: Sequence[Sequence[Mapping[str, str]]] | None = None,
        progress: bool = False) -> Trainer:
    """Fine-tune a copy of ``model`` on ``conversations`` with the loss on the assistant's
    tokens only; returns the :class:`~jaxllm.train.Trainer` (``.model``, ``.history``; with
    ``val_conversations`` the history has ``val_loss``). ``model`` is left unchanged."""
    _check_model("model", model)
    ctx = model.cfg.context_length
    train = sft_batches(tokenizer, conversations, batch_size, ctx, seed)
    val = None
    if val_conversations is not None:
        val = sft_batches(tokenizer, val_conversations, batch_size, ctx, seed + 1, False)
    trainer = Trainer(model.cfg, _train_config(steps, batch_size, learning_rate, seed), train,
                      val, loss_fn=next_token_loss, model=_copy(model))
    trainer.fit(progress=progress)
    return trainer


# -- preference pairs ----------------------------------------------------------------------------

@dataclass(frozen=True)
class PreferencePair:
    """Two responses to one prompt, ``chosen`` preferred to ``rejected`` by a labeller.
    ``scores`` are the labeller's scores of (chosen, rejected) when known; with label noise
    the chosen one can have the lower score (``flipped`` says so)."""

    prompt: tuple[dict[str, str], ...]
    chosen: str
    rejected: str
    scores: tuple[float, float] | None = None
    flipped: bool = False

    def __post_init__(self) -> None:
        prompt = self.prompt if isinstance(self.prompt, str) else list(self.prompt)
        object.__setattr__(self, "prompt", tuple(_as_messages(prompt, "prompt")))
        for name in ("chosen", "rejected"):
            if not isinstance(getattr(self, name), str):
                raise TypeError(f"{name} must be a str, got {type(getattr(self, name)).__name__}")

    @property
    def messages(self) -> Messages:
        return [dict(m) for m in self.prompt]


def _check_pairs(pairs: Any) -> list[PreferencePair]:
    if isinstance(pairs, PreferencePair) or not isinstance(pairs, Sequence) or not pairs:
        raise ValueError(f"pairs must be a non-empty list of PreferencePair, got {pairs!r:.80}")
    for i, p in enumerate(pairs):
        if not isinstance(p, PreferencePair):
            raise TypeError(f"pairs[{i}] must be a PreferencePair, got {type(p).__name__}")
    return list(pairs)


def sample_responses(policy: GPT, tokenizer: Any, prompts: Sequence[Any], n: int, *,
                     key: jax.Array, max_new_tokens: int = 32, temperature: float = 1.0,
                     batch_size: int = 64) -> list[list[str]]:
    """``n`` sampled replies of ``policy`` to each prompt (a string or chat messages), as text,
    drawn with :func:`jaxllm.sample.generate` from ``key`` (batches of ``batch_size``
    sequences, each batch from ``fold_in(key, batch)``)."""
    _check_model("policy", policy)
    n = check_int("n", n, min=1)
    check_int("batch_size", batch_size, min=1)
    msgs = [_as_messages(p, f"prompts[{i}]") for i, p in enumerate(prompts)]
    if not msgs:
        raise ValueError("prompts must be a non-empty list")
    ids = [encode_chat(tokenizer, m, add_generation_prompt=True).ids for m in msgs]
    flat = [p for p in ids for _ in range(n)]
    out: list[str] = []
    for b, start in enumerate(range(0, len(flat), batch_size)):
        new = generate(policy, flat[start:start + batch_size], max_new_tokens,
                       temperature=temperature, stop_token=end_id(tokenizer),
                       key=jax.random.fold_in(key, b))
        out += [decode_reply(tokenizer, t)[0] for t in new]
    return [out[i * n:(i + 1) * n] for i in range(len(msgs))]


def label_pairs(prompts: Sequence[Any], responses: Sequence[Sequence[str]], labeller: Labeller,
                *, noise: float = 0.0, pairs_per_prompt: int = 1, seed: int = 0
                ) -> list[PreferencePair]:
    """Preference pairs from candidate responses: for each prompt, ``pairs_per_prompt`` pairs
    of two different responses drawn at random; the labeller's higher score is ``chosen``, and
    with probability ``noise`` the label is flipped (a rater's mistake; the noise ceiling of any
    model's agreement with these labels is ``1 - noise``). Ties and identical texts are skipped:
    they carry no preference. Deterministic in ``seed``."""
    check_callable("labeller", labeller)
    # At 0.5 the labels would carry no information.
    noise = check_number("noise", noise, low=0.0, high=0.5, high_open=True)
    check_int("pairs_per_prompt", pairs_per_prompt, min=1)
    check_int("seed", seed, min=0)
    if len(prompts) != len(responses):
        raise ValueError(f"prompts and responses must have the same length, got {len(prompts)} "
                         f"and {len(responses)}")
    rng = np.random.default_rng(seed)
    pairs = []
    for i, (prompt, cands) in enumerate(zip(prompts, responses, strict=True)):
        msgs = _as_messages(prompt, f"prompts[{i}]")
        distinct = list(dict.fromkeys(cands))
        if len(distinct) < 2:
            continue
        scores = {r: float(labeller(msgs, r)) for r in distinct}
        for _ in range(pairs_per_prompt):
            a, b = rng.choice(len(distinct), size=2, replace=False)
            ra, rb = distinct[a], distinct[b]
            flip = bool(rng.random() < noise)
            if scores[ra] == scores[rb]:
                continue
            good, bad = (ra, rb) if scores[ra] > scores[rb] else (rb, ra)
            if flip:
                good, bad = bad, good
            pairs.append(PreferencePair(tuple(msgs), good, bad, (scores[good], scores[bad]),
                                        flip))
    return pairs


def preference_pairs(policy: GPT, tokenizer: Any, prompts: Sequence[Any], labeller: Labeller,
                     *, key: jax.Array, samples: int = 4, pairs_per_prompt: int = 1,
                     noise: float = 0.0, seed: int = 0, max_new_tokens: int = 32,
                     temperature: float = 1.0) -> list[PreferencePair]:
    """Pairs from the policy's own samples (``samples`` per prompt, drawn from ``key``),
    labelled by ``labeller`` with label noise ``noise`` (:func:`label_pairs`)."""
    responses = sample_responses(policy, tokenizer, prompts, samples, key=key,
                                 max_new_tokens=max_new_tokens, temperature=temperature)
    return label_pairs(prompts, responses, labeller, noise=noise,
                       pairs_per_prompt=pairs_per_prompt, seed=seed)


def pair_examples(tokenizer: Any, pairs: Sequence[PreferencePair], context_length: int
                  ) -> dict[str, np.ndarray]:
    """Padded arrays of preference pairs, for the reward model and DPO: ``chosen`` and
    ``rejected`` (int32 ``[N, L + 1]``: prompt, answer, ``<|end|>``, zeros), ``*_mask`` (bool
    ``[N, L]``: true where the *target* ``ids[:, 1:]`` is an answer token, so the prompt and
    the padding never count) and ``*_valid`` (bool ``[N, L + 1]``: the real tokens, whose last
    one the reward model reads). Every sequence must fit in ``context_length`` tokens."""
    pairs = _check_pairs(pairs)
    check_int("context_length", context_length, min=2)
    enc = {side: [encode_chat(tokenizer, p.messages + [{"role": "assistant",
                                                        "content": getattr(p, side)}])
                  for p in pairs] for side in ("chosen", "rejected")}
    longest = max(len(e.ids) for side in enc.values() for e in side)
    L = _padded_length(longest, context_length, "the longest prompt + response") - 1
    out: dict[str, np.ndarray] = {}
    for side, encs in enc.items():
        ids = np.zeros((len(pairs), L + 1), np.int32)
        mask = np.zeros((len(pairs), L + 1), bool)
        valid = np.zeros((len(pairs), L + 1), bool)
        for i, e in enumerate(encs):
            ids[i, :len(e.ids)] = e.ids
            mask[i, :len(e.ids)] = e.assistant_mask
            valid[i, :len(e.ids)] = True
        out[side], out[f"{side}_mask"], out[f"{side}_valid"] = ids, mask[:, 1:], valid
    return out


# -- the reward model ----------------------------------------------------------------------------

class RewardModel(nnx.Module):
    """A transformer with a scalar head: ``r(tokens) = w · h_last + b``, where ``h_last`` is
    the final hidden state (after the last norm) of the last real token of each row.

    The trunk is a :class:`jaxllm.model.GPT` (its language-model head is unused); start it from
    the SFT policy (:meth:`from_policy`), as InstructGPT does, so the reward model begins with
    the policy's knowledge of the texts it will score. The head starts at zero: every reward is
    0 and the Bradley–Terry loss ``ln 2`` before training. Because attention is causal, the last
    real token's state has seen the whole prompt and answer and none of the right padding.
    """

    def __init__(self, trunk: GPT, *, rngs: nnx.Rngs):
        _check_model("trunk", trunk)
        self.cfg = trunk.cfg
        self.trunk = trunk
        self.head = nnx.Linear(trunk.cfg.d_model, 1, kernel_init=nnx.initializers.zeros,
                               param_dtype=jnp.float32, rngs=rngs)

    @classmethod
    def from_policy(cls, policy: GPT, seed: int = 0) -> RewardModel:
        """A reward model whose trunk is a copy of ``policy`` (which is left unchanged)."""
        return cls(_copy(_check_model("policy", policy)), rngs=nnx.Rngs(params=seed))

    @classmethod
    def new(cls, cfg: ModelConfig, seed: int = 0) -> RewardModel:
        """A reward model with a freshly initialised trunk of shape ``cfg`` (built by one
        compiled function: creating the parameters op by op is slow on a CPU)."""
        if not isinstance(cfg, ModelConfig):
            raise TypeError(f"cfg must be a ModelConfig, got {type(cfg).__name__}")
        check_int("seed", seed, min=0)

        @nnx.jit
        def build() -> RewardModel:
            return cls(GPT(cfg, rngs=nnx.Rngs(params=seed)), rngs=nnx.Rngs(params=seed + 1))

        return build()

    def __call__(self, tokens: jax.Array, valid: jax.Array, *,
                 dropout_key: jax.Array | None = None) -> jax.Array:
        """Rewards ``[B]`` (float32) of ``tokens`` ``[B, T]`` whose real tokens are marked by
        ``valid`` ``[B, T]`` (right padding)."""
        _, extras = self.trunk(tokens, dropout_key=dropout_key, return_hidden=True)
        hidden = extras["hidden"]  # [B, T, D]
        T = tokens.shape[1]
        last = T - 1 - jnp.argmax(valid[:, ::-1], axis=1)  # index of the last real token, [B]
        h = jnp.take_along_axis(hidden, last[:, None, None], axis=1)[:, 0]  # [B, D]
        return self.head(h.astype(jnp.float32))[:, 0]


def reward_loss(model: RewardModel, batch: Mapping[str, jax.Array], rng: jax.Array | None = None
                ) -> tuple[jax.Array, Metrics]:
    """Bradley–Terry loss of a batch of :func:`pair_examples`; metrics: ``accuracy`` (how often
    the chosen answer scores higher; ties count one half) and the mean reward ``margin``."""
    key_c = key_r = None
    if rng is not None:
        key_c, key_r = jax.random.split(rng)
    rc = model(batch["chosen"], batch["chosen_valid"], dropout_key=key_c)
    rr = model(batch["rejected"], batch["rejected_valid"], dropout_key=key_r)
    margin = rc - rr
    acc = jnp.where(margin > 0, 1.0, jnp.where(margin == 0, 0.5, 0.0)).mean()
    return pairwise_reward_loss(rc, rr), {"accuracy": acc, "margin": margin.mean()}


def _pair_source(tokenizer: Any, pairs: Sequence[PreferencePair], ctx: int, batch_size: int,
                 seed: int, shuffle: bool, keys: Sequence[str]) -> ExampleBatches:
    ex = pair_examples(tokenizer, pairs, ctx)
    return ExampleBatches({k: ex[k] for k in keys}, batch_size, seed, shuffle)


_RM_KEYS = ("chosen", "chosen_valid", "rejected", "rejected_valid")


def train_reward_model(reward_model: RewardModel, tokenizer: Any,
                       pairs: Sequence[PreferencePair], *, steps: int = 200,
                       batch_size: int = 16, learning_rate: float = 1e-4, seed: int = 0,
                       val_pairs: Sequence[PreferencePair] | None = None,
                       progress: bool = False) -> Trainer:
    """Train a copy of ``reward_model`` on preference pairs with the Bradley–Terry loss;
    returns the trainer (``.model`` is the trained reward model; the history holds
    ``accuracy``, and ``val_accuracy`` with ``val_pairs``)."""
    _check_model("reward_model", reward_model, RewardModel)
    ctx = reward_model.cfg.context_length
    train = _pair_source(tokenizer, pairs, ctx, batch_size, seed, True, _RM_KEYS)
    val = None
    if val_pairs is not None:
        val = _pair_source(tokenizer, val_pairs, ctx, batch_size, seed + 1, False, _RM_KEYS)
    trainer = Trainer(reward_model.cfg, _train_config(steps, batch_size, learning_rate, seed),
                      train, val, loss_fn=reward_loss, model=_copy(reward_model))
    trainer.fit(progress=progress)
    return trainer


@partial(jax.jit, static_argnums=0)
def _rewards(graphdef: nnx.GraphDef, params: nnx.State, tokens: jax.Array, valid: jax.Array
             ) -> jax.Array:
    return nnx.merge(graphdef, params)(tokens, valid)


def _batched_rewards(model: RewardModel, tokens: np.ndarray, valid: np.ndarray,
                     batch_size: int) -> np.ndarray:
    graphdef, params = nnx.split(model)
    N = len(tokens)
    out = []
    for s in range(0, N, batch_size):
        t, v = tokens[s:s + batch_size], valid[s:s + batch_size]
        n = len(t)
        if n < batch_size:  # pad the last batch: one compiled shape
            t = np.concatenate([t, np.repeat(t[:1], batch_size - n, 0)])
            v = np.concatenate([v, np.repeat(v[:1], batch_size - n, 0)])
        out.append(np.asarray(_rewards(graphdef, params, t, v))[:n])
    return np.concatenate(out)


def reward_scores(reward_model: RewardModel, tokenizer: Any, prompts: Sequence[Any],
                  responses: Sequence[str], *, batch_size: int = 64) -> np.ndarray:
    """The reward model's scores of ``responses[i]`` to ``prompts[i]`` (float32 ``[N]``)."""
    _check_model("reward_model", reward_model, RewardModel)
    if len(prompts) != len(responses) or not prompts:
        raise ValueError("prompts and responses must be non-empty lists of the same length, got "
                         f"{len(prompts)} and {len(responses)}")
    pairs = [PreferencePair(tuple(_as_messages(p, f"prompts[{i}]")), r, r)
             for i, (p, r) in enumerate(zip(prompts, responses, strict=True))]
    ex = pair_examples(tokenizer, pairs, reward_model.cfg.context_length)
    return _batched_rewards(reward_model, ex["chosen"], ex["chosen_valid"],
                            check_int("batch_size", batch_size, min=1))


def pairwise_accuracy(reward_model: RewardModel, tokenizer: Any,
                      pairs: Sequence[PreferencePair], *, batch_size: int = 64) -> float:
    """Fraction of ``pairs`` whose chosen answer the reward model scores higher (ties: one
    half)."""
    pairs = _check_pairs(pairs)
    ex = pair_examples(tokenizer, pairs, reward_model.cfg.context_length)
    rc = _batched_rewards(reward_model, ex["chosen"], ex["chosen_valid"], batch_size)
    rr = _batched_rewards(reward_model, ex["rejected"], ex["rejected_valid"], batch_size)
    return float(np.mean(np.where(rc > rr, 1.0, np.where(rc == rr, 0.5, 0.0))))


def agreement(labeller: Labeller, pairs: Sequence[PreferencePair]) -> float:
    """Fraction of ``pairs`` on which ``labeller`` prefers the chosen answer (ties: one half):
    how often a labeller (a judge, a reward model wrapped as one) agrees with the labels."""
    check_callable("labeller", labeller)
    pairs = _check_pairs(pairs)
    hits = []
    for p in pairs:
        c, r = float(labeller(p.messages, p.chosen)), float(labeller(p.messages, p.rejected))
        hits.append(1.0 if c > r else 0.5 if c == r else 0.0)
    return float(np.mean(hits))


# -- RL with a KL penalty ------------------------------------------------------------------------

def rloo_advantages(rewards: jax.Array, group_size: int) -> jax.Array:
    """Leave-one-out advantages: ``A_i = R_i - mean of the other k - 1 rewards of its group``.
    ``rewards`` ``[G * k]`` holds groups of ``k = group_size`` samples of the same prompt, one
    group after another."""
    k = check_int("group_size", group_size, min=2)
    r = jnp.asarray(rewards, jnp.float32).reshape(-1, k)  # [G, k]
    baseline = (r.sum(axis=1, keepdims=True) - r) / (k - 1)
    return (r - baseline).reshape(-1)


def rloo_loss(logprobs: jax.Array, reference_logprobs: jax.Array, mask: jax.Array,
              scores: jax.Array, beta: float, group_size: int
              ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The RLOO surrogate for one batch of sampled responses.

    ``logprobs`` ``[B, T]`` are the policy's log-probabilities of the sampled tokens (with
    gradient), ``reference_logprobs`` the frozen reference's, ``mask`` the response tokens and
    ``scores`` ``[B]`` the reward model's scores. The reward of a sample is
    ``R = score - beta * sum_t (log pi - log ref)`` (the sampled, per-token estimate of the KL
    summed over the response); its leave-one-out advantage weighs the log-probabilities
    (:func:`jaxllm.losses.policy_gradient_loss`); ``R`` is a constant for the gradient, so the
    KL acts through the advantages as REINFORCE prescribes."""
    mask = mask.astype(jnp.float32)
    log_ratio = jax.lax.stop_gradient(logprobs - reference_logprobs) * mask
    kl_seq = log_ratio.sum(axis=1)  # [B]
    total = scores.astype(jnp.float32) - beta * kl_seq
    adv = rloo_advantages(total, group_size)
    loss = policy_gradient_loss(logprobs, adv, mask)
    tokens = jnp.maximum(mask.sum(), 1.0)
    return loss, {"reward": scores.mean(), "kl": log_ratio.sum() / tokens,
                  "kl_sequence": kl_seq.mean(), "objective": total.mean()}


class RLResult(NamedTuple):
    """What :func:`rl_finetune` returns: the trained policy, the per-step ``history``
    (``step``, ``reward``: mean reward-model score, ``kl``: mean per-token KL estimate,
    ``kl_sequence``, ``objective``: reward minus ``beta`` times the sequence KL, ``length``:
    mean response tokens, ``hidden``: the hidden score's mean when one was given) and
    ``samples``: ``(step, prompt, response)`` of the first sample of steps logged with
    ``log_samples_every``."""

    policy: GPT
    history: dict[str, list[float]]
    samples: list[tuple[int, Messages, str]]


def _token_logps(model: GPT, seqs: jax.Array) -> jax.Array:
    return token_logprobs(model(seqs[:, :-1]), seqs[:, 1:])


def _rollout(policy: GPT, tokenizer: Any, prompt_ids: list[list[int]], max_new_tokens: int,
             length: int, key: jax.Array, temperature: float
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Sample one reply per prompt; return the sequences (prompt, reply, ``<|end|>`` if it
    ended, zeros) as int32 ``[B, length]``, their real tokens ``[B, length]``, the mask of the
    targets ``seqs[:, 1:]`` that are reply tokens ``[B, length - 1]``, and the replies' text."""
    stop = end_id(tokenizer)
    new = generate(policy, prompt_ids, max_new_tokens, temperature=temperature,
                   stop_token=stop, key=key)
    B = len(prompt_ids)
    seqs = np.zeros((B, length), np.int32)
    valid = np.zeros((B, length), bool)
    mask = np.zeros((B, length - 1), bool)
    texts = []
    for i, (p, r) in enumerate(zip(prompt_ids, new, strict=True)):
        r = r + [stop] if len(r) < max_new_tokens else r  # generate cuts the stop token off
        seqs[i, :len(p) + len(r)] = p + r
        valid[i, :len(p) + len(r)] = True
        mask[i, len(p) - 1:len(p) + len(r) - 1] = True
        texts.append(decode_reply(tokenizer, r)[0])
    return seqs, valid, mask, texts


@partial(jax.jit, static_argnums=(0, 2))
def _two_logps(graph_a: nnx.GraphDef, params_a: nnx.State, graph_b: nnx.GraphDef,
               params_b: nnx.State, seqs: jax.Array) -> tuple[jax.Array, jax.Array]:
    return (_token_logps(nnx.merge(graph_a, params_a), seqs),
            _token_logps(nnx.merge(graph_b, params_b), seqs))


def sampled_kl(policy: GPT, reference: GPT, tokenizer: Any, prompts: Sequence[Any], *,
               key: jax.Array, samples: int = 4, max_new_tokens: int = 32,
               temperature: float = 1.0) -> tuple[float, float]:
    """How far ``policy`` has moved from ``reference`` on ``prompts``: the per-token and the
    per-reply estimates of KL(policy || reference), from ``samples`` replies per prompt drawn
    from the policy with ``key`` (the mean of ``log pi - log ref`` over the reply tokens, and
    its sum per reply averaged over replies). Any method's result (RL, DPO, SFT) can be put
    beside the others with it."""
    _check_model("policy", policy)
    _check_model("reference", reference)
    n = check_int("samples", samples, min=1)
    N = check_int("max_new_tokens", max_new_tokens, min=1)
    msgs = [_as_messages(p, f"prompts[{i}]") for i, p in enumerate(prompts)]
    if not msgs:
        raise ValueError("prompts must be a non-empty list")
    ids = [encode_chat(tokenizer, m, add_generation_prompt=True).ids for m in msgs]
    S = max(len(p) for p in ids) + N
    if S > min(policy.cfg.context_length, reference.cfg.context_length):
        raise ValueError(f"the longest prompt plus max_new_tokens={N} must fit in the context "
                         f"length, got {S} tokens")
    seqs, _, mask, _ = _rollout(policy, tokenizer, [p for p in ids for _ in range(n)], N, S,
                                key, temperature)
    ga, pa = nnx.split(policy)
    gb, pb = nnx.split(reference)
    lp, lr = (np.asarray(x) for x in _two_logps(ga, pa, gb, pb, seqs))
    ratio = np.where(mask, lp - lr, 0.0)
    return float(ratio.sum() / max(mask.sum(), 1)), float(ratio.sum(axis=1).mean())


def win_rate(labeller: Labeller, prompts: Sequence[Any], responses: Sequence[str],
             baseline: Sequence[str]) -> float:
    """How often ``labeller`` scores ``responses[i]`` above ``baseline[i]`` (the same prompt
    answered by another model), ties counting one half: the chapter's "win rate against SFT"."""
    check_callable("labeller", labeller)
    if not (len(prompts) == len(responses) == len(baseline)) or not prompts:
        raise ValueError("prompts, responses and baseline must be non-empty lists of the same "
                         f"length, got {len(prompts)}, {len(responses)} and {len(baseline)}")
    wins = []
    for i, (p, a, b) in enumerate(zip(prompts, responses, baseline, strict=True)):
        msgs = _as_messages(p, f"prompts[{i}]")
        sa, sb = float(labeller(msgs, a)), float(labeller(msgs, b))
        wins.append(1.0 if sa > sb else 0.5 if sa == sb else 0.0)
    return float(np.mean(wins))


def rl_finetune(policy: GPT, reference: GPT, reward_model: RewardModel, tokenizer: Any,
                prompts: Sequence[Any], *, key: jax.Array, steps: int = 100,
                prompts_per_step: int = 8, group_size: int = 4, beta: float = 0.05,
                learning_rate: float = 1e-5, max_new_tokens: int = 32,
                temperature: float = 1.0, hidden_score: Labeller | None = None,
                log_samples_every: int | None = None, seed: int = 0) -> RLResult:
    """Optimise a copy of ``policy`` to maximise ``reward_model``'s score minus ``beta`` times
    the KL to the frozen ``reference`` (usually the SFT model), by REINFORCE with
    leave-one-out group baselines (RLOO, Ahmadian et al. 2024).

    Each step draws ``prompts_per_step`` prompts (``default_rng([seed, step])``), samples
    ``group_size`` responses to each with :func:`jaxllm.sample.generate` from
    ``fold_in(key, step)``, scores them, and applies one compiled AdamW update of the
    surrogate :func:`rloo_loss`.

    *Why RLOO and not PPO or GRPO.* PPO needs a value network as large as the policy and
    several clipped epochs per batch; with one on-policy update per batch its ratio is 1 and
    the clipping does nothing, so what is left is REINFORCE with a learned baseline. A group
    baseline replaces the value network with the other samples of the same prompt, at no cost.
    Of the two group baselines, RLOO's leave-one-out mean keeps the gradient estimate unbiased
    (a sample's own reward is not in its baseline); GRPO also divides by the group's standard
    deviation, which biases it and blows up the advantages of groups whose rewards are nearly
    equal — frequent with small groups of short answers, as here. So RLOO: unbiased, no extra
    model, one update per batch.

    ``hidden_score(prompt, response)`` (the labeller the reward model was trained to imitate)
    is evaluated on the same samples but never optimised: its mean per step, beside the reward,
    shows over-optimisation (with ``beta = 0`` the learned reward can keep rising while the
    hidden score falls, Gao et al. 2022).
    """
    _check_model("policy", policy)
    _check_model("reference", reference)
    _check_model("reward_model", reward_model, RewardModel)
    if not isinstance(key, jax.Array):
        raise TypeError(f"key must be a jax.random key, got {type(key).__name__}")
    steps = check_int("steps", steps, min=1)
    P = check_int("prompts_per_step", prompts_per_step, min=1)
    k = check_int("group_size", group_size, min=2)
    beta = check_number("beta", beta, low=0.0)
    lr = check_number("learning_rate", learning_rate, low=0.0, low_open=True)
    N = check_int("max_new_tokens", max_new_tokens, min=1)
    check_number("temperature", temperature, low=0.0, low_open=True)
    check_callable("hidden_score", hidden_score, none_ok=True)
    check_int("log_samples_every", log_samples_every, min=1, none_ok=True)
    check_int("seed", seed, min=0)
    if policy.cfg != reference.cfg:
        raise ValueError("policy and reference must have the same config (the reference is "
                         "the policy before RL)")
    msgs = [_as_messages(p, f"prompts[{i}]") for i, p in enumerate(prompts)]
    if not msgs:
        raise ValueError("prompts must be a non-empty list")
    prompt_ids = [encode_chat(tokenizer, m, add_generation_prompt=True).ids for m in msgs]
    ctx = policy.cfg.context_length
    longest = max(len(p) for p in prompt_ids)
    if longest + N > min(ctx, reward_model.cfg.context_length):
        raise ValueError(f"the longest prompt ({longest} tokens) plus max_new_tokens={N} must "
                         f"fit in the context_length {min(ctx, reward_model.cfg.context_length)} "
                         "of the policy and the reward model")
    S = longest + N  # every sequence is padded to S tokens: one compiled shape

    tcfg = TrainConfig(steps=steps, batch_size=P * k, learning_rate=lr, min_learning_rate=lr,
                       warmup_steps=0, weight_decay=0.0, eval_interval=steps, eval_batches=1)

    def loss_fn(model: GPT, batch: Mapping[str, jax.Array], rng: jax.Array | None = None):
        logps = _token_logps(model, batch["seqs"])
        return rloo_loss(logps, batch["ref_logps"], batch["mask"], batch["scores"], beta, k)

    # The trainer holds the policy and its compiled, donated update step; the batches are
    # made here, step by step, from the policy's own samples.
    dummy = ExampleBatches({"x": np.zeros((1, 1), np.int32)}, 1)
    trainer = Trainer(policy.cfg, tcfg, dummy, loss_fn=loss_fn, model=_copy(policy))
    ref_graph, ref_params = nnx.split(reference)
    rm_graph, rm_params = nnx.split(reward_model)

    @jax.jit
    def score(ref_params, rm_params, seqs, valid):
        ref = _token_logps(nnx.merge(ref_graph, ref_params), seqs)
        return ref, nnx.merge(rm_graph, rm_params)(seqs, valid)

    history: dict[str, list[float]] = {k_: [] for k_ in
                                       ("step", "reward", "kl", "kl_sequence", "objective",
                                        "length")}
    if hidden_score is not None:
        history["hidden"] = []
    samples: list[tuple[int, Messages, str]] = []
    for step in range(steps):
        rng = np.random.default_rng([seed, step])
        chosen = rng.choice(len(msgs), size=P, replace=len(msgs) < P)
        batch_prompts = [prompt_ids[i] for i in chosen for _ in range(k)]
        current = nnx.merge(trainer.graphdef, trainer.state.params)  # read before the update
        seqs, valid, mask, texts = _rollout(current, tokenizer, batch_prompts, N, S,
                                            jax.random.fold_in(key, step), temperature)
        ref_logps, scores = score(ref_params, rm_params, seqs, valid)
        metrics = trainer.train_step({"seqs": seqs, "ref_logps": ref_logps, "mask": mask,
                                      "scores": scores})
        m = jax.device_get(metrics)
        history["step"].append(step)
        for name in ("reward", "kl", "kl_sequence", "objective"):
            history[name].append(float(m[name]))
        history["length"].append(float(mask.sum() / (P * k)))
        if hidden_score is not None:
            history["hidden"].append(float(np.mean(
                [hidden_score(msgs[chosen[i // k]], t) for i, t in enumerate(texts)])))
        if log_samples_every and step % log_samples_every == 0:
            samples.append((step, msgs[chosen[0]], texts[0]))
    return RLResult(trainer.model, history, samples)


# -- DPO -----------------------------------------------------------------------------------------

_DPO_KEYS = ("chosen", "chosen_mask", "rejected", "rejected_mask")


@partial(jax.jit, static_argnums=0)
def _sequence_logps(graphdef: nnx.GraphDef, params: nnx.State, ids: jax.Array, mask: jax.Array
                    ) -> jax.Array:
    model = nnx.merge(graphdef, params)
    return sequence_logprobs(model(ids[:, :-1]), ids[:, 1:], mask)


def reference_logprobs(model: GPT, ids: np.ndarray, mask: np.ndarray, *, batch_size: int = 64
                       ) -> np.ndarray:
    """Sequence log-probabilities ``[N]`` of the masked targets ``ids[:, 1:]`` under ``model``
    (float32), in batches; what DPO needs of its reference, computed once."""
    _check_model("model", model)
    ids, mask = np.asarray(ids, np.int32), np.asarray(mask, bool)
    if ids.ndim != 2 or mask.shape != (ids.shape[0], ids.shape[1] - 1):
        raise ValueError(f"ids must be [N, L + 1] and mask [N, L], got {ids.shape} and "
                         f"{mask.shape}")
    B = check_int("batch_size", batch_size, min=1)
    graphdef, params = nnx.split(model)
    out = []
    for s in range(0, len(ids), B):
        x, m = ids[s:s + B], mask[s:s + B]
        n = len(x)
        if n < B:
            x = np.concatenate([x, np.repeat(x[:1], B - n, 0)])
            m = np.concatenate([m, np.repeat(m[:1], B - n, 0)])
        out.append(np.asarray(_sequence_logps(graphdef, params, x, m))[:n])
    return np.concatenate(out)


def dpo_batches(policy: GPT, tokenizer: Any, pairs: Sequence[PreferencePair], batch_size: int,
                *, reference: GPT | None = None, seed: int = 0, shuffle: bool = True
                ) -> ExampleBatches:
    """A batch source for :func:`jaxllm.losses.dpo_objective`: the pairs' ids and answer masks
    (:func:`pair_examples`) and the reference's sequence log-probabilities of both answers
    (``reference`` defaults to ``policy``, the usual choice: DPO starts from the SFT model)."""
    _check_model("policy", policy)
    ref = policy if reference is None else _check_model("reference", reference)
    ex = pair_examples(tokenizer, pairs, policy.cfg.context_length + 1)
    arrays = {k: ex[k] for k in _DPO_KEYS}
    for side in ("chosen", "rejected"):
        arrays[f"reference_{side}"] = reference_logprobs(ref, ex[side], ex[f"{side}_mask"])
    return ExampleBatches(arrays, batch_size, seed, shuffle)


def dpo(policy: GPT, tokenizer: Any, pairs: Sequence[PreferencePair], *, beta: float = 0.1,
        steps: int = 200, batch_size: int = 16, learning_rate: float = 1e-4, seed: int = 0,
        reference: GPT | None = None, val_pairs: Sequence[PreferencePair] | None = None,
        progress: bool = False) -> Trainer:
    """Direct preference optimisation (Rafailov et al. 2023) of a copy of ``policy`` on
    ``pairs``: no reward model and no sampling, the reference log-probabilities computed once.
    Returns the trainer (``.model``; the history holds the loss, which starts at ``ln 2``,
    ``reward_margin`` and ``reward_accuracy``, and their ``val_`` versions with
    ``val_pairs``)."""
    train = dpo_batches(policy, tokenizer, pairs, batch_size, reference=reference, seed=seed)
    val = None
    if val_pairs is not None:
        val = dpo_batches(policy, tokenizer, val_pairs, batch_size, reference=reference,
                          seed=seed + 1, shuffle=False)
    trainer = Trainer(policy.cfg, _train_config(steps, batch_size, learning_rate, seed), train,
                      val, loss_fn=dpo_objective(beta), model=_copy(policy))
    trainer.fit(progress=progress)
    return trainer


# -- AI feedback: a judge that reads a principle -------------------------------------------------

@dataclass(frozen=True)
class Principle:
    """One principle of a constitution: its ``text`` (what the judge reads) and, for building
    the judge's training data, a ``check(prompt, response) -> bool`` that says whether a
    response follows it (a few labelled examples; the judge must generalise from them)."""

    text: str
    check: Callable[[Messages, str], bool] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.text, str) or not self.text.strip():
            raise ValueError(f"text must be a non-empty str, got {self.text!r}")
        check_callable("check", self.check, none_ok=True)


@dataclass(frozen=True)
class JudgeExample:
    """Does ``response`` (to ``prompt``) follow ``principle``? ``label`` is the answer."""

    principle: str
    prompt: tuple[dict[str, str], ...]
    response: str
    label: bool = field(default=False)


def _judge_messages(principle: str, prompt: Sequence[Mapping[str, str]]) -> Messages:
    """The judge's view: the principle as the system message, the conversation's user turns
    as they were (the judge scores the assistant reply that follows)."""
    turns = [dict(m) for m in prompt if m["role"] != "system"]
    return [{"role": "system", "content": principle}, *turns]


def judge_examples(constitution: Sequence[Principle], prompts: Sequence[Any],
                   responses: Sequence[Sequence[str]]) -> list[JudgeExample]:
    """Training data for a judge: every principle with a ``check``, every prompt and each of
    its candidate responses, labelled by the check."""
    if not constitution:
        raise ValueError("constitution must be a non-empty list of Principle")
    for i, p in enumerate(constitution):
        if not isinstance(p, Principle) or p.check is None:
            raise ValueError(f"constitution[{i}] must be a Principle with a check to label "
                             f"training data, got {p!r:.80}")
    if len(prompts) != len(responses):
        raise ValueError(f"prompts and responses must have the same length, got {len(prompts)} "
                         f"and {len(responses)}")
    out = []
    for i, (prompt, cands) in enumerate(zip(prompts, responses, strict=True)):
        msgs = tuple(_as_messages(prompt, f"prompts[{i}]"))
        for principle in constitution:
            for r in cands:
                out.append(JudgeExample(principle.text, msgs, r,
                                        bool(principle.check(list(msgs), r))))
    return out


def _judge_arrays(tokenizer: Any, examples: Sequence[JudgeExample], ctx: int
                  ) -> dict[str, np.ndarray]:
    pairs = [PreferencePair(tuple(_judge_messages(e.principle, e.prompt)), e.response,
                            e.response) for e in examples]
    ex = pair_examples(tokenizer, pairs, ctx)
    return {"tokens": ex["chosen"], "valid": ex["chosen_valid"],
            "label": np.array([e.label for e in examples], np.float32)}


def judge_loss(model: RewardModel, batch: Mapping[str, jax.Array], rng: jax.Array | None = None
               ) -> tuple[jax.Array, Metrics]:
    """Logistic loss of the judge's logit against the 0/1 label; metric: ``accuracy``."""
    logit = model(batch["tokens"], batch["valid"], dropout_key=rng)
    loss = optax.sigmoid_binary_cross_entropy(logit, batch["label"]).mean()
    return loss, {"accuracy": ((logit > 0) == (batch["label"] > 0.5)).mean()}


def train_judge(judge: RewardModel, tokenizer: Any, examples: Sequence[JudgeExample], *,
                steps: int = 200, batch_size: int = 16, learning_rate: float = 1e-4,
                seed: int = 0, val_examples: Sequence[JudgeExample] | None = None,
                progress: bool = False) -> Trainer:
    """Train a copy of ``judge`` (a :class:`RewardModel`: a transformer with a scalar head)
    to say whether a response follows a principle; returns the trainer."""
    _check_model("judge", judge, RewardModel)
    if not examples or not all(isinstance(e, JudgeExample) for e in examples):
        raise ValueError("examples must be a non-empty list of JudgeExample")
    ctx = judge.cfg.context_length
    train = ExampleBatches(_judge_arrays(tokenizer, examples, ctx), batch_size, seed)
    val = None
    if val_examples is not None:
        val = ExampleBatches(_judge_arrays(tokenizer, val_examples, ctx), batch_size, seed + 1,
                             False)
    trainer = Trainer(judge.cfg, _train_config(steps, batch_size, learning_rate, seed), train,
                      val, loss_fn=judge_loss, model=_copy(judge))
    trainer.fit(progress=progress)
    return trainer


def judge_labeller(judge: RewardModel, tokenizer: Any, constitution: Sequence[Principle | str]
                   ) -> Labeller:
    """The constitution as a labeller: ``score(prompt, response)`` is the sum over the
    principles of the judge's log-odds that the response follows it. Feed it to
    :func:`label_pairs` for AI-feedback preference labels. Scores are cached by text."""
    _check_model("judge", judge, RewardModel)
    texts = [p.text if isinstance(p, Principle) else p for p in constitution]
    if not texts or not all(isinstance(t, str) and t.strip() for t in texts):
        raise ValueError("constitution must be a non-empty list of Principle or non-empty str")
    cache: dict[tuple, float] = {}

    def labeller(prompt: Messages, response: str) -> float:
        msgs = tuple(_as_messages(prompt, "prompt"))
        key_ = (tuple(tuple(sorted(m.items())) for m in msgs), response)
        if key_ not in cache:
            examples = [JudgeExample(t, msgs, response) for t in texts]
            arr = _judge_arrays(tokenizer, examples, judge.cfg.context_length)
            logits = _batched_rewards(judge, arr["tokens"], arr["valid"], len(texts))
            cache[key_] = float(np.sum(logits))
        return cache[key_]

    return labeller
