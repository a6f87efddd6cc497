"""Export the character-level Shakespeare run as the shipped model ``shakespeare-char``, with
its model card (measured here, on the exported bfloat16 weights).

The model ships in ``jaxllm/resources/models/shakespeare-char/`` and is made by two commands::

    jaxllm train --preset shakespeare-char --steps 5000 --seed 0 --out runs/shakespeare-char
    python scripts/export_shakespeare_char.py runs/shakespeare-char

The card states the validation loss on the whole validation text and on its first
``SLICE`` characters; ``tests/test_shipped_models.py`` recomputes the second (fast) and checks
that it matches.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time

NAME = "shakespeare-char"
TRAIN_COMMAND = ("jaxllm train --preset shakespeare-char --steps 5000 --seed 0 "
                 "--out runs/shakespeare-char")
EXPORT_COMMAND = "python scripts/export_shakespeare_char.py runs/shakespeare-char"
SLICE = 8192  # characters of the validation text the test scores
SAMPLE_PROMPT = "\n\nVIOLA.\n"
SAMPLE_SEED = 0
SAMPLE_TEMPERATURE = 0.8


def _row(name, score) -> str:
    return (f"| {name} | {score.characters:,} | {score.loss:.4f} | {score.perplexity:.3f} | "
            f"{score.bits_per_character:.4f} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", help="the run folder of the training command above")
    parser.add_argument("--train-seconds", type=float,
                        help="wall-clock seconds the training took (the last line of "
                        "`jaxllm train` says)")
    args = parser.parse_args(argv)

    from jaxllm.checkpoint import CHECKPOINT_DIR, Checkpointer
    from jaxllm.config import get_preset
    from jaxllm.data import load_corpus, train_val_split
    from jaxllm.model import count_params
    from jaxllm.pretrained import export_pretrained, load_pretrained
    from jaxllm.sample import generate
    from jaxllm.train import load_run, score_text

    model, tokenizer, info = load_run(args.run_dir)
    meta = Checkpointer(os.path.join(args.run_dir, CHECKPOINT_DIR), create=False).read_meta()
    hist = meta["history"]
    train_cfg = info["train"]
    steps = hist["step"][-1] + 1
    tokens_seen = steps * train_cfg["batch_size"] * info["model"]["context_length"]
    # The checkpoint is saved before fit() records its time; `jaxllm train` prints it last.
    seconds = args.train_seconds or (hist.get("seconds") or [None])[-1]
    if seconds is None:
        parser.error("--train-seconds is needed: the run's checkpoint does not record the "
                     "training time (copy it from the last line `jaxllm train` printed)")

    with tempfile.TemporaryDirectory() as tmp:  # measure the exported (bfloat16) weights
        probe = export_pretrained(args.run_dir, os.path.join(tmp, NAME), card="measuring")
        shipped = load_pretrained(probe)
        text = load_corpus()
        ids = tokenizer.encode(text)
        train_ids, val_ids = train_val_split(ids, train_cfg["val_fraction"])
        val_text = tokenizer.decode(val_ids.tolist())
        t0 = time.perf_counter()
        full = score_text(shipped.model, shipped.tokenizer, val_text)
        part = score_text(shipped.model, shipped.tokenizer, val_text[:SLICE])
        print(f"scored the validation text in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        out = generate(shipped.model, [tokenizer.encode(SAMPLE_PROMPT)], 400,
                       temperature=SAMPLE_TEMPERATURE, seed=SAMPLE_SEED)[0]
        sample = SAMPLE_PROMPT + tokenizer.decode(out)
        size = os.path.getsize(probe / "model.safetensors")

    n_params = count_params(model.cfg)
    cfg = model.cfg
    card = f"""# shakespeare-char

A character-level GPT ({n_params:,} parameters: {cfg.n_layer} layers, {cfg.n_head} heads,
width {cfg.d_model}, context {cfg.context_length} characters) trained on the nine Shakespeare
plays bundled with `jaxllm` (`jaxllm/resources/shakespeare.txt`, see `SHAKESPEARE-SOURCE.md`).
It is the transformer of chapter 11.1; load it with `jaxllm.load_pretrained("{NAME}")`.

## How it was made

```
{TRAIN_COMMAND}
{EXPORT_COMMAND}
```

The first command trains with the preset `shakespeare-char` of `jaxllm/config.py`, its step
count lowered from {get_preset("shakespeare-char").train.steps:,} to {steps:,} to keep the
training short on a 2-core CPU shared with other jobs; the second writes this folder (weights
in bfloat16, {size / 1e6:.2f} MB) and this card.

## Data

- Text: `jaxllm/resources/shakespeare.txt`, {len(text):,} characters; the tokenizer is its
  {tokenizer.vocab_size} distinct characters.
- Split: the first 90 % of the characters for training ({len(train_ids):,}), the last 10 %
  for validation ({len(val_ids):,} characters: most of *Twelfth Night*), as `jaxllm train`
  splits (`val_fraction = {train_cfg["val_fraction"]}`).

## Training

- Seed {train_cfg["seed"]} (initialisation and the order of the training windows).
- {steps:,} steps of {train_cfg["batch_size"]} windows of {cfg.context_length} characters:
  {tokens_seen:,} characters seen (about {tokens_seen / len(train_ids):.1f} passes over the
  training text).
- AdamW, peak learning rate {train_cfg["learning_rate"]}, {train_cfg["warmup_steps"]} warm-up
  steps, cosine decay to {train_cfg["min_learning_rate"]}, weight decay
  {train_cfg["weight_decay"]}, gradient clipping at {train_cfg["grad_clip"]}.
- {seconds / 60:.1f} minutes of wall-clock time on a 2-core Intel CPU shared with other jobs.
- At the last step the trainer's estimates (on {train_cfg["eval_batches"]} batches of random
  windows) were: train loss {hist["train_loss"][-1]:.4f}, validation loss
  {hist["val_loss"][-1]:.4f} nats per character.

## Evaluation (exported bfloat16 weights, float32 arithmetic)

The validation text scored in consecutive windows of {cfg.context_length} characters
(`jaxllm.train.score_text`, as `jaxllm eval` does):

| text | characters | loss (nats/char) | perplexity | bits per character |
|---|---|---|---|---|
{_row("validation, all", full)}
{_row(f"validation, first {SLICE:,} characters", part)}

For reference, a uniform guess among the {tokenizer.vocab_size} characters costs
{math.log(tokenizer.vocab_size):.4f} nats per character.

## Sample

Prompt {SAMPLE_PROMPT!r}, temperature {SAMPLE_TEMPERATURE}, seed {SAMPLE_SEED},
400 characters (`jaxllm.sample.generate`):

```
{sample.strip(chr(10))}
```

## Limitations

A small model of nine plays: it has learned the layout of a play, names, spelling and some
grammar, not meaning. It knows nothing outside these texts and writes plausible-looking
nonsense.
"""
    extra = {"command": f"{TRAIN_COMMAND} && {EXPORT_COMMAND}", "steps": steps,
             "tokens_seen": tokens_seen, "seed": train_cfg["seed"],
             "train_seconds": round(seconds, 1),
             "final_train_loss": round(hist["train_loss"][-1], 4),
             "final_val_loss": round(hist["val_loss"][-1], 4),
             "val_loss": round(full.loss, 4), "val_slice_characters": SLICE,
             "val_slice_loss": round(part.loss, 4)}
    path = export_pretrained(args.run_dir, NAME, card=card, extra=extra, overwrite=True)
    print(json.dumps(extra, indent=1))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
