"""mambakit/serve.py: completions over HTTP on a tiny model, against mambakit.generate; streaming,
stop strings, seeds, bad requests and concurrent clients.

No shape letters: each request is one prompt.
"""
import json
import threading
import urllib.error
import urllib.request

import pytest
import torch

import mambakit
from mambakit.serve import make_server
from mambakit.tokenizers import ByteTokenizer


@pytest.fixture(scope="module")
def served():
    torch.manual_seed(0)
    tok = ByteTokenizer()
    model = mambakit.LM(mambakit.ModelConfig.from_preset("mamba2-tiny", vocab_size=tok.vocab_size)).eval()
    server = make_server(model, tok, port=0, model_name="tiny", quiet=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield model, tok, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def post(url, payload, raw: bytes | None = None):
    data = raw if raw is not None else json.dumps(payload).encode()
    req = urllib.request.Request(url + "/v1/completions", data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def events(body: str) -> list:
    lines = [line[len("data: "):] for line in body.split("\n\n") if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [json.loads(line) for line in lines[:-1]]


def greedy_text(model, tok, prompt, n):
    ids = torch.tensor([tok.encode(prompt)])
    return tok.decode(mambakit.generate(model, ids, n)[0, ids.shape[1]:].tolist())


def test_completion_is_generate_greedy(served):
    model, tok, url = served
    status, body = post(url, {"prompt": "Hello", "max_tokens": 12})
    out = json.loads(body)
    assert status == 200 and out["object"] == "text_completion" and out["model"] == "tiny"
    assert out["choices"][0]["text"] == greedy_text(model, tok, "Hello", 12)
    assert out["choices"][0]["finish_reason"] == "length"
    assert out["usage"] == {"prompt_tokens": 5, "completion_tokens": 12, "total_tokens": 17}


def test_stream_sends_the_same_text_in_pieces(served):
    model, tok, url = served
    status, body = post(url, {"prompt": "Hello", "max_tokens": 12, "stream": True})
    chunks = events(body)
    assert status == 200 and len(chunks) > 1
    assert "".join(c["choices"][0]["text"] for c in chunks) == greedy_text(model, tok, "Hello", 12)
    assert [c["choices"][0]["finish_reason"] for c in chunks][-1] == "length"
    assert chunks[-1]["usage"]["completion_tokens"] == 12


@pytest.mark.parametrize("stream", [False, True])
def test_stop_string_ends_the_text_and_is_never_sent(served, stream):
    model, tok, url = served
    free = greedy_text(model, tok, "Hello", 24)
    stop = next(free[i:i + 2] for i in range(3, len(free) - 2) if "\ufffd" not in free[i:i + 2])
    status, body = post(url, {"prompt": "Hello", "max_tokens": 24, "stop": ["never there", stop], "stream": stream})
    if stream:
        chunks = events(body)
        text, finish = "".join(c["choices"][0]["text"] for c in chunks), chunks[-1]["choices"][0]["finish_reason"]
    else:
        choice = json.loads(body)["choices"][0]
        text, finish = choice["text"], choice["finish_reason"]
    assert status == 200 and finish == "stop"
    assert text == free[:free.index(stop)] and stop not in text


def test_seed_makes_sampling_reproducible(served):
    _, _, url = served
    ask = lambda seed: json.loads(post(url, {"prompt": "Hi", "max_tokens": 16, "temperature": 1.0,  # noqa: E731
                                             "seed": seed})[1])["choices"][0]["text"]
    assert ask(3) == ask(3) != ask(4)


@pytest.mark.parametrize("payload,words", [
    ({"max_tokens": 3}, "prompt is required"),
    ({"prompt": "a", "max_tokens": -1}, "max_tokens must be >= 0"),
    ({"prompt": "a", "max_tokens": 2.5}, "max_tokens must be an integer"),
    ({"prompt": "a", "temperature": True}, "temperature must be an integer or a number"),
    ({"prompt": "a", "top_p": 2}, "top_p"),
    ({"prompt": "a", "n": 2}, "n must be 1"),
    ({"prompt": "a", "logprobs": 5}, "unsupported field(s) logprobs"),
    ({"prompt": "a", "stop": [""]}, "stop must be a non-empty string"),
    ({"prompt": "a", "stop": ["x" * 300]}, "at most 256 characters"),
    ({"prompt": "a", "seed": 10 ** 23}, "seed must be in [0, 2^63)"),
    ({"prompt": "\ud800"}, "not valid Unicode"),
    ({"prompt": "a", "max_tokens": 5000}, "at most 4096 new tokens"),
    ({"prompt": ""}, "encodes to no tokens"),
    ([1, 2], "must be a JSON object"),
])
def test_bad_requests_say_what_is_wrong(served, payload, words):
    status, body = post(served[2], payload)
    assert status == 400 and words in json.loads(body)["error"]["message"], body


def test_malformed_json_and_paths(served):
    url = served[2]
    status, body = post(url, None, raw=b"{not json")
    assert status == 400 and "not JSON" in body
    with urllib.request.urlopen(url + "/health", timeout=10) as resp:
        assert json.loads(resp.read()) == {"status": "ok"}
    with urllib.request.urlopen(url + "/v1/models", timeout=10) as resp:
        assert json.loads(resp.read())["data"][0]["id"] == "tiny"
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(url + "/nope", timeout=10)
    assert err.value.code == 404


def test_concurrent_clients_get_their_own_answers(served):
    model, tok, url = served
    prompts = ["Hello", "Goodbye", "Mamba", "State"]
    got = {}

    def ask(p):
        got[p] = json.loads(post(url, {"prompt": p, "max_tokens": 8})[1])["choices"][0]["text"]

    threads = [threading.Thread(target=ask, args=(p,)) for p in prompts]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert got == {p: greedy_text(model, tok, p, 8) for p in prompts}


def test_cli_names_a_port_in_use(capsys):
    import socket

    from mambakit.cli import main
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        rc = main(["serve", "--model", "mamba2-tiny", "--device", "cpu", "--port", str(taken.getsockname()[1])])
    assert rc == 2 and "cannot listen on 127.0.0.1:" in capsys.readouterr().err


def test_a_prompt_past_the_context_limit_is_refused():
    from generation_models import make_model

    from mambakit.serve import BadRequest, Completer, parse_request
    completer = Completer(make_model("hybrid", max_seqlen=16), ByteTokenizer(), "limited")
    with pytest.raises(BadRequest, match="limit of 16"):
        next(completer.pieces(parse_request(json.dumps({"prompt": "x" * 12, "max_tokens": 8}).encode())))
    assert not completer.lock.locked()  # the refused request left the model free


def test_nulls_mean_defaults_and_tiny_temperatures_are_greedy(served):
    model, tok, url = served
    status, body = post(url, {"prompt": "Hello", "max_tokens": None, "temperature": None, "n": None,
                              "stop": None})
    assert status == 200 and json.loads(body)["choices"][0]["text"] == greedy_text(model, tok, "Hello", 16)
    status, body = post(url, {"prompt": "Hello", "max_tokens": 6, "temperature": 1e-300})
    assert status == 200 and json.loads(body)["choices"][0]["text"] == greedy_text(model, tok, "Hello", 6)


def _raw(url, request: bytes) -> bytes:
    import socket
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(request)
        sock.shutdown(socket.SHUT_WR)
        return b"".join(iter(lambda: sock.recv(65536), b""))


def test_methods_paths_and_lengths(served):
    url = served[2]
    assert b" 405 " in _raw(url, b"PUT /v1/completions HTTP/1.1\r\nContent-Length: 0\r\n\r\n").split(b"\r\n")[0]
    assert b" 405 " in _raw(url, b"GET /v1/completions HTTP/1.1\r\n\r\n").split(b"\r\n")[0]
    assert b" 400 " in _raw(url, b"POST /v1/completions HTTP/1.1\r\nContent-Length: -1\r\n\r\n").split(b"\r\n")[0]
    assert b" 411 " in _raw(url, b"POST /v1/completions HTTP/1.1\r\n\r\n").split(b"\r\n")[0]
    body = json.dumps({"prompt": "Hello", "max_tokens": 3}).encode()
    chunked = b"POST /v1/completions HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n" + b"".join(
        b"%x\r\n%s\r\n" % (len(part), part) for part in (body[:7], body[7:])) + b"0\r\n\r\n"
    reply = _raw(url, chunked)
    assert b" 200 " in reply.split(b"\r\n")[0] and b'"completion_tokens": 3' in reply
    with urllib.request.urlopen(url + "/health/?probe=1", timeout=10) as resp:  # query and trailing slash
        assert json.loads(resp.read()) == {"status": "ok"}


def test_a_client_that_leaves_frees_the_model():
    import socket
    import time
    torch.manual_seed(0)
    tok = ByteTokenizer()
    model = mambakit.LM(mambakit.ModelConfig.from_preset("mamba2-tiny", vocab_size=tok.vocab_size)).eval()
    server = make_server(model, tok, port=0, quiet=True, max_tokens_limit=10 ** 6)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        body = json.dumps({"prompt": "a", "max_tokens": 10 ** 6}).encode()
        with socket.create_connection(("127.0.0.1", server.server_address[1])) as sock:
            sock.sendall(b"POST /v1/completions HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
            time.sleep(0.5)  # generating now, for a million tokens
        t0 = time.perf_counter()
        status, out = post(url, {"prompt": "b", "max_tokens": 4})
        assert status == 200 and time.perf_counter() - t0 < 20  # not after a million tokens
    finally:
        server.shutdown()
        server.server_close()


def test_stream_decoder_lets_a_broken_character_go():
    dec = ByteTokenizer().stream_decoder()
    out = "".join(dec.push(0xFF) for _ in range(40))  # never a whole UTF-8 character
    assert len(out) >= 30 and set(out) == {"\ufffd"}


def test_an_ipv6_host_is_served():
    tok = ByteTokenizer()
    model = mambakit.LM(mambakit.ModelConfig.from_preset("mamba2-tiny", vocab_size=tok.vocab_size)).eval()
    try:
        server = make_server(model, tok, host="::1", port=0, quiet=True)
    except OSError as err:  # a machine without IPv6 loopback
        pytest.skip(f"no IPv6 loopback here: {err}")
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with urllib.request.urlopen(f"http://[::1]:{server.server_address[1]}/health", timeout=10) as resp:
            assert json.loads(resp.read()) == {"status": "ok"}
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("raw", [b"[" * 100_000 + b"]" * 100_000,  # nested deeper than json can recurse
                                 b'{"prompt": "a", "max_tokens": ' + b"9" * 5000 + b"}"])  # an int past Python's limit
def test_json_that_python_cannot_read_is_a_bad_request(served, raw):
    status, body = post(served[2], None, raw=raw)
    assert status == 400 and "the body is not JSON" in json.loads(body)["error"]["message"], body


def test_a_generation_that_fails_half_way_is_answered(monkeypatch):
    """A non-streamed request whose model fails after its first piece gets a 500 saying why, as one that
    fails at once does, rather than a dropped connection; the model is free for the next request."""
    tok = ByteTokenizer()
    model = mambakit.LM(mambakit.ModelConfig.from_preset("mamba2-tiny", vocab_size=tok.vocab_size)).eval()
    calls, normalize = [0], model.norm_f.normalize_residual

    def failing(x):  # once per forward: the prefill, then each decode step
        calls[0] += 1
        if calls[0] == 12:  # past the first piece (a byte run is let go after at most 8 tokens)
            raise RuntimeError("out of memory (simulated)")
        return normalize(x)
    monkeypatch.setattr(model.norm_f, "normalize_residual", failing)
    server = make_server(model, tok, port=0, quiet=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        status, body = post(url, {"prompt": "Hello", "max_tokens": 20})
        assert status == 500 and "generation failed: RuntimeError: out of memory (simulated)" in body, body
        status, body = post(url, {"prompt": "Hello", "max_tokens": 3})
        assert status == 200 and json.loads(body)["usage"]["completion_tokens"] == 3
    finally:
        server.shutdown()
        server.server_close()


def test_a_client_that_half_closes_is_told_why_it_got_no_text(served):
    """A client that shuts its sending side after the request cannot be told from one that left (both
    read as end of file), so its generation stops too; it gets a reason rather than an empty reply.
    A streamed answer, written as it goes, needs no such check and reaches it whole."""
    body = json.dumps({"prompt": "Hello", "max_tokens": 40}).encode()
    reply = _raw(served[2], b"POST /v1/completions HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    assert reply, "no answer at all"
    status, _, payload = reply.partition(b"\r\n")[0], None, reply.partition(b"\r\n\r\n")[2]
    assert b" 400 " in status and "closed its side of the connection" in json.loads(payload)["error"]["message"]
    streamed = json.dumps({"prompt": "Hello", "max_tokens": 40, "stream": True}).encode()
    reply = _raw(served[2], b"POST /v1/completions HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % len(streamed) + streamed)
    assert b" 200 " in reply.partition(b"\r\n")[0] and reply.endswith(b"data: [DONE]\n\n")  # a stream is not cut


def test_every_end_of_text_id_of_the_checkpoint_ends_a_completion(monkeypatch):
    # a config listing several end-of-text ids (Llama 3 instruct: end_of_text, eom, eot): the server
    # stops at any of them, as `mambakit generate` does, not only at the tokenizer's (here: none)
    from mambakit.serve import Completer, parse_request
    config = mambakit.ModelConfig.from_preset("mamba2-tiny", token_ids={"eos_token_id": [7, 9]})
    completer = Completer(mambakit.LM(config), ByteTokenizer(), "tiny")
    seen = {}

    def fake_stream(model, input_ids, max_new_tokens, **kw):  # the model "writes" h, i, id 9, h
        seen["eos"] = kw["eos_token_id"]
        for t in [ord("h"), ord("i"), 9, ord("h")]:
            yield torch.tensor([t])
    monkeypatch.setattr(mambakit, "stream", fake_stream)
    pieces = list(completer.pieces(parse_request(json.dumps({"prompt": "x", "max_tokens": 8}).encode())))
    assert seen["eos"] == [7, 9]
    assert "".join(p for p, _, _ in pieces) == "hi" and pieces[-1][1] == "stop"
