"""Generate text: mambakit generate --model PATH|PRESET --prompt TEXT [--max-new-tokens N ...].

No shape letters: the prompt is one row of token ids.

The prompt is echoed, the continuation streamed to stdout as it is made (up to eos or a --stop
text, neither printed: tokenizers.stream_text, as the server's), and a last line on stderr gives
prefill and decode speed. A checkpoint folder brings its tokenizer.json when it has
one; a preset name builds a model with random weights and the byte tokenizer (the output is
noise; it shows the machinery and the speed).
"""
from __future__ import annotations

import argparse
import re
import sys
import time

from . import add_model_arguments
from ..generation import DEFAULT_PREFILL_CHUNK
from ..tokenizers import end_of_text_ids, stream_text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--prompt", required=True, help="the text to continue")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="tokens to generate at most (default 64)")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    parser.add_argument("--top-k", type=int, default=None, help="sample among the k likeliest tokens")
    parser.add_argument("--top-p", type=float, default=None, help="nucleus sampling, in (0, 1]")
    parser.add_argument("--min-p", type=float, default=None, help="drop tokens below min_p x the top probability")
    parser.add_argument("--repetition-penalty", type=float, default=1.0, help="> 1 discourages repeats (default 1)")
    parser.add_argument("--seed", type=int, default=0, help="seed for sampling and random weights (default 0)")
    parser.add_argument("--prefill-chunk", type=int, default=DEFAULT_PREFILL_CHUNK,
                        help=f"prefill long prompts this many tokens at a time (default {DEFAULT_PREFILL_CHUNK}; "
                             "0: the whole prompt at once)")
    parser.add_argument("--cuda-graph", action="store_true", help="replay the decode step from a CUDA graph")
    parser.add_argument("--stop", action="append", default=[], metavar="TEXT",
                        help="end the text where TEXT appears (not printed); may be given several times")


def _note(message: str) -> None:
    print(f"mambakit generate: {message}", file=sys.stderr, flush=True)


def _load(args, torch):
    """-> (model, tokenizer, device) on the requested device and dtype (eval.data.load_model)."""
    from ..eval.data import load_model
    model, tokenizer, notes = load_model(args.model, args.tokenizer, device=args.device, dtype=args.dtype,
                                         seed=args.seed)
    for note in notes:
        _note(note)
    return model, tokenizer, next(model.parameters()).device


# generate()'s arguments that are flags of this command under the same name, dashed
_FLAGS = ("max_new_tokens", "temperature", "top_k", "top_p", "min_p", "repetition_penalty", "prefill_chunk")


def run(args) -> int:
    import torch

    import mambakit

    if any(not text for text in args.stop):
        raise ValueError("--stop needs a non-empty text (an empty one would end the text before it starts)")
    model, tokenizer, device = _load(args, torch)
    if args.temperature == 0 and (args.top_k is not None or args.top_p is not None or args.min_p is not None):
        _note("--top-k, --top-p and --min-p shape sampling only; at --temperature 0 (greedy) they change nothing")
    ids = tokenizer.encode(args.prompt)
    if not ids:
        raise ValueError("the prompt encodes to no tokens; give a non-empty --prompt")
    limit = model.config.max_seqlen  # attention's context limit, if the model has one
    if limit is not None and len(ids) >= limit:
        raise ValueError(f"the prompt is {len(ids)} tokens; this model reads at most {limit} tokens in all "
                         "(its attention.max_seqlen), prompt and new tokens together")
    if limit is not None and len(ids) + args.max_new_tokens > limit:
        _note(f"--max-new-tokens {args.max_new_tokens} capped at {limit - len(ids)}: this model reads at most "
              f"{limit} tokens in all and the prompt is {len(ids)}")
        args.max_new_tokens = limit - len(ids)
    eos = end_of_text_ids(tokenizer, model.config)
    input_ids = torch.tensor([ids], dtype=torch.long, device=device)
    generator = torch.Generator(device=device).manual_seed(args.seed)
    try:
        tokens = mambakit.stream(model, input_ids, args.max_new_tokens, temperature=args.temperature,
                                 top_k=args.top_k, top_p=args.top_p, min_p=args.min_p,
                                 repetition_penalty=args.repetition_penalty,
                                 eos_token_id=eos[0] if len(eos) == 1 else eos or None, generator=generator,
                                 prefill_chunk=args.prefill_chunk or None, cuda_graph=args.cuda_graph)
    except ValueError as err:  # the library's checks name its arguments; here they are the command's flags
        raise ValueError(re.sub(r"\b(" + "|".join(_FLAGS) + r")\b",
                                lambda m: "--" + m.group(1).replace("_", "-"), str(err))) from None
    out = sys.stdout
    out.write(args.prompt)
    out.flush()
    t_first, n, interrupted = None, 0, False

    def timed(stream):  # the time the first new token exists (int() waits for the GPU), and the count
        nonlocal t_first, n, interrupted
        try:
            for token in stream:
                token_id = int(token[0])
                if t_first is None:
                    t_first = time.perf_counter()
                n += 1
                yield token_id
        except KeyboardInterrupt:  # Ctrl-C while a token is made: the text ends here, held-back text included
            interrupted = True

    t0 = time.perf_counter()
    try:
        for piece, _, _ in stream_text(tokenizer, timed(tokens), ids, args.stop, eos):
            out.write(piece)  # eos and the stop strings are the end, not text: never printed
            out.flush()
        if interrupted:
            _note("interrupted")
    except KeyboardInterrupt:  # one while printing just stops
        _note("interrupted")
    finally:
        tokens.close()
    t_end = time.perf_counter()
    out.write("\n")
    out.flush()
    _report(len(ids), n, t0, t_first, t_end)
    return 0


def _report(prompt_tokens: int, new_tokens: int, t0: float, t_first, t_end: float) -> None:
    """Prefill = until the first new token exists; decode = the tokens after it."""
    if t_first is None:
        _note(f"prefill {prompt_tokens} tokens: not run (no new token was asked for)")
        return
    pre = t_first - t0
    text = f"prefill {prompt_tokens} tokens in {pre:.3f} s ({prompt_tokens / pre:.1f} tok/s)"
    steps = new_tokens - 1
    if steps > 0:
        dec = t_end - t_first
        text += f", decode {steps} tokens in {dec:.3f} s ({steps / dec:.1f} tok/s)"
    print(text, file=sys.stderr, flush=True)
