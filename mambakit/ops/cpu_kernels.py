"""Optional compiled CPU kernels: the SSM recurrences and the conv step of inference, fused.

Letters: b batch, l length, e inner width, n state dim, h heads, p head dim, g groups,
c conv channels, k conv width.

Eager PyTorch spends a decode step mostly on the fixed cost of ~30 small ops per layer, and a
Mamba-1 prefill on its time loop (one op per token). These few C functions do that work in one
pass each. Nothing is built at install: the first call compiles the C source below with the
system's C compiler (well under a second) into a cache folder, and loads it through ctypes
(which releases the GIL during a call). Without a compiler, or with MAMBAKIT_CPU_KERNELS=off,
`available()` is False and every caller keeps its PyTorch path. fp32 only, no autograd.

The math is that of the reference tiers: softplus(x) = log1p(exp(x)) (x below 20), A < 0,
exp in single precision (a Cephes polynomial, ~1 ulp, exactly 0 below -87).
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

logger = logging.getLogger("mambakit")

_SOURCE = r"""
#include <stdint.h>
#include <stdlib.h>
#include <pthread.h>

typedef int64_t i64;

/* exp(x), Cephes' polynomial; exactly 0 below -87 (no subnormals: they slow later ops). */
static inline float fexp(float x) {
    float xc = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
    float kf = (xc * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  /* round to nearest */
    float r = xc - kf * 0.693359375f + kf * 2.12194440e-4f;
    float q = 1.9875691500e-4f;
    q = q * r + 1.3981999507e-3f; q = q * r + 8.3334519073e-3f; q = q * r + 4.1665795894e-2f;
    q = q * r + 1.6666665459e-1f; q = q * r + 5.0000001201e-1f;
    q = q * r * r + r + 1.0f;
    union { int32_t i; float f; } s; s.i = ((int32_t)kf + 127) << 23;
    return x < -87.0f ? 0.0f : q * s.f;
}

/* log(x) for normal x > 0, Cephes' polynomial. */
static inline float flog(float x) {
    union { float f; int32_t i; } v; v.f = x;
    float ex = (float)(((v.i >> 23) & 0xff) - 127);
    v.i = (v.i & 0x007fffff) | 0x3f800000;
    float m = v.f;
    int big = m > 1.41421356f;
    m = big ? 0.5f * m : m;
    ex = big ? ex + 1.0f : ex;
    float f = m - 1.0f, z = f * f;
    float p = 7.0376836292e-2f;
    p = p * f - 1.1514610310e-1f; p = p * f + 1.1676998740e-1f; p = p * f - 1.2420140846e-1f;
    p = p * f + 1.4249322787e-1f; p = p * f - 1.6668057665e-1f; p = p * f + 2.0000714765e-1f;
    p = p * f - 2.4999993993e-1f; p = p * f + 3.3333331174e-1f;
    return f * z * p - 0.5f * z + f + ex * 0.693147180559945f;
}

/* torch's softplus (beta 1, threshold 20): log1p(exp(x)), log1p as log(u) * y / (u - 1). */
static inline float fsoftplus(float x) {
    float y = fexp(x), u = 1.0f + y;
    float lp = u == 1.0f ? y : flog(u) * (y / (u - 1.0f));
    return x > 20.0f ? x : lp;
}

static inline float fsilu(float x) { return x / (1.0f + fexp(-x)); }

/* ---- Mamba-1 selective scan (prefill and decode step) ----
   u, dl, z, y: rows of e (row strides given), B, C: rows of n; A (e, n); h (b, e, n) in place.
   y may be u itself: each y[t, j] is written after u[t, j] was read. */
typedef struct {
    i64 b, l, e, n, e0, e1;
    const float *u; i64 su_b, su_l;
    const float *dl; i64 sd_b, sd_l;
    const float *A, *bias, *D;
    const float *B; i64 sB_b, sB_l;
    const float *C; i64 sC_b, sC_l;
    const float *z; i64 sz_b, sz_l;
    float *h, *y; i64 sy_b, sy_l;
    int softplus;
} scan1_t;

/* The state update of w channels at one time step: h = exp(d A) h + d u B, acc = C . h. */
static void scan1_channels(float *restrict h, const float *restrict A, const float *restrict d,
                           const float *restrict du, const float *restrict Bt, const float *restrict Ct,
                           float *restrict acc, i64 w, i64 n) {
    for (i64 j = 0; j < w; j++) {
        float s = 0.0f;
        #pragma omp simd reduction(+:s)
        for (i64 k = 0; k < n; k++) {
            float hv = fexp(d[j] * A[j * n + k]) * h[j * n + k] + du[j] * Bt[k];
            h[j * n + k] = hv;
            s += hv * Ct[k];
        }
        acc[j] = s;
    }
}

/* The same with the state and A laid out (n, w): vectors along the channels. */
static void scan1_lanes(float *restrict hT, const float *restrict AT, const float *restrict d,
                        const float *restrict du, const float *restrict Bt, const float *restrict Ct,
                        float *restrict acc, i64 w, i64 n) {
    for (i64 j = 0; j < w; j++) acc[j] = 0.0f;
    for (i64 k = 0; k < n; k++) {
        const float Bk = Bt[k], Ck = Ct[k];
        float *restrict hk = hT + k * w;
        const float *restrict Ak = AT + k * w;
        #pragma omp simd
        for (i64 j = 0; j < w; j++) {
            float hv = fexp(d[j] * Ak[j]) * hk[j] + du[j] * Bk;
            hk[j] = hv;
            acc[j] += hv * Ck;
        }
    }
}

/* n = 16 (Mamba-1's usual state size): one 16-lane vector per channel, no loop overhead. */
static void scan1_channels16(float *restrict h, const float *restrict A, const float *restrict d,
                             const float *restrict du, const float *restrict Bt, const float *restrict Ct,
                             float *restrict acc, i64 w) {
    float Bl[16], Cl[16];
    for (int k = 0; k < 16; k++) { Bl[k] = Bt[k]; Cl[k] = Ct[k]; }
    for (i64 j = 0; j < w; j++) {
        float s = 0.0f;
        #pragma omp simd reduction(+:s)
        for (int k = 0; k < 16; k++) {
            float hv = fexp(d[j] * A[j * 16 + k]) * h[j * 16 + k] + du[j] * Bl[k];
            h[j * 16 + k] = hv;
            s += hv * Cl[k];
        }
        acc[j] = s;
    }
}

static void scan1_range(const scan1_t *a) {
    const i64 n = a->n, w = a->e1 - a->e0;
    float *d = (float *)malloc(sizeof(float) * 3 * (w + 16));
    float *du = d + w + 16, *acc = du + w + 16;
    /* Many steps: the state and A transposed to (n, w), so that every op runs along the channels
       (16 independent lanes, no horizontal sums); one step (decode) works in place instead. */
    float *hT = 0, *AT = 0;
    if (a->l > 1) {
        hT = (float *)malloc(sizeof(float) * 2 * n * w);
        AT = hT + n * w;
        for (i64 j = 0; j < w; j++)
            for (i64 k = 0; k < n; k++) AT[k * w + j] = a->A[(a->e0 + j) * n + k];
    }
    for (i64 bi = 0; bi < a->b; bi++) {
        float *hb = a->h + bi * a->e * n;
        if (hT)
            for (i64 j = 0; j < w; j++)
                for (i64 k = 0; k < n; k++) hT[k * w + j] = hb[(a->e0 + j) * n + k];
        for (i64 t = 0; t < a->l; t++) {
            const float *u = a->u + bi * a->su_b + t * a->su_l + a->e0;
            const float *dl = a->dl + bi * a->sd_b + t * a->sd_l + a->e0;
            const float *Bt = a->B + bi * a->sB_b + t * a->sB_l;
            const float *Ct = a->C + bi * a->sC_b + t * a->sC_l;
            const float *bias = a->bias ? a->bias + a->e0 : 0;
            #pragma omp simd
            for (i64 j = 0; j < w; j++) {
                float x = dl[j] + (bias ? bias[j] : 0.0f);
                x = a->softplus ? fsoftplus(x) : x;
                d[j] = x;
                du[j] = x * u[j];
            }
            if (hT) scan1_lanes(hT, AT, d, du, Bt, Ct, acc, w, n);
            else if (n == 16) scan1_channels16(hb + a->e0 * 16, a->A + a->e0 * 16, d, du, Bt, Ct, acc, w);
            else scan1_channels(hb + a->e0 * n, a->A + a->e0 * n, d, du, Bt, Ct, acc, w, n);
            float *y = a->y + bi * a->sy_b + t * a->sy_l + a->e0;
            const float *D = a->D ? a->D + a->e0 : 0;
            const float *z = a->z ? a->z + bi * a->sz_b + t * a->sz_l + a->e0 : 0;
            #pragma omp simd
            for (i64 j = 0; j < w; j++) {
                float out = acc[j] + (D ? D[j] * u[j] : 0.0f);
                y[j] = z ? out * fsilu(z[j]) : out;
            }
        }
        if (hT)
            for (i64 j = 0; j < w; j++)
                for (i64 k = 0; k < n; k++) hb[(a->e0 + j) * n + k] = hT[k * w + j];
    }
    free(d);
    free(hT);
}

static void *scan1_thread(void *p) { scan1_range((const scan1_t *)p); return 0; }

/* Channels split into nthreads contiguous ranges (multiples of 16): no two threads share a line. */
void scan1(i64 b, i64 l, i64 e, i64 n,
           const float *u, i64 su_b, i64 su_l, const float *dl, i64 sd_b, i64 sd_l,
           const float *A, const float *bias, int softplus, const float *D,
           const float *B, i64 sB_b, i64 sB_l, const float *C, i64 sC_b, i64 sC_l,
           const float *z, i64 sz_b, i64 sz_l, float *h, float *y, i64 sy_b, i64 sy_l, int nthreads) {
    scan1_t args[64];
    pthread_t tid[64];
    if (nthreads < 1) nthreads = 1;
    if (nthreads > 64) nthreads = 64;
    i64 per = ((e + nthreads - 1) / nthreads + 15) / 16 * 16;
    int used = 0;
    for (int i = 0; i < nthreads; i++) {
        i64 e0 = i * per, e1 = e0 + per < e ? e0 + per : e;
        if (e0 >= e) break;
        scan1_t s = {b, l, e, n, e0, e1, u, su_b, su_l, dl, sd_b, sd_l, A, bias, D, B, sB_b, sB_l,
                     C, sC_b, sC_l, z, sz_b, sz_l, h, y, sy_b, sy_l, softplus};
        args[used++] = s;
    }
    for (int i = 1; i < used; i++) pthread_create(&tid[i], 0, scan1_thread, &args[i]);
    scan1_range(&args[0]);
    for (int i = 1; i < used; i++) pthread_join(tid[i], 0);
}

/* ---- causal conv, one decode step: state (b, c, k) shifted left, x appended, y = act(w . state + bias) ---- */
void conv_step(i64 b, i64 c, i64 k, const float *x, i64 sx_b, float *state, const float *w,
               const float *bias, int silu, float *y, i64 sy_b) {
    for (i64 bi = 0; bi < b; bi++) {
        const float *xb = x + bi * sx_b;
        float *sb = state + bi * c * k, *yb = y + bi * sy_b;
        for (i64 ch = 0; ch < c; ch++) {
            float *s = sb + ch * k;
            const float *wc = w + ch * k;
            float acc = bias ? bias[ch] : 0.0f;
            for (i64 j = 0; j + 1 < k; j++) { s[j] = s[j + 1]; acc += wc[j] * s[j]; }
            s[k - 1] = xb[ch];
            acc += wc[k - 1] * xb[ch];
            yb[ch] = acc;
        }
        if (silu) {
            #pragma omp simd
            for (i64 ch = 0; ch < c; ch++) yb[ch] = fsilu(yb[ch]);
        }
    }
}

/* ---- Mamba-2 SSD, one decode step: state (b, h, p, n) in place; x, y (b, h p); dt (b, h); B, C (b, g n) ---- */
void ssd_step(i64 b, i64 h, i64 p, i64 n, i64 g, const float *x, i64 sx_b, const float *dt, i64 sdt_b,
              const float *dt_bias, int softplus, float lo, float hi, const float *A,
              const float *B, i64 sB_b, const float *C, i64 sC_b, const float *D, int d_per_channel,
              float *state, float *y, i64 sy_b) {
    const i64 rep = h / g;
    for (i64 bi = 0; bi < b; bi++) {
        for (i64 hh = 0; hh < h; hh++) {
            const float *Bg = B + bi * sB_b + (hh / rep) * n, *Cg = C + bi * sC_b + (hh / rep) * n;
            float d = dt[bi * sdt_b + hh] + (dt_bias ? dt_bias[hh] : 0.0f);
            d = softplus ? fsoftplus(d) : d;
            d = d < lo ? lo : (d > hi ? hi : d);
            const float dA = fexp(d * A[hh]);
            const float *xh = x + bi * sx_b + hh * p;
            float *yh = y + bi * sy_b + hh * p;
            float *sh = state + (bi * h + hh) * p * n;
            for (i64 pi = 0; pi < p; pi++) {
                float *row = sh + pi * n;
                const float dx = d * xh[pi];
                float s = 0.0f;
                #pragma omp simd reduction(+:s)
                for (i64 k = 0; k < n; k++) {
                    float hv = dA * row[k] + dx * Bg[k];
                    row[k] = hv;
                    s += hv * Cg[k];
                }
                float skip = D ? (d_per_channel ? D[hh * p + pi] : D[hh]) : 0.0f;
                yh[pi] = s + skip * xh[pi];
            }
        }
    }
}
"""

_FLAGS = ["-O3", "-march=native", "-fopenmp-simd", "-fno-math-errno", "-fno-trapping-math",
          "-shared", "-fPIC", "-pthread"]
_lock = threading.Lock()
_lib = None
_tried = False
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


def _build():
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if not cc:
        logger.info("mambakit: no C compiler found, the CPU kernels are off (PyTorch paths instead)")
        return None
    key = hashlib.sha256("\0".join([_SOURCE, cc, *_FLAGS, _cpu_id()]).encode()).hexdigest()[:16]
    folder = _cache_dir()
    so = folder / f"cpu_kernels-{key}.so"
    if not so.exists():
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=folder) as tmp:  # compiled aside, renamed: no half-written .so
            src, out = Path(tmp) / "k.c", Path(tmp) / "k.so"
            src.write_text(_SOURCE)
            subprocess.run([cc, *_FLAGS, str(src), "-o", str(out)], check=True, capture_output=True, timeout=120)
            os.replace(out, so)
    lib = ctypes.CDLL(str(so))
    lib.scan1.argtypes = [_I] * 4 + [_P, _I, _I, _P, _I, _I, _P, _P, _INT, _P, _P, _I, _I, _P, _I, _I,
                                     _P, _I, _I, _P, _P, _I, _I, _INT]
    lib.conv_step.argtypes = [_I, _I, _I, _P, _I, _P, _P, _P, _INT, _P, _I]
    lib.ssd_step.argtypes = [_I] * 5 + [_P, _I, _P, _I, _P, _INT, _F, _F, _P, _P, _I, _P, _I, _P, _INT, _P, _P, _I]
    for fn in (lib.scan1, lib.conv_step, lib.ssd_step):
        fn.restype = None
    return lib


def available() -> bool:
    """Whether the kernels are on (env MAMBAKIT_CPU_KERNELS is not off) and built (once per process)."""
    global _lib, _tried
    if os.environ.get("MAMBAKIT_CPU_KERNELS", "on").lower() in ("0", "off", "false", "no"):
        return False
    if not _tried:
        with _lock:
            if not _tried:
                try:
                    _lib = _build()
                except Exception as exc:  # a broken compiler: say so once, keep the PyTorch paths
                    logger.warning("mambakit: building the CPU kernels failed (%s); using PyTorch paths", exc)
                    _lib = None
                _tried = True
    return _lib is not None


def usable(*tensors) -> bool:
    """available(), and every tensor given (None skipped) is an fp32 CPU tensor needing no gradient."""
    for t in tensors:
        if t is not None and (t.dtype != torch.float32 or t.device.type != "cpu"
                              or (t.requires_grad and torch.is_grad_enabled())):
            return False
    return available()


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
    y = torch.empty(b, l, e) if out is None else out
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
    y = torch.empty(b, c) if out is None else out
    _lib.conv_step(b, c, k, _ptr(x), x.stride(0), _ptr(state), _ptr(weight), _ptr(bias), int(silu), _ptr(y),
                   y.stride(0))
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
    y = torch.empty(b, h * p) if out is None else out
    _lib.ssd_step(b, h, p, n, g, _ptr(x), x.stride(0), _ptr(dt), dt.stride(0), _ptr(bias), int(bool(dt_softplus)),
                  float(dt_limit[0]), float(dt_limit[1]), _ptr(A), _ptr(B), B.stride(0), _ptr(C), C.stride(0),
                  _ptr(D), int(D is not None and D.dim() == 2), _ptr(state), _ptr(y), y.stride(0))
    return y
