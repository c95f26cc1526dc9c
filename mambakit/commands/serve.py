"""Serve completions over HTTP: mambakit serve --model PATH|PRESET [--host H --port P].

No shape letters: each request is one prompt.

POST /v1/completions takes a subset of OpenAI's completion API (prompt, max_tokens, temperature,
top_p, top_k, min_p, repetition_penalty, stop, seed, stream); GET /v1/models and GET /health answer
too. See mambakit/serve.py. A preset name serves random weights (noise, for trying the machinery).
"""
from __future__ import annotations

import argparse
import sys

from ..serve import DEFAULT_MAX_TOKENS_LIMIT
from . import add_model_arguments, positive_int


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine)")
    parser.add_argument("--port", type=_port, default=8000, help="port (default 8000; 0: any free one)")
    parser.add_argument("--max-tokens-limit", type=positive_int, default=DEFAULT_MAX_TOKENS_LIMIT,
                        help=f"the most new tokens a request may ask for (default {DEFAULT_MAX_TOKENS_LIMIT})")
    parser.add_argument("--seed", type=int, default=0, help="seed of a preset's random weights (default 0)")
    parser.add_argument("--cuda-graph", action="store_true", help="replay the decode step from a CUDA graph")
    parser.add_argument("--quiet", action="store_true", help="no line per request on stderr")


def _port(text: str) -> int:
    port = int(text)
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"a port is in [0, 65535], got {port}")
    return port


def run(args) -> int:
    from ..eval.data import load_model
    from ..serve import make_server
    model, tokenizer, notes = load_model(args.model, args.tokenizer, device=args.device, dtype=args.dtype,
                                         seed=args.seed)
    for note in notes:
        print(f"mambakit serve: {note}", file=sys.stderr)
    try:
        server = make_server(model, tokenizer, args.host, args.port, model_name=str(args.model),
                             cuda_graph=args.cuda_graph, quiet=args.quiet, max_tokens_limit=args.max_tokens_limit)
    except OSError as err:
        raise ValueError(f"cannot listen on {args.host}:{args.port}: {err.strerror or err}") from None
    host, port = server.server_address[:2]
    host = f"[{host}]" if ":" in host else host  # an IPv6 address in a URL
    print(f"mambakit serve: {args.model} at http://{host}:{port} (POST /v1/completions; Ctrl-C stops)",
          file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("mambakit serve: stopped", file=sys.stderr)
    finally:
        server.server_close()
    return 0
