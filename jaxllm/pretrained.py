"""Models that ship inside the package, loaded by name with no training and no network.

A shipped model is a folder below ``jaxllm/resources/models/`` (or anywhere on disk)::

    models/<name>/
      config.json        {"format": "jaxllm-pretrained", "model": <ModelConfig>, "dtype": ...}
      tokenizer.json     the tokenizer the model was trained with
      model.safetensors  the parameters, named by their path ("blocks.0.attn.qkv.kernel")
      MODEL_CARD.md      how it was made (the one command), its data, training and evaluation

:func:`export_pretrained` writes one from a run folder of ``jaxllm train`` (or from a model and
its tokenizer), storing the weights in bfloat16 by default to halve the size; the folder is
written beside its destination and renamed into place, so an interrupted export never leaves a
half-written model. :func:`load_pretrained` reads one back into a float32 model (the weights
are exactly the stored values, widened). Reading needs only NumPy: the safetensors file is
parsed by :func:`jaxllm.hub.read_safetensors`; writing uses the ``safetensors`` package
(``pip install "jaxllm[hub]"``).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from importlib import resources
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from .config import ModelConfig
from .hub import read_safetensors
from .model import GPT
from .tokenizer import load_tokenizer
from .validate import check_bool, check_choice

__all__ = ["CARD_FILE", "CONFIG_FILE", "FORMAT", "Pretrained", "WEIGHTS_FILE",
           "export_pretrained", "list_pretrained", "load_pretrained", "models_dir"]

FORMAT = "jaxllm-pretrained"
CONFIG_FILE = "config.json"
TOKENIZER_FILE = "tokenizer.json"
WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "MODEL_CARD.md"
_DTYPES = ("float32", "bfloat16", "float16")


class Pretrained(NamedTuple):
    """A loaded model: the module, its tokenizer, its config, its model card (Markdown) and
    the folder it came from."""

    model: GPT
    tokenizer: Any
    config: ModelConfig
    card: str
    path: Path


def models_dir() -> Path:
    """The folder of the models that ship with the package."""
    return Path(str(resources.files("jaxllm") / "resources" / "models"))


def list_pretrained() -> list[str]:
    """Names of the shipped models (folders of :func:`models_dir` with a ``config.json``)."""
    root = models_dir()
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / CONFIG_FILE).is_file())


def _flat_params(model: nnx.Module) -> dict[str, jax.Array]:
    """Every parameter of ``model`` by its dotted path."""
    pure = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(pure)[0]:
        out[".".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)] = leaf
    return out


def _resolve(name_or_path: Any, where: str) -> Path:
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise TypeError(f"{where}: name_or_path must be a model name or a folder; got "
                        f"{type(name_or_path).__name__}")
    text = os.fspath(name_or_path)
    path = Path(text)
    if path.is_dir():
        if not (path / CONFIG_FILE).is_file():
            raise ValueError(f"{where}: {text!r} is a folder without {CONFIG_FILE}; not a model "
                             "written by jaxllm.export_pretrained")
        return path
    if text in list_pretrained():
        return models_dir() / text
    raise ValueError(f"{where}: name_or_path must be a shipped model, one of "
                     f"{list_pretrained()}, or a folder written by export_pretrained; got "
                     f"{text!r}")


def load_pretrained(name_or_path: str | os.PathLike[str]) -> Pretrained:
    """Load a shipped model by name (see :func:`list_pretrained`) or a folder written by
    :func:`export_pretrained`, with float32 parameters on this process's first device."""
    where = "load_pretrained"
    path = _resolve(name_or_path, where)
    with open(path / CONFIG_FILE, encoding="utf-8") as f:
        info = json.load(f)
    if info.get("format") != FORMAT:
        raise ValueError(f"{where}: {str(path / CONFIG_FILE)!r} has format "
                         f"{info.get('format')!r}; expected {FORMAT!r}")
    cfg = ModelConfig.from_dict(info["model"])
    graphdef, abstract = nnx.split(nnx.eval_shape(lambda: GPT(cfg, rngs=nnx.Rngs(0))))
    stored = read_safetensors(path / WEIGHTS_FILE)
    pure = nnx.to_pure_dict(abstract)
    leaves, treedef = jax.tree_util.tree_flatten_with_path(pure)
    names = [".".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in p) for p, _ in leaves]
    missing = sorted(set(names) - set(stored))
    extra = sorted(set(stored) - set(names))
    if missing or extra:
        raise ValueError(f"{where}: {str(path / WEIGHTS_FILE)!r} does not match its config: "
                         f"missing {missing[:5]}, unexpected {extra[:5]}")
    arrays = []
    for name, (_, leaf) in zip(names, leaves, strict=True):
        value = stored[name]
        if value.shape != leaf.shape:
            raise ValueError(f"{where}: {name} has shape {value.shape} in the file, "
                             f"{leaf.shape} in the model")
        arrays.append(jnp.asarray(np.asarray(value, dtype=np.float32), dtype=leaf.dtype))
    nnx.replace_by_pure_dict(abstract, jax.tree_util.tree_unflatten(treedef, arrays))
    model = nnx.merge(graphdef, abstract)
    tokenizer = load_tokenizer(path / TOKENIZER_FILE)
    card_path = path / CARD_FILE
    card = card_path.read_text(encoding="utf-8") if card_path.is_file() else ""
    return Pretrained(model, tokenizer, cfg, card, path)


def export_pretrained(source: str | os.PathLike[str] | GPT, dest: str | os.PathLike[str], *,
                      card: str, tokenizer: Any = None, dtype: str = "bfloat16",
                      step: int | None = None, overwrite: bool = False,
                      extra: dict[str, Any] | None = None) -> Path:
    """Write a model folder that :func:`load_pretrained` reads, and return its path.

    ``source`` is a run folder of ``jaxllm train`` (its latest checkpoint, or ``step``) or a
    :class:`~jaxllm.model.GPT` (then ``tokenizer`` is required). ``dest`` is a name (the model
    ships in :func:`models_dir`) or a path. ``card`` is the model card in Markdown; ``extra``
    is stored in ``config.json`` (e.g. the command that made the model). Everything is
    checked before anything is written.
    """
    where = "export_pretrained"
    if not isinstance(card, str) or not card.strip():
        raise ValueError(f"{where}: card must be the model card's Markdown text, non-empty; got "
                         f"{card!r:.60}")
    check_choice("dtype", dtype, _DTYPES)
    check_bool("overwrite", overwrite)
    if extra is not None and not isinstance(extra, dict):
        raise TypeError(f"{where}: extra must be a dict or None; got {type(extra).__name__}")
    if not isinstance(dest, (str, os.PathLike)) or not os.fspath(dest):
        raise TypeError(f"{where}: dest must be a model name or a folder path; got {dest!r}")
    dest_text = os.fspath(dest)
    target = (models_dir() / dest_text if os.sep not in dest_text and "/" not in dest_text
              else Path(dest_text))
    if target.exists() and not overwrite:
        raise ValueError(f"{where}: {str(target)!r} exists; pass overwrite=True to replace it")
    if isinstance(source, GPT):
        if tokenizer is None:
            raise ValueError(f"{where}: a model as source needs its tokenizer (tokenizer=...)")
        model = source
        info_extra: dict[str, Any] = {}
    elif isinstance(source, (str, os.PathLike)):
        if tokenizer is not None:
            raise ValueError(f"{where}: tokenizer is taken from the run folder; do not pass one")
        from .train import load_run

        model, tokenizer, run_info = load_run(source, step)
        info_extra = {"preset": run_info.get("preset")}
    else:
        raise TypeError(f"{where}: source must be a run folder or a jaxllm GPT; got "
                        f"{type(source).__name__}")
    from safetensors.numpy import save_file

    np_dtype = jnp.dtype(dtype)
    weights = {k: np.asarray(jax.device_get(v)).astype(np_dtype)
               for k, v in _flat_params(model).items()}
    info = {"format": FORMAT, "model": model.cfg.to_dict(), "dtype": dtype, **info_extra,
            **(extra or {})}
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        save_file(weights, str(tmp / WEIGHTS_FILE), metadata={"format": FORMAT})
        tokenizer.save(tmp / TOKENIZER_FILE)
        (tmp / CONFIG_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        (tmp / CARD_FILE).write_text(card if card.endswith("\n") else card + "\n",
                                     encoding="utf-8")
        # mkdtemp and atomic writers create private (0700 / 0600) entries; a shipped model is
        # read by everyone, so give it the modes of an ordinary folder and files (umask applies).
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o777 & ~umask)
        for f in tmp.iterdir():
            f.chmod(0o666 & ~umask)
        if target.exists():
            old = target.with_name(f".{target.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            target.rename(old)
            tmp.rename(target)
            shutil.rmtree(old)
        else:
            tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target
