"""Decode speed on the GPU: mambakit (eager and CUDA graphs) against transformers' generate, for a
1.3B-class Mamba-2, a hybrid and a Transformer, at several batch sizes and prompt lengths.

Letters: b batch, l prompt length, t new tokens, d model width, v vocabulary, kvh key/value heads,
hd head dim.

Models (random weights, bf16 by default): `mamba2` d 2048 x 48 Mamba-2 blocks (mamba2-1.3b's
shape); `hybrid` the 8B study's proportions at d 2048 x 48 blocks (Megatron's allocation with
attention 0.08, MLP 0.5, attention heads of 64 with kvh = h / 4, MLP 4 d GeLU, as the small
hybrid presets); `transformer` 24 layers "*-" of d 2048 (MHA, RoPE on half of each head,
squared-ReLU MLP 4 d, as the small Transformer presets). transformers runs Mamba2ForCausalLM,
NemotronHForCausalLM and LlamaForCausalLM of the same sizes (Llama's gated MLP at 2/3 of the
width keeps the parameter count) with its own random weights.

For each (model, b, l): prefill time (until the first new token exists), then decode steps/s over
--new-tokens greedy tokens; tokens/s = b x steps/s. Achieved bandwidth = the bytes a step must
move (weights once, SSM states read and written, the KV cache read) x steps/s, against the GPU's
nominal peak and a measured device-to-device copy. Configurations whose KV cache cannot fit are
skipped with the reason; out-of-memory is recorded, not fatal. Results go to $OUT if set, else
benchmarks/results.

    python benchmarks/gpu_generation.py                                    # the full grid (long)
    python benchmarks/gpu_generation.py --models mamba2 --batches 1 --prompts 1024 --new-tokens 32
    python benchmarks/gpu_generation.py --device cpu --d-model 64 --n-layer 4 --head-dim 16 \
        --d-state 16 --vocab 256 --prompts 16 --batches 1,2 --new-tokens 4     # logic smoke test
    python benchmarks/gpu_generation.py --plot-from benchmarks/results/gpu_generation-....json \
        --plot-to docs/gpu_generation.png                                      # the plot for the docs
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import mambakit  # noqa: E402
import mambakit.cuda_graphs  # noqa: E402
import mambakit.generation  # noqa: E402
from common import machine_info, write_result  # noqa: E402
from mambakit.config import AttentionConfig, Mamba2Config, MLPConfig, ModelConfig  # noqa: E402
from mambakit.patterns import allocate_pattern  # noqa: E402

FAMILIES = ("mamba2", "hybrid", "transformer")
# Nominal HBM bandwidth (bytes/s) by device name, from the vendors' data sheets.
PEAK_BANDWIDTH = {"H200": 4.8e12, "H100 PCIe": 2.0e12, "H100 NVL": 3.9e12, "H100": 3.35e12,
                  "A100-SXM4-80GB": 2.039e12, "A100-PCIE-80GB": 1.935e12, "A100": 1.555e12}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ints = lambda s: [int(x) for x in s.split(",") if x]  # noqa: E731
    p.add_argument("--models", default=",".join(FAMILIES), help="comma list of mamba2, hybrid, transformer")
    p.add_argument("--batches", type=ints, default=[1, 16, 64])
    p.add_argument("--prompts", type=ints, default=[1024, 16384, 65536], help="prompt lengths")
    p.add_argument("--new-tokens", type=int, default=128, help="greedy tokens decoded per run")
    p.add_argument("--d-model", type=int, default=2048)
    p.add_argument("--n-layer", type=int, default=48, help="blocks (the Transformer has n_layer / 2 layers)")
    p.add_argument("--head-dim", type=int, default=64, help="Mamba-2 head dim and attention head dim")
    p.add_argument("--d-state", type=int, default=128)
    p.add_argument("--ssm-chunk", type=int, default=256)
    p.add_argument("--vocab", type=int, default=50277)
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    p.add_argument("--device", default="cuda")
    p.add_argument("--graphs", default="both", choices=["both", "on", "off"], help="mambakit with CUDA graphs")
    p.add_argument("--prefill-tokens", type=int, default=32768,
                   help="tokens per prefill chunk over the whole batch (chunk = this / b): bounds prefill memory")
    p.add_argument("--max-prefill-tokens", type=int, default=1 << 22, help="skip runs with b x l above this")
    p.add_argument("--hf", action=argparse.BooleanOptionalAction, default=True, help="also run transformers")
    p.add_argument("--hf-new-tokens", type=int, default=16, help="tokens per transformers run (it is slow)")
    p.add_argument("--hf-max-tokens", type=int, default=1 << 17, help="skip transformers runs with b x l above this")
    p.add_argument("--out", default=None, help="result folder (default: $OUT, else benchmarks/results)")
    p.add_argument("--plot-from", default=None, help="only draw the plot of an earlier result file")
    p.add_argument("--plot-to", default="docs/gpu_generation.png", help="where --plot-from draws")
    return p.parse_args(argv)


# --- models ------------------------------------------------------------------------------------------
def mambakit_config(family: str, a) -> ModelConfig:
    d, n, hd = a.d_model, a.n_layer, a.head_dim
    m2 = Mamba2Config(d_state=a.d_state, headdim=hd, chunk_size=a.ssm_chunk)
    if family == "mamba2":
        return ModelConfig(d_model=d, n_layer=n, vocab_size=a.vocab, ssm_layer="mamba2", mamba2=m2)
    heads = d // hd
    if family == "hybrid":
        pattern = allocate_pattern(n, 0.08, 0.5)
        if "*" not in pattern:  # tiny smoke sizes round the attention away; keep one
            pattern = allocate_pattern(n, 1.0 / n, 0.5)
        return ModelConfig(d_model=d, n_layer=n, vocab_size=a.vocab, layer_pattern=pattern, ssm_layer="mamba2",
                           mamba2=m2, attention=AttentionConfig(n_heads=heads, n_kv_heads=max(heads // 4, 1),
                                                                head_dim=hd),
                           mlp=MLPConfig(hidden_size=4 * d, activation="gelu"))
    if family == "transformer":
        return ModelConfig(d_model=d, n_layer=2 * (n // 2), vocab_size=a.vocab, layer_pattern="*-" * (n // 2),
                           attention=AttentionConfig(n_heads=heads, head_dim=hd, rotary_fraction=0.5),
                           mlp=MLPConfig(hidden_size=4 * d, activation="relu2"))
    raise ValueError(f"unknown model family {family!r}; expected one of {FAMILIES}")


def hf_model(family: str, cfg: ModelConfig, device, dtype):
    import transformers
    d, v = cfg.d_model, cfg.vocab_size
    common = dict(vocab_size=v, hidden_size=d, tie_word_embeddings=True)
    if family == "mamba2":
        m = cfg.mamba2
        hc = transformers.Mamba2Config(num_hidden_layers=cfg.n_layer, state_size=m.d_state, head_dim=m.headdim,
                                       num_heads=m.expand * d // m.headdim, n_groups=m.ngroups, expand=m.expand,
                                       chunk_size=m.chunk_size, **common)
        cls = transformers.Mamba2ForCausalLM
    elif family == "hybrid":
        m, at = cfg.mamba2, cfg.attention
        hc = transformers.NemotronHConfig(
            hybrid_override_pattern=cfg.layer_pattern, num_hidden_layers=cfg.n_layer, ssm_state_size=m.d_state,
            mamba_num_heads=m.expand * d // m.headdim, mamba_head_dim=m.headdim, n_groups=m.ngroups,
            chunk_size=m.chunk_size, num_attention_heads=at.n_heads, num_key_value_heads=at.n_kv_heads,
            head_dim=at.head_dim, intermediate_size=cfg.mlp.hidden_size, mlp_hidden_act="gelu",
            max_position_embeddings=1 << 20, use_mamba_kernels=False, **common)
        cls = transformers.NemotronHForCausalLM
    else:
        at = cfg.attention
        hc = transformers.LlamaConfig(num_hidden_layers=cfg.n_layer // 2, num_attention_heads=at.n_heads,
                                      num_key_value_heads=at.n_kv_heads or at.n_heads, head_dim=at.head_dim,
                                      intermediate_size=int(cfg.mlp.hidden_size * 2 / 3),
                                      max_position_embeddings=1 << 20, **common)
        cls = transformers.LlamaForCausalLM
    with torch.device(device):
        model = cls(hc)
    return model.to(dtype).eval()


# --- bytes and bandwidth ----------------------------------------------------------------------------
def weight_bytes(model) -> int:
    """Weights a decode step reads: all of them once, except an untied input embedding (b rows)."""
    total = sum(p.numel() * p.element_size() for p in model.parameters())  # a tied matrix counts once
    if isinstance(model, mambakit.LM):
        emb, head = model.embedding.weight, model.lm_head.weight
    else:
        emb, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    return total - (emb.numel() * emb.element_size() if emb is not head else 0)


def state_bytes(cfg: ModelConfig, b: int, context: int, elsize: int) -> int:
    """Cache bytes a decode step must move at `context` tokens: SSM (fp32) and conv states read and
    written, keys and values read (the new token's written, negligible)."""
    per_row = 0
    m = cfg.mamba2
    e = m.expand * cfg.d_model
    ssm = (e // m.headdim) * m.headdim * m.d_state * 4 + (e + 2 * m.ngroups * m.d_state) * m.d_conv * elsize
    per_row += 2 * ssm * cfg.layer_pattern.count("M")
    a = cfg.attention
    kvh, hd = a.n_kv_heads or a.n_heads, a.head_dim or cfg.d_model // a.n_heads
    per_row += 2 * context * kvh * hd * elsize * cfg.layer_pattern.count("*")
    return b * per_row


def nominal_peak(device) -> float | None:
    if torch.device(device).type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((bw for key, bw in PEAK_BANDWIDTH.items() if key in name), None)


def measured_copy_bandwidth(device, nbytes: int = 1 << 30) -> float | None:
    """Device-to-device copy bytes/s (read + write), median of 10 after warm-up."""
    if torch.device(device).type != "cuda":
        return None
    x = torch.empty(nbytes // 4, dtype=torch.float32, device=device)
    y = torch.empty_like(x)
    times = []
    for i in range(13):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        y.copy_(x)
        end.record()
        torch.cuda.synchronize(device)
        if i >= 3:
            times.append(start.elapsed_time(end) / 1e3)
    del x, y
    return 2 * nbytes / sorted(times)[len(times) // 2]


# --- timing ---------------------------------------------------------------------------------------------
def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def _reset_memory(device) -> None:
    if torch.device(device).type == "cuda":
        gc.collect()  # frees what a failed run left in reference cycles before the next one
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak_memory_gb(device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if torch.device(device).type == "cuda" else None


def time_mambakit(model, b: int, l: int, new: int, chunk: int, modes: list, device) -> dict:
    """One chunked prefill, then new - 1 greedy steps per mode on the same cache: eager steps
    ("mambakit") first, graph replays ("mambakit+graphs") after, so a long prompt is prefilled once.
    The context grows by new - 1 between the two, nothing next to l. -> {impl: timing}."""
    v = model.config.vocab_size
    # capacity: the attention layers get a static KV cache, so the whole step is one graph (the
    # eager steps then run on that static cache too); eager and graphed runs share the cache
    decoder = (mambakit.cuda_graphs.graphed_decoder(model, b, device, capacity=l + 2 * new)
               if "mambakit+graphs" in modes else None)

    def run(length: int, n: int) -> dict:
        ids = torch.randint(0, v, (b, length), device=device)
        cache = decoder.begin() if decoder is not None else model.allocate_cache(b, device=device)
        steps = {"mambakit": lambda t: model(t, cache=cache, validate=False)[:, -1],
                 "mambakit+graphs": decoder.step if decoder is not None else None}
        _sync(device)
        t0 = time.perf_counter()
        with torch.inference_mode():
            token = mambakit.generation.prefill(model, ids, cache, chunk=chunk).argmax(-1)  # (b,)
        _sync(device)
        out = {"prefill_s": time.perf_counter() - t0, "peak_memory_gb": _peak_memory_gb(device)}
        for impl in modes:
            step = steps[impl]
            if step is None:
                out[impl] = {"skipped": "CUDA graphs unavailable here (see the log)"}
                continue
            t1 = time.perf_counter()
            with torch.inference_mode():
                for _ in range(n - 1):
                    token = step(token[:, None]).argmax(-1)
            _sync(device)
            out[impl] = {"decode_s": time.perf_counter() - t1, "steps": n - 1}
        return out

    try:
        run(min(l, chunk), 4)  # warm-up: graph capture (once per batch size), kernels of a prefill chunk
        _reset_memory(device)
        return run(l, new)
    finally:
        if decoder is not None:
            decoder.busy = False


def time_transformers(hf, b: int, l: int, new: int, vocab: int, device) -> dict:
    """transformers' generate: prefill = generate(1 token); decode = (generate(new) - that) / (new - 1)."""
    hf.generation_config.eos_token_id = None
    hf.generation_config.pad_token_id = 0

    def run(length: int, n: int) -> float:
        ids = torch.randint(0, vocab, (b, length), device=device)
        _sync(device)
        t0 = time.perf_counter()
        with torch.inference_mode():
            hf.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                        do_sample=False, use_cache=True)
        _sync(device)
        return time.perf_counter() - t0

    run(min(l, 64), 2)  # warm-up
    _reset_memory(device)
    one = run(l, 1)
    full = run(l, new)
    # Two runs' noise can exceed a short decode: no figure rather than a wrong one.
    return {"prefill_s": one, "decode_s": full - one, "steps": (new - 1) if full > one else 0,
            "peak_memory_gb": _peak_memory_gb(device)}


def _fits(cfg: ModelConfig, model, b: int, context: int, device) -> str | None:
    """A reason to skip, when weights + cache exceed the GPU (a growing KV cache also copies one
    layer's keys and values at each step; 1 GiB more for activations)."""
    if torch.device(device).type != "cuda":
        return None
    elsize = next(model.parameters()).element_size()
    cache = state_bytes(cfg, b, context, elsize)
    need = weight_bytes(model) + cache + 2 * cache / max(cfg.layer_pattern.count("*"), 1) + 2**30
    total = torch.cuda.get_device_properties(device).total_memory
    if need > total:
        return f"needs ~{need / 2**30:.0f} GiB for weights and cache, the GPU has {total / 2**30:.0f} GiB"
    return None


def _record(family, impl, b, l, timing, model, cfg, peak) -> dict:
    steps_per_s = timing["steps"] / timing["decode_s"] if timing["steps"] > 0 else None
    elsize = next(model.parameters()).element_size()
    moved = weight_bytes(model) + state_bytes(cfg, b, l + timing["steps"] // 2, elsize)
    bw = moved * steps_per_s if steps_per_s else None
    return {"model": family, "impl": impl, "batch": b, "prompt": l, **timing,
            "prefill_tok_s": b * l / timing["prefill_s"],
            "decode_steps_s": steps_per_s, "decode_tok_s": b * steps_per_s if steps_per_s else None,
            "bytes_per_step": moved, "achieved_bandwidth": bw,
            "fraction_of_peak": bw / peak if bw and peak else None}


def _run_safely(fn, device):
    try:
        return fn()
    except torch.OutOfMemoryError as err:
        return {"error": "out of memory: " + str(err).splitlines()[0]}
    finally:
        _reset_memory(device)


def bench(a) -> dict:
    device = torch.device(a.device)
    dtype = getattr(torch, a.dtype)
    peak, copy_bw = nominal_peak(device), measured_copy_bandwidth(device)
    families = [f for f in a.models.split(",") if f]
    impls = {"both": ["mambakit", "mambakit+graphs"], "on": ["mambakit+graphs"], "off": ["mambakit"]}[a.graphs]
    runs, sizes = [], {}
    for family in families:
        cfg = mambakit_config(family, a)
        torch.manual_seed(0)
        with torch.device(device):
            model = mambakit.LM(cfg)
        model = model.to(dtype).eval()
        sizes[family] = {"parameters": model.num_parameters(), "layer_pattern": cfg.layer_pattern,
                         "config": cfg.to_dict()}
        for b in a.batches:
            for l in a.prompts:
                base = {"model": family, "batch": b, "prompt": l}
                skip = _fits(cfg, model, b, l + a.new_tokens, device)
                if b * l > a.max_prefill_tokens:
                    skip = f"b x l = {b * l} > --max-prefill-tokens {a.max_prefill_tokens}"
                if skip:
                    for impl in impls:
                        runs.append({**base, "impl": impl, "skipped": skip})
                        _print_run(runs[-1])
                    continue
                chunk = max(64, a.prefill_tokens // b)
                timing = _run_safely(lambda: time_mambakit(model, b, l, a.new_tokens, chunk, impls, device), device)
                for impl in impls:
                    if "error" in timing or "skipped" in timing[impl]:
                        runs.append({**base, "impl": impl, **(timing.get(impl) if "error" not in timing else timing)})
                    else:
                        t = {"prefill_s": timing["prefill_s"], "peak_memory_gb": timing["peak_memory_gb"],
                             **timing[impl]}
                        runs.append({**base, "prefill_chunk": chunk, **_record(family, impl, b, l, t, model, cfg, peak)})
                    _print_run(runs[-1])
        mambakit.cuda_graphs.release(model)
        del model
        _reset_memory(device)
        if a.hf:
            runs += _bench_transformers(family, cfg, a, device, dtype, peak)
    return {"machine": machine_info(), "args": vars(a), "peak_bandwidth_nominal": peak,
            "copy_bandwidth_measured": copy_bw, "models": sizes, "runs": runs, "summary": summarize(runs)}


def _bench_transformers(family, cfg, a, device, dtype, peak) -> list[dict]:
    runs = []
    try:
        hf = hf_model(family, cfg, device, dtype)
    except Exception as err:  # a transformers version without this architecture
        return [{"model": family, "impl": "transformers", "error": f"cannot build: {err}"}]
    for b in a.batches:
        for l in a.prompts:
            base = {"model": family, "impl": "transformers", "batch": b, "prompt": l}
            if b * l > a.hf_max_tokens:
                runs.append({**base, "skipped": f"b x l = {b * l} > --hf-max-tokens {a.hf_max_tokens}"})
                continue
            skip = _fits(cfg, hf, b, l + a.hf_new_tokens, device)
            if skip:
                runs.append({**base, "skipped": skip})
                continue
            out = _run_safely(lambda: _record(family, "transformers", b, l, time_transformers(
                hf, b, l, a.hf_new_tokens, cfg.vocab_size, device), hf, cfg, peak), device)
            runs.append({**base, **out})
            _print_run(runs[-1])
    del hf
    _reset_memory(device)
    return runs


def summarize(runs: list[dict]) -> dict:
    """Best decode tok/s per (model, impl, b, l); mamba2 batch-1 bandwidth; hybrid / Transformer ratios."""
    ok = [r for r in runs if r.get("decode_tok_s")]
    best = {}
    for r in ok:
        key = f"{r['model']}|{r['impl']}|b{r['batch']}|l{r['prompt']}"
        best[key] = r["decode_tok_s"]

    def fastest_mambakit(model, b, l):
        vals = [r["decode_tok_s"] for r in ok if r["model"] == model and r["impl"].startswith("mambakit")
                and r["batch"] == b and r["prompt"] == l]
        return max(vals) if vals else None

    ratios, vs_hf = {}, {}
    for r in ok:
        b, l = r["batch"], r["prompt"]
        hy, tr = fastest_mambakit("hybrid", b, l), fastest_mambakit("transformer", b, l)
        if hy and tr:
            ratios[f"b{b}|l{l}"] = hy / tr
        if r["impl"] == "transformers":
            ours = fastest_mambakit(r["model"], b, l)
            if ours:
                vs_hf[f"{r['model']}|b{b}|l{l}"] = ours / r["decode_tok_s"]
    bw = {f"{r['impl']}|l{r['prompt']}": r["fraction_of_peak"] for r in ok
          if r["model"] == "mamba2" and r["batch"] == 1 and r["fraction_of_peak"] is not None}
    return {"decode_tok_s": best, "hybrid_over_transformer": ratios, "mambakit_over_transformers": vs_hf,
            "mamba2_batch1_fraction_of_peak_bandwidth": bw}


_PARTIAL: list[Path] = []  # a jsonl file that gets every row as it is measured (a killed run keeps them)


def _print_run(r: dict) -> None:
    for path in _PARTIAL:
        with open(path, "a") as fh:
            fh.write(json.dumps(r) + "\n")
    head = f"{r['model']:<12} {r['impl']:<16} b {r['batch']:<3} l {r['prompt']:<6}"
    if "error" in r or "skipped" in r:
        print(f"{head} {r.get('error') or 'skipped: ' + r['skipped']}", flush=True)
        return
    frac = f" {100 * r['fraction_of_peak']:.0f}% of peak" if r.get("fraction_of_peak") else ""
    mem = f" peak mem {r['peak_memory_gb']:.1f} GiB" if r.get("peak_memory_gb") is not None else ""
    dec = f"{r['decode_tok_s']:.1f}" if r.get("decode_tok_s") else "-"
    print(f"{head} prefill {r['prefill_tok_s']:.0f} tok/s, decode {dec} tok/s "
          f"({r['decode_steps_s'] or 0:.1f} steps/s){frac}{mem}", flush=True)


def plot(payload: dict, path) -> Path:
    """Decode tokens/s against prompt length, one panel per batch size, a line per model and impl."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    ok = [r for r in payload["runs"] if r.get("decode_tok_s")]
    batches = sorted({r["batch"] for r in ok})
    fig, axes = plt.subplots(1, max(len(batches), 1), figsize=(5 * max(len(batches), 1), 4), squeeze=False)
    keys = sorted({(r["model"], r["impl"]) for r in ok})
    colors = dict(zip(keys, plt.cm.tab10.colors))  # one color per line in every panel
    for ax, b in zip(axes[0], batches):
        for key in keys:
            pts = sorted((r["prompt"], r["decode_tok_s"]) for r in ok if r["batch"] == b and (r["model"], r["impl"]) == key)
            if pts:
                ax.plot([p for p, _ in pts], [t for _, t in pts], marker="o", color=colors[key],
                        label=f"{key[0]} ({key[1]})")
        ax.set(xscale="log", yscale="log", xlabel="prompt tokens", ylabel="decode tokens/s", title=f"batch {b}")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].legend(fontsize=7)
    gpu = payload["machine"].get("gpu", "cpu")
    fig.suptitle(f"mambakit decode speed, {gpu}")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv=None) -> dict:
    a = parse_args(argv)
    if a.plot_from:
        payload = json.loads(Path(a.plot_from).read_text())
        print(f"wrote {plot(payload, a.plot_to)}")
        return payload
    out = a.out or os.environ.get("OUT") or None
    folder = Path(out) if out else Path(__file__).resolve().parent / "results"
    folder.mkdir(parents=True, exist_ok=True)
    _PARTIAL[:] = [folder / "gpu_generation-rows.jsonl"]
    payload = bench(a)
    path = write_result("gpu_generation", payload, out)
    for key, value in payload["summary"]["hybrid_over_transformer"].items():
        print(f"hybrid / transformer decode speed at {key}: {value:.2f}x")
    for key, value in payload["summary"]["mamba2_batch1_fraction_of_peak_bandwidth"].items():
        print(f"mamba2 batch 1 {key}: {100 * value:.0f}% of nominal peak bandwidth")
    print(f"wrote {path}")
    return payload


if __name__ == "__main__":
    main()
