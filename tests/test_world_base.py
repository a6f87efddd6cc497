"""The shipped world-base model: it loads by name, its card is complete, and a subset of its
card's evaluation is reproduced (each slice within one item of the figures stored at export,
which allows for float differences between machines)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from jaxllm import world as W
from jaxllm.pretrained import list_pretrained, load_pretrained, models_dir

pytestmark = pytest.mark.skipif("world-base" not in list_pretrained(),
                                reason="world-base is not shipped in this checkout")


@pytest.fixture(scope="module")
def shipped():
    return load_pretrained("world-base")


@pytest.fixture(scope="module")
def stored(shipped):
    return json.loads((shipped.path / "config.json").read_text())


def test_size_and_card(shipped, stored):
    size = sum(f.stat().st_size for f in shipped.path.iterdir())
    assert size < 20e6
    card = shipped.card
    for needle in ("jaxllm train --preset world-base", "seed", "tokens seen",
                   "Training curve", "Evaluation on held-out items", "icl.png"):
        assert needle in card, needle
    for fam in W.FAMILIES:  # the table has a row for every family (or its slices)
        assert f"| {fam} |" in card or f"| {fam}/" in card, fam
    assert (shipped.path / "icl.png").is_file()
    assert stored["tokens_seen"] == stored["step"] * 32 * shipped.config.context_length
    # the table's figures are the ones stored with the model
    for key, r in stored["evaluation"].items():
        assert f"| {key} | {r['n']} | {r['correct'] / r['n']:.1%} |" in card, key


@pytest.mark.integration  # about 45 CPU-seconds of decoding (and its compilation)
def test_card_subset_is_reproduced(shipped, stored):
    subset = stored["evaluation_subset"]
    results = W.evaluate(shipped.model, shipped.tokenizer, n=subset["n"], batch_size=subset["n"],
                         families=sorted({k.split("/")[0] for k in subset["results"]}))
    assert set(results) == set(subset["results"])
    for key, want in subset["results"].items():
        got = results[key]
        assert got.n == want["n"]
        assert abs(got.correct - want["correct"]) <= 1, (key, got.correct, want["correct"])


def test_trained_facts_beat_heldout_entities(shipped, stored):
    """It recalls facts it was trained on more often than it guesses those of entities it
    never saw (whose answers it invents)."""
    facts = [stored["evaluation"][k] for k in ("capitals", "people", "cities", "orgs")]
    recalled = sum(r["correct"] for r in facts) / sum(r["n"] for r in facts)
    held = stored["evaluation"]["heldout"]
    assert recalled > held["correct"] / held["n"] + 0.1


@pytest.mark.integration
def test_loads_in_a_fresh_process(tmp_path):
    code = ("import jaxllm\n"
            "from jaxllm.chat import end_id\n"
            "from jaxllm.world import generate_replies\n"
            "m = jaxllm.load_pretrained('world-base')\n"
            "print(m.path.name, m.tokenizer.vocab_size, end_id(m.tokenizer) > 0)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                         text=True, timeout=300, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["world-base", "2048", "True"]
    assert models_dir().is_dir()
