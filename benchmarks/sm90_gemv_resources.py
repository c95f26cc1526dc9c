"""Registers and spills of the fused decode GEMV (mambakit/ops/gemv_triton.py) compiled for sm_90
without a GPU: triton's compiler and its bundled ptxas/cuobjdump, on this machine's triton.

Letters: o output width (not a constexpr: any), k input width.

    python benchmarks/sm90_gemv_resources.py [--out DIR]

For each form a decode step uses (the prologue and epilogue constexprs), each (BO, BK, warps, RB)
tile and each number of rows (BK as the launcher shrinks it for them): registers a thread and
stack bytes (spills). Pointer arguments and the sizes are compiled as multiples of 16, as triton specializes them at a real call (the vectorized loads depend on it).
These are the compiler's numbers, not timings: they say how many programs fit an SM. Writes
sm90_gemv_resources-<date>.json.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

FORMS = {  # name: (x dtype, PRO, EPI, ACT, k) as fused_gemv passes them, k of the 1.3B models
    "in_proj: rms norm, conv (fp32 residual in)": ("fp32", 1, 2, 0, 2048),
    "up: rms norm, gelu (fp32 residual in)": ("fp32", 1, 0, 1, 2048),
    "up: rms norm, swiglu (fp32 residual in)": ("fp32", 1, 0, 3, 2048),
    "q: rms norm (fp32 residual in)": ("fp32", 1, 0, 0, 2048),
    "out_proj: gated norm, residual (bf16 in)": ("bf16", 2, 1, 0, 4096),
    "down: residual (bf16 in)": ("bf16", 0, 1, 0, 8192),
}
# (BO, BK, warps, RB): RB blocks of BO outputs a program
TILES = [(2, 512, 2, 1), (8, 2048, 8, 1), (2, 2048, 4, 1), (4, 1024, 4, 1), (8, 512, 4, 1), (8, 1024, 8, 1),
         (8, 2048, 8, 8), (4, 2048, 4, 8), (8, 1024, 8, 4)]


def resources(xdt, pro, epi, act, k, tile, rows, tmp) -> dict:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from mambakit.ops.gemv_triton import _fused_gemv_kernel, launch_config
    bo, bk, warps, rb = launch_config(1 << 20, k, rows, tile, k if pro else None)  # as fused_gemv launches it
    sig = {"x_ptr": f"*{xdt}", "z_ptr": "*bf16", "nw_ptr": "*bf16", "w_ptr": "*bf16", "b_ptr": "*bf16",
           "y_ptr": "*bf16", "r_ptr": "*fp32", "cs_ptr": "*bf16", "cw_ptr": "*bf16", "cb_ptr": "*bf16",
           "g_ptr": "*bf16", "O": "i32", "K": "i32", "GS": "i32", "C0": "i32", "NCH": "i32", "CW": "i32",
           "eps": "fp32", "stride_xm": "i32", "stride_zm": "i32"}
    consts = dict(M=rows, MP=triton.next_power_of_2(rows), BO=bo, BK=bk, RB=rb, ONE_TILE=k <= bk, GP=1, WP=4, PRO=pro, BEFORE_GATE=False, HAS_BIAS=False, EPI=epi,
                  ACT=act, HAS_CB=True, PDL=True)
    names = list(sig)
    attrs = {(names.index(n),): [["tt.divisibility", 16]] for n in names
             if sig[n].startswith("*") or n in ("O", "K", "GS", "C0", "NCH")}
    kernel = triton.compile(ASTSource(fn=_fused_gemv_kernel, signature={**sig, **{c: "constexpr" for c in consts}},
                                      constexprs=consts, attrs=attrs),
                            target=GPUTarget("cuda", 90, 32), options={"num_warps": warps, "launch_pdl": True})
    cubin = os.path.join(tmp, "k.cubin")
    with open(cubin, "wb") as f:
        f.write(kernel.asm["cubin"])
    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    usage = subprocess.run([str(tool), "--dump-resource-usage", cubin], capture_output=True, text=True).stdout
    return {"rows": rows, "launched_tile": [bo, bk, warps, rb],
            "registers": int(re.search(r"REG:(\d+)", usage).group(1)),
            "stack_bytes": int(re.search(r"STACK:(\d+)", usage).group(1))}


def main(argv=None) -> int:
    import triton
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    ap.add_argument("--rows", default="1,4", help="decode batch sizes (rows of x)")
    a = ap.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, form in FORMS.items():
            for m in [int(v) for v in a.rows.split(",")]:
                for tile in TILES:
                    r = {"form": name, "tile": list(tile), **resources(*form, tile, m, tmp)}
                    rows.append(r)
                    print(f"{name:45s} m {m} {tuple(tile)} -> {tuple(r['launched_tile'])}: {r['registers']:3d} "
                          f"registers, {r['stack_bytes']} stack bytes", flush=True)
    os.makedirs(a.out, exist_ok=True)
    path = os.path.join(a.out, f"sm90_gemv_resources-{datetime.date.today().isoformat()}.json")
    with open(path, "w") as f:
        json.dump({"triton": triton.__version__, "target": "cuda sm_90", "rows": rows}, f, indent=1)
    print(f"written: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
