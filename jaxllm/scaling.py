"""Scaling laws: sweeps over model size and token budget, and the fits of Kaplan et al. (2020)
and Hoffmann et al. (2022) with bootstrap intervals.

A *sweep* trains every model of a ladder of sizes on every token budget of a list, each run
from scratch with its own warmup-cosine schedule ending at its budget (Hoffmann et al. showed
that reading the loss off the middle of a longer schedule overstates it), through the ordinary
:class:`jaxllm.train.Trainer`. Each run records its final validation loss, its parameter counts
(``N``: non-embedding, as Kaplan et al. count; and total), its tokens ``D``, and its compute
(``6 N D`` and :func:`jaxllm.model.flops_per_token` times ``D``). :func:`write_csv` stores the
rows with the command and environment that made them; :func:`read_csv` reads them back.

The fits:

* :func:`fit_kaplan`: ``L(N) = (N_c / N) ** alpha_N``, a straight line in log-log axes;
* :func:`fit_chinchilla`: ``L(N, D) = E + A / N**alpha + B / D**beta``, fitted as Hoffmann et al.
  did: the Huber loss (``delta = 1e-3``) of the residuals ``log L_hat - log L``, with
  ``L_hat = LSE(a - alpha log N, b - beta log D, e)`` (``A = e^a``, ``B = e^b``, ``E = e^e``),
  minimised by L-BFGS from the best points of a grid of starts;
* :func:`bootstrap`: percentile intervals of any fit's coefficients over resampled runs;
* :func:`compute_optimal`: the ``N`` and ``D`` that minimise the fitted loss at a compute
  budget ``C = 6 N D``, and so the compute-optimal tokens per parameter;
* :func:`isoflop_profile`: the loss at a fixed compute budget against model size, interpolated
  from a grid sweep, with the size that minimises it.

Run the stored sweep (about 10 minutes on a 2-core CPU; ``--size large`` on a GPU):

    python -m jaxllm.scaling sweep --size small   # writes jaxllm/resources/sweeps/...-small.csv

``python -m jaxllm.scaling mesh`` trains one model for a few steps on 1 device and on meshes of
simulated CPU devices and prints the losses as JSON (see :func:`mesh_losses`).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .config import ModelConfig, TrainConfig
from .validate import check_choice, check_int, check_number, write_text_atomic

__all__ = [
    "BootstrapResult", "ChinchillaFit", "HOFFMANN_2022", "BESIROGLU_2024", "KaplanFit",
    "SWEEPS", "SweepPoint", "bootstrap", "compute_optimal", "fit_chinchilla", "fit_kaplan",
    "isoflop_profile", "lbfgs", "mesh_losses", "measure_matmul_flops", "non_embedding_params",
    "read_csv", "run_sweep", "sweep_plan", "train_point", "write_csv",
]

# -- what a sweep trains ---------------------------------------------------------------------

#: The sweeps, by size: model shapes ``(n_layer, n_head, d_model)`` and token budgets. "small"
#: is sized for a 2-core CPU (about 10 minutes in all); "large" is the same experiment with
#: wider models, longer contexts and more tokens, for a GPU (the corpus is repeated: see the
#: ``epochs`` column).
SWEEPS: dict[str, dict[str, Any]] = {
    "small": dict(
        models=[(1, 2, 16), (1, 2, 32), (2, 2, 40), (2, 4, 64), (3, 4, 80), (4, 4, 96)],
        tokens=[65_536, 262_144, 1_048_576],
        context_length=64, batch_size=16, learning_rate=3e-3, eval_batches=32),
    "large": dict(
        models=[(2, 4, 64), (2, 4, 128), (4, 4, 192), (4, 8, 256), (6, 8, 384), (8, 8, 512)],
        tokens=[2_097_152, 8_388_608, 33_554_432],
        context_length=256, batch_size=64, learning_rate=1e-3, eval_batches=32),
}


@dataclass(frozen=True)
class SweepPoint:
    """One run of a sweep: a model shape trained on ``tokens`` tokens (``steps`` steps of
    ``batch_size x context_length`` tokens)."""

    name: str
    model: ModelConfig
    train: TrainConfig

    @property
    def tokens(self) -> int:
        return self.train.steps * self.train.batch_size * self.model.context_length


def sweep_plan(size: str = "small", *, vocab_size: int | None = None, seed: int = 0,
               models: Sequence[tuple[int, int, int]] | None = None,
               tokens: Sequence[int] | None = None) -> list[SweepPoint]:
    """The runs of sweep ``size`` (see :data:`SWEEPS`), every model on every token budget,
    smallest first. ``models`` and ``tokens`` select a subset (or other values);
    ``vocab_size`` defaults to the Shakespeare corpus's characters."""
    check_choice("size", size, tuple(SWEEPS))
    if vocab_size is None:
        vocab_size = shakespeare_tokens()[2].vocab_size
    spec = SWEEPS[size]
    models = spec["models"] if models is None else list(models)
    budgets = spec["tokens"] if tokens is None else list(tokens)
    if not models or not budgets:
        raise ValueError(f"models and tokens must be non-empty, got {models!r} and {budgets!r}")
    T, B = spec["context_length"], spec["batch_size"]
    points = []
    for shape in models:
        if (not isinstance(shape, tuple | list) or len(shape) != 3):
            raise ValueError(f"models must hold (n_layer, n_head, d_model) triples, got {shape!r}")
        n_layer, n_head, d_model = shape
        cfg = ModelConfig(vocab_size=vocab_size, context_length=T, n_layer=n_layer,
                          n_head=n_head, d_model=d_model)
        for d in budgets:
            check_int("tokens", d, min=4 * B * T)
            steps = max(1, round(d / (B * T)))
            lr = spec["learning_rate"]
            tcfg = TrainConfig(steps=steps, batch_size=B, learning_rate=lr,
                               min_learning_rate=lr / 10, warmup_steps=max(1, steps // 20),
                               eval_interval=steps, eval_batches=spec["eval_batches"],
                               seed=seed)
            points.append(SweepPoint(f"L{n_layer}-d{d_model}-D{steps * B * T}", cfg, tcfg))
    return points


def non_embedding_params(cfg: ModelConfig) -> int:
    """Parameters outside the token and position embeddings and an untied output matrix: the
    ``N`` of Kaplan et al. (2020), whose laws are cleaner with embeddings left out."""
    from .model import count_params

    emb = cfg.vocab_size * cfg.d_model
    if cfg.positions == "learned":
        emb += cfg.context_length * cfg.d_model
    if not cfg.tie_embeddings:
        emb += cfg.vocab_size * cfg.d_model
    return count_params(cfg) - emb


def train_point(point: SweepPoint, train_tokens: np.ndarray, val_tokens: np.ndarray
                ) -> dict[str, Any]:
    """Train one run of a sweep from scratch and return its row (see :func:`run_sweep`)."""
    from .model import count_params, flops_per_token
    from .train import Trainer

    t0 = time.perf_counter()
    trainer = Trainer(point.model, point.train, train_tokens, val_tokens)
    trainer.fit(progress=False)
    ev = trainer.evaluate()
    seconds = time.perf_counter() - t0
    n, n_total, d = non_embedding_params(point.model), count_params(point.model), point.tokens
    m, t = point.model, point.train
    return {
        "name": point.name, "n_layer": m.n_layer, "n_head": m.n_head, "d_model": m.d_model,
        "context_length": m.context_length, "batch_size": t.batch_size, "steps": t.steps,
        "learning_rate": t.learning_rate, "seed": t.seed,
        "params": n, "params_total": n_total, "tokens": d,
        "epochs": round(d / len(train_tokens), 4),
        "flops_6nd": 6.0 * n * d, "flops": flops_per_token(m) * d,
        "train_loss": round(ev["train_loss"], 6), "val_loss": round(ev["val_loss"], 6),
        "seconds": round(seconds, 2),
    }


def run_sweep(points: Sequence[SweepPoint], train_tokens: np.ndarray, val_tokens: np.ndarray,
              *, log: Callable[[str], None] | None = None,
              csv_path: str | os.PathLike | None = None,
              meta: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """Train every point (in order) and return one row per run; with ``csv_path`` the rows
    so far are rewritten there after each run (so a long sweep can be watched and is not
    lost if stopped)."""
    if not points or not all(isinstance(p, SweepPoint) for p in points):
        raise ValueError("points must be a non-empty sequence of SweepPoint")
    rows: list[dict[str, Any]] = []
    for i, p in enumerate(points):
        rows.append(train_point(p, train_tokens, val_tokens))
        if log is not None:
            r = rows[-1]
            log(f"[{i + 1}/{len(points)}] {p.name}: N={r['params']:,} D={r['tokens']:,} "
                f"val_loss={r['val_loss']:.4f} ({r['seconds']:.1f} s)")
        if csv_path is not None:
            write_csv(rows, csv_path, meta)
    return rows


def shakespeare_tokens(val_fraction: float = 0.1) -> tuple[np.ndarray, np.ndarray, Any]:
    """The shipped Shakespeare corpus as character ids: train and validation streams (the last
    ``val_fraction`` of the text) and the tokenizer."""
    from .data import load_corpus, train_val_split
    from .tokenizer import CharTokenizer

    text = load_corpus("shakespeare")
    tok = CharTokenizer.from_text(text)
    train, val = train_val_split(tok.encode(text), val_fraction)
    return train, val, tok


# -- the CSV and its provenance --------------------------------------------------------------

COLUMNS = ("name", "n_layer", "n_head", "d_model", "context_length", "batch_size", "steps",
           "learning_rate", "seed", "params", "params_total", "tokens", "epochs", "flops_6nd",
           "flops", "train_loss", "val_loss", "seconds")
_INT_COLUMNS = {"n_layer", "n_head", "d_model", "context_length", "batch_size", "steps", "seed",
                "params", "params_total", "tokens"}


def environment() -> dict[str, str]:
    """Versions and hardware a result was measured with."""
    import jax

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            names = [ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")]
        if names:
            cpu = f"{names[0]} x {len(names)}"
    except OSError:
        pass
    dev = jax.devices()[0]
    return {"python": platform.python_version(), "jax": jax.__version__,
            "numpy": np.__version__, "backend": jax.default_backend(),
            "device": f"{jax.device_count()} x {dev.device_kind}", "cpu": cpu}


def write_csv(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike,
              meta: Mapping[str, Any] | None = None) -> None:
    """Write sweep rows to ``path`` as CSV, preceded by ``# key: value`` lines of ``meta``
    (the command and environment that made them), atomically."""
    if not rows:
        raise ValueError("rows must hold at least one run, got none")
    missing = [c for c in COLUMNS if c not in rows[0]]
    if missing:
        raise ValueError(f"rows must have the columns {', '.join(COLUMNS)}; missing "
                         f"{', '.join(missing)}")
    out = io.StringIO()
    for k, v in (meta or {}).items():
        if "\n" in f"{k}{v}":
            raise ValueError(f"meta values must be one line, got {k!r}: {v!r}")
        out.write(f"# {k}: {v}\n")
    w = csv.DictWriter(out, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_text_atomic(path, out.getvalue())


def read_csv(path: str | os.PathLike) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """The rows and the ``# key: value`` metadata of a CSV written by :func:`write_csv`."""
    if not os.path.isfile(path):
        raise ValueError(f"path must be an existing sweep CSV, got {os.fspath(path)!r}")
    meta: dict[str, str] = {}
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    body = []
    for ln in lines:
        if ln.startswith("# ") and not body:
            k, _, v = ln[2:].partition(": ")
            meta[k] = v
        else:
            body.append(ln)
    reader = csv.DictReader(body)
    if reader.fieldnames is None or "val_loss" not in reader.fieldnames:
        raise ValueError(f"path must be a sweep CSV with a val_loss column, got {path!r}")
    rows = []
    for r in reader:
        rows.append({k: (v if k == "name" else int(v) if k in _INT_COLUMNS else float(v))
                     for k, v in r.items()})
    return rows, meta


def sweep_path(size: str = "small") -> str:
    """Where the shipped sweep of ``size`` is stored (``jaxllm/resources/sweeps``)."""
    check_choice("size", size, tuple(SWEEPS))
    return os.path.join(os.path.dirname(__file__), "resources", "sweeps",
                        f"shakespeare-char-{size}.csv")


# -- fits ------------------------------------------------------------------------------------

def _positive(name: str, x: Any, n: int | None = None) -> np.ndarray:
    a = np.asarray(x, dtype=float)
    if a.ndim != 1 or a.size < 2:
        raise ValueError(f"{name} must be a 1-D sequence of at least 2 values, got shape "
                         f"{a.shape}")
    if n is not None and a.size != n:
        raise ValueError(f"{name} must have the same length as N ({n}), got {a.size}")
    if not np.all(np.isfinite(a)) or np.any(a <= 0):
        raise ValueError(f"{name} must hold finite positive values, got {a.tolist()[:8]}")
    return a


@dataclass(frozen=True)
class KaplanFit:
    """``L(N) = (N_c / N) ** alpha``."""

    N_c: float
    alpha: float

    def __call__(self, N: Any) -> np.ndarray:
        return (self.N_c / np.asarray(N, float)) ** self.alpha

    def as_dict(self) -> dict[str, float]:
        return {"N_c": self.N_c, "alpha": self.alpha}


def fit_kaplan(N: Any, L: Any) -> KaplanFit:
    """Least squares of ``log L = alpha log N_c - alpha log N`` (a line in log-log axes)."""
    N = _positive("N", N)
    L = _positive("L", L, N.size)
    if np.ptp(np.log(N)) == 0:
        raise ValueError("N must hold at least two different sizes")
    slope, intercept = np.polyfit(np.log(N), np.log(L), 1)
    alpha = -slope
    if alpha <= 0:
        raise ValueError(f"L must fall with N for a power law, got slope {slope:.3g} in log-log")
    return KaplanFit(N_c=float(np.exp(intercept / alpha)), alpha=float(alpha))


@dataclass(frozen=True)
class ChinchillaFit:
    """``L(N, D) = E + A / N**alpha + B / D**beta``; ``objective`` is the Huber loss reached."""

    E: float
    A: float
    B: float
    alpha: float
    beta: float
    objective: float = float("nan")

    def __call__(self, N: Any, D: Any) -> np.ndarray:
        N, D = np.asarray(N, float), np.asarray(D, float)
        return self.E + self.A / N ** self.alpha + self.B / D ** self.beta

    def as_dict(self) -> dict[str, float]:
        return {"E": self.E, "A": self.A, "B": self.B, "alpha": self.alpha, "beta": self.beta}


#: Hoffmann et al. (2022), approach 3 (their parametric fit), in nats per token of MassiveText.
HOFFMANN_2022 = ChinchillaFit(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)
#: Besiroglu et al. (2024), their refit of the same data (E, A, B as published).
BESIROGLU_2024 = ChinchillaFit(E=1.82, A=482.01, B=2085.43, alpha=0.3478, beta=0.3658)


def _huber_objective(theta: np.ndarray, logN: np.ndarray, logD: np.ndarray, logL: np.ndarray,
                     delta: float) -> tuple[float, np.ndarray]:
    """Sum of Huber losses of the log residuals, and its gradient in (a, b, e, alpha, beta)."""
    a, b, e, alpha, beta = theta
    z = np.stack([a - alpha * logN, b - beta * logD, np.full_like(logN, e)])  # [3, n]
    zmax = z.max(axis=0)
    ez = np.exp(z - zmax)
    s = ez.sum(axis=0)
    r = zmax + np.log(s) - logL
    w = ez / s  # softmax weights: d LSE / d z
    small = np.abs(r) <= delta
    loss = np.where(small, 0.5 * r * r, delta * (np.abs(r) - 0.5 * delta)).sum()
    g = np.where(small, r, delta * np.sign(r))  # d huber / d r
    grad = np.array([(g * w[0]).sum(), (g * w[1]).sum(), (g * w[2]).sum(),
                     -(g * w[0] * logN).sum(), -(g * w[1] * logD).sum()])
    return float(loss), grad


#: Hoffmann et al.'s grid of initialisations (their appendix D.2).
_GRID = dict(alpha=np.arange(0.0, 2.01, 0.5), beta=np.arange(0.0, 2.01, 0.5),
             e=np.arange(-1.0, 1.01, 0.5), a=np.arange(0.0, 25.1, 5.0),
             b=np.arange(0.0, 25.1, 5.0))


def _grid() -> np.ndarray:
    """The 4,500 starting points ``(a, b, e, alpha, beta)``, ``[4500, 5]``."""
    return np.stack(np.meshgrid(_GRID["a"], _GRID["b"], _GRID["e"], _GRID["alpha"],
                                _GRID["beta"], indexing="ij"), -1).reshape(-1, 5)


def fit_chinchilla(N: Any, D: Any, L: Any, *, delta: float = 1e-3, n_starts: int = 4,
                   init: Sequence[Sequence[float]] | None = None) -> ChinchillaFit:
    """Fit ``L(N, D) = E + A/N^alpha + B/D^beta`` as Hoffmann et al. (2022) did.

    The Huber loss (``delta``) of ``LSE(a - alpha log N, b - beta log D, e) - log L`` is
    evaluated on their grid of 4,500 starting points at once; L-BFGS (:func:`lbfgs`, with the
    exact gradient) then runs from the ``n_starts`` best of them (and from each
    ``(a, b, e, alpha, beta)`` in ``init``), and the best optimum wins. Running from every grid
    point, as they did, finds the same optimum here and takes a hundred times longer.
    """
    N = _positive("N", N)
    D = _positive("D", D, N.size)
    L = _positive("L", L, N.size)
    check_number("delta", delta, low=0.0, low_open=True)
    check_int("n_starts", n_starts, min=1)
    if N.size < 5:
        raise ValueError(f"N, D and L must hold at least 5 runs for 5 coefficients, got {N.size}")
    if np.ptp(np.log(N)) == 0 or np.ptp(np.log(D)) == 0:
        raise ValueError("N and D must each take at least two different values")
    logN, logD, logL = np.log(N), np.log(D), np.log(L)
    g = _grid()
    z = np.stack([g[:, :1] - g[:, 3:4] * logN, g[:, 1:2] - g[:, 4:5] * logD,
                  np.broadcast_to(g[:, 2:3], (len(g), N.size))])  # [3, 4500, n]
    r = np.logaddexp.reduce(z, axis=0) - logL
    h = np.where(np.abs(r) <= delta, 0.5 * r * r, delta * (np.abs(r) - 0.5 * delta)).sum(1)
    starts = [*g[np.argsort(h)[:n_starts]]]
    for s in init or ():
        if len(s) != 5:
            raise ValueError(f"init must hold (a, b, e, alpha, beta) tuples, got {s!r}")
        starts.append(np.asarray(s, float))
    best_x, best_f = starts[0], float("inf")
    for x0 in starts:
        x, f = lbfgs(lambda t: _huber_objective(t, logN, logD, logL, delta), x0)
        if f < best_f:
            best_x, best_f = x, f
    a, b, e, alpha, beta = best_x
    with np.errstate(over="ignore"):  # a degenerate resample may send A or B to inf
        return ChinchillaFit(E=float(np.exp(e)), A=float(np.exp(a)), B=float(np.exp(b)),
                             alpha=float(alpha), beta=float(beta), objective=float(best_f))


def lbfgs(fun: Callable[[np.ndarray], tuple[float, np.ndarray]], x0: Any, *,
          maxiter: int = 1000, memory: int = 10, gtol: float = 1e-10, ftol: float = 1e-13
          ) -> tuple[np.ndarray, float]:
    """Minimise ``fun`` (returning value and gradient) by L-BFGS (Nocedal & Wright, alg. 7.4)
    with a backtracking Armijo line search; returns ``(x, fun(x))``.

    Written out in NumPy for a handful of parameters: ``scipy.optimize``'s L-BFGS-B calls a
    multithreaded BLAS on these 5-vectors, which on a busy 2-core machine took 15 times longer
    (8.8 s against 0.6 s for one Chinchilla fit, measured while writing this module).
    """
    x = np.asarray(x0, float).copy()
    f, g = fun(x)
    S: list[np.ndarray] = []
    Y: list[np.ndarray] = []
    for _ in range(maxiter):
        if not np.all(np.isfinite(g)) or np.max(np.abs(g)) <= gtol:
            break
        q, coef = g.copy(), []
        for s_, y_ in zip(reversed(S), reversed(Y), strict=True):  # the two-loop recursion
            rho = 1.0 / (y_ @ s_)
            a = rho * (s_ @ q)
            q -= a * y_
            coef.append((rho, a))
        q *= (S[-1] @ Y[-1]) / (Y[-1] @ Y[-1]) if S else 1.0 / max(1.0, np.abs(g).sum())
        for (s_, y_), (rho, a) in zip(zip(S, Y, strict=True), reversed(coef), strict=True):
            q += s_ * (a - rho * (y_ @ q))
        p = -q
        slope = g @ p
        if slope >= 0:  # not a descent direction: restart from the gradient
            S.clear()
            Y.clear()
            p, slope = -g / max(1.0, np.abs(g).sum()), -(g @ g) / max(1.0, np.abs(g).sum())
        t = 1.0
        while True:
            x_new = x + t * p
            f_new, g_new = fun(x_new)
            if (np.isfinite(f_new) and f_new <= f + 1e-4 * t * slope) or t < 1e-16:
                break
            t *= 0.5
        if not (np.isfinite(f_new) and f_new <= f):
            break
        s_, y_ = x_new - x, g_new - g
        if s_ @ y_ > 1e-16:
            S.append(s_)
            Y.append(y_)
            if len(S) > memory:
                S.pop(0)
                Y.pop(0)
        done = (f - f_new) <= ftol * max(abs(f), abs(f_new), 1.0)
        x, f, g = x_new, f_new, g_new
        if done:
            break
    return x, float(f)


@dataclass(frozen=True)
class BootstrapResult:
    """Coefficients of ``n`` refits on resampled runs, with percentile intervals."""

    samples: dict[str, np.ndarray]
    level: float

    def interval(self, name: str) -> tuple[float, float]:
        if name not in self.samples:
            raise ValueError(f"name must be one of {sorted(self.samples)}, got {name!r}")
        q = 50 * (1 - self.level)
        lo, hi = np.nanpercentile(self.samples[name], [q, 100 - q])
        return float(lo), float(hi)

    def intervals(self) -> dict[str, tuple[float, float]]:
        return {k: self.interval(k) for k in self.samples}


def bootstrap(fit: Callable[..., Any], *columns: Any, n: int = 200, seed: int = 0,
              level: float = 0.9, derived: Mapping[str, Callable[[Any], float]] | None = None,
              ) -> BootstrapResult:
    """Refit ``fit(*columns)`` on ``n`` resamples (rows drawn with replacement, from
    ``np.random.default_rng(seed)``) and collect each coefficient of ``fit(...).as_dict()``
    plus ``derived[name](fit)``; a resample the fit rejects (too few distinct rows) is
    skipped."""
    check_int("n", n, min=2)
    check_int("seed", seed, min=0)
    check_number("level", level, low=0.0, high=1.0, low_open=True, high_open=True)
    cols = [np.asarray(c, float) for c in columns]
    if not cols or any(c.shape != cols[0].shape or c.ndim != 1 for c in cols):
        raise ValueError("columns must be 1-D arrays of one length")
    rng = np.random.default_rng(seed)
    out: dict[str, list[float]] = {}
    for _ in range(n):
        idx = rng.integers(0, cols[0].size, cols[0].size)
        try:
            f = fit(*(c[idx] for c in cols))
        except ValueError:
            continue
        vals = dict(f.as_dict())
        for k, fn in (derived or {}).items():
            vals[k] = fn(f)
        for k, v in vals.items():
            out.setdefault(k, []).append(v)
    if not out:
        raise ValueError("every bootstrap resample was rejected by the fit")
    return BootstrapResult({k: np.array(v) for k, v in out.items()}, level)


def compute_optimal(fit: ChinchillaFit, C: Any) -> tuple[np.ndarray, np.ndarray]:
    """The ``N`` and ``D`` minimising ``fit(N, D)`` subject to ``6 N D = C`` (Hoffmann et al.,
    eq. 4): ``N = G (C/6)^(beta/(alpha+beta))``, ``D = (C/6)^(alpha/(alpha+beta)) / G`` with
    ``G = (alpha A / (beta B))^(1/(alpha+beta))``."""
    if not isinstance(fit, ChinchillaFit):
        raise TypeError(f"fit must be a ChinchillaFit, got {type(fit).__name__}")
    if fit.alpha <= 0 or fit.beta <= 0:
        raise ValueError(f"fit must have positive alpha and beta, got {fit.alpha}, {fit.beta}")
    C = np.asarray(C, float)
    if np.any(C <= 0):
        raise ValueError(f"C must be positive, got {C}")
    s = fit.alpha + fit.beta
    G = (fit.alpha * fit.A / (fit.beta * fit.B)) ** (1 / s)
    return G * (C / 6) ** (fit.beta / s), (C / 6) ** (fit.alpha / s) / G


def isoflop_profile(rows: Sequence[Mapping[str, Any]], C: float, *, flops: str = "flops_6nd"
                    ) -> dict[str, np.ndarray]:
    """Loss against model size at the compute budget ``C``, from a grid sweep.

    Each model was trained on a few token budgets; its loss at ``D = C / (6 N)`` is
    interpolated linearly in ``(log D, log L)`` between them (a model whose budgets do not
    bracket ``D`` is left out: no extrapolation). Returns ``N``, ``D`` and ``loss`` (arrays,
    by increasing ``N``) and ``N_min``, the minimum of a parabola fitted to ``loss`` against
    ``log N`` (Hoffmann et al.'s approach 2), or NaN with fewer than 3 models.
    """
    check_number("C", C, low=0.0, low_open=True)
    check_choice("flops", flops, ("flops_6nd", "flops"))
    by_model: dict[int, list[tuple[float, float]]] = {}
    for r in rows:
        by_model.setdefault(int(r["params"]), []).append((float(r["tokens"]),
                                                          float(r["val_loss"])))
    Ns, Ds, Ls = [], [], []
    for n, pts in sorted(by_model.items()):
        pts.sort()
        d_at = C / (6 * n) if flops == "flops_6nd" else None
        if d_at is None:  # flops per token of this model, from any of its rows
            row = next(r for r in rows if int(r["params"]) == n)
            d_at = C / (float(row["flops"]) / float(row["tokens"]))
        logd = np.log([p[0] for p in pts])
        if not logd[0] <= math.log(d_at) <= logd[-1]:
            continue
        Ns.append(n)
        Ds.append(d_at)
        Ls.append(float(np.exp(np.interp(math.log(d_at), logd, np.log([p[1] for p in pts])))))
    N, D, L = np.array(Ns, float), np.array(Ds, float), np.array(Ls, float)
    n_min = float("nan")
    if N.size >= 3:
        c2, c1, _ = np.polyfit(np.log(N), L, 2)
        if c2 > 0:
            n_min = float(np.exp(-c1 / (2 * c2)))
    return {"N": N, "D": D, "loss": L, "N_min": np.array(n_min)}


# -- compute -------------------------------------------------------------------------------

def measure_matmul_flops(n: int = 1024, *, dtype: str = "float32", repeats: int = 10) -> float:
    """The FLOP/s of this process's first device on a ``n x n`` by ``n x n`` matmul (best of
    ``repeats`` timed runs after a warm-up): the practical peak an MFU is measured against."""
    import jax

    check_int("n", n, min=16)
    check_int("repeats", repeats, min=1)
    check_choice("dtype", dtype, ("float32", "bfloat16"))
    k1, k2 = jax.random.split(jax.random.key(0))
    x = jax.random.normal(k1, (n, n), dtype)
    y = jax.random.normal(k2, (n, n), dtype)
    mm = jax.jit(lambda a, b: a @ b)
    mm(x, y).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        mm(x, y).block_until_ready()
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n ** 3 / best


# -- the same step on many devices ---------------------------------------------------------------

def _mesh_worker(steps: int) -> dict[str, Any]:
    """Train one small model ``steps`` steps on 1 device, on ``data=n`` and on ``fsdp=n``
    (n = all devices of this process), from the same batches; the per-step losses."""
    import jax

    from .data import Batches
    from .sharding import make_mesh
    from .train import Trainer

    train, val, tok = shakespeare_tokens()
    n = jax.device_count()
    cfg = ModelConfig(vocab_size=tok.vocab_size, context_length=16, n_layer=1, n_head=4,
                      d_model=32)
    tcfg = TrainConfig(steps=max(steps, 2), batch_size=8, learning_rate=3e-3, warmup_steps=1,
                       eval_interval=max(steps, 2), eval_batches=1)
    batches = Batches(train, tcfg.batch_size, cfg.context_length, seed=1)
    out: dict[str, Any] = {"devices": n}
    meshes = {"one device": None, f"data={n}": make_mesh(data=n),
              f"fsdp={n}": make_mesh(fsdp=n)}
    for name, mesh in meshes.items():
        t = Trainer(cfg, tcfg, batches, mesh=mesh)
        losses = [float(t.train_step(batches[s])["loss"]) for s in range(steps)]
        out[name] = losses
    return out


def mesh_losses(devices: int = 4, steps: int = 5, *, timeout: float = 300) -> dict[str, Any]:
    """Run :func:`_mesh_worker` in a fresh Python process with ``devices`` simulated CPU
    devices (JAX fixes its device count when it starts, hence the subprocess) and return its
    result: the per-step training losses on one device, on a data-parallel mesh and on a
    parameter-sharded (FSDP) mesh. The worker compiles with less LLVM optimisation
    (``--xla_backend_optimization_level=0``), which halves XLA's compile time, most of this
    run; all three losses come from programs compiled with the same flag."""
    check_int("devices", devices, min=1, max=8)
    check_int("steps", steps, min=1)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "XLA_"))}
    env.update(JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES=str(devices),
               XLA_FLAGS="--xla_backend_optimization_level=0")
    if "JAX_COMPILATION_CACHE_DIR" in os.environ:
        env["JAX_COMPILATION_CACHE_DIR"] = os.environ["JAX_COMPILATION_CACHE_DIR"]
    pkg_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join([pkg_root, *filter(None, [env.get("PYTHONPATH")])])
    done = subprocess.run([sys.executable, "-m", "jaxllm.scaling", "mesh", "--steps",
                           str(steps)], env=env, capture_output=True, text=True,
                          timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"the mesh worker failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# -- command line ------------------------------------------------------------------------------

def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m jaxllm.scaling", description=__doc__.split(
        "\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("sweep", help="train a sweep and write its CSV")
    s.add_argument("--size", choices=tuple(SWEEPS), default="small")
    s.add_argument("--out", default=None, help="CSV path (default: the shipped sweep's path)")
    s.add_argument("--seed", type=int, default=0)
    m = sub.add_parser("mesh", help="losses on 1 device and on meshes of all devices (JSON)")
    m.add_argument("--steps", type=int, default=5)
    args = p.parse_args(argv)
    if args.command == "mesh":
        print(json.dumps(_mesh_worker(args.steps)))
        return 0
    out = args.out or sweep_path(args.size)
    train, val, tok = shakespeare_tokens()
    points = sweep_plan(args.size, vocab_size=tok.vocab_size, seed=args.seed)
    cmd = "python -m jaxllm.scaling " + " ".join(argv if argv is not None else sys.argv[1:])
    meta = {"command": cmd, "corpus": f"shakespeare (jaxllm/resources), characters, "
            f"{len(train):,} train / {len(val):,} validation tokens",
            **environment(), "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
    t0 = time.perf_counter()
    rows = run_sweep(points, train, val, log=lambda m: print(m, flush=True), csv_path=out,
                     meta=meta)
    meta["wall_seconds"] = f"{time.perf_counter() - t0:.0f}"
    write_csv(rows, out, meta)
    print(f"wrote {len(rows)} runs to {out} in {meta['wall_seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
