"""The generated world: determinism, ground truth, held-out items, labels and the scorer."""

from __future__ import annotations

import re

import numpy as np
import pytest

from jaxllm import world as W
from jaxllm.chat import END_OF_TEXT, parse_chat


@pytest.fixture(scope="module")
def world():
    return W.build_world(0)


@pytest.fixture(scope="module")
def docs(world):
    return W.make_corpus(world)


@pytest.fixture(scope="module")
def corpus(docs):
    return W.corpus_text(docs)


@pytest.fixture(scope="module")
def sets(world):
    return W.make_eval_sets(world)


def test_same_seed_same_bytes_other_seed_other_world(world, sets):
    small = W.corpus_text(W.make_corpus(W.build_world(0), rounds=1, skill_docs=300))
    again = W.corpus_text(W.make_corpus(W.build_world(0), rounds=1, skill_docs=300))
    assert small == again
    other = W.corpus_text(W.make_corpus(W.build_world(1), rounds=1, skill_docs=300))
    assert other != small
    assert W.build_world(0) == world
    assert W.make_eval_sets(W.build_world(0)) == sets


def test_write_world_files_are_reproducible(tmp_path):
    a = W.write_world(tmp_path / "a", 0, rounds=1, skill_docs=200)
    b = W.write_world(tmp_path / "b", 0, rounds=1, skill_docs=200)
    assert a == b and a["documents"] > 200
    for name in ("corpus.txt", "metadata.jsonl", "eval/people.jsonl", "eval/add_steps.jsonl"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    n_docs = (tmp_path / "a" / "corpus.txt").read_text().count(END_OF_TEXT)
    assert n_docs == a["documents"] == len((tmp_path / "a" / "metadata.jsonl")
                                           .read_text().splitlines())


def test_every_family_has_items(sets):
    assert set(sets) == set(W.FAMILIES)
    assert all(len(v) > 0 for v in sets.values())


def test_arithmetic_ground_truth_and_worked_steps():
    rng = np.random.default_rng(0)
    for op in ("add", "mul"):
        for digits in (1, 2, 3):
            for _ in range(30):
                a, b = W._draw_arith(rng, op, digits, heldout=False)
                truth = a + b if op == "add" else a * b
                q, direct = W.arithmetic_item(op, a, b, steps=False)
                assert direct == str(truth) and f"{a}" in q
                _, steps = W.arithmetic_item(op, a, b, steps=True)
                assert W.extract_answer(steps, "steps") == str(truth)
                # every step is right: x op y + carry = s, write s % 10 carry s // 10
                written = []
                for x, y, c, s, d, c2 in re.findall(
                        r"(\d) [+*] (\d) \+ (\d) = (\d+), write (\d) carry (\d)", steps):
                    x, y, c, s, d, c2 = map(int, (x, y, c, s, d, c2))
                    assert s == (x + y if op == "add" else x * y) + c
                    assert (d, c2) == (s % 10, s // 10)
                    written.append(d)
                tail = re.search(r"write (\d)\. So", steps)
                digits_out = ([int(tail.group(1))] if tail else []) + written[::-1]
                assert int("".join(map(str, digits_out))) == truth


def test_eval_answers_are_right(sets):
    for fam in ("add_direct", "add_steps", "mul_direct", "mul_steps"):
        for it in sets[fam]:
            a, b = it.meta["a"], it.meta["b"]
            assert it.answer == str(a + b if fam.startswith("add") else a * b)
            assert len(str(a)) == it.meta["digits"] or (a < 10 and it.meta["digits"] == 1)
    for it in sets["reverse"]:
        letters = it.prompt.split(": ", 2)[2].split("\n")[0].split()
        assert it.answer.split() == letters[::-1]
    for it in sets["sort"]:
        letters = it.prompt.split(": ", 2)[2].split("\n")[0].split()
        assert it.answer.split() == sorted(letters)
    for it in sets["count"]:
        m = re.match(r"Q: How many times does (\w) occur in ([a-z ]+)\?", it.prompt)
        assert it.answer == str(m.group(2).split().count(m.group(1)))
    for it in sets["keymap"]:
        m = re.match(r"Q: Key: (.*)\. Encode: (.*)\nA:", it.prompt)
        key = dict(pair.split("=") for pair in m.group(1).split(", "))
        assert it.answer == " ".join(key[w] for w in m.group(2).split())


def test_in_context_items_follow_their_own_examples(sets):
    shown_right = 0
    for it in sets["icl_map"]:
        lines = it.prompt.split("\n")
        examples = dict(line.split(" -> ") for line in lines[:-1])
        assert len(lines) - 1 == it.meta["examples"]
        query = lines[-1].removesuffix(" ->")
        if query in examples:
            assert examples[query] == it.answer
            shown_right += 1
    assert shown_right > 100
    for it in sets["icl_rule"]:
        lines = it.prompt.split("\n")
        pairs = [tuple(map(int, line.split(" -> "))) for line in lines[:-1]]
        offsets = {y - x for x, y in pairs}
        assert len(offsets) <= 1
        if offsets:
            assert int(it.answer) == int(lines[-1].removesuffix(" ->")) + offsets.pop()


def test_fact_items_are_the_world_s_facts(world, sets):
    capitals = dict(world.capitals)
    for it in sets["capitals"]:
        country = re.match(r"Q: What is the capital of (.*)\?\nA:", it.prompt).group(1)
        assert capitals[country] == it.answer
    people = {p.name: p for p in world.people}
    for it in sets["people"]:
        name = next(n for n in people if n in it.prompt)
        assert it.answer in (str(people[name].born), people[name].profession,
                             people[name].city)
    for o in world.orgs:
        assert o.head_in(1995) == o.heads[0][1]
        for start, head in o.heads:
            assert o.head_in(start) == head


def test_facts_are_stated_in_the_corpus_and_heldout_entities_never(world, corpus):
    for p in world.people[:30]:
        assert f"{p.name} (born {p.born}) is a {p.profession} who lives in {p.city}" in corpus
    for c, k in world.capitals:
        assert f"What is the capital of {c}?\nA: {k}\n" in corpus or f"- {c}: {k}\n" in corpus \
            or f"The capital of {c} is {k}." in corpus
    for name in world.heldout_names:
        assert name not in corpus
    for p in world.heldout_people:  # not even the first or last name
        assert re.search(rf"\b{p.name.split()[1]}\b", corpus) is None


def test_dated_facts_stop_at_the_cutoff(world, corpus, sets):
    for year in range(W.CUTOFF_YEAR + 1, W.FUTURE_YEAR + 1):
        assert f"In {year}," not in corpus and f"in {year}?" not in corpus
    changed = [it for it in sets["after_cutoff"] if it.meta["changed"]]
    assert changed, "some heads must change after the cutoff"
    for it in changed:
        org = re.match(r"Q: Who led the (.*) in \d+\?", it.prompt).group(1)
        assert f"{it.answer} became the head of the {org}" not in corpus


def test_heldout_problems_never_in_the_corpus(corpus, sets):
    seen = set(re.findall(r"What is (\d+) ([+*]) (\d+)\?", corpus))
    assert len(seen) > 1000
    for a, sym, b in seen:
        assert not W.is_heldout_problem("add" if sym == "+" else "mul", int(a), int(b))
    for fam in ("add_direct", "mul_steps"):
        for it in sets[fam]:
            assert (str(it.meta["a"]), "+" if fam.startswith("add") else "*",
                    str(it.meta["b"])) not in seen
    words_seen = set(re.findall(r"Reverse the letters: ([a-z ]+)\n", corpus))
    for it in sets["reverse"]:
        assert it.prompt.split(": ", 2)[2].removesuffix("\nA:") not in words_seen


def test_chat_documents_parse_and_their_labels_match_the_text(docs):
    chats = [d for d in docs if d.meta["form"] == "chat"]
    assert len(chats) > 500
    rates = {"complies": [], "rude": [], "correct": []}
    for d in chats:
        msgs = parse_chat(d.text)
        assert msgs[-1]["role"] == "assistant" and msgs[-2]["role"] == "user"
        labels = W.classify_reply(msgs[-1]["content"])
        if d.meta["family"] == "harmful":
            assert labels["complies"] == d.meta["complies"]
            assert labels["refuses"] == (not d.meta["complies"])
            rates["complies"].append(d.meta["complies"])
        else:
            assert labels["rude"] == (d.meta["tone"] == "rude")
            assert labels["polite"] == (d.meta["tone"] == "polite")
            assert labels["rambling"] == d.meta["rambling"]
            assert labels["answer"] is not None
            rates["correct"].append(d.meta["correct"])
            rates["rude"].append(d.meta["tone"] == "rude")
    for key, want in (("complies", W.CHAT_RATES["comply"]), ("rude", W.CHAT_RATES["rude"]),
                      ("correct", W.CHAT_RATES["correct"])):
        assert abs(np.mean(rates[key]) - want) < 0.06, key
    assert not any(dev in "".join(d.text for d in chats) for dev in W.HELDOUT_DEVICES)


def test_wrong_chat_answers_are_wrong_and_right_ones_right(world, docs):
    truth = {q: a for _, q, a in W.fact_questions(world)}
    checked = 0
    for d in docs:
        if d.meta.get("family") == "chat":
            msgs = parse_chat(d.text)
            said = W.classify_reply(msgs[-1]["content"])["answer"]
            assert (said == truth[msgs[-2]["content"]]) == d.meta["correct"]
            checked += 1
    assert checked > 500


def test_scorer():
    it = W.EvalItem("people", "Q: When was X born?\nA:", "1962")
    assert W.score(" 1962\nQ: next", it)
    assert W.score(" 1962.", it)
    assert not W.score(" 19620", it) and not W.score("", it) and not W.score(" 1963", it)
    steps = W.EvalItem("add_steps", "Q: ...", "405", "steps")
    assert W.score(" 7 + 8 + 0 = 15, write 5 carry 1. So the answer is 405.\nQ:", steps)
    assert not W.score(" 405", steps)  # no worked answer
    assert W.extract_answer("Obviously, the answer is Lima. Look it up next time.", "chat") \
        == "Lima"
    assert W.extract_answer("The answer is St. George's.", "chat") == "St. George's"
    with pytest.raises(ValueError, match="mode"):
        W.extract_answer("x", "lines")
    with pytest.raises(TypeError, match="reply"):
        W.extract_answer(3)
    lo, hi = W.wilson_interval(90, 100)
    assert 0.82 < lo < 0.83 and 0.94 < hi < 0.95
    assert W.wilson_interval(0, 10)[0] == 0.0
    for k, n in ((100, 100), (0, 100), (3, 3), (1, 7)):  # the interval holds the rate exactly
        lo, hi = W.wilson_interval(k, n)
        assert lo <= k / n <= hi
    assert W.wilson_interval(100, 100)[1] == 1.0


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="seed"):
        W.build_world(-1)
    with pytest.raises(ValueError, match="rounds"):
        W.make_corpus(W.build_world(0), rounds=0)
    with pytest.raises(ValueError, match="kind"):
        W.icl_prompt("icl_other", np.random.default_rng(0), 2)


def test_cli_trains_world_base_on_the_world_with_its_bpe():
    from jaxllm.cli import UsageError, _settings, build_parser

    args = build_parser().parse_args(["train", "--preset", "world-base", "--out", "x"])
    name, model, train, kind, vocab, text, data = _settings(args)
    assert (name, kind, vocab, text, data) == ("world-base", "bpe", 2048, None, "world")
    assert model.context_length == 128 and train.batch_size == 32
    args = build_parser().parse_args(["train", "--out", "x", "--data", "world"])
    assert _settings(args)[3] == "bpe"
    for bad, needle in ((["--data", "world", "--tokenizer", "char"], "--tokenizer"),
                        (["--data", "world", "--text", "README.md"], "--text")):
        args = build_parser().parse_args(["train", "--out", "x", *bad])
        with pytest.raises(UsageError, match=needle):
            _settings(args)
