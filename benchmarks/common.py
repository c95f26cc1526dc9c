"""Helpers shared by the benchmark scripts: timing, machine floors, result files.

Letters: m, k, n matrix sizes of the floor measurements.
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import socket
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def best_of(fn, repeats: int = 3, warmup: int = 1) -> float:
    """Best wall time in seconds over `repeats` calls after `warmup` calls (the least disturbed run)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def matmul_rates(size: int = 1536, repeats: int = 5) -> dict:
    """fp32 matmul FLOP/s of this machine with the current thread count, by library: "mkl" as
    torch.mm runs it (MKL's sgemm in torch's CPU wheels), "onednn" as mambakit's CPU inference runs
    its projections (ops/cpu_linear.onednn_linear; equal to "mkl" where that falls back to F.linear)."""
    from mambakit.ops.cpu_linear import onednn_linear
    a, b = torch.randn(size, size), torch.randn(size, size)
    flops = 2 * size ** 3
    with torch.inference_mode():
        return {"mkl": flops / best_of(lambda: torch.mm(a, b), repeats, warmup=2),
                "onednn": flops / best_of(lambda: onednn_linear(a, b), repeats, warmup=2)}


def matmul_rate(size: int = 1536, repeats: int = 5) -> float:
    """The matmul floor's rate: the faster library of matmul_rates (a floor must not be beaten by
    a library the measured code calls and the floor does not)."""
    return max(matmul_rates(size, repeats).values())


def matvec_bandwidths(rows: int = 32768, cols: int = 8192, repeats: int = 5) -> dict:
    """Bytes/s of one pass over a 1 GiB fp32 matrix (larger than any cache of these machines):
    "torch" as torch.mv streams it, "mambakit" as the C loop of mambakit's CPU decode steps does
    (cpu_linear.linear; None without the kernels), "read" a plain sum of it (no product at all).
    The matrix-vector floor of decoding is the better of the two products: torch's BLAS reads
    well under the machine's read rate at batch 1, so its rate alone would set a floor that
    mambakit's loop passes."""
    from mambakit.ops import cpu_kernels, cpu_linear
    w, x = torch.randn(rows, cols), torch.randn(1, cols)
    nbytes = rows * cols * 4
    rates = {"torch": nbytes / best_of(lambda: torch.mv(w, x[0]), repeats, warmup=2), "mambakit": None,
             "read": nbytes / best_of(lambda: w.sum(), repeats, warmup=2)}
    if cpu_kernels.available():
        rates["mambakit"] = nbytes / best_of(lambda: cpu_linear.linear(x, w), repeats, warmup=2)
    return rates


def machine_info() -> dict:
    info = {"host": socket.gethostname(), "platform": platform.platform(), "python": platform.python_version(),
            "torch": torch.__version__, "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
            "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "load_average_1_5_15": list(os.getloadavg())}  # other work on the machine skews CPU figures
    try:
        import transformers
        info["transformers"] = transformers.__version__
    except ImportError:
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
        try:
            import triton
            info["triton"] = triton.__version__
        except ImportError:
            pass
    return info


def write_result(name: str, payload: dict, out_dir: str | os.PathLike | None = None) -> Path:
    """benchmarks/results/<name>-<hardware>-<date>.json (or under out_dir)."""
    hardware = "gpu-" + torch.cuda.get_device_name().replace(" ", "_") if torch.cuda.is_available() else "cpu"
    day = datetime.date.today().isoformat()
    folder = Path(out_dir) if out_dir else RESULTS
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}-{hardware}-{day}.json"
    path.write_text(json.dumps(payload, indent=2))
    return path
