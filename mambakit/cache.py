"""InferenceCache: what each layer carries from one call to the next while decoding.

Letters: b batch, e inner width, c conv channels, k conv width, h heads, p head dim, n state dim,
t cached tokens, kvh key/value heads, hd head dim, T static KV capacity, r rotary dims.

SSM layers hold {"conv": (b, c, k), "ssm": (b, e, n) or (b, h, p, n) fp32}; attention layers
hold {"k": (b, t, kvh, hd), "v": (b, t, kvh, hd)}, views of buffers grown as tokens arrive; MLP layers hold
nothing. `seqlen_offset` counts the tokens already consumed.

Static KV cache (`allocate_static_cache`, for CUDA-graph decoding): attention layers instead hold
{"k_static": (b, T, kvh, hd), "v_static": (b, T, kvh, hd)} preallocated for a capacity of T
tokens, "pos": (1,) long on the device (the tokens cached so far, advanced in place by the layer's
own decode step, so a replayed graph advances it too) and, with RoPE, "rope_cos"/"rope_sin"
(T, 1, hd) and "rope_swap" (hd,), constant views of a table shared by the layers. Nothing of it
is ever replaced or resized: every decode step reads and writes the same addresses with the same
shapes (see layers/attention.py for the step).

Left-padded batches (generation with an attention_mask): `pad_lengths` (b,) says how many of each
row's first cached positions are padding; attention layers must not attend to those keys.
`clear_padding_` wipes what padding left in the recurrent states during a prefill. Packed documents
fed in chunks (model(ids, cache, seq_idx) more than once) use the same boundary: the start of each
row's current document (`open_documents_`, `close_documents_`; ids are those of the whole rows:
a chunk's first id equal to the last id before it continues that document, another starts one).
"""
from __future__ import annotations

import torch

# Attention's entries: "k"/"v" are views of the first t tokens of "k_buffer"/"v_buffer", which grow
# by doubling so that appending a token costs O(1) amortized instead of a copy of the whole cache.
KV_NAMES = ("k", "v", "k_buffer", "v_buffer")
# A static KV cache's entries (see allocate_static_cache): buffers of `capacity` tokens, the device-side
# count of tokens written, the RoPE table (constant, shared by the layers).
STATIC_KV_NAMES = ("k_static", "v_static", "pos", "rope_cos", "rope_sin", "rope_swap")
_CONSTANT_NAMES = ("rope_cos", "rope_sin", "rope_swap")


class InferenceCache:
    def __init__(self, config, batch_size: int, layers: list[dict[str, torch.Tensor]]):
        self.config = config
        self.batch_size = batch_size
        self.layers = layers
        self.seqlen_offset = 0
        self.pad_lengths: torch.Tensor | None = None  # (b,) long, or None: no padding
        self.doc_ids: torch.Tensor | None = None  # (b,): the last document id of each row, if packed

    @property
    def nbytes(self) -> int:
        """Bytes of memory the cache holds (a view and its buffer counted once)."""
        storages = {}
        for state in self.layers:
            for t in state.values():
                s = t.untyped_storage()
                storages[(s.data_ptr(), t.device)] = s.nbytes()
        return sum(storages.values())

    @property
    def capacity(self) -> int | None:
        """Tokens a static KV cache can hold (None: no static KV cache, keys grow as they come)."""
        for state in self.layers:
            if "k_static" in state:
                return state["k_static"].shape[1]
        return None

    def reset(self) -> None:
        """Forget every sequence: zero the states, drop cached keys and values (buffers are kept).

        A static KV cache is zeroed in place (stale keys are masked anyway, but a stale inf/NaN
        would still reach the output through 0 * NaN), its positions back to 0, its RoPE table kept."""
        for state in self.layers:
            for name, t in state.items():
                if name in ("k", "v"):
                    state[name] = t[:, :0]
                elif name in _CONSTANT_NAMES:
                    continue
                elif name not in KV_NAMES:
                    t.zero_()
        self.seqlen_offset = 0
        self.pad_lengths = None
        self.doc_ids = None

    def clear_padding_(self, pad_lengths: torch.Tensor, consumed: int) -> None:
        """After `consumed` tokens of a left-padded prompt: give every row the states it would have alone.

        pad_lengths (b,): row i's first pad_lengths[i] tokens are padding. A row still inside its
        padding gets zero states (a fresh sequence); a conv window forgets the inputs that were
        padding, as a prompt alone starts with zeros there. Keys and values are left to attention,
        which skips the first pad_lengths[i] positions.
        """
        for state in self.layers:
            for name, t in state.items():
                if name in KV_NAMES or name in STATIC_KV_NAMES:
                    continue
                if name == "conv":  # (b, c, k): inputs at positions consumed-k .. consumed-1
                    k = t.shape[-1]
                    pos = torch.arange(consumed - k, consumed, device=t.device)  # (k,)
                    keep = (pos[None, :] >= pad_lengths[:, None].to(t.device))[:, None, :]  # (b, 1, k)
                else:
                    started = pad_lengths.to(t.device) < consumed  # (b,)
                    keep = started.view(-1, *([1] * (t.dim() - 1)))
                t.masked_fill_(~keep, 0)

    def open_documents_(self, seq_idx: torch.Tensor) -> None:
        """Before a chunk of packed documents (seq_idx (b, l)) that follows cached tokens: a row whose
        first id is not the last id of the chunk before starts a new document here, so nothing
        cached may reach it (states cleared, earlier keys masked); the same id continues it."""
        if self.doc_ids is None or self.seqlen_offset == 0:
            return
        new = seq_idx[:, 0] != self.doc_ids.to(seq_idx.device)
        if bool(new.any()):
            self._set_boundary_(new, torch.full_like(seq_idx[:, 0], self.seqlen_offset), self.seqlen_offset)

    def close_documents_(self, seq_idx: torch.Tensor, consumed: int) -> None:
        """After a chunk of packed documents (seq_idx (b, l)) that ends at `consumed` tokens: only
        each row's last document goes on into the next chunk. Where it began inside this chunk, its
        start becomes the row's boundary in pad_lengths: later tokens attend to no key before it and
        conv windows forget the inputs before it (the SSM states are already that document's alone)."""
        self.doc_ids = seq_idx[:, -1].clone()
        run = (seq_idx == seq_idx[:, -1:]).sum(1)  # the last document's tokens, at the chunk's end
        began = run < seq_idx.shape[1]  # (b,): the row's last document started in this chunk
        if bool(began.any()):  # else nothing ends here (and no mask for later steps to pay)
            self._set_boundary_(began, consumed - run, consumed)

    def _set_boundary_(self, rows: torch.Tensor, start: torch.Tensor, consumed: int) -> None:
        """pad_lengths[rows] = start[rows] (the first position of their current document), then
        clear what came before it from the states."""
        start = start.to(torch.long)
        old = self.pad_lengths
        if old is None:
            self.pad_lengths = torch.where(rows, start, torch.zeros_like(start))
        else:  # in place: a graphed decoder reads this tensor
            old.copy_(torch.where(rows.to(old.device), start.to(old.device), old))
        self.clear_padding_(self.pad_lengths, consumed)

    def check_compatible(self, config, batch_size: int, device=None) -> None:
        """Raise a ValueError unless this cache was allocated for `config`, `batch_size` and (if given)
        `device`, the inputs' device."""
        if self.config is not config and self.config != config:
            raise ValueError("this InferenceCache was allocated by a model with another config; "
                             "call model.allocate_cache(batch_size) on the model you run")
        if self.batch_size != batch_size:
            raise ValueError(f"the cache holds {self.batch_size} sequences but input_ids has batch size "
                             f"{batch_size}; allocate a cache with batch_size={batch_size}")
        if device is not None:
            here = next((t.device for state in self.layers for t in state.values() if torch.is_tensor(t)), None)
            if here is not None and here != torch.device(device):
                raise ValueError(f"the cache is on {here} but input_ids is on {device}; allocate it with "
                                 f"model.allocate_cache(batch_size, device={str(device)!r}) or move the inputs")

    def __repr__(self) -> str:
        return (f"InferenceCache(batch_size={self.batch_size}, seqlen_offset={self.seqlen_offset}, "
                f"layers={len(self.layers)}, nbytes={self.nbytes})")


def supports_static_kv(model) -> bool:
    """Whether every layer of `model` that caches keys and values can hold them in a static KV cache."""
    for block in model.layers:
        mixer = block.mixer
        if hasattr(mixer, "allocate_static_state"):
            continue
        alloc = getattr(mixer, "allocate_state", None)
        if alloc is not None and any(name in KV_NAMES for name in alloc(1, device="meta")):
            return False  # a layer with a growing KV cache and no static form
    return True


def allocate_static_cache(model, batch_size: int, capacity: int, dtype=None, device=None) -> InferenceCache:
    """model.allocate_cache, with static KV buffers of `capacity` tokens in the attention layers.

    Prefill and decode steps then never reallocate the cache: a CUDA graph can replay a decode step
    (keys written at the device-side position, attention over the whole capacity behind a mask).
    More than `capacity` tokens give a ValueError (from the attention layer, before any write)."""
    if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
        raise ValueError(f"capacity must be a positive int (the most tokens the cache will hold), got {capacity!r}")
    limit = model.config.max_seqlen
    if limit is not None and capacity > limit:
        raise ValueError(f"capacity {capacity} exceeds this model's limit of {limit} tokens")
    if not supports_static_kv(model):
        kinds = sorted({type(b.mixer).__name__ for b in model.layers if not hasattr(b.mixer, "allocate_static_state")})
        raise ValueError(f"these layers cannot hold a static KV cache: {', '.join(kinds)}")
    cache = model.allocate_cache(batch_size, dtype=dtype, device=device)
    for i, block in enumerate(model.layers):
        alloc = getattr(block.mixer, "allocate_static_state", None)
        if alloc is not None:
            cache.layers[i] = alloc(batch_size, capacity, dtype=dtype, device=device)
    return cache


def neg_exp_cached(module, name: str = "A_log") -> torch.Tensor:
    """-exp(module.<name>) in fp32 (an SSM's A), kept on the module between decode steps.

    Cached only under inference_mode (generation): nothing there needs A's graph, and a tensor made
    there could not enter autograd later anyway. The entry holds the parameter itself (so a new one
    never reuses the old one's address) and its version counter, which every write bumps, except one
    through `p.data` (torch gives `.data` a counter of its own): edit weights under torch.no_grad()
    (as load_state_dict and the optimizers do), not through .data, or decoding keeps the old A. Not served
    while a CUDA graph is being captured: the graph then records the -exp itself, so a replay after an
    in-place update of the parameter (load_state_dict) still sees it."""
    p = getattr(module, name)
    capturing = p.is_cuda and torch.cuda.is_current_stream_capturing()
    if not torch.is_inference_mode_enabled() or p.is_inference() or capturing:
        return -torch.exp(p.float())
    key = (p._version, p.data_ptr(), p.device)
    slot = f"_neg_exp_cache_{name}"
    cached = module.__dict__.get(slot)
    if cached is None or cached[0] is not p or cached[1] != key:
        cached = (p, key, -torch.exp(p.float()))
        module.__dict__[slot] = cached
    return cached[2]
