"""Optional compiled CPU kernels: the SSM recurrences, the causal conv (a step or a sequence), whole
decode steps, RMSNorm, and a matrix-vector loop for the weight projections of decoding.

Letters: b batch, l length, d model width, e inner width, n state dim, r dt rank, h heads,
p head dim, g groups, c conv channels, k conv width.

Eager PyTorch spends a decode step mostly on the fixed cost of ~30 small ops per layer and on
reading the weights at about half the machine's streaming rate (its batch-1 BLAS), and a Mamba-1
prefill on its time loop (one op per token). These few C functions do that work in one
pass each. Nothing is built at install: the first call compiles the C source (cpu_kernels_src.py) with the
system's C compiler (well under a second) into a cache folder, and loads it through ctypes
(which releases the GIL during a call). Without a compiler, or with MAMBAKIT_CPU_KERNELS=off,
`available()` is False and every caller keeps its PyTorch path. fp32 only, no autograd.
The projections (the decode loop for a few rows, oneDNN's GEMM for more) are in cpu_linear.py.

The math is that of the reference tiers: softplus(x) = log1p(exp(x)) (x below 20), A < 0,
exp in single precision (a Cephes polynomial, ~1 ulp, exactly 0 below -87; on AVX-512 the Mamba-1
prefill scan's exp2-based vexp16, ~1.1 ulp).
"""
from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import torch

from .cpu_kernels_src import SOURCE as _SOURCE

logger = logging.getLogger("mambakit")

_FLAGS = ["-O3", "-march=native", "-fopenmp-simd", "-fno-math-errno", "-fno-trapping-math",
          "-shared", "-fPIC", "-pthread"]
_lock = threading.Lock()
_lib = None
_tried = False
_openmp = False  # whether the library was built with OpenMP (else its loops run on one thread)
_P, _I, _F, _INT = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float, ctypes.c_int


def _cache_dir() -> Path:
    root = os.environ.get("MAMBAKIT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "mambakit")
    return Path(root)


def _cpu_id() -> str:
    """-march=native code must not be reused on another kind of CPU sharing the cache folder."""
    try:
        text = Path("/proc/cpuinfo").read_text()
        return next((line for line in text.splitlines() if line.startswith("flags")), "") + \
            next((line for line in text.splitlines() if line.startswith("model name")), "")
    except OSError:
        import platform
        return platform.processor() + platform.machine()


def _process_holds_libgomp() -> bool:
    """Whether libgomp is already loaded (torch's Linux wheels): only then do the kernels use
    OpenMP. A torch built on another runtime (Intel's, LLVM's) would otherwise get a second OpenMP
    runtime in the process, which may abort or fight it for the cores."""
    try:
        with open("/proc/self/maps") as maps:
            return "libgomp" in maps.read()
    except OSError:  # not Linux: build single-threaded
        return False


def _build():
    named = os.environ.get("CC")
    cc = shutil.which(named) if named else (shutil.which("cc") or shutil.which("gcc") or shutil.which("clang"))
    if not cc:
        # a warning (shown once, at the default level): the PyTorch paths are correct but slower on the CPU
        where = f"CC={named!r} names no executable" if named else "no cc, gcc or clang on PATH"
        logger.warning("mambakit: no C compiler found (%s): the CPU kernels are off and the PyTorch paths run "
                       "instead (slower); install one, or set MAMBAKIT_CPU_KERNELS=off to silence this", where)
        return None
    # -fopenmp: the decode steps split over threads with `omp parallel`. Linked to libgomp.so.1, the
    # library loads into the libgomp that torch already holds (one soname, one copy per process),
    # so the steps run on torch's own pool, whose workers still spin from the projection before:
    # a thread of our own (pthread) waited milliseconds for a core there. Without OpenMP in the
    # compiler, the same source builds single-threaded.
    for flags in ((_FLAGS + ["-fopenmp"], _FLAGS) if _process_holds_libgomp() else (_FLAGS,)):
        key = hashlib.sha256("\0".join([_SOURCE, cc, *flags, _cpu_id()]).encode()).hexdigest()[:16]
        folder = _cache_dir()
        so = folder / f"cpu_kernels-{key}.so"
        if so.exists():
            break
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=folder) as tmp:  # compiled aside, renamed: no half-written .so
            src, out = Path(tmp) / "k.c", Path(tmp) / "k.so"
            src.write_text(_SOURCE)
            done = subprocess.run([cc, *flags, str(src), "-o", str(out)], capture_output=True, timeout=120)
            if done.returncode == 0:
                os.replace(out, so)
                break
            if "-fopenmp" not in flags:
                raise RuntimeError(f"{cc} failed: {done.stderr.decode(errors='replace')[-2000:]}")
    lib = ctypes.CDLL(str(so))
    lib.scan1.argtypes = [_I] * 4 + [_P, _I, _I, _P, _I, _I, _P, _P, _INT, _P, _P, _I, _I, _P, _I, _I,
                                     _P, _I, _I, _P, _P, _I, _I, _INT]
    lib.conv_step.argtypes = [_I, _I, _I, _P, _I, _P, _P, _P, _INT, _P, _I]
    lib.ssd_step.argtypes = [_I] * 5 + [_P, _I, _P, _I, _P, _INT, _F, _F, _P, _P, _I, _P, _I, _P, _INT, _P, _P, _I]
    lib.add_rms_norm.argtypes = [_I, _I, _P, _I, _P, _I, _P, _F, _P, _I]
    lib.mamba1_step.argtypes = [_I] * 5 + [_P, _I] + [_P] * 10 + [_INT]
    lib.conv_seq.argtypes = [_I] * 7 + [_P, _INT, _P, _P, _INT, _P, _INT]
    lib.built_with_openmp.argtypes, lib.built_with_openmp.restype = [], ctypes.c_int
    lib.linear_rows.argtypes = [_I, _I, _I, _P, _I, _P, _P, _P, _I, _INT]
    lib.mamba2_step.argtypes = [_I] * 6 + [_P, _I, _P, _P, _P, _P, _F, _F, _P, _P, _INT, _P, _P, _F, _I, _INT, _P, _P, _INT]
    lib.gated_norm_rows.argtypes = [_I, _I, _P, _I, _P, _I, _P, _F, _I, _INT, _INT]
    lib.ssd_chunks.argtypes = [_P] + [_I] * 6 + [_P, _I, _I, _P, _P, _P, _I, _I, _P, _I, _I, _P, _P, _INT, _P, _F, _INT]
    lib.ssd_chunks.restype = ctypes.c_int
    for fn in (lib.scan1, lib.conv_step, lib.ssd_step, lib.add_rms_norm, lib.mamba1_step, lib.mamba2_step,
               lib.linear_rows, lib.conv_seq, lib.gated_norm_rows):
        fn.restype = None
    return lib


def available() -> bool:
    """Whether the kernels are on (env MAMBAKIT_CPU_KERNELS is not off) and built (once per process)."""
    global _lib, _tried, _openmp
    if os.environ.get("MAMBAKIT_CPU_KERNELS", "on").lower() in ("0", "off", "false", "no"):
        return False
    if not _tried:
        with _lock:
            if not _tried:
                try:
                    _lib = _build()
                    _openmp = _lib is not None and bool(_lib.built_with_openmp())
                except Exception as exc:  # a broken compiler: say so once, keep the PyTorch paths
                    logger.warning("mambakit: building the CPU kernels with the C compiler failed (%s); using "
                                   "PyTorch paths (MAMBAKIT_CPU_KERNELS=off silences this)", exc)
                    _lib = None
                _tried = True
    return _lib is not None


def _tracing_or_transformed() -> bool:
    """Whether torch is tracing or transforming the call (torch.compile, jit.trace, a dispatch mode
    such as FakeTensorMode or FlopCounterMode, vmap/grad, forward-mode AD): a ctypes call on raw
    pointers is invisible to all of them (wrong traces, fake tensors without memory)."""
    return (torch.compiler.is_compiling() or torch.jit.is_tracing() or _dispatch_modes() > 0
            or _functorch_active() or getattr(torch.autograd.forward_ad, "_current_level", -1) >= 0)


# private torch hooks (present in torch 2.x); a torch without them reports nothing active
_dispatch_modes = getattr(torch._C, "_len_torch_dispatch_stack", lambda: 0)
_functorch_active = getattr(torch._C, "_are_functorch_transforms_active", lambda: False)


_PLAIN = (torch.Tensor, torch.nn.Parameter)


def plain_inference(*tensors) -> bool:
    """Every tensor given (None skipped) is a plain fp32 CPU tensor needing no gradient (no subclass:
    a wrapper such as a quantized weight or DTensor has no plain memory), CPU autocast is off (it
    would want another output dtype), and nothing traces or transforms the call."""
    grad = torch.is_grad_enabled()
    for t in tensors:  # is_cpu, not device.type: this runs a few times per layer and token
        if t is not None and (t.dtype != torch.float32 or not t.is_cpu or (grad and t.requires_grad)
                              or type(t) not in _PLAIN):
            return False
    return not _cpu_autocast() and not _tracing_or_transformed()


def _cpu_autocast() -> bool:
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:  # a torch before 2.4
        return torch.is_autocast_cpu_enabled()


def usable(*tensors) -> bool:
    """available() (the C kernels are built and on) and plain_inference(*tensors)."""
    return plain_inference(*tensors) and available()


def _empty(*shape) -> torch.Tensor:
    """An fp32 CPU buffer whatever the default dtype and device (a kernel writes it through its pointer)."""
    return torch.empty(*shape, dtype=torch.float32, device="cpu")


def _ptr(t):
    return None if t is None else t.data_ptr()


def _rows(t, b: int, l: int):
    """Strides of a (b, l, w) tensor whose last axis is contiguous (checked by the caller)."""
    return (t.stride(0), t.stride(1)) if t is not None else (0, 0)


def _check_rows(name: str, t, shape) -> None:
    if t is not None and (tuple(t.shape) != tuple(shape) or t.stride(-1) != 1 or t.dtype != torch.float32):
        raise ValueError(f"cpu_kernels: {name} must be fp32 {tuple(shape)} with a contiguous last axis, "
                         f"got {t.dtype} {tuple(t.shape)} strides {t.stride()}")


def selective_scan(u, delta, A, B, C, h, D=None, z=None, delta_bias=None, delta_softplus=False, out=None,
                   threads: int | None = None, check: bool = True) -> torch.Tensor:
    """Mamba-1 scan y (b, l, e) with its state h (b, e, n) fp32 contiguous advanced in place.

    u, delta, z, out: (b, l, e); B, C: (b, l, n), last axes contiguous (row strides free);
    A: (e, n); D, delta_bias: (e,). out may be u (written in place). threads: default torch's.
    check=False skips the checks (a decode step of a layer that built every argument itself: each
    check costs microseconds, 24 times a token).
    """
    b, l, e = u.shape
    n = A.shape[1]
    if check:
        for name, t, shape in (("u", u, (b, l, e)), ("delta", delta, (b, l, e)), ("z", z, (b, l, e)),
                               ("B", B, (b, l, n)), ("C", C, (b, l, n)), ("out", out, (b, l, e))):
            _check_rows(name, t, shape)
        A, D, delta_bias = (None if t is None else t.float().contiguous() for t in (A, D, delta_bias))
        if not (h.is_contiguous() and tuple(h.shape) == (b, e, n) and h.dtype == torch.float32):
            raise ValueError(f"cpu_kernels: the state must be fp32 contiguous {(b, e, n)}, got {h.dtype} {tuple(h.shape)}")
    y = _empty(b, l, e) if out is None else out
    nthreads = threads or (torch.get_num_threads() if l > 1 else 1)
    _lib.scan1(b, l, e, n, _ptr(u), *_rows(u, b, l), _ptr(delta), *_rows(delta, b, l), _ptr(A), _ptr(delta_bias),
               int(bool(delta_softplus)), _ptr(D), _ptr(B), *_rows(B, b, l), _ptr(C), *_rows(C, b, l),
               _ptr(z), *_rows(z, b, l), _ptr(h), _ptr(y), *_rows(y, b, l), nthreads)
    return y


def conv_step(x, state, weight, bias=None, silu: bool = True, out=None, check: bool = True) -> torch.Tensor:
    """One causal-conv decode step: state (b, c, k) contiguous, shifted in place; x (b, c) rows;
    weight (c, k) or (c, 1, k), contiguous with check=False (as selective_scan)."""
    b, c, k = state.shape
    if check:
        _check_rows("x", x, (b, c))
        if not state.is_contiguous() or state.dtype != torch.float32:
            raise ValueError(f"cpu_kernels: conv state must be fp32 contiguous, got {state.dtype} {state.stride()}")
        weight = weight.reshape(c, k).contiguous()
        bias = None if bias is None else bias.contiguous()
    y = _empty(b, c) if out is None else out
    _lib.conv_step(b, c, k, _ptr(x), x.stride(0), _ptr(state), _ptr(weight), _ptr(bias), int(silu), _ptr(y),
                   y.stride(0))
    return y


def conv_seq(x, weight, bias=None, silu: bool = True, state=None, threads: int | None = None) -> torch.Tensor:
    """Causal depthwise conv (+ SiLU) over a sequence, as ops.causal_conv1d: x (b, l, c) with a
    contiguous last axis (a slice of in_proj's output is fine), weight (c, k) or (c, 1, k) with
    k <= 16, bias (c,). state (b, c, k) contiguous: the inputs before t = 0, replaced in place by the
    last k inputs (None: zeros, nothing kept). Returns y (b, l, c) contiguous."""
    b, l, c = x.shape
    weight = weight.reshape(c, -1).contiguous()
    k = weight.shape[1]
    if x.stride(-1) != 1 or x.dtype != torch.float32 or k > 16:
        raise ValueError(f"cpu_kernels.conv_seq: x must be fp32 with a contiguous last axis and k <= 16, got "
                         f"{x.dtype} strides {x.stride()}, k {k}")
    if state is not None and (tuple(state.shape) != (b, c, k) or not state.is_contiguous()
                              or state.dtype != torch.float32):
        raise ValueError(f"cpu_kernels.conv_seq: state must be fp32 contiguous {(b, c, k)}, got "
                         f"{state.dtype} {tuple(state.shape)} strides {state.stride()}")
    bias = None if bias is None else bias.contiguous()
    y = _empty(b, l, c)
    _lib.conv_seq(b, l, c, k, _ptr(x), x.stride(0), x.stride(1), _ptr(state), int(state is not None), _ptr(weight),
                  _ptr(bias), int(silu), _ptr(y), threads or torch.get_num_threads())
    return y


def ssd_step(x, dt, A, B, C, state, D=None, dt_bias=None, dt_softplus=True, dt_limit=(0.0, float("inf")),
             out=None, check: bool = True) -> torch.Tensor:
    """One Mamba-2 decode step: state (b, h, p, n) fp32 contiguous, advanced in place.

    x (b, h p), dt (b, h), B, C (b, g n): rows with a contiguous last axis. D (h,) or (h, p).
    Returns y (b, h p) = C . state + D x (no gate). check=False: as selective_scan."""
    b, h, p, n = state.shape
    g = B.shape[1] // n
    if check:
        for name, t, shape in (("x", x, (b, h * p)), ("dt", dt, (b, h)), ("B", B, (b, g * n)), ("C", C, (b, g * n))):
            _check_rows(name, t, shape)
        if not state.is_contiguous() or state.dtype != torch.float32:
            raise ValueError(f"cpu_kernels: SSD state must be fp32 contiguous, got {state.dtype} {state.stride()}")
        A, D, dt_bias = (None if t is None else t.float().contiguous() for t in (A, D, dt_bias))
    bias = dt_bias
    y = _empty(b, h * p) if out is None else out
    _lib.ssd_step(b, h, p, n, g, _ptr(x), x.stride(0), _ptr(dt), dt.stride(0), _ptr(bias), int(bool(dt_softplus)),
                  float(dt_limit[0]), float(dt_limit[1]), _ptr(A), _ptr(B), B.stride(0), _ptr(C), C.stride(0),
                  _ptr(D), int(D is not None and D.dim() == 2), _ptr(state), _ptr(y), y.stride(0))
    return y


def rms_norm(x, weight, eps: float, residual=None, out=None, check: bool = True) -> torch.Tensor:
    """x / rms(x) * weight over the last axis (d) of x (..., d) fp32 contiguous.

    residual (same shape, contiguous): added into x first, in place (x += residual), as a pre-norm
    block's residual stream. Returns a fresh (..., d) tensor unless out is given. check=False: the
    caller checked x (fp32, contiguous) and weight (fp32 (d,) contiguous), as selective_scan."""
    d = x.shape[-1]
    if check and (not x.is_contiguous() or x.dtype != torch.float32 or weight.dtype != torch.float32
                  or weight.shape != (d,) or not weight.is_contiguous()):
        raise ValueError(f"cpu_kernels.rms_norm: x must be fp32 contiguous (..., {d}) and weight ({d},) "
                         f"contiguous, got x {x.dtype} strides {x.stride()}, weight {tuple(weight.shape)}")
    if check and residual is not None and (residual.shape != x.shape or not residual.is_contiguous()):
        raise ValueError(f"cpu_kernels.rms_norm: residual must be contiguous {tuple(x.shape)}, got {tuple(residual.shape)}")
    y = torch.empty_like(x) if out is None else out
    rows = x.numel() // d if d else 0
    _lib.add_rms_norm(rows, d, _ptr(x), d, _ptr(residual), d, _ptr(weight), float(eps), _ptr(y), d)
    return y


def gated_norm_(y, z, weight, eps: float, group_size: int, norm_before_gate: bool,
                threads: int | None = None) -> torch.Tensor:
    """ops.gated_rms_norm in place on y: y (..., e) fp32 contiguous, z of y's shape with a contiguous
    last axis and evenly strided rows (a column slice of in_proj's output is fine), weight (e,)
    contiguous. One pass over each row instead of torch's five ops and a fresh (..., e) buffer."""
    e = y.shape[-1]
    rows = y.numel() // e if e else 0
    zr = z.reshape(rows, e) if z.dim() != 2 else z  # a view for in_proj's slices
    if (not y.is_contiguous() or z.shape != y.shape or zr.stride(-1) != 1 or weight.shape != (e,)
            or not weight.is_contiguous() or e % group_size or
            any(t.dtype != torch.float32 for t in (y, z, weight))):
        raise ValueError(f"cpu_kernels.gated_norm_: y must be fp32 contiguous (..., {e}), z fp32 of its shape with "
                         f"a contiguous last axis, weight ({e},) contiguous, {e} a multiple of {group_size}; got y "
                         f"{y.dtype} {tuple(y.shape)} {y.stride()}, z {z.dtype} {tuple(z.shape)} {z.stride()}, "
                         f"weight {tuple(weight.shape)}")
    _lib.gated_norm_rows(rows, e, _ptr(y), e, _ptr(zr), zr.stride(0), _ptr(weight), float(eps), group_size,
                         int(bool(norm_before_gate)), threads or torch.get_num_threads())
    return y


def _find_sgemm():
    """The address of the Fortran sgemm_ (32-bit ints) that torch's CPU library carries (MKL in its x86
    wheels), or None. ssd_chunks calls it from C: the BLAS torch.mm runs, without a torch op per product."""
    try:
        lib = ctypes.CDLL(str(Path(torch.__file__).parent / "lib" / "libtorch_cpu.so"))
        return ctypes.cast(lib.sgemm_, ctypes.c_void_p).value
    except (OSError, AttributeError):
        return None


_sgemm = None  # None: not looked up yet; then the address, or 0 where there is none or it failed a check


def _sgemm_computes_right(ptr: int) -> bool:
    """A (3, 5) @ (5, 4) product through the sgemm_ at ptr, its sizes read through 32-bit ints as
    the kernel passes them. Each int sits in 8 bytes whose upper half is all ones: a 32-bit BLAS
    reads the value, a 64-bit-int (ILP64) one reads a negative size and computes nothing."""
    a = torch.linspace(-1, 1, 15, dtype=torch.float32).view(3, 5)
    bm = torch.linspace(2, -1, 20, dtype=torch.float32).view(5, 4)
    c = torch.zeros(3, 4, dtype=torch.float32)

    def i32(v):
        return ctypes.byref(ctypes.c_int64(v - (1 << 32)))  # low 4 bytes v, high 4 bytes 0xffffffff

    fn = ctypes.CFUNCTYPE(None, *([ctypes.c_void_p] * 13))(ptr)
    one, zero = ctypes.c_float(1.0), ctypes.c_float(0.0)
    transpose = ctypes.c_char(b"N")
    # row-major c = a @ bm as the column-major c^T = bm^T a^T: m 4, n 3, k 5
    fn(ctypes.byref(transpose), ctypes.byref(transpose), i32(4), i32(3), i32(5), ctypes.byref(one), bm.data_ptr(),
       i32(4), a.data_ptr(), i32(5), ctypes.byref(zero), c.data_ptr(), i32(4))
    return torch.allclose(c, a @ bm, atol=1e-5)


def ssd_chunks_ready() -> bool:
    """Whether ssd_chunks can run: the kernels are on and torch's sgemm_ was found and computes a
    known product right (an ILP64 or foreign BLAS behind the symbol would not)."""
    global _sgemm
    if not available():
        return False
    if _sgemm is None:
        with _lock:
            if _sgemm is None:
                ptr = _find_sgemm() or 0
                if ptr and not _sgemm_computes_right(ptr):
                    ptr = 0
                _sgemm = ptr
    return bool(_sgemm)


def ssd_chunks(x, dt, A, B, C, D, initial_state, chunk: int, floor: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Mamba-2 SSD inference (one group) in one call: x (b, l, h, p) with contiguous (h, p) rows, dt
    (b, l, h) after softplus and limits, A (h,), B, C (b, l, n) with contiguous rows, D (h,) or None,
    initial_state (b, h, p, n) or None. fp32, CPU, no checks beyond layout (the caller, ssd_chunked,
    checked the shapes). Returns y (b, l, h, p) and the final state (b, h, p, n)."""
    if not ssd_chunks_ready():  # a null sgemm_ pointer would crash the process, not raise
        raise RuntimeError("cpu_kernels.ssd_chunks: not available here (no C compiler, MAMBAKIT_CPU_KERNELS=off, "
                           "or no 32-bit-int sgemm_ in torch's library); use ops.ssd_fn")
    b, l, h, p = x.shape
    n = B.shape[-1]
    if x.stride(3) != 1 or x.stride(2) != p or B.stride(-1) != 1 or C.stride(-1) != 1:
        raise ValueError("cpu_kernels.ssd_chunks: x needs contiguous (h, p) rows, B and C contiguous rows")
    dt, A = dt.contiguous(), A.contiguous()
    D = None if D is None else D.contiguous()
    state = _empty(b, h, p, n)
    if initial_state is not None:
        state.copy_(initial_state)
    y = _empty(b, l, h, p)
    rc = _lib.ssd_chunks(_sgemm, b, l, h, p, n, chunk, _ptr(x), x.stride(0), x.stride(1), _ptr(dt), _ptr(A),
                         _ptr(B), B.stride(0), B.stride(1), _ptr(C), C.stride(0), C.stride(1), _ptr(D), _ptr(state),
                         int(initial_state is not None), _ptr(y), float(floor), torch.get_num_threads())
    if rc != 0:
        raise MemoryError("cpu_kernels.ssd_chunks: no memory for its scratch buffers")
    return y, state


def mamba1_step(xz, conv_state, conv_w, conv_b, x_proj_w, dt_proj_w, dt_bias, A, D, h, out=None,
                threads: int | None = None) -> torch.Tensor:
    """A Mamba-1 decode step after in_proj, one call: conv + SiLU, x_proj, dt_proj, softplus, SSM
    update (h (b, e, n) and conv_state (b, e, k) in place), C h + D x, gate by SiLU(z).

    xz (b, 2e) rows with a contiguous last axis ([x, z], in_proj's output); x_proj_w (r + 2n, e),
    dt_proj_w (e, r), conv_w (e, k) or (e, 1, k), A (e, n): contiguous fp32. Returns y (b, e).
    threads: default torch's (the same result at any count: each element's arithmetic is fixed).
    No checks (a layer's decode step passes its own parameters; each check costs microseconds)."""
    b, e, n = h.shape
    r = dt_proj_w.shape[1]
    y = _empty(b, e) if out is None else out
    _lib.mamba1_step(b, e, n, r, conv_state.shape[2], _ptr(xz), xz.stride(0), _ptr(conv_state), _ptr(conv_w),
                     _ptr(conv_b), _ptr(x_proj_w), _ptr(dt_proj_w), _ptr(dt_bias), _ptr(A), _ptr(D), _ptr(h), _ptr(y),
                     threads or torch.get_num_threads())
    return y


def mamba2_step(zxbcdt, conv_state, conv_w, conv_b, dt_bias, dt_limit, A, D, state, ngroups: int,
                norm_w, eps: float, group_size: int, norm_before_gate: bool, out=None,
                threads: int | None = None) -> torch.Tensor:
    """A Mamba-2 decode step after in_proj, one call: conv + SiLU over xBC, the SSD step (states in
    place), the gated RMSNorm with z. zxbcdt (b, 2e + 2gn + h) rows with a contiguous last axis;
    state (b, h, p, n); parameters contiguous fp32. Returns y (b, e), ready for out_proj. No checks.
    threads: as mamba1_step."""
    b, h, p, n = state.shape
    e = h * p
    xbc = _empty(b, e + 2 * ngroups * n)  # (b, c): the conv's output, read by the SSD step
    y = _empty(b, e) if out is None else out
    _lib.mamba2_step(b, h, p, n, ngroups, conv_state.shape[2], _ptr(zxbcdt), zxbcdt.stride(0), _ptr(conv_state),
                     _ptr(conv_w), _ptr(conv_b), _ptr(dt_bias), float(dt_limit[0]), float(dt_limit[1]), _ptr(A),
                     _ptr(D), int(D is not None and D.dim() == 2), _ptr(state), _ptr(norm_w), float(eps), group_size,
                     int(bool(norm_before_gate)), _ptr(xbc), _ptr(y), threads or torch.get_num_threads())
    return y
