"""Checkpoints with Orbax, and run directories that the CLI trains into and samples from.

Orbax writes each checkpoint into a temporary folder and renames it into place only when every
file is on disk, so a run killed mid-save leaves the previous checkpoint as the latest one.
Besides the arrays (parameters, optimizer state, step) a checkpoint stores JSON metadata: the
configs, the data position and the metrics history, which is what an exact resume needs.
This module knows nothing of what it saves: :mod:`jaxllm.train` builds the structure a
checkpoint is restored into (and ``jaxllm.train.load_run`` loads a run's model).

A run directory looks like::

    run/
      run.json          model and training configs, preset, tokenizer file name
      tokenizer.json    the tokenizer the model was trained with
      checkpoints/      Orbax checkpoints, one folder per saved step
"""

from __future__ import annotations

import json
import os
from typing import Any

import orbax.checkpoint as ocp

from .config import ModelConfig, TrainConfig
from .validate import check_int, write_json_atomic

RUN_FILE = "run.json"
TOKENIZER_FILE = "tokenizer.json"
CHECKPOINT_DIR = "checkpoints"


class Checkpointer:
    """Save and restore training states in ``directory`` (keeps the ``max_to_keep`` newest)."""

    def __init__(self, directory: str | os.PathLike, *, max_to_keep: int = 2,
                 create: bool = True):
        directory = os.path.abspath(os.fspath(directory))
        if not create and not os.path.isdir(directory):
            raise ValueError(f"checkpoint directory must exist, got {directory!r}")
        if os.path.exists(directory) and not os.path.isdir(directory):
            raise ValueError(f"directory must be a folder, got the file {directory!r}")
        check_int("max_to_keep", max_to_keep, min=1)
        self.directory = directory
        self._manager = ocp.CheckpointManager(
            directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=create,
                                                 enable_async_checkpointing=False),
        )

    def save(self, step: int, state: Any, meta: dict[str, Any]) -> None:
        """Write ``state`` (a pytree of arrays) and ``meta`` (JSON) as checkpoint ``step``."""
        self._manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=True)
        self._manager.wait_until_finished()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def _pick(self, step: int | None) -> int:
        steps = self.all_steps()
        if not steps:
            raise ValueError(f"directory holds no checkpoint: {self.directory!r}")
        if step is None:
            return max(steps)
        if step not in steps:
            raise ValueError(f"step must be one of the saved steps {sorted(steps)}, got {step}")
        return step

    def read_meta(self, step: int | None = None) -> dict[str, Any]:
        """Only the JSON metadata of checkpoint ``step`` (default: the latest)."""
        step = self._pick(step)
        out = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        return dict(out["meta"])

    def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, dict]:
        """The state (with the structure, shapes and dtypes of ``abstract_state``) and the
        metadata of checkpoint ``step`` (default: the latest)."""
        step = self._pick(step)
        out = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
        return out["state"], dict(out["meta"])


def write_run_info(run_dir: str | os.PathLike, model_cfg: ModelConfig, train_cfg: TrainConfig,
                   tokenizer: Any, **extra: Any) -> None:
    """Write ``run.json`` and ``tokenizer.json`` into ``run_dir`` (created if missing)."""
    run_dir = os.fspath(run_dir)
    os.makedirs(run_dir, exist_ok=True)
    tokenizer.save(os.path.join(run_dir, TOKENIZER_FILE))
    info = {"model": model_cfg.to_dict(), "train": train_cfg.to_dict(),
            "tokenizer": TOKENIZER_FILE, **extra}
    write_json_atomic(os.path.join(run_dir, RUN_FILE), info)


def read_run_info(run_dir: str | os.PathLike) -> dict[str, Any]:
    path = os.path.join(os.fspath(run_dir), RUN_FILE)
    if not os.path.isfile(path):
        raise ValueError(
            f"run_dir must be a folder written by `jaxllm train` (with {RUN_FILE}), "
            f"got {os.fspath(run_dir)!r}")
    with open(path, encoding="utf-8") as f:
        return json.load(f)
