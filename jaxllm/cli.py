"""Command line: ``jaxllm train``, ``jaxllm sample``, ``jaxllm eval``, ``jaxllm info``,
``jaxllm serve``.

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


def _config_file(text: str) -> str:
    if not os.path.isfile(text):
        raise argparse.ArgumentTypeError(f"expected an existing .toml or .json file, got {text!r}")
    if not text.endswith((".toml", ".json")):
        raise argparse.ArgumentTypeError(f"expected a .toml or .json file, got {text!r}")
    return text


#: Model shape flags of ``jaxllm train``: flag -> ModelConfig field.
SHAPE_FLAGS = {"n_layer": _positive_int, "n_head": _positive_int, "n_kv_head": _positive_int,
               "d_model": _positive_int, "d_mlp": _positive_int,
               "context_length": _positive_int, "dropout": _float}


def build_parser() -> argparse.ArgumentParser:
    from .config import PRESETS

    trainable = [name for name, p in PRESETS.items() if p.train is not None]
    parser = _Parser(prog=PROG, description="Train, sample, evaluate and inspect small GPT "
                     "models written in JAX/Flax NNX.")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    t = sub.add_parser("train", help="train a model into a run folder",
                       description="Train a model on a text corpus, from a preset, changed by "
                       "a config file and by flags (in that order). Writes run.json, "
                       "tokenizer.json and Orbax checkpoints into --out.",
                       epilog="A config file (TOML or JSON) may hold: preset = NAME; a "
                       "[model] table of ModelConfig fields; a [train] table of TrainConfig "
                       "fields; a [tokenizer] table with kind = \"char\" | \"bpe\" and "
                       "vocab_size; text = PATH (relative to the file).")
    t.add_argument("--preset", choices=trainable,
                   help="model and training preset (default: the config file's, else "
                   "shakespeare-char)")
    t.add_argument("--config", type=_config_file,
                   help="a TOML or JSON file of settings (see below)")
    t.add_argument("--out", required=True, help="run folder to create (or to resume)")
    t.add_argument("--text", help="train on this UTF-8 text file instead of the bundled "
                   "Shakespeare corpus")
    t.add_argument("--data", choices=["shakespeare", "world"],
                   help="the bundled Shakespeare plays, or the corpus of the course's generated "
                   "world (jaxllm.world, seed 0; BPE with the chat format's special tokens) "
                   "(default: the preset's)")
    t.add_argument("--tokenizer", choices=["char", "bpe"],
                   help="characters, or byte-level BPE trained on the training text and "
                   "saved in the run folder (default: char)")
    t.add_argument("--vocab-size", type=_positive_int,
                   help="BPE vocabulary size, at least 256 (default: 512; only with "
                   "--tokenizer bpe)")
    for field in SHAPE_FLAGS:
        t.add_argument(f"--{field.replace('_', '-')}", type=SHAPE_FLAGS[field],
                       help=f"model shape: {field}")
    t.add_argument("--steps", type=_positive_int, help="total training steps")
    t.add_argument("--batch-size", type=_positive_int, help="sequences per step")
    t.add_argument("--learning-rate", type=_float, help="peak learning rate")
    t.add_argument("--seed", type=_nonneg_int, help="seed for initialisation and batches")
    t.add_argument("--eval-interval", type=_positive_int, help="steps between evaluations")
    t.add_argument("--checkpoint-every", type=_positive_int, default=500,
                   help="steps between checkpoints (default: %(default)s; one is always "
                   "written at the end)")
    t.add_argument("--resume", action="store_true",
                   help="continue the run already in --out from its latest checkpoint "
                   "(with its saved settings and tokenizer; --steps may extend it)")
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

    e = sub.add_parser("eval", help="loss, perplexity and bits per character of a text",
                       description="Score a UTF-8 text with a trained run: cross-entropy per "
                       "token, perplexity, and bits per character and per byte (the text is "
                       "cut into consecutive windows of the model's context).")
    e.add_argument("run_dir", help="a folder written by `jaxllm train`")
    e.add_argument("--text", required=True, help="the UTF-8 text file to score")
    e.add_argument("--step", type=_nonneg_int, help="checkpoint step (default: the latest)")
    e.add_argument("--batch-size", type=_positive_int, default=16,
                   help="windows per batch (default: %(default)s)")

    i = sub.add_parser("info", help="a run's settings and progress, or the presets",
                       description="With a run folder: its config, parameter count, steps and "
                       "last losses. Without: the presets with their shapes and parameter "
                       "counts (computed with jax.eval_shape; nothing is allocated).")
    i.add_argument("run_dir", nargs="?", help="a folder written by `jaxllm train`")
    i.add_argument("--preset", choices=list(PRESETS), help="show only this preset")

    v = sub.add_parser("serve", help="serve a model over the OpenAI and Anthropic HTTP APIs",
                       description="Serve a run folder (or a shipped model) at "
                       "/v1/chat/completions (OpenAI) and /v1/messages (Anthropic), with "
                       "streaming and JSON-schema structured output. Point the official "
                       "clients at it: OpenAI(base_url='http://HOST:PORT/v1', api_key=KEY), "
                       "Anthropic(base_url='http://HOST:PORT', api_key=KEY).")
    v.add_argument("--model", required=True, metavar="DIR_OR_NAME",
                   help="a folder written by `jaxllm train`, or a shipped model's name")
    v.add_argument("--port", type=_nonneg_int, default=8000, help="default: %(default)s")
    v.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default: %(default)s, this machine only; any "
                   "other address needs an API key)")
    v.add_argument("--api-key", help="the key clients must send (default: the "
                   "JAXLLM_API_KEY environment variable; none on 127.0.0.1 if unset)")
    v.add_argument("--model-name", help="the model id clients ask for (default: the run "
                   "folder's name or the shipped model's name)")
    v.add_argument("--max-batch", type=_positive_int, default=16,
                   help="requests decoded together (default: %(default)s)")
    v.add_argument("--max-queue", type=_positive_int, default=64,
                   help="requests queued or running before new ones get 429 (default: "
                   "%(default)s)")
    return parser


def _read_config_file(path: str) -> dict:
    """The settings of a ``--config`` file, checked for unknown keys."""
    import json

    with open(path, "rb") as f:
        if path.endswith(".toml"):
            import tomllib

            try:
                data = tomllib.load(f)
            except tomllib.TOMLDecodeError as e:
                raise UsageError(f"--config {path!r} is not valid TOML: {e}") from None
        else:
            try:
                data = json.load(f)
            except json.JSONDecodeError as e:
                raise UsageError(f"--config {path!r} is not valid JSON: {e}") from None
    allowed = {"preset", "model", "train", "tokenizer", "text"}
    if not isinstance(data, dict) or set(data) - allowed:
        extra = sorted(set(data) - allowed) if isinstance(data, dict) else data
        raise UsageError(f"--config {path!r} may hold only {sorted(allowed)}, got {extra}")
    for table in ("model", "train", "tokenizer"):
        if not isinstance(data.get(table, {}), dict):
            raise UsageError(f"--config {path!r}: {table} must be a table, got "
                             f"{data[table]!r}")
    tok = data.get("tokenizer", {})
    if set(tok) - {"kind", "vocab_size"}:
        raise UsageError(f"--config {path!r}: [tokenizer] may hold only kind and vocab_size, "
                         f"got {sorted(tok)}")
    if "text" in data:
        data["text"] = os.path.join(os.path.dirname(os.path.abspath(path)), str(data["text"]))
    return data


def _settings(args: argparse.Namespace):
    """Model and training configs, the tokenizer settings and the text of a new run: the
    preset, then the config file, then the flags."""
    from .config import get_preset
    from .validate import check_int

    conf = _read_config_file(args.config) if args.config else {}
    name = args.preset or conf.get("preset") or "shakespeare-char"
    try:
        preset = get_preset(name)
    except ValueError as e:
        raise UsageError(f"--config preset: {e}") from None
    if preset.train is None:
        raise UsageError(f"preset {name!r} is a published shape for counting, not for training")
    try:
        model = preset.model.replace(**conf.get("model", {}))
        train = preset.train.replace(**conf.get("train", {}))
    except (TypeError, ValueError) as e:
        raise UsageError(f"--config {args.config!r}: {e}") from None
    shape = {f: getattr(args, f) for f in SHAPE_FLAGS if getattr(args, f) is not None}
    flags = {k: v for k, v in {
        "steps": args.steps, "batch_size": args.batch_size, "learning_rate": args.learning_rate,
        "seed": args.seed, "eval_interval": args.eval_interval}.items() if v is not None}
    if "steps" in flags and train.warmup_steps >= flags["steps"]:
        flags["warmup_steps"] = max(0, flags["steps"] // 10)
    if "learning_rate" in flags:
        flags["min_learning_rate"] = min(train.min_learning_rate, flags["learning_rate"])
    for what, cfg, changes in (("model", model, shape), ("train", train, flags)):
        try:
            cfg = cfg.replace(**changes)
        except (TypeError, ValueError) as e:
            flag = next((f"--{k.replace('_', '-')}" for k in changes if k in str(e)), what)
            raise UsageError(f"{flag}: {e}") from None
        model, train = (cfg, train) if what == "model" else (model, cfg)
    tok = dict(conf.get("tokenizer", {}))
    text = args.text or conf.get("text")
    data = args.data or preset.data
    if text is not None and args.data == "world":
        raise UsageError("--data world and --text are two corpora; give one")
    if text is not None:
        data = "text"
    default_kind = "bpe" if preset.tokenizer == "bpe" or data == "world" else "char"
    kind = args.tokenizer or tok.get("kind", default_kind)
    if kind not in ("char", "bpe"):
        raise UsageError(f"--config tokenizer kind must be 'char' or 'bpe', got {kind!r}")
    vocab = args.vocab_size or tok.get("vocab_size")
    if kind == "char" and data == "world":
        raise UsageError("--data world needs --tokenizer bpe (its chat format has special "
                         "tokens), got --tokenizer char")
    if kind == "char" and vocab is not None:
        raise UsageError(f"--vocab-size needs --tokenizer bpe, got {vocab} with characters")
    if kind == "bpe":
        vocab = (preset.vocab_size or 512) if vocab is None else vocab
        try:
            check_int("--vocab-size (BPE: the 256 bytes and merges)", vocab, min=256)
        except ValueError as e:
            raise UsageError(str(e)) from None
    return (name, model, train, kind, vocab, (None if text is None else os.path.abspath(text)),
            data)


def _train(args: argparse.Namespace) -> int:
    import jax

    from .sharding import initialize_distributed

    # On a TPU pod slice or a multi-node GPU cluster this joins the other hosts (before
    # anything touches a device); on one machine it does nothing.
    initialize_distributed()

    from .checkpoint import CHECKPOINT_DIR, TOKENIZER_FILE, read_run_info, write_run_info
    from .config import ModelConfig, TrainConfig
    from .data import train_val_split
    from .model import count_params
    from .tokenizer import BPETokenizer, CharTokenizer, load_tokenizer
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
        ignored = [f"--{k.replace('_', '-')}" for k in ("preset", "config", "text", "data",
                                                       "tokenizer",
                                                       "vocab_size", *SHAPE_FLAGS,
                                                       "batch_size", "learning_rate", "seed",
                                                       "eval_interval")
                   if getattr(args, k) is not None]
        if ignored:
            raise UsageError(f"--resume continues the run with its saved settings; "
                             f"{', '.join(ignored)} cannot change them (only --steps can)")

    if args.resume:
        info = read_run_info(out)
        name, text_path = info.get("preset"), info.get("text")
        model_cfg = ModelConfig.from_dict(info["model"])
        train_cfg = TrainConfig.from_dict(info["train"])
        if args.steps is not None:
            train_cfg = train_cfg.replace(steps=args.steps)
        data = info.get("data", "shakespeare" if text_path is None else "text")
        text = _corpus(data, text_path)
        tokenizer = load_tokenizer(os.path.join(out, info.get("tokenizer", TOKENIZER_FILE)))
    else:
        name, model_cfg, train_cfg, kind, vocab, text_path, data = _settings(args)
        if text_path is not None and not os.path.isfile(text_path):
            raise UsageError(f"--text must be an existing UTF-8 file, got {text_path!r}")
        text = _corpus(data, text_path)
        if kind == "bpe":
            # Trained on the training part only, so the validation loss is honest. The world's
            # corpus is written in the chat format, whose special tokens become single ids.
            from .chat import SPECIAL_TOKENS

            cut = int(round(len(text) * (1.0 - train_cfg.val_fraction)))
            tokenizer = BPETokenizer.train(
                text[:cut], vocab_size=vocab,
                special_tokens=SPECIAL_TOKENS if data == "world" else ())
        else:
            tokenizer = CharTokenizer.from_text(text)
        model_cfg = model_cfg.replace(vocab_size=tokenizer.vocab_size)

    ids = (tokenizer.encode(text, allowed_special="all") if data == "world"
           else tokenizer.encode(text))
    train_tokens, val_tokens = train_val_split(ids, train_cfg.val_fraction)
    mesh = None
    if jax.device_count() > 1:
        # Several devices (or hosts): the same step, compiled with shardings (see
        # docs/scaling.md); a checkpoint restores onto the mesh.
        from .sharding import describe, make_mesh

        n = jax.device_count()
        if train_cfg.batch_size % n:
            raise UsageError(f"--batch-size must be a multiple of the {n} devices, got "
                             f"{train_cfg.batch_size}")
        mesh = make_mesh()
        print(describe(mesh), file=sys.stderr)
    trainer = Trainer(model_cfg, train_cfg, train_tokens, val_tokens, mesh=mesh)
    if args.resume:
        trainer.restore(ckpt_dir)
        print(f"resumed {args.out} at step {trainer.step} of {train_cfg.steps}",
              file=sys.stderr)
    else:
        print(f"training {name}: {count_params(model_cfg):,} parameters, "
              f"{type(tokenizer).__name__} of {tokenizer.vocab_size} tokens, "
              f"{len(train_tokens):,} training tokens, {train_cfg.steps} steps on "
              f"{jax.default_backend()}", file=sys.stderr)
    write_run_info(out, model_cfg, train_cfg, tokenizer, text=text_path, preset=name, data=data)
    history = trainer.fit(progress=not args.no_progress and jax.process_index() == 0,
                          checkpoint_dir=ckpt_dir, checkpoint_every=args.checkpoint_every)
    secs = history["seconds"][-1]
    line = f"step {trainer.step}: train loss {history['train_loss'][-1]:.4f}"
    if history.get("val_loss"):
        line += f", val loss {history['val_loss'][-1]:.4f}"
    print(f"{line}; {secs:.1f} s; checkpoint in {os.path.relpath(ckpt_dir)}", file=sys.stderr)
    return 0


def _corpus(data: str, text_path: str | None) -> str:
    """The training text: a file, the bundled plays, or the generated world (seed 0)."""
    from .data import load_corpus, load_text

    if data == "world":
        from .world import WORLD_CORPUS_SEED, world_corpus

        return world_corpus(WORLD_CORPUS_SEED)
    return load_corpus() if text_path is None else load_text(text_path)


def _run_dir(path: str) -> str:
    if not os.path.isdir(path):
        raise UsageError(f"run_dir must be a folder written by `jaxllm train`, got {path!r}")
    return path


def _sample(args: argparse.Namespace) -> int:
    from .sample import generate
    from .train import load_run

    if args.top_p is not None and not 0 < args.top_p <= 1:
        raise UsageError(f"--top-p must be in (0, 1], got {args.top_p}")
    if args.temperature < 0:
        raise UsageError(f"--temperature must be >= 0, got {args.temperature}")
    model, tokenizer, _ = load_run(_run_dir(args.run_dir), args.step)
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


def _eval(args: argparse.Namespace) -> int:
    import math

    from .data import load_text
    from .train import load_run, score_text

    if not os.path.isfile(args.text):
        raise UsageError(f"--text must be an existing UTF-8 file, got {args.text!r}")
    try:
        text = load_text(args.text)
    except UnicodeDecodeError as e:
        raise UsageError(f"--text {args.text!r} is not UTF-8: {e}") from None
    model, tokenizer, info = load_run(_run_dir(args.run_dir), args.step)
    try:
        score = score_text(model, tokenizer, text, batch_size=args.batch_size)
    except ValueError as e:
        raise UsageError(f"--text cannot be scored with this run's tokenizer: {e}") from None
    print(f"text                {args.text} ({score.characters:,} characters, "
          f"{score.bytes:,} bytes, {score.tokens + 1:,} tokens)")
    print(f"loss                {score.loss:.4f} nats per token")
    print(f"perplexity          {score.perplexity:.3f}")
    print(f"bits per character  {score.bits_per_character:.4f}")
    print(f"bits per byte       {score.bits_per_byte:.4f}")
    print(f"uniform baseline    {math.log(tokenizer.vocab_size):.4f} nats per token "
          f"(ln {tokenizer.vocab_size})")
    return 0


def _info(args: argparse.Namespace) -> int:
    from .config import PRESETS
    from .model import count_params

    if args.run_dir is not None:
        return _run_info(_run_dir(args.run_dir))
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


def _run_info(run_dir: str) -> int:
    from .checkpoint import CHECKPOINT_DIR, TOKENIZER_FILE, Checkpointer, read_run_info
    from .config import ModelConfig, TrainConfig
    from .model import count_params
    from .tokenizer import load_tokenizer

    info = read_run_info(run_dir)
    model_cfg = ModelConfig.from_dict(info["model"])
    train_cfg = TrainConfig.from_dict(info["train"])
    tok = load_tokenizer(os.path.join(run_dir, info.get("tokenizer", TOKENIZER_FILE)))
    print(f"run          {os.path.abspath(run_dir)}")
    print(f"preset       {info.get('preset')}; text: {info.get('text') or 'bundled Shakespeare'}")
    print(f"tokenizer    {type(tok).__name__}, {tok.vocab_size} tokens")
    print(f"parameters   {count_params(model_cfg):,}")
    print("model        " + ", ".join(f"{k}={v}" for k, v in model_cfg.to_dict().items()))
    print("train        " + ", ".join(f"{k}={v}" for k, v in train_cfg.to_dict().items()))
    ckpt_dir = os.path.join(run_dir, CHECKPOINT_DIR)
    steps = Checkpointer(ckpt_dir, create=False).all_steps() if os.path.isdir(ckpt_dir) else []
    if not steps:
        print(f"checkpoints  none (0 of {train_cfg.steps} steps)")
        return 0
    meta = Checkpointer(ckpt_dir, create=False).read_meta()
    hist = meta.get("history", {})
    print(f"checkpoints  steps {', '.join(map(str, sorted(steps)))} "
          f"(latest {max(steps)} of {train_cfg.steps})")
    for key in ("loss", "train_loss", "val_loss"):
        if hist.get(key):
            where = hist["step"][-1] + 1 if key == "loss" else hist["eval_step"][-1]
            print(f"{key:<13}{hist[key][-1]:.4f} (step {where})")
    return 0


def _serve(args: argparse.Namespace) -> int:
    from .serve import API_KEY_ENV, is_loopback, load_model, serve_forever

    api_key = args.api_key or os.environ.get(API_KEY_ENV) or None
    if not is_loopback(args.host) and not api_key:
        raise UsageError(f"--host {args.host} is reachable from other machines; give an API "
                         f"key (--api-key or {API_KEY_ENV}) or use 127.0.0.1")
    if args.port > 65535:
        raise UsageError(f"--port must be at most 65535, got {args.port}")
    try:
        model, tokenizer, name = load_model(args.model)
    except (ValueError, TypeError) as e:
        raise UsageError(f"--model {args.model!r}: {e}") from None
    print(f"{PROG}: serving {name!r} on http://{args.host}:{args.port} (OpenAI base URL "
          f"http://{args.host}:{args.port}/v1)", file=sys.stderr)
    serve_forever(model, tokenizer, model_name=args.model_name or name, host=args.host,
                  port=args.port, api_key=api_key, max_batch=args.max_batch,
                  max_queue=args.max_queue)
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
        return {"train": _train, "sample": _sample, "eval": _eval,
                "info": _info, "serve": _serve}[args.command](args)
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
