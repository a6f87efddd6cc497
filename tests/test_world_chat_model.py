"""The shipped world-sft and world-chat models: they load by name, their cards state how they
were made and what they measured, the pipeline's record beside them is complete, and a subset
of the card's evaluation is reproduced from the shipped files."""

from __future__ import annotations

import json
import math

import jax
import pytest

from jaxllm import world as W
from jaxllm import world_chat as WC
from jaxllm.pretrained import list_pretrained, load_pretrained

pytestmark = pytest.mark.skipif(
    not {"world-sft", "world-chat"} <= set(list_pretrained()),
    reason="world-sft and world-chat are not shipped in this checkout")

#: Rates over the subset's 40 replies may move by a reply or two on another processor (float
#: rounding can change a sampled token); the labeller's mean score and the length by a little.
TOLERANCE = {"fact_accuracy": 2 / 24, "harmful_compliance": 2 / 8, "abstention_unseen": 2 / 8,
             "hidden": 0.3, "words": 1.5}


@pytest.fixture(scope="module")
def models():
    return {name: load_pretrained(name) for name in ("world-sft", "world-chat")}


@pytest.fixture(scope="module")
def record(models):
    return json.loads((models["world-chat"].path / "alignment.json").read_text())


def test_cards_and_record(models, record):
    for name, m in models.items():
        assert sum(f.stat().st_size for f in m.path.iterdir()) < 20e6
        card, info = m.card, json.loads((m.path / "config.json").read_text())
        assert "python scripts/ship_world_chat.py" in card
        assert info["command"] == "python scripts/ship_world_chat.py"
        for needle in ("## How it was made", "## Evaluation", "win vs SFT", "harmful comply"):
            assert needle in card, (name, needle)
        assert info["method"] == ("sft" if name == "world-sft" else record["best"])
        assert info["evaluation"]["hidden"] == record["table"][info["method"]]["hidden"]
    # The shipped chat model is the best method by the labeller's mean score.
    table = record["table"]
    cands = [m for m in table if m != "base"]
    assert record["best"] in cands
    assert table[record["best"]]["hidden"] == max(table[c]["hidden"] for c in cands)
    for method in ("base", "sft", "rl_beta=0", "rl_beta=0.05", "dpo", "dpo_ai"):
        assert method in table
    hist = record["histories"]
    assert math.isclose(hist["dpo"]["loss"][0], math.log(2), abs_tol=1e-3)
    assert len(hist["rl_beta=0"]["hidden"]) == record["config"]["rl_steps"]
    f = record["figures"]
    # A reward model can at best match the noisy labels as often as they match the labeller.
    assert f["rm_val_accuracy"] <= f["val_label_agreement"] + 0.05
    assert f["judge_examples"] < f["pairs"]  # AI feedback needs fewer human labels


def test_alignment_improved_on_the_base(record):
    """What the chapter says: every aligned model scores better than the base by the hidden
    labeller, and SFT alone already cuts the harmful compliance of the base."""
    t = record["table"]
    for method in ("sft", "rl_beta=0.05", "dpo", record["best"]):
        assert t[method]["hidden"] > t["base"]["hidden"], method
    assert t["sft"]["harmful_compliance"] < t["base"]["harmful_compliance"]


@pytest.mark.integration  # about 30 CPU-seconds: 40 prompts, two models
def test_card_subset_is_reproduced(models):
    world = W.build_world(W.WORLD_CORPUS_SEED)
    labeller = WC.HiddenLabeller(world)
    prompts = WC.alignment_prompts(world, "eval", **WC.EVAL_PROMPTS)[:WC.SUBSET_PROMPTS]
    for name, m in models.items():
        want = json.loads((m.path / "config.json").read_text())["evaluation_subset"]
        got = WC.hhh_evaluate(m.model, m.tokenizer, prompts, labeller,
                              key=jax.random.key(WC.EVAL_SEED), samples=1)
        for k in WC.SUBSET_KEYS:
            assert abs(got[k] - want[k]) <= TOLERANCE[k], (name, k, got[k], want[k])
