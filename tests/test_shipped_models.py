"""The models that ship inside the package load by name and do what their cards say.

``shakespeare-char`` (chapter 11.1): its card and config state its loss on the first 8,192
characters of the validation text; scoring that slice again must give the same loss to within
0.01 nats per character (the weights are stored exactly; the tolerance covers float32
arithmetic on other processors and XLA versions, and is about a hundredth of the gap between
this model and the bigram model). The whole test takes a few seconds.
"""

from __future__ import annotations

import json
import math
import re

import pytest

import jaxllm
from jaxllm.data import load_corpus, train_val_split
from jaxllm.model import count_params
from jaxllm.train import score_text

TOLERANCE = 0.01  # nats per character


@pytest.fixture(scope="module")
def shakespeare():
    return jaxllm.load_pretrained("shakespeare-char")


def test_shakespeare_char_is_listed_and_small(shakespeare):
    assert "shakespeare-char" in jaxllm.list_pretrained()
    weights = shakespeare.path / "model.safetensors"
    assert weights.stat().st_size < 20e6
    # bfloat16: two bytes a parameter, plus the safetensors header.
    assert 2 * count_params(shakespeare.config) <= weights.stat().st_size < (
        2 * count_params(shakespeare.config) + 100_000)


def test_shakespeare_char_card_states_how_it_was_made(shakespeare):
    card = shakespeare.card
    info = json.loads((shakespeare.path / "config.json").read_text())
    assert info["command"].startswith("jaxllm train --preset shakespeare-char")
    assert "jaxllm train --preset shakespeare-char" in card
    for field in ("steps", "tokens_seen", "seed", "final_train_loss", "final_val_loss"):
        assert field in info, field
    assert f"{info['tokens_seen']:,} characters seen" in card
    assert "## Sample" in card and "## Data" in card


def test_shakespeare_char_validation_loss_matches_its_card(shakespeare):
    info = json.loads((shakespeare.path / "config.json").read_text())
    tok = shakespeare.tokenizer
    _, val_ids = train_val_split(tok.encode(load_corpus()), 0.1)
    n = info["val_slice_characters"]
    val_slice = tok.decode(val_ids[:n].tolist())
    score = score_text(shakespeare.model, tok, val_slice)
    assert score.loss == pytest.approx(info["val_slice_loss"], abs=TOLERANCE)
    # The card's table says the same number, and the model is far better than a uniform guess.
    row = re.search(r"\| validation, first [\d,]+ characters \| [\d,]+ \| ([\d.]+) \|",
                    shakespeare.card)
    assert row and float(row.group(1)) == pytest.approx(info["val_slice_loss"], abs=1e-4)
    assert score.loss < 0.5 * math.log(tok.vocab_size)
