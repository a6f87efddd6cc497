"""Figures and widgets of jaxllm.viz: shapes of the figures, the sampling maths, the callbacks."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from matplotlib.figure import Figure

from jaxllm import viz
from jaxllm.sample import sample_logits

pytest.importorskip("ipywidgets")

LOGITS = np.array([3.0, 2.0, 1.5, 0.5, 0.0, -1.0, -2.0, -4.0], np.float32)
LABELS = ["a", " b", "c", "\n", "e", "f", "g", "h"]


def _attention(L=2, H=3, T=6, seed=0):
    w = np.tril(np.random.default_rng(seed).random((L, H, T, T))) + np.eye(T)
    return w / w.sum(-1, keepdims=True)


def test_sampling_distribution_temperature_topk_topp():
    p1 = viz.sampling_distribution(LOGITS, 1.0)
    np.testing.assert_allclose(p1, np.exp(LOGITS) / np.exp(LOGITS).sum(), rtol=1e-5)
    greedy = viz.sampling_distribution(LOGITS, 0.0)
    assert greedy[0] == 1.0 and greedy.sum() == 1.0
    cold, hot = viz.sampling_distribution(LOGITS, 0.5), viz.sampling_distribution(LOGITS, 2.0)
    assert viz.entropy(cold) < viz.entropy(p1) < viz.entropy(hot)
    top3 = viz.sampling_distribution(LOGITS, 1.0, top_k=3)
    assert (top3 > 0).sum() == 3
    np.testing.assert_allclose(top3[:3], p1[:3] / p1[:3].sum(), rtol=1e-5)
    # top-p keeps the smallest prefix whose mass reaches p.
    need = int(np.searchsorted(np.cumsum(p1), 0.9) + 1)
    assert (viz.sampling_distribution(LOGITS, 1.0, top_p=0.9) > 0).sum() == need


def test_sampling_distribution_matches_what_sample_logits_draws():
    probs = viz.sampling_distribution(LOGITS, 0.8, top_k=4, top_p=0.95)
    keys = jax.random.split(jax.random.key(0), 4000)
    draws = np.asarray(jax.vmap(lambda k: sample_logits(k, LOGITS, 0.8, 4, 0.95))(keys))
    freq = np.bincount(draws, minlength=LOGITS.size) / draws.size
    assert set(np.flatnonzero(freq)) <= set(np.flatnonzero(probs))
    np.testing.assert_allclose(freq, probs, atol=0.03)


def test_entropy_values_and_errors():
    assert viz.entropy([0.5, 0.5]) == pytest.approx(1.0)
    assert viz.entropy([1.0, 0.0]) == 0.0
    assert viz.entropy(np.full(8, 1 / 8)) == pytest.approx(3.0)
    with pytest.raises(ValueError, match="probs"):
        viz.entropy([0.5, 0.6])


@pytest.mark.parametrize("kwargs,match", [
    ({"temperature": -1.0}, "temperature"),
    ({"top_k": 99}, "top_k"),
    ({"top_p": 0.0}, "top_p"),
])
def test_sampling_distribution_rejects_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        viz.sampling_distribution(LOGITS, **kwargs)


def test_plot_next_token_draws_top_bars_in_order():
    probs = viz.sampling_distribution(LOGITS, 1.0)
    fig = viz.plot_next_token(probs, LABELS, top=5, highlight=" b")
    assert isinstance(fig, Figure)
    (ax,) = fig.axes
    heights = [p.get_height() for p in ax.patches]
    np.testing.assert_allclose(heights, np.sort(probs)[::-1][:5], rtol=1e-6)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "␣b", "c", "\\n", "e"]
    with pytest.raises(ValueError, match="labels"):
        viz.plot_next_token(probs, LABELS[:3])


def test_plot_temperatures_has_one_panel_per_temperature():
    fig = viz.plot_temperatures(LOGITS, LABELS, temperatures=(0.0, 0.5, 1.0, 1.5), top=6)
    assert len(fig.axes) == 4
    assert "1 token possible" in fig.axes[0].get_title()
    for ax, t in zip(fig.axes, (0.0, 0.5, 1.0, 1.5), strict=True):
        # No top-k or top-p: one bar per shown token (no grey "before" bars), log scale.
        heights = [p.get_height() for p in ax.patches]
        assert len(heights) == 6
        probs = viz.sampling_distribution(LOGITS, t)
        np.testing.assert_allclose(heights, np.sort(probs)[::-1][:6], rtol=1e-5, atol=1e-12)
        assert ax.get_yscale() == "log" and ax.get_ylim()[0] == pytest.approx(viz.LOG_FLOOR)
        # The title gives the mass of the two tokens not shown.
        assert f"2 not shown: p = {np.sort(probs)[:2].sum():.3f}" in ax.get_title()
    labels = [t.get_text() for t in fig.axes[-1].get_legend().get_texts()]
    assert labels == ["sampled from"]  # no grey "before top-k / top-p" bars to explain
    assert fig.axes[0].get_ylabel() == "probability (log scale)"
    linear = viz.plot_temperatures(LOGITS, LABELS, temperatures=(1.0,), top=8, log=False)
    assert linear.axes[0].get_yscale() == "linear"
    assert "not shown" not in linear.axes[0].get_title()


def test_plot_sampling_settings_greys_out_filtered_tokens():
    fig = viz.plot_sampling_settings(LOGITS, LABELS, [(1.0, 2, 1.0)], top=8)
    (ax,) = fig.axes
    bars = [p.get_height() for p in ax.patches]
    grey, blue = bars[:8], bars[8:]
    assert all(g > 0 for g in grey)
    assert sum(b > 0 for b in blue) == 2
    with pytest.raises(ValueError, match="settings"):
        viz.plot_sampling_settings(LOGITS, LABELS, [(1.0, 2)])


def test_plot_sampling_settings_legend_names_each_kind_of_bar_once():
    # The unfiltered panel comes last: its legend must still explain the grey bars of the
    # filtered panels, and name each kind of bar once.
    fig = viz.plot_sampling_settings(LOGITS, LABELS, [(1.0, 3, 1.0), (1.0, 0, 0.9),
                                                      (1.0, 0, 1.0)], top=8)
    labels = [t.get_text() for t in fig.axes[-1].get_legend().get_texts()]
    assert labels == ["before top-k / top-p", "sampled from"]
    assert len(fig.axes[2].patches) == 8  # unfiltered: no grey bars behind
    assert len(fig.axes[0].patches) == 16


def test_plot_attention_from_has_a_panel_per_layer_and_head():
    att = _attention(L=2, H=3, T=6)
    fig = viz.plot_attention_from(att, list("abcdef"), 4, marks={1: viz.HIGHLIGHT})
    assert len(fig.axes) == 6
    first = fig.axes[0]
    np.testing.assert_allclose([p.get_height() for p in first.patches], att[0, 0, 4, :5])
    assert first.patches[1].get_facecolor()[:3] == pytest.approx((214 / 255, 39 / 255, 40 / 255))
    with pytest.raises(ValueError, match="query"):
        viz.plot_attention_from(att, list("abcdef"), 6)
    with pytest.raises(ValueError, match="attention"):
        viz.plot_attention_from(att[0], list("abcdef"), 2)
    with pytest.raises(ValueError, match="mark_labels"):
        viz.plot_attention_from(att, list("abcdef"), 4, mark_labels={1: "x"})


def test_plot_attention_from_has_a_legend_for_every_colour():
    att = _attention(L=1, H=2, T=6)
    marks = {1: viz.HIGHLIGHT, 3: "#7f7f7f"}
    fig = viz.plot_attention_from(att, list("abcdef"), 4, marks=marks,
                                  mark_labels={viz.HIGHLIGHT: "referent"})
    (legend,) = fig.legends
    texts = [t.get_text() for t in legend.get_texts()]
    assert texts == ["referent", "'d'", "other tokens"]
    colours = {tuple(np.round(h.get_facecolor()[:3], 3)) for h in legend.legend_handles}
    bars = {tuple(np.round(p.get_facecolor()[:3], 3)) for ax in fig.axes for p in ax.patches}
    assert bars <= colours  # every colour on the bars is explained


def test_plot_attention_heatmaps_accepts_model_output_layout():
    att = _attention(L=2, H=2, T=5)
    per_layer = [a[None] for a in att]  # the model's list of [B=1, H, T, T]
    fig = viz.plot_attention_heatmaps(per_layer, list("abcde"))
    assert len(fig.axes) == 5  # four heads and the colour bar
    np.testing.assert_allclose(fig.axes[3].images[0].get_array(), att[1, 1])
    # Four heatmaps and one colour bar, which explains the colours from 0 to 1.
    colorbar = fig.axes[4]
    assert colorbar.get_ylabel() == "attention weight"
    assert fig.axes[0].images[0].get_clim() == (0, 1)
    assert len(viz.plot_attention_heatmaps(att, list("abcde"), layers=[1]).axes) == 3


def test_sampling_explorer_callbacks_update_the_distribution_and_samples():
    calls = []

    def gen(t, k, p, seed):
        calls.append((t, k, p, seed))
        return f"text {seed}"

    explorer = viz.SamplingExplorer(LOGITS, LABELS, generate=gen, temperature=1.0, n_samples=30)
    assert len(explorer.plot.outputs) == 1  # the starting figure is drawn (and saved)
    assert "image/png" in explorer.plot.outputs[0]["data"]
    start = explorer.probs.copy()
    explorer.temperature.value = 0.3  # the slider's observer recomputes everything
    assert viz.entropy(explorer.probs) < viz.entropy(start)
    explorer.top_k.value = 2
    assert (explorer.probs > 0).sum() == 2
    assert set(explorer.samples) <= {"a", "␣b"} and len(explorer.samples) == 30
    explorer.temperature.value = 0.0
    assert explorer.samples == ["a"] * 30
    assert calls[-1] == (0.0, 2, 1.0, 3) and explorer.text == "text 3"
    explorer.resample.click()
    assert calls[-1][3] == 4
    with pytest.raises(ValueError, match="top_k"):
        viz.SamplingExplorer(LOGITS, LABELS, top_k=-1)


def test_attention_explorer_follows_the_dropdowns():
    atts = [_attention(L=2, H=3, T=6, seed=0), _attention(L=2, H=3, T=4, seed=1)]
    explorer = viz.AttentionExplorer(atts, [list("abcdef"), list("wxyz")], [5, 2],
                                     marks=[{1: viz.HIGHLIGHT}, {}],
                                     mark_labels={viz.HIGHLIGHT: "referent"})
    np.testing.assert_allclose(explorer.weights, atts[0][0, 0, 5])
    fig = explorer.figure()
    heatmap, bars = fig.axes[0], fig.axes[1]
    assert any(ax.get_ylabel() == "attention weight" and not ax.patches for ax in fig.axes[2:])
    assert [t.get_text() for t in bars.get_legend().get_texts()] == ["referent", "other tokens"]
    assert heatmap.images[0].get_clim() == (0, 1)
    explorer.head.value = 2
    explorer.layer.value = 1
    np.testing.assert_allclose(explorer.weights, atts[0][1, 2, 5])
    explorer.sentence.value = 1
    np.testing.assert_allclose(explorer.weights, atts[1][1, 2, 2, :3])
    assert len(explorer.plot.outputs) == 1
    with pytest.raises(ValueError, match="tokens"):
        viz.AttentionExplorer(atts, [list("abc"), list("wxyz")], [1, 2])
