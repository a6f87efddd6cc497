"""jaxllm: a small, complete GPT in JAX and Flax NNX, written to be read and run."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

# Imported on first use, so that `import jaxllm` stays cheap (no JAX, no safetensors reader).
_LAZY = {"from_pretrained": "hub", "load_hf_tokenizer": "hub", "load_pretrained": "pretrained",
         "export_pretrained": "pretrained", "list_pretrained": "pretrained"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
