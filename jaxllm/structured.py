"""Structured output: a grammar matcher that says, before each token, which tokens may come
next, so that every reply parses and validates.

The matcher is llguidance (the one vLLM, SGLang and llama.cpp use): a Rust library that
compiles a JSON schema, a regular expression or a Lark grammar into a lexer and an Earley
parser over *bytes*, and walks the tokenizer's vocabulary as a trie to find every token
whose bytes keep the text inside the language. It needs only each token's bytes, the special
tokens and the end token, which :func:`llg_tokenizer` reads from a jaxllm ``BPETokenizer``
(so any tokenizer the course trains works). The mask it fills is packed, one bit per token
(:func:`jaxllm.sample.unpack_bitmask` expands it on the device); :class:`jaxllm.sample.Stepper`
applies it at each step. The cost per token is measured in ``benchmarks/constrained.py``.

A grammar that no text can satisfy (``{"minimum": 5, "maximum": 3}``, ``allOf`` of a string
and a number) is rejected by :func:`compile_grammar` with llguidance's reason, before any
decoding starts.
"""

from __future__ import annotations

import json
import weakref
from collections.abc import Mapping
from typing import Any

import numpy as np

from .chat import SPECIAL_TOKENS, end_id

__all__ = ["Constraint", "compile_grammar", "grammar_for", "llg_tokenizer"]

_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

#: JSON is written compactly (no optional whitespace): a small model that may emit a space
#: may also emit a thousand of them, and compact JSON is what a parser wants anyway.
JSON_OPTIONS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


def _import_llguidance() -> Any:
    try:
        import llguidance
        import llguidance.numpy  # noqa: F401  (the bitmask helpers)
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("structured output needs llguidance: pip install 'jaxllm[serve]'"
                          ) from e
    return llguidance


class _Vocabulary:
    """The duck-typed tokenizer llguidance's ``LLTokenizer`` accepts: every token's bytes
    (special tokens marked by a leading 0xFF byte, which no UTF-8 text contains), the end
    token, and an encoder for text."""

    def __init__(self, tokenizer: Any) -> None:
        specials = getattr(tokenizer, "special_tokens", {}) or {}
        special_ids = {int(i) for i in specials.values()}
        self.tokens = [(b"\xff" if i in special_ids else b"") + tokenizer.token_bytes(i)
                       for i in range(tokenizer.vocab_size)]
        self.special_token_ids = sorted(special_ids)
        self.eos_token_id = end_id(tokenizer)
        self.bos_token_id = None
        self.is_tokenizer_wrapper = True
        self._tokenizer = tokenizer

    def __call__(self, text: bytes | str) -> list[int]:
        if isinstance(text, bytes):
            text = text.decode("utf-8", errors="replace")
        return self._tokenizer.encode(text)


def llg_tokenizer(tokenizer: Any) -> Any:
    """llguidance's view of a jaxllm tokenizer trained with the chat tokens (built once per
    tokenizer; ``<|end|>`` is its end token). The tokenizer needs ``token_bytes`` (a
    ``BPETokenizer``)."""
    if not hasattr(tokenizer, "token_bytes"):
        raise TypeError(f"structured output needs a byte-level tokenizer with token_bytes "
                        f"(a BPETokenizer); got {type(tokenizer).__name__}")
    missing = [t for t in SPECIAL_TOKENS if t not in (getattr(tokenizer, "special_tokens", {})
                                                      or {})]
    if missing:
        raise ValueError(f"tokenizer has no special tokens {missing}; train it with "
                         "special_tokens=jaxllm.chat.SPECIAL_TOKENS")
    try:
        return _CACHE[tokenizer]
    except (KeyError, TypeError):
        pass
    llg = _import_llguidance()
    lt = llg.LLTokenizer(_Vocabulary(tokenizer), n_vocab=tokenizer.vocab_size)
    try:
        _CACHE[tokenizer] = lt
    except TypeError:  # pragma: no cover - unhashable tokenizer
        pass
    return lt


def grammar_for(kind: str, spec: Any) -> str:
    """An llguidance grammar from a JSON schema (``kind="json_schema"``, a dict or its JSON
    text), a regular expression (``"regex"``) or a Lark grammar (``"lark"``)."""
    llg = _import_llguidance()
    if kind == "json_schema":
        if isinstance(spec, str):
            try:
                spec = json.loads(spec)
            except json.JSONDecodeError as e:
                raise ValueError(f"schema is not valid JSON: {e}") from None
        if not isinstance(spec, Mapping):
            raise ValueError(f"schema must be a JSON object; got {type(spec).__name__}")
        return llg.LLMatcher.grammar_from_json_schema(dict(spec), overrides=JSON_OPTIONS)
    if not isinstance(spec, str):
        raise TypeError(f"a {kind} grammar must be a str; got {type(spec).__name__}")
    if kind == "regex":
        return llg.LLMatcher.grammar_from_regex(spec)
    if kind == "lark":
        return llg.LLMatcher.grammar_from_lark(spec)
    raise ValueError(f"kind must be one of ['json_schema', 'regex', 'lark']; got {kind!r}")


def compile_grammar(tokenizer: Any, kind: str, spec: Any) -> str:
    """:func:`grammar_for`, checked: raises ``ValueError`` with llguidance's reason when the
    grammar is invalid or cannot be satisfied by any text."""
    grammar = grammar_for(kind, spec)
    llg = _import_llguidance()
    error = llg.LLMatcher.validate_grammar(grammar, llg_tokenizer(tokenizer))
    if error and not error.startswith("WARNING"):
        raise ValueError(f"the {kind.replace('_', ' ')} cannot be used for constrained "
                         f"decoding: {error}")
    return grammar


class Constraint:
    """One reply's matcher: fills its row of the packed bitmask before a step and consumes
    the token drawn after it. ``done`` is true once the grammar admits nothing more."""

    def __init__(self, tokenizer: Any, grammar: str) -> None:
        llg = _import_llguidance()
        self._fill = llg.numpy.fill_next_token_bitmask
        self.matcher = llg.LLMatcher(llg_tokenizer(tokenizer), grammar)
        if self.matcher.is_error():
            raise ValueError(f"grammar rejected by llguidance: {self.matcher.get_error()}")

    def fill(self, bitmask: np.ndarray, row: int) -> None:
        self._fill(self.matcher, bitmask, row)

    def consume(self, token: int) -> None:
        if not self.matcher.consume_token(int(token)):
            raise RuntimeError(f"the matcher rejected token {token}: "
                               f"{self.matcher.get_error()}")

    @property
    def done(self) -> bool:
        return self.matcher.is_stopped()

    @property
    def accepting(self) -> bool:
        return self.matcher.is_accepting()
