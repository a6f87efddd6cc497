# ruff: noqa: E501  (the model cards' table rows are long lines)
"""Align the shipped ``world-base`` with the pipeline of chapter 11.4 and ship the results:
``world-sft`` (supervised fine-tuning only) and ``world-chat`` (the best aligned model by the
hidden labeller's score on held-out prompts), each with its model card, and the pipeline's
histories, figures and evaluation table in ``world-chat/alignment.json``.

    python scripts/ship_world_chat.py            # about 15 minutes on an idle 2-core CPU

Every model is evaluated as stored (bf16), on the ``eval`` prompts of
:func:`jaxllm.world_chat.alignment_prompts`, with :func:`jaxllm.world_chat.hhh_evaluate`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "jaxllm" / "resources" / "models"
COMMAND = "python scripts/ship_world_chat.py"
NAMES = {"base": "world-base (no alignment)", "sft": "SFT", "dpo": "DPO (labeller's pairs)",
         "dpo_ai": "DPO (judge's pairs)"}


def display_name(method: str, rl_lr: float) -> str:
    """``rl_beta=0.05_lr=0.0001`` -> ``RLOO, beta 0.05, lr 0.0001``."""
    if not method.startswith("rl_"):
        return NAMES.get(method, method)
    beta, _, lr = method[len("rl_beta="):].partition("_lr=")
    return f"RLOO, beta {beta}, lr {lr or f'{rl_lr:g}'}"


def _card_table(rows: dict, rl_lr: float) -> str:
    from jaxllm.world_chat import TABLE_COLUMNS, table_cells

    head = "| method | " + " | ".join(h for _, h, _ in TABLE_COLUMNS) + " |"
    lines = [head, "|---" * (len(TABLE_COLUMNS) + 1) + "|"]
    lines += [f"| {display_name(name, rl_lr)} | " + " | ".join(table_cells(r)) + " |"
              for name, r in rows.items()]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base", default="world-base")
    p.add_argument("--scale", type=float, default=1.0,
                   help="multiply every step count (e.g. 4 on a GPU)")
    p.add_argument("--dest", default=str(MODELS), help="folder to write the two models in")
    p.add_argument("--load", default="idle", help="the machine's load while it ran")
    args = p.parse_args(argv)

    import jax
    import numpy as np

    from jaxllm import world as W
    from jaxllm import world_chat as WC
    from jaxllm.pretrained import export_pretrained, load_pretrained

    dest = Path(args.dest)
    for name in ("world-sft", "world-chat"):  # fail before any work, not after it
        if (dest / name).exists() and not (dest / name / "config.json").is_file():
            raise SystemExit(f"{dest / name} exists and is not a model folder")
    base = load_pretrained(args.base)
    world = W.build_world(W.WORLD_CORPUS_SEED)
    cfg = WC.PipelineConfig()
    if args.scale != 1.0:
        cfg = cfg.scaled(args.scale)
    t0 = time.perf_counter()
    res = WC.run_pipeline(base.model, base.tokenizer, world, cfg,
                          log=lambda s: print(s, file=sys.stderr, flush=True))
    pipeline_s = time.perf_counter() - t0

    labeller = WC.HiddenLabeller(world)
    prompts = WC.alignment_prompts(world, "eval", **WC.EVAL_PROMPTS)
    key = jax.random.key(WC.EVAL_SEED)
    tmp = Path(tempfile.mkdtemp())
    rows: dict[str, dict] = {}
    stored: dict[str, object] = {"base": base.model}
    try:
        for name, model in res.models.items():  # evaluate the bf16 weights that would ship
            export_pretrained(model, tmp / name, card="(draft)", tokenizer=base.tokenizer)
            stored[name] = load_pretrained(tmp / name).model
        t = time.perf_counter()
        sft_eval = WC.hhh_evaluate(stored["sft"], base.tokenizer, prompts, labeller, key=key,
                                   samples=WC.EVAL_SAMPLES, reference=stored["sft"],
                                   reward_model=res.reward_model)
        for name, model in stored.items():
            r = sft_eval if name == "sft" else WC.hhh_evaluate(
                model, base.tokenizer, prompts, labeller, key=key, samples=WC.EVAL_SAMPLES,
                reference=stored["sft"], baseline=sft_eval["replies"],
                reward_model=res.reward_model)
            rows[name] = {k: v for k, v in r.items() if k != "replies"}
            rows[name]["examples"] = [[p.chat[-1]["content"], rep] for p, rep in
                                      zip(prompts[:6], r["replies"][::WC.EVAL_SAMPLES][:6],
                                          strict=True)]
            print(f"evaluated {name}", file=sys.stderr, flush=True)
        eval_s = time.perf_counter() - t
        # Every method competes, SFT included: a later step that does not beat it is not
        # shipped as an improvement.
        best = max(res.models, key=lambda n: rows[n]["hidden"])
        # The subset tests/test_world_chat.py re-evaluates from the shipped files.
        sub_prompts = prompts[:WC.SUBSET_PROMPTS]
        subset = {}
        for name in ("sft", best):
            r = WC.hhh_evaluate(stored[name], base.tokenizer, sub_prompts, labeller,
                                key=key, samples=1)
            subset["world-sft" if name == "sft" else "world-chat"] = {
                k: r[k] for k in WC.SUBSET_KEYS}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    f = res.figures
    table = _card_table(rows, cfg.rl_lr)
    hist = res.histories
    rl_rows = "\n".join(
        f"| {display_name(n, cfg.rl_lr)} | {np.mean(hist[n]['reward'][:10]):+.2f} -> {np.mean(hist[n]['reward'][-10:]):+.2f} | "
        f"{np.mean(hist[n]['hidden'][:10]):+.2f} -> {np.mean(hist[n]['hidden'][-10:]):+.2f} | "
        f"{np.mean(hist[n]['kl'][-10:]):.3f} | {res.seconds[n]:.0f} s |"
        for n in res.models if n.startswith("rl_"))
    made = f"""| | |
|---|---|
| command | `{COMMAND}`{"" if args.scale == 1.0 else f" `--scale {args.scale}`"} (from the shipped `{args.base}`; {pipeline_s / 60:.0f} minutes for the pipeline and {eval_s / 60:.0f} for the evaluation on a 2-core CPU, {args.load}) |
| code | `jaxllm.world_chat.run_pipeline` with `PipelineConfig()`: `jaxllm.align` for every step |
| seed | {cfg.seed} (every sample, batch order and label flip) |
| SFT | {f['sft_conversations']} conversations (`jaxllm.world_chat.demonstrations`: the corpus's correct, concise, not rude, refusing transcripts, plus written "I don't know" answers about invented names), {cfg.sft_steps} steps of {cfg.batch_size}, learning rate {cfg.sft_lr}, loss on the assistant's tokens only |
| preference pairs | {f['pairs']} pairs from the SFT model's own samples ({cfg.pair_samples} per prompt, {cfg.pairs_per_prompt} pairs per prompt) labelled by `HiddenLabeller` with {cfg.noise:.0%} label noise; {f['train_pairs']} to train, {f['val_pairs']} held out |
| reward model | Bradley-Terry, trunk started from the SFT model, {cfg.rm_steps} steps; held-out accuracy {f['rm_val_accuracy']:.1%} against the noisy labels (whose own agreement with the labeller is {f['val_label_agreement']:.1%}: the noise ceiling), {f['rm_val_accuracy_clean']:.1%} against the labeller's clean labels |
| RL | RLOO, {cfg.rl_steps} steps of {cfg.prompts_per_step} prompts x {cfg.group_size} samples, KL coefficient beta in {list(cfg.rl_betas)}, learning rate {cfg.rl_lr} and again at {cfg.rl_push_lr} (pushed harder, to show over-optimisation) |
| DPO | beta {cfg.dpo_beta}, {cfg.dpo_steps} steps, the reward model's training pairs |
| AI feedback | a judge (base trunk + scalar head) trained on {f['judge_examples']} principle labels of SFT samples on other prompts ({f['judge_val_accuracy']:.1%} right on the first batch of {cfg.batch_size} of its {f['judge_val_examples']} held-out labels); of its {f['ai_pairs']} preference pairs over the same candidates, the {f['judge_decided_pairs']} on which the labeller has a preference agree with it in {f['judge_agreement']:.1%}; DPO on its pairs |
| stored | bfloat16 safetensors; the evaluation is of the stored weights |
"""
    eval_text = f"""Each model answers the {len(prompts)} held-out prompts of `alignment_prompts(world, "eval")`
({WC.EVAL_PROMPTS['n_facts']} questions about facts of the world whose questions are in no training data of
the alignment steps, {WC.EVAL_PROMPTS['n_harmful']} requests of the harmful category including a device never
seen in training, {WC.EVAL_PROMPTS['n_unknown']} questions about people and organisations that exist nowhere in
the data), {WC.EVAL_SAMPLES} replies per prompt sampled at temperature 1 (key {WC.EVAL_SEED}). The win rate is
the hidden labeller's preference against the SFT model's replies (ties count one half); the KL
is per reply token, from the model's own samples; RM reward is the pipeline's reward model.

{table}
"""
    card_chat = f"""# world-chat: the course's aligned chat model

`world-chat` is `world-base` after the alignment pipeline of chapter 11.4; the method whose
replies the hidden labeller scores highest on held-out prompts was shipped:
**{display_name(best, cfg.rl_lr)}**.
It answers in the course's chat format (`jaxllm.chat`), stops at `<|end|>`, refuses the
fictional dangerous devices and says "I don't know" about people it has never heard of,
as far as the table below says it does.

```python
import jaxllm
m = jaxllm.load_pretrained("world-chat")   # m.model, m.tokenizer, m.card
```

## How it was made

{made}
## Evaluation

{eval_text}
## RL over training (mean of the first and the last 10 steps)

| run | learned reward | hidden labeller's score | KL per token (last 10) | time |
|---|---|---|---|---|
{rl_rows}

The histories, the samples logged during RL and every figure of this card are in
`alignment.json` beside it.

## Intended use and limits

For teaching only. It knows only the generated world, is right about its facts only as often as
the table says, and its "harmlessness" concerns one invented category of request.
"""
    card_sft = f"""# world-sft: world-base after supervised fine-tuning

The first step of chapter 11.4's pipeline: `world-base` fine-tuned on good demonstrations,
with the loss on the assistant's tokens only. It is the reference (KL, win rate) of every later
step, and the starting point of the reward model, RL and DPO that made `world-chat`.

```python
import jaxllm
m = jaxllm.load_pretrained("world-sft")
```

## How it was made

{made}
## Evaluation

{eval_text}"""
    extra_common = {"command": COMMAND, "pipeline_seconds": pipeline_s}
    for name, method, card in (("world-sft", "sft", card_sft), ("world-chat", best, card_chat)):
        out = export_pretrained(res.models[method], dest / name, card=card,
                                tokenizer=base.tokenizer, overwrite=True,
                                extra={**extra_common, "method": method,
                                       "evaluation": rows[method],
                                       "evaluation_subset": subset[name]})
        size = sum(x.stat().st_size for x in out.iterdir())
        print(f"wrote {out} ({size / 1e6:.1f} MB)", file=sys.stderr)
    doc = {"command": COMMAND, "config": {k: getattr(cfg, k) for k in cfg.__dataclass_fields__},
           "best": best, "figures": f, "seconds": res.seconds, "pipeline_seconds": pipeline_s,
           "eval_seconds": eval_s, "table": rows, "histories": res.histories,
           "samples": {k: [[s, m, r] for s, m, r in v] for k, v in res.samples.items()},
           "eval": {"prompts": WC.EVAL_PROMPTS, "samples": WC.EVAL_SAMPLES,
                    "seed": WC.EVAL_SEED}}
    (dest / "world-chat" / "alignment.json").write_text(json.dumps(doc, indent=1) + "\n")
    print(WC.hhh_table(rows))
    print(f"best: {best}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
