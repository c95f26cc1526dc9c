"""The C source of ops/cpu_kernels.py (kept apart so that file stays short; a .py module, so
every install ships it): the math helpers, the convs, RMSNorm, the decode projections and decode
steps here, the Mamba-1 selective scan in cpu_kernels_scan_src.py, the Mamba-2 SSD prefill in
cpu_kernels_ssd_src.py; SOURCE joins them.

Letters: b batch, l length, e inner width, n state dim, h heads, p head dim, g groups,
c conv channels, k conv width, r dt rank, d model width.
"""

from .cpu_kernels_scan_src import SCAN_SOURCE
from .cpu_kernels_ssd_src import SSD_SOURCE

_HEAD = r"""
#include <stdint.h>
#include <stdlib.h>
#include <pthread.h>
#include <math.h>
#ifdef _OPENMP
#include <omp.h>
#endif

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

#if defined(__AVX512F__)
#include <immintrin.h>
/* fexp on 16 lanes with AVX-512's scalef: x log2(e) = k + f, |f| <= 1/2, 2^f by Cephes' exp2f
   polynomial, times 2^k in one instruction; 0 below -87 as fexp (NaN stays NaN). About half
   fexp's instructions, and the Mamba-1 scan is bound by its exps. */
static inline __m512 vexp16(__m512 x) {
    const __m512 l2e = _mm512_set1_ps(1.44269504088896341f);
    const __m512 k = _mm512_roundscale_ps(_mm512_mul_ps(x, l2e), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    /* f = x log2(e) - k with the product unrounded and log2(e)'s float error added back: ~1.1 ulp
       over [-87, 0] (x l2e - k from the rounded product was 64 ulp off near -87) */
    const __m512 f = _mm512_fmadd_ps(x, _mm512_set1_ps(1.925963e-8f), _mm512_fmsub_ps(x, l2e, k));
    __m512 p = _mm512_set1_ps(1.535336188319500e-4f);
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.339887440266574e-3f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(9.618437357674640e-3f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.550332471162809e-2f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.402264791363012e-1f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.931472028550421e-1f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
    const __mmask16 live = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-87.0f), _CMP_NLT_UQ);
    return _mm512_maskz_scalef_ps(live, p, k);
}
#endif

"""

_REST = r"""
/* ---- causal conv, one decode step: state (b, c, k) shifted left, x appended, y = act(w . state + bias);
   conv_rows does channels [c0, c1) (a thread's share). ---- */
static void conv_rows(i64 b, i64 c, i64 c0, i64 c1, i64 k, const float *x, i64 sx_b, float *state,
                      const float *w, const float *bias, int silu, float *y, i64 sy_b) {
    for (i64 bi = 0; bi < b; bi++) {
        const float *xb = x + bi * sx_b;
        float *sb = state + bi * c * k, *yb = y + bi * sy_b;
        for (i64 ch = c0; ch < c1; ch++) {
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
            for (i64 ch = c0; ch < c1; ch++) yb[ch] = fsilu(yb[ch]);
        }
    }
}

/* ---- Causal depthwise conv (+ SiLU) over a sequence (prefill): x (b, l, c) with a contiguous last
   axis, state (b, c, k) of the k inputs before t = 0 (the last at k - 1; 0 = zeros), replaced by the
   last k inputs when write_state; y (b, l, c) contiguous. Rows (time steps) split over the threads;
   each output row is k vector fmas over all channels with the taps kept transposed (k, c), reading
   whole contiguous input rows (the earlier 16-channel blocks walked the length at in_proj's row
   stride, a new page per row: 5.1 ms for mamba2-130m's 1024 x 1792 against 0.x ms now). ---- */
void conv_seq(i64 b, i64 l, i64 c, i64 k, const float *x, i64 sx_b, i64 sx_l, float *state, int write_state,
              const float *w, const float *bias, int silu, float *y, int nthreads) {
    if (k < 1 || k > 16) return;  /* the Python side checks first */
    float *wt = (float *)malloc(sizeof(float) * k * c);           /* taps (k, c) */
    float *past = (float *)malloc(sizeof(float) * b * k * c);     /* the state's inputs (b, k, c) */
    if (!wt || !past) { free(wt); free(past); return; }
    for (i64 ch = 0; ch < c; ch++)
        for (i64 i = 0; i < k; i++) wt[i * c + ch] = w[ch * k + i];
    for (i64 bi = 0; bi < b; bi++)
        for (i64 ch = 0; ch < c; ch++)
            for (i64 i = 0; i < k; i++) past[(bi * k + i) * c + ch] = state ? state[(bi * c + ch) * k + i] : 0.0f;
    #pragma omp parallel for schedule(static) num_threads(nthreads)
    for (i64 r = 0; r < b * l; r++) {
        const i64 bi = r / l, t = r % l;
        float *restrict yt = y + r * c;
        #pragma omp simd
        for (i64 ch = 0; ch < c; ch++) yt[ch] = bias ? bias[ch] : 0.0f;
        for (i64 i = 0; i < k; i++) {
            const i64 p = t - (k - 1) + i;  /* the input this tap reads: x[p], or the state's k + p */
            const float *restrict src = p >= 0 ? x + bi * sx_b + p * sx_l : past + (bi * k + k + p) * c;
            const float *restrict wi = wt + i * c;
            #pragma omp simd
            for (i64 ch = 0; ch < c; ch++) yt[ch] += wi[ch] * src[ch];
        }
        if (silu) {
            #pragma omp simd
            for (i64 ch = 0; ch < c; ch++) yt[ch] = fsilu(yt[ch]);
        }
    }
    if (write_state)
        for (i64 bi = 0; bi < b; bi++)
            for (i64 ch = 0; ch < c; ch++)
                for (i64 i = 0; i < k; i++) {
                    const i64 p = l - k + i;
                    state[(bi * c + ch) * k + i] = p >= 0 ? x[bi * sx_b + p * sx_l + ch] : past[(bi * k + k + p) * c + ch];
                }
    free(wt);
    free(past);
}

void conv_step(i64 b, i64 c, i64 k, const float *x, i64 sx_b, float *state, const float *w,
               const float *bias, int silu, float *y, i64 sy_b) {
    conv_rows(b, c, 0, c, k, x, sx_b, state, w, bias, silu, y, sy_b);
}

/* ---- Mamba-2 SSD, one decode step: state (b, h, p, n) in place; x, y (b, h p); dt (b, h); B, C (b, g n) ---- */
static void ssd_heads(i64 b, i64 h, i64 h0, i64 h1, i64 p, i64 n, i64 g, const float *x, i64 sx_b,
                      const float *dt, i64 sdt_b, const float *dt_bias, int softplus, float lo, float hi,
                      const float *A, const float *B, i64 sB_b, const float *C, i64 sC_b, const float *D,
                      int d_per_channel, float *state, float *y, i64 sy_b) {
    const i64 rep = h / g;
    for (i64 bi = 0; bi < b; bi++) {
        for (i64 hh = h0; hh < h1; hh++) {
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

void ssd_step(i64 b, i64 h, i64 p, i64 n, i64 g, const float *x, i64 sx_b, const float *dt, i64 sdt_b,
              const float *dt_bias, int softplus, float lo, float hi, const float *A,
              const float *B, i64 sB_b, const float *C, i64 sC_b, const float *D, int d_per_channel,
              float *state, float *y, i64 sy_b) {
    ssd_heads(b, h, 0, h, p, n, g, x, sx_b, dt, sdt_b, dt_bias, softplus, lo, hi, A, B, sB_b, C, sC_b, D,
              d_per_channel, state, y, sy_b);
}

/* ---- RMSNorm of rows (d wide), the residual add first when y is given: x += y; out = x / rms(x) * w.
   The product order of torch's rms_norm: (x * rsqrt(mean(x^2) + eps)) * w. ---- */
void add_rms_norm(i64 rows, i64 d, float *x, i64 sx, const float *y, i64 sy, const float *w, float eps,
                  float *out, i64 so) {
    for (i64 i = 0; i < rows; i++) {
        float *xr = x + i * sx, *o = out + i * so;
        if (y) {
            const float *yr = y + i * sy;
            #pragma omp simd
            for (i64 j = 0; j < d; j++) xr[j] += yr[j];
        }
        float ss = 0.0f;
        #pragma omp simd reduction(+:ss)
        for (i64 j = 0; j < d; j++) ss += xr[j] * xr[j];
        const float rs = 1.0f / sqrtf(ss / (float)d + eps);
        #pragma omp simd
        for (i64 j = 0; j < d; j++) o[j] = (xr[j] * rs) * w[j];
    }
}

int built_with_openmp(void) {
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

/* a . b, not inlined: inlined into the loops of mamba1_step, gcc left the reduction scalar (one
   dependent add per element: the step took 4x longer). */
__attribute__((noinline)) static float dot(const float *restrict a, const float *restrict b, i64 n) {
    float s = 0.0f;
    #pragma omp simd reduction(+:s)
    for (i64 j = 0; j < n; j++) s += a[j] * b[j];
    return s;
}

/* ---- y (m, out) = x (m, in) W^T + bias for a few rows m (decoding): W (out, in) contiguous, its rows
   split over the threads, each weight row read once for all m rows of x (which stay in L1). At
   batch 1 the BLAS behind F.linear read these matrices at about 14 GB/s here, this loop at about
   30 (the machine's streaming read rate), so a decode step, which is mostly weight reading, took
   half the time. Each output element is one thread's fixed arithmetic: the same bits at any
   thread count. ---- */
__attribute__((noinline)) static void dot4(const float *restrict w, const float *restrict x, i64 sx, i64 n,
                                           float *restrict s) {
    const float *x0 = x, *x1 = x + sx, *x2 = x + 2 * sx, *x3 = x + 3 * sx;
    float s0 = 0.0f, s1 = 0.0f, s2 = 0.0f, s3 = 0.0f;
    #pragma omp simd reduction(+:s0,s1,s2,s3)
    for (i64 j = 0; j < n; j++) {
        const float a = w[j];
        s0 += a * x0[j]; s1 += a * x1[j]; s2 += a * x2[j]; s3 += a * x3[j];
    }
    s[0] = s0; s[1] = s1; s[2] = s2; s[3] = s3;
}

void linear_rows(i64 m, i64 out, i64 in, const float *x, i64 sx, const float *W, const float *bias,
                 float *y, i64 sy, int nthreads) {
    #pragma omp parallel for schedule(static) num_threads(nthreads)
    for (i64 o = 0; o < out; o++) {
        const float *w = W + o * in;
        const float bo = bias ? bias[o] : 0.0f;
        float s[4];
        i64 r = 0;
        for (; r + 4 <= m; r += 4) {
            dot4(w, x + r * sx, sx, in, s);
            for (int q = 0; q < 4; q++) y[(r + q) * sy + o] = s[q] + bo;
        }
        for (; r < m; r++) y[r * sy + o] = dot(w, x + r * sx, in) + bo;
    }
}

/* ---- Mamba-1 decode step after in_proj: conv + SiLU, x_proj, dt_proj, softplus, SSM update,
   C h + D x, gate by SiLU(z), in one call. xz (b, 2e) rows; Wx (r + 2n, e); Wdt (e, r);
   conv state (b, e, k) and h (b, e, n) in place; y (b, e) contiguous. ---- */
void mamba1_step(i64 b, i64 e, i64 n, i64 r, i64 k, const float *xz, i64 sxz_b, float *conv_state,
                 const float *conv_w, const float *conv_b, const float *Wx, const float *Wdt,
                 const float *dt_bias, const float *A, const float *D, float *h, float *y, int nthreads) {
    const i64 m = r + 2 * n;
    float *xdbl = (float *)malloc(sizeof(float) * b * (m + e));
    float *dt = xdbl + b * m;
    /* Each thread: its channels (multiples of 16) through the conv, its rows of x_proj, then dt_proj
       and the scan of its channels; x_proj needs every channel's x, hence the barriers. The same
       arithmetic for every element at any thread count. */
    #pragma omp parallel num_threads(nthreads)
    {
        int t = 0, T = 1;
#ifdef _OPENMP
        t = omp_get_thread_num(); T = omp_get_num_threads();
#endif
        const i64 per = ((e + T - 1) / T + 15) / 16 * 16, c0 = t * per < e ? t * per : e;
        const i64 c1 = c0 + per < e ? c0 + per : e, mq = (m + T - 1) / T;
        const i64 q0 = t * mq < m ? t * mq : m, q1 = q0 + mq < m ? q0 + mq : m;
        conv_rows(b, e, c0, c1, k, xz, sxz_b, conv_state, conv_w, conv_b, 1, y, e);  /* x into y */
        #pragma omp barrier
        for (i64 bi = 0; bi < b; bi++)
            for (i64 q = q0; q < q1; q++) xdbl[bi * m + q] = dot(Wx + q * e, y + bi * e, e);
        #pragma omp barrier
        for (i64 bi = 0; bi < b; bi++)
            for (i64 j = c0; j < c1; j++) dt[bi * e + j] = dot(Wdt + j * r, xdbl + bi * m, r);
        if (c1 > c0) {
            scan1_t a = {b, 1, e, n, c0, c1, y, e, e, dt, e, e, A, dt_bias, D, xdbl + r, m, m,
                         xdbl + r + n, m, m, xz + e, sxz_b, sxz_b, h, y, e, e, 1};
            scan1_range(&a);  /* reads x (in y) of its channels before writing y over them */
        }
    }
    free(xdbl);
}

/* ---- Mamba-2's gated RMSNorm of rows (e wide) in place: y = rmsnorm(y * silu(z)) per group of gs
   channels (norm_before_gate: rmsnorm(y) * silu(z)), times w. z rows are read through their stride
   (z is a column slice of in_proj's output). The product order of ops.gated_rms_norm. ---- */
void gated_norm_rows(i64 rows, i64 e, float *y, i64 sy, const float *z, i64 sz, const float *w, float eps,
                     i64 gs, int norm_before_gate, int nthreads) {
    #pragma omp parallel for schedule(static) num_threads(nthreads) if(rows > 1 && nthreads > 1)
    for (i64 i = 0; i < rows; i++) {
        const float *zr = z + i * sz;
        float *yr = y + i * sy;
        if (!norm_before_gate) {
            #pragma omp simd
            for (i64 j = 0; j < e; j++) yr[j] = yr[j] * fsilu(zr[j]);
        }
        for (i64 g0 = 0; g0 < e; g0 += gs) {
            float ss = 0.0f;
            #pragma omp simd reduction(+:ss)
            for (i64 j = g0; j < g0 + gs; j++) ss += yr[j] * yr[j];
            const float rs = 1.0f / sqrtf(ss / (float)gs + eps);
            if (norm_before_gate) {
                #pragma omp simd
                for (i64 j = g0; j < g0 + gs; j++) yr[j] = ((yr[j] * rs) * fsilu(zr[j])) * w[j];
            } else {
                #pragma omp simd
                for (i64 j = g0; j < g0 + gs; j++) yr[j] = (yr[j] * rs) * w[j];
            }
        }
    }
}

/* ---- Mamba-2 decode step after in_proj: conv + SiLU over xBC, the SSD step, then the gated RMSNorm
   (per group of gs channels; gate first unless norm_before_gate), in one call.
   zxbcdt (b, 2e + 2gn + h) rows: z, xBC, dt; xbc (b, e + 2gn) scratch; y (b, e) contiguous. ---- */
void mamba2_step(i64 b, i64 h, i64 p, i64 n, i64 g, i64 k, const float *zxbcdt, i64 s_b,
                 float *conv_state, const float *conv_w, const float *conv_b, const float *dt_bias,
                 float lo, float hi, const float *A, const float *D, int d_per_channel, float *state,
                 const float *norm_w, float eps, i64 gs, int norm_before_gate, float *xbc, float *y,
                 int nthreads) {
    const i64 e = h * p, c = e + 2 * g * n;
    /* Each thread: its conv channels, then (every channel's B and C needed: a barrier) its heads. */
    #pragma omp parallel num_threads(nthreads)
    {
        int t = 0, T = 1;
#ifdef _OPENMP
        t = omp_get_thread_num(); T = omp_get_num_threads();
#endif
        const i64 per = ((c + T - 1) / T + 15) / 16 * 16, c0 = t * per < c ? t * per : c;
        const i64 c1 = c0 + per < c ? c0 + per : c, hp = (h + T - 1) / T;
        const i64 h0 = t * hp < h ? t * hp : h, h1 = h0 + hp < h ? h0 + hp : h;
        conv_rows(b, c, c0, c1, k, zxbcdt + e, s_b, conv_state, conv_w, conv_b, 1, xbc, c);
        #pragma omp barrier
        ssd_heads(b, h, h0, h1, p, n, g, xbc, c, zxbcdt + e + c, s_b, dt_bias, 1, lo, hi, A, xbc + e, c,
                  xbc + e + g * n, c, D, d_per_channel, state, y, e);
    }
    gated_norm_rows(b, e, y, e, zxbcdt, s_b, norm_w, eps, gs, norm_before_gate, 1);
}
"""

SOURCE = _HEAD + SCAN_SOURCE + _REST + SSD_SOURCE  # one translation unit: the math above is shared
