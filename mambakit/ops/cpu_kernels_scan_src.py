"""The C source of the Mamba-1 selective scan of ops/cpu_kernels.py (prefill and decode step), kept apart
from cpu_kernels_src.py (the math helpers, convs, norms, projections and decode steps) that places it
between its math helpers and the rest: one translation unit, compiled together.

Letters: b batch, l length, e inner width, n state dim.
"""

SCAN_SOURCE = r"""
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

/* Many steps over blocks of SB channels: the block's state stays in registers along a chunk of
   up to ST steps (one state at a time, time inside), and the chunk's dt, dt u and outputs sit in
   arrays of ST x SB floats that L1 holds; the lanes path below reloads the (n, w) state from L2 at
   every step. The scan is bound by its exps, not by those loads: the blocks alone were no faster;
   with vexp16 a call took 6.48 ms (median of 30) against the lanes' 8.16, alternating in one process
   (e 1536, n 16, l 1024, 2 threads; benchmarks/results/cpu_scan-cpu-2026-12-07-session15-before-after.json). */
#define SB 16
#define ST 64
static void scan1_blocks(const scan1_t *a, i64 e0, i64 e1) {
    const i64 n = a->n;
    float d[ST][SB], du[ST][SB], acc[ST][SB];
    float *hs = (float *)malloc(sizeof(float) * 2 * n * SB);  /* the block's state and A, (n, SB) */
    float *As = hs + n * SB;
    for (i64 bi = 0; bi < a->b; bi++) {
        for (i64 j0 = e0; j0 < e1; j0 += SB) {
            float *hb = a->h + (bi * a->e + j0) * n;
            for (i64 v = 0; v < SB; v++)
                for (i64 k = 0; k < n; k++) { hs[k * SB + v] = hb[v * n + k]; As[k * SB + v] = a->A[(j0 + v) * n + k]; }
            const float *bias = a->bias ? a->bias + j0 : 0;
            const float *D = a->D ? a->D + j0 : 0;
            for (i64 t0 = 0; t0 < a->l; t0 += ST) {
                const i64 tc = a->l - t0 < ST ? a->l - t0 : ST;
                for (i64 t = 0; t < tc; t++) {
                    const float *u = a->u + bi * a->su_b + (t0 + t) * a->su_l + j0;
                    const float *dl = a->dl + bi * a->sd_b + (t0 + t) * a->sd_l + j0;
                    #pragma omp simd
                    for (i64 v = 0; v < SB; v++) {
                        float x = dl[v] + (bias ? bias[v] : 0.0f);
                        x = a->softplus ? fsoftplus(x) : x;
                        d[t][v] = x;
                        du[t][v] = x * u[v];
                        acc[t][v] = D ? D[v] * u[v] : 0.0f;  /* u is read here only: y may overwrite it */
                    }
                }
                const float *Bt = a->B + bi * a->sB_b + t0 * a->sB_l;
                const float *Ct = a->C + bi * a->sC_b + t0 * a->sC_l;
                for (i64 k = 0; k < n; k++) {
#if defined(__AVX512F__)
                    __m512 hk = _mm512_loadu_ps(hs + k * SB);
                    const __m512 Ak = _mm512_loadu_ps(As + k * SB);
                    for (i64 t = 0; t < tc; t++) {
                        const __m512 decay = vexp16(_mm512_mul_ps(_mm512_loadu_ps(d[t]), Ak));
                        const __m512 bu = _mm512_mul_ps(_mm512_loadu_ps(du[t]), _mm512_set1_ps(Bt[t * a->sB_l + k]));
                        hk = _mm512_fmadd_ps(decay, hk, bu);
                        _mm512_storeu_ps(acc[t], _mm512_fmadd_ps(hk, _mm512_set1_ps(Ct[t * a->sC_l + k]),
                                                                 _mm512_loadu_ps(acc[t])));
                    }
                    _mm512_storeu_ps(hs + k * SB, hk);
#else
                    float hk[SB], Ak[SB];
                    for (i64 v = 0; v < SB; v++) { hk[v] = hs[k * SB + v]; Ak[v] = As[k * SB + v]; }
                    for (i64 t = 0; t < tc; t++) {
                        const float Bk = Bt[t * a->sB_l + k], Ck = Ct[t * a->sC_l + k];
                        #pragma omp simd
                        for (i64 v = 0; v < SB; v++) {
                            hk[v] = fexp(d[t][v] * Ak[v]) * hk[v] + du[t][v] * Bk;
                            acc[t][v] += hk[v] * Ck;
                        }
                    }
                    for (i64 v = 0; v < SB; v++) hs[k * SB + v] = hk[v];
#endif
                }
                for (i64 t = 0; t < tc; t++) {
                    float *y = a->y + bi * a->sy_b + (t0 + t) * a->sy_l + j0;
                    const float *z = a->z ? a->z + bi * a->sz_b + (t0 + t) * a->sz_l + j0 : 0;
                    #pragma omp simd
                    for (i64 v = 0; v < SB; v++) y[v] = z ? acc[t][v] * fsilu(z[v]) : acc[t][v];
                }
            }
            for (i64 v = 0; v < SB; v++)
                for (i64 k = 0; k < n; k++) hb[v * n + k] = hs[k * SB + v];
        }
    }
    free(hs);
}

static void scan1_range(const scan1_t *in) {
    scan1_t sub = *in;
    if (in->l > 1) {  /* whole blocks of SB channels take scan1_blocks, the rest (if any) the lanes below */
        const i64 mid = in->e0 + (in->e1 - in->e0) / SB * SB;
        if (mid > in->e0) scan1_blocks(in, in->e0, mid);
        if (mid == in->e1) return;
        sub.e0 = mid;
    }
    const scan1_t *a = &sub;
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
#ifdef _OPENMP
    /* torch's OpenMP pool: its workers still spin from the matmul before, and a pthread of ours
       would wait behind them for a core */
    #pragma omp parallel for schedule(static, 1) num_threads(used)
    for (int i = 0; i < used; i++) scan1_range(&args[i]);
    (void)tid;
#else
    for (int i = 1; i < used; i++) pthread_create(&tid[i], 0, scan1_thread, &args[i]);
    scan1_range(&args[0]);
    for (int i = 1; i < used; i++) pthread_join(tid[i], 0);
#endif
}

"""
