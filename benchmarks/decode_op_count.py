"""Aten ops and CPU time of one decode step (b = 1, one new token, a cache), per block kind.

Letters: b batch, l new tokens (1 here), t cached tokens.

On a GPU a decode step of a small model costs what its ops cost to dispatch and launch, not what
they compute, so the number of aten ops per block is what to shrink. This script counts them with
torch.profiler on the CPU: forward hooks wrap each block in a record_function named after its kind
(M SSM, * attention, - MLP), and every aten op under it is counted; "top" are those called from
Python (what a GPU launches or dispatches), "all" include the ops they call inside. Times are wall
microseconds per step without the profiler, best of --repeats rounds of --steps steps, and per
block kind from perf_counter hooks (their own overhead included, about 1 us a block).

    python benchmarks/decode_op_count.py                      # the tiny and 130m presets
    python benchmarks/decode_op_count.py --presets transformer-tiny --root /tmp/base   # another checkout

--root puts another checkout of mambakit first on sys.path, so that two versions can be compared
in alternating runs (interleaved A/B) on the same machine.
"""
from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict

DEFAULT_PRESETS = ("mamba2-tiny", "transformer-tiny", "hybrid-tiny",
                   "mamba2-130m", "transformer-130m", "mamba2-hybrid-130m")
KIND_NAMES = {"M": "ssm", "*": "attention", "-": "mlp"}


def _model(name: str, prompt: int):
    import torch
    from mambakit.model import LM
    from mambakit.presets import PRESETS
    torch.manual_seed(0)
    model = LM(PRESETS[name]).eval()
    cache = model.allocate_cache(1)
    ids = torch.randint(0, model.config.vocab_size, (1, prompt))
    with torch.inference_mode():
        model(ids, cache=cache, validate=False, last_only=True)
    return model, cache


def _hooks(model, enter, leave):
    handles = []
    for block in model.layers:
        kind = block.kind
        handles.append(block.register_forward_pre_hook(lambda m, a, kind=kind: enter(kind)))
        handles.append(block.register_forward_hook(lambda m, a, o, kind=kind: leave(kind)))
    return handles


def count_ops(model, cache, token) -> dict:
    """{kind: (top-level aten ops, all aten ops) per block}, plus "step": the whole step."""
    import torch
    from torch.profiler import ProfilerActivity, profile, record_function
    open_ctx = {}

    def enter(kind):
        ctx = record_function(f"block{kind}")
        ctx.__enter__()
        open_ctx[kind] = ctx

    def leave(kind):
        open_ctx.pop(kind).__exit__(None, None, None)

    handles = _hooks(model, enter, leave)
    try:
        with torch.inference_mode():
            model(token, cache=cache, validate=False)  # warm caches the step may build once
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                with record_function("step"):
                    model(token, cache=cache, validate=False)
    finally:
        for h in handles:
            h.remove()
    events = prof.events()
    blocks = defaultdict(int)
    for kind in model.config.layer_pattern:
        blocks[kind] += 1
    top, total = defaultdict(int), defaultdict(int)
    for ev in events:
        if not ev.name.startswith("aten::"):
            continue
        parent, depth_aten, owner = ev.cpu_parent, 0, None
        while parent is not None:
            if parent.name.startswith("aten::"):
                depth_aten += 1
            elif parent.name.startswith("block") and owner is None:
                owner = parent.name[len("block"):]
            elif parent.name == "step":
                break
            parent = parent.cpu_parent
        key = owner or "other"
        total[key] += 1
        total["step"] += 1
        if depth_aten == 0:
            top[key] += 1
            top["step"] += 1
    out = {}
    for key in list(blocks) + ["other", "step"]:
        n = blocks.get(key, 1)
        out[key] = (top[key] / n, total[key] / n)
    return out


def time_step(model, cache, token, steps: int, repeats: int) -> tuple[float, dict]:
    """(best us per step, {kind: us per block} from hooks) ."""
    import torch
    best = float("inf")
    with torch.inference_mode():
        for _ in range(repeats):
            t0 = time.perf_counter()
            for _ in range(steps):
                model(token, cache=cache, validate=False)
            best = min(best, (time.perf_counter() - t0) / steps * 1e6)
    spent, started = defaultdict(float), {}

    def enter(kind):
        started[kind] = time.perf_counter()

    def leave(kind):
        spent[kind] += time.perf_counter() - started[kind]

    per_kind = {}
    for _ in range(repeats):
        spent.clear()
        handles = _hooks(model, enter, leave)
        try:
            with torch.inference_mode():
                for _ in range(steps):
                    model(token, cache=cache, validate=False)
        finally:
            for h in handles:
                h.remove()
        for kind, s in spent.items():
            n = model.config.layer_pattern.count(kind) * steps
            per_kind[kind] = min(per_kind.get(kind, float("inf")), s / n * 1e6)
    return best, per_kind


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--presets", nargs="+", default=list(DEFAULT_PRESETS))
    p.add_argument("--prompt", type=int, default=32, help="prompt tokens prefilled before the step")
    p.add_argument("--steps", type=int, default=50, help="decode steps per timed round")
    p.add_argument("--repeats", type=int, default=5, help="timed rounds; the best is reported")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--root", default=None, help="a mambakit checkout to import instead of this one")
    args = p.parse_args(argv)
    if args.root:
        sys.path.insert(0, args.root)
    import torch
    import mambakit
    torch.set_num_threads(args.threads)
    print(f"# mambakit from {mambakit.__file__}, torch {torch.__version__}, {args.threads} thread(s), "
          f"prompt {args.prompt}, best of {args.repeats} x {args.steps} steps")
    print(f"{'preset':20s} {'block':9s} {'n':>3s} {'ops/blk':>8s} {'all/blk':>8s} {'us/blk':>8s}")
    for name in args.presets:
        model, cache = _model(name, args.prompt)
        token = torch.zeros(1, 1, dtype=torch.long)
        ops = count_ops(model, cache, token)
        us, per_kind = time_step(model, cache, token, args.steps, args.repeats)
        for kind in dict.fromkeys(model.config.layer_pattern):
            top, total = ops[kind]
            print(f"{name:20s} {KIND_NAMES[kind]:9s} {model.config.layer_pattern.count(kind):3d} "
                  f"{top:8.0f} {total:8.0f} {per_kind[kind]:8.1f}")
        top, total = ops["step"]
        print(f"{name:20s} {'step':9s} {'':3s} {top:8.0f} {total:8.0f} {us:8.1f}   (outside blocks: "
              f"{ops['other'][0]:.0f} ops)")


if __name__ == "__main__":
    main()
