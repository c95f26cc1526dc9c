"""The C source of the Mamba-2 SSD prefill on the CPU (cpu_kernels.ssd_chunks), joined into
cpu_kernels_src.SOURCE (one translation unit: it uses the exp helper there).

Letters: b batch, l length, h heads, p head dim, e = h p, n state dim, q chunk length, t token of
a chunk.

The chunked SSD of ops/ssd/chunked.py (_ssd_infer), one chunk at a time, in one call per layer.
Per chunk: C B^T (one GEMM), then each thread takes a block of heads: the state entering the
chunk read out by C (one GEMM for the block), the diagonal block (decays, C B^T, dt, x: a loop
that never builds the (q, q) mask of every head) and the chunk's inputs added to the decayed
state (one GEMM). A block's state rows stay in its thread's cache throughout. The
GEMMs are the BLAS torch itself runs (MKL's sgemm_ in torch's x86 CPU wheels; single-threaded
inside the parallel region), reached through a function pointer the Python side passes in; the
Python loop this replaces spent about half its time on ~20 small torch ops per chunk. The state
is kept (h, p, n), the cache's layout. Decays below `floor` in log space are exactly 0 (no
subnormals), as in _exp0.
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
#ifndef _OPENMP
    nthreads = 1;  /* built without OpenMP: the parallel block below runs once, so it must take every head */
#endif
    if (nthreads > h) nthreads = (int)h;
    if (nthreads < 1) nthreads = 1;
    const i64 per = (h + nthreads - 1) / nthreads;  /* heads per thread */
    float *acum = (float *)malloc(sizeof(float) * q * h);   /* (t, h): cumsum of dt A in the chunk */
    float *cb = (float *)malloc(sizeof(float) * q * q);     /* (t, t): C B^T */
    float *scratch = (float *)malloc(sizeof(float) * nthreads * q * (per * p + 1));  /* per thread: xs, coefs */
    if (!acum || !cb || !scratch) { free(acum); free(cb); free(scratch); return -1; }
    for (i64 bi = 0; bi < b; bi++) {
        float *S = state + bi * e * n;  /* (e, n) = (h, p, n) */
        int have_state = has_init;
        for (i64 t0 = 0; t0 < l; t0 += q) {
            const int Q = (int)(l - t0 < q ? l - t0 : q), N = (int)n, E = (int)e;
            const float *xq = x + bi * sx_b + t0 * sx_l, *dtq = dt + (bi * l + t0) * h;
            const float *Bq = B + bi * sB_b + t0 * sB_l, *Cq = C + bi * sC_b + t0 * sC_l;
            float *yq = y + (bi * l + t0) * e;
            /* dt A below 2 floor is held there: every decay across such a token is below the floor
               (exactly 0) either way, and the cumsum stays finite and precise (a -1e6 would swamp it,
               a -3e38 twice make it -inf and the differences NaN) */
            for (i64 hh = 0; hh < h; hh++) {
                float s = 0.0f;
                for (int t = 0; t < Q; t++) {
                    const float da = dtq[t * h + hh] * A[hh];
                    s += da < 2.0f * floor ? 2.0f * floor : da;
                    acum[t * h + hh] = s;
                }
            }
            gemm_rm(gemm, 'N', 'T', Q, Q, N, Cq, (int)sC_l, Bq, (int)sB_l, 0.0f, cb, Q);
            /* Heads are independent given C B^T: each thread takes a block of heads, whose state
               rows (hb p, n) stay in its cache through both of its GEMMs (MKL runs single-threaded
               inside the parallel region); one GEMM per block, not per head, for the GEMMs' speed. */
            #pragma omp parallel num_threads(nthreads)
            {
                int tid = 0, team = 1;
#ifdef _OPENMP
                tid = omp_get_thread_num();
                team = omp_get_num_threads();  /* may be fewer than asked (OMP_DYNAMIC, a thread limit) */
#endif
                for (int blk = tid; blk < nthreads; blk += team) {
                    const i64 h0 = blk * per < h ? blk * per : h, h1 = h0 + per < h ? h0 + per : h;
                    const int W = (int)((h1 - h0) * p);  /* the block's width */
                    float *xs = scratch + blk * q * (per * p + 1), *cf = xs + q * per * p;
                    float *Sb = S + h0 * p * n, *yb = yq + h0 * p;
                    /* the entering state read out: y (t, block) = C (t, n) S_block^T */
                    if (W > 0 && have_state) gemm_rm(gemm, 'N', 'T', Q, W, N, Cq, (int)sC_l, Sb, N, 0.0f, yb, E);
                    for (i64 hh = h0; hh < h1; hh++) {
                        const float last = acum[(Q - 1) * h + hh], dd = D ? D[hh] : 0.0f;
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
                            for (int j = 0; j <= i; j++)
                                cf[j] = exp0(ai - acum[j * h + hh], floor) * cb[i * Q + j] * dtq[j * h + hh];
                            cf[i] += dd;
                            for (int j = 0; j <= i; j++) {
                                const float c = cf[j];
                                const float *xr = xq + j * sx_l + hh * p;
                                #pragma omp simd
                                for (i64 k = 0; k < p; k++) yr[k] += c * xr[k];
                            }
                            /* this token's input decayed to the chunk's end, for the state */
                            const float w = exp0(last - ai, floor) * dtq[i * h + hh];
                            const float *xi = xq + i * sx_l + hh * p;
                            float *xo = xs + i * W + (hh - h0) * p;
                            #pragma omp simd
                            for (i64 k = 0; k < p; k++) xo[k] = xi[k] * w;
                        }
                        if (have_state) {  /* the head's state decayed across the chunk */
                            const float dl = exp0(last, floor);
                            float *Sh = S + hh * p * n;
                            #pragma omp simd
                            for (i64 k = 0; k < p * n; k++) Sh[k] *= dl;
                        }
                    }
                    /* S_block (block, n) += xs^T (block, t) B (t, n) */
                    if (W > 0)
                        gemm_rm(gemm, 'T', 'N', W, N, Q, xs, W, Bq, (int)sB_l, have_state ? 1.0f : 0.0f, Sb, N);
                }
            }
            have_state = 1;
        }
    }
    free(acum); free(cb); free(scratch);
    return 0;
}
"""
