"""The alignment pipeline of jaxllm.align on a toy task, end to end, with a table.

A one-layer GPT learns to answer eight requests with a mix of kind and rude replies (SFT on
both, so its samples are a mix, often garbled); a hidden labeller scores a reply by its kind
words minus its rude words. Then, as in chapter 11.4: preference pairs from the SFT model's own
samples (10 % label noise), a Bradley–Terry reward model started from the SFT model, RLOO
against it with beta = 0 and beta = 0.1, and DPO on the same pairs. Printed: each method's
learned reward, KL to the SFT model and the hidden labeller's score over the last steps, and
the wall time. What to look for: with beta = 0 the learned reward rises and the KL grows while
the hidden score barely moves (the policy finds what the reward model over-rates); with
beta = 0.1 the KL stays small and the hidden score rises.

    python benchmarks/align_toy.py              # about 1.5 minutes of CPU time
    python benchmarks/align_toy.py --rl-steps 80

Not a test: the figures move with the seed. This is the quick check of the package's alignment
code before the chapter runs it on the course's base model.
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np
from flax import nnx

from jaxllm import align, chat
from jaxllm.config import ModelConfig
from jaxllm.model import GPT
from jaxllm.tokenizer import BPETokenizer

KIND = ["yes please", "thank you", "gladly", "sure thing", "with pleasure", "happy to"]
RUDE = ["no", "go away", "never", "shut up", "whatever", "not now"]
REQUESTS = ["help me", "open the door", "pass the salt", "call me", "sing a song",
            "tell a joke", "read this", "wait here"]
KIND_WORDS = {w for s in KIND for w in s.split()}
RUDE_WORDS = {w for s in RUDE for w in s.split()}


def hidden_labeller(prompt, response: str) -> float:
    words = response.split()
    return float(sum(w in KIND_WORDS for w in words) - sum(w in RUDE_WORDS for w in words))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rl-steps", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    t0 = time.perf_counter()
    tok = BPETokenizer.train(" ".join(KIND + RUDE + REQUESTS) * 3, 290,
                             special_tokens=chat.SPECIAL_TOKENS)
    cfg = ModelConfig(vocab_size=tok.vocab_size, context_length=48, n_layer=1, n_head=2,
                      d_model=32)
    base = nnx.jit(lambda: GPT(cfg, rngs=nnx.Rngs(params=args.seed)))()
    convs = [[{"role": "user", "content": q}, {"role": "assistant", "content": a}]
             for q in REQUESTS for a in KIND + RUDE]
    sft = align.sft(base, tok, convs, steps=300, batch_size=32, learning_rate=3e-3,
                    seed=args.seed).model
    t_sft = time.perf_counter()
    key = jax.random.key(args.seed)
    pairs = align.preference_pairs(sft, tok, REQUESTS, hidden_labeller,
                                   key=jax.random.fold_in(key, 1), samples=16,
                                   pairs_per_prompt=16, noise=0.1, max_new_tokens=8,
                                   seed=args.seed)
    rm = align.train_reward_model(align.RewardModel.from_policy(sft), tok, pairs, steps=100,
                                  batch_size=16, learning_rate=1e-3, seed=args.seed).model
    t_rm = time.perf_counter()
    print(f"SFT {t_sft - t0:.0f} s; {len(pairs)} pairs, reward model {t_rm - t_sft:.0f} s, "
          f"its accuracy on them {align.pairwise_accuracy(rm, tok, pairs):.2f} "
          f"(labels agree with the labeller on "
          f"{np.mean([not p.flipped for p in pairs]):.2f})")

    rows = []
    n = max(1, args.rl_steps // 8)
    for beta in (0.0, 0.1):
        t = time.perf_counter()
        res = align.rl_finetune(sft, sft, rm, tok, REQUESTS, key=jax.random.fold_in(key, 2),
                                steps=args.rl_steps, prompts_per_step=8, group_size=4,
                                beta=beta, learning_rate=3e-3, max_new_tokens=8,
                                hidden_score=hidden_labeller)
        h = res.history
        rows.append((f"RLOO beta={beta}", np.mean(h["reward"][:n]), np.mean(h["reward"][-n:]),
                     np.mean(h["kl"][-n:]), np.mean(h["hidden"][:n]),
                     np.mean(h["hidden"][-n:]), time.perf_counter() - t))
    t = time.perf_counter()
    dpo = align.dpo(sft, tok, pairs, beta=0.1, steps=60, batch_size=16, learning_rate=1e-3,
                    seed=args.seed).model
    t_dpo = time.perf_counter() - t

    def hidden_mean(model) -> float:
        out = align.sample_responses(model, tok, REQUESTS, 8, key=jax.random.fold_in(key, 3),
                                     max_new_tokens=8)
        return float(np.mean([hidden_labeller(None, r) for rs in out for r in rs]))

    rows.append(("DPO beta=0.1", np.nan, np.nan, np.nan, hidden_mean(sft), hidden_mean(dpo),
                 t_dpo))
    print(f"\n{'method':<16}{'reward first':>13}{'reward last':>12}{'KL last':>9}"
          f"{'hidden first':>13}{'hidden last':>12}{'seconds':>9}")
    for name, r0, r1, kl, h0, h1, s in rows:
        print(f"{name:<16}{r0:>13.2f}{r1:>12.2f}{kl:>9.2f}{h0:>13.2f}{h1:>12.2f}{s:>9.1f}")
    print("\n(first/last: mean over the first/last eighth of the RL steps; for DPO the hidden "
          "score of 64 samples of the SFT model and of the DPO model)")


if __name__ == "__main__":
    main()
