"""Text generation: prefill the prompt (in chunks if asked), then decode one token at a time.

Letters: b batch, l prompt length (padded), t new tokens, v vocabulary, s stop-sequence length.

Padding. `attention_mask` (b, l) marks real tokens with 1. A left-padded row is treated like a
packed row whose first "document" is the padding: seq_idx is 0 on the padding and 1 on the
prompt, so the conv and the scan restart where the prompt starts and no padding reaches a state.
A chunked prefill relies on the model's handling of packed documents fed in chunks: a prompt that
starts inside a chunk has the padding's conv inputs wiped after it (cache.close_documents_), one
that starts at a chunk's first token has the padding's states wiped before it
(cache.open_documents_); attention layers skip the first `cache.pad_lengths[i]` keys. Decode steps
then run per row as usual. Right padding is turned into left padding (each row rolled) and rolled
back in the output: prompt, new tokens, then padding.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import torch

from .tokenizers import as_token_ids


# --- sampling ---------------------------------------------------------------------------------------
def _is_int(v) -> bool:
    # numpy's integers count; True is an int to Python, not to a user
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_real(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def check_sampling(max_new_tokens, temperature, top_k, top_p, min_p=None, repetition_penalty=1.0) -> None:
    if not _is_int(max_new_tokens) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an int >= 0, got {max_new_tokens!r}")
    if not _is_real(temperature) or not 0 <= temperature < math.inf:
        raise ValueError(f"temperature must be a finite number >= 0 (0 = greedy), got {temperature!r}")
    if top_k is not None and (not _is_int(top_k) or top_k < 1):
        raise ValueError(f"top_k must be a positive int or None, got {top_k!r}")
    if top_p is not None and not (_is_real(top_p) and 0.0 < top_p <= 1.0):
        raise ValueError(f"top_p must be in (0, 1], got {top_p!r}")
    if min_p is not None and not (_is_real(min_p) and 0.0 <= min_p <= 1.0):
        raise ValueError(f"min_p must be in [0, 1], got {min_p!r}")
    if not _is_real(repetition_penalty) or not 0 < repetition_penalty < math.inf:
        raise ValueError(f"repetition_penalty must be a finite number > 0 (1 = no penalty), got {repetition_penalty!r}")


def sample_next(logits: torch.Tensor, temperature: float = 0.0, top_k: int | None = None,
                top_p: float | None = None, generator: torch.Generator | None = None, *,
                min_p: float | None = None, repetition_penalty: float = 1.0,
                seen: torch.Tensor | None = None) -> torch.Tensor:
    """logits (b, v) -> token ids (b,). temperature 0 is greedy.

    The order is that of transformers: repetition penalty on the raw logits (seen (b, v) bool marks
    the tokens to penalize), then temperature, top-k, top-p, min-p.
    """
    if repetition_penalty != 1.0 and seen is not None:
        logits = logits.float()
        penalized = torch.where(logits > 0, logits / repetition_penalty, logits * repetition_penalty)
        logits = torch.where(seen, penalized, logits)
    if temperature < 1e-30:  # 0, or so small that dividing fp32 logits by it overflows: greedy either way
        return logits.argmax(-1)
    # Shifted so that the largest logit is 0 before the division: a tiny temperature then sends the
    # others to -inf (sampling turns greedy) instead of every logit to +-inf and softmax to NaN.
    logits = logits.float()
    logits = logits - logits.amax(-1, keepdim=True)
    # top-k: exactly k tokens by index, chosen before the division (which keeps the order but can
    # underflow it into ties: a huge temperature sends every logit to 0), not every token tied
    # with the k-th (a value threshold kept them all)
    keep = torch.topk(logits, top_k, dim=-1).indices if top_k is not None and top_k < logits.shape[-1] else None
    logits = logits / temperature
    if keep is not None:
        logits = torch.full_like(logits, float("-inf")).scatter(-1, keep, logits.gather(-1, keep))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = sorted_logits.softmax(-1)
        # drop a token once the mass before it already reaches top_p (the first token always stays)
        drop = probs.cumsum(-1) - probs >= top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = logits.softmax(-1)
    if min_p is not None and min_p > 0:
        # keep tokens at least min_p times as likely as the likeliest (which always stays)
        probs = probs.masked_fill(probs < min_p * probs.amax(-1, keepdim=True), 0.0)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)



@dataclass
class _Settings:
    max_new_tokens: int
    temperature: float
    top_k: int | None
    top_p: float | None
    min_p: float | None
    repetition_penalty: float
    eos: torch.Tensor | None  # (number of eos ids,)
    stops: list[torch.Tensor]  # each (s,)
    pad_token_id: int
    generator: torch.Generator | None
    prefill_chunk: int | None
    cuda_graph: bool


@dataclass
class _Prompt:
    ids: torch.Tensor  # (b, l) left-padded, padding replaced by token 0
    pad_lengths: torch.Tensor | None  # (b,) long, None when no row is padded
    max_pad: int
    shifts: torch.Tensor | None  # (b,) how far each right-padded row was rolled, None if none was
    original: torch.Tensor  # (b, l) the caller's ids, left-aligned like `ids`


def _normalize_prompt(model, input_ids, attention_mask) -> _Prompt:
    if not callable(getattr(model, "check_inputs", None)) or not hasattr(model, "allocate_cache"):
        raise ValueError(f"model must be a mambakit.LM (mambakit.load(path) or mambakit.LM(config)), "
                         f"got {type(model).__name__}")
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
        shape = tuple(input_ids.shape) if isinstance(input_ids, torch.Tensor) else type(input_ids).__name__
        raise ValueError(f"input_ids must be a 2-d tensor (batch, length) of token ids, got {shape}")
    if attention_mask is None:
        model.check_inputs(input_ids)
        return _Prompt(input_ids, None, 0, None, input_ids)
    if not isinstance(attention_mask, torch.Tensor) or attention_mask.shape != input_ids.shape:
        shape = tuple(attention_mask.shape) if isinstance(attention_mask, torch.Tensor) else type(attention_mask).__name__
        raise ValueError(f"attention_mask must be a tensor of the shape of input_ids {tuple(input_ids.shape)}, "
                         f"got {shape}")
    if attention_mask.device != input_ids.device:
        raise ValueError(f"attention_mask is on {attention_mask.device} but input_ids on {input_ids.device}")
    if attention_mask.dtype != torch.bool and not bool(((attention_mask == 0) | (attention_mask == 1)).all()):
        raise ValueError("attention_mask must hold 1 for real tokens and 0 for padding (or be a bool tensor)")
    mask = attention_mask.bool()
    b, l = mask.shape
    n = mask.sum(-1)  # (b,) real tokens per row
    if bool((n == 0).any()):
        rows = torch.nonzero(n == 0).flatten().tolist()
        raise ValueError(f"attention_mask rows {rows} have no real token; every prompt needs at least one")
    ar = torch.arange(l, device=mask.device)
    left = (mask == (ar[None] >= (l - n)[:, None])).all(-1)  # (b,) padding only on the left
    right = (mask == (ar[None] < n[:, None])).all(-1)  # (b,) padding only on the right
    if not bool((left | right).all()):
        rows = torch.nonzero(~(left | right)).flatten().tolist()
        raise ValueError(f"attention_mask rows {rows} have holes: each row must be one run of 1s, with the "
                         "padding all on the left (recommended) or all on the right")
    shifts = torch.where(left, torch.zeros_like(n), l - n)
    original = input_ids
    if bool((shifts > 0).any()):
        original = _roll_rows(input_ids, shifts)
        mask = _roll_rows(mask, shifts)
    else:
        shifts = None
    pad_lengths = l - n
    ids = original.masked_fill(~mask, 0)  # padding may hold any value (even -100); it is never read
    model.check_inputs(ids)
    max_pad = int(pad_lengths.max())
    return _Prompt(ids, pad_lengths if max_pad > 0 else None, max_pad, shifts, original)


def _roll_rows(x: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """Roll row i of x (b, L) right by shifts[i] (left when negative)."""
    L = x.shape[1]
    ar = torch.arange(L, device=x.device)
    return x.gather(1, (ar[None] - shifts[:, None]) % L)


def _settings(model, prompt: _Prompt, max_new_tokens, temperature, top_k, top_p, min_p, repetition_penalty,
              eos_token_id, stop_sequences, pad_token_id, generator, max_length, prefill_chunk,
              cuda_graph) -> _Settings:
    check_sampling(max_new_tokens, temperature, top_k, top_p, min_p, repetition_penalty)
    device = prompt.ids.device
    param = next(model.parameters(), None)
    if param is not None and param.device != device:
        raise ValueError(f"input_ids are on {device} but the model is on {param.device}; "
                         f"move them with input_ids.to({str(param.device)!r})")
    if generator is not None:
        if not isinstance(generator, torch.Generator):
            raise ValueError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        if generator.device.type != device.type:
            raise ValueError(f"generator is on {generator.device} but the model runs on {device}; "
                             f"create it with torch.Generator(device={device.type!r})")
    vocab = model.config.vocab_size
    eos = _token_list(eos_token_id, "eos_token_id", vocab)
    stops = [torch.tensor(ids, dtype=torch.long, device=device) for ids in _stop_lists(stop_sequences, vocab)]
    if pad_token_id is None:
        pad_token_id = eos[0] if eos else 0
    elif not _is_int(pad_token_id) or not 0 <= pad_token_id < vocab:
        raise ValueError(f"pad_token_id must be a token id in [0, {vocab}), got {pad_token_id!r}")
    if prefill_chunk is not None and (not _is_int(prefill_chunk) or prefill_chunk < 1):
        raise ValueError(f"prefill_chunk must be a positive int (tokens per prefill step) or None, got {prefill_chunk!r}")
    l = prompt.ids.shape[1]
    padded = " (padding included)" if prompt.pad_lengths is not None else ""
    if max_length is not None:
        if not _is_int(max_length) or max_length < 1:
            raise ValueError(f"max_length must be a positive int (prompt + new tokens) or None, got {max_length!r}")
        if l > max_length:
            raise ValueError(f"the prompt has {l} tokens{padded}, more than max_length={max_length}")
        max_new_tokens = min(max_new_tokens, max_length - l)
    limit = model.config.max_seqlen
    if limit is not None and l + max_new_tokens > limit:
        # (a prompt longer than the limit by itself was refused by check_inputs already)
        raise ValueError(f"prompt of {l} tokens{padded} + max_new_tokens={max_new_tokens} exceeds this "
                         f"model's limit of {limit} tokens; ask for at most {limit - l} new tokens")
    eos_t = torch.tensor(eos, dtype=torch.long, device=device) if eos else None
    return _Settings(max_new_tokens, float(temperature), top_k, top_p, min_p, float(repetition_penalty), eos_t,
                     stops, pad_token_id, generator, prefill_chunk, bool(cuda_graph))


def _token_list(value, what: str, vocab: int) -> list[int]:
    """None, an id, or a 1-d list/tensor/array of ids in [0, vocab) -> a list of ints."""
    if value is None:
        return []
    if getattr(value, "ndim", 1) > 1:  # as_token_ids would flatten it: a list of sequences is not one
        raise ValueError(f"{what} must be a token id or a 1-d list of token ids, got shape {tuple(value.shape)}")
    values = as_token_ids(value, what)
    bad = [v for v in values if not 0 <= v < vocab]
    if bad:
        where = "" if _is_int(value) else f" in {value!r}"
        raise ValueError(f"{what} must hold token ids in [0, {vocab}), got {bad[0]}{where}")
    return values


def _stop_lists(stop_sequences, vocab: int) -> list[list[int]]:
    """stop_sequences as lists of ids: a list of id lists, or a 2-d tensor (one sequence a row)."""
    if stop_sequences is None:
        return []
    if hasattr(stop_sequences, "tolist") and hasattr(stop_sequences, "ndim"):  # a tensor or a numpy array
        if stop_sequences.ndim != 2:
            raise ValueError(f"stop_sequences as an array must be 2-d (sequences, length), got shape "
                             f"{tuple(stop_sequences.shape)}")
        stop_sequences = stop_sequences.tolist()
    if isinstance(stop_sequences, (str, bytes)) or not hasattr(stop_sequences, "__iter__"):
        raise ValueError(f"stop_sequences must be a list of token-id lists, got {stop_sequences!r}")
    seqs = list(stop_sequences)
    if any(_is_int(seq) or getattr(seq, "ndim", 1) == 0 for seq in seqs):  # ints, 0-d tensors and arrays
        raise ValueError(f"stop_sequences must be a list of token-id lists, got the flat list {seqs!r}; "
                         f"for one sequence write [{seqs!r}], for single tokens eos_token_id")
    out = [_token_list(seq, "each stop sequence", vocab) for seq in seqs]
    if any(not ids for ids in out):
        raise ValueError("stop sequences must not be empty")
    return out


class _Stopping:
    """Tracks finished rows (eos or a stop sequence produced) and pads them from then on."""

    def __init__(self, s: _Settings, b: int, device):
        self.s = s
        self.active = s.eos is not None or bool(s.stops)
        self.finished = torch.zeros(b, dtype=torch.bool, device=device)
        width = max((len(t) for t in s.stops), default=0)
        self.recent = torch.full((b, width), -1, dtype=torch.long, device=device)  # last generated ids

    def __call__(self, token: torch.Tensor) -> torch.Tensor:
        if not self.active:
            return token
        token = torch.where(self.finished, torch.full_like(token, self.s.pad_token_id), token)
        done = torch.isin(token, self.s.eos) if self.s.eos is not None else torch.zeros_like(self.finished)
        if self.s.stops:
            self.recent = torch.cat([self.recent[:, 1:], token[:, None]], dim=1)
            for stop in self.s.stops:
                done |= (self.recent[:, -len(stop):] == stop).all(-1)
        self.finished |= done
        return token

    def all_done(self) -> bool:
        return self.active and bool(self.finished.all())  # a host sync


# A prompt longer than this is prefilled in pieces of this many tokens by default: the activations
# of a prefill then stay bounded whatever the prompt's length, and shorter prompts go in one piece.
DEFAULT_PREFILL_CHUNK = 8192

# generate() asks whether every row has stopped only this often: each ask waits for the GPU, and
# a step-by-step wait leaves the GPU idle while the host prepares the next step. The extra steps
# (padding only) are dropped afterwards, so the output is the same. stream() asks every step.
_STOP_CHECK_EVERY = 16


def prefill(model, input_ids: torch.Tensor, cache, seq_idx: torch.Tensor | None = None,
            pad_lengths: torch.Tensor | None = None, chunk: int | None = None, max_pad: int | None = None):
    """Run a (left-padded) prompt (b, l) through the model into `cache`; return the last logits (b, v).

    With `chunk`, the prompt goes in pieces of at most `chunk` tokens, so activations stay
    bounded whatever l is; the states after it are those of a one-shot prefill. A padded prompt
    needs seq_idx (0 on the padding, 1 on the prompt); pad_lengths only gives max_pad.
    """
    l = input_ids.shape[1]
    step = chunk or l
    if pad_lengths is not None and max_pad is None:
        max_pad = int(pad_lengths.max())
    logits = None
    for start in range(0, l, step):
        end = min(start + step, l)
        # Chunks past every row's padding need no document ids (the fast path). The chunk starting
        # at max_pad still takes them: a prompt starting at its first token is told apart from the
        # padding before it only there (open_documents_), which clears what the padding left.
        sl = seq_idx[:, start:end] if seq_idx is not None and start <= max_pad else None
        logits = model(input_ids[:, start:end], cache=cache, seq_idx=sl, validate=False, last_only=True)
    return logits[:, -1]


def _decode(model, prompt: _Prompt, s: _Settings, all_done: list | None = None):
    """Yield one (b,) tensor of new token ids per step. all_done: a list to receive, per step, a 0-d
    device bool "every row has stopped"; the loop then checks it on the host only every
    _STOP_CHECK_EVERY steps, and the caller drops the steps after the first True (see generate).

    Each step runs under inference mode and the caller's code between steps does not. This is what
    @torch.inference_mode() does for a generator, but its finalizer fails ("'NoneType' object has no
    attribute 'is_scripting'") when a stream left unfinished is collected at interpreter exit."""
    steps = _decode_steps(model, prompt, s, all_done)
    try:
        while True:
            with torch.inference_mode():
                token = next(steps, None)
            if token is None:
                return
            yield token
    finally:
        steps.close()


def _decode_steps(model, prompt: _Prompt, s: _Settings, all_done: list | None):
    if s.max_new_tokens == 0:
        return
    b, device = prompt.ids.shape[0], prompt.ids.device
    decoder = None
    if s.cuda_graph:
        from .cuda_graphs import graphed_decoder
        # capacity: the most tokens the cache will hold, for the static KV cache of attention layers
        decoder = graphed_decoder(model, b, device, capacity=prompt.ids.shape[1] + s.max_new_tokens)
        if decoder is not None and decoder.busy:
            decoder = None  # another generation of this batch size holds the static cache: go eager
    if decoder is not None:
        cache = decoder.begin(prompt.pad_lengths)
        step = decoder.step
    else:
        cache = model.allocate_cache(b, device=device)
        cache.pad_lengths = prompt.pad_lengths

        def step(token):
            return model(token, cache=cache, validate=False)[:, -1]

    try:
        yield from _loop(model, prompt, s, cache, step, all_done)
    finally:  # also when a stream is closed or dropped half-way
        if decoder is not None:
            decoder.busy = False


def _loop(model, prompt: _Prompt, s: _Settings, cache, step, all_done: list | None = None):
    b = prompt.ids.shape[0]
    device = prompt.ids.device
    seq_idx = None
    if prompt.pad_lengths is not None:
        seq_idx = (torch.arange(prompt.ids.shape[1], device=device)[None] >= prompt.pad_lengths[:, None]).long()
    logits = prefill(model, prompt.ids, cache, seq_idx, prompt.pad_lengths, s.prefill_chunk, prompt.max_pad)
    seen = None
    if s.repetition_penalty != 1.0:
        # Tokens of the real prompt (not its padding) and everything generated are penalized.
        real = torch.ones_like(prompt.ids, dtype=torch.int32) if prompt.pad_lengths is None else seq_idx.int()
        counts = torch.zeros(b, logits.shape[-1], dtype=torch.int32, device=device)
        seen = counts.scatter_add_(1, prompt.ids, real) > 0  # (b, v)
    stopping = _Stopping(s, b, device)
    for i in range(s.max_new_tokens):
        token = sample_next(logits, s.temperature, s.top_k, s.top_p, s.generator, min_p=s.min_p,
                            repetition_penalty=s.repetition_penalty, seen=seen)
        token = stopping(token)
        if seen is not None:
            seen.scatter_(1, token[:, None], True)
        yield token
        if i + 1 == s.max_new_tokens:
            return
        if all_done is not None and stopping.active:
            all_done.append(stopping.finished.all())  # stays on the device
            if (i + 1) % _STOP_CHECK_EVERY == 0 and stopping.all_done():
                return
        elif stopping.all_done():
            return
        logits = step(token[:, None])


_DOC_ARGS = """
    attention_mask (b, l): 1 for prompt tokens, 0 for padding (left padding preferred; right padding
        is accepted and the output then reads prompt, new tokens, padding).
    temperature 0 is greedy; top_k, top_p (in (0, 1]), min_p (in [0, 1]) filter the distribution;
        repetition_penalty > 0 (1 = off) divides positive logits of seen tokens, multiplies negative ones.
    eos_token_id: an id or a list of ids; stop_sequences: lists of ids, matched on the new tokens
        only (a sequence that would begin in the prompt does not stop a row). A row that produced
        one is finished: its later tokens are pad_token_id (default: the first eos id, else 0).
    generator: a torch.Generator on the model's device, for reproducible sampling.
    max_length: a cap on prompt + new tokens. A model with a context limit refuses, before any
        work, a prompt + max_new_tokens longer than it.
    prefill_chunk: prefill the prompt this many tokens at a time (bounded memory, same result up to
        rounding); None prefills it in one piece.
    cuda_graph: on CUDA, replay the decode step from a CUDA graph (falls back to eager elsewhere).
"""


def generate(model, input_ids: torch.Tensor, max_new_tokens: int, temperature: float = 0.0,
             top_k: int | None = None, top_p: float | None = None, eos_token_id=None,
             generator: torch.Generator | None = None, attention_mask: torch.Tensor | None = None,
             min_p: float | None = None, repetition_penalty: float = 1.0, stop_sequences=None,
             pad_token_id: int | None = None, max_length: int | None = None,
             prefill_chunk: int | None = DEFAULT_PREFILL_CHUNK, cuda_graph: bool = False) -> torch.Tensor:
    """Prompt (b, l) -> prompt + new tokens (b, l + t), t <= max_new_tokens (fewer once every row stopped).

    generate checks for "every row stopped" every _STOP_CHECK_EVERY steps (each check waits for the
    GPU): up to that many steps of padding may run and are dropped from the output. They draw from
    `generator` when sampling, so its state afterwards may differ from stream()'s; the tokens are the same.
    """
    prompt = _normalize_prompt(model, input_ids, attention_mask)
    s = _settings(model, prompt, max_new_tokens, temperature, top_k, top_p, min_p, repetition_penalty,
                  eos_token_id, stop_sequences, pad_token_id, generator, max_length, prefill_chunk, cuda_graph)
    all_done: list = []
    new = list(_decode(model, prompt, s, all_done))
    if all_done:
        # The steps after the first one at which every row had stopped hold only padding: drop
        # them, as a step-by-step check would have stopped there (one host sync, not one per token).
        done = torch.stack(all_done)  # (steps,)
        if bool(done.any()):
            new = new[: int(done.int().argmax()) + 1]
    out = torch.cat([prompt.original.long()] + [t[:, None] for t in new], dim=1)  # (b, l + t)
    if prompt.shifts is not None:
        out = _roll_rows(out, -prompt.shifts)
    return out


def stream(model, input_ids: torch.Tensor, max_new_tokens: int, temperature: float = 0.0,
           top_k: int | None = None, top_p: float | None = None, eos_token_id=None,
           generator: torch.Generator | None = None, attention_mask: torch.Tensor | None = None,
           min_p: float | None = None, repetition_penalty: float = 1.0, stop_sequences=None,
           pad_token_id: int | None = None, max_length: int | None = None,
           prefill_chunk: int | None = DEFAULT_PREFILL_CHUNK, cuda_graph: bool = False):
    """Like generate, but yields each step's new tokens, a (b,) tensor, as soon as it is sampled.

    Arguments are checked when stream() is called, before the first token is asked for.
    torch.stack(list(stream(...)), 1) equals the new tokens of generate(...): generate(...)[:, l:]
    when no row is right-padded (generate moves a right-padded row's padding after its new tokens).
    """
    prompt = _normalize_prompt(model, input_ids, attention_mask)
    s = _settings(model, prompt, max_new_tokens, temperature, top_k, top_p, min_p, repetition_penalty,
                  eos_token_id, stop_sequences, pad_token_id, generator, max_length, prefill_chunk, cuda_graph)
    return _decode(model, prompt, s)


generate.__doc__ += _DOC_ARGS
stream.__doc__ += _DOC_ARGS
