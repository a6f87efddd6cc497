"""jaxllm.labcheck: a lab's graded function must be the student's own code.

Each case defines functions the way a notebook does (code executed in a ``__main__``
namespace) and checks that delegation to the package is found, statically or while running,
and that honest code passes.
"""

from __future__ import annotations

import textwrap

import jax
import numpy as np
import pytest

from jaxllm import labcheck, model, sample, tokenizer
from jaxllm.labcheck import MARKER, NotYourCode, own_code


def notebook(code: str) -> dict:
    """The namespace of a notebook whose cells are ``code``."""
    namespace = {"__name__": "__main__"}
    exec(compile(textwrap.dedent(code), "<notebook cell>", "exec"), namespace)
    return namespace


HONEST = """
import numpy as np

def pair_counts(ids):
    counts = {}
    for pair in zip(ids, ids[1:]):
        counts[pair] = counts.get(pair, 0) + 1
    return counts

def top_p_filter(logits, p):
    return np.asarray(logits, dtype=np.float64)

def train_bpe(text, n):
    return pair_counts(list(text.encode()))
"""


def test_honest_code_passes_and_returns_its_result():
    nb = notebook(HONEST)
    counts = own_code(nb["pair_counts"], tokenizer)
    assert counts([1, 2, 1, 2]) == {(1, 2): 2, (2, 1): 1}
    assert counts.__name__ == "pair_counts"
    assert own_code(nb["train_bpe"], tokenizer)("abab", 1) == {(97, 98): 2, (98, 97): 1}
    assert own_code(nb["top_p_filter"], sample)(np.zeros(3), 0.5).shape == (3,)


def test_honest_code_may_use_jax_and_other_package_modules():
    nb = notebook("""
        import jax, jax.numpy as jnp
        from jaxllm import model

        @jax.jit
        def softmax_with_temperature(logits, temperature):
            return jax.nn.softmax(jnp.asarray(logits) / temperature)

        def attention(x):
            return x @ x.T
        """)
    out = own_code(nb["softmax_with_temperature"], sample)(np.zeros(4), 1.0)
    assert np.allclose(out, 0.25)
    own_code(nb["attention"], sample)(np.ones((2, 2)))  # jaxllm.model is not banned here


@pytest.mark.parametrize("code, fn, fragment", [
    ("from jaxllm.tokenizer import pair_counts", "pair_counts",
     "pair_counts is jaxllm.tokenizer.pair_counts"),
    ("import jaxllm.tokenizer as t\npair_counts = t.pair_counts", "pair_counts",
     "is jaxllm.tokenizer.pair_counts"),
    ("import functools, jaxllm.tokenizer as t\n"
     "merge_pair = functools.partial(t.merge_pair, new_id=9)", "merge_pair",
     "is jaxllm.tokenizer.merge_pair"),
    ("import jax, jaxllm.sample as s\ntop_p_filter = jax.jit(s.top_p_filter)", "top_p_filter",
     "is jaxllm.sample.top_p_filter"),
    # Wrappers: found in the byte code, before anything runs.
    ("from jaxllm.tokenizer import pair_counts as ref\n"
     "def pair_counts(ids):\n    return ref(ids)", "pair_counts",
     "pair_counts uses ref (jaxllm.tokenizer.pair_counts)"),
    ("import jaxllm\ndef pair_counts(ids):\n    return jaxllm.tokenizer.pair_counts(ids)",
     "pair_counts", "uses the module jaxllm.tokenizer"),
    ("import jaxllm.sample\ntop_p_filter = lambda z, p: jaxllm.sample.top_p_filter(z, p)",
     "top_p_filter", "uses the module jaxllm.sample"),
    ("from jaxllm.tokenizer import BPETokenizer\n"
     "def train_bpe(text, n):\n    return BPETokenizer.train(text, 256 + n).merges",
     "train_bpe", "jaxllm.tokenizer.BPETokenizer"),
    # Through the notebook's own functions: train_bpe is only as good as its pair_counts.
    ("from jaxllm.tokenizer import pair_counts\n"
     "def train_bpe(text, n):\n    return pair_counts(list(text.encode()))", "train_bpe",
     "train_bpe uses pair_counts (jaxllm.tokenizer.pair_counts)"),
    ("from jaxllm.tokenizer import pair_counts as ref\n"
     "def pair_counts(ids):\n    return ref(ids)\n"
     "def train_bpe(text, n):\n    return pair_counts(list(text.encode()))", "train_bpe",
     "train_bpe -> pair_counts uses ref (jaxllm.tokenizer.pair_counts)"),
])
def test_delegation_is_found_before_running(code, fn, fragment):
    nb = notebook(code)
    with pytest.raises(NotYourCode, match=MARKER) as caught:
        own_code(nb[fn], tokenizer, sample)
    assert fragment in str(caught.value)


@pytest.mark.parametrize("code", [
    # Routes the byte-code scan cannot follow: found while running.
    "import importlib\n"
    "def pair_counts(ids):\n"
    "    return getattr(importlib.import_module('jaxllm.' + 'tokenizer'), 'pair_counts')(ids)",
    "import importlib\n"
    "def pair_counts(ids):\n"
    "    m = importlib.import_module('jaxllm.tokenizer')\n"
    "    return dict(m.Counter(zip(ids, ids[1:])))  # the module's code is not called: ok\n"
    "def wrapped(ids):\n"
    "    return importlib.import_module('jaxllm.tokenizer')._merge(ids, 1, 2, 9)",
])
def test_delegation_is_found_while_running(code):
    nb = notebook(code)
    fn = nb.get("wrapped", nb["pair_counts"])
    watched = own_code(fn, tokenizer)
    with pytest.raises(NotYourCode, match=MARKER) as caught:
        watched([1, 2, 1, 2])
    assert "calls jaxllm.tokenizer." in str(caught.value)
    if "wrapped" in nb:  # a function that only uses the module's names, not its code, passes
        assert own_code(nb["pair_counts"], tokenizer)([1, 2, 1]) == {(1, 2): 1, (2, 1): 1}


def test_a_jitted_package_function_is_caught_when_traced():
    nb = notebook("""
        import importlib, jax
        def top_p_filter(logits, p):
            ref = getattr(importlib.import_module("jaxllm.sample"), "top_" + "p_filter")
            return jax.jit(ref)(logits, p)
        """)
    with pytest.raises(NotYourCode, match="calls jaxllm.sample.top_p_filter"):
        own_code(nb["top_p_filter"], sample)(np.zeros(37, np.float32), 0.5)


def test_callbacks_into_other_modules_are_allowed():
    """The generation question hands the student a function that runs the model
    (jaxllm.model); only the sampling module is banned there."""
    nb = notebook("def loop(next_logits):\n    return next_logits([1, 2])")
    assert own_code(nb["loop"], sample)(lambda ids: model.causal_mask(len(ids))).shape == (2, 2)


def test_the_previous_profile_function_is_kept_and_restored():
    calls = []
    previous = lambda frame, event, arg: calls.append(event)  # noqa: E731
    nb = notebook(HONEST)
    import sys

    sys.setprofile(previous)
    try:
        own_code(nb["pair_counts"], tokenizer)([1, 2])
        assert sys.getprofile() is previous
    finally:
        sys.setprofile(None)
    assert "call" in calls


def test_arguments_are_checked():
    nb = notebook(HONEST)
    with pytest.raises(TypeError, match="modules"):
        own_code(nb["pair_counts"])
    with pytest.raises(TypeError, match="modules"):
        own_code(nb["pair_counts"], "jaxllm.tokenizer")
    with pytest.raises(AssertionError, match="not a function"):
        own_code(None, tokenizer, name="pair_counts")
    assert issubclass(NotYourCode, AssertionError)
    assert labcheck.__all__ == ["MARKER", "NotYourCode", "modules_of", "own_code"]
    assert jax is not None


def test_modules_of_finds_the_file_that_defines_a_library_function():
    import optax

    mods = labcheck.modules_of("optax.warmup_cosine_decay_schedule", "jaxllm.sample",
                               "numpy.polyfit", "jaxllm.sample.top_p_filter")
    assert [m.__name__ for m in mods] == ["optax.schedules._schedule", "jaxllm.sample",
                                          "numpy.lib._polynomial_impl"]

    def wraps_optax(step):
        return optax.warmup_cosine_decay_schedule(0.0, 1.0, 2, 10)(step)

    with pytest.raises(NotYourCode, match=MARKER):
        own_code(wraps_optax, *mods)(3)

    def fits_with_polyfit(x, y):
        return np.polyfit(x, y, 1)

    with pytest.raises(NotYourCode, match=MARKER):
        own_code(fits_with_polyfit, *mods)([1.0, 2.0, 3.0], [2.0, 4.0, 6.0])
    assert own_code(lambda x: np.mean(x), *mods)([1.0, 3.0]) == 2.0
    for bad in ("", "no_such_module_xyz.f", "numpy.pi"):
        with pytest.raises((TypeError, ValueError), match="modules_of"):
            labcheck.modules_of(bad)
