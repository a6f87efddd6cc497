"""``jaxllm serve``: the course's model behind the OpenAI and Anthropic HTTP APIs.

The official clients work unchanged against it, with a base URL and a key::

    OpenAI(base_url="http://127.0.0.1:8000/v1", api_key=KEY).chat.completions.create(...)
    Anthropic(base_url="http://127.0.0.1:8000", api_key=KEY).messages.create(...)

Routes: ``GET /v1/models``, ``POST /v1/chat/completions`` (OpenAI) and ``POST /v1/messages``
(Anthropic), each with server-sent-event streaming, usage counts, stop sequences, seeds and
JSON-schema structured output (constrained decoding, :mod:`jaxllm.structured`). Responses
are built from the SDKs' own pydantic types where those are installed, so their shape is the
one the clients parse. Errors come in each provider's shape with the status codes the SDKs
map to exceptions; no input gives a 500.

How requests are served (:class:`Engine`): one worker thread owns the model. Requests that
arrive while it is busy wait in a bounded queue; when the current batch finishes, the worker
takes up to ``max_batch`` of them and decodes them *together*, one compiled step per token for
the whole batch (:class:`jaxllm.sample.Stepper`), so a request waits at most one batch. Each
new token goes straight to its client. A client that disconnects marks its row inactive at
the next step (and the batch ends early once every row is finished), and its place in the
queue is free at once. When the queue holds ``max_queue`` rows, a new request gets 429
(OpenAI) or 529 ``overloaded_error`` (Anthropic) at once rather than a long wait.

Security: the server listens on 127.0.0.1 unless told otherwise, and refuses any other
address without an API key (from ``--api-key`` or ``JAXLLM_API_KEY``), which it compares in
constant time (``hmac.compare_digest``) with the ``Authorization: Bearer`` or ``x-api-key``
header.
"""

import asyncio
import codecs
import collections
import hmac
import ipaddress
import json
import os
import secrets
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import chat

__all__ = ["BackgroundServer", "Engine", "Overloaded", "RequestError", "create_app",
           "is_loopback", "load_model", "start_server"]

API_KEY_ENV = "JAXLLM_API_KEY"
MAX_N = 8          # choices per OpenAI request
MAX_STOP = 4       # stop sequences per request (OpenAI's limit)


# -- errors ------------------------------------------------------------------------------------

class RequestError(Exception):
    """A request the server will not serve: HTTP ``status``, a message, and the parameter it
    is about. Rendered in the shape of the API that was called."""

    def __init__(self, status: int, message: str, *, param: str | None = None,
                 code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


class Overloaded(RequestError):
    def __init__(self, message: str) -> None:
        super().__init__(429, message, code="overloaded")


_OPENAI_TYPES = {400: "invalid_request_error", 401: "authentication_error",
                 404: "invalid_request_error", 405: "invalid_request_error",
                 422: "invalid_request_error", 429: "rate_limit_error", 500: "server_error"}
_ANTHROPIC_TYPES = {400: "invalid_request_error", 401: "authentication_error",
                    404: "not_found_error", 405: "invalid_request_error",
                    422: "invalid_request_error", 429: "rate_limit_error",
                    529: "overloaded_error", 500: "api_error"}


def openai_error_body(status: int, message: str, param: str | None = None,
                      code: str | None = None) -> dict:
    return {"error": {"message": message, "type": _OPENAI_TYPES.get(status, "server_error"),
                      "param": param, "code": code}}


def anthropic_error_body(status: int, message: str) -> dict:
    return {"type": "error",
            "error": {"type": _ANTHROPIC_TYPES.get(status, "api_error"), "message": message}}


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# -- the engine: a worker thread that batches requests ----------------------------------------

@dataclass
class Job:
    """One reply to generate (an OpenAI request with ``n`` choices is ``n`` jobs)."""

    prompt: list[int]
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int = 0
    stop: Sequence[str] = ()
    grammar: str | None = None
    index: int = 0
    # Called from the worker thread with ("delta", index, text) and ("done", index, info).
    emit: Callable[[tuple], None] = lambda event: None
    cancelled: threading.Event = field(default_factory=threading.Event)
    released: bool = False  # its place in the queue is free (set under the engine's lock)


class _Row:
    """Per-row state of a running batch: incremental UTF-8 decoding, stop sequences (text
    that could still become one is held back), the grammar matcher."""

    def __init__(self, job: Job, tokenizer: Any, constraint: Any) -> None:
        self.job, self.tok, self.constraint = job, tokenizer, constraint
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.text = ""      # decoded so far
        self.sent = 0       # characters of `text` already emitted
        self.tokens = 0
        self.active = True
        self.hold = max((len(s) for s in job.stop), default=1) - 1

    def finish(self, reason: str, stop_sequence: str | None = None) -> None:
        if not self.active:
            return
        self.active = False
        if reason != "stop_sequence":
            self.text += self.decoder.decode(b"", final=True)
        if self.sent < len(self.text):
            self.job.emit(("delta", self.job.index, self.text[self.sent:]))
            self.sent = len(self.text)
        self.job.emit(("done", self.job.index, {"finish_reason": reason,
                                                "stop_sequence": stop_sequence,
                                                "completion_tokens": self.tokens}))

    def push(self, token: int, special: set[int], end: int) -> None:
        self.tokens += 1
        if token in special:
            self.finish("stop")  # <|end|>, or a new turn the model started by itself
            return
        if self.constraint is not None:
            self.constraint.consume(token)
        self.text += self.decoder.decode(self.tok.token_bytes(token))
        for s in self.job.stop:
            at = self.text.find(s, max(0, self.sent - len(s)))
            if at >= 0:
                self.text = self.text[:at]
                self.finish("stop_sequence", s)
                return
        if self.constraint is not None and self.constraint.done:
            self.finish("stop")
            return
        if self.tokens >= self.job.max_tokens:
            self.finish("length")
            return
        # Emit what can no longer become part of a stop sequence.
        upto = len(self.text) - self.hold
        if upto > self.sent:
            self.job.emit(("delta", self.job.index, self.text[self.sent:upto]))
            self.sent = upto


class Engine:
    """The model, its tokenizer and the worker thread that decodes batches of jobs.

    ``max_batch`` rows decode together (batches are padded to 1, 4, 16, ... or ``max_batch``
    rows, so that few programs are compiled); ``max_queue`` rows may wait or run before
    :meth:`submit` raises :class:`Overloaded`.
    """

    def __init__(self, model: Any, tokenizer: Any, *, max_batch: int = 16,
                 max_queue: int = 64) -> None:
        from .validate import check_int

        check_int("max_batch", max_batch, min=1)
        check_int("max_queue", max_queue, min=1)
        chat.end_id(tokenizer)  # the tokenizer must have the chat tokens
        self.model, self.tokenizer = model, tokenizer
        self.context_length = int(model.cfg.context_length)
        self.max_batch, self.max_queue = max_batch, max_queue
        self.end = chat.end_id(tokenizer)
        self.special = {int(i) for i in tokenizer.special_tokens.values()}
        self._pending: collections.deque[Job] = collections.deque()
        self._cv = threading.Condition()
        self._inflight = 0
        self._stopping = False
        self.stats = {"batches": 0, "rows": 0, "largest_batch": 0, "cancelled": 0,
                      "tokens": 0}
        self._thread = threading.Thread(target=self._work, name="jaxllm-serve", daemon=True)
        self._thread.start()

    # public -----------------------------------------------------------------------------------
    def submit(self, jobs: Sequence[Job]) -> None:
        """Queue ``jobs`` (all or none); raises :class:`Overloaded` when the queue is full."""
        with self._cv:
            if self._stopping:
                raise Overloaded("the server is shutting down")
            if self._inflight + len(jobs) > self.max_queue:
                raise Overloaded(f"the server is busy: {self._inflight} requests are queued "
                                 f"or running (at most {self.max_queue}); retry shortly")
            self._inflight += len(jobs)
            self._pending.extend(jobs)
            self._cv.notify()

    def cancel(self, jobs: Sequence[Job]) -> None:
        """Stop generating for ``jobs`` (a client went away); their places free at once."""
        with self._cv:
            for job in jobs:
                if not job.cancelled.is_set() and not job.released:
                    job.cancelled.set()
                    self.stats["cancelled"] += 1
                    if job in self._pending:
                        self._pending.remove(job)
                    self._release(job)

    def stop(self) -> None:
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
        self._thread.join(timeout=30)

    def buckets(self) -> list[int]:
        """The batch sizes programs are compiled for: 1, 4, 16, ... and ``max_batch``."""
        sizes, b = [], 1
        while b < self.max_batch:
            sizes.append(b)
            b *= 4
        return [*sizes, self.max_batch]

    def warm_up(self, max_tokens: int = 4, batch_sizes: Sequence[int] = (1,)) -> None:
        """Compile the programs of these batch sizes now rather than on the first requests
        (for prompts of up to 16 tokens and replies that fit in 128 cache slots with them)."""
        prompt = chat.encode_chat(self.tokenizer, [{"role": "user", "content": "hi"}],
                                  add_generation_prompt=True).ids
        for n in batch_sizes:
            done = threading.Semaphore(0)

            def emit(event: tuple, done: threading.Semaphore = done) -> None:
                if event[0] != "delta":
                    done.release()

            jobs = [Job(prompt=prompt, max_tokens=max_tokens, temperature=0.0, index=i,
                        emit=emit)
                    for i in range(min(n, self.max_batch))]
            self.submit(jobs)
            for _ in jobs:
                done.acquire(timeout=600)

    # worker -------------------------------------------------------------------------------------
    def _release(self, job: Job) -> None:
        with self._cv:  # re-entrant use from cancel() is fine: Condition wraps an RLock
            if not job.released:
                job.released = True
                self._inflight -= 1

    def _work(self) -> None:
        while True:
            with self._cv:
                while not self._pending and not self._stopping:
                    self._cv.wait()
                if self._stopping:
                    return
                jobs = [self._pending.popleft()
                        for _ in range(min(self.max_batch, len(self._pending)))]
            try:
                self._run(jobs)
            except Exception as e:  # report to every client, keep serving
                for job in jobs:
                    job.emit(("error", job.index, f"generation failed: {e}"))
            finally:
                for job in jobs:
                    self._release(job)

    def _run(self, jobs: list[Job]) -> None:
        from .sample import Stepper
        from .structured import Constraint

        rows = [_Row(j, self.tokenizer,
                     Constraint(self.tokenizer, j.grammar) if j.grammar else None)
                for j in jobs]
        n = len(jobs)
        padded = next(b for b in self.buckets() if b >= n)
        stepper = Stepper(self.model, [j.prompt for j in jobs], max(j.max_tokens for j in jobs),
                          temperature=[j.temperature for j in jobs],
                          top_k=[j.top_k for j in jobs], top_p=[j.top_p for j in jobs],
                          seeds=[j.seed for j in jobs], pad_rows=padded - n)
        self.stats["batches"] += 1
        self.stats["rows"] += n
        self.stats["largest_batch"] = max(self.stats["largest_batch"], n)
        constrained = any(r.constraint is not None for r in rows)
        bitmask = np.full((padded, (self.tokenizer.vocab_size + 31) // 32), -1, np.int32)
        while True:
            for r in rows:
                if r.active and r.job.cancelled.is_set():
                    r.active = False  # nothing more is sent: the client is gone
            active = [r.active for r in rows]
            if not any(active):
                return
            if constrained:
                for i, r in enumerate(rows):
                    if r.active and r.constraint is not None:
                        r.constraint.fill(bitmask, i)
            toks = stepper.step(active, bitmask if constrained else None)
            for i, r in enumerate(rows):
                if r.active:
                    self.stats["tokens"] += 1
                    r.push(int(toks[i]), self.special, self.end)


# -- loading models --------------------------------------------------------------------------

def load_model(spec: str) -> tuple[Any, Any, str]:
    """``(model, tokenizer, name)`` from a run folder (``jaxllm train --out``), a folder
    written by :func:`jaxllm.export_pretrained`, or the name of a shipped model."""
    from .checkpoint import RUN_FILE

    name = os.path.basename(os.path.normpath(spec))
    if os.path.isfile(os.path.join(spec, RUN_FILE)):
        from .train import load_run

        model, tokenizer, _ = load_run(spec)
        return model, tokenizer, name
    from .pretrained import load_pretrained

    loaded = load_pretrained(spec)
    return loaded.model, loaded.tokenizer, name


# -- request parsing -------------------------------------------------------------------------

def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _number(body: Mapping, name: str, default: float, low: float, high: float,
            low_open: bool = False) -> float:
    v = body.get(name)
    if v is None:
        return default
    if not _is_number(v) or v != v or v < low or v > high or (low_open and v == low):
        lo = "(" if low_open else "["
        raise RequestError(400, f"{name} must be a number in {lo}{low}, {high}]; got {v!r}",
                           param=name)
    return float(v)


def _integer(body: Mapping, name: str, low: int, high: int | None = None) -> int | None:
    v = body.get(name)
    if v is None:
        return None
    if not _is_int(v) or v < low or (high is not None and v > high):
        allowed = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise RequestError(400, f"{name} must be an integer {allowed}; got {v!r}", param=name)
    return v


def _text_content(content: Any, where: str) -> str:
    """A message's content: a string, or a list of text blocks (joined)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for k, block in enumerate(content):
            if not isinstance(block, Mapping) or block.get("type") != "text" \
                    or not isinstance(block.get("text"), str):
                kind = block.get("type") if isinstance(block, Mapping) else type(block).__name__
                raise RequestError(400, f"{where}[{k}] must be a text block "
                                   f"{{'type': 'text', 'text': ...}}; got {kind!r} (this "
                                   "model reads text only)", param=where)
            parts.append(block["text"])
        return "".join(parts)
    raise RequestError(400, f"{where} must be a string or a list of text blocks; got "
                       f"{type(content).__name__}", param=where)


def _stops(value: Any, name: str) -> list[str]:
    if value is None:
        return []
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list) or len(values) > MAX_STOP or \
            not all(isinstance(s, str) and s for s in values):
        raise RequestError(400, f"{name} must be a non-empty string or a list of at most "
                           f"{MAX_STOP} non-empty strings; got {value!r}", param=name)
    return values


class _Request:
    """What both APIs share once parsed: the prompt and the sampling settings."""

    def __init__(self, engine: Engine, messages: list[dict], *, max_tokens: int | None,
                 temperature: float, top_p: float, top_k: int, seed: int | None,
                 stop: list[str], n: int, grammar: str | None) -> None:
        try:
            self.prompt = chat.encode_chat(engine.tokenizer, messages,
                                           add_generation_prompt=True).ids
        except (ValueError, TypeError) as e:
            raise RequestError(400, str(e), param="messages") from None
        ctx = engine.context_length
        if len(self.prompt) >= ctx:
            raise RequestError(400, f"the prompt has {len(self.prompt)} tokens; this model's "
                               f"context is {ctx} tokens, and at least one must be left for "
                               "the reply", param="messages", code="context_length_exceeded")
        room = ctx - len(self.prompt)
        if max_tokens is None:
            max_tokens = room
        elif max_tokens > room:
            raise RequestError(400, f"max_tokens={max_tokens} is too large: the prompt has "
                               f"{len(self.prompt)} tokens and the context {ctx}, so at most "
                               f"{room} can be generated", param="max_tokens",
                               code="context_length_exceeded")
        self.max_tokens, self.n = max_tokens, n
        self.seed = secrets.randbits(31) if seed is None else seed
        self.settings = dict(temperature=temperature, top_p=top_p, top_k=top_k, stop=stop,
                             grammar=grammar)

    def jobs(self, emit: Callable[[tuple], None]) -> list[Job]:
        # Choice i uses seed + i: a request with a seed is reproducible, its choices differ.
        return [Job(prompt=self.prompt, max_tokens=self.max_tokens, seed=self.seed + i,
                    index=i, emit=emit, **self.settings) for i in range(self.n)]


def _grammar(engine: Engine, schema: Any, param: str) -> str:
    from .structured import compile_grammar

    try:
        return compile_grammar(engine.tokenizer, "json_schema", schema)
    except (ValueError, TypeError) as e:
        raise RequestError(422 if isinstance(schema, Mapping) else 400, str(e),
                           param=param) from None


def parse_openai(engine: Engine, body: Any, model_name: str) -> tuple[_Request, dict]:
    if not isinstance(body, Mapping):
        raise RequestError(400, "the request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str):
        raise RequestError(400, "model is required (a string)", param="model")
    if model != model_name:
        raise RequestError(404, f"The model {model!r} does not exist; this server serves "
                           f"{model_name!r}", param="model", code="model_not_found")
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw:
        raise RequestError(400, "messages must be a non-empty list of messages",
                           param="messages")
    messages = []
    for i, m in enumerate(raw):
        if not isinstance(m, Mapping):
            raise RequestError(400, f"messages[{i}] must be an object", param="messages")
        role = "system" if m.get("role") == "developer" else m.get("role")
        if role not in chat.ROLES:
            raise RequestError(400, f"messages[{i}].role must be one of "
                               f"{[*chat.ROLES, 'developer']}; got {m.get('role')!r}",
                               param=f"messages[{i}].role")
        messages.append({"role": role,
                         "content": _text_content(m.get("content"), f"messages[{i}].content")})
    n = _integer(body, "n", 1, MAX_N) or 1
    mt = body.get("max_completion_tokens")
    max_tokens = _integer(body, "max_completion_tokens" if mt is not None else "max_tokens", 1)
    seed = _integer(body, "seed", -(2**63), 2**63 - 1)
    stream = body.get("stream") or False
    if not isinstance(stream, bool):
        raise RequestError(400, f"stream must be a boolean; got {stream!r}", param="stream")
    opts = body.get("stream_options") or {}
    if not isinstance(opts, Mapping):
        raise RequestError(400, "stream_options must be an object", param="stream_options")
    grammar = None
    rf = body.get("response_format")
    if rf is not None:
        kind = rf.get("type") if isinstance(rf, Mapping) else None
        if kind == "json_schema":
            js = rf.get("json_schema")
            if not isinstance(js, Mapping) or not isinstance(js.get("schema"), Mapping):
                raise RequestError(400, "response_format.json_schema.schema must be a JSON "
                                   "schema object", param="response_format")
            grammar = _grammar(engine, js["schema"], "response_format")
        elif kind == "json_object":
            grammar = _grammar(engine, {"type": "object"}, "response_format")
        elif kind != "text":
            raise RequestError(400, "response_format.type must be 'text', 'json_object' or "
                               f"'json_schema'; got {kind!r}", param="response_format")
    req = _Request(engine, messages, max_tokens=max_tokens,
                   temperature=_number(body, "temperature", 1.0, 0.0, 2.0),
                   top_p=_number(body, "top_p", 1.0, 0.0, 1.0, low_open=True), top_k=0,
                   seed=None if seed is None else seed % (2**31),
                   stop=_stops(body.get("stop"), "stop"), n=n, grammar=grammar)
    return req, {"stream": stream, "include_usage": bool(opts.get("include_usage"))}


def parse_anthropic(engine: Engine, body: Any, model_name: str) -> tuple[_Request, dict]:
    if not isinstance(body, Mapping):
        raise RequestError(400, "the request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str):
        raise RequestError(400, "model: Field required (a string)", param="model")
    if model != model_name:
        raise RequestError(404, f"model: {model!r} is not served here; this server serves "
                           f"{model_name!r}", param="model")
    if body.get("max_tokens") is None:
        raise RequestError(400, "max_tokens: Field required", param="max_tokens")
    max_tokens = _integer(body, "max_tokens", 1)
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw:
        raise RequestError(400, "messages: at least one message is required",
                           param="messages")
    messages = []
    system = body.get("system")
    if system is not None:
        messages.append({"role": "system", "content": _text_content(system, "system")})
    for i, m in enumerate(raw):
        if not isinstance(m, Mapping) or m.get("role") not in ("user", "assistant"):
            role = m.get("role") if isinstance(m, Mapping) else None
            raise RequestError(400, f"messages.{i}.role: must be 'user' or 'assistant'; got "
                               f"{role!r} (a system prompt goes in the top-level 'system')",
                               param="messages")
        messages.append({"role": m["role"],
                         "content": _text_content(m.get("content"), f"messages.{i}.content")})
    stream = body.get("stream") or False
    if not isinstance(stream, bool):
        raise RequestError(400, f"stream: must be a boolean; got {stream!r}", param="stream")
    grammar = None
    oc = body.get("output_config") or body.get("output_format")
    if oc is not None:
        fmt = oc.get("format", oc) if isinstance(oc, Mapping) else None
        if not isinstance(fmt, Mapping) or fmt.get("type") != "json_schema" or \
                not isinstance(fmt.get("schema"), Mapping):
            raise RequestError(400, "output_config.format must be {'type': 'json_schema', "
                               "'schema': {...}}", param="output_config")
        grammar = _grammar(engine, fmt["schema"], "output_config")
    req = _Request(engine, messages, max_tokens=max_tokens,
                   temperature=_number(body, "temperature", 1.0, 0.0, 1.0),
                   top_p=_number(body, "top_p", 1.0, 0.0, 1.0, low_open=True),
                   top_k=_integer(body, "top_k", 1, engine.tokenizer.vocab_size) or 0,
                   seed=None, stop=_stops(body.get("stop_sequences"), "stop_sequences"),
                   n=1, grammar=grammar)
    return req, {"stream": stream}


# -- the app --------------------------------------------------------------------------------------

def _sse(data: Any, event: str | None = None) -> str:
    text = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return (f"event: {event}\n" if event else "") + f"data: {text}\n\n"


def _dump(obj: Any) -> dict:
    return obj.model_dump(mode="json", exclude_unset=True)


def create_app(engine: Engine, *, model_name: str = "jaxllm", api_key: str | None = None,
               created: int | None = None) -> Any:
    """The FastAPI application serving ``engine`` under ``model_name``; requests need
    ``api_key`` (if one is set) as ``Authorization: Bearer KEY`` or ``x-api-key: KEY``."""
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, StreamingResponse
    from starlette.exceptions import HTTPException

    created = int(time.time()) if created is None else created
    app = FastAPI(title="jaxllm serve", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.engine = engine
    app.state.model_name = model_name

    def anthropic_route(request: Request) -> bool:
        return request.url.path.rstrip("/").endswith("/messages") or \
            "anthropic-version" in request.headers

    def error_response(request: Request, err: RequestError) -> JSONResponse:
        if anthropic_route(request):
            status = 529 if isinstance(err, Overloaded) else err.status
            return JSONResponse(anthropic_error_body(status, err.message), status_code=status)
        return JSONResponse(openai_error_body(err.status, err.message, err.param, err.code),
                            status_code=err.status)

    @app.exception_handler(RequestError)
    async def _request_error(request: Request, err: RequestError):
        return error_response(request, err)

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, err: HTTPException):
        status = err.status_code if err.status_code in (404, 405) else 400
        message = (f"no route {request.method} {request.url.path}" if status in (404, 405)
                   else str(err.detail))
        return error_response(request, RequestError(status, message))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, err: RequestValidationError):
        return error_response(request, RequestError(400, str(err)))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, err: Exception):  # a bug: say so, keep serving
        return error_response(request, RequestError(500, f"internal error: {err!r}"))

    def check_key(request: Request) -> None:
        if api_key is None:
            return
        given = request.headers.get("x-api-key")
        auth = request.headers.get("authorization", "")
        if given is None and auth.lower().startswith("bearer "):
            given = auth[7:].strip()
        if not given or not hmac.compare_digest(given.encode(), api_key.encode()):
            raise RequestError(401, "invalid or missing API key (send it as 'Authorization: "
                               "Bearer KEY' or 'x-api-key: KEY')", code="invalid_api_key")

    async def read_json(request: Request) -> Any:
        raw = await request.body()
        try:
            return json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise RequestError(400, f"the request body is not valid JSON: {e}") from None

    async def parse(fn: Callable, request: Request) -> tuple[_Request, dict]:
        check_key(request)
        body = await read_json(request)
        # Compiling a schema may take a moment: off the event loop.
        from starlette.concurrency import run_in_threadpool

        return await run_in_threadpool(fn, engine, body, model_name)

    def start(req: _Request) -> tuple[list[Job], asyncio.Queue]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()

        def emit(event: tuple) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, event)
            except RuntimeError:  # the event loop is gone
                pass

        jobs = req.jobs(emit)
        engine.submit(jobs)
        return jobs, queue

    async def events(request: Request, jobs: list[Job], queue: asyncio.Queue):
        """Events of ``jobs`` until all are done; cancels them if the client goes away."""
        finished: set[int] = set()
        try:
            while len(finished) < len(jobs):
                try:
                    event = await asyncio.wait_for(queue.get(), timeout=1.0)
                except TimeoutError:
                    if await request.is_disconnected():
                        return
                    continue
                if event[0] in ("done", "error"):
                    finished.add(event[1])
                yield event
        finally:  # the client went away (or the stream was closed): stop the rest
            engine.cancel([j for j in jobs if j.index not in finished])

    @app.get("/v1/models")
    async def models(request: Request):
        check_key(request)
        if "anthropic-version" in request.headers:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(created))
            return {"data": [{"id": model_name, "type": "model", "display_name": model_name,
                              "created_at": stamp}],
                    "has_more": False, "first_id": model_name, "last_id": model_name}
        return {"object": "list", "data": [{"id": model_name, "object": "model",
                                            "created": created, "owned_by": "jaxllm"}]}

    @app.get("/v1/models/{model_id}")
    async def model_info(model_id: str, request: Request):
        check_key(request)
        if model_id != model_name:
            raise RequestError(404, f"The model {model_id!r} does not exist", param="model",
                               code="model_not_found")
        return {"id": model_name, "object": "model", "created": created, "owned_by": "jaxllm"}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        from openai.types.chat import ChatCompletion, ChatCompletionChunk

        req, opts = await parse(parse_openai, request)
        jobs, queue = start(req)
        rid = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        now = int(time.time())
        finish_map = {"stop": "stop", "stop_sequence": "stop", "length": "length"}

        def usage(done: dict) -> dict:
            out = sum(d["completion_tokens"] for d in done.values())
            return {"prompt_tokens": len(req.prompt), "completion_tokens": out,
                    "total_tokens": len(req.prompt) + out}

        if not opts["stream"]:
            texts = [""] * req.n
            done: dict[int, dict] = {}
            async for kind, i, data in events(request, jobs, queue):
                if kind == "delta":
                    texts[i] += data
                elif kind == "done":
                    done[i] = data
                else:
                    raise RequestError(500, data)
            if len(done) < req.n:  # client gone
                return JSONResponse({}, status_code=499)
            resp = ChatCompletion(
                id=rid, object="chat.completion", created=now, model=model_name,
                choices=[{"index": i, "finish_reason": finish_map[done[i]["finish_reason"]],
                          "logprobs": None,
                          "message": {"role": "assistant", "content": texts[i]}}
                         for i in range(req.n)],
                usage=usage(done))
            return JSONResponse(_dump(resp))

        def chunk(choices: list, usage_: dict | None = None) -> str:
            c = ChatCompletionChunk(id=rid, object="chat.completion.chunk", created=now,
                                    model=model_name, choices=choices)
            d = _dump(c)
            if opts["include_usage"]:
                d["usage"] = usage_
            return _sse(d)

        async def stream():
            done: dict[int, dict] = {}
            for i in range(req.n):
                yield chunk([{"index": i, "delta": {"role": "assistant", "content": ""},
                              "finish_reason": None}])
            async for kind, i, data in events(request, jobs, queue):
                if kind == "delta":
                    yield chunk([{"index": i, "delta": {"content": data},
                                  "finish_reason": None}])
                elif kind == "done":
                    done[i] = data
                    yield chunk([{"index": i, "delta": {},
                                  "finish_reason": finish_map[data["finish_reason"]]}])
                else:
                    yield _sse(openai_error_body(500, data))
                    return
            if opts["include_usage"]:
                yield chunk([], usage(done))
            yield _sse("[DONE]")

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})

    @app.post("/v1/messages")
    async def messages(request: Request):
        from anthropic.types import Message

        req, opts = await parse(parse_anthropic, request)
        jobs, queue = start(req)
        mid = f"msg_{uuid.uuid4().hex[:24]}"
        stop_map = {"stop": "end_turn", "stop_sequence": "stop_sequence",
                    "length": "max_tokens"}

        def message(text: str | None, done: dict | None) -> dict:
            return _dump(Message(
                id=mid, type="message", role="assistant", model=model_name,
                content=[] if text is None else [{"type": "text", "text": text}],
                stop_reason=stop_map[done["finish_reason"]] if done else None,
                stop_sequence=done["stop_sequence"] if done else None,
                usage={"input_tokens": len(req.prompt),
                       "output_tokens": done["completion_tokens"] if done else 0}))

        if not opts["stream"]:
            text, done = "", None
            async for kind, _, data in events(request, jobs, queue):
                if kind == "delta":
                    text += data
                elif kind == "done":
                    done = data
                else:
                    raise RequestError(500, data)
            if done is None:
                return JSONResponse({}, status_code=499)
            return JSONResponse(message(text, done))

        async def stream():
            yield _sse({"type": "message_start", "message": message(None, None)},
                       "message_start")
            yield _sse({"type": "content_block_start", "index": 0,
                        "content_block": {"type": "text", "text": ""}}, "content_block_start")
            async for kind, _, data in events(request, jobs, queue):
                if kind == "delta":
                    yield _sse({"type": "content_block_delta", "index": 0,
                                "delta": {"type": "text_delta", "text": data}},
                               "content_block_delta")
                elif kind == "done":
                    yield _sse({"type": "content_block_stop", "index": 0},
                               "content_block_stop")
                    yield _sse({"type": "message_delta",
                                "delta": {"stop_reason": stop_map[data["finish_reason"]],
                                          "stop_sequence": data["stop_sequence"]},
                                "usage": {"output_tokens": data["completion_tokens"]}},
                               "message_delta")
                    yield _sse({"type": "message_stop"}, "message_stop")
                else:
                    yield _sse(anthropic_error_body(500, data), "error")
                    return

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})

    return app


# -- running it: in the foreground (the CLI) or in the background (a notebook) ------------------

class BackgroundServer:
    """A server running in a thread of this process (a notebook's, Colab's too): ``url`` is
    its root (the Anthropic client's ``base_url``), ``openai_base_url`` is ``url + "/v1"``.
    :meth:`stop` shuts it down; it is also a context manager."""

    def __init__(self, app: Any, engine: Engine, host: str, port: int) -> None:
        import uvicorn

        self.engine, self.host = engine, host
        self._sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, port))
        self.port = self._sock.getsockname()[1]
        config = uvicorn.Config(app, log_level="warning", lifespan="off",
                                timeout_graceful_shutdown=2)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run,
                                        kwargs={"sockets": [self._sock]},
                                        name="jaxllm-uvicorn", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.02)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def openai_base_url(self) -> str:
        return self.url + "/v1"

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self.engine.stop()
        self._sock.close()

    def __enter__(self) -> "BackgroundServer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"BackgroundServer({self.url}, model={self._server.config.app.state.model_name!r})"


def _check_host_key(host: str, api_key: str | None) -> None:
    if not is_loopback(host) and not api_key:
        raise ValueError(f"host={host!r} is reachable from other machines; set an API key "
                         f"(--api-key or the {API_KEY_ENV} environment variable) to listen "
                         "there, or use 127.0.0.1")


def start_server(model: Any, tokenizer: Any, *, model_name: str = "jaxllm",
                 host: str = "127.0.0.1", port: int = 0, api_key: str | None = None,
                 max_batch: int = 16, max_queue: int = 64,
                 warm_up: bool = True) -> BackgroundServer:
    """Serve ``model`` in the background of this process and return once it accepts
    requests. ``port=0`` picks a free port. ``warm_up`` compiles the one-row programs first,
    so the first request is not slow."""
    api_key = api_key or os.environ.get(API_KEY_ENV) or None
    _check_host_key(host, api_key)
    engine = Engine(model, tokenizer, max_batch=max_batch, max_queue=max_queue)
    if warm_up:
        engine.warm_up()
    app = create_app(engine, model_name=model_name, api_key=api_key)
    return BackgroundServer(app, engine, host, port)


def serve_forever(model: Any, tokenizer: Any, *, model_name: str, host: str, port: int,
                  api_key: str | None, max_batch: int = 16, max_queue: int = 64) -> None:
    """The ``jaxllm serve`` command: serve in the foreground until interrupted."""
    import uvicorn

    _check_host_key(host, api_key)
    engine = Engine(model, tokenizer, max_batch=max_batch, max_queue=max_queue)
    engine.warm_up()
    app = create_app(engine, model_name=model_name, api_key=api_key)
    try:
        uvicorn.run(app, host=host, port=port, log_level="info")
    finally:
        engine.stop()
