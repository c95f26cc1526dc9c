"""CUDA graphs for the decode step: one token's forward captured once, replayed for every token.

Letters: b batch, v vocabulary, T static KV capacity (tokens), kvh key/value heads, hd head dim.

At small batch a decode step is a few hundred tiny kernels, and launching them from Python costs
more than running them. A CUDA graph records the launches once; a replay issues them all in one
call. That needs a static cache (every tensor a step reads or writes keeps its address: the SSM
layers update their conv and ssm states in place), no host sync inside the step and fixed shapes.

Attention. Given the most tokens a generation will hold (`capacity`: generate asks for prompt +
max_new_tokens), the decoder allocates a static KV cache (cache.allocate_static_cache): keys and
values in preallocated (b, T, kvh, hd) buffers, written at a device-side position that the
attention layer's own step advances, attention over all T keys behind a mask built on the
device (layers/attention.py). Then the whole step, embedding to head, is one graph, whatever the
layer pattern. T is the capacity rounded up to a multiple of CAPACITY_ROUND (within the model's
limit); a later generation that needs more captures a new decoder, at least twice as large, and
one that needs OVERSIZE times less captures a smaller one beside it (attention reads all T keys
at every step, so a short generation must not run in a long cache); a step past T is refused
with a ValueError (replaying it would write out of bounds).

Without a capacity (graphed_decoder(..., capacity=None)), or with a layer that has no static
form, a layer whose step replaces its cache tensors (a growing KV cache) cannot be replayed: the
check is made on the real step, those layers run eagerly between graphs, and every run of layers
between them (embedding and head included) is one graph. A pure SSM model is one graph.

The graph, its static cache and its static input/output are kept on the model per batch size and
capacity (`model._mambakit_cuda_graphs`), so later generate calls reuse them; `release(model)`
frees them. They hold the addresses of the model's weights: in-place updates (load_state_dict) are seen, new
tensors (model.to(...), a parameter or module replaced by assignment) make a new graph. Hooks added
after the capture are not run by its replays: release(model) after adding one.
"""
from __future__ import annotations

import functools
import logging
from typing import NamedTuple

import torch

from .cache import allocate_static_cache, supports_static_kv

logger = logging.getLogger("mambakit")

_MAX_GRAPHS = 4  # decoders kept per model (per batch size and capacity); the oldest goes first
CAPACITY_ROUND = 256  # static KV capacities are multiples of this: fewer captures, aligned masks
OVERSIZE = 4  # a generation needing a quarter of a decoder's static KV cache or less gets its own


class CannotCapture(Exception):
    """The decode step of this model cannot be replayed from a graph (the message says why)."""


@functools.lru_cache(maxsize=None)
def _warn_once(message: str) -> None:
    logger.warning(message)


def _device_reason(device: torch.device) -> str | None:
    if device.type != "cuda":
        return f"the model runs on {device.type}, and CUDA graphs need a CUDA device"
    if not torch.cuda.is_available():
        return "torch.cuda is not available"
    return None


def _warm_up(fn, n: int, device: torch.device) -> None:
    """Run fn n times on a side stream, as torch.cuda.graph asks (lazy init, cuBLAS workspaces, autotuning)."""
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        for _ in range(n):
            fn()
    torch.cuda.current_stream(device).wait_stream(stream)


def _graph_pool(device: torch.device):
    """One memory pool for the graphs of a step: they replay in the order they were captured."""
    return torch.cuda.graph_pool_handle()


def _capture(fn, device: torch.device, pool=None):
    """Record fn into a CUDA graph; return (its static output, replay, the graph to keep alive)."""
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool):
        out = fn()
    return out, graph.replay, graph


class GraphedDecoder:
    """The decode step of `model` for a batch of `batch_size`, replayed from CUDA graphs.

    The step is a chain of ops: embedding, each block, final norm + head. Ops whose cache tensors
    stay in place are "static"; each run of static ops is captured as one graph with a static input
    and output; the other blocks (attention with a growing KV cache) run eagerly in between. With
    `capacity` and attention layers that have a static form, every op is static: one graph, and
    `self.capacity` is the number of tokens the cache holds (None: no static KV cache).
    """

    def __init__(self, model, batch_size: int, device: torch.device, n_warmup: int = 2,
                 capacity: int | None = None):
        self.model = model
        self.batch_size = batch_size
        if capacity is not None and supports_static_kv(model):
            self.cache = allocate_static_cache(model, batch_size, capacity, device=device)
        else:
            self.cache = model.allocate_cache(batch_size, device=device)
        self.capacity = self.cache.capacity  # None without attention layers too
        # Always a tensor (zeros = no padding), so a captured step reads padding from a fixed address.
        self.pad_lengths = torch.zeros(batch_size, dtype=torch.long, device=device)
        self.cache.pad_lengths = self.pad_lengths
        self.tokens = torch.zeros(batch_size, 1, dtype=torch.long, device=device)  # static input (b, 1)
        self.busy = False  # a generation is using the static cache (set by begin, cleared by the caller)
        ops = self._ops()
        dynamic = self._dynamic_layers(ops)
        if len(dynamic) == len(model.layers):
            raise CannotCapture("every layer replaces its cache tensors at each step (a growing cache); "
                                "nothing is left to replay")
        static = [True] + [i not in dynamic for i in range(len(model.layers))] + [True]
        self._stages = []  # (graphed, ops); consecutive ops of one kind form a stage
        for op, is_static in zip(ops, static):
            if self._stages and self._stages[-1][0] == is_static:
                self._stages[-1][1].append(op)
            else:
                self._stages.append((is_static, [op]))
        self.n_eager = sum(not graphed for graphed, _ in self._stages)
        # Each warm-up step starts from an empty cache, so that a small static capacity is never
        # exceeded; the capture too (it records the step, whatever the position).
        _warm_up(lambda: (self._reset(), self._eager_step()), n_warmup, device)
        self._reset()
        self._capture_stages(device)
        self._reset()

    # --- the step as a chain of ops -------------------------------------------------------------------
    def _ops(self) -> list:
        """LM.forward for one token, cut at its blocks: embedding, each block, norm + head."""
        model, cache = self.model, self.cache

        def embed(ids):
            x = model.embedding(ids)  # (b, 1, d)
            return x.float() if model.config.residual_in_fp32 else x

        def block_op(block):
            return lambda x: block(x, cache=cache)

        def head(x):
            x = model.norm_f.normalize_residual(x)
            return model.lm_head(x)[:, -1, : model.config.vocab_size]  # (b, v)

        return [embed] + [block_op(block) for block in model.layers] + [head]

    def _eager_step(self) -> torch.Tensor:
        x = self.tokens
        for _, ops in self._stages:
            for op in ops:
                x = op(x)
        self.cache.seqlen_offset += 1
        return x

    def _tensors(self) -> dict:
        return {(i, name): t for i, state in enumerate(self.cache.layers) for name, t in state.items()}

    def _dynamic_layers(self, ops) -> set:
        """Run one step; the layers whose cache tensors it replaced (or added) cannot be replayed."""
        before = {key: (t, t.data_ptr()) for key, t in self._tensors().items()}
        x = self.tokens
        for op in ops:
            x = op(x)
        self.cache.seqlen_offset += 1
        dynamic = set()
        for key, t in self._tensors().items():
            old = before.get(key)
            if old is None or old[0] is not t or old[1] != t.data_ptr():
                dynamic.add(key[0])
        if dynamic:
            kinds = sorted({type(self.model.layers[i].mixer).__name__ for i in dynamic})
            logger.info("mambakit: CUDA graphs: %d layer(s) (%s) grow their cache and run eagerly between graphs",
                        len(dynamic), ", ".join(kinds))
        return dynamic

    def _capture_stages(self, device) -> None:
        self._plan = []  # (replay, static input, static output) for graphs; (None, ops, None) for eager
        self._graphs = []
        pool = _graph_pool(device)
        x = self.tokens
        for graphed, ops in self._stages:
            if not graphed:
                for op in ops:  # an eager op, run once to learn its output's shape and dtype
                    x = op(x)
                self._plan.append((None, ops, None))
                continue
            inp = x if x is self.tokens else torch.empty_like(x)

            def chain(inp=inp, ops=ops):
                y = inp
                for op in ops:
                    y = op(y)
                return y

            out, replay, graph = _capture(chain, device, pool)
            self._graphs.append(graph)
            self._plan.append((replay, inp, out))
            x = out

    # --- use ----------------------------------------------------------------------------------------------
    def _reset(self) -> None:
        self.cache.reset()  # states zeroed in place, keys and values emptied
        self.pad_lengths.zero_()
        self.cache.pad_lengths = self.pad_lengths

    def begin(self, pad_lengths: torch.Tensor | None = None):
        """The static cache, emptied, ready for a prefill; pad_lengths (b,) of the new batch or None."""
        self._reset()
        if pad_lengths is not None:
            self.pad_lengths.copy_(pad_lengths)
        self.busy = True
        return self.cache

    @torch.no_grad()  # the eager ops between graphs too (see graphed_decoder)
    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (b, 1) -> logits (b, v). The result is overwritten by the next step: use it first."""
        if self.capacity is not None and self.cache.seqlen_offset >= self.capacity:
            # The graph writes at the device-side position without a bound check: refuse it here.
            raise ValueError(f"the graphed decode step's static KV cache holds {self.capacity} tokens and "
                             f"all are used; ask graphed_decoder for capacity >= prompt + new tokens")
        x = tokens
        for replay, inp, out in self._plan:
            if replay is None:
                for op in inp:  # eager ops
                    x = op(x)
                continue
            if x is not inp:
                inp.copy_(x)
            replay()
            x = out
        self.cache.seqlen_offset += 1
        return x

    @property
    def n_graphs(self) -> int:
        return len(self._graphs)


class _Slot(NamedTuple):
    """Where a graphed decoder is kept on its model. Graphs replay fixed addresses, so a decoder
    serves only these weights (device, and the address and dtype of every parameter) and this batch
    size; decoders of several capacities may sit side by side (see _fits)."""
    batch_size: int
    weights: tuple  # _weights(): (device, hash of the tensors' addresses and dtypes, their count)
    capacity: int | None


def _weights(model, device: torch.device) -> tuple:
    """What a captured graph reads: every parameter's and buffer's address and dtype. A replaced
    tensor anywhere (a new lm_head, a swapped block, an adapter merged by assignment) must not
    replay a graph that reads the old, perhaps freed, memory. Once per generation, not per token."""
    tensors = [*model.parameters(), *model.buffers()]
    return str(device), hash(tuple((t.data_ptr(), t.dtype) for t in tensors)), len(tensors)


def round_capacity(model, needed: int) -> int:
    """`needed` tokens rounded up to a multiple of CAPACITY_ROUND, within the model's limit."""
    capacity = -(-needed // CAPACITY_ROUND) * CAPACITY_ROUND
    limit = model.config.max_seqlen
    return max(needed, min(capacity, limit)) if limit is not None else capacity


def _fits(decoder, model, capacity: int | None) -> bool:
    """Whether `decoder` can serve a generation of `capacity` tokens (None: unbounded) at its speed: its
    static KV cache holds them, and not more than OVERSIZE times the rounded need, since attention
    reads the whole cache at every step (a 64K cache made a 1K-token Transformer step as slow as at
    64K: benchmarks/results/gpu_generation-*session10-2*). A decoder captured without a capacity
    fits a model with attention (segmented) only where a capacity is not asked for."""
    if capacity is None:  # no bound on the length: a static KV cache would run out
        return decoder.capacity is None
    if decoder.capacity is None:
        return not (decoder.n_eager > 0 and supports_static_kv(model))
    return capacity <= decoder.capacity <= OVERSIZE * round_capacity(model, capacity)


def graphed_decoder(model, batch_size: int, device: torch.device,
                    capacity: int | None = None) -> GraphedDecoder | None:
    """The model's graphed decode step for this batch size (captured on first use), or None with a
    logged reason where graphs cannot be used; the caller then decodes eagerly.

    capacity: the most tokens (prompt + new) a generation will hold; with it, attention layers get a
    static KV cache and the whole step is one graph (a decoder too small for it is captured again,
    larger). None: attention layers, if any, run eagerly between graphs."""
    device = torch.device(device)
    reason = _device_reason(device)
    if reason is not None:
        _warn_once(f"mambakit: cuda_graph=True ignored: {reason}; decoding eagerly")
        return None
    if capacity is not None and (isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1):
        raise ValueError(f"capacity must be a positive int (prompt + new tokens) or None, got {capacity!r}")
    graphs = model.__dict__.setdefault("_mambakit_cuda_graphs", {})
    weights = _weights(model, device)
    mine = {k: d for k, d in graphs.items() if k.weights == weights and k.batch_size == batch_size}
    if any(d is None for d in mine.values()):
        return None  # capture failed before for this batch size: do not try again
    fitting = [d for d in mine.values() if _fits(d, model, capacity)]
    if fitting:  # a free one first; a busy one tells the caller to decode eagerly
        return min(fitting, key=lambda d: (d.busy, d.capacity or 0))
    if capacity is not None and not any((d.capacity or 0) >= capacity for d in mine.values()):
        # a longer generation than any so far: outgrown decoders are freed before the larger one is
        # allocated, which is at least twice the largest, so that growth recaptures rarely
        for k, d in mine.items():
            if not d.busy:
                del graphs[k]
        if capacity is not None:
            capacity = max([capacity] + [2 * d.capacity for d in mine.values() if d.capacity is not None])
    # else: every decoder that holds it is OVERSIZE times too large; one of this size joins them
    if capacity is not None:
        capacity = round_capacity(model, capacity)
    for old in [k for k in graphs if k.weights != weights]:
        del graphs[old]  # weights moved or changed dtype: those graphs read stale addresses
    while len(graphs) >= _MAX_GRAPHS:
        del graphs[next(iter(graphs))]
    try:
        # A decode step never needs autograd: warm-up and capture without it whatever the caller's
        # mode, so the graph records the inference kernels (fused norms), not the autograd forms.
        with torch.no_grad():
            decoder = GraphedDecoder(model, batch_size, device, capacity=capacity)
    except CannotCapture as err:
        _warn_once(f"mambakit: cuda_graph=True ignored: {err}; decoding eagerly")
        decoder = None
    except RuntimeError as err:  # a capture error from CUDA: report it, do not fail the generation
        _warn_once(f"mambakit: CUDA graph capture failed ({err}); decoding eagerly")
        decoder = None
    graphs[_Slot(batch_size, weights, None if decoder is None else decoder.capacity)] = decoder
    return decoder


def release(model) -> None:
    """Free the graphs and static caches kept on `model`."""
    model.__dict__.pop("_mambakit_cuda_graphs", None)
