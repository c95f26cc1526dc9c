"""Where the SSD time goes on the GPU: per-kernel CUDA time of mambakit's Triton SSD and of
mamba_ssm's mamba_chunk_scan_combined, forward and forward+backward, from torch.profiler.

Letters: b batch, l length, h heads (32), p head dim (64), n state dim (128), g groups.

    PYTHONPATH=.carry:. python benchmarks/gpu_profile_ssd.py --out DIR [--shapes 1x65536,4x4096]
        [--config JSON] [--variants 'JSON;JSON;...'] [--no-profile]

Writes gpu_profile_ssd.json: for each (shape, impl, pass) the kernels with their total and
per-call CUDA ms over --iters calls, and prints the tables.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
from gpu_kernels import H, P, mamba_ssm_fn, ssd_inputs  # noqa: E402


# The default --variants: the row-block kernels (mambakit/ops/ssd/triton_rows.py) against the
# recurrent ones, their block sizes and grid order, and per-kernel settings chosen from the sm_90
# compile (registers, spills); the last one combines the row-block choices.
ROWS_BM32 = {"scan_impl": "rows", "rows_bm": 32, "rows_stages": 3}
VARIANTS = [
    {"scan_impl": "rows"}, {"scan_impl": "rows", "rows_cb": True}, dict(ROWS_BM32), dict(ROWS_BM32, rows_cb=True),
    {"scan_impl": "rows", "rows_heads_first": False}, {"scan_impl": "rows", "rows_bp": 32},
    {"dx_impl": "rows"}, {"dx_impl": "rows", "dx_rows_bm": 32}, {"dx_impl": "rows", "dx_rows_bm": 32, "dx_rows_warps": 8},
    {"dbdc_stages": 1}, {"scan_bp": 32}, {"state_warps": 4},
    dict(ROWS_BM32, rows_cb=True, dx_impl="rows", dx_rows_bm=32, dbdc_stages=1),
]


def profile(fn, iters: int) -> list[dict]:
    from torch.profiler import ProfilerActivity, profile as prof
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    with prof(activities=[ProfilerActivity.CUDA]) as p:
        for _ in range(iters):
            fn()
        torch.cuda.synchronize()
    rows = []
    for ev in p.key_averages():
        ms = ev.device_time_total / 1e3 / iters
        if ms > 0:
            rows.append({"kernel": ev.key[:90], "ms_per_iter": ms, "calls_per_iter": ev.count / iters})
    rows.sort(key=lambda r: -r["ms_per_iter"])
    return rows


def time_variants(args, config, ssd_triton) -> list[dict]:
    """fwd and fwd+bwd median ms of CONFIG variants at the first shape (the default first)."""
    import triton
    b, l = map(int, args.shapes.split(",")[0].split("x"))
    insg = ssd_inputs(b, l, args.g, grad=True)
    gy = torch.randn(b, l, H, P, device="cuda", dtype=torch.bfloat16)
    base, rows = dict(config), []
    for var in [{}] + [json.loads(v) for v in args.variants.split(";") if v.strip()]:
        config.update(base, **var)
        try:
            with torch.no_grad():
                fwd = triton.testing.do_bench(lambda: ssd_triton(**insg, chunk_size=256, dt_softplus=True),
                                              return_mode="median")

            def fb():
                ssd_triton(**insg, chunk_size=256, dt_softplus=True)[0].backward(gy)
            fwdbwd = triton.testing.do_bench(fb, grad_to_none=list(insg.values()), return_mode="median")
            row = {"shape": f"{b}x{l}", "variant": var, "fwd_ms": fwd, "fwdbwd_ms": fwdbwd}
        except Exception as exc:  # noqa: BLE001 - keep the other variants
            row = {"shape": f"{b}x{l}", "variant": var, "error": repr(exc)[:300]}
        print(json.dumps(row), flush=True)
        rows.append(row)
    config.clear()
    config.update(base)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results"))
    ap.add_argument("--shapes", default="1x65536,4x4096")
    ap.add_argument("--g", type=int, default=1)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--variants", default=";".join(json.dumps(v) for v in VARIANTS),
                    help="CONFIG overrides timed at the first shape (fwd, fwd+bwd median ms), ';'-separated JSON")
    ap.add_argument("--config", default="{}", help="CONFIG overrides applied first (JSON), to the profile too")
    ap.add_argument("--no-profile", action="store_true", help="only time the variants")
    args = ap.parse_args()
    from mambakit.ops.ssd.triton import CONFIG, ssd_triton
    CONFIG.update(json.loads(args.config))
    peer = mamba_ssm_fn()
    out = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "config": dict(CONFIG), "runs": []}
    for shape in ([] if args.no_profile else args.shapes.split(",")):
        b, l = map(int, shape.split("x"))
        insg = ssd_inputs(b, l, args.g, grad=True)
        gy = torch.randn(b, l, H, P, device="cuda", dtype=torch.bfloat16)
        impls = {"mambakit": lambda **k: ssd_triton(**k, chunk_size=256, dt_softplus=True)[0]}
        if peer is not None:
            impls["mamba_ssm"] = lambda x, dt, A, B, C, D, dt_bias: peer(
                x, dt, A, B, C, 256, D=D, dt_bias=dt_bias, dt_softplus=True)
        for name, f in impls.items():
            def fwd():
                with torch.no_grad():
                    f(**insg)

            def fwdbwd():
                for v in insg.values():
                    v.grad = None
                f(**insg).backward(gy)
            for pas, fn in (("fwd", fwd), ("fwd+bwd", fwdbwd)):
                rows = profile(fn, args.iters)
                total = sum(r["ms_per_iter"] for r in rows)
                out["runs"].append({"shape": shape, "g": args.g, "impl": name, "pass": pas,
                                    "total_ms": total, "kernels": rows})
                save(args.out, out)
                print(f"\n{shape} g{args.g} {name} {pas}: {total:.3f} ms of kernels per call")
                for r in rows[:12]:
                    print(f"  {r['ms_per_iter']:8.3f} ms  x{r['calls_per_iter']:.0f}  {r['kernel']}")
        del insg, gy
        torch.cuda.empty_cache()
    out["variants"] = time_variants(args, CONFIG, ssd_triton)
    save(args.out, out)
    return 0


def save(folder: str, out: dict) -> None:
    """Written after every measurement, so a run cut short keeps what it has."""
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "gpu_profile_ssd.json"), "w") as fh:
        json.dump(out, fh, indent=1)


if __name__ == "__main__":
    sys.exit(main())
