"""CPU prefill and decode speed of mambakit against transformers, with the machine's floors.

Letters: b batch (1), l prompt length, t new tokens, d model width, v vocabulary.

For each family a 130M-shaped model with random weights (tied embeddings) is built in
transformers, saved, and loaded into mambakit, so both run the same weights in the same process.
Prefill: one forward over l tokens that fills the cache. Decode: t greedy tokens after that prefill,
timed from the first new token to the last (each token's time stamped as it comes out).
Each figure is the best of --repeats runs. Floors are measured in the same run: prefill
tokens/s <= matmul FLOP/s / (matmul FLOPs per token), the rate that of the faster of torch.mm (MKL)
and oneDNN (which mambakit's projections run on since session 15: on this machine it is the faster,
so the floor rose with it); decode tokens/s <= matrix-vector bytes/s /
(weight bytes per token). Elementwise work (conv, scan, norms) is not in the FLOP count.

    python benchmarks/cpu_generation.py                   # both families, l 1024, t 128
    python benchmarks/cpu_generation.py --families mamba2 --prefill 256 --decode 16 --repeats 1
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import mambakit  # noqa: E402
from common import best_of, machine_info, matmul_rates, matvec_bandwidths, write_result  # noqa: E402

VOCAB = 50280


def build_pair(family: str, d_model: int, n_layer: int):
    import transformers
    if family == "mamba":
        cfg = transformers.MambaConfig(vocab_size=VOCAB, hidden_size=d_model, num_hidden_layers=n_layer,
                                       state_size=16, expand=2, tie_word_embeddings=True)
        hf = transformers.MambaForCausalLM(cfg)
    elif family == "mamba2":
        cfg = transformers.Mamba2Config(vocab_size=VOCAB, hidden_size=d_model, num_hidden_layers=n_layer,
                                        state_size=128, head_dim=64, num_heads=2 * d_model // 64, n_groups=1,
                                        expand=2, chunk_size=256, tie_word_embeddings=True)
        hf = transformers.Mamba2ForCausalLM(cfg)
    else:
        raise ValueError(f"unknown family {family!r}; expected mamba or mamba2")
    hf.eval()
    with tempfile.TemporaryDirectory() as tmp:
        hf.save_pretrained(tmp)
        ours = mambakit.load(tmp)
    return hf, ours


def matmul_flops_per_token(model) -> float:
    """2 x the weights of every Linear (the tied head included), plus SSD's chunk matmuls for Mamba-2."""
    flops = 0.0
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            flops += 2 * module.weight.numel()
    c = model.config
    if c.ssm_layer == "mamba2":
        m = c.mamba2
        h = m.expand * c.d_model // m.headdim
        per_layer = m.chunk_size * (m.ngroups * m.d_state + h * m.headdim) + 4 * h * m.headdim * m.d_state
        flops += c.layer_pattern.count("M") * per_layer
    return flops


def weight_bytes_per_token(model) -> float:
    return sum(p.numel() * p.element_size() for p in model.parameters())  # tied head counted once


@torch.inference_mode()
def measure(family: str, args) -> dict:
    hf, ours = build_pair(family, args.d_model, args.n_layer)
    ids = torch.randint(0, VOCAB, (1, args.prefill))

    def ours_prefill():
        ours(ids, cache=ours.allocate_cache(1))

    def ours_prefill_last():  # what generate's prefill runs: the head on the last position only
        ours(ids, cache=ours.allocate_cache(1), last_only=True)

    def hf_prefill():
        hf(ids, use_cache=True)

    # Decode: each generation records the time at which every new token is out; the steps are the
    # span from the first new token (prefill + one sample) to the last, so prefill's noise stays out.
    def ours_decode():
        stamps = []
        for _ in mambakit.stream(ours, ids, max_new_tokens=args.decode):
            stamps.append(time.perf_counter())
        return stamps

    def hf_decode():
        from transformers.generation.streamers import BaseStreamer

        class Stamps(BaseStreamer):
            def __init__(self):
                self.stamps = []

            def put(self, value):  # first the prompt, then each new token
                self.stamps.append(time.perf_counter())

            def end(self):
                pass

        streamer = Stamps()
        hf.generate(ids, max_new_tokens=args.decode, min_new_tokens=args.decode, do_sample=False, pad_token_id=0,
                    streamer=streamer)
        return streamer.stamps[1:]

    def decode_seconds(run) -> float:
        """Best over --repeats generations of the time of the (t - 1) steps after the first new token."""
        run()  # warm-up
        spans = []
        for _ in range(args.repeats):
            stamps = run()
            if len(stamps) != args.decode:
                raise RuntimeError(f"expected {args.decode} new tokens, got {len(stamps)}")
            spans.append(stamps[-1] - stamps[0])
        return min(spans)

    row = {"family": family, "prefill_tokens": args.prefill, "decode_tokens": args.decode,
           "params": sum(p.numel() for p in ours.parameters())}
    for who, prefill, dec in (("mambakit", ours_prefill, ours_decode), ("transformers", hf_prefill, hf_decode)):
        t_prefill = best_of(prefill, args.repeats)
        row[f"{who}_prefill_tok_s"] = args.prefill / t_prefill
        row[f"{who}_decode_tok_s"] = (args.decode - 1) / decode_seconds(dec)
        print(f"  {family:7s} {who:12s} prefill {row[f'{who}_prefill_tok_s']:8.1f} tok/s   "
              f"decode {row[f'{who}_decode_tok_s']:6.2f} tok/s", flush=True)
    row["mambakit_prefill_last_only_tok_s"] = args.prefill / best_of(ours_prefill_last, args.repeats)
    print(f"  {family:7s} mambakit     prefill {row['mambakit_prefill_last_only_tok_s']:8.1f} tok/s with the last "
          "position's logits only (as generate)", flush=True)
    row["flops_per_token"] = matmul_flops_per_token(ours)
    row["weight_bytes_per_token"] = weight_bytes_per_token(ours)
    return row


@torch.inference_mode()
def decode_at_contexts(preset: str, contexts: list[int], steps: int, repeats: int) -> list[dict]:
    """Decode tok/s of one model after prompts of growing length: one cache, prefilled in pieces up to
    each context in turn, then `steps` greedy steps timed (best of `repeats`, each on a copy of the state)."""
    config = mambakit.ModelConfig.from_preset(preset)
    model = mambakit.LM(config).eval()
    cache = model.allocate_cache(1)
    token = torch.randint(0, config.vocab_size, (1, 1))
    rows, done = [], 0
    for context in sorted(contexts):
        while done < context:  # chunked prefill: bounded memory for any context
            n = min(1024, context - done)
            model(torch.randint(0, config.vocab_size, (1, n)), cache=cache, validate=False, last_only=True)
            done += n
        best = float("inf")
        for _ in range(repeats):
            snapshot = _copy_cache(cache)
            t0 = time.perf_counter()
            for _ in range(steps):
                model(token, cache=snapshot, validate=False)
            best = min(best, time.perf_counter() - t0)
        rows.append({"model": preset, "context": context, "decode_tok_s": steps / best, "cache_bytes": cache.nbytes})
        print(f"  {preset:22s} context {context:6d}: decode {steps / best:6.2f} tok/s, cache {cache.nbytes / 2**20:7.1f} MiB",
              flush=True)
    return rows


def _copy_cache(cache):
    """A copy whose steps leave the original untouched (buffers cloned, views re-made on the clones)."""
    import copy
    clone = copy.copy(cache)
    clone.layers = []
    for state in cache.layers:
        new = {k: v.clone() for k, v in state.items() if k not in ("k", "v")}
        for name in ("k", "v"):
            if name in state:
                new[name] = new[f"{name}_buffer"][:, : state[name].shape[1]] if f"{name}_buffer" in new else state[name].clone()
        clone.layers.append(new)
    return clone


def measure_floors() -> dict:
    """The matmul rate (prefill floor) and the matrix-vector bytes/s (decode floor: the better of
    torch's and mambakit's products, common.matvec_bandwidths), printed."""
    rates = matvec_bandwidths()
    mm = matmul_rates()
    floors = {"matmul_flop_s": max(mm.values()), "matmul_flop_s_mkl": mm["mkl"], "matmul_flop_s_onednn": mm["onednn"],
              "matvec_bytes_s": max(rates["torch"], rates["mambakit"] or 0.0),
              "matvec_bytes_s_torch": rates["torch"], "matvec_bytes_s_mambakit": rates["mambakit"],
              "read_bytes_s": rates["read"]}
    print(f"floors: matmul {floors['matmul_flop_s'] / 1e9:.1f} GFLOP/s (torch.mm/MKL {mm['mkl'] / 1e9:.1f}, "
          f"oneDNN {mm['onednn'] / 1e9:.1f}), matvec {floors['matvec_bytes_s'] / 1e9:.1f} GB/s "
          f"(torch {rates['torch'] / 1e9:.1f}, mambakit {(rates['mambakit'] or 0) / 1e9:.1f}, "
          f"plain read {rates['read'] / 1e9:.1f})")
    return floors


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--families", nargs="*", default=["mamba", "mamba2"])
    parser.add_argument("--d-model", type=int, default=768)
    parser.add_argument("--n-layer", type=int, default=24)
    parser.add_argument("--prefill", type=int, default=1024)
    parser.add_argument("--decode", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--context-models", nargs="*", default=["mamba2-hybrid-130m", "transformer-130m"],
                        help="presets decoded at growing contexts (issue 4: SSM cost flat, attention grows)")
    parser.add_argument("--contexts", nargs="+", type=int, default=[512, 2048, 8192])
    parser.add_argument("--context-steps", type=int, default=16)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default=None, help="folder for the JSON (default benchmarks/results)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    load_start = list(os.getloadavg())  # machine_info() records it again at the end
    floors = measure_floors()
    rows = []
    for family in args.families:
        row = measure(family, args)
        row["prefill_floor_tok_s"] = floors["matmul_flop_s"] / row["flops_per_token"]
        row["decode_floor_tok_s"] = floors["matvec_bytes_s"] / row["weight_bytes_per_token"]
        # the stricter bound: the weights read at the plain streaming rate (no product at all)
        row["decode_read_floor_tok_s"] = floors["read_bytes_s"] / row["weight_bytes_per_token"]
        rows.append(row)
    context_rows = []
    for preset in args.context_models:
        context_rows += decode_at_contexts(preset, args.contexts, args.context_steps, args.repeats)
    # the floors again at the end: a neighbour that woke up mid-run shows here
    floors_end = measure_floors()
    from mambakit.ops import cpu_kernels
    payload = {"machine": machine_info(), "mambakit_cpu_kernels": cpu_kernels.available(), "load_average_start": load_start, "floors": floors, "floors_end": floors_end, "args": vars(args), "rows": rows,
               "context_rows": context_rows}
    path = write_result("cpu_generation", payload, args.out)
    print(markdown_table(rows))
    print(context_table(context_rows))
    print(f"written: {path}")
    return 0


def markdown_table(rows) -> str:
    lines = ["| model | prefill tok/s (mambakit / transformers) | ratio | % of matmul floor "
             "| decode tok/s (mambakit / transformers) | ratio | % of bandwidth floor | % of plain read |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['family']} ({r['params'] / 1e6:.0f}M) | {r['mambakit_prefill_tok_s']:.1f} / "
            f"{r['transformers_prefill_tok_s']:.1f} | {r['mambakit_prefill_tok_s'] / r['transformers_prefill_tok_s']:.2f}x "
            f"| {100 * r['mambakit_prefill_tok_s'] / r['prefill_floor_tok_s']:.0f}% "
            f"| {r['mambakit_decode_tok_s']:.2f} / {r['transformers_decode_tok_s']:.2f} "
            f"| {r['mambakit_decode_tok_s'] / r['transformers_decode_tok_s']:.2f}x "
            f"| {100 * r['mambakit_decode_tok_s'] / r['decode_floor_tok_s']:.0f}% "
            f"| {100 * r['mambakit_decode_tok_s'] / r['decode_read_floor_tok_s']:.0f}% |")
    return "\n".join(lines)


def context_table(rows) -> str:
    contexts = sorted({r["context"] for r in rows})
    lines = ["| model | " + " | ".join(f"decode tok/s at {c}" for c in contexts) + " |",
             "|---|" + "---|" * len(contexts)]
    for model in dict.fromkeys(r["model"] for r in rows):
        by = {r["context"]: r for r in rows if r["model"] == model}
        lines.append(f"| {model} | " + " | ".join(f"{by[c]['decode_tok_s']:.2f}" for c in contexts) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
