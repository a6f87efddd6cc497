"""Generators of synthetic data for the chapters' experiments.

Each generator is deterministic given its ``seed`` (a seeded NumPy generator makes every draw)
and checks its arguments before doing any work.

* **"it" sentences** (:func:`make_it_task`): "the dog woke the cat because it barked." Every
  animal makes its own sound, and the verb decides what "it" refers to: after a *subject verb*
  ("woke", "scared", ...) "it" is the first animal, after an *object verb* ("feared",
  "heard", ...) the second. So the word after "it" can only be predicted by working out the
  referent. Animal pairs are split into training and held-out pairs, and no held-out pair ever
  appears together in a training sentence, so accuracy on held-out sentences measures the rule,
  not memorised pairs. ``distractors`` adds animals that are never the referent ("... near the
  owl ...") and ``long=True`` adds filler phrases, for a harder setting.
* **Capital-city facts** (:func:`load_capitals`, :func:`capital_sentences`): "The capital of
  France is Paris." from the list of countries and capitals shipped in
  ``jaxllm/resources/capitals.csv`` (GeoNames data; see ``CAPITALS-SOURCE.md`` beside it).
* **Multi-digit addition** (:func:`make_addition_task`): "0123+4567=09640" with both operands
  of ``digits`` digits and the sum of ``digits + 1`` digits written least significant digit
  first (as a person adds, carrying from the right), held-out problems never seen in training;
  the experiments on it (chapter 11.1, "emergence") are in :mod:`jaxllm.emergence`.
* **Experiments on them** (chapter 11.2): :func:`train_on_sentences` trains a model through
  :class:`jaxllm.train.Trainer` on sentence-aligned batches (:class:`jaxllm.data.SentenceBatches`);
  :class:`ItProbe` measures what a trained model does after "it": accuracy, attention from
  "it" averaged by kind of verb, and the accuracy lost when one head is silenced
  (:func:`jaxllm.model.ablate_head`); :func:`swapped` makes the intervention sentences.

The generators import nothing of ``jaxllm`` but :mod:`jaxllm.data`; the experiments sit above
the model and the trainer, like the other experiment modules.
"""

from __future__ import annotations

import csv
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .data import resource_path
from .validate import check_int, check_number

__all__ = [
    "ADDITION_ALPHABET",
    "ANIMAL_SOUNDS",
    "AdditionTask",
    "addition_line",
    "make_addition_task",
    "OBJECT_VERBS",
    "SUBJECT_VERBS",
    "ItSentence",
    "ItTask",
    "ItProbe",
    "it_batch",
    "swapped",
    "train_on_sentences",
    "word_level_bpe",
    "capital_sentences",
    "it_corpus",
    "load_capitals",
    "make_it_sentence",
    "make_it_task",
    "referent",
]

# Each animal with the one sound (past tense) that only it makes, in the order used when
# fewer animals are asked for.
ANIMAL_SOUNDS: dict[str, str] = {
    "dog": "barked",
    "cat": "meowed",
    "cow": "mooed",
    "duck": "quacked",
    "lion": "roared",
    "horse": "neighed",
    "pig": "oinked",
    "owl": "hooted",
    "snake": "hissed",
    "frog": "croaked",
    "wolf": "howled",
    "bee": "buzzed",
    "mouse": "squeaked",
    "crow": "cawed",
    "donkey": "brayed",
    "sheep": "bleated",
    "goose": "honked",
    "bear": "growled",
    "dove": "cooed",
    "turkey": "gobbled",
    "elephant": "trumpeted",
    "monkey": "chattered",
    "cricket": "chirped",
    "hyena": "cackled",
}

# After these verbs, "it" is the subject (the first animal): its sound caused the action.
SUBJECT_VERBS: tuple[str, ...] = ("woke", "scared", "startled", "annoyed")
# After these verbs, "it" is the object (the second animal): its sound explains the reaction.
OBJECT_VERBS: tuple[str, ...] = ("feared", "heard", "followed", "hated")

# Sentence frames. {a} is the subject, {b} the object, {verb} the verb, {sound} the referent's
# sound; {near} is " near the <distractor>" (or empty) and {filler} a filler phrase (or empty).
_TEMPLATES: tuple[str, ...] = (
    "the {a} {verb} the {b}{near}{filler} because it {sound}.",
    "yesterday the {a} {verb} the {b}{near}{filler} because it {sound}.",
    "the old {a} {verb} the {b}{near}{filler} because it {sound}.",
    "at night the {a} {verb} the {b}{near}{filler} because it {sound}.",
)
_FILLERS: tuple[str, ...] = (
    " in the barn",
    " on the farm",
    " by the river",
    " after the storm",
    " in the morning",
    " on a cold day",
)


def referent(subject: str, verb: str, obj: str) -> str:
    """The animal that "it" refers to in "the <subject> <verb> the <obj> because it ...".

    Subject verbs (:data:`SUBJECT_VERBS`) point "it" at the subject, object verbs
    (:data:`OBJECT_VERBS`) at the object.
    """
    if verb in SUBJECT_VERBS:
        return subject
    if verb in OBJECT_VERBS:
        return obj
    raise ValueError(
        f"verb must be one of {SUBJECT_VERBS + OBJECT_VERBS}, got {verb!r}")


@dataclass(frozen=True)
class ItSentence:
    """One "it" sentence and everything an experiment needs to score and inspect it.

    ``words`` is the sentence split on spaces, with the final period as its own word, so that
    ``words[i]`` lines up with token ``i`` of a word-level tokenizer. ``prompt`` is the text up to
    and including "it"; ``answer`` is the next word (the referent's sound).
    """

    text: str
    prompt: str
    answer: str
    subject: str
    verb: str
    obj: str
    distractor: str | None
    template: int
    filler: str

    @property
    def referent(self) -> str:
        return referent(self.subject, self.verb, self.obj)

    @property
    def other(self) -> str:
        """The candidate animal (subject or object) that "it" does not refer to."""
        return self.obj if self.referent == self.subject else self.subject

    @property
    def words(self) -> tuple[str, ...]:
        return tuple(self.text[:-1].split(" ")) + (".",)

    @property
    def it_index(self) -> int:
        """Index of "it" in :attr:`words` (the last word of the prompt)."""
        return len(self.prompt.split(" ")) - 1

    @property
    def subject_index(self) -> int:
        return self.words.index(self.subject)

    @property
    def verb_index(self) -> int:
        return self.subject_index + 1

    @property
    def object_index(self) -> int:
        return self.words.index(self.obj, self.subject_index + 1)

    @property
    def referent_index(self) -> int:
        return self.subject_index if self.referent == self.subject else self.object_index

    @property
    def distractor_index(self) -> int | None:
        if self.distractor is None:
            return None
        return self.words.index(self.distractor, self.object_index + 1)


def _check_animal(name: str, value: Any, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {list(allowed)}, got {value!r}")


def make_it_sentence(subject: str, verb: str, obj: str, *, template: int = 0,
                     distractor: str | None = None, filler: str = "") -> ItSentence:
    """Build one sentence, e.g. ``make_it_sentence("dog", "woke", "cat")`` gives
    "the dog woke the cat because it barked." (the dog woke the cat: "it" is the dog)."""
    animals = list(ANIMAL_SOUNDS)
    _check_animal("subject", subject, animals)
    _check_animal("obj", obj, animals)
    _check_animal("verb", verb, SUBJECT_VERBS + OBJECT_VERBS)
    if subject == obj:
        raise ValueError(f"subject and obj must be different animals, got {subject!r} twice")
    check_int("template", template, min=0, max=len(_TEMPLATES) - 1)
    if distractor is not None:
        _check_animal("distractor", distractor, animals)
        if distractor in (subject, obj):
            raise ValueError(
                f"distractor must differ from subject and obj, got {distractor!r}")
    if filler not in ("", *_FILLERS):
        raise ValueError(f"filler must be '' or one of {list(_FILLERS)}, got {filler!r}")
    sound = ANIMAL_SOUNDS[referent(subject, verb, obj)]
    near = "" if distractor is None else f" near the {distractor}"
    text = _TEMPLATES[template].format(a=subject, verb=verb, b=obj, near=near, filler=filler,
                                       sound=sound)
    prompt = text[: text.rindex(" it ") + len(" it")]
    return ItSentence(text=text, prompt=prompt, answer=sound, subject=subject, verb=verb,
                      obj=obj, distractor=distractor, template=template, filler=filler)


@dataclass(frozen=True)
class ItTask:
    """Training and held-out "it" sentences, and the split of animal pairs behind them."""

    animals: tuple[str, ...]
    train_pairs: frozenset[frozenset[str]]
    heldout_pairs: frozenset[frozenset[str]]
    train: tuple[ItSentence, ...]
    heldout: tuple[ItSentence, ...]

    @property
    def sounds(self) -> tuple[str, ...]:
        return tuple(ANIMAL_SOUNDS[a] for a in self.animals)


def _check_count(name: str, value: Any, minimum: int) -> int:
    return check_int(name, value, min=minimum)


def make_it_task(*, n_animals: int = 12, heldout_fraction: float = 0.25, n_train: int = 4000,
                 n_heldout: int = 400, distractors: int = 0, long: bool = False,
                 seed: int = 0) -> ItTask:
    """Sentences for the "it" experiment, from the first ``n_animals`` of
    :data:`ANIMAL_SOUNDS`.

    The unordered pairs of animals are shuffled and a ``heldout_fraction`` of them held out.
    Training sentences only ever put animals of training pairs together (subject, object and
    distractors alike); held-out sentences have a held-out pair as subject and object. Every
    animal still appears in training, with other partners, and every sentence's verb, template
    and word order are drawn uniformly. ``distractors`` (0 or 1) adds " near the <animal>", an
    animal that is never the referent; ``long`` adds a filler phrase such as " in the barn".
    """
    n_animals = _check_count("n_animals", n_animals, 3)
    if n_animals > len(ANIMAL_SOUNDS):
        raise ValueError(f"n_animals must be at most {len(ANIMAL_SOUNDS)}, got {n_animals}")
    check_number("heldout_fraction", heldout_fraction, low=0.0, high=1.0, low_open=True,
                 high_open=True)
    n_train = _check_count("n_train", n_train, 1)
    n_heldout = _check_count("n_heldout", n_heldout, 1)
    if isinstance(distractors, bool) or distractors not in (0, 1):
        raise ValueError(f"distractors must be 0 or 1, got {distractors!r}")
    if not isinstance(long, bool):
        raise TypeError(f"long must be a bool, got {long!r}")
    seed = _check_count("seed", seed, 0)
    if distractors and n_animals < 4:
        raise ValueError(f"distractors=1 needs n_animals >= 4, got {n_animals}")

    rng = np.random.default_rng([seed, n_animals, distractors, int(long)])
    animals = tuple(list(ANIMAL_SOUNDS)[:n_animals])
    pairs = [frozenset(p) for p in itertools.combinations(animals, 2)]
    order = rng.permutation(len(pairs))
    n_out = max(1, round(heldout_fraction * len(pairs)))
    heldout = frozenset(pairs[i] for i in order[:n_out])
    train = frozenset(pairs[i] for i in order[n_out:])
    # Every animal must keep at least two training partners, or it could not be learned.
    for a in animals:
        partners = sum(1 for p in train if a in p)
        if partners < 1 + distractors:
            raise ValueError(
                f"heldout_fraction={heldout_fraction} leaves {a!r} with {partners} training "
                f"partner(s); use a smaller heldout_fraction or more animals")
    verbs = SUBJECT_VERBS + OBJECT_VERBS
    train_list = sorted(tuple(sorted(p)) for p in train)
    heldout_list = sorted(tuple(sorted(p)) for p in heldout)

    def draw(pair_list: list[tuple[str, str]], n: int) -> tuple[ItSentence, ...]:
        out: list[ItSentence] = []
        attempts = 0
        while len(out) < n:
            attempts += 1
            if attempts > 100 * n:
                raise ValueError(
                    f"heldout_fraction={heldout_fraction} leaves too few training pairs to "
                    "place distractors; use a smaller heldout_fraction or more animals")
            a, b = pair_list[rng.integers(len(pair_list))]
            if rng.integers(2):
                a, b = b, a
            c = None
            if distractors:
                # The distractor may sit with subject and object only as training pairs.
                options = [x for x in animals if x not in (a, b)
                           and frozenset((a, x)) in train and frozenset((b, x)) in train]
                if not options:
                    continue
                c = options[rng.integers(len(options))]
            verb = verbs[rng.integers(len(verbs))]
            template = int(rng.integers(len(_TEMPLATES)))
            filler = _FILLERS[rng.integers(len(_FILLERS))] if long else ""
            out.append(make_it_sentence(a, verb, b, template=template, distractor=c,
                                        filler=filler))
        return tuple(out)

    return ItTask(animals=animals, train_pairs=train, heldout_pairs=heldout,
                  train=draw(train_list, n_train), heldout=draw(heldout_list, n_heldout))


def it_corpus(sentences: Sequence[ItSentence | str]) -> str:
    """The sentences as training text: one per line, each line ending with a newline."""
    if isinstance(sentences, str) or not isinstance(sentences, Sequence) or not sentences:
        raise ValueError("sentences must be a non-empty sequence of ItSentence or str")
    return "".join((s.text if isinstance(s, ItSentence) else s) + "\n" for s in sentences)


# -- capital-city facts ------------------------------------------------------------------

CAPITAL_TEMPLATE = "The capital of {country} is {capital}."


def load_capitals() -> list[tuple[str, str]]:
    """``(country, capital)`` pairs from ``jaxllm/resources/capitals.csv`` (GeoNames data),
    sorted by country name."""
    with open(resource_path("capitals.csv"), encoding="utf-8", newline="") as f:
        return [(row["country"], row["capital"]) for row in csv.DictReader(f)]


def capital_sentences(pairs: Sequence[tuple[str, str]] | None = None, *, repeats: int = 1,
                      seed: int = 0, template: str = CAPITAL_TEMPLATE) -> list[str]:
    """Each fact as a sentence, e.g. "The capital of France is Paris.", ``repeats`` times,
    shuffled with a generator seeded by ``seed``. ``pairs`` defaults to :func:`load_capitals`.
    """
    repeats = _check_count("repeats", repeats, 1)
    seed = _check_count("seed", seed, 0)
    if not isinstance(template, str) or "{country}" not in template \
            or "{capital}" not in template:
        raise ValueError(
            f"template must be a str containing {{country}} and {{capital}}, got {template!r}")
    if pairs is None:
        pairs = load_capitals()
    if isinstance(pairs, str) or not isinstance(pairs, Sequence) or not pairs:
        raise ValueError("pairs must be a non-empty sequence of (country, capital) pairs")
    for i, p in enumerate(pairs):
        if (not isinstance(p, tuple | list) or len(p) != 2
                or not all(isinstance(x, str) and x for x in p)):
            raise ValueError(f"pairs[{i}] must be a (country, capital) pair of strings, got {p!r}")
    sentences = [template.format(country=c, capital=k) for c, k in pairs] * repeats
    order = np.random.default_rng(seed).permutation(len(sentences))
    return [sentences[i] for i in order]


# -- multi-digit addition ----------------------------------------------------------------------

#: Every character an addition line uses (a character tokenizer of exactly these).
ADDITION_ALPHABET = "\n+0123456789="


def addition_line(a: int, b: int, digits: int, *, reverse: bool = True) -> str:
    """``"a+b=c\n"`` with ``a`` and ``b`` zero-padded to ``digits`` digits and the sum to
    ``digits + 1``, its digits reversed (least significant first) when ``reverse``.

    >>> addition_line(123, 989, 4)
    '0123+0989=21110\n'
    """
    digits = check_int("digits", digits, min=1)
    for name, v in (("a", a), ("b", b)):
        check_int(name, v, min=0, max=10 ** digits - 1)
    total = f"{a + b:0{digits + 1}d}"
    return f"{a:0{digits}d}+{b:0{digits}d}={total[::-1] if reverse else total}\n"


@dataclass(frozen=True)
class AdditionTask:
    """Training and held-out addition problems (operand pairs ``[n, 2]``); no pair of
    ``test`` occurs in ``train``."""

    digits: int
    reverse: bool
    train: np.ndarray
    test: np.ndarray

    def lines(self, split: str = "train") -> list[str]:
        pairs = {"train": self.train, "test": self.test}[split]
        return [addition_line(int(a), int(b), self.digits, reverse=self.reverse)
                for a, b in pairs]

    @property
    def prompt_length(self) -> int:
        """Characters before the answer: ``a+b=``."""
        return 2 * self.digits + 2

    @property
    def answer_length(self) -> int:
        return self.digits + 1


def make_addition_task(digits: int = 4, *, n_train: int = 20000, n_test: int = 1000,
                       reverse: bool = True, seed: int = 0) -> AdditionTask:
    """Uniformly random problems of ``digits``-digit numbers, split into ``n_train`` training
    and ``n_test`` held-out pairs (distinct pairs; held-out pairs never appear in training)."""
    digits = check_int("digits", digits, min=1, max=9)
    n_train = check_int("n_train", n_train, min=1)
    n_test = check_int("n_test", n_test, min=1)
    if not isinstance(reverse, bool):
        raise TypeError(f"reverse must be a bool, got {reverse!r}")
    seed = check_int("seed", seed, min=0)
    space = 10 ** (2 * digits)
    if n_train + n_test > space // 2:
        raise ValueError(f"n_train + n_test must be at most half of the {space} problems of "
                         f"{digits}-digit numbers, got {n_train + n_test}")
    rng = np.random.default_rng([seed, digits])
    codes: np.ndarray = np.empty(0, np.int64)
    while len(codes) < n_train + n_test:  # distinct pairs, in the order first drawn
        more = rng.integers(0, space, 2 * (n_train + n_test))
        both = np.concatenate([codes, more])
        _, first = np.unique(both, return_index=True)
        codes = both[np.sort(first)]
    codes = codes[:n_train + n_test]
    pairs = np.stack([codes // 10 ** digits, codes % 10 ** digits], axis=1)
    return AdditionTask(digits, reverse, pairs[:n_train], pairs[n_train:])


# -- experiments on the "it" sentences (chapter 11.2) ----------------------------------------------

def word_level_bpe(corpus: str, *, max_vocab: int = 4096):
    """A BPE tokenizer trained on ``corpus`` until no pair is left to merge, so that every
    distinct word of the corpus becomes one token (attention maps then line up with words)."""
    import warnings

    from .tokenizer import BPETokenizer

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*no more pairs to merge.*")
        return BPETokenizer.train(corpus, vocab_size=max_vocab, pattern="gpt2")


def train_on_sentences(tokenizer: Any, corpus: str, model_cfg: Any, steps: int, *,
                       batch_size: int = 64, learning_rate: float = 1e-2, seed: int = 0,
                       warmup_steps: int = 50, separator: str = "\n"):
    """Train a fresh model on rows that each start with a whole sentence of ``corpus`` (one
    sentence per line), at a constant learning rate after ``warmup_steps``, without weight
    decay or evaluations. Returns the :class:`jaxllm.train.Trainer`."""
    from .config import TrainConfig
    from .data import SentenceBatches
    from .train import Trainer

    ids = np.asarray(tokenizer.encode(corpus), np.int32)
    train_cfg = TrainConfig(steps=steps, batch_size=batch_size, learning_rate=learning_rate,
                            min_learning_rate=learning_rate, warmup_steps=warmup_steps,
                            weight_decay=0.0, eval_interval=steps, seed=seed)
    sep = tokenizer.encode(separator)
    if len(sep) != 1:
        raise ValueError(f"separator must be one token of the tokenizer, got {separator!r} "
                         f"({len(sep)} tokens)")
    batches = SentenceBatches(ids, sep[0], batch_size, model_cfg.context_length, seed)
    trainer = Trainer(model_cfg, train_cfg, batches)
    trainer.fit(progress=False)
    return trainer


def it_batch(sentences: Sequence[ItSentence], tokenizer: Any
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Token ids of the sentences, right-padded with the newline token ``[N, T]``, the
    position of "it" in each ``[N]``, and the id of the correct next word ``[N]``."""
    if not sentences:
        raise ValueError("sentences must hold at least one ItSentence, got none")
    seqs = [tokenizer.encode(s.text) for s in sentences]
    tokens = np.full((len(seqs), max(map(len, seqs))), tokenizer.encode("\n")[0], np.int32)
    for i, seq in enumerate(seqs):
        tokens[i, : len(seq)] = seq
    it_pos = np.array([s.it_index for s in sentences])
    answer = np.array([tokenizer.encode(" " + s.answer)[0] for s in sentences])
    return tokens, it_pos, answer


def swapped(sentences: Sequence[ItSentence], which: str, animals: Sequence[str], seed: int
            ) -> list[ItSentence]:
    """Each sentence with its referent (``which="referent"``) or the other animal
    (``which="other"``) replaced by an animal drawn from ``animals`` (neither of the two)."""
    if which not in ("referent", "other"):
        raise ValueError(f"which must be 'referent' or 'other', got {which!r}")
    rng = np.random.default_rng(seed)
    out = []
    for s in sentences:
        new = str(rng.choice([a for a in animals if a not in (s.subject, s.obj)]))
        target = s.referent if which == "referent" else s.other
        subject = new if s.subject == target else s.subject
        obj = new if s.obj == target else s.obj
        out.append(make_it_sentence(subject, s.verb, obj, template=s.template))
    return out


@dataclass(frozen=True)
class AttentionTable:
    """Mean attention from "it" onto the subject, the verb and the object of the sentences,
    by kind of verb: arrays ``[layers, heads]`` for verbs whose referent is the subject
    (``woke``-type) and the object (``feared``-type); ``selectivity`` is the mean weight on the
    referent minus that on the other animal."""

    after_subject_verbs: dict[str, np.ndarray]
    after_object_verbs: dict[str, np.ndarray]
    selectivity: np.ndarray

    def __str__(self) -> str:
        L, H = self.selectivity.shape
        lines = [f"{'':11}{'after woke-type verbs':^24}|{'after feared-type verbs':^24}|",
                 f"{'':11}" + f"{'subject':>8}{'verb':>8}{'object':>8}|" * 2
                 + " referent minus other"]
        roles = ("subject", "verb", "object")
        for layer in range(L):
            for h in range(H):
                cells = [t[r][layer, h] for t in (self.after_subject_verbs,
                                                  self.after_object_verbs) for r in roles]
                lines.append(f"L{layer} head {h} " + "".join(f"{c:8.2f}" for c in cells[:3])
                             + "|" + "".join(f"{c:8.2f}" for c in cells[3:])
                             + f"|{self.selectivity[layer, h]:8.2f}")
        top = np.unravel_index(np.argmax(self.selectivity), self.selectivity.shape)
        lines.append(f"most referent-selective head: layer {top[0]} head {top[1]} "
                     f"({self.selectivity[top]:.2f}); heads above 0.9: "
                     f"{int((self.selectivity > 0.9).sum())}")
        return "\n".join(lines)


@dataclass(frozen=True)
class AblationTable:
    """Held-out accuracy of the full model and the accuracy lost when each head is silenced
    (``drops`` ``[layers, heads]``)."""

    accuracy: float
    drops: np.ndarray
    threshold: float = 0.05

    @property
    def needed(self) -> list[tuple[int, int]]:
        """The heads whose removal costs more than ``threshold``."""
        return [(int(layer), int(h)) for layer, h in zip(*np.nonzero(self.drops > self.threshold),
                                                          strict=True)]

    def __str__(self) -> str:
        lines = [f"held-out accuracy {self.accuracy:.3f}; drop when one head is silenced:"]
        for layer in range(self.drops.shape[0]):
            lines.append(f"  layer {layer}: " + "  ".join(
                f"head {h}: {self.drops[layer, h]:+.3f}" for h in range(self.drops.shape[1])))
        names = [f"L{layer} head {h}" for layer, h in self.needed]
        lines.append(f"heads whose removal costs more than {self.threshold}: "
                     + (", ".join(names) or "none"))
        return "\n".join(lines)


class ItProbe:
    """What a trained model does after "it", measured on batches of :class:`ItSentence`.

    The forward pass (logits and every head's attention) is compiled once for the model's
    graph; every measurement accepts other parameters of the same shape (``params``), such as
    copies with a head silenced, without compiling again.
    """

    def __init__(self, model: Any, tokenizer: Any):
        import jax
        import jax.numpy as jnp
        from flax import nnx

        self.tokenizer = tokenizer
        self.cfg = model.cfg
        graphdef, self.params = nnx.split(model)

        @jax.jit
        def forward(params, tokens):
            logits, extras = nnx.merge(graphdef, params)(tokens, return_attention=True)
            return logits, jnp.stack(extras["attention"], axis=1)  # [B, layers, heads, T, T]

        self._forward = forward

    def predictions(self, sentences: Sequence[ItSentence], params: Any = None
                    ) -> tuple[np.ndarray, np.ndarray]:
        """The id of the most likely word after "it" ``[N]`` and the attention weights
        ``[N, layers, heads, T, T]``."""
        tokens, it_pos, _ = it_batch(sentences, self.tokenizer)
        logits, attention = self._forward(self.params if params is None else params, tokens)
        logits = np.asarray(logits)
        return logits[np.arange(len(tokens)), it_pos].argmax(-1), np.asarray(attention)

    def accuracy(self, sentences: Sequence[ItSentence], params: Any = None) -> float:
        """How often the most likely word after "it" is the referent's sound."""
        pred, _ = self.predictions(sentences, params)
        return float((pred == it_batch(sentences, self.tokenizer)[2]).mean())

    def predicted_word(self, sentence: ItSentence) -> str:
        pred, _ = self.predictions([sentence])
        return self.tokenizer.decode([int(pred[0])]).strip()

    def attention_table(self, sentences: Sequence[ItSentence]) -> AttentionTable:
        """Mean attention from "it" by role and by kind of verb (see :class:`AttentionTable`)."""
        _, att = self.predictions(sentences)
        rows = np.arange(len(sentences))
        it_pos = np.array([s.it_index for s in sentences])
        w = att[rows, :, :, it_pos, :]  # [sentences, layers, heads, keys]
        on = {role: w[rows, :, :, np.array([getattr(s, f"{role}_index") for s in sentences])]
              for role in ("subject", "verb", "object")}
        kind = np.array([s.referent == s.subject for s in sentences])  # woke-type verb
        on_ref = np.where(kind[:, None, None], on["subject"], on["object"])
        on_other = np.where(kind[:, None, None], on["object"], on["subject"])
        by_kind = [{r: v[sel].mean(0) for r, v in on.items()} for sel in (kind, ~kind)]
        return AttentionTable(by_kind[0], by_kind[1], (on_ref - on_other).mean(0))

    def ablation(self, sentences: Sequence[ItSentence]) -> AblationTable:
        """Accuracy lost on ``sentences`` when each head alone is silenced."""
        from .model import ablate_head

        full = self.accuracy(sentences)
        drops = np.zeros((self.cfg.n_layer, self.cfg.n_head))
        for layer in range(self.cfg.n_layer):
            for h in range(self.cfg.n_head):
                silenced = ablate_head(self.params, layer, h, self.cfg.head_dim)
                drops[layer, h] = full - self.accuracy(sentences, silenced)
        return AblationTable(full, drops)
