/* One-read dense passes for phasetorch (phasetorch/physics/kernels.py compiles and loads this file).
 *
 * A is a row-major m x n matrix (float32, float64, or complex64/complex128 stored as interleaved
 * (re, im) pairs), x holds B signals (B x n, row-major). Three modes:
 *
 *   PT_FUSED    z = A x, v_i = phi(c z_i, q_i, w_i) per row, g = sum_i conj(A_i)^T v_i, in ONE read of A
 *               (each block of PT_R rows is reused from L1/L2 by the adjoint right after its forward
 *               dot products); also |c z_i|^2, the weights used and sum_i w_i l_i per signal.
 *   PT_LINEAR   z = A x                     (one read of A)
 *   PT_ADJOINT  g = A^H v, v given in `z`   (one read of A)
 *
 * and, without A, pt_map_pass: v_i = phi(c z_i, q_i, w_i) for a given z (B x m, in `z`) into `g`, with
 * |c z_i|^2, the weights, sum_i w_i l_i (in `value`) and the amplitude residual in one pass over the measurements:
 * the pointwise half of a gradient evaluation for an operator without a stored A (FFT-based ones),
 * where torch would make ten passes of its own. With rescale_z it also overwrites z by r = c z.
 *
 * and, for a bank of k rows Z (L-BFGS's ring of pairs, phasetorch/optim/lbfgs.py), in one read of it:
 *   pt_rows_dots  out[b][i][j] = sum_d Z_b[i][d] V_j,b[d]  (c <= 4 vectors, each its own tensor; in double)
 *   pt_rows_comb  q_b[d] = sgn (gamma_b g_b[d] + sum_i coef_b[i] Z_b[i][d])  (in REAL, i in order; with cplx
 *                 the rows, g and q are interleaved complex and coef_b[i] complex: a complex combination)
 * where torch's batched matrix products read such tall, skinny operands at a third of the memory speed.
 *
 * The rows are split into a fixed number of chunks (a function of the sizes only, never of the thread
 * count); OpenMP threads take chunks dynamically (a thread descheduled on a busy machine does not hold
 * the others up), each chunk accumulates its part of g and of the values in its own buffer, and the
 * buffers are summed in chunk order: results are bit-reproducible whatever the number of threads. Complex arithmetic is reduced to real dot products and axpys on the interleaved rows:
 *   Re(a.x) = sum_k a[k] xc[k], xc = (xr, -xi, ...);  Im(a.x) = sum_k a[k] xs[k], xs = (xi, xr, ...)
 *   conj(a) v accumulates H += vr a and G += vi a; finally g_re = H_re + G_im, g_im = G_re - H_im.
 *
 * The pointwise maps (v = phi(r), r = c z) mirror phasetorch/losses.py:
 *   PT_MAP_SCALE      v = q r (q = 1 when absent), no value
 *   PT_MAP_INTENSITY  v = (|r|^2 - q) r,        l = (|r|^2 - q)^2 / 4          (q = y)
 *   PT_MAP_AMPLITUDE  v = r - q sgn(r),          l = (|r| - q)^2 / 2            (q = psi)
 *   PT_MAP_POISSON    v = (2 - 2 q / |r|^2) r,   l = |r|^2 - q log max(|r|^2, tiny)   (q = y+)
 *   PT_MAP_TAF        amplitude with w = 1{|r| (1 + p0) >= q}
 *   PT_MAP_RAF        amplitude with w = |r| / (|r| + p1 q)  (1 when the denominator is 0)
 * Fixed weights (w != NULL) replace the map's own; with twf_par (PT_FUSED, Poisson) the pass forms TWF's weights
 * (pt_twf_w) from each |r|^2 and applies them as fixed ones (pt_twf_eval).
 */
#ifndef PT_BODY

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <omp.h>
#ifdef __AVX512F__
#include <immintrin.h>
#endif

#define PT_FUSED 0
#define PT_LINEAR 1
#define PT_ADJOINT 2

#define PT_MAP_SCALE 0
#define PT_MAP_INTENSITY 1
#define PT_MAP_AMPLITUDE 2
#define PT_MAP_POISSON 3
#define PT_MAP_TAF 4
#define PT_MAP_RAF 5

#ifndef PT_R
#define PT_R 8          /* rows per block: PT_R rows of A are reused from cache by the adjoint */
#endif
/* Software prefetch of the next block of rows: half of its rows during this block's dot products, the
 * other half during its adjoint, so that the reads from memory run through the whole block rather than
 * only its adjoint; into L2 (T1), not L1: a block (8 rows of 8 KiB for complex64 at n = 1024) is larger
 * than L1d, and prefetching it there evicted the rows the adjoint was about to reuse. The block's rows
 * are contiguous, and the prefetches walk them as one linear stream (step s of a phase fetching the
 * phase's lines s c .. s c + c - 1, c = its rows), not column by column across the rows: one sequential
 * stream keeps the memory system busier (10-23% faster passes on the 2-core EPYC than the column-wise
 * order). Measured with scripts/gradient_roofline.py (README, Results > Benchmark); prefetches change
 * no result. */
#ifndef PT_PF_HINT
#define PT_PF_HINT _MM_HINT_T1
#endif
#define PT_ALIGN 64
#define PT_PAGE 4096
#define PT_MAX_CHUNKS 16
#define PT_MAP_CHUNK 8192   /* measurements per work item of pt_map_pass (its value sums: per item, in order) */
#define PT_ROW_ITEM 16384   /* REALs per work item of pt_rows_dots / pt_rows_comb (one sample's columns d0 .. ) */
#define PT_ROW_RUN 1024     /* REALs per run within an item: the runs of the c vectors (or of q) stay in L1 */
/* the rows that follow are prefetched into L2 while a run is summed (the next pair, or row, at the same run;
 * the first at the next run): each run of a row is two 4 KiB pages that the hardware prefetcher would meet
 * cold (measured faster on the 2-core EPYC over a 352 MiB bank; into L1 (T0): no gain) */
#ifndef PT_ROWS_PF
#define PT_ROWS_PF _MM_HINT_T1
#endif
#define PT_ROW_COLS 4       /* most vectors V in one pt_rows_dots call */
#define PT_MAX_BLOCK_B 64   /* most signals in one pt_gd_block call */
#define PT_CHUNK_BYTES (8 << 20)  /* at most this much accumulator memory in all (fewer chunks for large B n) */

typedef struct {
    int64_t m, n, B;
    int32_t is_complex, mode, map, nthreads;
    const void *A;        /* m x n */
    const void *x;        /* B x n (LINEAR, FUSED) */
    void *z;              /* B x m: output z = A x (LINEAR, FUSED); input v (ADJOINT) */
    void *g;              /* B x n: output A^H v (ADJOINT, FUSED) */
    const void *q;        /* per-row data, row b at q + b * q_stride (q_stride 0: shared), or NULL */
    int64_t q_stride;
    const void *w;        /* fixed weights, same layout as q (w_stride), or NULL */
    int64_t w_stride;
    void *a2;             /* output |c z|^2 (B x m, real) or NULL */
    void *w_out;          /* output weights used (B x m, real) or NULL */
    double *value;        /* output sum_i w_i l_i per signal (B) or NULL (then only value_real, if set) */
    double scale, p0, p1, tiny;
    const void *wz;       /* frozen weights (same layout as q, wz_stride) or NULL: then also ... */
    int64_t wz_stride;
    double *value_z;      /* ... output sum_i wz_i l_i per signal (B): a line search's trial value */
    double g_scale;       /* the output g times this (0: as summed), in REAL arithmetic */
    double value_div;     /* with value_real: (REAL)(sum / value_div) per signal there ... */
    void *value_real;     /* ... (B, REAL) or NULL */
    void *value_z_real;   /* the same of value_z (B, REAL) or NULL */
    int32_t rescale_z;    /* pt_map_pass: overwrite z by r = scale z */
    int32_t pad_args;
    double *resid;        /* pt_map_pass: sum_i (|r_i| - psi_i)^2 per signal (B) or NULL; psi_i = q_i for the
                           * amplitude maps, sqrt(max(q_i, 0)) for the intensity and Poisson ones */
    const void *twf_par;  /* PT_FUSED with the Poisson map: TWF's weights in the pass, B x 2 REALs per signal
                           * (max(||x||, tiny), alpha_h K) with p0 = alpha_lb, p1 = alpha_ub (pt_twf_w), or NULL */
} pt_args;


/* ------------------------------------------------------------------ k iterations of gradient descent
 * pt_gd_block runs up to k iterations of phasetorch's driver loop (phasetorch/solve.py, Driver.run)
 * for gradient descent with a fixed-step rule (constant or WF ramp: mu[s] = the rule's mu_t),
 * optionally safeguarded (phasetorch/optim/steps.py, Safeguarded), on the fused pass above:
 *   trial   alpha = gamma mu_t s (safeguarded) or mu_t s (active samples only), x_try = x + alpha (-G)
 *   pass    f(x_try), G(x_try) = g_scale A^H v (+ l2 x_try), |r|^2, own weights (one read of A)
 *   accept  f_cmp <= f + slack |f| (f_cmp: the trial value with the weights frozen at x for the
 *           adaptive losses), retry while gamma > gamma_min, gamma <- min(1, 2 gamma) / gamma/2
 *   driver  divergence (f > f_limit or not finite: frozen, status DIVERGED, iterations t-1), the keep,
 *           the stopping test on the amplitude residual (CONVERGED / STALLED), the log records
 *           (loss, grad_norm, step, norm, residual [, rel_error, overlap, inner]) every log_every.
 * Element-wise arithmetic is that of the torch loop, in the same order and precision (the iterates
 * are bit-identical while the decisions agree); reductions (norms, the frozen trial value, the
 * residual) are summed in double here, in torch in its own order (equal to rounding).
 * It returns after k iterations, after an iteration with a new divergence, or once no sample is
 * active (t_done = the last iteration run, n_rec records written). */
typedef struct {
    pt_args pass;
    int64_t k, t0, log_every, n_rec, t_done, psi_stride;
    int32_t safeguard, adaptive, truth, tol_on, new_div, st_converged, st_stalled, st_diverged;
    const double *mu;
    double g_scale, l2, slack, tol, gamma_min;
    void *x, *G, *f, *res, *W, *gamma;
    const void *scale, *f_limit, *stall, *psi, *den_psi, *xt;
    uint8_t *active, *diverged, *accepted, *retry;
    int8_t *status;
    int64_t *iterations, *div_t;
    void *div_f;
    void *x_try, *z, *g, *a2, *w;
    double *total;
    void *rec;
    int64_t *rec_t;
    double *rec_time;
    void *step;          /* the step column of the last iteration run (B) */
    /* TWF (twf = 1): the truncated Poisson loss, whose weights need K = mean_i |y_i - |r_i|^2|: one fused pass
     * with the previous evaluation's K (none: E2 taken as met) and a correction of the rows the exact K decides
     * otherwise (pt_twf_eval); v (B x m) holds the corrected rows' terms */
    int32_t twf, pad_;
    double alpha_lb, alpha_ub, alpha_h;
    void *v;             /* B x m, the adjoint's input (TWF) */
    /* L-BFGS (lbfgs = 1; phasetorch/optim/lbfgs.py): per sample a ring of `memory` pairs (s, y) with
     * <s, y> (slot j of sample b at ring index (head_b + j) mod memory, newest first), the two-loop
     * recursion for the direction (the torch loop's compact form is the same H), one Armijo trial per
     * iteration (a rejected sample retries the halved step at the next one, max_bt tries) */
    int32_t lbfgs, memory, max_bt, pad2_;
    double c_armijo, shrink, mu0;
    void *S, *Y, *x_prev, *g_prev, *d, *trial;   /* S, Y: memory x B x rl; the others B x rl or B */
    double *sy;                                   /* memory x B */
    int64_t *count, *head, *tries;
    uint8_t *has_prev;
    /* TWF in one read of A (pt_twf_eval): K of each signal's last evaluation (B REALs; < 0 or NaN: none yet),
     * the evaluations that took the one-read route and the rows whose weight its exact K corrected (counts) */
    void *twf_k;
    int64_t twf_fused, twf_flips;
} pt_block;

double pt_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void *pt_alloc(size_t bytes) {
    size_t size = (bytes + PT_ALIGN - 1) / PT_ALIGN * PT_ALIGN;
    return aligned_alloc(PT_ALIGN, size ? size : PT_ALIGN);
}

int pt_abi_version(void) { return 8; }

#define PT_BODY
#define REAL float
#define SFX(name) name##_f32
#ifdef __AVX512F__
#define VL 16
#define VEC __m512
#define MASK __mmask16
#define LOADU _mm512_loadu_ps
#define MLOAD _mm512_maskz_loadu_ps
#define STOREU _mm512_storeu_ps
#define MSTORE _mm512_mask_storeu_ps
#define FMA _mm512_fmadd_ps
#define SET1 _mm512_set1_ps
#define ZERO _mm512_setzero_ps
#define RED _mm512_reduce_add_ps
#define SWAP(v) _mm512_permute_ps((v), 0xB1)
#endif
#include __FILE__
#undef REAL
#undef SFX
#ifdef __AVX512F__
#undef VL
#undef VEC
#undef MASK
#undef LOADU
#undef MLOAD
#undef STOREU
#undef MSTORE
#undef FMA
#undef SET1
#undef ZERO
#undef SWAP
#undef RED
#define VL 8
#define VEC __m512d
#define MASK __mmask8
#define LOADU _mm512_loadu_pd
#define MLOAD _mm512_maskz_loadu_pd
#define STOREU _mm512_storeu_pd
#define MSTORE _mm512_mask_storeu_pd
#define FMA _mm512_fmadd_pd
#define SET1 _mm512_set1_pd
#define ZERO _mm512_setzero_pd
#define RED _mm512_reduce_add_pd
#define SWAP(v) _mm512_permute_pd((v), 0x55)
#endif
#define REAL double
#define SFX(name) name##_f64
#include __FILE__
#undef REAL
#undef SFX

int pt_pass(const pt_args *p, int dtype_bits) {
    if (p->m < 1 || p->n < 1 || p->B < 1) return 1;
    if (dtype_bits == 32) return pt_pass_f32(p);
    if (dtype_bits == 64) return pt_pass_f64(p);
    return 2;
}


int pt_map_pass(const pt_args *p, int dtype_bits) {
    if (p->m < 1 || p->B < 1) return 1;
    if (dtype_bits == 32) return pt_map_pass_f32(p);
    if (dtype_bits == 64) return pt_map_pass_f64(p);
    return 2;
}


int pt_rows_dots(int64_t B, int64_t k, int64_t c, int64_t D, const void *Z, int64_t zb, int64_t zr,
                 const void *const *V, const int64_t *vb, double *out, int nthreads, int dtype_bits) {
    if (B < 1 || k < 1 || c < 1 || c > PT_ROW_COLS || D < 1) return 1;
    if (dtype_bits == 32) return pt_rows_dots_f32(B, k, c, D, Z, zb, zr, V, vb, out, nthreads);
    if (dtype_bits == 64) return pt_rows_dots_f64(B, k, c, D, Z, zb, zr, V, vb, out, nthreads);
    return 2;
}


int pt_rows_comb(int64_t B, int64_t k, int64_t D, const void *Z, int64_t zb, int64_t zr, const double *coef,
                 const double *gamma, const void *g, int64_t gb, void *q, int64_t qb, double sgn, int cplx,
                 int nthreads, int dtype_bits) {
    if (B < 1 || k < 0 || D < 1 || (cplx && (D % 2 || zb % 2 || zr % 2 || gb % 2 || qb % 2))) return 1;
    if (dtype_bits == 32) return pt_rows_comb_f32(B, k, D, Z, zb, zr, coef, gamma, g, gb, q, qb, sgn, cplx, nthreads);
    if (dtype_bits == 64) return pt_rows_comb_f64(B, k, D, Z, zb, zr, coef, gamma, g, gb, q, qb, sgn, cplx, nthreads);
    return 2;
}


int pt_gd_block(pt_block *p, int dtype_bits) {
    if (p->pass.m < 1 || p->pass.n < 1 || p->pass.B < 1 || p->k < 0) return 1;
    if (dtype_bits == 32) return pt_gd_block_f32(p);
    if (dtype_bits == 64) return pt_gd_block_f64(p);
    return 2;
}

/* TWF's one-read evaluation alone (pt_twf_eval on the block's pass arguments: x, z, g (raw A^H v), a2, w_out,
 * value and optionally wz/value_z set there; alpha_lb/ub/h, v and twf_k in the block): the prepared
 * evaluation of phasetorch/losses.py's TruncatedPoissonLoss in the torch loop */
int pt_twf(pt_block *p, int dtype_bits) {
    if (p->pass.m < 1 || p->pass.n < 1 || p->pass.B < 1 || !p->v || !p->pass.a2 || !p->pass.w_out || !p->pass.value)
        return 1;
    if (dtype_bits == 32) return pt_twf_eval_f32(p, &p->pass);
    if (dtype_bits == 64) return pt_twf_eval_f64(p, &p->pass);
    return 2;
}

/* ------------------------------------------------------------------ counter-based Gaussian rows
 * pt_gaussian: rows row0 .. row0+rows-1 of the Gaussian matrix of `seed` (n columns) into `out`
 * (float32 or float64; complex entries interleaved), exactly as phasetorch/philox.py defines them:
 * Philox4x32-10 of counter (j, i lo, i hi, 0) under key (seed lo, seed hi), a 53-bit Box-Muller pair
 * in IEEE basic operations in a fixed order (the library is compiled with -ffp-contract=off, so no
 * multiply-add is fused: the torch version gives the same Philox words and the same variates up to
 * its sqrt, which on the CPU can be one ulp from the correctly rounded one used here). */
#define PT_GCH 256        /* pairs per inner chunk (vectorised loop over them) */

static inline uint64_t pt_bits_of(double d) { uint64_t u; memcpy(&u, &d, 8); return u; }
static inline double pt_double_of(uint64_t u) { double d; memcpy(&d, &u, 8); return d; }

static void pt_gauss_chunk(uint32_t j0, int64_t cnt, uint32_t r_lo, uint32_t r_hi, uint32_t key0, uint32_t key1,
                           double *restrict z0, double *restrict z1) {
    const double LN2_HI = 6.93147180369123816490e-01, LN2_LO = 1.90821492927058770002e-10;
    const double SQRT_HALF = 0.70710678118654757, PI_HALF = 1.5707963267948966;
    double LC[11], SC[9], CC[10];
    for (int k = 0; k < 11; k++) LC[k] = 1.0 / (double)(2 * k + 1);
    {
        double f = 1.0;                         /* k! exactly (k <= 18 < 2^53) */
        double fact[19];
        fact[0] = 1.0;
        for (int k = 1; k < 19; k++) { f *= (double)k; fact[k] = f; }
        for (int k = 0; k < 9; k++) SC[k] = (k % 2 ? -1.0 : 1.0) / fact[2 * k + 1];
        for (int k = 0; k < 10; k++) CC[k] = (k % 2 ? -1.0 : 1.0) / fact[2 * k];
    }
#pragma omp simd
    for (int64_t t = 0; t < cnt; t++) {
        uint32_t c0 = j0 + (uint32_t)t, c1 = r_lo, c2 = r_hi, c3 = 0, k0 = key0, k1 = key1;
#pragma GCC unroll 10
        for (int rd = 0; rd < 10; rd++) {
            const uint64_t p0 = (uint64_t)0xD2511F53u * c0, p1 = (uint64_t)0xCD9E8D57u * c2;
            const uint32_t hi0 = (uint32_t)(p0 >> 32), lo0 = (uint32_t)p0, hi1 = (uint32_t)(p1 >> 32), lo1 = (uint32_t)p1;
            c0 = hi1 ^ c1 ^ k0; c1 = lo1; c2 = hi0 ^ c3 ^ k1; c3 = lo0;
            k0 += 0x9E3779B9u; k1 += 0xBB67AE85u;
        }
        const uint64_t a = ((uint64_t)c0 << 21) | (c1 >> 11);
        const int64_t b = (int64_t)((((uint64_t)c2 << 21) | (c3 >> 11)));
        /* a + 1 = m 2^e, m in [1/2, 1) (frexp by the exponent field; a + 1 <= 2^53 is exact in double) */
        const uint64_t bits = pt_bits_of((double)(int64_t)(a + 1));
        const int64_t e = (int64_t)((bits >> 52) & 0x7FF) - 1022;
        double m = pt_double_of((bits & 0x800FFFFFFFFFFFFFull) | 0x3FE0000000000000ull);
        const int low = m < SQRT_HALF;
        m = low ? m + m : m;
        const double E = (double)(e - low - 53);
        const double s = (m - 1.0) / (m + 1.0), s2 = s * s;
        double pl = LC[10];
#pragma GCC unroll 10
        for (int k = 9; k >= 0; k--) pl = pl * s2 + LC[k];
        const double log_u = E * LN2_HI + (E * LN2_LO + (s + s) * pl);
        const double rad = sqrt(-2.0 * log_u);
        const int64_t q = (b + ((int64_t)1 << 50)) >> 51;
        const double alpha = (double)(b - (q << 51)) * 4.4408920985006262e-16 * PI_HALF;   /* 2^-51 */
        const double a2 = alpha * alpha;
        double ps = SC[8], pc = CC[9];
#pragma GCC unroll 8
        for (int k = 7; k >= 0; k--) ps = ps * a2 + SC[k];
#pragma GCC unroll 9
        for (int k = 8; k >= 0; k--) pc = pc * a2 + CC[k];
        const double sa = alpha * ps, ca = pc;
        const int qq = (int)(q & 3);
        const double sin_t = qq == 0 ? sa : (qq == 1 ? ca : (qq == 2 ? -sa : -ca));
        const double cos_t = qq == 0 ? ca : (qq == 1 ? -sa : (qq == 2 ? -ca : sa));
        z0[t] = rad * cos_t;
        z1[t] = rad * sin_t;
    }
}

int pt_gaussian(uint64_t seed, int64_t row0, int64_t rows, int64_t n, int32_t is_complex, int32_t bits,
                void *out, int32_t nthreads) {
    if (rows < 0 || n < 1 || row0 < 0 || (bits != 32 && bits != 64)) return 1;
    const int64_t pairs = is_complex ? n : (n + 1) / 2;
    if (pairs > 0xFFFFFFFFll) return 3;
    const uint32_t key0 = (uint32_t)seed, key1 = (uint32_t)(seed >> 32);
    const double SQRT_HALF = 0.70710678118654757;
    const int64_t per_row = is_complex ? 2 * n : n;
    const int64_t nchunks = (pairs + PT_GCH - 1) / PT_GCH;
#pragma omp parallel for num_threads(nthreads > 0 ? nthreads : 1) schedule(static)
    for (int64_t w = 0; w < rows * nchunks; w++) {
        const int64_t i = w / nchunks, c = w % nchunks;
        const uint64_t r = (uint64_t)(row0 + i);
        const int64_t j0 = c * PT_GCH, cnt = (pairs - j0 < PT_GCH) ? pairs - j0 : PT_GCH;
        double z0[PT_GCH], z1[PT_GCH];
        pt_gauss_chunk((uint32_t)j0, cnt, (uint32_t)r, (uint32_t)(r >> 32), key0, key1, z0, z1);
        if (bits == 64) {
            double *o = (double *)out + i * per_row;
            if (is_complex) {
                for (int64_t t = 0; t < cnt; t++) { o[2 * (j0 + t)] = z0[t] * SQRT_HALF; o[2 * (j0 + t) + 1] = z1[t] * SQRT_HALF; }
            } else {
                for (int64_t t = 0; t < cnt; t++) {
                    o[2 * (j0 + t)] = z0[t];
                    if (2 * (j0 + t) + 1 < n) o[2 * (j0 + t) + 1] = z1[t];
                }
            }
        } else {
            float *o = (float *)out + i * per_row;
            if (is_complex) {
                for (int64_t t = 0; t < cnt; t++) {
                    o[2 * (j0 + t)] = (float)(z0[t] * SQRT_HALF); o[2 * (j0 + t) + 1] = (float)(z1[t] * SQRT_HALF);
                }
            } else {
                for (int64_t t = 0; t < cnt; t++) {
                    o[2 * (j0 + t)] = (float)z0[t];
                    if (2 * (j0 + t) + 1 < n) o[2 * (j0 + t) + 1] = (float)z1[t];
                }
            }
        }
    }
    return 0;
}

#else  /* ===================================================================== body, per REAL type */

#ifdef __AVX512F__
/* step k / VL of the linear prefetch of rows r0..r1-1 of the next block (next = its first row, NULL =
 * none): the (r1 - r0) lines that follow the previous step's in memory */
static inline void SFX(pt_prefetch)(const REAL *next, int64_t rl, int64_t k, int r0, int r1) {
    if (!next) return;
    const REAL *base = next + r0 * rl + k * (r1 - r0);
#pragma GCC unroll 8
    for (int r = 0; r < r1 - r0; r++) _mm_prefetch((const char *)(base + r * VL), PT_PF_HINT);
}
#endif

/* z_r = a_r . x for the PT_R rows a[r] (complex: zr = a.xc, zi = a.xs on the interleaved rows);
 * prefetches rows 0..pf1-1 of the next block */
static inline void SFX(pt_dots)(const REAL *const *a, int64_t rl, const REAL *u, const REAL *s, int cplx,
                                REAL *zr, REAL *zi, const REAL *next, int pf1) {
#ifdef __AVX512F__
    VEC cr[PT_R], ci[PT_R];
    int64_t k = 0;
#pragma GCC unroll 8
    for (int r = 0; r < PT_R; r++) { cr[r] = ZERO(); ci[r] = ZERO(); }
    if (cplx) {
        for (; k + VL <= rl; k += VL) {
            const VEC xu = LOADU(u + k), xs = LOADU(s + k);
            SFX(pt_prefetch)(next, rl, k, 0, pf1);
#pragma GCC unroll 8
            for (int r = 0; r < PT_R; r++) {
                const VEC av = LOADU(a[r] + k);
                cr[r] = FMA(av, xu, cr[r]);
                ci[r] = FMA(av, xs, ci[r]);
            }
        }
        if (k < rl) {
            const MASK mk = (MASK)((1u << (rl - k)) - 1);
            const VEC xu = MLOAD(mk, u + k), xs = MLOAD(mk, s + k);
#pragma GCC unroll 8
            for (int r = 0; r < PT_R; r++) {
                const VEC av = MLOAD(mk, a[r] + k);
                cr[r] = FMA(av, xu, cr[r]);
                ci[r] = FMA(av, xs, ci[r]);
            }
        }
#pragma GCC unroll 8
        for (int r = 0; r < PT_R; r++) { zr[r] = RED(cr[r]); zi[r] = RED(ci[r]); }
    } else {
        /* two accumulators per row: the FMA latency is hidden with PT_R rows in flight */
        for (; k + VL <= rl; k += VL) {
            const VEC xu = LOADU(u + k);
            SFX(pt_prefetch)(next, rl, k, 0, pf1);
#pragma GCC unroll 8
            for (int r = 0; r < PT_R; r++) cr[r] = FMA(LOADU(a[r] + k), xu, cr[r]);
        }
        if (k < rl) {
            const MASK mk = (MASK)((1u << (rl - k)) - 1);
            const VEC xu = MLOAD(mk, u + k);
#pragma GCC unroll 8
            for (int r = 0; r < PT_R; r++) cr[r] = FMA(MLOAD(mk, a[r] + k), xu, cr[r]);
        }
#pragma GCC unroll 8
        for (int r = 0; r < PT_R; r++) { zr[r] = RED(cr[r]); zi[r] = 0; }
    }
#else
    (void)next; (void)pf1;
    for (int r = 0; r < PT_R; r++) {
        const REAL *ar = a[r];
        REAL s0 = 0, s1 = 0;
        if (cplx) {
#pragma omp simd reduction(+ : s0, s1)
            for (int64_t k = 0; k < rl; k++) { s0 += ar[k] * u[k]; s1 += ar[k] * s[k]; }
        } else {
#pragma omp simd reduction(+ : s0)
            for (int64_t k = 0; k < rl; k++) s0 += ar[k] * u[k];
        }
        zr[r] = s0; zi[r] = s1;
    }
#endif
}

/* H += sum_r vr[r] a[r] (and G += sum_r vi[r] a[r] when complex); prefetches rows pf0.. of the next block */
static inline void SFX(pt_axpy)(const REAL *const *a, int64_t rl, const REAL *vr, const REAL *vi, int cplx,
                                REAL *H, REAL *G, const REAL *next, int pf0) {
#ifdef __AVX512F__
    VEC br[PT_R], bi[PT_R];
    int64_t k = 0;
#pragma GCC unroll 8
    for (int r = 0; r < PT_R; r++) { br[r] = SET1(vr[r]); bi[r] = SET1(vi[r]); }
    if (cplx) {
        for (; k + VL <= rl; k += VL) {
            VEC h = LOADU(H + k), g = LOADU(G + k);
            SFX(pt_prefetch)(next, rl, k, pf0, PT_R);     /* while this block is reused from cache */
#pragma GCC unroll 8
            for (int r = 0; r < PT_R; r++) {
                const VEC av = LOADU(a[r] + k);
                h = FMA(av, br[r], h);
                g = FMA(av, bi[r], g);
            }
            STOREU(H + k, h);
            STOREU(G + k, g);
        }
        if (k < rl) {
            const MASK mk = (MASK)((1u << (rl - k)) - 1);
            VEC h = MLOAD(mk, H + k), g = MLOAD(mk, G + k);
#pragma GCC unroll 8
            for (int r = 0; r < PT_R; r++) {
                const VEC av = MLOAD(mk, a[r] + k);
                h = FMA(av, br[r], h);
                g = FMA(av, bi[r], g);
            }
            MSTORE(H + k, mk, h);
            MSTORE(G + k, mk, g);
        }
    } else {
        for (; k + VL <= rl; k += VL) {
            VEC h = LOADU(H + k);
            SFX(pt_prefetch)(next, rl, k, pf0, PT_R);
#pragma GCC unroll 8
            for (int r = 0; r < PT_R; r++) h = FMA(LOADU(a[r] + k), br[r], h);
            STOREU(H + k, h);
        }
        if (k < rl) {
            const MASK mk = (MASK)((1u << (rl - k)) - 1);
            VEC h = MLOAD(mk, H + k);
#pragma GCC unroll 8
            for (int r = 0; r < PT_R; r++) h = FMA(MLOAD(mk, a[r] + k), br[r], h);
            MSTORE(H + k, mk, h);
        }
    }
#else
    (void)next; (void)pf0;
#pragma omp simd
    for (int64_t k = 0; k < rl; k++) {
        REAL h = H[k];
        for (int r = 0; r < PT_R; r++) h += vr[r] * a[r][k];
        H[k] = h;
    }
    if (cplx) {
#pragma omp simd
        for (int64_t k = 0; k < rl; k++) {
            REAL g = G[k];
            for (int r = 0; r < PT_R; r++) g += vi[r] * a[r][k];
            G[k] = g;
        }
    }
#endif
}

/* v = w phi(r) for one row of one signal (r = rr + i ri; ri = 0 for real data); returns w l in *ell */
static inline void SFX(pt_map)(const pt_args *p, int cplx, REAL rr, REAL ri, REAL q, int has_q, const REAL *wfix,
                               REAL *vr, REAL *vi, REAL *a2_out, REAL *w_used, double *ell, double *ell_raw) {
    REAL a2 = cplx ? rr * rr + ri * ri : rr * rr;
    REAL w = 1, gr, gi;
    double l = 0;
    *a2_out = a2;
    switch (p->map) {
    case PT_MAP_INTENSITY: {
        REAL dev = a2 - q;
        gr = dev * rr; gi = dev * ri;
        l = 0.25 * (double)dev * (double)dev;
        break;
    }
    case PT_MAP_AMPLITUDE:
    case PT_MAP_TAF:
    case PT_MAP_RAF: {
        REAL a, sr, si;
        if (cplx) {
            a = sqrt(a2);
            REAL inv = a > 0 ? (REAL)1 / a : (REAL)0;
            sr = rr * inv; si = ri * inv;
        } else {
            a = fabs(rr);
            sr = (REAL)((rr > 0) - (rr < 0)); si = 0;
        }
        gr = rr - q * sr; gi = ri - q * si;
        REAL d = a - q;
        l = 0.5 * (double)d * (double)d;
        if (p->map == PT_MAP_TAF) {
            w = a * (REAL)(1 + p->p0) >= q ? (REAL)1 : (REAL)0;
        } else if (p->map == PT_MAP_RAF) {
            REAL den = a + (REAL)p->p1 * q;
            w = den > 0 ? a / den : (REAL)1;
        }
        break;
    }
    case PT_MAP_POISSON: {
        REAL tiny = (REAL)p->tiny;
        REAL inv = a2 >= tiny ? (REAL)1 / a2 : (REAL)0;
        REAL f = 2 - 2 * q * inv;
        gr = f * rr; gi = f * ri;
        l = (double)(a2 - q * (REAL)log(a2 > tiny ? a2 : tiny));
        break;
    }
    default: {            /* PT_MAP_SCALE */
        REAL s = has_q ? q : (REAL)1;
        gr = s * rr; gi = s * ri;
        break;
    }
    }
    *ell_raw = l;
    if (wfix) w = *wfix;
    if (wfix || p->map == PT_MAP_TAF || p->map == PT_MAP_RAF) {
        gr = w * gr; gi = w * gi;
        l = (double)(w * (REAL)l);
    }
    *vr = gr; *vi = gi; *w_used = w; *ell = l;
}

/* One item of pt_map_pass for complex z without fixed weights, for the maps without a logarithm: the
 * arithmetic of pt_map (the same operations in the same order and precision, so the same bits) in a
 * loop without calls or a switch, which the compiler vectorises (sqrt and division included); the
 * value and residual sums run over the vector lanes, in an order fixed by the sizes. */
static inline __attribute__((always_inline)) void SFX(pt_map_run)(const pt_args *p, const int map, const int rescale,
        REAL *restrict Z, REAL *restrict V, const REAL *restrict Q, REAL *restrict A2, REAL *restrict WO,
        int64_t o0, int64_t len, double *s_out, double *sr_out) {
    const REAL c = (REAL)p->scale, taf = (REAL)(1 + p->p0), raf = (REAL)p->p1;
    double s = 0, sr = 0;
#pragma omp simd reduction(+ : s, sr)
    for (int64_t t = 0; t < len; t++) {
        const int64_t o = o0 + t;
        const REAL rr = c * Z[2 * o], ri = c * Z[2 * o + 1];
        const REAL q = Q ? Q[t] : (REAL)1;
        const REAL a2 = rr * rr + ri * ri;
        REAL gr, gi;
        double l = 0;
        if (map == PT_MAP_SCALE) {
            gr = q * rr; gi = q * ri;
        } else if (map == PT_MAP_INTENSITY) {
            const REAL dev = a2 - q;
            gr = dev * rr; gi = dev * ri;
            l = 0.25 * (double)dev * (double)dev;
            const REAL e = (REAL)sqrt(a2) - (REAL)sqrt(q > 0 ? q : (REAL)0);
            sr += (double)(e * e);
        } else {                                   /* the amplitude maps */
            const REAL a = sqrt(a2);
            const REAL inv = a > 0 ? (REAL)1 / a : (REAL)0;
            gr = rr - q * (rr * inv); gi = ri - q * (ri * inv);
            const REAL d = a - q;
            l = 0.5 * (double)d * (double)d;
            sr += (double)(d * d);
            if (map == PT_MAP_TAF || map == PT_MAP_RAF) {
                const REAL den = a + raf * q;
                const REAL w = map == PT_MAP_TAF ? (a * taf >= q ? (REAL)1 : (REAL)0) : (den > 0 ? a / den : (REAL)1);
                gr = w * gr; gi = w * gi;
                l = (double)(w * (REAL)l);
                WO[o] = w;
            }
        }
        V[2 * o] = gr; V[2 * o + 1] = gi;
        if (rescale) { Z[2 * o] = rr; Z[2 * o + 1] = ri; }
        A2[o] = a2;
        s += l;
    }
    *s_out = s; *sr_out = sr;
}

/* v = phi(c z) over the B x m measurements of z (no A): the work is split into items of PT_MAP_CHUNK
 * measurements of one signal (a function of the sizes only), the values are summed per item in double
 * and the items in order, so the results do not depend on the thread count. */
static int SFX(pt_map_pass)(const pt_args *p) {
    const int64_t m = p->m, B = p->B;
    const int cplx = p->is_complex;
    REAL *Z = (REAL *)p->z;
    REAL *V = (REAL *)p->g;
    const REAL *Q = (const REAL *)p->q, *W = (const REAL *)p->w;
    const int values = p->value != NULL;
    REAL *A2 = (REAL *)p->a2, *WO = (REAL *)p->w_out;
    const REAL c = (REAL)p->scale;
    const int rescale = p->rescale_z;
    const int64_t per = (m + PT_MAP_CHUNK - 1) / PT_MAP_CHUNK, items = B * per;
    double *vals = NULL;
    const int resid = p->resid != NULL && Q != NULL && p->map != PT_MAP_SCALE;
    const int psi_is_q = p->map == PT_MAP_AMPLITUDE || p->map == PT_MAP_TAF || p->map == PT_MAP_RAF;
    const int weighted = p->map == PT_MAP_TAF || p->map == PT_MAP_RAF;
    /* the vectorised items (pt_map_run): complex, no fixed weights, |r|^2 wanted, the weights exactly for
     * the weighted maps, data for the maps that need them; Poisson (a logarithm) keeps the loop below */
    const int fast = cplx && !W && A2 && (WO != NULL) == weighted && p->map != PT_MAP_POISSON
                     && (Q != NULL || p->map == PT_MAP_SCALE) && p->map >= PT_MAP_SCALE && p->map <= PT_MAP_RAF;
    if (values || resid) {
        vals = (double *)calloc((size_t)(2 * items), sizeof(double));
        if (!vals) return 3;
    }
    int nt = p->nthreads < 1 ? 1 : p->nthreads;
    if ((int64_t)nt > items) nt = (int)items;
#pragma omp parallel for num_threads(nt) schedule(dynamic, 4)
    for (int64_t it = 0; it < items; it++) {
        const int64_t b = it / per, i0 = (it % per) * PT_MAP_CHUNK;
        const int64_t i1 = i0 + PT_MAP_CHUNK < m ? i0 + PT_MAP_CHUNK : m;
        double s = 0, sr = 0;
        if (fast) {
            const REAL *Qb = Q ? Q + b * p->q_stride + i0 : NULL;
            const int64_t o0 = b * m + i0, len = i1 - i0;
#define PT_RUN(MAP) (rescale ? SFX(pt_map_run)(p, MAP, 1, Z, V, Qb, A2, WO, o0, len, &s, &sr) \
                             : SFX(pt_map_run)(p, MAP, 0, Z, V, Qb, A2, WO, o0, len, &s, &sr))
            switch (p->map) {
            case PT_MAP_SCALE: PT_RUN(PT_MAP_SCALE); break;
            case PT_MAP_INTENSITY: PT_RUN(PT_MAP_INTENSITY); break;
            case PT_MAP_AMPLITUDE: PT_RUN(PT_MAP_AMPLITUDE); break;
            case PT_MAP_TAF: PT_RUN(PT_MAP_TAF); break;
            default: PT_RUN(PT_MAP_RAF); break;
            }
#undef PT_RUN
            if (vals) { vals[it] = s; vals[items + it] = sr; }
            continue;
        }
        for (int64_t i = i0; i < i1; i++) {
            const int64_t o = b * m + i;
            const REAL rr = c * (cplx ? Z[2 * o] : Z[o]), ri = cplx ? c * Z[2 * o + 1] : (REAL)0;
            const REAL q = Q ? Q[b * p->q_stride + i] : (REAL)0;
            const REAL *wf = W ? W + b * p->w_stride + i : NULL;
            REAL vr, vi, a2v, wu;
            double ell, raw;
            SFX(pt_map)(p, cplx, rr, ri, q, Q != NULL, wf, &vr, &vi, &a2v, &wu, &ell, &raw);
            if (cplx) { V[2 * o] = vr; V[2 * o + 1] = vi; } else V[o] = vr;
            if (rescale) { if (cplx) { Z[2 * o] = rr; Z[2 * o + 1] = ri; } else Z[o] = rr; }
            if (A2) A2[o] = a2v;
            if (WO) WO[o] = wu;
            s += ell;
            if (resid) {
                const REAL psi = psi_is_q ? q : (REAL)sqrt(q > 0 ? q : (REAL)0);
                const REAL e = (REAL)sqrt(a2v) - psi;
                sr += (double)(e * e);
            }
        }
        if (vals) { vals[it] = s; vals[items + it] = sr; }
    }
    if (resid) {
        for (int64_t b = 0; b < B; b++) {
            double t = 0;
            for (int64_t k = 0; k < per; k++) t += vals[items + b * per + k];
            p->resid[b] = t;
        }
    }
    if (values) {
        for (int64_t b = 0; b < B; b++) {
            double t = 0;
            for (int64_t k = 0; k < per; k++) t += vals[b * per + k];
            p->value[b] = t;
        }
    }
    free(vals);
    return 0;
}

/* ------------------------------------------------------------------ products with a bank of rows
 * The columns of a sample are split into items of PT_ROW_ITEM REALs (a function of the sizes only) and
 * the items into runs of PT_ROW_RUN. pt_rows_dots sums each run of each (row, vector) in REAL vector
 * lanes, adds it to its item's double sum, and sums the items in order; pt_rows_comb forms each element
 * as gamma g + coef_0 Z_0 + coef_1 Z_1 + ... in that order. Neither depends on the thread count. */

/* o0[j] += <z0, v_j>, o1[j] += <z1, v_j> over len REALs (z1 NULL: one row), for the C vectors v_j */
static inline __attribute__((always_inline)) void SFX(pt_run_dots)(const REAL *z0, const REAL *z1,
        const REAL *const *v, const int C, int64_t len, double *o0, double *o1, const REAL *n0, const REAL *n1) {
#ifdef __AVX512F__
    VEC a0[PT_ROW_COLS], a1[PT_ROW_COLS];
    for (int j = 0; j < C; j++) { a0[j] = ZERO(); a1[j] = ZERO(); }
    int64_t d = 0;
    if (z1) {
        for (; d + VL <= len; d += VL) {
            _mm_prefetch((const char *)(n0 + d), PT_ROWS_PF);
            _mm_prefetch((const char *)(n1 + d), PT_ROWS_PF);
            const VEC x0 = LOADU(z0 + d), x1 = LOADU(z1 + d);
            for (int j = 0; j < C; j++) {
                const VEC w = LOADU(v[j] + d);
                a0[j] = FMA(x0, w, a0[j]);
                a1[j] = FMA(x1, w, a1[j]);
            }
        }
        if (d < len) {
            const MASK mk = (MASK)((1u << (len - d)) - 1);
            const VEC x0 = MLOAD(mk, z0 + d), x1 = MLOAD(mk, z1 + d);
            for (int j = 0; j < C; j++) {
                const VEC w = MLOAD(mk, v[j] + d);
                a0[j] = FMA(x0, w, a0[j]);
                a1[j] = FMA(x1, w, a1[j]);
            }
        }
        for (int j = 0; j < C; j++) { o0[j] += (double)RED(a0[j]); o1[j] += (double)RED(a1[j]); }
    } else {
        for (; d + VL <= len; d += VL) {
            const VEC x0 = LOADU(z0 + d);
            for (int j = 0; j < C; j++) a0[j] = FMA(x0, LOADU(v[j] + d), a0[j]);
        }
        if (d < len) {
            const MASK mk = (MASK)((1u << (len - d)) - 1);
            const VEC x0 = MLOAD(mk, z0 + d);
            for (int j = 0; j < C; j++) a0[j] = FMA(x0, MLOAD(mk, v[j] + d), a0[j]);
        }
        for (int j = 0; j < C; j++) o0[j] += (double)RED(a0[j]);
    }
#else
    (void)n0; (void)n1;
    for (int j = 0; j < C; j++) {
        const REAL *w = v[j];
        REAL s0 = 0, s1 = 0;
        if (z1) {
#pragma omp simd reduction(+ : s0, s1)
            for (int64_t d = 0; d < len; d++) { s0 += z0[d] * w[d]; s1 += z1[d] * w[d]; }
            o1[j] += (double)s1;
        } else {
#pragma omp simd reduction(+ : s0)
            for (int64_t d = 0; d < len; d++) s0 += z0[d] * w[d];
        }
        o0[j] += (double)s0;
    }
#endif
}

/* one item: the k rows' sums with the C vectors over columns d0 .. d1-1 into part (k x C, zeroed) */
static inline __attribute__((always_inline)) void SFX(pt_item_dots)(const REAL *Zb, int64_t zr, int64_t k,
        const REAL *const *Vb, const int C, int64_t d0, int64_t d1, double *part) {
    for (int64_t r0 = d0; r0 < d1; r0 += PT_ROW_RUN) {
        const int64_t len = d1 - r0 < PT_ROW_RUN ? d1 - r0 : PT_ROW_RUN;
        const REAL *v[PT_ROW_COLS];
        for (int j = 0; j < C; j++) v[j] = Vb[j] + r0;
        int64_t i = 0;
        for (; i + 2 <= k; i += 2) {
            /* the rows that follow (the next pair at this run; the first pair at the next run) */
            const REAL *n0 = i + 3 < k ? Zb + (i + 2) * zr + r0 : Zb + r0 + len;
            const REAL *n1 = i + 3 < k ? Zb + (i + 3) * zr + r0 : Zb + zr + r0 + len;
            SFX(pt_run_dots)(Zb + i * zr + r0, Zb + (i + 1) * zr + r0, v, C, len, part + i * C, part + (i + 1) * C,
                             n0, n1);
        }
        if (i < k) SFX(pt_run_dots)(Zb + i * zr + r0, NULL, v, C, len, part + i * C, NULL, NULL, NULL);
    }
}

static int SFX(pt_rows_dots)(int64_t B, int64_t k, int64_t c, int64_t D, const void *Zv, int64_t zb, int64_t zr,
                             const void *const *V, const int64_t *vb, double *out, int nthreads) {
    const REAL *Z = (const REAL *)Zv;
    const int64_t per = (D + PT_ROW_ITEM - 1) / PT_ROW_ITEM, items = B * per, kc = k * c;
    double *part = (double *)calloc((size_t)(items * kc), sizeof(double));
    if (!part) return 3;
    int nt = nthreads < 1 ? 1 : nthreads;
    if ((int64_t)nt > items) nt = (int)items;
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1)
    for (int64_t it = 0; it < items; it++) {
        const int64_t b = it / per, d0 = (it % per) * PT_ROW_ITEM;
        const int64_t d1 = d0 + PT_ROW_ITEM < D ? d0 + PT_ROW_ITEM : D;
        const REAL *Zb = Z + b * zb, *Vb[PT_ROW_COLS];
        for (int64_t j = 0; j < c; j++) Vb[j] = (const REAL *)V[j] + b * vb[j];
        double *pp = part + it * kc;
        switch (c) {                        /* a constant C: the accumulators stay in registers */
        case 1: SFX(pt_item_dots)(Zb, zr, k, Vb, 1, d0, d1, pp); break;
        case 2: SFX(pt_item_dots)(Zb, zr, k, Vb, 2, d0, d1, pp); break;
        case 3: SFX(pt_item_dots)(Zb, zr, k, Vb, 3, d0, d1, pp); break;
        default: SFX(pt_item_dots)(Zb, zr, k, Vb, 4, d0, d1, pp); break;
        }
    }
    for (int64_t b = 0; b < B; b++)
        for (int64_t e = 0; e < kc; e++) {
            double t = 0;
            for (int64_t s = 0; s < per; s++) t += part[(b * per + s) * kc + e];
            out[b * kc + e] = t;
        }
    free(part);
    return 0;
}

static int SFX(pt_rows_comb)(int64_t B, int64_t k, int64_t D, const void *Zv, int64_t zb, int64_t zr,
                             const double *coef, const double *gamma, const void *gv, int64_t gb, void *qv,
                             int64_t qb, double sgn, int cplx, int nthreads) {
    const REAL *Z = (const REAL *)Zv, *G = (const REAL *)gv;
    REAL *Q = (REAL *)qv;
    const int64_t per = (D + PT_ROW_ITEM - 1) / PT_ROW_ITEM, items = B * per;
    int nt = nthreads < 1 ? 1 : nthreads;
    if ((int64_t)nt > items) nt = (int)items;
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1)
    for (int64_t it = 0; it < items; it++) {
        const int64_t b = it / per, d0 = (it % per) * PT_ROW_ITEM;
        const int64_t d1 = d0 + PT_ROW_ITEM < D ? d0 + PT_ROW_ITEM : D;
        const REAL *Zb = Z + b * zb, *gp = G + b * gb;
        REAL *q = Q + b * qb;
        const REAL gm = (REAL)gamma[b], sg = (REAL)sgn;
        for (int64_t r0 = d0; r0 < d1; r0 += PT_ROW_RUN) {    /* the run of q stays in L1 over the k rows */
            const int64_t r1 = d1 - r0 < PT_ROW_RUN ? d1 : r0 + PT_ROW_RUN;
#pragma omp simd
            for (int64_t d = r0; d < r1; d++) q[d] = gm * gp[d];
            if (cplx) for (int64_t i = 0; i < k; i++) {   /* q += (cr + i ci)(zr + i zi) on (re, im) pairs */
                const REAL cr = (REAL)coef[2 * (b * k + i)], ci = (REAL)coef[2 * (b * k + i) + 1], *zi = Zb + i * zr;
                const REAL *nx = i + 1 < k ? zi + zr : Zb + (r1 - r0);
#ifdef __AVX512F__
                REAL pat[VL];                               /* (-ci, ci, -ci, ...): times the swapped pairs */
                for (int e = 0; e < VL; e++) pat[e] = (e & 1) ? ci : -ci;
                const VEC crv = SET1(cr), civ = LOADU(pat);
                int64_t d = r0;
                for (; d + VL <= r1; d += VL) {
                    _mm_prefetch((const char *)(nx + d), PT_ROWS_PF);
                    const VEC zv = LOADU(zi + d);
                    STOREU(q + d, FMA(crv, zv, FMA(civ, SWAP(zv), LOADU(q + d))));
                }
                if (d < r1) {
                    const MASK mk = (MASK)((1u << (r1 - d)) - 1);
                    const VEC zv = MLOAD(mk, zi + d);
                    MSTORE(q + d, mk, FMA(crv, zv, FMA(civ, SWAP(zv), MLOAD(mk, q + d))));
                }
#else
                (void)nx;
                for (int64_t d = r0; d < r1; d += 2) {
                    const REAL a = zi[d], c_ = zi[d + 1];
                    q[d] = q[d] + (-ci) * c_;
                    q[d] = q[d] + cr * a;
                    q[d + 1] = q[d + 1] + ci * a;
                    q[d + 1] = q[d + 1] + cr * c_;
                }
#endif
            } else for (int64_t i = 0; i < k; i++) {      /* q += c z */
                const REAL ci = (REAL)coef[b * k + i], *zi = Zb + i * zr;
                int64_t d = r0;
#ifdef __AVX512F__
                const VEC cv = SET1(ci);
                const REAL *nx = i + 1 < k ? zi + zr : Zb + (r1 - r0);   /* nx + d: the next row's element */
                for (; d + VL <= r1; d += VL) {
                    _mm_prefetch((const char *)(nx + d), PT_ROWS_PF);
                    STOREU(q + d, FMA(cv, LOADU(zi + d), LOADU(q + d)));
                }
                if (d < r1) {
                    const MASK mk = (MASK)((1u << (r1 - d)) - 1);
                    MSTORE(q + d, mk, FMA(cv, MLOAD(mk, zi + d), MLOAD(mk, q + d)));
                }
#else
                for (; d < r1; d++) q[d] = q[d] + ci * zi[d];
#endif
            }
#pragma omp simd
            for (int64_t d = r0; d < r1; d++) q[d] = sg * q[d];
        }
    }
    return 0;
}

/* REALs to append to `len` REALs so that the next buffer starts `want` bytes past a 4 KiB boundary
 * relative to the start of the current one */
static inline int64_t SFX(pt_gap)(int64_t len, int64_t want) {
    const int64_t bytes = len * (int64_t)sizeof(REAL);
    return (((want - bytes) % PT_PAGE + PT_PAGE) % PT_PAGE) / (int64_t)sizeof(REAL);
}

/* `raw` advanced to the first address `want` bytes past A's position within a 4 KiB page */
static inline REAL *SFX(pt_place)(void *raw, const void *A, int64_t want) {
    const int64_t d = (((int64_t)(uintptr_t)A + want - (int64_t)(uintptr_t)raw) % PT_PAGE + PT_PAGE) % PT_PAGE;
    return (REAL *)((char *)raw + d);
}

/* TWF's weight of one measurement (Chen & Candes 2017, E1 and E2; phasetorch/losses.py, TruncatedPoissonLoss):
 * 1{lb <= |r|/nx <= ub, |q - |r|^2| <= ahK |r|/nx} with nx = max(||x||, tiny), ahK = alpha_h K, from |r|^2 */
static inline REAL SFX(pt_twf_w)(REAL a2, REAL q, REAL nxc, REAL ahK, REAL lb, REAL ub) {
    const REAL ar = (REAL)sqrt(a2), ratio = ar / nxc, dev = (REAL)fabs(q - a2);
    return (ratio >= lb && ratio <= ub && dev <= ahK * ratio) ? (REAL)1 : (REAL)0;
}

static int SFX(pt_pass)(const pt_args *p) {
    const int64_t m = p->m, n = p->n, B = p->B;
    const int cplx = p->is_complex, mode = p->mode;
    const int64_t rl = cplx ? 2 * n : n;               /* REALs per row */
    const REAL *A = (const REAL *)p->A;
    const REAL *X = (const REAL *)p->x;
    REAL *Z = (REAL *)p->z;
    REAL *Gout = (REAL *)p->g;
    const REAL *Q = (const REAL *)p->q, *W = (const REAL *)p->w;
    const int values = p->value || p->value_real;     /* the value sums are wanted (in double, in REAL or both) */
    const REAL *WZ = values && (p->value_z || p->value_z_real) && mode == PT_FUSED ? (const REAL *)p->wz : NULL;
    REAL *A2 = (REAL *)p->a2, *WO = (REAL *)p->w_out;
    const REAL c = (REAL)p->scale;
    const REAL *TP = mode == PT_FUSED && !W ? (const REAL *)p->twf_par : NULL;   /* TWF's weights (pt_twf_w) */
    const REAL tlb = (REAL)p->p0, tub = (REAL)p->p1;
    const int accumulate = mode != PT_LINEAR, forward = mode != PT_ADJOINT;
    const int split = mode == PT_FUSED ? PT_R / 2 : (mode == PT_LINEAR ? PT_R : 0);  /* next block's rows the
                                                       * dot products prefetch (the adjoint: the rest) */
    const int64_t nacc = cplx ? 2 : 1;                 /* accumulators per signal: H (and G) */
    /* L1 placement: where a row of A is a multiple of 4 KiB long (n = 1024, ...), the PT_R rows at one
     * column share an L1 set; x's two forms and the accumulators H, G are placed 1 and 2 KiB past A's
     * position in a page so that the lines reused at every block do not compete with them */
    const int skew = rl * (int64_t)sizeof(REAL) >= PT_PAGE;
    const int64_t gap = skew ? SFX(pt_gap)(rl, 1024) : 0;            /* G = H + rl + gap, s = u + rl + gap */
    const int64_t sig = skew ? (nacc * rl + gap) + SFX(pt_gap)(nacc * rl + gap, 0) : nacc * rl;
    const int64_t xsig = skew ? (2 * rl + gap) + SFX(pt_gap)(2 * rl + gap, 0) : 2 * rl;
    const int64_t per_chunk = accumulate ? B * sig : 0;
    const int64_t blocks = (m + PT_R - 1) / PT_R;
    int64_t chunks = blocks < PT_MAX_CHUNKS ? blocks : PT_MAX_CHUNKS;
    if (accumulate) {
        int64_t fit = PT_CHUNK_BYTES / (per_chunk * (int64_t)sizeof(REAL));
        if (fit < chunks) chunks = fit < 1 ? 1 : fit;
    }
    int nt = p->nthreads < 1 ? 1 : p->nthreads;
    if ((int64_t)nt > chunks) nt = (int)chunks;
    REAL *xa = NULL, *acc = NULL;
    void *xa_raw = NULL, *acc_raw = NULL;
    double *vals = NULL;

    if (forward && cplx) {                             /* xc = (xr, -xi), xs = (xi, xr) per signal */
        xa_raw = pt_alloc((size_t)(B * xsig) * sizeof(REAL) + (skew ? PT_PAGE : 0));
        if (!xa_raw) return 3;
        xa = skew ? SFX(pt_place)(xa_raw, A, 1024) : (REAL *)xa_raw;
        for (int64_t b = 0; b < B; b++) {
            const REAL *xb = X + b * rl;
            REAL *xc = xa + b * xsig, *xs = xc + rl + gap;
            for (int64_t j = 0; j < n; j++) {
                xc[2 * j] = xb[2 * j]; xc[2 * j + 1] = -xb[2 * j + 1];
                xs[2 * j] = xb[2 * j + 1]; xs[2 * j + 1] = xb[2 * j];
            }
        }
    }
    if (accumulate) {
        acc_raw = pt_alloc((size_t)(chunks * per_chunk) * sizeof(REAL) + (skew ? PT_PAGE : 0));
        if (!acc_raw) { free(xa_raw); return 3; }
        acc = skew ? SFX(pt_place)(acc_raw, A, 1024) : (REAL *)acc_raw;
    }
    if (values) {
        vals = (double *)calloc((size_t)((WZ ? 2 : 1) * chunks * B), sizeof(double));
        if (!vals) { free(xa_raw); free(acc_raw); return 3; }
    }

#pragma omp parallel num_threads(nt)
    {
        const int t = omp_get_thread_num(), T = omp_get_num_threads();
#pragma omp for schedule(dynamic, 1)
        for (int64_t ch = 0; ch < chunks; ch++) {
        const int64_t i0 = blocks * ch / chunks * PT_R;
        int64_t i1 = blocks * (ch + 1) / chunks * PT_R;
        if (i1 > m) i1 = m;
        REAL *H = accumulate ? acc + ch * per_chunk : NULL;
        double *val = vals ? vals + ch * B : NULL;
        double *valz = vals && WZ ? vals + (chunks + ch) * B : NULL;
        if (H) memset(H, 0, (size_t)per_chunk * sizeof(REAL));

        for (int64_t i = i0; i < i1; i += PT_R) {
            const int rr = (int)(i1 - i < PT_R ? i1 - i : PT_R);
            const REAL *a[PT_R];
            for (int r = 0; r < PT_R; r++) a[r] = A + (r < rr ? i + r : i) * rl;   /* ghost rows: v = 0 */
            /* the next block of this chunk, prefetched while this one runs: rows 0..split-1 during the
             * dot products (of the first signal), the rest during the adjoint (of the last one) */
            const REAL *following = i + 2 * PT_R <= i1 ? A + (i + PT_R) * rl : NULL;
            for (int64_t b = 0; b < B; b++) {
                REAL vr[PT_R] = {0}, vi[PT_R] = {0};
                if (forward) {
                    REAL zr[PT_R], zi[PT_R];
                    const REAL *u = cplx ? xa + b * xsig : X + b * rl, *s = cplx ? u + rl + gap : NULL;
                    SFX(pt_dots)(a, rl, u, s, cplx, zr, zi, b == 0 ? following : NULL, split);
                    for (int k = 0; k < rr; k++) {
                        const int64_t row = i + k, o = b * m + row;
                        if (cplx) { Z[2 * o] = zr[k]; Z[2 * o + 1] = zi[k]; } else Z[o] = zr[k];
                        if (mode == PT_FUSED) {
                            const REAL q = Q ? Q[b * p->q_stride + row] : (REAL)0;
                            const REAL *wf = W ? W + b * p->w_stride + row : NULL;
                            REAL a2v, wu, wt;
                            double ell, raw;
                            if (TP) {           /* |r|^2 as pt_map forms it, then the weight it applies */
                                const REAL tr = c * zr[k], ti = cplx ? c * zi[k] : (REAL)0;
                                wt = SFX(pt_twf_w)(cplx ? tr * tr + ti * ti : tr * tr, q, TP[2 * b], TP[2 * b + 1], tlb, tub);
                                wf = &wt;
                            }
                            SFX(pt_map)(p, cplx, c * zr[k], c * zi[k], q, Q != NULL, wf, &vr[k], &vi[k], &a2v, &wu, &ell, &raw);
                            if (A2) A2[o] = a2v;
                            if (WO) WO[o] = wu;
                            if (val) val[b] += ell;
                            if (valz) valz[b] += (double)(WZ[b * p->wz_stride + row] * (REAL)raw);
                        }
                    }
                } else {
                    for (int k = 0; k < rr; k++) {
                        const int64_t o = b * m + i + k;
                        if (cplx) { vr[k] = Z[2 * o]; vi[k] = Z[2 * o + 1]; } else vr[k] = Z[o];
                    }
                }
                if (!accumulate) continue;
                REAL *Hb = H + b * sig;
                SFX(pt_axpy)(a, rl, vr, vi, cplx, Hb, cplx ? Hb + rl + gap : NULL, b == B - 1 ? following : NULL, split);
            }
        }
        }   /* chunks (the implicit barrier of the loop precedes the sums below) */

        if (accumulate) {               /* sum the chunk buffers in chunk order, columns split over threads */
            const int64_t c0 = n * t / T, c1 = n * (t + 1) / T;
            const REAL gs = p->g_scale != 0 ? (REAL)p->g_scale : (REAL)1;   /* x 1 is exact */
            for (int64_t b = 0; b < B; b++) {
                REAL *gb = Gout + b * rl;
                for (int64_t j = c0; j < c1; j++) {
                    if (cplx) {
                        REAL re = 0, im = 0;
                        for (int64_t s = 0; s < chunks; s++) {
                            const REAL *Hs = acc + s * per_chunk + b * sig, *Gs = Hs + rl + gap;
                            re += Hs[2 * j] + Gs[2 * j + 1];
                            im += Gs[2 * j] - Hs[2 * j + 1];
                        }
                        gb[2 * j] = re * gs; gb[2 * j + 1] = im * gs;
                    } else {
                        REAL s_ = 0;
                        for (int64_t s = 0; s < chunks; s++) s_ += acc[s * per_chunk + b * sig + j];
                        gb[j] = s_ * gs;
                    }
                }
            }
        }
    }

    if (values) {
        for (int64_t b = 0; b < B; b++) {
            double s = 0;
            for (int64_t ch = 0; ch < chunks; ch++) s += vals[ch * B + b];
            if (p->value) p->value[b] = s;
            if (p->value_real) ((REAL *)p->value_real)[b] = (REAL)(s / p->value_div);
            if (WZ) {
                double sz = 0;
                for (int64_t ch = 0; ch < chunks; ch++) sz += vals[(chunks + ch) * B + b];
                if (p->value_z) p->value_z[b] = sz;
                if (p->value_z_real) ((REAL *)p->value_z_real)[b] = (REAL)(sz / p->value_div);
            }
        }
    }
    free(xa_raw);
    free(acc_raw);
    free(vals);
    return 0;
}


/* sum_j |v_j|^2 over rl REALs, in double */
static inline double SFX(pt_sq)(const REAL *v, int64_t rl) {
    double s = 0;
    for (int64_t j = 0; j < rl; j++) s += (double)v[j] * (double)v[j];
    return s;
}

/* l_i as phasetorch/losses.py computes it from |r|^2: amplitude (a - q)^2 / 2, Poisson a2 - q log max(a2, tiny) */
static inline REAL SFX(pt_ell)(int map, REAL a2, REAL q, REAL tiny) {
    if (map == PT_MAP_POISSON) return a2 - q * (REAL)log(a2 > tiny ? a2 : tiny);
    const REAL d = (REAL)sqrt(a2) - q;
    return (REAL)0.5 * (d * d);
}

/* TWF's evaluation at x_try: z = A x_try, then per sample nx = ||x_try||, K = mean |y - |r|^2|, the weights
 * w = 1{lb <= |r|/nx <= ub, |y - |r|^2| <= (alpha_h K) |r|/nx}, v = w (2 - 2 y inv(|r|^2)) r, sum w l; g = A^H v.
 *
 * K is a mean over all measurements, known only once z is: read naively, A is read twice (z, then g).
 * Here ONE fused pass forms the weights with a guess of K (pt_twf_w in pt_pass): the signal's K of its
 * previous evaluation (twf_k), or, without one (the first evaluation, a non-finite K), E2 taken as met.
 * Then the exact K comes from |r|^2, and the rows whose E2 decision differs under it are corrected: their
 * weight, their term of the value and, by a sparse adjoint over those rows only, their term of g. The
 * weights, |r|^2, z and the value's terms are those of the two-pass evaluation; g (and the value) are
 * summed in another order: equal to rounding. Between iterations K moves little (both sides of E2 scale
 * together as x converges), so few rows flip; at the first evaluation, the rows outside E2. */
static int SFX(pt_twf_eval)(pt_block *p, pt_args *a) {
    const int64_t m = a->m, n = a->n, B = a->B;
    const int cplx = a->is_complex;
    const int64_t rl = cplx ? 2 * n : n;
    const REAL c = (REAL)a->scale, tiny = (REAL)a->tiny;
    const REAL lb = (REAL)p->alpha_lb, ub = (REAL)p->alpha_ub, ah = (REAL)p->alpha_h;
    const REAL *Z = (const REAL *)a->z, *X = (const REAL *)a->x;
    REAL *A2 = (REAL *)a->a2, *WO = (REAL *)a->w_out, *V = (REAL *)p->v, *KG = (REAL *)p->twf_k;
    REAL nxc[PT_MAX_BLOCK_B], par[2 * PT_MAX_BLOCK_B];
    if (B > PT_MAX_BLOCK_B) return 4;
    if (m > INT32_MAX) return 1;                /* (the corrected rows are listed as int32) */
    for (int64_t b = 0; b < B; b++) {
        const REAL nx = (REAL)sqrt(SFX(pt_sq)(X + b * rl, rl));
        nxc[b] = nx > tiny ? nx : tiny;
        const int known = KG != NULL && KG[b] >= 0 && KG[b] < (REAL)INFINITY;
        par[2 * b] = nxc[b];
        par[2 * b + 1] = known ? ah * KG[b] : (REAL)INFINITY;      /* no K yet: E2 taken as met */
    }
    pt_args fz = *a;
    fz.mode = PT_FUSED; fz.w = NULL; fz.twf_par = par; fz.p0 = lb; fz.p1 = ub;
    int rc = SFX(pt_pass)(&fz);
    if (rc) return rc;
    int32_t *rows = (int32_t *)malloc((size_t)(B * m) * sizeof(int32_t));
    int64_t nflip[PT_MAX_BLOCK_B];
    if (!rows) return 3;
    int64_t total = 0;
    for (int64_t b = 0; b < B; b++) {
        const REAL *q = (const REAL *)a->q + b * a->q_stride;
        double kacc = 0;                        /* K exactly as the two-pass evaluation sums it */
        for (int64_t i = 0; i < m; i++) kacc += (double)(REAL)fabs(q[i] - A2[b * m + i]);
        const REAL K = (REAL)(kacc / (double)m), ahK = ah * K;
        int64_t nf = 0;
        double dval = 0;
        for (int64_t i = 0; i < m; i++) {
            const int64_t o = b * m + i;
            const REAL a2 = A2[o];
            const REAL w = SFX(pt_twf_w)(a2, q[i], nxc[b], ahK, lb, ub);
            if (w == WO[o]) continue;
            const REAL d = w - WO[o];               /* +1 or -1: this row's term enters or leaves */
            WO[o] = w;
            const REAL inv = a2 >= tiny ? (REAL)1 / a2 : (REAL)0;
            const REAL fct = 2 - 2 * q[i] * inv;
            const REAL rr = c * Z[cplx ? 2 * o : o], ri = cplx ? c * Z[2 * o + 1] : (REAL)0;
            if (cplx) { V[2 * o] = d * (fct * rr); V[2 * o + 1] = d * (fct * ri); } else V[o] = d * (fct * rr);
            dval += (double)(d * SFX(pt_ell)(PT_MAP_POISSON, a2, q[i], tiny));
            rows[b * m + nf++] = (int32_t)i;
        }
        a->value[b] += dval;
        nflip[b] = nf;
        total += nf;
        if (KG) KG[b] = K;
    }
    if (total > 0) {                            /* g_b += sum over the flipped rows of conj(a_i) dv_i */
        const REAL *A = (const REAL *)a->A;
        REAL *G = (REAL *)a->g;
        const int64_t span = 512, per = (rl + span - 1) / span, items = B * per;
        int nt = a->nthreads < 1 ? 1 : a->nthreads;
        if ((int64_t)nt > items) nt = (int)items;
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1)
        for (int64_t it = 0; it < items; it++) {
            const int64_t b = it / per, j0 = (it % per) * span, j1 = j0 + span < rl ? j0 + span : rl;
            REAL *gb = G + b * rl;
            for (int64_t f = 0; f < nflip[b]; f++) {
                const int64_t i = rows[b * m + f], o = b * m + i;
                const REAL *ai = A + i * rl;
                if (cplx) {
                    const REAL vr = V[2 * o], vi = V[2 * o + 1];
#pragma omp simd
                    for (int64_t j = j0 / 2; j < j1 / 2; j++) {
                        const REAL are = ai[2 * j], aim = ai[2 * j + 1];
                        gb[2 * j] += are * vr + aim * vi;
                        gb[2 * j + 1] += are * vi - aim * vr;
                    }
                } else {
                    const REAL vr = V[o];
#pragma omp simd
                    for (int64_t j = j0; j < j1; j++) gb[j] += ai[j] * vr;
                }
            }
        }
    }
    free(rows);
    p->twf_fused++;
    p->twf_flips += total;
    return 0;
}

/* L-BFGS for sample b at iteration t: the pair push, the direction, the trial step (lbfgs.py, step()) */
static REAL SFX(pt_lbfgs_prepare)(pt_block *p, int64_t b, REAL *q, double *al) {
    const int64_t n = p->pass.n, B = p->pass.B, M = p->memory;
    const int64_t rl = p->pass.is_complex ? 2 * n : n;
    const REAL *x = (const REAL *)p->x + b * rl, *G = (const REAL *)p->G + b * rl;
    REAL *S = (REAL *)p->S, *Y = (REAL *)p->Y, *xp = (REAL *)p->x_prev + b * rl, *gp = (REAL *)p->g_prev + b * rl;
    REAL *d = (REAL *)p->d + b * rl, *trial = (REAL *)p->trial;
    const int act = p->active[b], retrying = p->retry[b] && act, fresh = act && !retrying;
    if (fresh && p->has_prev[b]) {                       /* push (x - x_prev, G - g_prev) if <s, y> > 0 */
        const int64_t slot = (p->head[b] + M - 1) % M;
        REAL *sb = S + (slot * B + b) * rl, *yb = Y + (slot * B + b) * rl;
        double sy = 0, ss = 0, yy = 0;
        for (int64_t j = 0; j < rl; j++) {
            const REAL sj = x[j] - xp[j], yj = G[j] - gp[j];
            q[j] = sj; q[rl + j] = yj;
            sy += (double)sj * yj; ss += (double)sj * sj; yy += (double)yj * yj;
        }
        const REAL syr = (REAL)sy;
        if (syr > (REAL)(1e-10 * sqrt(ss * yy)) && syr < (REAL)INFINITY) {
            memcpy(sb, q, (size_t)rl * sizeof(REAL));
            memcpy(yb, q + rl, (size_t)rl * sizeof(REAL));
            p->sy[slot * B + b] = sy;
            p->head[b] = slot;
            if (p->count[b] < M) p->count[b]++;
        }
    }
    if (fresh) {                                         /* d = -H G (two-loop recursion), -G if empty */
        const int64_t k = p->count[b];
        for (int64_t j = 0; j < rl; j++) q[j] = G[j];
        for (int64_t i = 0; i < k; i++) {
            const int64_t slot = (p->head[b] + i) % M;
            const REAL *sb = S + (slot * B + b) * rl, *yb = Y + (slot * B + b) * rl;
            double sq = 0;
            for (int64_t j = 0; j < rl; j++) sq += (double)sb[j] * q[j];
            al[i] = sq / p->sy[slot * B + b];
            const REAL a_i = (REAL)al[i];
            for (int64_t j = 0; j < rl; j++) q[j] -= a_i * yb[j];
        }
        if (k > 0) {
            const int64_t s0 = p->head[b];
            const REAL *y0 = Y + (s0 * B + b) * rl;
            double yy = 0;
            for (int64_t j = 0; j < rl; j++) yy += (double)y0[j] * y0[j];
            const REAL gam = (REAL)(p->sy[s0 * B + b] / (yy > 1e-300 ? yy : 1e-300));
            for (int64_t j = 0; j < rl; j++) q[j] *= gam;
            for (int64_t i = k - 1; i >= 0; i--) {
                const int64_t slot = (p->head[b] + i) % M;
                const REAL *sb = S + (slot * B + b) * rl, *yb = Y + (slot * B + b) * rl;
                double yr = 0;
                for (int64_t j = 0; j < rl; j++) yr += (double)yb[j] * q[j];
                const REAL c_i = (REAL)(al[i] - yr / p->sy[slot * B + b]);
                for (int64_t j = 0; j < rl; j++) q[j] += c_i * sb[j];
            }
        }
        double slope = 0;
        for (int64_t j = 0; j < rl; j++) { d[j] = -q[j]; slope += (double)G[j] * d[j]; }
        const REAL sl = (REAL)slope;
        if (!(sl < 0 && sl > -(REAL)INFINITY)) {         /* not a finite descent direction: -G, memory cleared */
            for (int64_t j = 0; j < rl; j++) d[j] = -G[j];
            p->count[b] = 0;
        }
        memcpy(xp, x, (size_t)rl * sizeof(REAL));
        memcpy(gp, G, (size_t)rl * sizeof(REAL));
        p->has_prev[b] = 1;
    }
    const REAL alpha0 = p->count[b] > 0 ? (REAL)1 : (REAL)p->mu0 * ((const REAL *)p->scale)[b];
    const REAL alpha = act ? (fresh ? alpha0 : trial[b] * (REAL)p->shrink) : (REAL)0;
    p->tries[b] = retrying ? p->tries[b] + 1 : 0;
    trial[b] = alpha;
    return alpha;
}

static int SFX(pt_gd_block)(pt_block *p) {
    const int64_t m = p->pass.m, n = p->pass.n, B = p->pass.B;
    const int cplx = p->pass.is_complex;
    const int64_t rl = cplx ? 2 * n : n;
    REAL *x = (REAL *)p->x, *G = (REAL *)p->G, *f = (REAL *)p->f, *res = (REAL *)p->res;
    REAL *W = (REAL *)p->W, *gamma = (REAL *)p->gamma, *div_f = (REAL *)p->div_f;
    const REAL *scale = (const REAL *)p->scale, *f_limit = (const REAL *)p->f_limit;
    const REAL *stall = (const REAL *)p->stall, *psi = (const REAL *)p->psi, *den = (const REAL *)p->den_psi;
    const REAL *xt = (const REAL *)p->xt;
    REAL *x_try = (REAL *)p->x_try, *g = (REAL *)p->g, *a2 = (REAL *)p->a2, *w = (REAL *)p->w;
    REAL *rec = (REAL *)p->rec;
    const int ncols = p->truth ? 8 : 5;
    const REAL g_scale = (REAL)p->g_scale, l2 = (REAL)p->l2, half_l2 = (REAL)(0.5 * p->l2);
    const REAL slack = (REAL)p->slack, tol = (REAL)p->tol, gamma_min = (REAL)p->gamma_min;
    const REAL inf = (REAL)INFINITY;
    REAL alpha[PT_MAX_BLOCK_B];
    double two[64];                                     /* the two-loop's alpha_i (memory <= 64) */
    if (B > PT_MAX_BLOCK_B || (p->lbfgs && (p->memory < 1 || p->memory > 64))) return 4;
    REAL *work = p->lbfgs ? (REAL *)pt_alloc((size_t)(2 * rl) * sizeof(REAL)) : NULL;
    if (p->lbfgs && !work) return 3;
    pt_args a = p->pass;
    a.g_scale = 0; a.value_real = a.value_z_real = NULL;   /* this loop scales g and divides f itself */
    a.mode = PT_FUSED;
    a.x = x_try; a.z = p->z; a.g = g; a.a2 = a2; a.w_out = p->adaptive ? w : NULL; a.value = p->total;
    a.w = NULL; a.w_stride = 0;
    /* the adaptive maps (TAF/RAF, TWF's pass): the trial's value with the weights frozen at x from the same pass */
    double *total_z = p->adaptive ? p->total + B : NULL;
    a.wz = total_z ? p->W : NULL; a.wz_stride = m; a.value_z = total_z;
    p->n_rec = 0; p->new_div = 0; p->t_done = p->t0;

    for (int64_t s = 0; s < p->k; s++) {
        const int64_t t = p->t0 + s + 1;
        const REAL mu_t = (REAL)p->mu[s];
        for (int64_t b = 0; b < B; b++) {          /* the trial point (every sample, as the torch loop) */
            const REAL *xb = x + b * rl, *Gb = G + b * rl;
            REAL *xr = x_try + b * rl;
            if (p->lbfgs) {
                const REAL al = SFX(pt_lbfgs_prepare)(p, b, work, two);
                const REAL *db = (const REAL *)p->d + b * rl;
                alpha[b] = al;
                for (int64_t j = 0; j < rl; j++) xr[j] = xb[j] + al * db[j];
                continue;
            }
            const REAL base = mu_t * scale[b];
            REAL al = p->safeguard ? gamma[b] * base : (p->active[b] ? base : (REAL)0);
            alpha[b] = al;
            for (int64_t j = 0; j < rl; j++) xr[j] = xb[j] + al * (-Gb[j]);
        }
        int rc = p->twf ? SFX(pt_twf_eval)(p, &a) : SFX(pt_pass)(&a);
        if (rc) { free(work); return rc; }
        int any_active = 0;
        const int record = t % p->log_every == 0;
        REAL *row = record ? rec + p->n_rec * ncols * B : NULL;
        for (int64_t b = 0; b < B; b++) {
            REAL *xr = x_try + b * rl, *gb = g + b * rl, *xb = x + b * rl, *Gb = G + b * rl;
            const REAL *a2b = a2 + b * m, *wb = w + b * m;
            const REAL *pb = psi + b * p->psi_stride;
            const int act = p->active[b];
            /* the evaluation at the trial: value (own weights), gradient */
            REAL f_full = (REAL)(p->total[b] / (double)m);
            for (int64_t j = 0; j < rl; j++) gb[j] = gb[j] * g_scale;
            if (p->l2 != 0) {
                for (int64_t j = 0; j < rl; j++) gb[j] = gb[j] + l2 * xr[j];
                f_full = f_full + half_l2 * (REAL)SFX(pt_sq)(xr, rl);
            }
            int moved = act, retry = 0;
            REAL oa = alpha[b];
            if (p->lbfgs) {              /* Armijo: f(x_try) <= f + c <G, x_try - x> */
                double slope = 0;
                for (int64_t j = 0; j < rl; j++) slope += (double)Gb[j] * (REAL)(xr[j] - xb[j]);
                const REAL bound = f[b] + (REAL)p->c_armijo * (REAL)slope;
                const int ok = act && (f_full <= bound) && ((REAL)fabs(f_full) < inf);
                const int give_up = act && !ok && (p->tries[b] + 1 >= p->max_bt);
                retry = act && !ok && !give_up;
                p->accepted[b] = (uint8_t)ok;
                p->retry[b] = (uint8_t)retry;
                oa = ok ? alpha[b] : (REAL)0;
                moved = ok;
            } else if (p->safeguard) {
                REAL f_cmp = f_full;
                if (p->adaptive) {       /* the trial's value with the weights frozen at x */
                    f_cmp = (REAL)(total_z[b] / (double)m);
                    if (p->l2 != 0) f_cmp = f_cmp + half_l2 * (REAL)SFX(pt_sq)(xr, rl);
                }
                const REAL bound = f[b] + slack * (REAL)fabs(f[b]);
                const int ok = act && (f_cmp <= bound) && ((REAL)fabs(f_cmp) < inf);
                retry = act && !ok && (gamma[b] > gamma_min);
                REAL gm = gamma[b] * (ok ? (REAL)2 : retry ? (REAL)0.5 : (REAL)1);
                gamma[b] = gm > (REAL)1 ? (REAL)1 : gm;
                p->accepted[b] = (uint8_t)ok;
                p->retry[b] = (uint8_t)retry;
                oa = alpha[b] * (REAL)ok;
                moved = ok;
            }
            const int bad = moved && !((f_full <= f_limit[b]) && ((REAL)fabs(f_full) < inf));
            if (bad) {
                div_f[b] = f_full; p->div_t[b] = t; p->diverged[b] = 1;
                p->status[b] = (int8_t)p->st_diverged; p->iterations[b] = t - 1;
                p->new_div = 1;
            }
            const REAL res_prev = res[b];
            int same = 1;                               /* x unchanged by this iteration */
            if (moved && !bad) {
                for (int64_t j = 0; j < rl; j++) { same &= xr[j] == xb[j]; xb[j] = xr[j]; }
                memcpy(Gb, gb, (size_t)rl * sizeof(REAL));
                f[b] = f_full;
                if (p->adaptive) memcpy(W + b * m, wb, (size_t)m * sizeof(REAL));
                double acc = 0;
                for (int64_t i = 0; i < m; i++) {
                    REAL d = (REAL)sqrt(a2b[i]) - pb[i];
                    acc += (double)(d * d);
                }
                res[b] = (REAL)sqrt(acc) / den[b];
            }
            const int ok2 = act && !bad;
            const REAL step = oa * (REAL)ok2;
            ((REAL *)p->step)[b] = step;
            const REAL gn = (REAL)sqrt(SFX(pt_sq)(Gb, rl));
            int still = ok2;
            if (p->tol_on) {
                const int fit = res[b] <= tol;
                int stop = ok2 && (fit || (REAL)fabs(res[b] - res_prev) <= tol * res_prev) && !retry;
                if (stop) {
                    const int stuck = same && !fit && gn > stall[b];
                    p->status[b] = (int8_t)(stuck ? p->st_stalled : p->st_converged);
                    p->iterations[b] = t;
                }
                still = ok2 && !stop;
            }
            p->active[b] = (uint8_t)still;
            any_active |= still;
            if (row) {
                row[0 * B + b] = f[b];
                row[1 * B + b] = gn;
                row[2 * B + b] = step;
                row[3 * B + b] = (REAL)sqrt(SFX(pt_sq)(xb, rl));
                row[4 * B + b] = res[b];
                if (p->truth) {          /* c = <xt, x>, rel = ||x e^{-i arg c} - xt|| / ||xt||, |c|/(||x|| ||xt||), |c|/||xt||^2 */
                    const REAL *tb = xt + b * rl;
                    double cr = 0, ci = 0, nt2 = 0, nx2 = 0;
                    for (int64_t j = 0; j < (cplx ? n : rl); j++) {
                        if (cplx) {
                            const double tr = tb[2 * j], ti = tb[2 * j + 1], vr = xb[2 * j], vi = xb[2 * j + 1];
                            cr += tr * vr + ti * vi; ci += tr * vi - ti * vr;
                            nt2 += tr * tr + ti * ti; nx2 += vr * vr + vi * vi;
                        } else {
                            cr += (double)tb[j] * (double)xb[j];
                            nt2 += (double)tb[j] * (double)tb[j]; nx2 += (double)xb[j] * (double)xb[j];
                        }
                    }
                    const double ac = cplx ? sqrt(cr * cr + ci * ci) : fabs(cr);
                    double ur = 1, ui = 0;                   /* unit = conj(c)/|c| (sign(c) for real) */
                    if (cplx) { if (ac > 0) { ur = cr / ac; ui = -ci / ac; } }
                    else if (cr < 0) ur = -1;
                    double e2 = 0;
                    for (int64_t j = 0; j < (cplx ? n : rl); j++) {
                        if (cplx) {
                            const double vr = xb[2 * j], vi = xb[2 * j + 1];
                            const double er = vr * ur - vi * ui - tb[2 * j], ei = vr * ui + vi * ur - tb[2 * j + 1];
                            e2 += er * er + ei * ei;
                        } else {
                            const double e = ur * xb[j] - tb[j];
                            e2 += e * e;
                        }
                    }
                    const double dn = sqrt(nx2 * nt2);
                    row[5 * B + b] = (REAL)sqrt(e2 / nt2);
                    row[6 * B + b] = (REAL)(dn > 0 ? ac / dn : 0.0);
                    row[7 * B + b] = (REAL)(ac / nt2);
                }
            }
        }
        if (row) {
            p->rec_t[p->n_rec] = t;
            p->rec_time[p->n_rec] = pt_now();
            p->n_rec++;
        }
        p->t_done = t;
        if (p->new_div || !any_active) break;
    }
    free(work);
    return 0;
}

#endif
