"""Command line: ``jaxllm train``, ``jaxllm sample``, ``jaxllm info``.

Bad flags or values end the program with one line on standard error and exit status 2
(no traceback); an interrupted training run can be continued with ``--resume``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

PROG = "jaxllm"


class UsageError(Exception):
    """A problem with the command line, reported in one line."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, no usage dump
        raise UsageError(f"{self.prog}: error: {message} (see {self.prog} --help)")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _nonneg_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    from .config import PRESETS

    trainable = [name for name, p in PRESETS.items() if p.train is not None]
    parser = _Parser(prog=PROG, description="Train, sample and inspect small GPT models "
                     "written in JAX/Flax NNX.")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    t = sub.add_parser("train", help="train a model into a run folder",
                       description="Train a preset model on a text corpus (character level). "
                       "Writes run.json, tokenizer.json and Orbax checkpoints into --out.")
    t.add_argument("--preset", default="shakespeare-char", choices=trainable,
                   help="model and training preset (default: %(default)s)")
    t.add_argument("--out", required=True, help="run folder to create (or to resume)")
    t.add_argument("--text", help="train on this UTF-8 text file instead of the bundled "
                   "Shakespeare corpus")
    t.add_argument("--steps", type=_positive_int, help="total training steps")
    t.add_argument("--batch-size", type=_positive_int, help="sequences per step")
    t.add_argument("--learning-rate", type=_float, help="peak learning rate")
    t.add_argument("--seed", type=_nonneg_int, help="seed for initialisation and batches")
    t.add_argument("--eval-interval", type=_positive_int, help="steps between evaluations")
    t.add_argument("--checkpoint-every", type=_positive_int, default=500,
                   help="steps between checkpoints (default: %(default)s; one is always "
                   "written at the end)")
    t.add_argument("--resume", action="store_true",
                   help="continue the run already in --out from its latest checkpoint")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")

    s = sub.add_parser("sample", help="generate text from a trained run",
                       description="Generate text from the latest checkpoint of a run "
                       "folder; the text goes to standard output.")
    s.add_argument("run_dir", help="a folder written by `jaxllm train`")
    s.add_argument("--prompt", default="\n", help="text to continue (default: a newline)")
    s.add_argument("--max-new-tokens", type=_positive_int, default=500,
                   help="tokens to generate (default: %(default)s)")
    s.add_argument("--temperature", type=_float, default=0.8,
                   help="0 for greedy decoding (default: %(default)s)")
    s.add_argument("--top-k", type=_positive_int, help="sample among the k most likely tokens")
    s.add_argument("--top-p", type=_float, help="nucleus sampling threshold in (0, 1]")
    s.add_argument("--num-samples", type=_positive_int, default=1,
                   help="independent samples, decoded as one batch (default: %(default)s)")
    s.add_argument("--seed", type=_nonneg_int, default=0, help="random seed (default: 0)")
    s.add_argument("--step", type=_nonneg_int, help="checkpoint step (default: the latest)")

    i = sub.add_parser("info", help="list presets and their parameter counts",
                       description="List the presets with their shapes and parameter counts "
                       "(computed with jax.eval_shape; nothing is allocated).")
    i.add_argument("--preset", choices=list(PRESETS), help="show only this preset")
    return parser


def _train(args: argparse.Namespace) -> int:
    import jax

    from .sharding import initialize_distributed

    # On a TPU pod slice or a multi-node GPU cluster this joins the other hosts (before
    # anything touches a device); on one machine it does nothing.
    initialize_distributed()

    from .checkpoint import CHECKPOINT_DIR, read_run_info, write_run_info
    from .config import ModelConfig, TrainConfig, get_preset
    from .data import load_corpus, load_text, train_val_split
    from .model import count_params
    from .tokenizer import CharTokenizer
    from .train import Trainer

    out = os.path.abspath(args.out)
    ckpt_dir = os.path.join(out, CHECKPOINT_DIR)
    has_run = os.path.isdir(ckpt_dir) and any(os.scandir(ckpt_dir))
    if os.path.exists(out) and not os.path.isdir(out):
        raise UsageError(f"--out must be a folder, got the file {args.out!r}")
    if has_run and not args.resume:
        raise UsageError(f"--out {args.out!r} already holds a run; pass --resume to continue "
                         "it or choose another folder")
    if args.resume and not has_run:
        raise UsageError(f"--resume needs a run in --out, but {args.out!r} has no checkpoint")

    if args.resume:
        info = read_run_info(out)
        model_cfg = ModelConfig.from_dict(info["model"])
        train_cfg = TrainConfig.from_dict(info["train"])
        text_path = info.get("text")
        if args.steps is not None:
            train_cfg = train_cfg.replace(steps=args.steps)
        text = load_corpus() if text_path is None else load_text(text_path)
        tokenizer = CharTokenizer.from_text(text)
    else:
        preset = get_preset(args.preset)
        text_path = None if args.text is None else os.path.abspath(args.text)
        text = load_corpus() if text_path is None else load_text(text_path)
        tokenizer = CharTokenizer.from_text(text)
        model_cfg = preset.model.replace(vocab_size=tokenizer.vocab_size)
        changes = {k: v for k, v in {
            "steps": args.steps, "batch_size": args.batch_size,
            "learning_rate": args.learning_rate, "seed": args.seed,
            "eval_interval": args.eval_interval}.items() if v is not None}
        if "steps" in changes and preset.train.warmup_steps >= changes["steps"]:
            changes["warmup_steps"] = max(0, changes["steps"] // 10)
        if "learning_rate" in changes:
            changes["min_learning_rate"] = min(preset.train.min_learning_rate,
                                               changes["learning_rate"])
        train_cfg = preset.train.replace(**changes)

    train_tokens, val_tokens = train_val_split(tokenizer.encode(text), train_cfg.val_fraction)
    trainer = Trainer(model_cfg, train_cfg, train_tokens, val_tokens)
    if jax.device_count() > 1:
        # Several devices (or hosts): the same step, compiled with shardings (see
        # docs/scaling.md). Done before restoring, so a checkpoint loads onto the mesh.
        from .sharding import describe, make_mesh, shard_trainer

        n = jax.device_count()
        if train_cfg.batch_size % n:
            raise UsageError(f"--batch-size must be a multiple of the {n} devices, got "
                             f"{train_cfg.batch_size}")
        shard_trainer(trainer, make_mesh())
        print(describe(trainer.mesh), file=sys.stderr)
    if args.resume:
        trainer.restore(ckpt_dir)
        print(f"resumed {args.out} at step {trainer.step} of {train_cfg.steps}",
              file=sys.stderr)
    else:
        write_run_info(out, model_cfg, train_cfg, tokenizer, text=text_path,
                       preset=args.preset)
        print(f"training {args.preset}: {count_params(model_cfg):,} parameters, "
              f"{len(train_tokens):,} training tokens, {train_cfg.steps} steps on "
              f"{jax.default_backend()}", file=sys.stderr)
    if args.resume:
        write_run_info(out, model_cfg, train_cfg, tokenizer, text=text_path,
                       preset=info.get("preset"))
    history = trainer.fit(progress=not args.no_progress and jax.process_index() == 0,
                          checkpoint_dir=ckpt_dir,
                          checkpoint_every=args.checkpoint_every)
    secs = history["seconds"][-1]
    line = f"step {trainer.step}: train loss {history['train_loss'][-1]:.4f}"
    if "val_loss" in history and history["val_loss"]:
        line += f", val loss {history['val_loss'][-1]:.4f}"
    print(f"{line}; {secs:.1f} s; checkpoint in {os.path.relpath(ckpt_dir)}", file=sys.stderr)
    return 0


def _sample(args: argparse.Namespace) -> int:
    from .checkpoint import load_run
    from .sample import generate

    if args.top_p is not None and not 0 < args.top_p <= 1:
        raise UsageError(f"--top-p must be in (0, 1], got {args.top_p}")
    if args.temperature < 0:
        raise UsageError(f"--temperature must be >= 0, got {args.temperature}")
    if not os.path.isdir(args.run_dir):
        raise UsageError(f"run_dir must be a folder written by `jaxllm train`, got "
                         f"{args.run_dir!r}")
    model, tokenizer, _ = load_run(args.run_dir, args.step)
    try:
        prompt = tokenizer.encode(args.prompt)
    except ValueError as e:
        raise UsageError(f"--prompt cannot be encoded by this run's tokenizer: {e}") from None
    if not prompt:
        raise UsageError("--prompt must not be empty")
    if args.top_k is not None and args.top_k > model.cfg.vocab_size:
        raise UsageError(f"--top-k must be at most the vocabulary size "
                         f"{model.cfg.vocab_size}, got {args.top_k}")
    outs = generate(model, [prompt] * args.num_samples, args.max_new_tokens,
                    temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                    seed=args.seed)
    for k, ids in enumerate(outs):
        if k:
            sys.stdout.write("\n" + "-" * 40 + "\n")
        sys.stdout.write(args.prompt + tokenizer.decode(ids))
    sys.stdout.write("\n")
    return 0


def _info(args: argparse.Namespace) -> int:
    from .config import PRESETS
    from .model import count_params

    names = [args.preset] if args.preset else list(PRESETS)
    # Mixture-of-experts presets also show the parameters one token uses ("active").
    print(f"{'preset':<18}{'layers':>7}{'heads':>7}{'width':>7}{'context':>9}"
          f"{'parameters':>18}{'published':>18}{'active':>18}{'published active':>18}")
    for name in names:
        p = PRESETS[name]
        c = p.model
        pub = f"{p.published_params:,}" if p.published_params else "-"
        active = f"{count_params(c, active=True):,}" if c.n_experts else "-"
        pub_active = f"{p.published_active_params:,}" if p.published_active_params else "-"
        print(f"{name:<18}{c.n_layer:>7}{c.n_head:>7}{c.d_model:>7}{c.context_length:>9}"
              f"{count_params(c):>18,}{pub:>18}{active:>18}{pub_active:>18}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.version:
            from . import __version__

            print(__version__)
            return 0
        if args.command is None:
            parser.print_help()
            return 2
        return {"train": _train, "sample": _sample, "info": _info}[args.command](args)
    except UsageError as e:
        print(str(e) if str(e).startswith(PROG) else f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    except (ValueError, TypeError) as e:
        if os.environ.get("JAXLLM_DEBUG"):
            raise
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted (resume with `jaxllm train --out DIR --resume`)",
              file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
