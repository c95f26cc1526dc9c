"""GPU benchmark of the Mamba-1 selective scan (Triton) against mambapy's parallel scan.

Letters: b batch, l length, e inner width, n state dim, k conv width, r dt rank.

Shapes of issue 7: b 4, l 2048, e 1536, n 16 and b 4, l 8192, e 1536, n 64, with delta bias,
softplus, D and the z gate (what the Mamba-1 layer uses). Times forward and forward+backward
(median ms, triton.testing.do_bench), achieved GB/s over the fewest bytes the op must move,
and the bandwidth floor from a device-to-device copy measured in the same run. mambapy
(PYTHONPATH to its pure-Python package) runs the same math with its Blelloch pscan. Tile
configs are swept and every one is reported; kernels are compiled in parallel first.
Backward configs with DBC_ATOMIC=True time the old backward (dB, dC by fp32 atomics into one
(b, l, n) buffer) next to the default (per-channel-block partials summed by torch); --quick
times the first QUICK_BWD backward configs of SWEEP and the default of the segment-parallel
backward ("seg", triton_bwd_seg.py): fp32 all of them, bf16 the defaults of both.
Also times one fused decode step against the same step in eager PyTorch.

    python benchmarks/gpu_selective_scan.py --out benchmarks/results [--quick]
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import datetime
import json
import multiprocessing as mp
import os
import platform
import sys

import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

SHAPES = {"b4_l2048_e1536_n16": (4, 2048, 1536, 16), "b4_l8192_e1536_n64": (4, 8192, 1536, 64)}


def cfg(bt, be, bn, vec, warps, atomic=None, maxnreg=None):
    c = dict(BLOCK_T=bt, BLOCK_E=be, BLOCK_N=bn, VEC=vec, num_warps=warps)
    if atomic is not None:  # backward only: the dB/dC reduction (True: the old atomics)
        c["DBC_ATOMIC"] = atomic
    if maxnreg:  # backward only: a register cap (more programs fit an SM, some values spill)
        c["MAXNREG"] = maxnreg
    return c


# (forward configs, backward configs) per n; the first of each is the library default, then
# (session 7) the default tiles under a register cap: ptxas (triton 3.9, sm_90a) gives the
# n 16 backward 219 registers, 2 programs of 4 warps an SM (264 of the 384 programs at b 4,
# e 1536 on an H100 at once); 168: 3 an SM (all 384), 64 bytes of stack; 128: 4, 224 bytes.
# --quick keeps those three (the capped 168 first: the default since session 8). Then the old
# atomic dB/dC path and other tiles.
SWEEP = {
    16: ([cfg(16, 16, 16, 2, 4), cfg(32, 16, 16, 2, 4), cfg(16, 32, 16, 4, 4), cfg(8, 16, 16, 2, 4)],
         [cfg(8, 16, 16, 2, 4, False, maxnreg=168), cfg(8, 16, 16, 2, 4, False),
          cfg(8, 16, 16, 2, 4, False, maxnreg=128), cfg(8, 16, 16, 2, 4, True),
          cfg(8, 32, 16, 4, 4, False), cfg(4, 32, 16, 4, 4, False), cfg(16, 16, 16, 2, 4, False)]),
    64: ([cfg(16, 8, 64, 4, 4), cfg(16, 16, 64, 4, 8), cfg(8, 8, 64, 4, 4)],
         [cfg(4, 8, 64, 4, 4, False), cfg(2, 8, 64, 4, 4, False), cfg(4, 8, 64, 2, 8, False),
          cfg(4, 8, 64, 4, 4, True), cfg(2, 16, 64, 2, 8, False), cfg(4, 16, 64, 4, 8, False),
          cfg(8, 8, 64, 4, 4, False)]),
}
QUICK_BWD = 3  # how many of each backward list --quick times (see SWEEP)


def check_defaults() -> None:
    """The first config of each list must be the library's default: the tables mark it so, and bf16
    runs only it (session 8 capped the n 16 backward's registers and the list kept the uncapped
    tiles first, so session 11's run labelled those the default)."""
    from mambakit.ops.selective_scan.triton import default_config
    for name, (_, _, e, n) in SHAPES.items():
        for backward, first in ((False, SWEEP[n][0][0]), (True, SWEEP[n][1][0])):
            lib = default_config(n, e, backward, variant="chunk" if backward else None)
            if lib != first:
                raise SystemExit(f"gpu_selective_scan: {name} {'backward' if backward else 'forward'}: the sweep's "
                                 f"first config {first} is not the library default {lib}")


def seg(bt, be, sc, maxnreg=None, warps=1):
    """A config of the segment-parallel backward (triton_bwd_seg.py; issue 7)."""
    c = dict(VARIANT="seg", BLOCK_T=bt, BLOCK_E=be, SEG_CHUNKS=sc, num_warps=warps)
    if maxnreg:
        c["MAXNREG"] = maxnreg
    return c


# the seg backward, first its default (triton.seg_config); --quick times all of them in fp32
# and the first in bf16. sm_90 figures (triton 3.9, ptxas): T8 E64 255
# registers, no spill in the hot loops (8 one-warp programs an SM); T4 E64 capped at 168
# registers, no spill in the hot loops (12 an SM); at 128, 16 an SM with a few spills in the
# hot loop; T4 E128 halves the shuffles of the dB/dC sums per element; S2 halves the
# recomputation of chunk-start states.
SEG_SWEEP = {
    16: [seg(8, 64, 4), seg(4, 64, 4, 168), seg(4, 64, 4, 128), seg(4, 128, 4), seg(8, 64, 2)],
    64: [seg(8, 64, 8), seg(4, 64, 8, 168), seg(8, 64, 4)],
}
for _n, (_f, _b) in SWEEP.items():
    _b[QUICK_BWD:QUICK_BWD] = SEG_SWEEP[_n]  # after the ones --quick keeps of the chunk backward


def make_inputs(b, l, e, n, dtype, requires_grad=False, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    rnd = lambda *s: torch.randn(*s, device="cuda", generator=g)
    ins = dict(u=rnd(b, l, e).to(dtype), delta=(0.5 * rnd(b, l, e)).to(dtype),
               A=-torch.exp(0.5 * rnd(e, n)), B=rnd(b, l, n).to(dtype), C=rnd(b, l, n).to(dtype),
               D=rnd(e), z=rnd(b, l, e).to(dtype), delta_bias=0.5 * rnd(e) - 2.0)
    if requires_grad:
        for v in ins.values():
            v.requires_grad_(True)
    return ins


def triton_scan(ins, cf_=None, cb_=None):
    from mambakit.ops.selective_scan.triton import selective_scan_triton
    return selective_scan_triton(**ins, delta_softplus=True, _config_fwd=cf_, _config_bwd=cb_)[0]


def mambapy_scan(ins):
    from mambapy.pscan import pscan
    dt = F.softplus(ins["delta"] + ins["delta_bias"])
    dA = torch.exp(dt.unsqueeze(-1) * ins["A"])                                   # (b, l, e, n)
    bx = (dt * ins["u"]).unsqueeze(-1) * ins["B"].unsqueeze(2)                    # (b, l, e, n)
    hs = pscan(dA, bx)
    y = (hs @ ins["C"].unsqueeze(-1)).squeeze(3) + ins["D"] * ins["u"]
    return y * F.silu(ins["z"])


def _compile_one(job):
    """Run each config once on small inputs with the same specialization (fills the cache)."""
    n, dtype_name, cf_, cb_ = job
    sys.path.insert(0, ROOT)
    dtype = getattr(torch, dtype_name)
    ins = make_inputs(1, 64, 1536, n, dtype, requires_grad=cb_ is not None)
    if cb_ is None:
        with torch.no_grad():
            triton_scan(ins, cf_)
    else:
        triton_scan(ins, cf_, cb_).float().sum().backward()
    torch.cuda.synchronize()
    return True


def prewarm(jobs, workers):
    ctx = mp.get_context("spawn")
    with cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        list(pool.map(_compile_one, jobs))


def bench(fn, rep=200):
    import triton.testing
    return triton.testing.do_bench(fn, warmup=25, rep=rep, return_mode="median")


def scan_bytes(b, l, e, n, s, backward):
    """Fewest bytes: fwd reads u, delta, z, B, C and writes y; bwd also reads dy and writes
    du, ddelta, dz, dB, dC (A, D, bias and the per-segment checkpoints are small)."""
    fwd = s * b * l * (4 * e + 2 * n)
    return fwd + (s * b * l * (7 * e + 4 * n) if backward else 0)


def copy_bandwidth():
    x = torch.empty(2 ** 28, device="cuda", dtype=torch.float32)  # 1 GiB
    y = torch.empty_like(x)
    ms = bench(lambda: y.copy_(x))
    return 2 * x.numel() * 4 / (ms * 1e-3) / 1e9


def run_scan(name, shape, dtype, configs, copy_gbs, with_mambapy, results):
    b, l, e, n = shape
    s = torch.finfo(dtype).bits // 8
    rows = []
    ins = make_inputs(b, l, e, n, dtype)
    fb, bb = scan_bytes(b, l, e, n, s, False), scan_bytes(b, l, e, n, s, True)
    fwd_cfgs, bwd_cfgs = configs
    for i, c in enumerate(fwd_cfgs):
        with torch.no_grad():
            ms = bench(lambda: triton_scan(ins, c))
        rows.append(dict(shape=name, dtype=str(dtype)[6:], impl="triton", pass_="fwd", config=c, default=i == 0,
                         ms=ms, gbs=fb / (ms * 1e-3) / 1e9, floor_ms=fb / (copy_gbs * 1e9) * 1e3))
    gins = make_inputs(b, l, e, n, dtype, requires_grad=True)
    dy = torch.randn(b, l, e, device="cuda", dtype=dtype)
    for i, c in enumerate(bwd_cfgs):
        def step():
            y = triton_scan(gins, None, c)
            torch.autograd.grad(y, list(gins.values()), dy)
        ms = bench(step)
        rows.append(dict(shape=name, dtype=str(dtype)[6:], impl="triton", pass_="fwd+bwd", config=c,
                         default=i == 0, ms=ms, gbs=bb / (ms * 1e-3) / 1e9, floor_ms=bb / (copy_gbs * 1e9) * 1e3))
    if with_mambapy:
        need_gb = 4 * b * l * e * n * 4 / 1e9  # (b, l, e, n) fp32 tensors alive at once, roughly
        for pass_, grad in (("fwd", False), ("fwd+bwd", True)):
            row = dict(shape=name, dtype=str(dtype)[6:], impl="mambapy", pass_=pass_, config=None, default=True)
            if need_gb * (2.5 if grad else 1.3) > 75:
                row["note"] = f"not run: needs ~{need_gb * (2.5 if grad else 1.3):.0f} GB of the 80 GB"
            else:
                try:
                    if grad:
                        def step():
                            y = mambapy_scan(gins)
                            torch.autograd.grad(y, list(gins.values()), dy)
                        row["ms"] = bench(step, rep=500)
                    else:
                        with torch.no_grad():
                            row["ms"] = bench(lambda: mambapy_scan(ins), rep=500)
                except torch.cuda.OutOfMemoryError:
                    row["note"] = "out of memory"
                torch.cuda.empty_cache()
            rows.append(row)
    results.extend(rows)
    return rows


def check_against_mambapy(shape, dtype):
    """The two implementations compute the same function (so the timing compares like with like)."""
    b, l, e, n = shape
    ins = make_inputs(b, min(l, 512), e, n, dtype, seed=1)
    with torch.no_grad():
        y1, y2 = triton_scan(ins), mambapy_scan({k: v.float() for k, v in ins.items()})
    return ((y1.float() - y2).norm() / y2.norm()).item()


def decode_step_torch(x, z, conv_state, h, cw, cb, xw, dtw, dtb, A, D, r):
    n = A.shape[1]
    conv_state.copy_(torch.roll(conv_state, -1, -1))
    conv_state[:, :, -1] = x
    xc = F.silu((conv_state * cw[:, 0]).sum(-1) + cb)
    xdbl = xc @ xw.t()
    dt = F.softplus(xdbl[:, :r] @ dtw.t() + dtb)
    h.mul_(torch.exp(dt.unsqueeze(-1) * A)).add_((dt * xc).unsqueeze(-1) * xdbl[:, None, r:r + n])
    y = (h * xdbl[:, None, r + n:]).sum(-1) + D * xc
    return y * F.silu(z)


def compiled_kernel_stats(kernels=None) -> list:
    """Registers and spill bytes of every compiled variant of the scan kernels in this process
    (what ptxas gave, on this triton; occupancy is 65536 / (regs * 32 * warps) programs an SM)."""
    if kernels is None:
        from mambakit.ops.selective_scan import triton_bwd_chunk, triton_kernels
        kernels = (triton_kernels.selective_scan_fwd_kernel, triton_bwd_chunk.selective_scan_bwd_kernel)
    rows = []
    for fn in kernels:
        name = getattr(getattr(fn, "fn", fn), "__name__", "?")
        try:  # triton's cache layout is internal: device -> (kernel_cache, ...), key -> CompiledKernel
            for caches in fn.device_caches.values():
                for k in caches[0].values():
                    k._init_handles()
                    meta = k.metadata
                    rows.append(dict(kernel=name, n_regs=k.n_regs, n_spills=k.n_spills, num_warps=meta.num_warps,
                                     maxnreg=getattr(meta, "maxnreg", None),
                                     constants=str(getattr(k.src, "constants", ""))[:400]))
        except Exception as ex:  # diagnostics only: never fail the benchmark over them
            rows.append(dict(kernel=name, error=repr(ex)))
    return rows


def run_decode(results):
    from mambakit.ops.decode_mamba1_triton import mamba1_decode_step_triton
    e, n, k, r = 2048, 16, 4, 64  # mamba-370m's mixer
    for b in (1, 16):
        g = torch.Generator(device="cuda").manual_seed(0)
        rnd = lambda *s: torch.randn(*s, device="cuda", generator=g)
        x, z = rnd(b, e), rnd(b, e)
        args = [rnd(b, e, k), rnd(b, e, n), rnd(e, 1, k), rnd(e), rnd(r + 2 * n, e), rnd(e, r), rnd(e),
                -torch.rand(e, n, device="cuda"), rnd(e), r]
        y1 = mamba1_decode_step_triton(x, z, *[a.clone() if torch.is_tensor(a) else a for a in args])
        y2 = decode_step_torch(x, z, *[a.clone() if torch.is_tensor(a) else a for a in args])
        err = ((y1 - y2).norm() / y2.norm()).item()
        for impl, fn in (("triton", mamba1_decode_step_triton), ("torch_eager", decode_step_torch)):
            ms = bench(lambda: fn(x, z, *args), rep=100)
            results.append(dict(shape=f"decode_b{b}_e{e}_n{n}_r{r}", dtype="float32", impl=impl, pass_="step",
                                config=None, default=True, ms=ms, rel_err_vs_torch=err))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results"))
    ap.add_argument("--quick", action="store_true", help="default configs only, no sweep")
    ap.add_argument("--workers", type=int, default=16)  # --quick: 14 compile jobs, one round
    args = ap.parse_args()
    import triton
    try:
        import mambapy  # noqa: F401
        have_mambapy = True
    except ImportError:
        have_mambapy = False
    check_defaults()
    sweep = {n: ([c[0][0]], c[1][:QUICK_BWD + 1]) if args.quick else c for n, c in SWEEP.items()}  # + the seg default
    jobs = []
    for n, (fwd_cfgs, bwd_cfgs) in sweep.items():
        for dtype in ("float32", "bfloat16"):
            fc = fwd_cfgs if dtype == "float32" else fwd_cfgs[:1]
            bc = bwd_cfgs if dtype == "float32" else [bwd_cfgs[0], SEG_SWEEP[n][0]]
            jobs += [(n, dtype, c, None) for c in fc] + [(n, dtype, fc[0], c) for c in bc]
    prewarm(jobs, args.workers)

    results = []
    copy_gbs = copy_bandwidth()
    info = dict(gpu=torch.cuda.get_device_name(), torch=torch.__version__, triton=triton.__version__,
                python=platform.python_version(), copy_gbs=copy_gbs, mambapy=have_mambapy,
                date=datetime.date.today().isoformat())
    for name, shape in SHAPES.items():
        n = shape[3]
        run_scan(name, shape, torch.float32, sweep[n], copy_gbs, have_mambapy, results)
        run_scan(name, shape, torch.bfloat16, ([sweep[n][0][0]], [sweep[n][1][0], SEG_SWEEP[n][0]]), copy_gbs,
                 False, results)
        if have_mambapy:
            info[f"rel_err_triton_vs_mambapy_{name}"] = check_against_mambapy(shape, torch.float32)
    run_decode(results)
    info["compiled_kernels"] = compiled_kernel_stats()
    for row in info["compiled_kernels"]:
        print("compiled", json.dumps(row))

    for r in results:
        r["pass"] = r.pop("pass_")
    gpu_tag = info["gpu"].replace("NVIDIA ", "").replace(" ", "_").lower()
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, f"gpu_selective_scan-{gpu_tag}-{info['date']}.json")
    with open(path, "w") as f:
        json.dump(dict(info=info, results=results), f, indent=1)
    print(json.dumps(info))
    print(f"{'shape':24} {'dtype':9} {'impl':8} {'pass':8} {'ms':>9} {'GB/s':>7} {'floor':>7}  config")
    for r in results:
        c = r["config"]
        if c is None:
            cs = ""
        elif c.get("VARIANT") == "seg":
            cs = f"seg T{c['BLOCK_T']} E{c['BLOCK_E']} S{c['SEG_CHUNKS']} w{c['num_warps']}"
            cs += f" r{c['MAXNREG']}" if c.get("MAXNREG") else ""
        else:
            cs = f"T{c['BLOCK_T']} E{c['BLOCK_E']} V{c['VEC']} w{c['num_warps']}"
        cs += " atomic-dBC" if c and c.get("DBC_ATOMIC") else ""
        cs += f" r{c['MAXNREG']}" if c and c.get("MAXNREG") and c.get("VARIANT") != "seg" else ""
        ms = f"{r['ms']:9.3f}" if "ms" in r else f"{'-':>9}"
        print(f"{r['shape']:24} {r['dtype']:9} {r['impl']:8} {r['pass']:8} {ms} {r.get('gbs', 0):7.0f} "
              f"{r.get('floor_ms', 0):7.3f}  {cs}{' *' if r.get('default') and c else ''} {r.get('note', '')}")
    # fwd+bwd: the fastest config of each backward variant against mambapy (fp32, the one it runs), per
    # shape and dtype
    for key in sorted({(r["shape"], r["dtype"]) for r in results if r["pass"] == "fwd+bwd"}):
        rows = [r for r in results if (r["shape"], r["dtype"]) == key and r["pass"] == "fwd+bwd" and "ms" in r]
        ref = [r["ms"] for r in results if r["shape"] == key[0] and r["impl"] == "mambapy"
               and r["pass"] == "fwd+bwd" and "ms" in r]
        parts = []
        for v in ("chunk", "seg"):
            ms = [r["ms"] for r in rows if r["impl"] == "triton" and (r["config"] or {}).get("VARIANT", "chunk") == v]
            if ms:
                parts.append(f"{v} {min(ms):.3f} ms" + (f" ({ref[0] / min(ms):.1f}x mambapy)" if ref else ""))
        print(f"fwd+bwd best {key[0]} {key[1]}: " + ", ".join(parts) + (f"; mambapy {ref[0]:.3f} ms" if ref else ""))
    print("wrote", path)


if __name__ == "__main__":
    main()
