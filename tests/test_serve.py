"""jaxllm serve: host-driven decoding, constrained decoding, and the HTTP server with the
official openai and anthropic clients.

The unit tests drive :class:`jaxllm.sample.Stepper` and :class:`jaxllm.serve.Engine`
directly. The tests marked ``integration`` start a live server on 127.0.0.1 (in a thread of
this process; one test starts ``jaxllm serve`` as a subprocess) and call it with the SDKs and
with raw HTTP. The model is a tiny random GPT with a BPE tokenizer trained with the chat
tokens: its replies are nonsense, which is all a test of the plumbing needs (and a hard case
for structured output: nothing but the mask makes the JSON valid).
"""

from __future__ import annotations

import concurrent.futures
import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("llguidance")
openai = pytest.importorskip("openai")
anthropic = pytest.importorskip("anthropic")
jsonschema = pytest.importorskip("jsonschema")

from conftest import random_model  # noqa: E402
from jaxllm import chat  # noqa: E402
from jaxllm.config import ModelConfig  # noqa: E402

KEY = "sk-test-key"
NAME = "tiny-chat"

SCHEMAS = [
    {"type": "object",
     "properties": {"answer": {"type": "integer", "minimum": 0, "maximum": 99}},
     "required": ["answer"], "additionalProperties": False},
    {"type": "object",
     "properties": {"ok": {"type": "boolean"},
                    "colour": {"enum": ["red", "green", "blue"]},
                    "name": {"type": "string", "maxLength": 6}},
     "required": ["ok", "colour", "name"], "additionalProperties": False},
    {"type": "array", "items": {"type": "integer", "minimum": -5, "maximum": 5},
     "minItems": 1, "maxItems": 3},
]


def _conversations():
    return [[{"role": "system", "content": "Answer in JSON."},
             {"role": "user", "content": f"What is {i} plus {i}? Say hello."},
             {"role": "assistant", "content": f'{{"answer": {2 * i}, "ok": true}}'}]
            for i in range(40)]


@pytest.fixture(scope="session")
def chat_model():
    from jaxllm.tokenizer import BPETokenizer

    text = "".join(chat.render(c) for c in _conversations())
    tok = BPETokenizer.train(text, 320, special_tokens=chat.SPECIAL_TOKENS)
    cfg = ModelConfig(vocab_size=tok.vocab_size, context_length=128, n_layer=2, n_head=2,
                      d_model=32)
    return random_model(cfg, seed=0, std=0.3), tok


def _prompt(tok, text="What is 3 plus 3?"):
    return chat.encode_chat(tok, [{"role": "user", "content": text}],
                            add_generation_prompt=True).ids


# -- stepping, constraints, the engine (compiling the decode step takes a few seconds, so
# the tests that decode are integration tests too) ---------------------------------------

@pytest.mark.integration
def test_stepper_matches_generate_and_rows_are_independent(chat_model):
    from jaxllm.sample import Stepper, generate

    model, tok = chat_model
    prompts = [_prompt(tok), _prompt(tok, "hi")]
    greedy = generate(model, prompts, 6, temperature=0.0)
    st = Stepper(model, prompts, 6, temperature=[0.0, 0.0], top_k=[0, 0], top_p=[1.0, 1.0],
                 seeds=[0, 0], pad_rows=2)
    steps = np.stack([st.step([True, True]) for _ in range(6)], axis=1)
    assert steps[:2].tolist() == greedy
    # A sampled row draws the same tokens alone as beside another request (its own seed).
    alone = Stepper(model, prompts[1:], 6, temperature=[1.0], top_k=[0], top_p=[1.0],
                    seeds=[7], pad_rows=1)
    together = Stepper(model, prompts, 6, temperature=[0.5, 1.0], top_k=[3, 0],
                       top_p=[0.9, 1.0], seeds=[1, 7], pad_rows=2)
    a = [int(alone.step([True])[0]) for _ in range(6)]
    b = [int(together.step([True, True])[1]) for _ in range(6)]
    assert a == b
    with pytest.raises(ValueError, match="context_length"):
        Stepper(model, prompts, 200, temperature=[0, 0], top_k=[0, 0], top_p=[1, 1],
                seeds=[0, 0])


def test_unpack_bitmask_matches_llguidance_layout():
    from llguidance.numpy import apply_token_bitmask_inplace

    from jaxllm.sample import unpack_bitmask

    rng = np.random.default_rng(0)
    V = 75
    bits = rng.integers(-(2**31), 2**31, size=(3, 3), dtype=np.int64).astype(np.int32)
    logits = np.zeros((3, V), np.float32)
    apply_token_bitmask_inplace(logits, bits)
    assert np.array_equal(np.asarray(unpack_bitmask(bits, V)), np.isfinite(logits))


def test_unsatisfiable_and_invalid_schemas_are_rejected(chat_model):
    from jaxllm.structured import compile_grammar

    _, tok = chat_model
    with pytest.raises(ValueError, match="cannot be used.*minimum"):
        compile_grammar(tok, "json_schema", {"type": "integer", "minimum": 5, "maximum": 3})
    with pytest.raises(ValueError, match="cannot be used"):
        compile_grammar(tok, "json_schema", {"allOf": [{"type": "string"},
                                                       {"type": "number"}]})
    with pytest.raises(ValueError, match="cannot be used"):
        compile_grammar(tok, "json_schema", {"type": "strng"})
    with pytest.raises(ValueError, match="kind must be one of"):
        compile_grammar(tok, "yaml", "x")
    assert compile_grammar(tok, "json_schema", SCHEMAS[0])


def _run_jobs(engine, jobs):
    """Submit jobs and wait: (texts, finish infos) by job index."""
    from jaxllm.serve import Job

    texts, done = {}, {}
    ev = threading.Event()
    lock = threading.Lock()

    def emit(e):
        with lock:
            if e[0] == "delta":
                texts[e[1]] = texts.get(e[1], "") + e[2]
            else:
                done[e[1]] = e[2]
                if len(done) == len(jobs):
                    ev.set()

    jobs = [Job(**{**j, "index": i, "emit": emit}) for i, j in enumerate(jobs)]
    engine.submit(jobs)
    assert ev.wait(300)
    return [texts.get(i, "") for i in range(len(jobs))], [done[i] for i in range(len(jobs))]


@pytest.mark.integration
def test_structured_output_always_validates(chat_model):
    """Every schema, several seeds, sampled at temperature 1 from a random model: every
    reply parses and validates, because only the mask makes it JSON."""
    from jaxllm.serve import Engine
    from jaxllm.structured import compile_grammar

    model, tok = chat_model
    engine = Engine(model, tok, max_batch=16)
    try:
        jobs = [dict(prompt=_prompt(tok), max_tokens=60, temperature=1.0, seed=seed,
                     grammar=compile_grammar(tok, "json_schema", schema))
                for schema in SCHEMAS for seed in range(4)]
        texts, infos = _run_jobs(engine, jobs)
        for k, (text, info) in enumerate(zip(texts, infos, strict=True)):
            assert info["finish_reason"] == "stop", (text, info)
            jsonschema.validate(json.loads(text), SCHEMAS[k // 4])
        assert len(set(texts)) > 3  # sampled, not one fixed answer
        # Unconstrained, the same model does not write JSON.
        free, _ = _run_jobs(engine, [dict(prompt=_prompt(tok), max_tokens=20, seed=s)
                                     for s in range(4)])
        assert not any(_parses(t) for t in free)
        assert engine.stats["largest_batch"] == 12  # submitted together, decoded together
    finally:
        engine.stop()


def _parses(text):
    try:
        json.loads(text)
        return True
    except ValueError:
        return False


@pytest.mark.integration
def test_stop_sequences_cut_the_text(chat_model):
    from jaxllm.serve import Engine

    model, tok = chat_model
    engine = Engine(model, tok)
    try:
        (full,), _ = _run_jobs(engine, [dict(prompt=_prompt(tok), max_tokens=30,
                                             temperature=0.0)])
        stop = full[5:7]
        (cut,), (info,) = _run_jobs(engine, [dict(prompt=_prompt(tok), max_tokens=30,
                                                  temperature=0.0, stop=[stop])])
        assert cut == full[: full.index(stop)]
        assert info["finish_reason"] == "stop_sequence" and info["stop_sequence"] == stop
    finally:
        engine.stop()


@pytest.mark.integration
def test_queue_bound_and_host_key(chat_model):
    from jaxllm.serve import Engine, Job, Overloaded, _check_host_key, is_loopback

    model, tok = chat_model
    engine = Engine(model, tok, max_batch=1, max_queue=2)
    try:
        gate = threading.Event()
        jobs = [Job(prompt=_prompt(tok), max_tokens=3, index=i,
                    emit=lambda e: gate.set() if e[0] == "done" else None) for i in range(2)]
        engine.submit(jobs)
        with pytest.raises(Overloaded):
            engine.submit([Job(prompt=_prompt(tok), max_tokens=3)])
        engine.cancel(jobs)  # their places free at once
        engine.submit([Job(prompt=_prompt(tok), max_tokens=3,
                           emit=lambda e: gate.set() if e[0] == "done" else None)])
        assert gate.wait(120)
    finally:
        engine.stop()
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.4")
    with pytest.raises(ValueError, match="API key"):
        _check_host_key("0.0.0.0", None)
    _check_host_key("0.0.0.0", "k")


# -- integration: a live server ------------------------------------------------------------

@pytest.fixture(scope="module")
def server(chat_model):
    from jaxllm.serve import start_server

    model, tok = chat_model
    srv = start_server(model, tok, model_name=NAME, api_key=KEY, max_batch=16, max_queue=40)
    yield srv
    srv.stop()


@pytest.fixture()
def oai(server):
    return openai.OpenAI(base_url=server.openai_base_url, api_key=KEY, max_retries=0,
                         timeout=120)


@pytest.fixture()
def ant(server):
    return anthropic.Anthropic(base_url=server.url, api_key=KEY, max_retries=0, timeout=120)


def _raw(server, method, path, body=None, headers=None):
    conn = http.client.HTTPConnection(server.host, server.port, timeout=120)
    data = body if isinstance(body, bytes | None) else json.dumps(body).encode()
    conn.request(method, path, body=data, headers={"Content-Type": "application/json",
                                                   **(headers or {})})
    r = conn.getresponse()
    out = r.status, r.read()
    conn.close()
    return out[0], json.loads(out[1]) if out[1] else None


MSG = [{"role": "user", "content": "What is 3 plus 3?"}]


@pytest.mark.integration
def test_openai_client(oai, chat_model):
    r = oai.chat.completions.create(model=NAME, messages=[
        {"role": "system", "content": "Be brief."}, *MSG], max_tokens=12, seed=3, n=2,
        temperature=0.9)
    assert r.object == "chat.completion" and r.model == NAME and len(r.choices) == 2
    assert all(c.finish_reason in ("stop", "length") for c in r.choices)
    assert r.usage.prompt_tokens == len(chat.encode_chat(
        chat_model[1], [{"role": "system", "content": "Be brief."}, *MSG],
        add_generation_prompt=True).ids)
    assert 2 <= r.usage.completion_tokens <= 24
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    again = oai.chat.completions.create(model=NAME, messages=[
        {"role": "system", "content": "Be brief."}, *MSG], max_completion_tokens=12, seed=3,
        n=2, temperature=0.9)
    assert [c.message.content for c in again.choices] == [c.message.content
                                                          for c in r.choices]
    # Streaming: the deltas add up to the same reply as the non-streamed call.
    plain = oai.chat.completions.create(model=NAME, messages=MSG, max_tokens=15, seed=5)
    chunks = list(oai.chat.completions.create(model=NAME, messages=MSG, max_tokens=15, seed=5,
                                              stream=True,
                                              stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == \
        plain.usage.completion_tokens
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == plain.choices[0].finish_reason and finishes.count(None) == \
        len(finishes) - 1
    assert [m.id for m in oai.models.list()] == [NAME]


@pytest.mark.integration
def test_anthropic_client(ant, chat_model):
    # This SDK has no temperature argument any more (the hosted API ignores it for its newest
    # models); extra_body sends it, and this server uses it.
    m = ant.messages.create(model=NAME, max_tokens=10, system="Be brief.", messages=[
        {"role": "user", "content": [{"type": "text", "text": "What is 3 plus 3?"}]}],
        extra_body={"temperature": 0.0})
    assert m.type == "message" and m.role == "assistant" and m.content[0].type == "text"
    assert m.stop_reason in ("end_turn", "max_tokens") and m.usage.output_tokens <= 10
    assert m.usage.input_tokens == len(chat.encode_chat(
        chat_model[1], [{"role": "system", "content": "Be brief."}, *MSG],
        add_generation_prompt=True).ids)
    with ant.messages.stream(model=NAME, max_tokens=10, system="Be brief.", messages=MSG,
                             extra_body={"temperature": 0.0}) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == m.content[0].text == final.content[0].text
    assert final.usage.output_tokens == m.usage.output_tokens
    assert final.stop_reason == m.stop_reason
    events = [e.type for e in ant.messages.create(model=NAME, max_tokens=5, messages=MSG,
                                                  stream=True)]
    assert events[:2] == ["message_start", "content_block_start"]
    assert events[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert set(events[2:-3]) <= {"content_block_delta"}
    # Stop sequences: greedy text cut before the first occurrence.
    cut = ant.messages.create(model=NAME, max_tokens=20, messages=MSG,
                              extra_body={"temperature": 0.0},
                              stop_sequences=[text[3:5]]) if len(text) >= 5 else None
    if cut is not None:
        assert cut.stop_reason == "stop_sequence" and cut.stop_sequence == text[3:5]
        assert cut.content[0].text == text[: text.index(text[3:5])]


@pytest.mark.integration
def test_structured_output_over_http(oai, ant):
    for k, schema in enumerate(SCHEMAS[:2]):
        r = oai.chat.completions.create(
            model=NAME, messages=MSG, max_tokens=60, seed=k, n=3,
            response_format={"type": "json_schema",
                             "json_schema": {"name": "reply", "schema": schema}})
        for c in r.choices:
            assert c.finish_reason == "stop"
            jsonschema.validate(json.loads(c.message.content), schema)
    m = ant.messages.create(model=NAME, max_tokens=60, messages=MSG, output_config={
        "format": {"type": "json_schema", "schema": SCHEMAS[2]}})
    jsonschema.validate(json.loads(m.content[0].text), SCHEMAS[2])
    with pytest.raises(openai.UnprocessableEntityError, match="minimum"):
        oai.chat.completions.create(model=NAME, messages=MSG, max_tokens=5, response_format={
            "type": "json_schema", "json_schema": {"name": "x", "schema": {
                "type": "integer", "minimum": 5, "maximum": 3}}})


@pytest.mark.integration
@pytest.mark.parametrize("change, status, param", [
    ({"model": "gpt-4"}, 404, "model"),
    ({"messages": []}, 400, "messages"),
    ({"temperature": -0.5}, 400, "temperature"),
    ({"max_tokens": 0}, 400, "max_tokens"),
    ({"max_tokens": 10_000}, 400, "max_tokens"),
    ({"messages": [{"role": "wizard", "content": "hi"}]}, 400, "messages[0].role"),
    ({"messages": [{"role": "user", "content": "a <|end|> b"}]}, 400, "messages"),
    ({"n": 0}, 400, "n"),
    ({"stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
    ({"top_p": 0}, 400, "top_p"),
    ({"response_format": {"type": "xml"}}, 400, "response_format"),
])
def test_openai_errors(oai, server, change, status, param):
    body = {"model": NAME, "messages": MSG, "max_tokens": 5, **change}
    code, got = _raw(server, "POST", "/v1/chat/completions", body,
                     {"Authorization": f"Bearer {KEY}"})
    assert code == status and set(got) == {"error"}
    assert set(got["error"]) == {"message", "type", "param", "code"}
    assert got["error"]["param"] == param and got["error"]["message"]
    exc = {400: openai.BadRequestError, 404: openai.NotFoundError}[status]
    with pytest.raises(exc):
        oai.chat.completions.create(**body)


@pytest.mark.integration
def test_transport_and_auth_errors(server):
    auth = {"Authorization": f"Bearer {KEY}"}
    code, got = _raw(server, "POST", "/v1/chat/completions", b"{not json", auth)
    assert code == 400 and got["error"]["type"] == "invalid_request_error"
    code, got = _raw(server, "POST", "/v1/chat/completions", [1, 2], auth)
    assert code == 400 and "JSON object" in got["error"]["message"]
    code, got = _raw(server, "POST", "/v1/messages", b"[", {"x-api-key": KEY})
    assert code == 400 and got["type"] == "error" and \
        got["error"]["type"] == "invalid_request_error"
    code, got = _raw(server, "GET", "/v1/nowhere", None, auth)
    assert code == 404 and "error" in got
    for path in ("/v1/chat/completions", "/v1/messages"):
        code, got = _raw(server, "POST", path, {"model": NAME}, {"x-api-key": "wrong"})
        assert code == 401
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server.openai_base_url, api_key="wrong",
                      max_retries=0).models.list()
    with pytest.raises(anthropic.AuthenticationError) as e:
        anthropic.Anthropic(base_url=server.url, api_key="wrong", max_retries=0
                            ).messages.create(model=NAME, max_tokens=5, messages=MSG)
    assert e.value.body == {"type": "error", "error": {
        "type": "authentication_error", "message": e.value.body["error"]["message"]}}
    # The server is still up.
    code, got = _raw(server, "GET", "/v1/models", None, auth)
    assert code == 200 and got["data"][0]["id"] == NAME


@pytest.mark.integration
@pytest.mark.parametrize("change, status, kind", [
    ({"model": "claude-3-sonnet-20240229"}, 404, "not_found_error"),
    ({"max_tokens": None}, 400, "invalid_request_error"),
    ({"max_tokens": -1}, 400, "invalid_request_error"),
    ({"max_tokens": 10_000}, 400, "invalid_request_error"),
    ({"messages": []}, 400, "invalid_request_error"),
    ({"messages": [{"role": "system", "content": "hi"}]}, 400, "invalid_request_error"),
    ({"temperature": 1.5}, 400, "invalid_request_error"),
    ({"messages": [{"role": "user", "content": [{"type": "image", "source": {}}]}]}, 400,
     "invalid_request_error"),
])
def test_anthropic_errors(ant, server, change, status, kind):
    body = {"model": NAME, "messages": MSG, "max_tokens": 5, **change}
    body = {k: v for k, v in body.items() if v is not None}
    code, got = _raw(server, "POST", "/v1/messages", body, {"x-api-key": KEY})
    assert code == status and got["type"] == "error" and got["error"]["type"] == kind
    assert set(got["error"]) == {"type", "message"}
    if "max_tokens" in body:  # the SDK itself insists on max_tokens
        exc = {400: anthropic.BadRequestError, 404: anthropic.NotFoundError}[status]
        known = {k: body.pop(k) for k in ("model", "messages", "max_tokens")}
        with pytest.raises(exc):
            ant.messages.create(**known, extra_body=body)


@pytest.mark.integration
def test_32_concurrent_requests_are_batched(server, oai):
    before = dict(server.engine.stats)

    def one(i):
        r = oai.chat.completions.create(model=NAME, messages=MSG, max_tokens=8, seed=i)
        return r.choices[0].finish_reason, r.usage.completion_tokens

    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        results = list(pool.map(one, range(32)))
    assert len(results) == 32 and all(f in ("stop", "length") for f, _ in results)
    stats = server.engine.stats
    assert stats["rows"] - before["rows"] == 32
    assert stats["batches"] - before["batches"] < 32  # requests shared batches


@pytest.mark.integration
def test_queue_full_gives_429_and_529(chat_model):
    from jaxllm.serve import start_server

    model, tok = chat_model
    with start_server(model, tok, model_name=NAME, max_batch=1, max_queue=1,
                      warm_up=False) as srv:
        release = _blocker(srv.engine, tok)  # holds the queue's one place
        code, got = _raw(srv, "POST", "/v1/chat/completions",
                         {"model": NAME, "messages": MSG, "max_tokens": 3})
        assert code == 429 and got["error"]["type"] == "rate_limit_error"
        code, got = _raw(srv, "POST", "/v1/messages",
                         {"model": NAME, "messages": MSG, "max_tokens": 3})
        assert code == 529 and got == {"type": "error", "error": {
            "type": "overloaded_error", "message": got["error"]["message"]}}
        with pytest.raises(openai.RateLimitError):
            openai.OpenAI(base_url=srv.openai_base_url, api_key="x", max_retries=0
                          ).chat.completions.create(model=NAME, messages=MSG, max_tokens=3)
        release.set()


def _blocker(engine, tok):
    """Submit a job whose client holds the worker at its first token until released."""
    from jaxllm.serve import Job

    release, started = threading.Event(), threading.Event()

    def emit(event):
        started.set()
        release.wait(60)

    engine.submit([Job(prompt=_prompt(tok), max_tokens=3, emit=emit)])
    assert started.wait(120)
    return release


@pytest.mark.integration
def test_client_disconnecting_mid_stream_frees_its_slot(server, oai):
    before = server.engine.stats["cancelled"]
    conn = http.client.HTTPConnection(server.host, server.port, timeout=60)
    conn.request("POST", "/v1/chat/completions", body=json.dumps(
        {"model": NAME, "messages": MSG, "max_tokens": 100, "stream": True}).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"})
    r = conn.getresponse()
    assert r.status == 200
    first = r.readline()
    assert first.startswith(b"data: ")
    r.readline()
    conn.sock.shutdown(socket.SHUT_RDWR)
    conn.close()
    deadline = time.monotonic() + 60
    while server.engine.stats["cancelled"] == before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert server.engine.stats["cancelled"] == before + 1
    assert server.engine._inflight == 0
    r = oai.chat.completions.create(model=NAME, messages=MSG, max_tokens=3)
    assert r.choices[0].message.content is not None


@pytest.mark.integration
def test_cli_serve(chat_model, tmp_path):
    from jaxllm import export_pretrained

    model, tok = chat_model
    folder = export_pretrained(model, tmp_path / "tiny", card="# tiny\nA test model.",
                               tokenizer=tok, dtype="float32")
    r = subprocess.run([sys.executable, "-m", "jaxllm.cli", "serve", "--model", str(folder),
                        "--host", "0.0.0.0"], capture_output=True, text=True, timeout=60,
                       env={k: v for k, v in os.environ.items() if k != "JAXLLM_API_KEY"})
    assert r.returncode == 2 and "API key" in r.stderr
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "jaxllm.cli", "serve", "--model",
                             str(folder), "--port", str(port)],
                            env={**os.environ, "JAXLLM_API_KEY": KEY},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=KEY,
                               max_retries=0, timeout=30)
        deadline = time.monotonic() + 90
        while True:
            try:
                models = [m.id for m in client.models.list()]
                break
            except openai.APIConnectionError:
                assert proc.poll() is None and time.monotonic() < deadline
                time.sleep(0.5)
        assert models == ["tiny"]
        r = client.chat.completions.create(model="tiny", messages=MSG, max_tokens=4)
        assert r.usage.completion_tokens <= 4
    finally:
        proc.terminate()
        proc.wait(timeout=30)
