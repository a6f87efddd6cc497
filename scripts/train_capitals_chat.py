"""Train and export ``capitals-chat``: a tiny chat model for trying ``jaxllm serve`` and the
API chapter (11.6) while a larger chat model is not installed.

It answers one kind of question, "What is the capital of X?", for the 246 countries and
territories of ``jaxllm.tasks.load_capitals``, in the course's chat format, in three styles
chosen by the system prompt: none (a sentence), "Answer in one word." (the city) and
"Answer in JSON." (an object with country and capital). Anything else gets a confident,
made-up reply in one of those styles: it is a toy that shows the plumbing of an API, not a
useful assistant.

    python scripts/train_capitals_chat.py            # writes jaxllm/resources/models/capitals-chat
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

SYSTEMS = {
    "": "The capital of {c} is {k}.",
    "Answer in one word.": "{k}",
    "Answer in JSON.": '{{"country": "{c}", "capital": "{k}"}}',
}
QUESTIONS = ["What is the capital of {c}?", "Which city is the capital of {c}?",
             "Capital of {c}?", "Tell me the capital of {c}."]


def conversations(repeats: int, seed: int) -> list[list[dict[str, str]]]:
    from jaxllm.tasks import load_capitals

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(repeats):
        for c, k in load_capitals():
            system = list(SYSTEMS)[rng.integers(len(SYSTEMS))]
            msgs = [{"role": "system", "content": system}] if system else []
            msgs += [{"role": "user", "content": QUESTIONS[rng.integers(len(QUESTIONS))]
                      .format(c=c)},
                     {"role": "assistant", "content": SYSTEMS[system].format(c=c, k=k)}]
            out.append(msgs)
    rng.shuffle(out)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="capitals-chat",
                    help="a model name (shipped in jaxllm/resources/models) or a folder")
    args = ap.parse_args()

    from jaxllm import chat, export_pretrained
    from jaxllm.config import ModelConfig, TrainConfig
    from jaxllm.tokenizer import BPETokenizer
    from jaxllm.train import Trainer

    t0 = time.perf_counter()
    text = chat.END_OF_TEXT.join(chat.render(m) for m in conversations(12, args.seed))
    tok = BPETokenizer.train(text[:60_000], 512, special_tokens=chat.SPECIAL_TOKENS)
    ids = np.asarray(tok.encode(text, allowed_special="all"), np.int32)
    mcfg = ModelConfig(vocab_size=tok.vocab_size, context_length=64, n_layer=2, n_head=4,
                       d_model=96)
    tcfg = TrainConfig(steps=args.steps, batch_size=32, learning_rate=3e-3,
                       min_learning_rate=3e-4, warmup_steps=50, eval_interval=args.steps,
                       eval_batches=2, seed=args.seed)
    trainer = Trainer(mcfg, tcfg, ids)
    trainer.fit(progress=False)
    loss = trainer.history["loss"][-1]
    command = " ".join(["python scripts/train_capitals_chat.py", *sys.argv[1:]])
    card = f"""# capitals-chat

A tiny chat model (2 layers, width 96, context 64 tokens, a 512-token byte-level BPE with the
chat tokens of `jaxllm.chat`) for trying `jaxllm serve` and chapter 11.6 while no larger chat
model is installed.

- **Trained on** {len(ids):,} tokens of generated conversations about the capitals of the 246
  countries and territories of `jaxllm.tasks.load_capitals`, in three styles set by the system
  prompt: none (a sentence), "Answer in one word." and "Answer in JSON.".
- **Training**: {args.steps} steps of batch 32, AdamW, learning rate 3e-3 to 3e-4, seed
  {args.seed}; final training loss {loss:.3f} nats per token.
- **Use**: capital questions only. It answers anything else with a confident, made-up reply:
  a toy for the plumbing of an API, not an assistant.
- **Reproduce**: `{command}`
"""
    path = export_pretrained(trainer.model, args.out, card=card, tokenizer=tok,
                             dtype="float32", overwrite=True, extra={"command": command})
    print(f"{path}: loss {loss:.3f}, {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
