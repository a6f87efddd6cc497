"""jaxllm.losses: each objective against values computed by hand, and the masking."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxllm import losses
from jaxllm.config import ModelConfig, TrainConfig
from jaxllm.data import ExampleBatches
from jaxllm.model import GPT
from jaxllm.train import Trainer

RNG = np.random.default_rng(0)


def _log_softmax(x):
    x = np.asarray(x, np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def test_cross_entropy_by_hand_with_and_without_mask():
    logits = RNG.normal(size=(2, 3, 5)).astype(np.float32)
    targets = RNG.integers(0, 5, (2, 3))
    mask = np.array([[0, 1, 1], [1, 0, 0]], bool)
    nll = -np.take_along_axis(_log_softmax(logits), targets[..., None], -1)[..., 0]
    assert float(losses.cross_entropy(logits, targets)) == pytest.approx(nll.mean(), rel=1e-6)
    # the masked mean divides by the three counted tokens, not by six positions
    assert float(losses.cross_entropy(logits, targets, mask)) == pytest.approx(
        nll[mask].sum() / 3, rel=1e-6)
    assert float(losses.cross_entropy(logits, targets, np.zeros_like(mask))) == 0.0
    # uniform logits cost ln V
    assert float(losses.cross_entropy(np.zeros((1, 4, 7)), np.zeros((1, 4), int))) == \
        pytest.approx(math.log(7), rel=1e-6)


def test_token_and_sequence_logprobs_by_hand():
    logits = RNG.normal(size=(2, 4, 6)).astype(np.float32)
    targets = RNG.integers(0, 6, (2, 4))
    mask = np.array([[1, 1, 0, 0], [0, 1, 1, 1]], np.float32)
    lp = np.take_along_axis(_log_softmax(logits), targets[..., None], -1)[..., 0]
    np.testing.assert_allclose(losses.token_logprobs(logits, targets), lp, rtol=1e-5)
    np.testing.assert_allclose(losses.sequence_logprobs(logits, targets, mask),
                               (lp * mask).sum(-1), rtol=1e-5)


def test_pairwise_reward_loss_by_hand():
    chosen, rejected = np.array([2.0, -1.0, 0.5]), np.array([1.0, 1.0, 0.5])
    expected = np.mean([math.log1p(math.exp(-(c - r))) for c, r in zip(chosen, rejected,
                                                                       strict=True)])
    assert float(losses.pairwise_reward_loss(chosen, rejected)) == pytest.approx(expected,
                                                                                rel=1e-6)
    # equal rewards: the preference is a coin toss, ln 2
    assert float(losses.pairwise_reward_loss(np.zeros(4), np.zeros(4))) == \
        pytest.approx(math.log(2), rel=1e-6)


def test_dpo_loss_by_hand_and_ln2_when_policy_is_reference():
    pc, pr = np.array([-3.0, -5.0]), np.array([-4.0, -2.0])
    rc, rr = np.array([-3.5, -4.0]), np.array([-3.0, -3.0])
    beta = 0.2
    margin = (pc - rc) - (pr - rr)
    expected = np.mean(np.log1p(np.exp(-beta * margin)))
    assert float(losses.dpo_loss(pc, pr, rc, rr, beta)) == pytest.approx(expected, rel=1e-6)
    assert float(losses.dpo_loss(pc, pr, pc, pr, beta)) == pytest.approx(math.log(2),
                                                                        rel=1e-6)


def test_policy_gradient_and_kl_by_hand():
    logp = np.array([[-1.0, -2.0, -0.5], [-0.1, -3.0, -1.0]])
    adv = np.array([1.0, -2.0])
    mask = np.array([[1, 1, 0], [1, 0, 0]], np.float32)
    expected = -(1.0 * (-1.0 - 2.0) + -2.0 * -0.1) / 3
    assert float(losses.policy_gradient_loss(logp, adv, mask)) == pytest.approx(expected,
                                                                               rel=1e-6)
    ref = logp - 0.25
    assert float(losses.kl_estimate(logp, ref, mask)) == pytest.approx(0.25, rel=1e-6)
    # the advantage is a constant: no gradient flows into it
    g = jax.grad(lambda a: losses.policy_gradient_loss(jnp.asarray(logp), a, mask))(
        jnp.asarray(adv))
    np.testing.assert_array_equal(g, 0.0)
    # raising the log-probability of a token with positive advantage lowers the loss
    g = jax.grad(lambda lp: losses.policy_gradient_loss(lp, jnp.asarray(adv), mask))(
        jnp.asarray(logp))
    assert g[0, 0] < 0 and g[1, 0] > 0 and g[0, 2] == 0


CFG = ModelConfig(vocab_size=11, context_length=8, n_layer=1, n_head=2, d_model=16)


def _batch(seed=0, n=4):
    r = np.random.default_rng(seed)
    ids = r.integers(0, CFG.vocab_size, (n, CFG.context_length + 1)).astype(np.int32)
    mask = np.zeros((n, CFG.context_length), bool)
    mask[:, CFG.context_length // 2:] = True  # the answer is the second half
    return {"inputs": ids[:, :-1], "targets": ids[:, 1:], "mask": mask}


def test_masked_loss_ignores_the_prompt_labels_exactly():
    model = GPT(CFG, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model)

    def loss_and_grad(batch):
        def f(p):
            return losses.next_token_loss(nnx.merge(graphdef, p), batch, None)[0]
        return jax.value_and_grad(f)(params)

    batch = _batch()
    changed = dict(batch)
    targets = batch["targets"].copy()
    targets[~batch["mask"]] = (targets[~batch["mask"]] + 3) % CFG.vocab_size
    changed["targets"] = targets
    (l1, g1), (l2, g2) = loss_and_grad(batch), loss_and_grad(changed)
    assert float(l1) == float(l2)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2), strict=True):
        np.testing.assert_array_equal(a, b)
    # ...while a changed answer label changes both
    answer = dict(batch)
    targets = batch["targets"].copy()
    targets[:, -1] = (targets[:, -1] + 1) % CFG.vocab_size
    answer["targets"] = targets
    l3, g3 = loss_and_grad(answer)
    assert float(l3) != float(l1)
    # without a mask every position counts
    full = {k: v for k, v in batch.items() if k != "mask"}
    assert float(loss_and_grad(full)[0]) != float(l1)


def test_dpo_objective_starts_at_ln2_in_the_trainer():
    """DPO with the reference log-probabilities of the initial model: loss ln 2 at step 0,
    and training on the pairs raises the implicit reward accuracy."""
    n, T = 16, CFG.context_length
    r = np.random.default_rng(1)
    prompt = r.integers(0, CFG.vocab_size, (n, T // 2))
    chosen = np.concatenate([prompt, np.full((n, T // 2 + 1), 3)], 1).astype(np.int32)
    rejected = np.concatenate([prompt, np.full((n, T // 2 + 1), 7)], 1).astype(np.int32)
    mask = np.zeros((n, T), bool)
    mask[:, T // 2 - 1:] = True  # the targets that are answer tokens
    tcfg = TrainConfig(steps=30, batch_size=8, learning_rate=1e-2, warmup_steps=2,
                       eval_interval=30, eval_batches=2)
    model = GPT(CFG, rngs=nnx.Rngs(params=jax.random.key(tcfg.seed)))

    def ref_logps(ids):
        return np.asarray(losses.sequence_logprobs(model(ids[:, :-1]), ids[:, 1:], mask))

    table = {"chosen": chosen, "rejected": rejected, "chosen_mask": mask,
             "rejected_mask": mask, "reference_chosen": ref_logps(chosen),
             "reference_rejected": ref_logps(rejected)}
    pairs = ExampleBatches(table, tcfg.batch_size, seed=0)
    ordered = ExampleBatches(table, tcfg.batch_size, shuffle=False)
    trainer = Trainer(CFG, tcfg, pairs, ordered, loss_fn=losses.dpo_objective(beta=0.5))
    before = trainer.evaluate()
    assert before["val_loss"] == pytest.approx(math.log(2), abs=1e-6)
    trainer.fit(progress=False)
    after = trainer.evaluate()
    assert after["val_loss"] < 0.5 * math.log(2)
    assert after["val_reward_accuracy"] == 1.0
    assert trainer.history["reward_margin"][-1] > trainer.history["reward_margin"][0]
