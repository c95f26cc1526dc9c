"""CUDA graphs for the decode step: one token's forward captured once, replayed for every token.

Letters: b batch, v vocabulary.

At small batch a decode step is a few hundred tiny kernels, and launching them from Python costs
more than running them. A CUDA graph records the launches once; a replay issues them all in one
call. That needs a static cache (every tensor a step reads or writes keeps its address: the SSM
layers update their conv and ssm states in place), no host sync inside the step and fixed shapes.
A layer whose step replaces its cache tensors (a growing KV cache) cannot be replayed; the check
is made on the real step, so such a model decodes eagerly with a logged reason.

The graph, its static cache and its static input/output are kept on the model per batch size
(`model._mambakit_cuda_graphs`), so later generate calls reuse them; `release(model)` frees them.
They hold the addresses of the model's weights: in-place updates (load_state_dict) are seen, new
parameter tensors (model.to(...)) make a new graph.
"""
from __future__ import annotations

import functools
import logging

import torch

logger = logging.getLogger("mambakit")

_MAX_GRAPHS = 4  # graphs kept per model (one per batch size); the oldest goes first


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


def _capture(fn, device: torch.device):
    """Record fn into a CUDA graph; return (its static output, replay, the graph to keep alive)."""
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()
    return out, graph.replay, graph


class GraphedDecoder:
    """The decode step of `model` for a batch of `batch_size`, replayed from a CUDA graph."""

    def __init__(self, model, batch_size: int, device: torch.device, n_warmup: int = 2):
        self.model = model
        self.batch_size = batch_size
        self.cache = model.allocate_cache(batch_size, device=device)
        # Always a tensor (zeros = no padding), so the captured step reads padding from a fixed address.
        self.pad_lengths = torch.zeros(batch_size, dtype=torch.long, device=device)
        self.cache.pad_lengths = self.pad_lengths
        self.tokens = torch.zeros(batch_size, 1, dtype=torch.long, device=device)  # static input (b, 1)
        before = self._tensors()

        def one_step():
            return model(self.tokens, cache=self.cache, validate=False)[:, -1]  # (b, v)

        _warm_up(one_step, n_warmup, device)
        self._check_static(before)
        self.logits, self._replay, self._graph = _capture(one_step, device)  # static output (b, v)
        self._zero()

    def _tensors(self) -> dict:
        return {(i, name): t for i, state in enumerate(self.cache.layers) for name, t in state.items()}

    def _check_static(self, before: dict) -> None:
        after = self._tensors()
        for key, t in after.items():
            old = before.get(key)
            if old is None or old is not t or old.data_ptr() != t.data_ptr():
                i, name = key
                kind = type(self.model.layers[i].mixer).__name__
                raise CannotCapture(f"layer {i} ({kind}) replaces its cache tensor {name!r} at each step "
                                    "(a growing cache), so its step cannot be replayed from a graph")
        if self.cache.pad_lengths is not self.pad_lengths:
            raise CannotCapture("the step replaced cache.pad_lengths")

    def _zero(self) -> None:
        for t in self._tensors().values():
            t.zero_()
        self.pad_lengths.zero_()
        self.cache.seqlen_offset = 0

    def begin(self, pad_lengths: torch.Tensor | None = None):
        """The static cache, emptied, ready for a prefill; pad_lengths (b,) of the new batch or None."""
        self._zero()
        if pad_lengths is not None:
            self.pad_lengths.copy_(pad_lengths)
        self.cache.pad_lengths = self.pad_lengths
        return self.cache

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (b, 1) -> logits (b, v). The result is overwritten by the next step: use it first."""
        self.tokens.copy_(tokens)
        self._replay()
        self.cache.seqlen_offset += 1
        return self.logits


def _key(model, batch_size: int, device: torch.device):
    param = next(model.parameters())
    return batch_size, str(device), param.dtype, param.data_ptr()


def graphed_decoder(model, batch_size: int, device: torch.device) -> GraphedDecoder | None:
    """The model's graphed decode step for this batch size (captured on first use), or None with a
    logged reason where graphs cannot be used; the caller then decodes eagerly."""
    device = torch.device(device)
    reason = _device_reason(device)
    if reason is not None:
        _warn_once(f"mambakit: cuda_graph=True ignored: {reason}; decoding eagerly")
        return None
    graphs = model.__dict__.setdefault("_mambakit_cuda_graphs", {})
    key = _key(model, batch_size, device)
    if key in graphs:
        return graphs[key]  # a decoder, or None: capture failed before, do not try again
    for old in [k for k in graphs if k[1:] != key[1:]]:
        del graphs[old]  # weights moved or changed dtype: those graphs read stale addresses
    while len(graphs) >= _MAX_GRAPHS:
        del graphs[next(iter(graphs))]
    try:
        decoder = GraphedDecoder(model, batch_size, device)
    except CannotCapture as err:
        _warn_once(f"mambakit: cuda_graph=True ignored: {err}; decoding eagerly")
        decoder = None
    except RuntimeError as err:  # a capture error from CUDA: report it, do not fail the generation
        _warn_once(f"mambakit: CUDA graph capture failed ({err}); decoding eagerly")
        decoder = None
    graphs[key] = decoder
    return decoder


def release(model) -> None:
    """Free the graphs and static caches kept on `model`."""
    model.__dict__.pop("_mambakit_cuda_graphs", None)
