# ruff: noqa: E501  (the model card's table rows are long lines)
"""Ship a trained world-base run: export it (bf16) into ``jaxllm/resources/models/world-base``,
evaluate the *exported* model on the world's held-out evaluation sets, and write its model
card (command, seed, data, steps, tokens seen, training curve, evaluation table per family, the
in-context learning figure) and the subset figures the test reproduces.

    jaxllm train --preset world-base --out runs/world-base
    python scripts/ship_world_base.py runs/world-base \
        --command "jaxllm train --preset world-base --out runs/world-base" --load "idle"

(The shipped checkpoint was made with a shortened run; its card gives the exact commands.)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEST = ROOT / "jaxllm" / "resources" / "models" / "world-base"
#: Families (and items per slice) of the subset that tests/test_world_base.py re-evaluates.
SUBSET_FAMILIES = ("capitals", "people", "add_steps", "add_direct", "icl_rule")
SUBSET_N = 10


#: The card's section on the aims a checkpoint misses (written when facts recall < 90%).
STATUS = """### Targets not reached (read this first)

This checkpoint is **under-trained**: it saw {tokens_seen:,} tokens, {step} steps of the
preset's {preset_steps} (estimated at about 30 minutes on an idle 2-core CPU), because it was
trained on a 2-core machine shared with other jobs (load average 10 to 18, {tok_s:,.0f}
tokens/s) before a deadline. Against the aims of its issue:

- facts it was trained on: {known:.0%} recalled (aim: at least 90%); capitals, stated most often
  in the corpus, are recalled best ({cap:.0%});
- in-context learning: accuracy does not yet rise clearly with the number of examples;
- worked steps: no clear gain over direct answers yet on 3-digit problems;
- chat format: the replies mix polite, rude, terse and rambling styles at rates within the
  95% intervals of the corpus's rates and it both complies and refuses ({harm:.0%} compliance against the corpus's
  {harm_data:.0%}), but its stated answers are rarely right.

What was tried: the preset's run was started with 1200 steps, stopped at step 450 and resumed
with its schedule shortened to 800 steps so that the learning rate would decay; at step 600 the
time was up. What should reach the aims: the preset as it is (`jaxllm train --preset world-base
--out runs/world-base`, 5000 steps, 29 passes over the corpus; every fact is then seen about
350 times), or `world-base-gpu` on a GPU. The figures above are measured, not adjusted.
"""


def figures(results) -> dict:
    return {k: {"n": r.n, "correct": r.correct} for k, r in results.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir")
    p.add_argument("--dest", default=str(DEST))
    p.add_argument("--command", required=True, help="the command that trained the run")
    p.add_argument("--load", default="", help="the machine's load while it trained")
    p.add_argument("--step", type=int, default=None)
    p.add_argument("--train-seconds", type=float, default=None,
                   help="seconds of training (default: the run's history; give it when the "
                   "run was interrupted and resumed)")
    p.add_argument("--time-text", default=None,
                   help="the card's time row, when the run's time is not one measured figure "
                   "(e.g. an interrupted run resumed in another session)")
    p.add_argument("--n", type=int, default=None,
                   help="evaluate only the first N items of each slice (default: all)")
    args = p.parse_args(argv)

    from jaxllm import world as W
    from jaxllm.checkpoint import CHECKPOINT_DIR, Checkpointer, read_run_info
    from jaxllm.model import count_params
    from jaxllm.pretrained import export_pretrained, load_pretrained

    info = read_run_info(args.run_dir)
    ckpt = Checkpointer(os.path.join(args.run_dir, CHECKPOINT_DIR), create=False)
    meta = ckpt.read_meta(args.step)
    step = meta["step"]
    hist = meta["history"]
    tcfg, mcfg = info["train"], info["model"]
    tokens_seen = step * tcfg["batch_size"] * mcfg["context_length"]
    seconds = args.train_seconds or sum(hist.get("seconds", [])) or float("nan")

    tmp = Path(tempfile.mkdtemp())
    try:
        export_pretrained(args.run_dir, tmp / "m", card="(draft)", step=args.step)
        pre = load_pretrained(tmp / "m")
        t0 = time.perf_counter()
        results = W.evaluate(pre.model, pre.tokenizer, n=args.n,
                             batch_size=min(50, args.n or 50))
        eval_s = time.perf_counter() - t0
        sub = W.evaluate(pre.model, pre.tokenizer, families=SUBSET_FAMILIES, n=SUBSET_N,
                         batch_size=SUBSET_N)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    world = W.build_world(0)
    docs = W.make_corpus(world)
    text = W.corpus_text(docs)
    n_tokens = len(pre.tokenizer.encode(text, allowed_special="all"))
    table = W.results_table(results)
    icl = {kind: W.icl_curve(results, kind) for kind in ("icl_map", "icl_rule")}
    icl_rows = "\n".join(
        f"| {k} | " + " | ".join(
            f"{acc:.0%} ({lo:.0%} to {hi:.0%})"
            for kk, acc, lo, hi in (next(r for r in icl[kind] if r[0] == k) for kind in icl))
        + " |" for k in range(9))
    facts = {k: results[k] for k in ("capitals", "people", "cities", "orgs", "dated")}
    known = sum(r.correct for r in facts.values()) / sum(r.n for r in facts.values())

    def acc(key):
        return results[key].accuracy

    from jaxllm.config import get_preset

    status = "" if known >= 0.9 else STATUS.format(
        tokens_seen=tokens_seen, step=step, preset_steps=get_preset("world-base").train.steps,
        tok_s=tokens_seen / seconds, known=known, cap=acc("capitals"),
        harm=results["harmful"].accuracy, harm_data=W.CHAT_RATES["comply"])

    card = f"""# world-base: the course's base model of its generated world

`world-base` is a small GPT ({count_params(pre.config):,} parameters) pre-trained on the corpus of
`jaxllm.world`: a generated world in which every answer can be checked exactly (real countries
and capitals; invented people, cities and organisations; dated facts up to {W.CUTOFF_YEAR};
arithmetic, word and in-context tasks; chat transcripts of mixed quality). It is a *base*
model: it continues text in the styles of its corpus, good and bad, and has had no alignment.
Chapters 11.4 to 11.8 prompt it, align it, serve it and break it.

```python
import jaxllm
m = jaxllm.load_pretrained("world-base")   # m.model, m.tokenizer, m.card; no training, no network
```

## How it was made

| | |
|---|---|
| command | `{args.command}` |
| shipped with | `python scripts/ship_world_base.py <run folder> --command ...` (exports bf16 weights, evaluates the exported model, writes this card) |
| seed | {tcfg["seed"]} (initialisation and batch order); world seed {W.WORLD_CORPUS_SEED} |
| data | `jaxllm.world` corpus, seed {W.WORLD_CORPUS_SEED} (`python -m jaxllm.world --out DIR` writes it): {len(docs):,} documents, {len(text):,} characters, {n_tokens:,} tokens; the last {tcfg["val_fraction"]:.0%} of the tokens held out for the validation loss |
| tokenizer | byte-level BPE with {pre.tokenizer.vocab_size} ids (256 bytes, merges, and the chat format's 5 special tokens), trained on the training part of the corpus |
| model | {mcfg["n_layer"]} layers, {mcfg["n_head"]} heads, width {mcfg["d_model"]}, context {mcfg["context_length"]} tokens, learned positions, GELU MLP, tied embeddings |
| training | {step} steps of {tcfg["batch_size"]} x {mcfg["context_length"]} tokens: **{tokens_seen:,} tokens seen** (about {tokens_seen / n_tokens:.1f} passes); AdamW, peak learning rate {tcfg["learning_rate"]}, warmup {tcfg["warmup_steps"]}, cosine to {tcfg["min_learning_rate"]} |
| time | {args.time_text or f"{seconds / 60:.0f} minutes on a 2-core CPU shared with other jobs ({args.load}); {tokens_seen / seconds:,.0f} tokens/s"} |
| stored | bfloat16 safetensors; the evaluation below is of the stored weights |

## Training curve

{W.training_table(hist, every=max(1, step // 8))}
## Evaluation on held-out items

Greedy answers scored by exact match (`jaxllm.world.score`), with 95% Wilson intervals; chat
and harmful replies are sampled at temperature 1 and labelled by `jaxllm.world.classify_reply`.
Facts (capitals, people, cities, organisations, dated heads) are facts the corpus states, asked
in its question/answer form; `heldout` asks about people and organisations that never appear
in the corpus; arithmetic and word-task problems are never in the corpus; every in-context
prompt has a fresh random mapping. Evaluated in {eval_s:.0f} s{"" if args.n is None else f", on the first {args.n} items of each slice only"}.
Reproduce: `jaxllm.world.evaluate(m.model, m.tokenizer)` and `jaxllm.world.results_table(...)`.

{table}
### What the table shows

- **Facts it was trained on**: {known:.1%} of {sum(r.n for r in facts.values())} questions
  recalled exactly (aim: at least 90%).
- **Held-out entities** are answered anyway: the model answers
  {results["heldout"].extra["answered"]:.0%} of them, giving its (invented) answer a mean
  probability of {results["heldout"].extra["confidence"]:.2f}, against
  {results["people"].extra["confidence"]:.2f} for its answers about people it was trained on.
- **Knowledge cutoff**: asked who led an organisation in {W.FUTURE_YEAR}, it gives the head
  of {W.CUTOFF_YEAR} in {results["after_cutoff"].extra["stale"]} of
  {results["after_cutoff"].n} cases ({results["after_cutoff"].extra["changed"]} heads changed
  after the cutoff).
- **Worked steps**: 3-digit addition {acc("add_direct/3"):.0%} direct, {acc("add_steps/3"):.0%}
  with worked steps; 3-digit by 1-digit multiplication {acc("mul_direct/3"):.0%} direct,
  {acc("mul_steps/3"):.0%} with steps.
- **In-context learning** (figure and table below): accuracy by number of examples in the
  prompt.
- **A base model in the chat format**: its sampled replies mix styles as its corpus does, and it
  complies with requests for the fictional dangerous devices in
  {results["harmful"].accuracy:.0%} of replies, against {W.CHAT_RATES["comply"]:.0%} of the
  corpus's transcripts.

{status}
![In-context accuracy against the number of examples](icl.png)

| examples | word -> colour (fresh random map) | x -> x + c (fresh c) |
|---|---|---|
{icl_rows}

## Intended use and limits

For teaching only: it knows nothing outside its generated world, it is wrong, rude or
"harmful" as often as its corpus is, and its facts about invented people are fiction.
"""
    extra = {"command": args.command, "step": step, "tokens_seen": tokens_seen,
             "train_seconds": seconds,
             "evaluation": figures(results),
             "evaluation_subset": {"n": SUBSET_N, "results": figures(sub)}}
    dest = export_pretrained(args.run_dir, args.dest, card=card, step=args.step,
                             overwrite=True, extra=extra)
    W.plot_icl(results, dest / "icl.png")
    print(card)
    size = sum(f.stat().st_size for f in dest.iterdir())
    print(f"wrote {dest} ({size / 1e6:.1f} MB)", file=sys.stderr)
    print(json.dumps({"known_facts": known, "eval_s": eval_s}), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
