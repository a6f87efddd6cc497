"""Training objectives as plain functions, for :class:`jaxllm.train.Trainer`.

Two levels:

* functions of arrays (``cross_entropy``, ``token_logprobs``, ``pairwise_reward_loss``,
  ``dpo_loss``, ``policy_gradient_loss``, ``kl_estimate``): the mathematics, each unit-tested
  against values computed by hand;
* *loss functions* ``loss_fn(model, batch, rng) -> (loss, metrics)``: what the trainer
  differentiates. ``model`` is the NNX module with the parameters being trained, ``batch`` a
  dict of arrays from a batch source (see :mod:`jaxllm.data`), ``rng`` a key for dropout (or
  ``None`` when evaluating). ``loss`` is a float32 scalar; ``metrics`` a dict of scalars that
  the trainer records beside the loss. :func:`next_token_loss` is pre-training and, with a
  ``mask`` in the batch, supervised fine-tuning on answer tokens only; :func:`dpo_objective`
  builds the direct-preference objective. The alignment chapter adds its objectives here.

Everything is computed in float32 whatever the model's compute dtype, and a masked mean
divides by the number of counted tokens (not by the number of positions), so padding changes
nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax

from .validate import check_number

Array = jax.Array
Metrics = dict[str, Array]
LossFn = Callable[[Any, Mapping[str, Array], Array | None], tuple[Array, Metrics]]

__all__ = [
    "LossFn", "cross_entropy", "dpo_loss", "dpo_objective", "kl_estimate",
    "next_token_loss", "pairwise_reward_loss", "policy_gradient_loss", "sequence_logprobs",
    "token_logprobs",
]


# -- functions of arrays ------------------------------------------------------------------------

def _masked_mean(values: Array, mask: Array | None) -> Array:
    if mask is None:
        return values.mean()
    mask = mask.astype(jnp.float32)
    # max(., 1): a batch with nothing to count has loss 0, not NaN.
    return (values * mask).sum() / jnp.maximum(mask.sum(), 1.0)


def cross_entropy(logits: Array, targets: Array, mask: Array | None = None) -> Array:
    """Mean next-token cross-entropy in nats over the positions where ``mask`` is true (all
    positions without a mask). ``logits`` ``[..., V]``, ``targets`` and ``mask`` ``[...]``."""
    losses = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32),
                                                             targets)
    return _masked_mean(losses, mask)


def token_logprobs(logits: Array, targets: Array) -> Array:
    """``log p(targets[..., t])`` under ``logits[..., t, :]`` (float32, ``[...]``)."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]


def sequence_logprobs(logits: Array, targets: Array, mask: Array) -> Array:
    """Sum of the log-probabilities of the counted target tokens of each row: ``[B]``. The
    log-likelihood of an answer given its prompt, when ``mask`` marks the answer tokens."""
    return (token_logprobs(logits, targets) * mask.astype(jnp.float32)).sum(axis=-1)


def pairwise_reward_loss(chosen: Array, rejected: Array) -> Array:
    """Bradley–Terry loss ``-log sigmoid(r_chosen - r_rejected)``, averaged over pairs: the
    negative log-likelihood that the preferred answer is preferred."""
    return -jax.nn.log_sigmoid(chosen.astype(jnp.float32) - rejected.astype(jnp.float32)).mean()


def dpo_loss(policy_chosen: Array, policy_rejected: Array, reference_chosen: Array,
             reference_rejected: Array, beta: float) -> Array:
    """Direct preference optimisation (Rafailov et al. 2023), averaged over pairs:
    ``-log sigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r)))`` of sequence log-probabilities.
    Equals ``ln 2`` while the policy is the reference."""
    margin = (policy_chosen - reference_chosen) - (policy_rejected - reference_rejected)
    return -jax.nn.log_sigmoid(beta * margin.astype(jnp.float32)).mean()


def policy_gradient_loss(logprobs: Array, advantages: Array, mask: Array | None = None
                         ) -> Array:
    """REINFORCE surrogate ``-mean(advantage * log pi(token))`` over the counted tokens: its
    gradient is the policy gradient when ``advantages`` (``[B]`` or per token) are constants."""
    adv = jax.lax.stop_gradient(advantages.astype(jnp.float32))
    if adv.ndim == logprobs.ndim - 1:
        adv = adv[..., None]
    return -_masked_mean(adv * logprobs, mask)


def kl_estimate(logprobs: Array, reference_logprobs: Array, mask: Array | None = None
                ) -> Array:
    """Per-token estimate of KL(policy || reference) from the log-probabilities of tokens
    sampled from the policy: the mean of ``log pi - log ref`` over the counted tokens."""
    return _masked_mean(logprobs - reference_logprobs, mask)


# -- loss functions for the trainer ------------------------------------------------------------

def _logits_and_aux(model: Any, inputs: Array, rng: Array | None) -> tuple[Array, Array | None]:
    """Logits, and the load-balancing loss of a mixture-of-experts model (else ``None``)."""
    if getattr(model.cfg, "n_experts", 0):
        logits, extras = model(inputs, dropout_key=rng, return_aux=True)
        return logits, extras["aux_loss"]
    return model(inputs, dropout_key=rng), None


def next_token_loss(model: Any, batch: Mapping[str, Array], rng: Array | None = None
                    ) -> tuple[Array, Metrics]:
    """Cross-entropy of ``batch["targets"]`` given ``batch["inputs"]``; only the positions
    where ``batch["mask"]`` is true count when the batch has a mask (supervised fine-tuning:
    the answer tokens, not the prompt). A mixture-of-experts model adds its load-balancing
    loss times ``cfg.moe_aux_coef``; the metrics report it as ``moe_aux_loss``."""
    logits, aux = _logits_and_aux(model, batch["inputs"], rng)
    loss = cross_entropy(logits, batch["targets"], batch.get("mask"))
    metrics: Metrics = {}
    if aux is not None:
        metrics = {"lm_loss": loss, "moe_aux_loss": aux}
        loss = loss + model.cfg.moe_aux_coef * aux
    return loss, metrics


def dpo_objective(beta: float = 0.1) -> LossFn:
    """The DPO loss function for batches of preference pairs with the keys ``chosen``,
    ``rejected`` (token ids ``[B, T + 1]``), ``chosen_mask``, ``rejected_mask`` (``[B, T]``,
    true on the answer's target tokens) and ``reference_chosen``, ``reference_rejected``
    (``[B]``, the reference model's sequence log-probabilities, computed once beforehand so
    the reference needs no memory during training). Metrics: the reward margin and accuracy
    (how often the implicit reward prefers the chosen answer)."""
    beta = check_number("beta", beta, low=0.0, low_open=True)

    def loss_fn(model: Any, batch: Mapping[str, Array], rng: Array | None = None
                ) -> tuple[Array, Metrics]:
        def logps(ids: Array, mask: Array) -> Array:
            return sequence_logprobs(model(ids[:, :-1], dropout_key=rng), ids[:, 1:], mask)

        pc = logps(batch["chosen"], batch["chosen_mask"])
        pr = logps(batch["rejected"], batch["rejected_mask"])
        margin = (pc - batch["reference_chosen"]) - (pr - batch["reference_rejected"])
        loss = dpo_loss(pc, pr, batch["reference_chosen"], batch["reference_rejected"], beta)
        return loss, {"reward_margin": beta * margin.mean(),
                      "reward_accuracy": (margin > 0).mean()}

    return loss_fn
