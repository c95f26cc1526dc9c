"""Causal self-attention with grouped-query heads (the `*` of a layer pattern).

Letters: b batch, l new tokens, t cached + new tokens (keys), d model width, h query heads,
kvh key/value heads (h is a multiple of kvh; kvh = h is plain multi-head attention),
hd head dim, r rotary dims (an even number <= hd), T static KV cache capacity (tokens).

    q, k, v = x Wq, x Wk, x Wv                     (b, l, h, hd), (b, l, kvh, hd) x2
    q, k    = rope(q, k) on the first r dims of each head (optional)
    y       = softmax(q k^T / sqrt(hd) + causal mask) v     query head i reads kv head i // (h / kvh)
    out     = y Wo

Names (q_proj, k_proj, v_proj, o_proj) are those of transformers' Llama and NemotronH.

RoPE (rotary_fraction > 0) rotates the first r = hd * rotary_fraction dims (rounded down to
even) of q and k as GPT-NeoX, Llama and Megatron do: halves (x1, x2) -> (x1 cos - x2 sin,
x2 cos + x1 sin), frequencies theta^(-2i/r). The layer holds no buffers (a model built on the
meta device and filled by the checkpoint loader has nothing left uninitialized, and state_dict
holds only weights): the cos/sin tables live in a module-level cache per (hd, r, theta, device,
dtype), grown by doubling, so a decode step slices one row instead of rebuilding it (about 40 ops
a step fewer). Rows are those of rope_cos_sin(arange(T)), whatever T: a position's angle does not
depend on the others.

Decoding: the cache dict of this layer holds {"k": (b, t, kvh, hd), "v": (b, t, kvh, hd)},
keys already rotated, grown by whatever arrives (a prompt, a chunk of one, or one token).
Positions start at cache.seqlen_offset (the tokens already consumed).

Static KV cache (cache.allocate_static_cache, for CUDA-graph decoding; T = capacity): the dict
holds {"k_static", "v_static": (b, T, kvh, hd), "pos": (1,) long} and, with RoPE, views of the
rope_tables rows (T, 1, hd) and swap index ("rope_cos", "rope_sin", "rope_swap"), allocated once and never replaced. A decode step (l = 1, no seq_idx) then runs with
nothing taken from the host: RoPE rows gathered from the table at `pos`, k and v written at `pos`
with index_copy_, attention over all T keys behind a mask built on the device (key <= pos, and
key >= pad_lengths[i] with left padding), then pos += 1 in place. Fixed shapes, no sync, the same
addresses every step: a CUDA graph of it replays correctly and its replay advances pos. Masked
keys are zeros or finite stale keys (cache.reset zeroes the buffers), and add nothing. Longer
inputs (a prefill, a chunk) take the host path: rows past..past+l written into the buffers,
attention over the first past + l keys with the usual masks, pos set to past + l. More than T
tokens give a ValueError before anything is written (the host knows cache.seqlen_offset).

Packed sequences (seq_idx, (b, l) document ids): the mask is block-diagonal causal, no token
attends to another document. RoPE positions stay global (position in the row, not in the
document); RoPE scores depend only on the distance between query and key, so within a document
this gives the same attention as restarting at 0, up to rounding. With a cache, the cached
tokens count as part of the first document of the new tokens, as the SSM layers' initial state.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..ops.cpu_linear import linear_module
from . import fused_decode

_SDPA_HAS_GQA = tuple(int(v) for v in torch.__version__.split("+")[0].split(".")[:2]) >= (2, 5)


def rope_cos_sin(positions: torch.Tensor, rotary_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """positions (l,) -> cos, sin (l, r) in fp32, as transformers' Llama computes them."""
    exponent = torch.arange(0, rotary_dim, 2, dtype=torch.int64, device=positions.device).float() / rotary_dim
    inv_freq = 1.0 / (theta ** exponent)  # (r/2,)
    freqs = positions.float()[:, None] * inv_freq[None, :]  # (l, r/2)
    emb = torch.cat([freqs, freqs], dim=-1)  # (l, r)
    return emb.cos(), emb.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (b, l, heads, hd), cos/sin (l, r): rotate the first r dims of every head."""
    r = cos.shape[-1]
    cos = cos[None, :, None].to(x.dtype)  # (1, l, 1, r)
    sin = sin[None, :, None].to(x.dtype)
    x_rot, x_pass = x[..., :r], x[..., r:]
    x1, x2 = x_rot[..., : r // 2], x_rot[..., r // 2:]
    rotated = x_rot * cos + torch.cat([-x2, x1], dim=-1) * sin
    return torch.cat([rotated, x_pass], dim=-1) if x_pass.shape[-1] else rotated


# (hd, r, theta, device, dtype) -> (cos (T, 1, hd), signed sin (T, 1, hd), swap index (hd,)), T rows.
_ROPE_TABLES: dict = {}


def rope_tables(need: int, head_dim: int, rotary_dim: int, theta: float, device, dtype):
    """cos, sin (need, 1, hd) in dtype and a swap index (hd,) for apply_rope_table; cached, grown by doubling.

    Widened to all hd dims so that one expression covers partial RoPE: the dims past r get cos 1
    and sin 0 (x * 1 + x' * 0 = x exactly for finite x), and the first half of sin carries the
    minus sign of rotate_half (-x2 * s and x2 * -s are the same float).
    """
    key = (head_dim, rotary_dim, float(theta), torch.device(device), dtype)
    entry = _ROPE_TABLES.get(key)
    if entry is None or entry[0].shape[0] < need:
        size = max(need, 256, 2 * entry[0].shape[0] if entry is not None else 0)
        # Plain tensors even under inference_mode: a later training forward may multiply by them.
        with torch.inference_mode(False), torch.no_grad():
            cos, sin = rope_cos_sin(torch.arange(size, device=device), rotary_dim, theta)  # (T, r) fp32
            half = rotary_dim // 2
            cos_full = torch.ones(size, 1, head_dim, dtype=dtype, device=device)
            sin_full = torch.zeros(size, 1, head_dim, dtype=dtype, device=device)
            cos_full[:, 0, :rotary_dim] = cos.to(dtype)
            sin_full[:, 0, :half] = -sin[:, :half].to(dtype)
            sin_full[:, 0, half:rotary_dim] = sin[:, half:].to(dtype)
            swap = torch.cat([torch.arange(half, rotary_dim), torch.arange(half),
                              torch.arange(rotary_dim, head_dim)]).to(device)  # (hd,)
        entry = _ROPE_TABLES[key] = (cos_full, sin_full, swap)
    return entry


def apply_rope_table(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, swap: torch.Tensor) -> torch.Tensor:
    """x (b, l, heads, hd), cos/sin (l, 1, hd) from rope_tables: apply_rope in four ops.

    The same products and sum as apply_rope: x_rot cos + rotate_half(x_rot) sin, x_pass unchanged.
    """
    rotated = x.index_select(-1, swap)  # (b, l, heads, hd): (x2, x1, x_pass)
    if torch.is_grad_enabled() and (x.requires_grad or cos.requires_grad):
        return x * cos + rotated * sin
    return (x * cos).add_(rotated.mul_(sin))  # inference: reuse the two fresh buffers


class Attention(nn.Module):
    def __init__(self, config, layer_idx: int):
        super().__init__()
        a = config.attention
        d = config.d_model
        self.layer_idx = layer_idx
        self.n_heads = h = a.n_heads
        self.n_kv_heads = kvh = a.n_kv_heads or a.n_heads
        if h % kvh:
            raise ValueError(f"attention: n_heads {h} is not a multiple of n_kv_heads {kvh}")
        self.head_dim = hd = a.head_dim_for(d)
        self.rotary_dim = a.rotary_dim_for(d)
        self.rope_theta = a.rope_theta
        self.max_seqlen = a.max_seqlen
        self.q_proj = nn.Linear(d, h * hd, bias=a.bias)
        self.k_proj = nn.Linear(d, kvh * hd, bias=a.bias)
        self.v_proj = nn.Linear(d, kvh * hd, bias=a.bias)
        self.o_proj = nn.Linear(h * hd, d, bias=a.bias)

    def allocate_state(self, batch_size: int, dtype=None, device=None) -> dict:
        """No keys or values yet: (b, 0, kvh, hd) each, grown by forward."""
        dtype = dtype or self.k_proj.weight.dtype
        device = device or self.k_proj.weight.device
        shape = (batch_size, 0, self.n_kv_heads, self.head_dim)
        return {"k": torch.zeros(shape, dtype=dtype, device=device),
                "v": torch.zeros(shape, dtype=dtype, device=device)}

    def allocate_static_state(self, batch_size: int, capacity: int, dtype=None, device=None) -> dict:
        """A static KV cache of `capacity` tokens (see the module docstring)."""
        dtype = dtype or self.k_proj.weight.dtype
        device = torch.device(device or self.k_proj.weight.device)
        shape = (batch_size, capacity, self.n_kv_heads, self.head_dim)
        state = {"k_static": torch.zeros(shape, dtype=dtype, device=device),
                 "v_static": torch.zeros(shape, dtype=dtype, device=device),
                 "pos": torch.zeros(1, dtype=torch.long, device=device)}
        if self.rotary_dim:
            # Views of the module-level table (shared by the layers); kept here, so that the table
            # growing later (a new tensor in _ROPE_TABLES) never moves what a graph reads.
            # In the weights' dtype (q's, as forward's table), not the cache's: a bf16 cache under an
            # fp32 model must not rotate q and k with rounded tables.
            cos, sin, swap = rope_tables(capacity, self.head_dim, self.rotary_dim, self.rope_theta, device,
                                         self.q_proj.weight.dtype)
            state.update(rope_cos=cos[:capacity], rope_sin=sin[:capacity], rope_swap=swap)  # (T, 1, hd), (hd,)
        return state

    def forward(self, x: torch.Tensor, cache=None, seq_idx=None) -> torch.Tensor:
        """x (b, l, d) -> (b, l, d). With a cache: attend to the cached tokens too, then append."""
        q, k, v = (linear_module(m, x) for m in (self.q_proj, self.k_proj, self.v_proj))
        return linear_module(self.o_proj, self._attend(q, k, v, cache, seq_idx))

    def fused_step(self, x: torch.Tensor, norm, cache) -> torch.Tensor | None:
        """x + self(norm(x)) for one token, in place in the residual x (b, 1, d): q, k and v each
        with the block's norm before it, attention, o_proj with the residual add after it
        (layers/fused_decode.py). None when this layer cannot take that path."""
        if not fused_decode.ready(x, norm, self.q_proj, self.k_proj, self.v_proj, self.o_proj):
            return None
        from ..ops.gemv_triton import fused_gemv
        b = x.shape[0]
        xr = x.view(b, -1)  # (b, d)
        q, k, v = (fused_gemv(xr, m.weight, m.bias, norm=fused_decode.norm_arg(norm)).view(b, 1, -1)
                   for m in (self.q_proj, self.k_proj, self.v_proj))
        fused_gemv(self._attend(q, k, v, cache, None).view(b, -1), self.o_proj.weight, self.o_proj.bias,
                   residual=xr)
        return x

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cache, seq_idx) -> torch.Tensor:
        """q (b, l, h hd), k, v (b, l, kvh hd), the projections of the new tokens -> (b, l, h hd)."""
        b, l, _ = q.shape
        h, kvh, hd = self.n_heads, self.n_kv_heads, self.head_dim
        past = cache.seqlen_offset if cache is not None else 0
        if self.max_seqlen is not None and past + l > self.max_seqlen:
            raise ValueError(f"attention: {past + l} tokens exceed this model's limit of {self.max_seqlen}")
        q, k, v = q.view(b, l, h, hd), k.view(b, l, kvh, hd), v.view(b, l, kvh, hd)
        if cache is not None:
            layer_state = cache.layers[self.layer_idx]
            static = "k_static" in layer_state
            rows = layer_state["k_static" if static else "k"].shape[0]
            if rows != b:  # before any write: a broadcast copy would corrupt the cache's rows
                raise ValueError(f"attention layer {self.layer_idx}: the cache was allocated for batch {rows}, "
                                 f"got {b} rows")
            if static:
                return static_attention(self, q, k, v, cache, seq_idx)  # (b, l, h hd)
        if self.rotary_dim:
            cos, sin, swap = rope_tables(past + l, hd, self.rotary_dim, self.rope_theta, q.device, q.dtype)
            cos, sin = cos[past:past + l], sin[past:past + l]  # (l, 1, hd)
            q, k = apply_rope_table(q, cos, sin, swap), apply_rope_table(k, cos, sin, swap)
        if cache is not None:
            state = cache.layers[self.layer_idx]
            if state["k"].shape[1] != past:
                raise ValueError(f"attention layer {self.layer_idx}: the cache holds {state['k'].shape[1]} "
                                 f"tokens but cache.seqlen_offset is {past}; use one cache per sequence")
            k, v = _append_kv(state, "k", k, past), _append_kv(state, "v", v, past)  # (b, t, kvh, hd)
        mask, is_causal = self._mask(b, l, k.shape[1], seq_idx, q.device)
        pad_lengths = getattr(cache, "pad_lengths", None)
        if pad_lengths is not None:
            mask, is_causal = _mask_left_padding(mask, pad_lengths, l, k.shape[1]), False
        if k.dtype != q.dtype:  # a cache kept in another dtype
            k, v = k.to(q.dtype), v.to(q.dtype)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (b, heads, ., hd)
        # enable_gqa keeps SDPA on the flash kernel for half precision; on CUDA in fp32 only the
        # math kernel takes it, which materializes (b, h, l, t) scores (64 GiB for 256 x 8192
        # tokens), so there the kv heads are repeated and the memory-efficient kernel runs instead
        use_gqa = _SDPA_HAS_GQA and not (q.is_cuda and q.dtype == torch.float32)
        if kvh != h and use_gqa:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal, enable_gqa=True)
        else:
            if kvh != h:
                k, v = k.repeat_interleave(h // kvh, dim=1), v.repeat_interleave(h // kvh, dim=1)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal)
        # (b, h, l, hd) -> (b, l, h hd); with l = 1 both orders are one, so no transpose (a view)
        return y.reshape(b, l, h * hd) if l == 1 else y.transpose(1, 2).reshape(b, l, h * hd)

    @staticmethod
    def _mask(b: int, l: int, t: int, seq_idx, device):
        """(attn_mask, is_causal) for l queries at positions t-l..t-1 over t keys."""
        past = t - l
        if seq_idx is None:
            if l == 1:
                return None, False  # one new token sees everything before it
            if past == 0:
                return None, True
            key_pos = torch.arange(t, device=device)
            return key_pos[None, :] <= (past + torch.arange(l, device=device))[:, None], False  # (l, t)
        key_pos = torch.arange(t, device=device)
        causal = key_pos[None, :] <= (past + torch.arange(l, device=device))[:, None]  # (l, t)
        key_ids = torch.cat([seq_idx[:, :1].expand(b, past), seq_idx], dim=1) if past else seq_idx  # (b, t)
        same_doc = seq_idx[:, :, None] == key_ids[:, None, :]  # (b, l, t)
        return (causal[None] & same_doc)[:, None], False  # (b, 1, l, t)


def _append_kv(state: dict, name: str, new: torch.Tensor, past: int) -> torch.Tensor:
    """Write new (b, l, kvh, hd) after `past` cached tokens; return the view of all t = past + l.

    The buffer is sized exactly on the first write (a prefill) and doubles when a later write does
    not fit, so decoding appends in O(1) amortized instead of copying the whole cache per token.
    """
    buf = state.get(f"{name}_buffer")
    need = past + new.shape[1]
    if buf is None or buf.shape[1] < need:
        capacity = need if buf is None or past == 0 else max(need, 2 * buf.shape[1])
        # A plain tensor even under inference_mode, as the cache's other states (allocated outside it):
        # a later call outside inference_mode (torch.no_grad) writes into the buffer in place.
        with torch.inference_mode(False):
            grown = torch.empty((new.shape[0], capacity, *new.shape[2:]), dtype=state[name].dtype, device=new.device)
        if past:
            grown[:, :past] = state[name][:, :past]
        buf = state[f"{name}_buffer"] = grown
    buf.narrow(1, past, new.shape[1]).copy_(new)  # copy_ casts to the cache's dtype
    state[name] = buf[:, :need]
    return state[name]


def _mask_left_padding(mask, pad_lengths: torch.Tensor, l: int, t: int) -> torch.Tensor:
    """Add left padding (cache.pad_lengths (b,): row i's first keys are padding) to an SDPA mask.

    The padding is a document of its own: real tokens never see it, padding sees only padding (so
    no query row is all masked, which would give NaN). Returns a bool mask (b, 1, l, t).
    """
    key_pos = torch.arange(t, device=pad_lengths.device)
    pad = pad_lengths[:, None]
    if l == 1:  # a decode step: the query is the last key, and causality masks nothing
        real = key_pos[None] >= pad  # (b, t)
        keep = (real == real[:, -1:])[:, None, None]  # (b, 1, 1, t)
        return keep if mask is None else keep & mask
    q_pos = key_pos[t - l:]  # the l new tokens are the last of the t keys
    keep = (q_pos[None] >= pad)[:, :, None] == (key_pos[None] >= pad)[:, None, :]  # (b, l, t)
    keep = (keep & (key_pos[None, :] <= q_pos[:, None]))[:, None]  # causal, (b, 1, l, t)
    return keep if mask is None else keep & mask


# --- the static KV cache (see the module docstring) -------------------------------------------------------
def static_attention(layer: Attention, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cache,
                     seq_idx=None) -> torch.Tensor:
    """q (b, l, h, hd), k, v (b, l, kvh, hd), not yet rotated -> (b, l, h hd), through a static KV cache."""
    state = cache.layers[layer.layer_idx]
    b, l = q.shape[:2]
    past, capacity = cache.seqlen_offset, state["k_static"].shape[1]
    if past + l > capacity:
        raise ValueError(f"attention layer {layer.layer_idx}: {past + l} tokens exceed the static KV cache's "
                         f"capacity of {capacity}; allocate the cache with a larger capacity")
    pad_lengths = getattr(cache, "pad_lengths", None)
    if l == 1 and seq_idx is None:
        y = _static_decode_step(q, k, v, state, pad_lengths, layer.n_heads, layer.n_kv_heads)
    else:
        y = _static_chunk(layer, q, k, v, state, past, seq_idx, pad_lengths)
    return y.reshape(b, l, -1)  # (b, l, h hd)


def _static_decode_step(q, k, v, state: dict, pad_lengths, h: int, kvh: int) -> torch.Tensor:
    """One token at the device-side position state["pos"]: no host sync, fixed shapes (CUDA-graph safe).

    q (b, 1, h, hd), k, v (b, 1, kvh, hd) -> (b, 1, h, hd); advances state["pos"] in place."""
    pos = state["pos"]  # (1,) long: the tokens cached so far = this token's position
    k_buf, v_buf = state["k_static"], state["v_static"]  # (b, T, kvh, hd)
    if "rope_cos" in state:
        cos, sin = state["rope_cos"].index_select(0, pos), state["rope_sin"].index_select(0, pos)  # (1, 1, hd)
        q, k = _static_rope(q, k, cos, sin, state["rope_swap"])
    k_buf.index_copy_(1, pos, k.to(k_buf.dtype))
    v_buf.index_copy_(1, pos, v.to(v_buf.dtype))
    key_pos = torch.arange(k_buf.shape[1], device=pos.device)  # (T,)
    keep = (key_pos <= pos)[None]  # (1, T): this token and those before it
    if pad_lengths is not None:
        keep = keep & (key_pos[None] >= pad_lengths[:, None])  # (b, T): not the row's left padding
    pos.add_(1)
    return _static_sdpa(q, k_buf, v_buf, keep[:, None, None, :], False, h, kvh)  # mask (b or 1, 1, 1, T)


def _static_chunk(layer: Attention, q, k, v, state: dict, past: int, seq_idx, pad_lengths) -> torch.Tensor:
    """l tokens at the host-known position `past` (a prefill or a chunk of one) -> (b, l, h, hd)."""
    b, l = q.shape[:2]
    t = past + l
    if "rope_cos" in state:
        cos, sin = state["rope_cos"][past:t], state["rope_sin"][past:t]  # (l, 1, hd)
        q, k = _static_rope(q, k, cos, sin, state["rope_swap"])
    state["k_static"][:, past:t] = k  # casts to the cache's dtype
    state["v_static"][:, past:t] = v
    state["pos"].fill_(t)
    mask, is_causal = Attention._mask(b, l, t, seq_idx, q.device)
    if pad_lengths is not None:
        mask, is_causal = _mask_left_padding(mask, pad_lengths, l, t), False
    return _static_sdpa(q, state["k_static"][:, :t], state["v_static"][:, :t], mask, is_causal,
                        layer.n_heads, layer.n_kv_heads)


def _static_rope(q, k, cos, sin, swap):
    """RoPE as Attention.forward applies it (the same table rows, so the same floats)."""
    if cos.dtype != q.dtype:  # the table is in the weights' dtype; autocast may run q in another
        cos, sin = cos.to(q.dtype), sin.to(q.dtype)
    return apply_rope_table(q, cos, sin, swap), apply_rope_table(k, cos, sin, swap)


def _static_sdpa(q, k, v, mask, is_causal: bool, h: int, kvh: int) -> torch.Tensor:
    """q (b, l, h, hd), k, v (b, t, kvh, hd) -> (b, l, h, hd), choosing the GQA route as Attention.forward."""
    if k.dtype != q.dtype:  # a cache kept in another dtype
        k, v = k.to(q.dtype), v.to(q.dtype)
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (b, heads, ., hd)
    if kvh != h and _SDPA_HAS_GQA and not (q.is_cuda and q.dtype == torch.float32):
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal, enable_gqa=True)
    else:
        if kvh != h:  # query head i reads kv head i // (h / kvh); expand + reshape, sure not to sync
            b, _, t, hd = k.shape
            k = k[:, :, None].expand(b, kvh, h // kvh, t, hd).reshape(b, h, t, hd)
            v = v[:, :, None].expand(b, kvh, h // kvh, t, hd).reshape(b, h, t, hd)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal)
    return y.transpose(1, 2)  # (b, l, h, hd)
