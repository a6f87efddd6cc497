"""Is an ability "emergent", or is the metric? Models of several sizes trained on multi-digit
addition, scored by exact match and by per-digit accuracy and loss (chapter 11.1).

Wei et al. (2022) call an ability emergent when it is absent in smaller models and present in
larger ones, with a sharp jump at some scale. Schaeffer et al. (2023) argue that many such
jumps come from the metric: exact match on an answer of ``L`` digits is near ``q ** L`` when
each digit is right with probability ``q``, so a smooth rise of ``q`` with size looks like a
sudden rise of exact match. This module measures both on the same models.

The models see one problem per row (:func:`jaxllm.tasks.addition_line`), and are trained
with the loss on the answer digits only. Evaluation is teacher-forced: for every held-out
problem the model predicts each answer digit given the problem and the correct digits
before it. Exact match (every digit's most likely prediction is right) is then the same as
greedy decoding getting the whole answer right.

A sweep is run from the command line and stored as CSV with the command that made it (its
first line)::

    python -m jaxllm.emergence --out jaxllm/resources/addition-sweep.csv
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .config import ModelConfig, TrainConfig
from .tasks import ADDITION_ALPHABET, AdditionTask, make_addition_task
from .tokenizer import CharTokenizer
from .validate import check_int, check_number

__all__ = ["SIZES", "AdditionResult", "addition_examples", "addition_tokenizer",
           "evaluate_addition", "read_sweep", "run_sweep", "train_addition", "write_sweep"]

#: The model sizes of the sweep: (layers, heads, width), from about 1 thousand to about 150
#: thousand parameters.
SIZES: tuple[tuple[int, int, int], ...] = (
    (1, 1, 8), (1, 2, 16), (2, 2, 24), (2, 4, 32), (2, 4, 48), (3, 4, 64),
)

#: The sweep's fixed settings (every size is trained with the same). Sized for a 2-core CPU:
#: the six sizes train in a few minutes on an idle machine (about 15 minutes
#: on a 2-core CPU shared with other jobs).
DEFAULTS = dict(digits=3, steps=600, batch_size=64, learning_rate=1e-2, n_train=20000,
                n_test=1000)

CSV_FIELDS = ("n_layer", "n_head", "d_model", "params", "seed", "digits", "steps",
              "batch_size", "learning_rate", "exact_match", "digit_accuracy", "answer_loss",
              "seconds")


def addition_tokenizer() -> CharTokenizer:
    """One token per character of :data:`jaxllm.tasks.ADDITION_ALPHABET`."""
    return CharTokenizer(list(ADDITION_ALPHABET))


def addition_examples(task: AdditionTask, split: str = "train") -> dict[str, np.ndarray]:
    """Rows for :class:`jaxllm.data.ExampleBatches`: ``inputs`` and ``targets`` (int32
    ``[n, T]``, ``T`` = one line's length minus one) and ``mask`` (true on the answer
    digits' targets)."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    tok = addition_tokenizer()
    ids = np.asarray([tok.encode(line) for line in task.lines(split)], np.int32)
    mask = np.zeros(ids.shape[1] - 1, bool)
    # Target t is the character at t + 1: the answer's digits sit after "a+b=".
    mask[task.prompt_length - 1:task.prompt_length - 1 + task.answer_length] = True
    return {"inputs": ids[:, :-1], "targets": ids[:, 1:],
            "mask": np.broadcast_to(mask, ids[:, 1:].shape).copy()}


def _model_config(size: tuple[int, int, int], task: AdditionTask) -> ModelConfig:
    n_layer, n_head, d_model = size
    return ModelConfig(vocab_size=len(ADDITION_ALPHABET),
                       context_length=task.prompt_length + task.answer_length, n_layer=n_layer,
                       n_head=n_head, d_model=d_model)


def train_addition(size: tuple[int, int, int], task: AdditionTask, *, steps: int = 600,
                   batch_size: int = 64, learning_rate: float = 1e-2, seed: int = 0):
    """Train a model of ``size`` = (layers, heads, width) on ``task``'s training problems
    with the loss on the answers (cosine schedule, 10 % warm-up); returns the trained
    :class:`jaxllm.train.Trainer`."""
    from .data import ExampleBatches
    from .train import Trainer

    if len(size) != 3:
        raise ValueError(f"size must be (n_layer, n_head, d_model), got {size!r}")
    steps = check_int("steps", steps, min=2)
    cfg = _model_config(tuple(int(s) for s in size), task)
    train_cfg = TrainConfig(steps=steps, batch_size=batch_size, learning_rate=learning_rate,
                            min_learning_rate=learning_rate / 10,
                            warmup_steps=max(1, steps // 10), weight_decay=0.0,
                            eval_interval=steps, eval_batches=1, seed=seed)
    batches = ExampleBatches(addition_examples(task, "train"), batch_size, seed=seed)
    trainer = Trainer(cfg, train_cfg, batches)
    trainer.fit(progress=False)
    return trainer


@dataclass(frozen=True)
class AdditionResult:
    """How a model does on held-out problems: ``exact_match`` (every answer digit right),
    ``digit_accuracy`` (fraction of answer digits right) and ``answer_loss`` (mean
    cross-entropy per answer digit, nats); ``per_position`` is the accuracy of each answer
    digit, least significant first."""

    exact_match: float
    digit_accuracy: float
    answer_loss: float
    per_position: tuple[float, ...]


def evaluate_addition(model: Any, task: AdditionTask, *, batch_size: int = 500
                      ) -> AdditionResult:
    """Teacher-forced evaluation of ``model`` on ``task``'s held-out problems."""
    import jax
    from flax import nnx

    check_int("batch_size", batch_size, min=1)
    ex = addition_examples(task, "test")
    graphdef, params = nnx.split(model)

    @jax.jit
    def logprobs(params, x):
        return jax.nn.log_softmax(nnx.merge(graphdef, params)(x).astype(np.float32), -1)

    sl = slice(task.prompt_length - 1, task.prompt_length - 1 + task.answer_length)
    correct, nats = [], []
    for i in range(0, len(ex["inputs"]), batch_size):
        lp = np.asarray(logprobs(params, ex["inputs"][i:i + batch_size]))[:, sl]
        y = ex["targets"][i:i + batch_size, sl]
        correct.append(lp.argmax(-1) == y)
        nats.append(-np.take_along_axis(lp, y[..., None], -1)[..., 0])
    ok, loss = np.concatenate(correct), np.concatenate(nats)
    return AdditionResult(exact_match=float(ok.all(axis=1).mean()),
                          digit_accuracy=float(ok.mean()), answer_loss=float(loss.mean()),
                          per_position=tuple(float(x) for x in ok.mean(axis=0)))


def run_sweep(sizes: Sequence[tuple[int, int, int]] = SIZES, seeds: Sequence[int] = (0,), *,
              digits: int = 3, steps: int = 600, batch_size: int = 64,
              learning_rate: float = 1e-2, n_train: int = 20000, n_test: int = 1000,
              task_seed: int = 0, log: Any = None) -> list[dict[str, Any]]:
    """Train and evaluate every size with every seed (the same problems for all); one row
    per run with the fields of :data:`CSV_FIELDS`."""
    from .model import count_params

    check_number("learning_rate", learning_rate, low=0.0, low_open=True)
    task = make_addition_task(digits, n_train=n_train, n_test=n_test, seed=task_seed)
    rows = []
    for size in sizes:
        for seed in seeds:
            t0 = time.perf_counter()
            trainer = train_addition(size, task, steps=steps, batch_size=batch_size,
                                     learning_rate=learning_rate, seed=seed)
            res = evaluate_addition(trainer.model, task)
            row = dict(n_layer=size[0], n_head=size[1], d_model=size[2],
                       params=count_params(trainer.model_cfg), seed=seed, digits=digits,
                       steps=steps, batch_size=batch_size, learning_rate=learning_rate,
                       exact_match=round(res.exact_match, 4),
                       digit_accuracy=round(res.digit_accuracy, 4),
                       answer_loss=round(res.answer_loss, 4),
                       seconds=round(time.perf_counter() - t0, 1))
            rows.append(row)
            if log is not None:
                print(", ".join(f"{k}={v}" for k, v in row.items()), file=log, flush=True)
    return rows


def write_sweep(path: str | os.PathLike, rows: Sequence[dict[str, Any]], command: str) -> None:
    """Write ``rows`` as CSV, the first line a comment holding ``command``."""
    buf = io.StringIO()
    buf.write(f"# {command}\n")
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    from .validate import write_text_atomic

    write_text_atomic(path, buf.getvalue())


def read_sweep(path: str | os.PathLike | None = None) -> tuple[list[dict[str, Any]], str]:
    """The rows of a stored sweep (numbers converted) and the command that made it (default:
    the sweep shipped in ``jaxllm/resources/addition-sweep.csv``)."""
    if path is None:
        from .data import resource_path

        path = resource_path("addition-sweep.csv")
    with open(path, encoding="utf-8", newline="") as f:
        first = f.readline()
        if not first.startswith("# "):
            raise ValueError(f"path must be a sweep written by write_sweep (first line "
                             f"'# command'), got {os.fspath(path)!r}")
        rows = list(csv.DictReader(f))
    ints = {"n_layer", "n_head", "d_model", "params", "seed", "digits", "steps", "batch_size"}
    out = [{k: (int(v) if k in ints else float(v)) for k, v in r.items()} for r in rows]
    return out, first[2:].strip()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m jaxllm.emergence",
        description="Train models of several sizes on multi-digit addition and store exact "
        "match, per-digit accuracy and answer loss as CSV.")
    parser.add_argument("--out", required=True, help="CSV file to write")
    parser.add_argument("--sizes", default=",".join("x".join(map(str, s)) for s in SIZES),
                        help="comma-separated LAYERSxHEADSxWIDTH (default: %(default)s)")
    parser.add_argument("--seeds", default="0", help="comma-separated training seeds")
    for name, value in DEFAULTS.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    args = parser.parse_args(argv)
    try:
        sizes = [tuple(int(x) for x in s.split("x")) for s in args.sizes.split(",")]
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        parser.error(f"--sizes must look like 2x4x32,3x4x64 and --seeds like 0,1; got "
                     f"{args.sizes!r} and {args.seeds!r}")
    if any(len(s) != 3 for s in sizes):
        parser.error(f"--sizes must be LAYERSxHEADSxWIDTH, got {args.sizes!r}")
    command = "python -m jaxllm.emergence " + " ".join(
        argv if argv is not None else sys.argv[1:])
    rows = run_sweep(sizes, seeds, **{k: getattr(args, k) for k in DEFAULTS}, log=sys.stderr)
    write_sweep(args.out, rows, command)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
