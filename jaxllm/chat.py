"""The course's chat format: messages with roles -> one token sequence, and back.

One template serves training (pre-training documents and SFT), :func:`jaxllm.generate`, the
chapters and the API server (``jaxllm serve``), so a model always sees at inference exactly
the layout it was trained on. Each turn is a role token, the message text, and the end-of-turn
token::

    <|system|>Be brief.<|end|><|user|>Capital of Peru?<|end|><|assistant|>Lima.<|end|>

A prompt for the model ends with ``<|assistant|>`` (``add_generation_prompt=True``); the model
then writes the answer and ``<|end|>``, which is the stop token of generation. ``<|endoftext|>``
separates documents in a pre-training corpus.

The special tokens are single token ids of a tokenizer trained with them
(``BPETokenizer.train(text, vocab_size, special_tokens=SPECIAL_TOKENS)``); message text is
encoded without them, so a user who types ``<|end|>`` gets its characters, never the token
(the tokenizer raises instead of silently turning text into control tokens).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

__all__ = ["END", "END_OF_TEXT", "ROLES", "ROLE_TOKENS", "SPECIAL_TOKENS", "ChatEncoding",
           "check_messages", "decode_reply", "encode_chat", "end_id", "parse_chat", "render"]

END_OF_TEXT = "<|endoftext|>"
END = "<|end|>"
ROLES = ("system", "user", "assistant")
ROLE_TOKENS = {role: f"<|{role}|>" for role in ROLES}
#: Every special token of the format, in the order a tokenizer should be trained with them.
SPECIAL_TOKENS = (END_OF_TEXT, *ROLE_TOKENS.values(), END)


def check_messages(messages: Any, *, where: str = "messages") -> list[dict[str, str]]:
    """``messages`` as a list of ``{"role", "content"}`` dicts, or a ``ValueError``/``TypeError``
    that names the first bad message. Roles are ``system`` (only as the first message),
    ``user`` and ``assistant``; content is a string without the format's special tokens."""
    if isinstance(messages, (str, bytes, Mapping)) or not isinstance(messages, Sequence):
        raise TypeError(f"{where} must be a list of {{'role': ..., 'content': ...}} dicts; got "
                        f"{type(messages).__name__}")
    if len(messages) == 0:
        raise ValueError(f"{where} is empty; at least one message is needed")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping):
            raise TypeError(f"{where}[{i}] must be a dict with 'role' and 'content'; got "
                            f"{type(m).__name__}")
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            raise ValueError(f"{where}[{i}]['role'] must be one of {list(ROLES)}; got {role!r}")
        if role == "system" and i != 0:
            raise ValueError(f"{where}[{i}] is a system message; only the first message may be "
                             "one")
        if not isinstance(content, str):
            raise TypeError(f"{where}[{i}]['content'] must be a str; got "
                            f"{type(content).__name__}")
        for tok in SPECIAL_TOKENS:
            if tok in content:
                raise ValueError(f"{where}[{i}]['content'] contains the special token {tok!r}, "
                                 "which only the chat template may write")
        out.append({"role": role, "content": content})
    return out


def render(messages: Sequence[Mapping[str, str]], *, add_generation_prompt: bool = False) -> str:
    """The conversation as text in the chat format (special tokens written out)."""
    msgs = check_messages(messages)
    text = "".join(f"{ROLE_TOKENS[m['role']]}{m['content']}{END}" for m in msgs)
    return text + (ROLE_TOKENS["assistant"] if add_generation_prompt else "")


def _special_ids(tokenizer: Any) -> dict[str, int]:
    specials = getattr(tokenizer, "special_tokens", None)
    specials = dict(specials) if isinstance(specials, Mapping) else {}
    missing = [t for t in SPECIAL_TOKENS if t not in specials]
    if missing:
        raise ValueError(
            f"tokenizer has no special token(s) {missing}; train it with "
            f"special_tokens=jaxllm.chat.SPECIAL_TOKENS (it has {sorted(specials)})")
    return {t: specials[t] for t in SPECIAL_TOKENS}


def end_id(tokenizer: Any) -> int:
    """The id of ``<|end|>``: the stop token when generating a reply."""
    return _special_ids(tokenizer)[END]


class ChatEncoding(NamedTuple):
    """Token ids of a conversation and, per id, whether it is an assistant's token (its text
    and its ``<|end|>``): the tokens an SFT loss is taken on."""

    ids: list[int]
    assistant_mask: list[bool]


def encode_chat(tokenizer: Any, messages: Sequence[Mapping[str, str]], *,
                add_generation_prompt: bool = False) -> ChatEncoding:
    """Token ids of the conversation, equal to ``tokenizer.encode(render(...),
    allowed_special="all")``, with the mask of the assistant's tokens."""
    msgs = check_messages(messages)
    special = _special_ids(tokenizer)
    ids: list[int] = []
    mask: list[bool] = []
    for m in msgs:
        body = tokenizer.encode(m["content"]) + [special[END]]
        ids += [special[ROLE_TOKENS[m["role"]]]] + body
        mask += [False] + [m["role"] == "assistant"] * len(body)
    if add_generation_prompt:
        ids.append(special[ROLE_TOKENS["assistant"]])
        mask.append(False)
    return ChatEncoding(ids, mask)


def decode_reply(tokenizer: Any, ids: Sequence[int]) -> tuple[str, bool]:
    """The text of a generated reply and whether it ended with ``<|end|>``. Decoding stops at
    the first ``<|end|>``, or at any other special token (a model that starts a new turn by
    itself has finished its reply)."""
    special_ids = set(_special_ids(tokenizer).values())
    stop = end_id(tokenizer)
    kept: list[int] = []
    ended = False
    for i in ids:
        i = int(i)
        if i in special_ids:
            ended = i == stop
            break
        kept.append(i)
    return tokenizer.decode(kept), ended


def parse_chat(text: str) -> list[dict[str, str]]:
    """The messages of a rendered conversation (the inverse of :func:`render`); raises
    ``ValueError`` if ``text`` is not in the chat format."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str; got {type(text).__name__}")
    by_token = {tok: role for role, tok in ROLE_TOKENS.items()}
    out: list[dict[str, str]] = []
    rest = text
    while rest:
        role = next((by_token[t] for t in by_token if rest.startswith(t)), None)
        if role is None:
            raise ValueError(f"text must start each turn with one of {list(by_token)}; found "
                             f"{rest[:40]!r}")
        rest = rest[len(ROLE_TOKENS[role]):]
        end = rest.find(END)
        if end < 0:
            raise ValueError(f"the {role} turn starting {rest[:40]!r} has no {END!r}")
        out.append({"role": role, "content": rest[:end]})
        rest = rest[end + len(END):]
    return check_messages(out, where="parsed messages")
