"""jaxllm.align on tiny models: SFT masking, preference pairs and label noise, the reward model,
the RLOO objective and its KL penalty, DPO (ln 2 at the start, masking) and the judge."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxllm import align, chat, losses
from jaxllm.config import ModelConfig
from jaxllm.model import GPT
from jaxllm.tokenizer import BPETokenizer

GOOD = ["yes please", "thank you", "gladly", "sure thing", "with pleasure", "happy to"]
BAD = ["no", "go away", "never", "shut up", "whatever", "not now"]
QUESTIONS = ["help me", "open the door", "pass the salt", "call me", "sing a song",
             "tell a joke", "read this", "wait here"]


def polite(prompt, response):
    """The toy labeller: +1 per good phrase's word, -1 per bad phrase's word."""
    good = {w for g in GOOD for w in g.split()}
    bad = {w for b in BAD for w in b.split()}
    words = response.split()
    return float(sum(w in good for w in words) - sum(w in bad for w in words))


@pytest.fixture(scope="module")
def tok():
    corpus = " ".join(GOOD + BAD + QUESTIONS) * 3
    return BPETokenizer.train(corpus, 290, special_tokens=chat.SPECIAL_TOKENS)


@pytest.fixture(scope="module")
def cfg(tok):
    return ModelConfig(vocab_size=tok.vocab_size, context_length=48, n_layer=1, n_head=2,
                       d_model=32)


@pytest.fixture(scope="module")
def policy(cfg):
    return nnx.jit(lambda: GPT(cfg, rngs=nnx.Rngs(params=0)))()  # compiled: fast to build


@pytest.fixture(scope="module")
def reward_model(cfg):
    return align.RewardModel.new(cfg, seed=0)


def _with_random_head(rm, seed):
    """A copy of ``rm`` whose head is random (a fresh one is zero: every reward is 0)."""
    rm = nnx.clone(rm)
    kernel = rm.head.kernel
    kernel[...] = jax.random.normal(jax.random.key(seed), kernel.shape)
    return rm


@nnx.jit
def _sft_loss(model, batch):
    return losses.next_token_loss(model, batch)[0]


def _conversation(q, a):
    return [{"role": "system", "content": "Be kind."}, {"role": "user", "content": q},
            {"role": "assistant", "content": a}]


def _pairs(questions, goods, bads):
    return [align.PreferencePair(q, g, b) for q in questions
            for g, b in zip(goods, bads, strict=True)]


# -- SFT -------------------------------------------------------------------------------------------

def test_sft_examples_mask_exactly_the_assistant_tokens(tok):
    convs = [_conversation("help me", "gladly"), _conversation("call me", "yes please")]
    ex = align.sft_examples(tok, convs, 48)
    assert ex["inputs"].shape == ex["targets"].shape == ex["mask"].shape
    assert ex["inputs"].shape[1] % align.PAD_MULTIPLE == 0
    np.testing.assert_array_equal(ex["inputs"][:, 1:], ex["targets"][:, :-1])
    for row, conv in enumerate(convs):
        counted = ex["targets"][row][ex["mask"][row]].tolist()
        assert tok.decode(counted) == conv[-1]["content"] + chat.END


def test_sft_loss_ignores_non_assistant_tokens(tok, policy):
    convs = [_conversation(q, g) for q, g in zip(QUESTIONS, GOOD * 2, strict=False)]
    ex = align.sft_examples(tok, convs, 48)
    loss = _sft_loss(policy, ex)
    # Scramble every target that is not an assistant token (system, user, role tokens,
    # padding): the loss is the same to the last bit.
    rng = np.random.default_rng(1)
    scrambled = dict(ex)
    noise = rng.integers(0, tok.vocab_size, ex["targets"].shape)
    scrambled["targets"] = np.where(ex["mask"], ex["targets"], noise).astype(np.int32)
    assert float(_sft_loss(policy, scrambled)) == float(loss)
    # ... while changing one assistant target changes it.
    r, c = np.argwhere(ex["mask"])[0]
    changed = dict(ex)
    changed["targets"] = ex["targets"].copy()
    changed["targets"][r, c] = (ex["targets"][r, c] + 1) % tok.vocab_size
    assert float(_sft_loss(policy, changed)) != float(loss)


@pytest.mark.integration  # trains a model: a few seconds
def test_sft_fine_tunes_a_copy_and_lowers_the_answer_loss(tok, policy):
    convs = [_conversation(q, "gladly") for q in QUESTIONS]
    before = jax.tree.map(np.asarray, nnx.state(policy))
    trainer = align.sft(policy, tok, convs, steps=40, batch_size=8, learning_rate=3e-3,
                        val_conversations=convs)
    hist = trainer.history
    assert hist["loss"][-1] < 0.5 * hist["loss"][0]
    assert hist["val_loss"][-1] < 0.5 * hist["loss"][0]
    # the model passed in is unchanged
    jax.tree.map(np.testing.assert_array_equal, before, jax.tree.map(np.asarray,
                                                                     nnx.state(policy)))


# -- preference pairs ------------------------------------------------------------------------------

def test_label_pairs_orders_by_the_labeller_and_flips_a_seeded_fraction():
    prompts = QUESTIONS * 50
    responses = [[g, b] for g, b in zip(GOOD * 67, BAD * 67, strict=False)][:len(prompts)]
    clean = align.label_pairs(prompts, responses, polite, seed=3)
    assert len(clean) == len(prompts)
    assert all(polite(None, p.chosen) > polite(None, p.rejected) and not p.flipped
               for p in clean)
    noisy = align.label_pairs(prompts, responses, polite, noise=0.25, seed=3)
    flipped = np.array([p.flipped for p in noisy])
    assert 0.2 < flipped.mean() < 0.3
    for p in noisy:  # a flipped pair has the lower score chosen
        assert (p.scores[0] < p.scores[1]) == p.flipped
    assert align.agreement(polite, noisy) == pytest.approx(1 - flipped.mean())
    assert align.label_pairs(prompts, responses, polite, noise=0.25, seed=3) == noisy
    # ties and single candidates carry no preference
    assert align.label_pairs(["q", "r"], [["no", "never"], ["gladly"]], polite) == []


def test_bad_inputs_raise_clear_errors(tok, policy, reward_model):
    with pytest.raises(ValueError, match=r"noise must be a finite number in \[0.0, 0.5\)"):
        align.label_pairs(["q"], [["a", "b"]], polite, noise=0.5)
    with pytest.raises(ValueError, match="same length"):
        align.label_pairs(["q"], [], polite)
    with pytest.raises(TypeError, match="labeller"):
        align.label_pairs(["q"], [["a", "b"]], "polite")
    with pytest.raises(ValueError, match="no assistant message"):
        align.sft_examples(tok, [[{"role": "user", "content": "hi"}]], 48)
    with pytest.raises(ValueError, match="more than the 48 allowed"):
        align.sft_examples(tok, [_conversation("help me " * 30, "ok")], 48)
    with pytest.raises(ValueError, match="end with a user"):
        align.PreferencePair([{"role": "assistant", "content": "x"}], "a", "b")
    with pytest.raises(ValueError, match="pairs must be a non-empty list"):
        align.pair_examples(tok, [], 48)
    with pytest.raises(TypeError, match="reward_model must be a jaxllm RewardModel"):
        align.train_reward_model(policy, tok, _pairs(["q"], ["a"], ["b"]))
    rm = reward_model
    kwargs = dict(key=jax.random.key(0), steps=1)
    with pytest.raises(ValueError, match="group_size must be"):
        align.rl_finetune(policy, policy, rm, tok, ["q"], group_size=1, **kwargs)
    with pytest.raises(ValueError, match="beta must be"):
        align.rl_finetune(policy, policy, rm, tok, ["q"], beta=-1.0, **kwargs)
    with pytest.raises(ValueError, match="max_new_tokens=60 must fit"):
        align.rl_finetune(policy, policy, rm, tok, ["q"], max_new_tokens=60, **kwargs)
    with pytest.raises(ValueError, match="Principle with a check"):
        align.judge_examples([align.Principle("Be kind.")], ["q"], [["a"]])


# -- the reward model ------------------------------------------------------------------------------

def test_gpt_returns_the_hidden_states_its_logits_are_read_from(policy):
    x = np.arange(12, dtype=np.int32).reshape(2, 6)
    logits, extras = nnx.jit(lambda m, x: m(x, return_hidden=True))(policy, x)
    assert extras["hidden"].shape == (2, 6, policy.cfg.d_model)
    np.testing.assert_allclose(policy.wte.attend(extras["hidden"]), logits, atol=1e-5)


def test_reward_model_reads_the_last_real_token_and_starts_at_zero(tok, reward_model):
    pairs = _pairs(QUESTIONS[:2], GOOD[:2], BAD[:2])
    ex = align.pair_examples(tok, pairs, 48)
    loss = nnx.jit(lambda m, b: align.reward_loss(m, b)[0])(reward_model, ex)
    assert float(loss) == pytest.approx(math.log(2), abs=1e-7)
    # With a non-zero head: the reward of a padded row equals the reward of the row alone,
    # whatever the padding holds.
    rm = nnx.jit(lambda m, t, v: m(t, v))
    head = _with_random_head(reward_model, 2)
    tokens, valid = ex["chosen"], ex["chosen_valid"]
    junk = np.where(valid, tokens, 7).astype(np.int32)
    np.testing.assert_allclose(rm(head, tokens, valid), rm(head, junk, valid), rtol=1e-6)
    n = int(valid[0].sum())
    np.testing.assert_allclose(rm(head, tokens[:1, :n], valid[:1, :n])[0],
                               rm(head, tokens, valid)[0], rtol=1e-5)


@pytest.mark.integration  # trains a model: a few seconds
def test_reward_model_learns_to_rank_a_held_out_toy_set(tok, reward_model):
    rm = reward_model
    train = _pairs(QUESTIONS[:6], GOOD[:4], BAD[:4])
    held_out = _pairs(QUESTIONS[6:], GOOD[4:], BAD[4:]) + _pairs(QUESTIONS[6:], GOOD[:2],
                                                                   BAD[4:])
    assert align.pairwise_accuracy(rm, tok, held_out) == 0.5  # all ties before training
    trainer = align.train_reward_model(rm, tok, train, steps=60, batch_size=8,
                                       learning_rate=3e-3, val_pairs=held_out)
    trained = trainer.model
    assert trainer.history["loss"][0] == pytest.approx(math.log(2), abs=1e-6)
    assert align.pairwise_accuracy(trained, tok, train) == 1.0
    assert align.pairwise_accuracy(trained, tok, held_out) >= 0.9
    scores = align.reward_scores(trained, tok, ["help me"] * 2, ["thank you", "go away"])
    assert scores[0] > scores[1]


# -- RL with a KL penalty ------------------------------------------------------------------------

def test_rloo_advantages_and_loss_by_hand():
    rewards = np.array([1.0, 2.0, 6.0, 3.0, 5.0, 4.0])
    want = [1 - (2 + 6) / 2, 2 - (1 + 6) / 2, 6 - (1 + 2) / 2, 3 - 9 / 2, 5 - 7 / 2, 4 - 8 / 2]
    np.testing.assert_allclose(align.rloo_advantages(rewards, 3), want, rtol=1e-6)
    rng = np.random.default_rng(0)
    lp = -rng.random((4, 5)).astype(np.float32)
    ref = -rng.random((4, 5)).astype(np.float32)
    mask = rng.random((4, 5)) < 0.7
    scores = rng.normal(size=4).astype(np.float32)
    beta = 0.3
    kl_seq = ((lp - ref) * mask).sum(1)
    total = scores - beta * kl_seq
    adv = np.array([total[0] - total[1], total[1] - total[0], total[2] - total[3],
                    total[3] - total[2]])
    loss, m = align.rloo_loss(lp, ref, mask, scores, beta, 2)
    want_loss = -(adv[:, None] * lp * mask).sum() / mask.sum()
    assert float(loss) == pytest.approx(want_loss, rel=1e-5)
    assert float(m["kl"]) == pytest.approx(((lp - ref) * mask).sum() / mask.sum(), rel=1e-5)
    assert float(m["objective"]) == pytest.approx(total.mean(), rel=1e-5)


def _exact_kl(theta, phi):
    p = jax.nn.softmax(theta)
    return jnp.sum(p * (jax.nn.log_softmax(theta) - jax.nn.log_softmax(phi)))


def test_kl_penalty_gradient_points_toward_the_reference():
    """With a constant reward, the RLOO gradient of the KL penalty (from samples) agrees with
    the gradient of the exact KL(pi || ref): a step down it brings the policy back."""
    theta = jnp.array([2.0, -1.0, 0.5, 0.0, 1.5])
    phi = jnp.zeros(5)
    tokens = jax.random.categorical(jax.random.key(0), theta, shape=(8192,))

    def surrogate(theta, beta):
        lp = jax.nn.log_softmax(theta)[tokens][:, None]
        ref = jax.nn.log_softmax(phi)[tokens][:, None]
        return align.rloo_loss(lp, ref, jnp.ones_like(lp, bool), jnp.zeros(len(tokens)),
                               beta, 8)[0]

    grad = jax.jit(jax.grad(surrogate))
    g = grad(theta, 1.0)
    true = jax.grad(_exact_kl)(theta, phi)
    cos = float(g @ true / (jnp.linalg.norm(g) * jnp.linalg.norm(true)))
    assert cos > 0.95
    assert float(_exact_kl(theta - 0.5 * g, phi)) < float(_exact_kl(theta, phi))
    # with beta = 0 and a constant reward there is nothing to follow
    assert float(jnp.abs(grad(theta, 0.0)).max()) == 0.0


@pytest.mark.integration  # trains a model: a few seconds
def test_rl_finetune_runs_records_history_and_is_deterministic(tok, policy, reward_model):
    rm = _with_random_head(reward_model, 4)
    kwargs = dict(key=jax.random.key(5), steps=3, prompts_per_step=2, group_size=2,
                  beta=0.1, learning_rate=1e-3, max_new_tokens=8, hidden_score=polite,
                  log_samples_every=2)
    a = align.rl_finetune(policy, policy, rm, tok, QUESTIONS, **kwargs)
    assert set(a.history) == {"step", "reward", "kl", "kl_sequence", "objective", "length",
                              "hidden"}
    assert all(len(v) == 3 for v in a.history.values())
    assert a.history["kl"][0] == pytest.approx(0.0, abs=1e-5)  # the policy is the reference
    assert a.history["kl"][-1] != 0.0  # ... and then moves away
    assert [s[0] for s in a.samples] == [0, 2]
    b = align.rl_finetune(policy, policy, rm, tok, QUESTIONS, **kwargs)
    assert a.history == b.history


def test_sampled_kl_is_zero_against_itself_and_positive_for_another_policy(tok, policy):
    key = jax.random.key(7)
    assert align.sampled_kl(policy, policy, tok, QUESTIONS[:2], key=key, samples=2,
                            max_new_tokens=6) == (0.0, 0.0)
    other = nnx.clone(policy)
    other.wte.embedding[...] = other.wte.embedding[...] * 5.0  # sharper, different logits
    per_token, per_reply = align.sampled_kl(other, policy, tok, QUESTIONS[:2], key=key,
                                            samples=8, max_new_tokens=6)
    assert per_token > 0.01 and per_reply > per_token


def test_win_rate_by_hand():
    prompts = ["a", "b", "c", "d"]
    got = align.win_rate(polite, prompts, ["gladly", "no", "thank you", "never"],
                         ["no", "gladly", "go away", "no"])
    assert got == (1 + 0 + 1 + 0.5) / 4
    with pytest.raises(ValueError, match="same length"):
        align.win_rate(polite, prompts, ["x"], ["y"])


# -- DPO -------------------------------------------------------------------------------------------

def test_dpo_masks_prompt_and_padding_and_starts_at_ln2(tok, policy):
    pairs = _pairs(QUESTIONS[:3], GOOD[:2], BAD[:2])
    ex = align.pair_examples(tok, pairs, policy.cfg.context_length + 1)
    for i, p in enumerate(pairs):
        for side in ("chosen", "rejected"):
            counted = ex[side][i, 1:][ex[f"{side}_mask"][i]].tolist()
            assert tok.decode(counted) == getattr(p, side) + chat.END
    src = align.dpo_batches(policy, tok, pairs, 4)
    batch = src[0]
    loss = nnx.jit(lambda m, b: losses.dpo_objective(0.1)(m, b)[0])(policy, batch)
    assert float(loss) == pytest.approx(math.log(2), abs=1e-6)
    # The reference log-probability is the sum over the answer tokens of the row scored alone.
    row = ex["chosen"][0][ex["chosen_valid"][0]]
    logp = nnx.jit(lambda m, x, y: losses.token_logprobs(m(x), y))(policy, row[None, :-1],
                                                                   row[None, 1:])
    n_prompt = len(chat.encode_chat(tok, pairs[0].messages).ids)
    want = float(logp[0, n_prompt:].sum())
    got = align.reference_logprobs(policy, ex["chosen"][:1], ex["chosen_mask"][:1])[0]
    assert got == pytest.approx(want, rel=1e-5)
    # Changing the padding (or the targets of prompt positions) changes nothing.
    junk = ex["chosen"].copy()
    pad = ~ex["chosen_valid"]
    junk[pad] = 5
    np.testing.assert_array_equal(
        align.reference_logprobs(policy, junk, ex["chosen_mask"]),
        align.reference_logprobs(policy, ex["chosen"], ex["chosen_mask"]))


@pytest.mark.integration  # trains a model: a few seconds
def test_dpo_learns_the_preferences(tok, policy):
    pairs = _pairs(QUESTIONS, GOOD[:3], BAD[:3])
    trainer = align.dpo(policy, tok, pairs, beta=0.5, steps=30, batch_size=8,
                        learning_rate=3e-3)
    hist = trainer.history
    assert hist["loss"][0] == pytest.approx(math.log(2), abs=1e-6)
    assert hist["loss"][-1] < 0.3
    assert hist["reward_accuracy"][-1] == 1.0


# -- AI feedback -----------------------------------------------------------------------------------

@pytest.mark.integration  # trains a model: a few seconds
def test_judge_learns_a_principle_and_labels_pairs_like_the_labeller(tok, reward_model):
    constitution = [align.Principle("Be kind.", lambda p, r: polite(p, r) > 0)]
    train = align.judge_examples(constitution, QUESTIONS[:6], [GOOD[:4] + BAD[:4]] * 6)
    assert len(train) == 48 and sum(e.label for e in train) == 24

    def kind_vs_unkind(questions):  # the pairs a yes/no principle can decide
        prompts = [q for q in questions for _ in range(4)]
        cands = [[g, b] for _ in questions for g, b in zip(GOOD[:4], BAD[3::-1], strict=True)]
        return align.label_pairs(prompts, cands, polite)

    seen, unseen = kind_vs_unkind(QUESTIONS[:6]), kind_vs_unkind(QUESTIONS[6:])
    untrained = align.judge_labeller(reward_model, tok, constitution)
    assert align.agreement(untrained, seen) == 0.5  # a zero head: every pair a tie
    judge = align.train_judge(reward_model, tok, train, steps=150, batch_size=16,
                              learning_rate=3e-3).model
    labeller = align.judge_labeller(judge, tok, constitution)
    assert align.agreement(labeller, seen) == 1.0
    # prompts it never saw: a one-layer judge trained on 48 labels still mostly agrees
    assert align.agreement(labeller, unseen) >= 0.75
