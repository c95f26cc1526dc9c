"""An HTTP server for text completion: a subset of OpenAI's /v1/completions, with streaming.

No shape letters: a request is one prompt, one row of token ids.

    POST /v1/completions  {"prompt": "...", "max_tokens": 16, "temperature": 0, "top_p", "top_k", "min_p",
                           "repetition_penalty", "stop": "..." or [...], "seed", "stream": false}
    GET  /v1/models, GET /health

Standard library only (http.server). The model generates for one request at a time (a lock): a
decode step at batch 1 is bound by reading the weights, and requests that would share a batch are
not gathered here. Other requests (health checks, a queue of completions) are served by their own
threads meanwhile. Stop strings are matched on the text: a streamed piece is held back while it
could still be the start of one, so a stop string is never sent, even across tokens. Bad requests
get status 400 and {"error": {"message": ...}} saying what was wrong.
"""
from __future__ import annotations

import json
import select
import socket
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import torch

from .tokenizers import end_of_text_ids, stream_text

MAX_BODY = 1 << 20  # bytes of a request body
MAX_STOPS, MAX_STOP_CHARS = 16, 256
DEFAULT_MAX_TOKENS_LIMIT = 4096  # the most new tokens a request may ask for (make_server's max_tokens_limit)
_NUMBERS = (int, float)
# field: (accepted types, default); None: absent means the library's default
FIELDS = {"prompt": (str, None), "max_tokens": (int, 16), "temperature": (_NUMBERS, 0.0), "top_p": (_NUMBERS, None),
          "top_k": (int, None), "min_p": (_NUMBERS, None), "repetition_penalty": (_NUMBERS, 1.0),
          "stop": ((str, list), None), "seed": (int, None), "stream": (bool, False), "model": (str, None),
          "n": (int, 1)}


class BadRequest(ValueError):
    """A request the server refuses, with status 400 unless said otherwise (the message says why)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def parse_request(body: bytes) -> dict:
    """The JSON body of a completion request -> its fields with defaults; BadRequest if malformed."""
    try:
        req = json.loads(body)
    except (ValueError, RecursionError) as err:  # JSONDecodeError, UnicodeDecodeError, an int of > 4300 digits;
        raise BadRequest(f"the body is not JSON: {err}") from None  # arrays or objects nested too deep
    if not isinstance(req, dict):
        raise BadRequest(f"the body must be a JSON object, got {type(req).__name__}")
    unknown = sorted(set(req) - set(FIELDS))
    if unknown:
        raise BadRequest(f"unsupported field(s) {', '.join(unknown)}; this server takes {', '.join(FIELDS)}")
    out = {}
    for name, (types, default) in FIELDS.items():
        value = req.get(name)
        value = default if value is None else value  # JSON null: the default, as OpenAI's clients send it
        # JSON true is not a number here, nor 1.0 a count
        if value is not None and (not isinstance(value, types) or (isinstance(value, bool) and types is not bool)):
            raise BadRequest(f"{name} must be {_type_name(types)}, got {json.dumps(value)}")
        out[name] = value
    if out["prompt"] is None:
        raise BadRequest("prompt is required (a string)")
    if out["max_tokens"] < 0:
        raise BadRequest(f"max_tokens must be >= 0, got {out['max_tokens']}")
    if out["seed"] is not None and not 0 <= out["seed"] < 2 ** 63:
        raise BadRequest(f"seed must be in [0, 2^63), got {out['seed']}")
    if out["n"] != 1:
        raise BadRequest(f"n must be 1 (one completion a request), got {out['n']}")
    stops = [out["stop"]] if isinstance(out["stop"], str) else (out["stop"] or [])
    if not all(isinstance(s, str) and s for s in stops):
        raise BadRequest(f"stop must be a non-empty string or a list of them, got {json.dumps(out['stop'])}")
    if len(stops) > MAX_STOPS or any(len(s) > MAX_STOP_CHARS for s in stops):
        raise BadRequest(f"stop takes at most {MAX_STOPS} strings of at most {MAX_STOP_CHARS} characters "
                         "(a stream holds back as many characters as the longest)")
    out["stop"] = stops
    return out


def _type_name(types) -> str:
    names = {str: "a string", int: "an integer", float: "a number", bool: "true or false", list: "a list"}
    types = types if isinstance(types, tuple) else (types,)
    return " or ".join(dict.fromkeys(names[t] for t in types))


class Completer:
    """Generates completions for one model and tokenizer, one request at a time."""

    def __init__(self, model, tokenizer, model_name: str, cuda_graph: bool = False,
                 max_tokens_limit: int = DEFAULT_MAX_TOKENS_LIMIT):
        self.model, self.tokenizer, self.model_name, self.cuda_graph = model, tokenizer, model_name, cuda_graph
        self.max_tokens_limit = max_tokens_limit
        self.device = next(model.parameters()).device
        self.eos = end_of_text_ids(tokenizer, model.config)  # the tokenizer's and the config's
        self.lock = threading.Lock()

    def pieces(self, req: dict):
        """Yield (text, None, None) pieces, then the last (text, finish_reason, usage); BadRequest before the
        first if the request cannot run. finish_reason: "stop" (eos or a stop string) or "length"."""
        import mambakit
        if req["max_tokens"] > self.max_tokens_limit:
            raise BadRequest(f"max_tokens is {req['max_tokens']}; this server makes at most {self.max_tokens_limit} "
                             "new tokens a request (mambakit serve --max-tokens-limit)")
        try:
            ids = self.tokenizer.encode(req["prompt"])
        except UnicodeError as err:  # a lone surrogate (JSON "\ud800") has no UTF-8 form
            raise BadRequest(f"the prompt is not valid Unicode text: {err}") from None
        if not ids:
            raise BadRequest("the prompt encodes to no tokens; give a non-empty prompt")
        gen = None
        if req["seed"] is not None:
            gen = torch.Generator(device=self.device).manual_seed(req["seed"])
        with self.lock:
            try:
                tokens = mambakit.stream(
                    self.model, torch.tensor([ids], device=self.device), req["max_tokens"],
                    temperature=req["temperature"], top_k=req["top_k"], top_p=req["top_p"], min_p=req["min_p"],
                    repetition_penalty=req["repetition_penalty"], eos_token_id=self.eos or None,
                    generator=gen, cuda_graph=self.cuda_graph)
            except ValueError as err:  # the library's checks: sampling values, lengths, limits
                raise BadRequest(str(err)) from None
            try:
                yield from self._text(tokens, ids, req["stop"])
            finally:
                tokens.close()  # also when the client left half-way: the decoder is freed

    def _text(self, tokens, ids, stops):
        for piece, finish, n in stream_text(self.tokenizer, tokens, ids, stops, self.eos):
            usage = None if finish is None else {"prompt_tokens": len(ids), "completion_tokens": n,
                                                 "total_tokens": len(ids) + n}
            yield piece, finish, usage


class Handler(BaseHTTPRequestHandler):
    server_version = "mambakit"
    timeout = 60  # seconds a client may take to send its request: a stalled one does not hold a thread forever
    completer: Completer  # set on the class made by make_server
    quiet = False

    def log_message(self, fmt, *args):  # noqa: D102 - one line a request on stderr, unless quiet
        if not self.quiet:
            super().log_message(fmt, *args)

    def _json(self, status: int, payload: dict) -> None:
        body = json.dumps(payload).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client left before its answer: nobody to tell

    @property
    def route(self) -> str:
        return self.path.split("?", 1)[0].rstrip("/") or "/"

    def _client_gone(self) -> bool:
        """Whether the client closed its side (a non-streamed request has nothing to write until the end)."""
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    def _error(self, status: int, message: str) -> None:
        self._json(status, {"error": {"message": message, "type": "invalid_request_error" if status == 400 else
                                      "error", "code": status}})

    def _body(self) -> bytes:
        """The request body, by Content-Length or in chunks (Transfer-Encoding: chunked); at most MAX_BODY."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            body = b""
            while True:
                try:
                    size = int(self.rfile.readline(64).split(b";")[0], 16)
                except ValueError:
                    raise BadRequest("a malformed chunk size in the chunked body") from None
                if size == 0:
                    while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):  # trailers
                        pass
                    return body
                if size < 0 or len(body) + size > MAX_BODY:
                    raise BadRequest(f"the body is over {MAX_BODY} bytes", status=413)
                body += self.rfile.read(size)
                self.rfile.readline(8)  # the CRLF after the chunk
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            raise BadRequest("a Content-Length header (or Transfer-Encoding: chunked) is required",
                             status=411) from None
        if length < 0:
            raise BadRequest(f"Content-Length must be >= 0, got {length}")
        if length > MAX_BODY:
            raise BadRequest(f"the body is {length} bytes; at most {MAX_BODY}", status=413)
        return self.rfile.read(length)

    def _not_allowed(self):
        allowed = "POST" if self.route == "/v1/completions" else "GET"
        self._error(405, f"{self.command} is not served on {self.route}; use {allowed}")

    do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _not_allowed  # noqa: N815

    def do_GET(self):  # noqa: N802 - http.server's name
        if self.route == "/health":
            self._json(200, {"status": "ok"})
        elif self.route == "/v1/completions":
            self._not_allowed()
        elif self.route == "/v1/models":
            self._json(200, {"object": "list", "data": [{"id": self.completer.model_name, "object": "model",
                                                         "owned_by": "mambakit"}]})
        else:
            self._error(404, f"no such path {self.path!r}; try POST /v1/completions, GET /v1/models, GET /health")

    def do_POST(self):  # noqa: N802
        if self.route != "/v1/completions":
            self._error(404 if self.route not in ("/health", "/v1/models") else 405,
                        f"no POST on {self.path!r}; completions are POST /v1/completions")
            return
        try:
            body = self._body()
        except TimeoutError:
            self._error(408, f"the body did not arrive within {self.timeout} s")
            return
        except BadRequest as err:
            self._error(err.status, str(err))
            return
        try:
            req = parse_request(body)
            pieces = self.completer.pieces(req)
            first = next(pieces)  # errors in the request surface here, before any byte is sent
        except BadRequest as err:
            self._error(err.status, str(err))
            return
        except Exception as err:  # noqa: BLE001 - the model failed: say so rather than drop the connection
            self._error(500, f"generation failed: {type(err).__name__}: {err}")
            return
        meta = {"id": f"cmpl-{uuid.uuid4().hex[:24]}", "object": "text_completion", "created": int(time.time()),
                "model": self.completer.model_name}
        if req["stream"]:
            self._stream(meta, first, pieces)
            return
        text, finish, usage = first
        try:
            for i, (piece, finish, usage) in enumerate(pieces):
                text += piece
                if i % 16 == 15 and self._client_gone():  # nobody waits for the answer: free the model
                    pieces.close()
                    # A client that only shut its sending side (a half-close) reads the same and still
                    # waits: tell it why (to a client that left, this goes nowhere).
                    self._error(400, "the client closed its side of the connection before the answer, which "
                                     "reads as leaving: generation stopped; keep the connection open until "
                                     "the answer arrives, or ask with \"stream\": true")
                    return
        except Exception as err:  # noqa: BLE001 - the model failed after the first piece: say so, as above
            self._error(500, f"generation failed: {type(err).__name__}: {err}")
            return
        self._json(200, {**meta, "choices": [{"index": 0, "text": text, "finish_reason": finish, "logprobs": None}],
                         "usage": usage})

    def _stream(self, meta: dict, first, pieces) -> None:
        """Server-sent events: a chunk per piece, the last with its finish_reason and usage, then [DONE]."""
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()
        try:
            for text, finish, usage in _chain(first, pieces):
                chunk = {**meta, "choices": [{"index": 0, "text": text, "finish_reason": finish, "logprobs": None}]}
                if usage is not None:
                    chunk["usage"] = usage
                self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                self.wfile.flush()
            self.wfile.write(b"data: [DONE]\n\n")
        except (BrokenPipeError, ConnectionResetError):
            pieces.close()  # the client left: stop generating (frees the model for the next request)
        except Exception as err:  # noqa: BLE001 - after the headers: the error goes in the stream
            pieces.close()
            error = {"error": {"message": f"generation failed: {type(err).__name__}: {err}", "code": 500}}
            self.wfile.write(f"data: {json.dumps(error)}\n\n".encode())


def _chain(first, rest):
    yield first
    yield from rest


def make_server(model, tokenizer, host: str = "127.0.0.1", port: int = 8000, model_name: str = "mambakit",
                cuda_graph: bool = False, quiet: bool = False,
                max_tokens_limit: int = DEFAULT_MAX_TOKENS_LIMIT) -> ThreadingHTTPServer:
    """A server for `model` (call serve_forever(); port 0 picks a free port: server.server_address)."""
    completer = Completer(model, tokenizer, model_name, cuda_graph, max_tokens_limit)
    handler = type("MambakitHandler", (Handler,), {"completer": completer, "quiet": quiet})
    server_class = _IPv6Server if ":" in host else ThreadingHTTPServer  # "::1", "::": an IPv6 address
    server = server_class((host, port), handler)
    server.daemon_threads = True
    return server


class _IPv6Server(ThreadingHTTPServer):
    address_family = socket.AF_INET6
