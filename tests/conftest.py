"""Shared fixtures: small models built once per test session."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest

from jaxllm.config import ModelConfig, TrainConfig

CORPUS = ("the cat sat on the mat. the dog sat on the log. a cat and a dog met on a mat. "
          "the mat was red and the log was wet. ") * 40


@contextlib.contextmanager
def count_compiles():
    """Yield a list that gets one entry per new executable while the block runs: an XLA
    compilation, or a load from JAX's persistent compilation cache (which the test session
    turns on; see the repository's conftest.py)."""
    import jax

    compiles: list[str] = []

    def on_duration(name, *_args, **_kw):
        if name == "/jax/core/compile/backend_compile_duration":
            compiles.append(name)

    def on_event(name, *_args, **_kw):
        if name == "/jax/compilation_cache/cache_hits":
            compiles.append(name)

    jax.monitoring.register_event_duration_secs_listener(on_duration)
    jax.monitoring.register_event_listener(on_event)
    try:
        yield compiles
    finally:
        unregister = getattr(jax.monitoring, "unregister_event_duration_listener", None)
        if unregister is None:  # jax < 0.8.1 only has the private spelling
            from jax._src import monitoring
            unregister = monitoring._unregister_event_duration_listener_by_callback
        unregister(on_duration)
        unregister_event = getattr(jax.monitoring, "unregister_event_listener", None)
        if unregister_event is None:
            from jax._src import monitoring
            unregister_event = monitoring._unregister_event_listener_by_callback
        unregister_event(on_event)


def random_model(cfg: ModelConfig, seed: int = 0, std: float = 0.2):
    """A GPT with normal(0, std) parameters drawn by NumPy into ``nnx.eval_shape``'s
    shapes: 20 times faster than ``GPT(cfg, rngs=...)`` on a CPU (whose eager initialisation
    compiles every random op on its own), and the same seed gives the same weights to
    configs with the same parameter shapes."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from jaxllm.model import GPT

    graphdef, state = nnx.split(nnx.eval_shape(lambda: GPT(cfg, rngs=nnx.Rngs(0))))
    rng = np.random.default_rng(seed)
    state = jax.tree.map(lambda s: jnp.asarray(rng.normal(0.0, std, s.shape).astype(s.dtype)),
                         state)
    return nnx.merge(graphdef, state)


@pytest.fixture(scope="session")
def char_corpus():
    from jaxllm.tokenizer import CharTokenizer

    tok = CharTokenizer.from_text(CORPUS)
    return tok, np.asarray(tok.encode(CORPUS), np.int32)


@pytest.fixture(scope="session")
def trained_tiny(char_corpus):
    """A 2-layer model trained for a few seconds on a repetitive corpus: its predictions are
    sharp and varied, unlike a random model's."""
    from jaxllm.train import Trainer

    tok, ids = char_corpus
    mcfg = ModelConfig(vocab_size=tok.vocab_size, context_length=32, n_layer=2, n_head=2,
                       d_model=32)
    tcfg = TrainConfig(steps=150, batch_size=16, learning_rate=1e-2, min_learning_rate=1e-3,
                       warmup_steps=10, eval_interval=150, eval_batches=2)
    trainer = Trainer(mcfg, tcfg, ids[:3000], ids[3000:])
    trainer.fit(progress=False)
    return trainer.model, tok, trainer


def pytest_collection_modifyitems(items):
    """Tests that run the multi-device workers (the ``runs`` fixture of test_sharding.py)
    are integration tests: they start fresh processes with simulated devices."""
    for item in items:
        if "runs" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.integration)
