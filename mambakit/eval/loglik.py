"""Log-likelihood of continuations given contexts: the one scorer behind perplexity, multiple choice
and the lm-evaluation-harness adapter.

Letters: b batch (contexts prefilled together), r rows (continuations, several per context),
l length, c chunk length (continuation tokens per forward), v vocabulary.

A request is (context ids, continuation ids); its score is sum_j log p(cont[j] | context, cont[:j])
and whether greedy decoding would have produced the continuation. Requests that share a context
(the choices of a question) prefill it once: contexts are left-padded and prefilled together into
the recurrent cache (as generation does), each row of the cache is copied to as many rows as its
context has continuations, and the continuations (right-padded; padding after a token changes no
causal prediction) run from there, `chunk` tokens at a time, so that a long continuation (a whole
document for perplexity) never holds more than r * c * v logits.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch

from ..cache import InferenceCache
from ..generation import prefill

Request = tuple[Sequence[int], Sequence[int]]


def model_device(model) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def check_fits(model, n_tokens: int, what: str) -> None:
    """ValueError when `what` needs more positions than the model's context limit (if it has one)."""
    limit = model.config.max_seqlen
    if limit is not None and n_tokens > limit:
        raise ValueError(f"{what} needs {n_tokens} tokens, more than this model's context limit of {limit}")


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids) split as lm-evaluation-harness splits them: trailing spaces of
    the context go to the continuation, the whole text is encoded once and cut after the context's
    tokens (so a subword tokenizer sees the continuation as it would in running text)."""
    n = len(context) - len(context.rstrip())
    if n:
        context, continuation = context[:-n], context[-n:] + continuation
    whole = tokenizer.encode(context + continuation, add_special_tokens=False)
    ctx = tokenizer.encode(context, add_special_tokens=False)
    return ctx, whole[len(ctx):]


def _expand_cache(cache: InferenceCache, rows: torch.Tensor) -> InferenceCache:
    """A cache of len(rows) sequences, row i a copy of `cache` row rows[i] (keys/values copied out of
    their growth buffers, which the attention layer re-creates on the next append)."""
    layers = []
    for state in cache.layers:
        new = {}
        for name, t in state.items():
            if name in ("k_buffer", "v_buffer"):
                continue
            new[name] = t.index_select(0, rows.to(t.device))
        layers.append(new)
    out = InferenceCache(cache.config, int(rows.numel()), layers)
    out.seqlen_offset = cache.seqlen_offset
    if cache.pad_lengths is not None:
        out.pad_lengths = cache.pad_lengths.index_select(0, rows.to(cache.pad_lengths.device))
    return out


def _check_request(model, i: int, ctx, cont) -> None:
    if len(ctx) == 0:
        raise ValueError(f"request {i}: the context is empty; give at least one token (e.g. a BOS/EOS id)")
    check_fits(model, len(ctx) + len(cont) - 1, f"request {i} ({len(ctx)} context + {len(cont)} continuation tokens)")


@torch.inference_mode()
def score_requests(model, requests: Sequence[Request], batch_size: int = 16, chunk: int = 2048,
                   prefill_chunk: int | None = None,
                   on_done: Callable[[int], None] | None = None) -> list[tuple[float, bool]]:
    """requests [(context ids, continuation ids)] -> [(log-likelihood, is_greedy)] in the same order.

    batch_size: continuations per forward (at most); chunk: continuation tokens per forward;
    prefill_chunk: context tokens per prefill step (None: the whole context at once).
    on_done(n): called as n more requests are scored (a progress bar).
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"chunk must be a positive int (tokens per forward), got {chunk!r}")
    if prefill_chunk is not None and (not isinstance(prefill_chunk, int) or prefill_chunk < 1):
        raise ValueError(f"prefill_chunk must be a positive int (context tokens per prefill step) or None, "
                         f"got {prefill_chunk!r}")
    vocab = model.config.vocab_size
    groups: dict[tuple, list[int]] = {}
    results: list[tuple[float, bool] | None] = [None] * len(requests)
    for i, (ctx, cont) in enumerate(requests):
        ctx, cont = tuple(int(t) for t in ctx), [int(t) for t in cont]
        _check_request(model, i, ctx, cont)
        bad = [t for t in (*ctx, *cont) if not 0 <= t < vocab]
        if bad:
            raise ValueError(f"request {i}: token ids must be in [0, {vocab}), got {bad[:5]}")
        if not cont:
            results[i] = (0.0, True)  # nothing to predict
            continue
        groups.setdefault(ctx, []).append(i)
    # Units of one context and at most batch_size of its continuations; long contexts first, so a
    # batch holds contexts (and continuations) of similar length.
    units = []
    for ctx, idx in groups.items():
        idx = sorted(idx, key=lambda i: -len(requests[i][1]))
        units += [(ctx, idx[s:s + batch_size]) for s in range(0, len(idx), batch_size)]
    units.sort(key=lambda u: (-len(u[0]), -len(requests[u[1][0]][1])))
    # A batch pads contexts to its longest and continuations to theirs: under a context limit the
    # padded rows must fit too.
    limit = model.config.max_seqlen
    batch: list = []
    rows = lc = lm = 0
    for unit in units + [None]:
        if unit is not None:
            c, m = len(unit[0]), max(len(requests[i][1]) for i in unit[1])
            too_long = limit is not None and max(lc, c) + max(lm, m) - 1 > limit
        if unit is None or (batch and (rows + len(unit[1]) > batch_size or too_long)):
            for i, res in _score_batch(model, requests, batch, chunk, prefill_chunk):
                results[i] = res
            if on_done:
                on_done(sum(len(u[1]) for u in batch))
            batch, rows, lc, lm = [], 0, 0, 0
        if unit is not None:
            batch.append(unit)
            rows, lc, lm = rows + len(unit[1]), max(lc, c), max(lm, m)
    if on_done and len(requests) > sum(len(v) for v in groups.values()):
        on_done(len(requests) - sum(len(v) for v in groups.values()))  # the empty continuations
    return results  # type: ignore[return-value]


def _score_batch(model, requests, units, chunk: int, prefill_chunk: int | None):
    if not units:
        return []
    device = model_device(model)
    b = len(units)
    lc = max(len(ctx) for ctx, _ in units)
    ctx_ids = torch.zeros(b, lc, dtype=torch.long)
    pad = torch.tensor([lc - len(ctx) for ctx, _ in units], dtype=torch.long)
    for u, (ctx, _) in enumerate(units):
        ctx_ids[u, lc - len(ctx):] = torch.tensor(ctx, dtype=torch.long)
    ctx_ids, pad = ctx_ids.to(device), pad.to(device)
    cache = model.allocate_cache(b, device=device)
    seq_idx = None
    if bool((pad > 0).any()):
        cache.pad_lengths = pad
        # the padding is a "document" of its own (id 0), the context the next one (id 1)
        seq_idx = (torch.arange(lc, device=device)[None] >= pad[:, None]).long()  # (b, lc)
        last = prefill(model, ctx_ids, cache, seq_idx, pad, prefill_chunk, int(pad.max()))  # (b, v)
    else:
        last = prefill(model, ctx_ids, cache, None, None, prefill_chunk)  # (b, v)

    order = [i for _, idx in units for i in idx]  # request index of each row
    unit_of_row = torch.tensor([u for u, (_, idx) in enumerate(units) for _ in idx], device=device)
    conts = [list(map(int, requests[i][1])) for i in order]
    lens = torch.tensor([len(c) for c in conts], device=device)
    lm = int(lens.max())
    targets = torch.zeros(len(order), lm, dtype=torch.long)  # (r, lm)
    for r, c in enumerate(conts):
        targets[r, :len(c)] = torch.tensor(c, dtype=torch.long)
    targets = targets.to(device)
    valid = torch.arange(lm, device=device)[None] < lens[:, None]  # (r, lm)

    # position 0 of every continuation is predicted by its context's last logits
    logp = torch.zeros(len(order), lm, dtype=torch.float64, device=device)  # (r, lm)
    greedy = torch.ones(len(order), lm, dtype=torch.bool, device=device)
    first = last.float().log_softmax(-1).index_select(0, unit_of_row)  # (r, v)
    logp[:, 0] = first.gather(1, targets[:, :1]).squeeze(1).double()
    greedy[:, 0] = first.argmax(-1) == targets[:, 0]
    if lm > 1:
        rows_cache = _expand_cache(cache, unit_of_row)
        inputs = targets[:, :-1]  # (r, lm - 1): the continuation feeds itself, shifted by one
        for s in range(0, lm - 1, chunk):
            e = min(s + chunk, lm - 1)
            lp = model(inputs[:, s:e], cache=rows_cache, validate=False).float().log_softmax(-1)  # (r, c, v)
            tgt = targets[:, s + 1:e + 1]  # (r, c)
            logp[:, s + 1:e + 1] = lp.gather(-1, tgt[..., None]).squeeze(-1).double()
            greedy[:, s + 1:e + 1] = lp.argmax(-1) == tgt
    logp = torch.where(valid, logp, torch.zeros_like(logp))
    greedy = greedy | ~valid
    sums = logp.sum(1).tolist()
    flags = greedy.all(1).tolist()
    return [(i, (float(sums[r]), bool(flags[r]))) for r, i in enumerate(order)]


def score_texts(model, tokenizer, pairs: Sequence[tuple[str, str]], **kwargs) -> list[tuple[float, bool]]:
    """[(context text, continuation text)] -> [(log-likelihood, is_greedy)] (split by encode_pair)."""
    requests = []
    for i, (ctx, cont) in enumerate(pairs):
        c, t = encode_pair(tokenizer, ctx, cont)
        if not c:
            raise ValueError(f"pair {i}: the context {ctx!r} encodes to no token")
        requests.append((c, t))
    return score_requests(model, requests, **kwargs)


def nats_to_bits(x: float) -> float:
    return x / math.log(2)
