"""The chat template: rendering, encoding with the assistant mask, parsing, stop token."""

import pytest

from jaxllm import chat
from jaxllm.tokenizer import BPETokenizer, CharTokenizer

CONVERSATION = [
    {"role": "system", "content": "Answer briefly."},
    {"role": "user", "content": "What is the capital of Peru? ünïcode 🙂"},
    {"role": "assistant", "content": "Lima."},
]


@pytest.fixture(scope="module")
def tok():
    corpus = chat.render(CONVERSATION) * 3 + "The capital of Chile is Santiago. " * 5
    return BPETokenizer.train(corpus, 300, special_tokens=chat.SPECIAL_TOKENS)


def test_render_layout_and_generation_prompt():
    text = chat.render(CONVERSATION[:2], add_generation_prompt=True)
    assert text == ("<|system|>Answer briefly.<|end|><|user|>What is the capital of Peru? "
                    "ünïcode 🙂<|end|><|assistant|>")


def test_encode_equals_tokenizer_on_rendered_text_and_masks_assistant(tok):
    enc = chat.encode_chat(tok, CONVERSATION)
    assert enc.ids == tok.encode(chat.render(CONVERSATION), allowed_special="all")
    assert len(enc.ids) == len(enc.assistant_mask)
    masked = [i for i, m in zip(enc.ids, enc.assistant_mask, strict=True) if m]
    # the assistant's text and its end-of-turn token, nothing else
    assert tok.decode(masked) == "Lima.<|end|>"
    assert masked[-1] == chat.end_id(tok)


def test_generation_prompt_ends_with_assistant_token(tok):
    enc = chat.encode_chat(tok, CONVERSATION[:2], add_generation_prompt=True)
    assert enc.ids[-1] == tok.special_tokens["<|assistant|>"]
    assert not any(enc.assistant_mask)


def test_parse_is_inverse_of_render():
    assert chat.parse_chat(chat.render(CONVERSATION)) == CONVERSATION
    with pytest.raises(ValueError, match="no '<\\|end\\|>'"):
        chat.parse_chat("<|user|>hello")
    with pytest.raises(ValueError, match="start each turn"):
        chat.parse_chat("hello<|end|>")


def test_decode_reply_stops_at_end_or_new_turn(tok):
    reply = tok.encode("Lima.") + [chat.end_id(tok)] + tok.encode("junk")
    assert chat.decode_reply(tok, reply) == ("Lima.", True)
    runaway = tok.encode("Lima") + [tok.special_tokens["<|user|>"]] + tok.encode("more")
    assert chat.decode_reply(tok, runaway) == ("Lima", False)
    assert chat.decode_reply(tok, tok.encode("Li")) == ("Li", False)


@pytest.mark.parametrize("messages, error, match", [
    ([], ValueError, "empty"),
    ("hello", TypeError, "list of"),
    ([{"role": "bot", "content": "x"}], ValueError,
     r"\['system', 'user', 'assistant'\]; got 'bot'"),
    ([{"role": "user", "content": "x"}, {"role": "system", "content": "y"}], ValueError,
     "only the first"),
    ([{"role": "user", "content": 3}], TypeError, "must be a str; got int"),
    ([{"role": "user", "content": "stop <|end|> now"}], ValueError, "special token '<\\|end\\|>'"),
])
def test_bad_messages_are_named(messages, error, match):
    with pytest.raises(error, match=match):
        chat.render(messages)


def test_tokenizer_without_chat_tokens_is_refused():
    with pytest.raises(ValueError, match="special_tokens=jaxllm.chat.SPECIAL_TOKENS"):
        chat.encode_chat(CharTokenizer.from_text("abc"), [{"role": "user", "content": "a"}])
