"""Mixed precision, rematerialisation and scanned layers: each trains like the plain model.

Every variant starts from the *same* parameters as the plain float32 model (the scanned model
gets them stacked along a new layer axis) and sees the same 20 batches of the bundled
Shakespeare text, so any difference in the losses comes from the option itself.

Tolerances (maximum absolute difference of the per-step training loss, in nats, over 20 steps
in which the loss falls from 4.38 to about 3.15):

* ``remat`` and ``scan_layers`` compute the same float32 arithmetic, in a different order for
  the scan (XLA fuses a loop body differently from unrolled layers). Rounding differences of
  about 1e-7, amplified by 20 Adam steps at learning rate 1e-2, stay far below 5e-4
  (observed on a 2-core CPU: remat 0 exactly, scan 6e-5).
* ``bfloat16`` compute rounds every matmul input to 8 bits of mantissa (relative 2**-9, about
  0.2 %); averaged over the 256 tokens of a batch the loss moves much less: tolerance 0.02
  nats, i.e. 0.5 % of the loss (observed: 6e-4). The bf16 run must also differ at all (the
  option is not ignored) and still learn (its last loss at least 0.5 below its first).
"""

from __future__ import annotations

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxllm.config import ModelConfig, TrainConfig
from jaxllm.data import Batches, load_corpus
from jaxllm.model import GPT, init_cache
from jaxllm.sample import generate
from jaxllm.tokenizer import CharTokenizer
from jaxllm.train import Trainer

STEPS = 20
FP32_TOL = 5e-4
BF16_TOL = 0.02

BASE = ModelConfig(vocab_size=80, context_length=32, n_layer=2, n_head=4, d_model=32,
                   dropout=0.1)
TRAIN = TrainConfig(steps=STEPS, batch_size=8, learning_rate=1e-2, min_learning_rate=1e-3,
                    warmup_steps=2, seed=0)


@pytest.fixture(scope="module")
def tokens():
    text = load_corpus()[:20_000]
    tok = CharTokenizer.from_text(load_corpus())
    ids = np.asarray(tok.encode(text), np.int32)
    assert tok.vocab_size <= BASE.vocab_size
    return ids


def stacked(model: GPT, cfg: ModelConfig) -> GPT:
    """A model built for ``cfg`` (scanned layers) holding ``model``'s parameters, with the
    blocks' parameters stacked along a new leading layer axis."""
    pure = nnx.state(model, nnx.Param).to_pure_dict()
    blocks = pure["blocks"]
    pure["blocks"] = jax.tree.map(lambda *xs: jnp.stack(xs),
                                  *[blocks[i] for i in range(len(blocks))])
    graphdef, state = nnx.split(nnx.eval_shape(lambda: GPT(cfg, rngs=nnx.Rngs(0))))
    nnx.replace_by_pure_dict(state, pure)
    return nnx.merge(graphdef, state)


def plain_model(cfg: ModelConfig = BASE) -> GPT:
    return GPT(cfg, rngs=nnx.Rngs(params=jax.random.key(TRAIN.seed)))


def rebuild(model: GPT, cfg: ModelConfig) -> GPT:
    """``model``'s parameters in a model built for ``cfg`` (the options live in the graph)."""
    if cfg.scan_layers:
        return stacked(model, cfg)
    graphdef = nnx.graphdef(nnx.eval_shape(lambda: GPT(cfg, rngs=nnx.Rngs(0))))
    return nnx.merge(graphdef, nnx.state(model))


def run(cfg: ModelConfig, tokens: np.ndarray) -> tuple[np.ndarray, Trainer]:
    """20 training steps of ``cfg`` from the plain model's initial parameters."""
    trainer = Trainer(cfg, TRAIN, tokens, model=rebuild(plain_model(), cfg))
    assert trainer.model.cfg == cfg
    batches = Batches(tokens, TRAIN.batch_size, cfg.context_length, seed=5)
    losses = [trainer.train_step(batches[s])["loss"] for s in range(STEPS)]
    return np.asarray(jax.device_get(losses), np.float64), trainer


@pytest.fixture(scope="module")
def reference(tokens):
    return run(BASE, tokens)[0]


def test_reference_learns(reference):
    assert np.all(np.isfinite(reference))
    assert reference[-1] < reference[0] - 0.5


@pytest.mark.parametrize("changes", [
    {"remat": True},
    {"scan_layers": True},
], ids=lambda c: "+".join(c))
def test_float32_options_match_plain_losses(tokens, reference, changes):
    losses, trainer = run(BASE.replace(**changes), tokens)
    diff = np.abs(losses - reference).max()
    assert diff <= FP32_TOL, (changes, diff, losses, reference)


def test_bfloat16_compute_float32_state(tokens, reference):
    cfg = BASE.replace(dtype="bfloat16", scan_layers=True, remat=True)
    losses, trainer = run(cfg, tokens)
    # Parameters and both Adam moments stay float32 ...
    params = jax.tree.leaves(trainer.state.params)
    assert params and all(p.dtype == jnp.float32 for p in params)
    adam = trainer.state.opt_state[1][0]
    for moment in (adam.mu, adam.nu):
        assert all(m.dtype == jnp.float32 for m in jax.tree.leaves(moment))
    # ... while the matrix multiplications run in bfloat16.
    model = trainer.model
    x = jnp.zeros((2, 8), jnp.int32)
    assert model(x).dtype == jnp.bfloat16
    jaxpr = str(jax.make_jaxpr(lambda m, x: m(x))(model, x))
    assert "dot_general" in jaxpr and "bf16[" in jaxpr
    diff = np.abs(losses - reference).max()
    assert 0 < diff <= BF16_TOL, (diff, losses, reference)
    assert losses[-1] < losses[0] - 0.5


def _sub_jaxprs(values):
    """The jaxprs among an equation's parameters (scan, remat, pjit, cond...)."""
    for v in values:
        if isinstance(v, (list, tuple)):
            yield from _sub_jaxprs(v)
        elif hasattr(v, "eqns"):  # Jaxpr
            yield v
        elif hasattr(v, "jaxpr") and hasattr(v.jaxpr, "eqns"):  # ClosedJaxpr
            yield v.jaxpr


def _primitives(jaxpr) -> set[str]:
    names = set()
    for eqn in jaxpr.eqns:
        names.add(eqn.primitive.name)
        for sub in _sub_jaxprs(eqn.params.values()):
            names |= _primitives(sub)
    return names


@pytest.mark.parametrize("changes,expected", [
    ({"remat": True}, "remat"),
    ({"scan_layers": True}, "scan"),
])
def test_options_change_the_program(changes, expected):
    """The options are not silently ignored: the gradient's program has a ``remat``
    (``jax.checkpoint``) or a ``scan`` over the layers, and the plain model's has neither."""
    x = jnp.zeros((2, 8), jnp.int32)

    def prims(cfg):
        model = GPT(cfg, rngs=nnx.Rngs(0))
        graphdef, params = nnx.split(model)

        def loss(p):
            return nnx.merge(graphdef, p)(x).astype(jnp.float32).mean()

        names = _primitives(jax.make_jaxpr(jax.grad(loss))(params).jaxpr)
        return any(n.startswith(expected) for n in names)

    assert not prims(BASE)
    assert prims(BASE.replace(**changes))


@pytest.mark.parametrize("extra", [{}, {"n_kv_head": 2, "mlp": "swiglu", "norm": "rmsnorm",
                                        "positions": "rope", "bias": False,
                                        "tie_embeddings": False}],
                         ids=["gpt2-like", "llama-like"])
def test_scan_layers_kv_cache_decode_matches_full_forward(extra):
    """Decoding token by token against the KV cache of a scanned model gives the logits of
    the full forward pass (and of the unscanned model with the same parameters)."""
    cfg = BASE.replace(dropout=0.0, **extra)
    plain = GPT(cfg, rngs=nnx.Rngs(3))
    scan = stacked(plain, cfg.replace(scan_layers=True))
    tokens = jax.random.randint(jax.random.key(4), (2, 12), 0, cfg.vocab_size)

    def forward(model):
        graphdef, state = nnx.split(model)
        return np.asarray(jax.jit(lambda s, t: nnx.merge(graphdef, s)(t))(state, tokens))

    full = forward(plain)
    np.testing.assert_allclose(forward(scan), full, atol=1e-5)

    graphdef, state = nnx.split(scan)

    @jax.jit
    def decode(state, toks, cache, index):
        return nnx.merge(graphdef, state)(toks, cache=cache, cache_index=index)

    prefill = 5
    logits, extras = decode(state, tokens[:, :prefill], init_cache(scan.cfg, 2, 16),
                            jnp.int32(0))
    steps = [np.asarray(logits)]
    for t in range(prefill, tokens.shape[1]):
        logits, extras = decode(state, tokens[:, t:t + 1], extras["cache"], jnp.int32(t))
        steps.append(np.asarray(logits))
    cache = extras["cache"]
    assert cache.k.shape == (cfg.n_layer, 2, 16, cfg.kv_heads, cfg.head_dim)
    assert float(jnp.abs(cache.k[:, :, tokens.shape[1]:]).max()) == 0.0  # unused slots
    np.testing.assert_allclose(np.concatenate(steps, axis=1), full, atol=1e-5)


def test_scan_layers_generate_matches_plain():
    """The compiled decode loop of :func:`jaxllm.sample.generate` (prefill, KV cache, batch of
    left-padded prompts) gives the same greedy tokens with scanned layers."""
    cfg = BASE.replace(dropout=0.0)
    plain = GPT(cfg, rngs=nnx.Rngs(3))
    scan = stacked(plain, cfg.replace(scan_layers=True))
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8]]
    out = generate(scan, prompts, 8, temperature=0)
    assert [len(o) for o in out] == [8, 8]
    assert out == generate(plain, prompts, 8, temperature=0)
