"""Figures and widgets used by the chapters.

Figures are :class:`matplotlib.figure.Figure` objects made without ``pyplot``, so a notebook
shows each exactly once (when it is the value of a cell or passed to ``display``) and nothing
is left open. Widgets (:class:`SamplingExplorer`, :class:`AttentionExplorer`) draw their figure
for the starting values when they are built, so a notebook saved with its widget state shows
a meaningful picture even on a static web page, where the sliders cannot run Python.

Needs the ``viz`` extra (matplotlib, ipywidgets); ipywidgets is imported only by the widgets.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np
from matplotlib.figure import Figure

from .sample import softmax_with_temperature, top_k_filter, top_p_filter
from .validate import check_callable, check_int, check_number, check_probability

__all__ = [
    "AttentionExplorer",
    "SamplingExplorer",
    "entropy",
    "figure_output",
    "plot_attention_from",
    "plot_attention_heatmaps",
    "plot_next_token",
    "plot_sampling",
    "plot_sampling_settings",
    "plot_temperatures",
    "sampling_distribution",
    "show_token",
]

DPI = 90
KEPT = "#1f77b4"
DROPPED = "#c7c7c7"
HIGHLIGHT = "#d62728"


def _figure(width: float, height: float) -> Figure:
    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def figure_output(fig: Figure) -> dict[str, Any]:
    """A figure as one notebook output (PNG), for an ``ipywidgets.Output``'s ``outputs``.

    Setting ``outputs`` directly (rather than ``display`` inside ``with output:``) works the same
    in a kernel, in tests and when a notebook is executed headless, so the picture is always
    part of the widget's saved state.
    """
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return {"output_type": "display_data", "metadata": {},
            "data": {"image/png": base64.b64encode(buf.getvalue()).decode("ascii"),
                     "text/plain": f"<Figure {fig.get_figwidth():g}x{fig.get_figheight():g} in>"}}


def _text_output(text: str) -> dict[str, Any]:
    return {"output_type": "stream", "name": "stdout", "text": text}


def show_token(s: str) -> str:
    """A token's text made visible in a plot label: spaces as ``␣``, newlines as ``\\n``."""
    return s.replace("\n", "\\n").replace(" ", "␣") or "∅"


def _logits_1d(logits: Any, name: str = "logits") -> np.ndarray:
    arr = np.asarray(logits, dtype=np.float32)
    if arr.ndim != 1 or arr.size < 2:
        raise ValueError(f"{name} must be a 1-D array of at least 2 values, got shape {arr.shape}")
    return arr


def _labels(labels: Sequence[str], n: int) -> list[str]:
    if isinstance(labels, str) or len(labels) != n:
        raise ValueError(f"labels must be a sequence of {n} strings (one per token), got "
                         f"{len(labels) if not isinstance(labels, str) else 'a str'}")
    return [show_token(str(x)) for x in labels]


def _check_settings(temperature: Any, top_k: Any, top_p: Any, vocab: int) -> None:
    check_number("temperature", temperature, low=0.0)
    check_int("top_k (0 = off)", top_k, min=0, max=vocab)
    check_probability("top_p (1 = off)", top_p)


def sampling_distribution(logits: Any, temperature: float = 1.0, top_k: int = 0,
                          top_p: float = 1.0) -> np.ndarray:
    """The distribution :func:`jaxllm.sample.sample_logits` draws from, as probabilities.

    The logits are divided by the temperature, filtered by top-k and then by top-p (both from
    :mod:`jaxllm.sample`), and normalised with a softmax. Temperature 0 puts all the mass on the
    most likely token (greedy decoding). ``top_k=0`` and ``top_p=1`` switch the filters off.
    """
    arr = _logits_1d(logits)
    _check_settings(temperature, top_k, top_p, arr.size)
    if temperature == 0:
        probs = np.asarray(softmax_with_temperature(arr, 0.0), dtype=np.float64)
    else:
        scaled = jnp.asarray(arr) / temperature
        filtered = top_p_filter(top_k_filter(scaled, top_k), top_p)
        probs = np.asarray(softmax_with_temperature(filtered, 1.0), dtype=np.float64)
    return probs / probs.sum()  # exact normalisation in float64, for NumPy's samplers


def entropy(probs: Any, base: float = 2.0) -> float:
    """Shannon entropy of a distribution (bits by default); zero-probability terms add 0."""
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 1 or np.any(p < 0) or not np.isclose(p.sum(), 1.0, atol=1e-4):
        raise ValueError("probs must be a 1-D array of non-negative numbers that sum to 1")
    nz = p[p > 0]
    return max(0.0, float(-(nz * np.log(nz)).sum() / math.log(base)))


def _top_indices(values: np.ndarray, top: int) -> np.ndarray:
    check_int("top", top, min=1)
    return np.argsort(-values, kind="stable")[: min(top, values.size)]


def plot_next_token(probs: Any, labels: Sequence[str], *, top: int = 10, title: str = "",
                    highlight: str | None = None) -> Figure:
    """Bar chart of the ``top`` most likely next tokens and their probabilities.

    ``highlight`` (a label) is drawn in red, e.g. the correct answer.
    """
    p = _logits_1d(probs, "probs").astype(np.float64)
    names = _labels(labels, p.size)
    idx = _top_indices(p, top)
    fig = _figure(6.0, 2.8)
    ax = fig.add_subplot()
    hl = None if highlight is None else show_token(highlight)
    colors = [HIGHLIGHT if names[i] == hl else KEPT for i in idx]
    ax.bar(range(len(idx)), p[idx], color=colors)
    ax.set_xticks(range(len(idx)), [names[i] for i in idx], rotation=45, ha="right")
    ax.set_ylabel("probability")
    ax.set_ylim(0, 1)
    ax.set_title(title or "next-token distribution")
    for j, i in enumerate(idx):
        ax.text(j, p[i] + 0.02, f"{p[i]:.2f}", ha="center", fontsize=8)
    return fig


LOG_FLOOR = 1e-4  # the lowest probability a log-scale panel shows


def _draw_sampling(ax: Any, logits: np.ndarray, names: list[str], temperature: float,
                   top_k: int, top_p: float, top: int, log: bool = False) -> np.ndarray:
    """Bars of the distribution that is sampled from (blue). When top-k or top-p is on, the
    tempered distribution before the filter is drawn behind it (grey where a token is
    dropped); without a filter there is only the one distribution. ``log`` puts the
    probabilities on a log scale (down to :data:`LOG_FLOOR`) so that the tail is visible; the
    title gives the mass of the tokens not shown."""
    final = sampling_distribution(logits, temperature, top_k, top_p)
    filtered = bool(top_k) or top_p < 1
    idx = _top_indices(logits, top)
    x = np.arange(len(idx))
    if filtered:
        tempered = (final if temperature == 0
                    else sampling_distribution(logits, temperature, 0, 1.0))
        ax.bar(x, tempered[idx], color=DROPPED, label="before top-k / top-p")
        ax.bar(x, final[idx], width=0.55, color=KEPT, label="sampled from")
    else:
        ax.bar(x, final[idx], color=KEPT, label="sampled from")
    ax.set_xticks(x, [names[i] for i in idx], rotation=60, ha="right", fontsize=8)
    if log:
        ax.set_yscale("log")
        ax.set_ylim(LOG_FLOOR, 1.5)
    else:
        ax.set_ylim(0, 1)
    settings = f"T={temperature:g}"
    if top_k:
        settings += f", top-k={top_k}"
    if top_p < 1:
        settings += f", top-p={top_p:g}"
    kept = int((final > 0).sum())
    title = (f"{settings}\n{kept} token{'s' * (kept != 1)} possible, "
             f"entropy {entropy(final):.2f} bits")
    hidden = len(final) - len(idx)
    if hidden:
        title += f"\n{hidden} not shown: p = {float(np.delete(final, idx).sum()):.3f}"
    ax.set_title(title, fontsize=9)
    return final


def _legend_once(fig: Figure, axes: Sequence[Any], **kwargs: Any) -> None:
    """One legend for the figure with every label used by any of ``axes``, each once."""
    seen: dict[str, Any] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            seen.setdefault(label, handle)
    if seen:
        axes[-1].legend(list(seen.values()), list(seen), **kwargs)


def plot_sampling(logits: Any, labels: Sequence[str], *, temperature: float = 1.0,
                  top_k: int = 0, top_p: float = 1.0, top: int = 20,
                  log: bool = False) -> Figure:
    """One panel: what temperature, top-k and top-p do to a next-token distribution."""
    arr = _logits_1d(logits)
    names = _labels(labels, arr.size)
    fig = _figure(6.5, 2.8)
    ax = fig.add_subplot()
    _draw_sampling(ax, arr, names, temperature, top_k, top_p, top, log)
    ax.set_ylabel("probability (log scale)" if log else "probability")
    ax.legend(fontsize=8, loc="upper right")
    return fig


def plot_sampling_settings(logits: Any, labels: Sequence[str],
                           settings: Sequence[tuple[float, int, float]], *,
                           top: int = 12, log: bool = False) -> Figure:
    """The same next-token distribution under several ``(temperature, top_k, top_p)``
    settings, one panel each (see :func:`plot_sampling` for what the bars mean); ``log``
    puts the probabilities on a log scale, which shows the tail."""
    arr = _logits_1d(logits)
    names = _labels(labels, arr.size)
    if isinstance(settings, str) or not settings or any(
            not isinstance(x, tuple | list) or len(x) != 3 for x in settings):
        raise ValueError("settings must be a non-empty sequence of (temperature, top_k, top_p) "
                         f"triples, got {settings!r}")
    fig = _figure(2.5 * len(settings) + 0.4, 3.1)
    axes = fig.subplots(1, len(settings), sharey=True, squeeze=False)[0]
    for ax, (t, k, p) in zip(axes, settings, strict=True):
        _draw_sampling(ax, arr, names, float(t), int(k), float(p), top, log)
    axes[0].set_ylabel("probability (log scale)" if log else "probability")
    _legend_once(fig, axes, fontsize=7, loc="upper right")
    return fig


def plot_temperatures(logits: Any, labels: Sequence[str], *,
                      temperatures: Sequence[float] = (0.0, 0.5, 1.0, 1.5), top_k: int = 0,
                      top_p: float = 1.0, top: int = 12, log: bool = True) -> Figure:
    """The same next-token distribution at several temperatures, one panel each; on a log
    scale by default, where the tail that temperature lifts or flattens is visible."""
    if isinstance(temperatures, str) or not temperatures:
        raise ValueError(f"temperatures must be a non-empty sequence, got {temperatures!r}")
    return plot_sampling_settings(logits, labels, [(t, top_k, top_p) for t in temperatures],
                                  top=top, log=log)


def _attention_array(attention: Any) -> np.ndarray:
    """``[L, H, T, T]`` from a list of per-layer ``[H, T, T]`` (or ``[1, H, T, T]``) arrays."""
    if isinstance(attention, list | tuple):
        layers = [np.asarray(a, dtype=np.float64) for a in attention]
        layers = [a[0] if a.ndim == 4 and a.shape[0] == 1 else a for a in layers]
        arr = np.stack(layers)
    else:
        arr = np.asarray(attention, dtype=np.float64)
    if arr.ndim != 4 or arr.shape[2] != arr.shape[3]:
        raise ValueError("attention must be [layers, heads, T, T] (or a list of [heads, T, T] "
                         f"per layer, batch of one), got shape {arr.shape}")
    return arr


def _marks_legend(marks: dict[int, str], names: list[str],
                  mark_labels: dict[str, str] | None) -> list[Any]:
    """Legend handles for the bar colours: each mark colour (named by ``mark_labels[colour]``,
    else by its tokens) and the unmarked tokens."""
    from matplotlib.patches import Patch

    labels = dict(mark_labels or {})
    handles = []
    for colour in dict.fromkeys(marks.values()):
        tokens = ", ".join(repr(names[i]) for i, c in marks.items() if c == colour)
        handles.append(Patch(color=colour, label=labels.get(colour, tokens)))
    handles.append(Patch(color=KEPT, label=labels.get(KEPT, "other tokens")))
    return handles


def _check_mark_labels(mark_labels: Any) -> None:
    if mark_labels is not None and (not isinstance(mark_labels, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in mark_labels.items())):
        raise ValueError("mark_labels must map colours to legend labels (str to str), got "
                         f"{mark_labels!r}")


def plot_attention_from(attention: Any, tokens: Sequence[str], query: int, *,
                        marks: dict[int, str] | None = None,
                        mark_labels: dict[str, str] | None = None, title: str = "") -> Figure:
    """Attention weights from one query position, one bar chart per layer (rows) and head
    (columns). ``marks`` maps key positions to a colour, e.g. the referent in red;
    ``mark_labels`` maps a colour to what it means in the legend (e.g. ``"referent"``;
    by default the marked tokens themselves)."""
    att = _attention_array(attention)
    L, H, T, _ = att.shape
    names = _labels(tokens, T)
    check_int("query", query, min=0, max=T - 1)
    _check_mark_labels(mark_labels)
    marks = marks or {}
    fig = _figure(min(2.3 * H + 0.8, 11.0), 1.6 * L + 0.9)
    axes = fig.subplots(L, H, sharex=True, sharey=True, squeeze=False)
    x = np.arange(query + 1)
    colors = [marks.get(int(i), KEPT) for i in x]
    for layer in range(L):
        for head in range(H):
            ax = axes[layer, head]
            ax.bar(x, att[layer, head, query, : query + 1], color=colors)
            ax.set_ylim(0, 1)
            ax.set_title(f"layer {layer}, head {head}", fontsize=8)
            if layer == L - 1:
                ax.set_xticks(x, names[: query + 1], rotation=70, ha="right", fontsize=7)
        axes[layer, 0].set_ylabel("weight", fontsize=8)
    fig.suptitle(title or f"attention from {names[query]!r}", fontsize=10)
    fig.legend(handles=_marks_legend(marks, names, mark_labels), loc="lower center",
               ncol=len(set(marks.values())) + 1, fontsize=8, frameon=False,
               bbox_to_anchor=(0.5, -0.08))
    return fig


def plot_attention_heatmaps(attention: Any, tokens: Sequence[str], *,
                            layers: Sequence[int] | None = None, title: str = "") -> Figure:
    """Every head's full attention matrix (query rows, key columns) as a heatmap."""
    att = _attention_array(attention)
    L, H, T, _ = att.shape
    names = _labels(tokens, T)
    rows = list(range(L)) if layers is None else [int(i) for i in layers]
    if not rows or any(not 0 <= r < L for r in rows):
        raise ValueError(f"layers must name layers in [0, {L}), got {layers!r}")
    fig = _figure(min(2.6 * H + 1.2, 11.6), 2.6 * len(rows) + 0.6)
    axes = fig.subplots(len(rows), H, squeeze=False)
    for r, layer in enumerate(rows):
        for head in range(H):
            ax = axes[r, head]
            image = ax.imshow(att[layer, head], vmin=0, vmax=1, cmap="Blues")
            ax.set_title(f"layer {layer}, head {head}", fontsize=8)
            ax.set_xticks(range(T), names, rotation=90, fontsize=6)
            ax.set_yticks(range(T), names if head == 0 else [""] * T, fontsize=6)
        axes[r, 0].set_ylabel("query (reads)", fontsize=7)
    for ax in axes[-1]:
        ax.set_xlabel("key (is read)", fontsize=7)
    fig.colorbar(image, ax=list(axes.ravel()), label="attention weight", shrink=0.8)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


# -- widgets ----------------------------------------------------------------------------------

class SamplingExplorer:
    """Sliders for temperature, top-k and top-p over one next-token distribution.

    Moving a slider redraws the distribution (:func:`plot_sampling`) and draws new samples:
    ``n_samples`` next tokens from the shown distribution, and, if ``generate`` is given, a
    continuation ``generate(temperature, top_k, top_p, seed)`` (e.g. text from a model).
    The current distribution is :attr:`probs`; the last samples are :attr:`samples` and
    :attr:`text`. Display the explorer in a notebook cell to use it.
    """

    def __init__(self, logits: Any, labels: Sequence[str], *,
                 generate: Callable[[float, int, float, int], str] | None = None,
                 temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                 n_samples: int = 20, top: int = 20, seed: int = 0):
        import ipywidgets as widgets

        self.logits = _logits_1d(logits)
        self.labels = list(labels)
        self._names = _labels(self.labels, self.logits.size)
        _check_settings(temperature, top_k, top_p, self.logits.size)
        check_int("n_samples", n_samples, min=1)
        check_int("seed", seed, min=0)
        check_callable("generate", generate, none_ok=True)
        self.generate, self.n_samples, self.top = generate, n_samples, top
        self._rng = np.random.default_rng(seed)
        self._draws = 0
        style = {"description_width": "90px"}
        self.temperature = widgets.FloatSlider(value=temperature, min=0.0, max=2.0, step=0.05,
                                               description="temperature", style=style,
                                               continuous_update=False)
        self.top_k = widgets.IntSlider(value=top_k, min=0, max=min(self.logits.size, 50),
                                       description="top-k (0=off)", style=style,
                                       continuous_update=False)
        self.top_p = widgets.FloatSlider(value=top_p, min=0.05, max=1.0, step=0.05,
                                         description="top-p (1=off)", style=style,
                                         continuous_update=False)
        self.resample = widgets.Button(description="sample again")
        self.plot = widgets.Output()
        self.output = widgets.Output()
        for w in (self.temperature, self.top_k, self.top_p):
            w.observe(lambda _change: self.update(), names="value")
        self.resample.on_click(lambda _button: self.update())
        self.widget = widgets.VBox([
            widgets.HBox([self.temperature, self.top_k, self.top_p]),
            self.resample, self.plot, self.output])
        self.probs = np.zeros_like(self.logits, dtype=np.float64)
        self.samples: list[str] = []
        self.text = ""
        self.update()

    def update(self) -> None:
        """Recompute the distribution, redraw it and draw new samples."""
        t, k, p = float(self.temperature.value), int(self.top_k.value), float(self.top_p.value)
        self.probs = sampling_distribution(self.logits, t, k, p)
        ids = self._rng.choice(self.logits.size, size=self.n_samples, p=self.probs)
        self.samples = [self._names[i] for i in ids]
        seed = self._draws
        self._draws += 1
        self.text = "" if self.generate is None else self.generate(t, k, p, seed)
        fig = plot_sampling(self.logits, self.labels, temperature=t, top_k=k, top_p=p,
                            top=self.top)
        self.plot.outputs = (figure_output(fig),)
        lines = f"{self.n_samples} draws of the next token: {' '.join(self.samples)}\n"
        if self.generate is not None:
            lines += f"a continuation:\n{self.text}\n"
        self.output.outputs = (_text_output(lines),)

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)


class AttentionExplorer:
    """Pick a sentence, a layer and a head; see that head's attention matrix and the weights
    from one query token (e.g. "it") as bars.

    ``attention[i]`` is the ``[L, H, T, T]`` attention of sentence ``i`` (or a list of per-layer
    arrays), ``tokens[i]`` its token strings, ``queries[i]`` the query position and
    ``marks[i]`` optional colours for key positions, named in the legend by ``mark_labels``
    (colour to label, as in :func:`plot_attention_from`). :attr:`weights` holds the bars
    shown.
    """

    def __init__(self, attention: Sequence[Any], tokens: Sequence[Sequence[str]],
                 queries: Sequence[int], *, marks: Sequence[dict[int, str]] | None = None,
                 mark_labels: dict[str, str] | None = None,
                 titles: Sequence[str] | None = None):
        import ipywidgets as widgets

        if not len(attention) or not (len(attention) == len(tokens) == len(queries)):
            raise ValueError("attention, tokens and queries must be non-empty and of one length, "
                             f"got {len(attention)}, {len(tokens)}, {len(queries)}")
        self.attention = [_attention_array(a) for a in attention]
        self.tokens = [list(t) for t in tokens]
        for i, (a, t, q) in enumerate(zip(self.attention, self.tokens, queries, strict=True)):
            if a.shape[2] != len(t):
                raise ValueError(f"tokens[{i}] has {len(t)} tokens but attention[{i}] covers "
                                 f"{a.shape[2]}")
            if not 0 <= q < len(t):
                raise ValueError(f"queries[{i}] must be in [0, {len(t)}), got {q!r}")
        self.queries = [int(q) for q in queries]
        self.marks = [dict(m) for m in marks] if marks is not None else [{}] * len(tokens)
        _check_mark_labels(mark_labels)
        self.mark_labels = mark_labels
        self.titles = (list(titles) if titles is not None
                       else [" ".join(t).strip() for t in self.tokens])
        L, H = self.attention[0].shape[:2]
        self.sentence = widgets.Dropdown(
            options=[(t[:70], i) for i, t in enumerate(self.titles)], value=0,
            description="sentence", layout=widgets.Layout(width="520px"))
        self.layer = widgets.Dropdown(options=list(range(L)), value=0, description="layer")
        self.head = widgets.Dropdown(options=list(range(H)), value=0, description="head")
        self.plot = widgets.Output()
        for w in (self.sentence, self.layer, self.head):
            w.observe(lambda _change: self.update(), names="value")
        self.widget = widgets.VBox([self.sentence, widgets.HBox([self.layer, self.head]),
                                    self.plot])
        self.weights = np.zeros(0)
        self.update()

    def figure(self) -> Figure:
        i, layer, head = self.sentence.value, self.layer.value, self.head.value
        att = self.attention[i][layer, head]
        names = _labels(self.tokens[i], len(self.tokens[i]))
        q = self.queries[i]
        fig = _figure(9.0, 3.2)
        left, right = fig.subplots(1, 2, width_ratios=[1, 1.3])
        image = left.imshow(att, vmin=0, vmax=1, cmap="Blues")
        fig.colorbar(image, ax=left, label="attention weight", fraction=0.046, pad=0.04)
        left.axhline(q, color=HIGHLIGHT, lw=0.8)
        left.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
        left.set_yticks(range(len(names)), names, fontsize=7)
        left.set_title(f"layer {layer}, head {head}: all queries", fontsize=9)
        left.set_xlabel("key (is read)", fontsize=8)
        left.set_ylabel("query (reads)", fontsize=8)
        x = np.arange(q + 1)
        right.bar(x, att[q, : q + 1], color=[self.marks[i].get(int(j), KEPT) for j in x])
        right.set_xticks(x, names[: q + 1], rotation=60, ha="right", fontsize=8)
        right.set_ylim(0, 1)
        right.set_title(f"weights from {names[q]!r}", fontsize=9)
        right.set_ylabel("attention weight", fontsize=8)
        right.legend(handles=_marks_legend(self.marks[i], names, self.mark_labels),
                     fontsize=7, loc="best")
        return fig

    def update(self) -> None:
        i = self.sentence.value
        self.weights = self.attention[i][self.layer.value, self.head.value, self.queries[i],
                                         : self.queries[i] + 1]
        self.plot.outputs = (figure_output(self.figure()),)

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)
