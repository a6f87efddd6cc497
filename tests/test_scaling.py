"""Tests of jaxllm.scaling: the fits recover known laws from noisy synthetic data, the sweep's
CSV round-trips, parameter and FLOP counts match hand counts, and bad input is refused."""

from __future__ import annotations

import math

import numpy as np
import pytest

from jaxllm import scaling
from jaxllm.config import ModelConfig
from jaxllm.model import count_params, flops_per_token

TRUE = scaling.ChinchillaFit(E=1.3, A=60.0, B=300.0, alpha=0.45, beta=0.35)


def synthetic(law=TRUE, noise=0.005, seed=0):
    """A 6 x 4 grid of runs whose losses follow ``law`` up to lognormal noise."""
    rng = np.random.default_rng(seed)
    N, D = np.meshgrid(np.geomspace(3e3, 1e6, 6), np.geomspace(6e4, 4e6, 4), indexing="ij")
    N, D = N.ravel(), D.ravel()
    return N, D, law(N, D) * np.exp(rng.normal(0.0, noise, N.size))


def test_chinchilla_fit_recovers_known_coefficients_from_noisy_data():
    N, D, L = synthetic()
    fit = scaling.fit_chinchilla(N, D, L)
    assert fit.alpha == pytest.approx(TRUE.alpha, abs=0.06)
    assert fit.beta == pytest.approx(TRUE.beta, abs=0.06)
    assert fit.E == pytest.approx(TRUE.E, rel=0.05)
    # A and B trade off against alpha and beta; the predictions are what must agree.
    assert np.max(np.abs(np.log(fit(N, D)) - np.log(TRUE(N, D)))) < 0.01


def test_chinchilla_fit_is_exact_without_noise():
    N, D, L = synthetic(noise=0.0)
    fit = scaling.fit_chinchilla(N, D, L)
    for k, v in TRUE.as_dict().items():
        assert getattr(fit, k) == pytest.approx(v, rel=1e-3), k


def test_lbfgs_finds_the_minimum_scipy_finds():
    from scipy.optimize import minimize

    def rosenbrock(x):
        f = np.sum(100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2)
        g = np.zeros_like(x)
        g[:-1] = -400 * x[:-1] * (x[1:] - x[:-1] ** 2) - 2 * (1 - x[:-1])
        g[1:] += 200 * (x[1:] - x[:-1] ** 2)
        return f, g

    x, f = scaling.lbfgs(rosenbrock, np.array([-1.2, 1.0, -0.5, 0.3, 2.0]))
    np.testing.assert_allclose(x, np.ones(5), atol=1e-5)
    N, D, L = synthetic(seed=4)
    logs = np.log(N), np.log(D), np.log(L)
    x0 = np.array([4.0, 6.0, 0.2, 0.5, 0.4])
    ours = scaling.lbfgs(lambda t: scaling._huber_objective(t, *logs, 1e-3), x0)[1]
    ref = minimize(scaling._huber_objective, x0, args=(*logs, 1e-3), jac=True, method="BFGS",
                   options={"gtol": 1e-12}).fun
    assert ours <= ref * (1 + 1e-6) + 1e-12


def test_kaplan_fit_recovers_a_power_law():
    N = np.geomspace(1e3, 1e7, 9)
    law = scaling.KaplanFit(N_c=8.8e13, alpha=0.076)  # Kaplan et al.'s published L(N)
    rng = np.random.default_rng(1)
    fit = scaling.fit_kaplan(N, law(N) * np.exp(rng.normal(0, 0.002, N.size)))
    assert fit.alpha == pytest.approx(0.076, abs=0.005)
    exact = scaling.fit_kaplan(N, law(N))
    assert exact.alpha == pytest.approx(0.076, rel=1e-9)
    assert exact.N_c == pytest.approx(8.8e13, rel=1e-6)


def test_bootstrap_intervals_cover_the_truth_and_shrink_with_less_noise():
    N, D, L = synthetic(noise=0.01, seed=2)
    wide = scaling.bootstrap(lambda *c: scaling.fit_chinchilla(*c, n_starts=1), N, D, L,
                             n=3, seed=0, derived={"a_over_b": lambda f: f.alpha / f.beta})
    lo, hi = wide.interval("alpha")
    assert lo < hi
    assert set(wide.samples) == {"E", "A", "B", "alpha", "beta", "a_over_b"}
    N2 = np.geomspace(1e3, 1e6, 10)
    law = scaling.KaplanFit(N_c=1e9, alpha=0.1)
    rng = np.random.default_rng(3)
    res = [scaling.bootstrap(scaling.fit_kaplan, N2, law(N2) * np.exp(rng.normal(0, s, 10)),
                             n=200, seed=1) for s in (0.02, 0.002)]
    widths = [np.subtract(*r.interval("alpha")[::-1]) for r in res]
    assert res[0].interval("alpha")[0] < 0.1 < res[0].interval("alpha")[1]
    assert widths[1] < widths[0] / 3


def test_compute_optimal_matches_a_brute_force_search():
    C = 1e18
    n_opt, d_opt = scaling.compute_optimal(scaling.HOFFMANN_2022, C)
    assert 6 * n_opt * d_opt == pytest.approx(C, rel=1e-9)
    grid = np.geomspace(1e6, 1e12, 20001)
    best = grid[np.argmin(scaling.HOFFMANN_2022(grid, C / (6 * grid)))]
    assert n_opt == pytest.approx(best, rel=2e-3)
    # Chinchilla's own budget (5.76e23 FLOPs) gives tens of billions of parameters.
    n, d = scaling.compute_optimal(scaling.HOFFMANN_2022, 5.76e23)
    assert 1e10 < n < 1e11 and 1e11 < d < 1e13


def test_isoflop_profile_finds_the_optimum_of_the_law():
    law = TRUE
    N = np.geomspace(1e3, 1e6, 13)
    D = np.geomspace(1e4, 1e9, 21)
    rows = [{"params": int(n), "tokens": float(d), "val_loss": float(law(n, d)),
             "flops": 7.0 * n * d} for n in N for d in D]
    C = 1e13
    prof = scaling.isoflop_profile(rows, C)
    assert prof["N"].size >= 5
    np.testing.assert_allclose(6 * prof["N"] * prof["D"], C, rtol=1e-9)
    np.testing.assert_allclose(prof["loss"], law(prof["N"], prof["D"]), rtol=1e-3)
    n_opt, _ = scaling.compute_optimal(law, C)
    assert abs(math.log(float(prof["N_min"]) / n_opt)) < 0.3
    # Out of the range of every model's budgets: nothing is extrapolated.
    assert scaling.isoflop_profile(rows, 1.0)["N"].size == 0


def test_csv_round_trip_keeps_rows_and_provenance(tmp_path):
    rows = [{c: (f"run{i}" if c == "name" else i + 1 if c in scaling._INT_COLUMNS
                 else 0.5 + i / 7) for c in scaling.COLUMNS} for i in range(3)]
    meta = {"command": "python -m jaxllm.scaling sweep --size small", "jax": "0.0"}
    path = tmp_path / "sub" / "sweep.csv"
    scaling.write_csv(rows, path, meta)
    back, meta_back = scaling.read_csv(path)
    assert meta_back == meta
    assert back == rows
    assert path.read_text().startswith("# command: python -m jaxllm.scaling sweep")


def test_shipped_sweep_is_complete_and_fits():
    rows, meta = scaling.read_csv(scaling.sweep_path("small"))
    spec = scaling.SWEEPS["small"]
    assert len(rows) == len(spec["models"]) * len(spec["tokens"])
    assert meta["command"].startswith("python -m jaxllm.scaling sweep")
    assert {"jax", "cpu", "wall_seconds"} <= set(meta)
    cols = {k: np.array([r[k] for r in rows], float) for k in ("params", "tokens", "val_loss")}
    fit = scaling.fit_chinchilla(cols["params"], cols["tokens"], cols["val_loss"])
    assert fit.alpha > 0 and fit.beta > 0
    resid = np.log(fit(cols["params"], cols["tokens"])) - np.log(cols["val_loss"])
    assert np.max(np.abs(resid)) < 0.1


def test_parameter_and_flop_counts_match_hand_counts():
    cfg = ModelConfig(vocab_size=70, context_length=32, n_layer=3, n_head=4, d_model=48)
    d, L = cfg.d_model, cfg.n_layer
    # Per block: qkv 3d^2 + 3d, proj d^2 + d, MLP 8d^2 + 5d, two LayerNorms 4d; final norm 2d.
    assert scaling.non_embedding_params(cfg) == L * (12 * d * d + 13 * d) + 2 * d
    assert count_params(cfg) - scaling.non_embedding_params(cfg) == (70 + 32) * d
    assert flops_per_token(cfg) == 6 * (L * 12 * d * d + d * 70) + 12 * L * 32 * d
    untied = cfg.replace(tie_embeddings=False, positions="rope")
    assert scaling.non_embedding_params(untied) == scaling.non_embedding_params(cfg)


def test_sweep_plan_spans_sizes_and_budgets():
    plan = scaling.sweep_plan("small", vocab_size=65)
    spec = scaling.SWEEPS["small"]
    assert len(plan) == len(spec["models"]) * len(spec["tokens"]) >= 18
    assert sorted({p.tokens for p in plan}) == sorted(spec["tokens"])
    assert len({p.model for p in plan}) == len(spec["models"]) >= 6
    assert all(p.train.eval_interval == p.train.steps for p in plan)


def test_matmul_peak_is_measured():
    assert scaling.measure_matmul_flops(64, repeats=2) > 1e6


@pytest.mark.parametrize("call, match", [
    (lambda: scaling.fit_kaplan([1, 2, 3], [1, 2]), "same length"),
    (lambda: scaling.fit_kaplan([1, -2, 3], [3, 2, 1]), "finite positive"),
    (lambda: scaling.fit_kaplan([5, 5, 5], [3, 2, 1]), "two different sizes"),
    (lambda: scaling.fit_kaplan([1, 2, 3], [1, 2, 3]), "fall with N"),
    (lambda: scaling.fit_chinchilla([1, 2, 3], [1, 2, 3], [3, 2, 1]), "at least 5 runs"),
    (lambda: scaling.fit_chinchilla(*synthetic(), delta=0), "delta"),
    (lambda: scaling.compute_optimal(scaling.HOFFMANN_2022, -1.0), "C must be positive"),
    (lambda: scaling.compute_optimal({"E": 1}, 1.0), "ChinchillaFit"),
    (lambda: scaling.sweep_plan("huge"), "size must be one of"),
    (lambda: scaling.sweep_plan("small", tokens=[10], vocab_size=65), "tokens must be"),
    (lambda: scaling.write_csv([], "x.csv"), "at least one run"),
    (lambda: scaling.write_csv([{"name": "a"}], "x.csv"), "missing"),
    (lambda: scaling.read_csv("/nonexistent/sweep.csv"), "existing sweep CSV"),
    (lambda: scaling.isoflop_profile([], -5.0), "C must be"),
    (lambda: scaling.bootstrap(scaling.fit_kaplan, [1, 2], n=1), "n must be"),
    (lambda: scaling.mesh_losses(devices=0), "devices must be"),
])
def test_bad_inputs_raise_clear_errors(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call()


@pytest.mark.integration
def test_a_tiny_sweep_trains_and_round_trips(tmp_path):
    train, val, tok = scaling.shakespeare_tokens()
    points = scaling.sweep_plan("small", vocab_size=tok.vocab_size, models=[(1, 2, 16)],
                                tokens=[8192, 16384])
    path = tmp_path / "sweep.csv"
    rows = scaling.run_sweep(points, train, val, csv_path=path, meta={"command": "test"})
    assert [r["tokens"] for r in rows] == [8192, 16384]
    assert all(r["val_loss"] < math.log(tok.vocab_size) for r in rows)
    assert rows[1]["val_loss"] < rows[0]["val_loss"]  # more tokens, lower loss
    back, meta = scaling.read_csv(path)
    assert meta == {"command": "test"} and back == rows
    # The same run again gives the same loss: the sweep is deterministic.
    again = scaling.train_point(points[0], train, val)
    assert again["val_loss"] == pytest.approx(rows[0]["val_loss"], abs=1e-5)


@pytest.mark.integration
def test_a_step_on_simulated_devices_gives_the_one_device_losses():
    out = scaling.mesh_losses(devices=2, steps=3)
    assert out["devices"] == 2
    np.testing.assert_allclose(out["data=2"], out["one device"], atol=5e-5)
    np.testing.assert_allclose(out["fsdp=2"], out["one device"], atol=5e-5)
    assert out["one device"][-1] < out["one device"][0]
