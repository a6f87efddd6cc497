"""Synthetic task data: the "it" sentences, the capital-city facts, sentence-aligned batches."""

from __future__ import annotations

import csv
import hashlib
import itertools
import re
from pathlib import Path

import numpy as np
import pytest

from jaxllm import tasks
from jaxllm.data import resource_path

RESOURCES = Path(resource_path("capitals.csv")).parent


# -- "it" sentences -----------------------------------------------------------------------------

def test_every_animal_has_its_own_sound_and_verbs_are_disjoint():
    sounds = list(tasks.ANIMAL_SOUNDS.values())
    assert len(set(sounds)) == len(sounds)
    assert not set(tasks.SUBJECT_VERBS) & set(tasks.OBJECT_VERBS)
    # No word is both an animal and a sound or verb: each word has one role.
    words = set(tasks.ANIMAL_SOUNDS) | set(sounds) | set(tasks.SUBJECT_VERBS + tasks.OBJECT_VERBS)
    assert len(words) == len(tasks.ANIMAL_SOUNDS) + len(sounds) + 8


@pytest.mark.parametrize("verb", tasks.SUBJECT_VERBS)
def test_subject_verbs_make_it_the_subject(verb):
    s = tasks.make_it_sentence("dog", verb, "cat")
    assert s.referent == "dog" and s.other == "cat"
    assert s.text == f"the dog {verb} the cat because it barked."
    assert s.prompt == f"the dog {verb} the cat because it"
    assert s.answer == "barked"


@pytest.mark.parametrize("verb", tasks.OBJECT_VERBS)
def test_object_verbs_make_it_the_object(verb):
    s = tasks.make_it_sentence("dog", verb, "cow")
    assert s.referent == "cow" and s.other == "dog"
    assert s.text.endswith("because it mooed.")
    assert s.answer == tasks.ANIMAL_SOUNDS["cow"]


def test_word_indices_point_at_the_right_words():
    s = tasks.make_it_sentence("owl", "feared", "lion", template=3, distractor="frog",
                               filler=" in the barn")
    assert s.text == "at night the owl feared the lion near the frog in the barn because it roared."
    w = s.words
    assert w[-1] == "." and w[-2] == "roared"
    assert w[s.subject_index] == "owl" and w[s.object_index] == "lion"
    assert w[s.distractor_index] == "frog" and w[s.it_index] == "it"
    assert w[s.verb_index] == "feared"
    assert s.referent_index == s.object_index
    assert s.it_index == len(s.prompt.split(" ")) - 1


def test_make_it_sentence_rejects_bad_input():
    with pytest.raises(ValueError, match="subject"):
        tasks.make_it_sentence("unicorn", "woke", "cat")
    with pytest.raises(ValueError, match="verb"):
        tasks.make_it_sentence("dog", "ate", "cat")
    with pytest.raises(ValueError, match="different"):
        tasks.make_it_sentence("dog", "woke", "dog")
    with pytest.raises(ValueError, match="template"):
        tasks.make_it_sentence("dog", "woke", "cat", template=9)
    with pytest.raises(ValueError, match="distractor"):
        tasks.make_it_sentence("dog", "woke", "cat", distractor="cat")
    with pytest.raises(ValueError, match="filler"):
        tasks.make_it_sentence("dog", "woke", "cat", filler=" on the moon")


@pytest.mark.parametrize("distractors,long", [(0, False), (1, True)])
def test_heldout_pairs_never_appear_together_in_training(distractors, long):
    task = tasks.make_it_task(n_animals=10, n_train=1500, n_heldout=200,
                              distractors=distractors, long=long, seed=3)
    all_pairs = {frozenset(p) for p in itertools.combinations(task.animals, 2)}
    assert task.train_pairs | task.heldout_pairs == all_pairs
    assert not task.train_pairs & task.heldout_pairs
    assert len(task.heldout_pairs) == round(0.25 * len(all_pairs))
    for s in task.train:
        animals = [a for a in (s.subject, s.obj, s.distractor) if a is not None]
        for pair in itertools.combinations(animals, 2):
            assert frozenset(pair) not in task.heldout_pairs, s.text
    for s in task.heldout:
        assert frozenset((s.subject, s.obj)) in task.heldout_pairs
        # The rule holds in every sentence: the word after "it" is the referent's sound.
        assert s.text == f"{s.prompt} {tasks.ANIMAL_SOUNDS[s.referent]}."
    # Every animal is still seen in training, in both roles.
    assert {s.subject for s in task.train} == set(task.animals)
    assert {s.obj for s in task.train} == set(task.animals)
    if distractors:
        assert all(s.distractor not in (s.subject, s.obj) for s in task.train + task.heldout)
    if long:
        assert all(s.filler for s in task.train)


def test_both_kinds_of_verb_and_all_templates_are_used():
    task = tasks.make_it_task(n_train=2000, seed=0)
    kinds = [s.referent == s.subject for s in task.train]
    assert 0.4 < np.mean(kinds) < 0.6
    assert {s.template for s in task.train} == {0, 1, 2, 3}


def test_make_it_task_is_deterministic_and_seeded():
    a = tasks.make_it_task(n_train=50, n_heldout=20, seed=5)
    b = tasks.make_it_task(n_train=50, n_heldout=20, seed=5)
    c = tasks.make_it_task(n_train=50, n_heldout=20, seed=6)
    assert a == b
    assert a.train != c.train


@pytest.mark.parametrize("kwargs,match", [
    ({"n_animals": 2}, "n_animals"),
    ({"n_animals": 99}, "n_animals"),
    ({"heldout_fraction": 1.0}, "heldout_fraction"),
    ({"heldout_fraction": True}, "heldout_fraction"),
    ({"n_train": 0}, "n_train"),
    ({"distractors": 2}, "distractors"),
    ({"seed": -1}, "seed"),
    ({"n_animals": 4, "heldout_fraction": 0.9}, "heldout_fraction"),
])
def test_make_it_task_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        tasks.make_it_task(**kwargs)


def test_it_corpus_is_one_sentence_per_line():
    task = tasks.make_it_task(n_train=5, n_heldout=1)
    text = tasks.it_corpus(task.train)
    assert text.splitlines() == [s.text for s in task.train]
    assert text.endswith(".\n")
    with pytest.raises(ValueError, match="sentences"):
        tasks.it_corpus([])


# -- capital-city facts -------------------------------------------------------------------------

def test_capitals_are_the_shipped_geonames_list():
    pairs = tasks.load_capitals()
    assert len(pairs) > 200
    assert dict(pairs)["France"] == "Paris"
    assert dict(pairs)["Japan"] == "Tokyo"
    assert pairs == sorted(pairs)
    assert len({c for c, _ in pairs}) == len(pairs)
    assert all(c == c.strip() and k == k.strip() and c and k for c, k in pairs)
    note = (RESOURCES / "CAPITALS-SOURCE.md").read_text(encoding="utf-8")
    digest = hashlib.sha256((RESOURCES / "capitals.csv").read_bytes()).hexdigest()
    assert f"SHA-256: `{digest}`" in note, "capitals.csv differs from its source note"
    assert re.search(rf"\b{len(pairs)} rows", note)
    assert "Creative Commons Attribution 4.0" in note
    with open(RESOURCES / "capitals.csv", encoding="utf-8", newline="") as f:
        assert next(csv.reader(f)) == ["country", "capital", "iso"]


def test_capital_sentences_shuffle_deterministically():
    pairs = [("France", "Paris"), ("Japan", "Tokyo"), ("Peru", "Lima")]
    a = tasks.capital_sentences(pairs, repeats=2, seed=1)
    assert sorted(a) == sorted(["The capital of France is Paris.", "The capital of Japan is Tokyo.",
                                "The capital of Peru is Lima."] * 2)
    assert a == tasks.capital_sentences(pairs, repeats=2, seed=1)
    assert len(tasks.capital_sentences()) == len(tasks.load_capitals())


def test_capital_sentences_reject_bad_arguments():
    with pytest.raises(ValueError, match="repeats"):
        tasks.capital_sentences(repeats=0)
    with pytest.raises(ValueError, match="template"):
        tasks.capital_sentences(template="{country} only")
    with pytest.raises(ValueError, match=r"pairs\[1\]"):
        tasks.capital_sentences([("France", "Paris"), ("Japan",)])


# -- the 11.2 experiments -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def it_run():
    """A small model trained briefly on "it" sentences, through the package's trainer."""
    from jaxllm.config import ModelConfig

    task = tasks.make_it_task(n_animals=6, heldout_fraction=0.25, n_train=600, n_heldout=60,
                              seed=0)
    corpus = tasks.it_corpus(task.train)
    tok = tasks.word_level_bpe(corpus)
    cfg = ModelConfig(vocab_size=tok.vocab_size, n_layer=1, n_head=2, d_model=32,
                      context_length=max(len(s.words) for s in task.train) + 1)
    trainer = tasks.train_on_sentences(tok, corpus, cfg, steps=60, batch_size=32)
    return task, tok, trainer


def test_word_level_tokens_and_it_batches(it_run):
    task, tok, _ = it_run
    assert all(len(tok.encode(s.text)) == len(s.words) for s in task.train + task.heldout)
    tokens, it_pos, answer = tasks.it_batch(task.heldout[:5], tok)
    for row, pos, ans, s in zip(tokens, it_pos, answer, task.heldout[:5], strict=True):
        assert tok.decode(row[: pos + 1].tolist()) == s.prompt
        assert tok.decode([int(ans)]) == " " + s.answer
    with pytest.raises(ValueError, match="at least one"):
        tasks.it_batch([], tok)


def test_train_on_sentences_uses_the_trainer(it_run):
    _, _, trainer = it_run
    assert trainer.step == 60 and len(trainer.history["loss"]) == 60
    assert np.mean(trainer.history["loss"][-5:]) < np.mean(trainer.history["loss"][:5]) - 1.0


def test_probe_measures_accuracy_attention_and_ablation(it_run):
    task, tok, trainer = it_run
    probe = tasks.ItProbe(trainer.model, tok)
    pred, att = probe.predictions(task.heldout)
    L, H = trainer.model_cfg.n_layer, trainer.model_cfg.n_head
    T = max(len(s.words) for s in task.heldout)
    assert pred.shape == (len(task.heldout),) and att.shape == (len(task.heldout), L, H, T, T)
    np.testing.assert_allclose(att.sum(-1), 1.0, atol=1e-5)  # every row is a distribution
    acc = probe.accuracy(task.heldout)
    answers = tasks.it_batch(task.heldout, tok)[2]
    assert acc == float((pred == answers).mean())
    table = probe.attention_table(task.heldout)
    assert table.selectivity.shape == (L, H)
    assert "most referent-selective head" in str(table)
    ablation = probe.ablation(task.heldout)
    assert ablation.drops.shape == (L, H) and ablation.accuracy == acc
    assert str(ablation).startswith(f"held-out accuracy {acc:.3f}")


def test_ablating_a_head_changes_the_output_and_leaves_the_model_alone(it_run):
    from flax import nnx

    from jaxllm.model import ablate_head

    task, tok, trainer = it_run
    model = trainer.model
    graphdef, params = nnx.split(model)
    tokens = tasks.it_batch(task.heldout[:8], tok)[0]
    before = np.asarray(model(tokens))
    silenced = ablate_head(params, 0, 1, model.cfg.head_dim)
    after = np.asarray(nnx.merge(graphdef, silenced)(tokens))
    assert np.abs(after - before).max() > 1e-3  # the head mattered to the logits
    np.testing.assert_array_equal(np.asarray(model(tokens)), before)  # original untouched
    kernel = silenced["blocks"][0]["attn"]["proj"]["kernel"][...]
    hd = model.cfg.head_dim
    assert np.all(np.asarray(kernel[hd:2 * hd]) == 0) and np.any(np.asarray(kernel[:hd]) != 0)
    with pytest.raises(ValueError, match="head"):
        ablate_head(params, 0, 2, hd)
    with pytest.raises(ValueError, match="layer"):
        ablate_head(params, 1, 0, hd)


def test_swapped_replaces_exactly_one_animal():
    task = tasks.make_it_task(n_animals=8, n_train=50, n_heldout=40, seed=1)
    for which in ("referent", "other"):
        changed = tasks.swapped(task.heldout, which, task.animals, seed=3)
        assert changed == tasks.swapped(task.heldout, which, task.animals, seed=3)
        for old, new in zip(task.heldout, changed, strict=True):
            assert new.verb == old.verb and new.template == old.template
            if which == "referent":
                assert new.other == old.other and new.referent not in (old.subject, old.obj)
            else:
                assert new.referent == old.referent and new.other not in (old.subject, old.obj)
    with pytest.raises(ValueError, match="which"):
        tasks.swapped(task.heldout, "verb", task.animals, seed=0)
