"""The C source of the Mamba-2 SSD prefill on the CPU (cpu_kernels.ssd_chunks), joined into
cpu_kernels_src.SOURCE (one translation unit: it uses the exp helper there).

Letters: b batch, l length, h heads, p head dim, e = h p, n state dim, q chunk length, t token of
a chunk.

The chunked SSD of ops/ssd/chunked.py (_ssd_infer), one chunk at a time, in one call per layer:
per chunk, the state entering it read out by C (a GEMM), C B^T (a GEMM), the diagonal block
(decays, C B^T, dt, x per head: a loop that never builds the (q, q) mask of every head), and the
chunk's contribution to the state (a GEMM accumulating into the decayed state). The GEMMs are
the BLAS that torch itself runs (MKL's sgemm_ in torch's x86 CPU wheels), reached through a
function pointer the Python side passes in; the Python loop it replaces spent about half its
time on ~20 small torch ops per chunk. The state is kept (e, n), the layout of the cache's
(h, p, n). Decays below `floor` in log space are exactly 0 (no subnormals), as in _exp0.
"""

SSD_SOURCE = r"""
typedef void (*sgemm_fn)(const char *, const char *, const int *, const int *, const int *, const float *,
                         const float *, const int *, const float *, const int *, const float *, float *,
                         const int *);

/* Row-major C (M, N) = op(A) (M, K) @ op(B) (K, N) + beta C through a column-major sgemm: the same
   product transposed, operands swapped. */
static void gemm_rm(sgemm_fn f, char ta, char tb, int M, int N, int K, const float *A, int lda,
                    const float *B, int ldb, float beta, float *C, int ldc) {
    const float one = 1.0f;
    f(&tb, &ta, &N, &M, &K, &one, B, &ldb, A, &lda, &beta, C, &ldc);
}

static inline float exp0(float v, float floor) { return v < floor ? 0.0f : fexp(v); }

/* x (b, l, h, p) rows of stride sx_l (batch sx_b); dt (b, l, h) contiguous (after softplus and
   limits); A (h,); B, C (b, l, n) rows of stride sB_l / sC_l (batch sB_b / sC_b); D (h,) or NULL;
   state (b, h, p, n): read as the initial state when has_init, replaced by the final state;
   y (b, l, h, p) contiguous. Returns 0, or -1 if scratch memory could not be allocated. */
int ssd_chunks(void *sgemm_ptr, i64 b, i64 l, i64 h, i64 p, i64 n, i64 q,
               const float *x, i64 sx_b, i64 sx_l, const float *dt, const float *A,
               const float *B, i64 sB_b, i64 sB_l, const float *C, i64 sC_b, i64 sC_l,
               const float *D, float *state, int has_init, float *y, float floor, int nthreads) {
    sgemm_fn gemm = (sgemm_fn)sgemm_ptr;
    const i64 e = h * p;
    float *acum = (float *)malloc(sizeof(float) * q * h);   /* (t, h): cumsum of dt A in the chunk */
    float *cb = (float *)malloc(sizeof(float) * q * q);     /* (t, t): C B^T */
    float *xs = (float *)malloc(sizeof(float) * q * e);     /* (t, e): x decayed to the chunk's end, times dt */
    float *coef = (float *)malloc(sizeof(float) * nthreads * q);
    float *other = (float *)malloc(sizeof(float) * e * n);  /* the second state buffer */
    if (!acum || !cb || !xs || !coef || !other) {
        free(acum); free(cb); free(xs); free(coef); free(other); return -1;
    }
    for (i64 bi = 0; bi < b; bi++) {
        /* Two (e, n) buffers, swapped per chunk: the state entering it (read out by C) and the one
           leaving it (decayed copy + this chunk's inputs): the two GEMMs share no output, so with two
           threads they run side by side, one thread each (MKL runs single-threaded inside a parallel
           region), which beat two threads on each in turn by ~1.4x at mamba2-130m's shapes. */
        float *S = state + bi * e * n, *Snext = other;
        int have_state = has_init;
        for (i64 t0 = 0; t0 < l; t0 += q) {
            const int Q = (int)(l - t0 < q ? l - t0 : q);
            const float *xq = x + bi * sx_b + t0 * sx_l, *dtq = dt + (bi * l + t0) * h;
            const float *Bq = B + bi * sB_b + t0 * sB_l, *Cq = C + bi * sC_b + t0 * sC_l;
            float *yq = y + (bi * l + t0) * e;
            for (i64 hh = 0; hh < h; hh++) {
                float s = 0.0f;
                for (int t = 0; t < Q; t++) { s += dtq[t * h + hh] * A[hh]; acum[t * h + hh] = s; }
            }
            gemm_rm(gemm, 'N', 'T', Q, Q, (int)n, Cq, (int)sC_l, Bq, (int)sB_l, 0.0f, cb, Q);
            /* per head: the inputs decayed to the chunk's end, and the entering state decayed across it */
            #pragma omp parallel for schedule(static) num_threads(nthreads)
            for (i64 hh = 0; hh < h; hh++) {
                const float last = acum[(Q - 1) * h + hh];
                for (int i = 0; i < Q; i++) {
                    const float w = exp0(last - acum[i * h + hh], floor) * dtq[i * h + hh];
                    const float *xi = xq + i * sx_l + hh * p;
                    float *xo = xs + i * e + hh * p;
                    #pragma omp simd
                    for (i64 k = 0; k < p; k++) xo[k] = xi[k] * w;
                }
                if (have_state) {
                    const float dl = exp0(last, floor);
                    const float *Sh = S + hh * p * n;
                    float *Nh = Snext + hh * p * n;
                    #pragma omp simd
                    for (i64 k = 0; k < p * n; k++) Nh[k] = Sh[k] * dl;
                }
            }
            /* y = C S^T (the entering state read out) and Snext += xs^T B, side by side */
            #pragma omp parallel sections num_threads(nthreads)
            {
                #pragma omp section
                if (have_state) gemm_rm(gemm, 'N', 'T', Q, (int)e, (int)n, Cq, (int)sC_l, S, (int)n, 0.0f, yq, (int)e);
                #pragma omp section
                gemm_rm(gemm, 'T', 'N', (int)e, (int)n, Q, xs, (int)e, Bq, (int)sB_l, have_state ? 1.0f : 0.0f,
                        Snext, (int)n);
            }
            #pragma omp parallel for schedule(static) num_threads(nthreads)
            for (i64 hh = 0; hh < h; hh++) {
                int tid = 0;
#ifdef _OPENMP
                tid = omp_get_thread_num();
#endif
                float *cf = coef + tid * q;
                const float dd = D ? D[hh] : 0.0f;
                for (int i = 0; i < Q; i++) {
                    const float ai = acum[i * h + hh];
                    float *yr = yq + i * e + hh * p;
                    if (have_state) {
                        const float di = exp0(ai, floor);
                        #pragma omp simd
                        for (i64 k = 0; k < p; k++) yr[k] *= di;
                    } else {
                        for (i64 k = 0; k < p; k++) yr[k] = 0.0f;
                    }
                    /* the diagonal block's row i: sum over j <= i of exp(A_i - A_j) (C_i . B_j) dt_j x_j */
                    #pragma omp simd
                    for (int j = 0; j <= i; j++) cf[j] = exp0(ai - acum[j * h + hh], floor) * cb[i * Q + j] * dtq[j * h + hh];
                    cf[i] += dd;
                    for (int j = 0; j <= i; j++) {
                        const float c = cf[j];
                        const float *xr = xq + j * sx_l + hh * p;
                        #pragma omp simd
                        for (i64 k = 0; k < p; k++) yr[k] += c * xr[k];
                    }
                }
            }
            float *t = S; S = Snext; Snext = t;
            have_state = 1;
        }
        if (S != state + bi * e * n)  /* the final state sits in the scratch buffer */
            for (i64 k = 0; k < e * n; k++) state[bi * e * n + k] = S[k];
    }
    free(acum); free(cb); free(xs); free(coef); free(other);
    return 0;
}
"""
