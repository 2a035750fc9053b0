/* The loss kernels of LOSSES.md. One work-group reduces one row (klcl_rows_*); the gradient is written from
 * the row's statistics by the same work-group (fuse_grad) or by an element-wise kernel (klcl_grad_*).
 *
 * klcl_rows_<loss>, one work-group of KLCL_WG work-items per row:
 *   pass 1  one read of both rows: online softmax of teacher and student (one running max per work-item,
 *           one exponential per logit) with the sums that give both entropies and, for kl, rkl, soft_ce,
 *           ce and kd, the row value itself (see row_lanes); argmax of each (ties to the lowest index);
 *           non-finite flags; merged across work-items in a fixed tree;
 *   pass 2  for jsd, skl, srkl and tvd only, whose terms need log p and log q first: one more read for
 *           the row value and the row sum their gradient needs (fixed tree).
 *   gradient  with fuse_grad, the row kernel then writes the row's gradient itself while the row is still
 *           in cache (CPU devices, where one work-item streams a whole row); else:
 * klcl_grad_<loss>, global size (columns, rows): dL/ds_v = dL/dz_v / tau * softcap' * scale / denominator.
 * Both write the gradient through grad_row, element by element: the same bits either way.
 *
 * The gradient rule of LOSSES.md, dL/dz_v = q_v (g_v - sum_u q_u g_u) with g = dL/dq, cancels
 * catastrophically at the student's dominant token when tau is small: both terms are near the same large
 * value. Since sum_u q_u = 1 it equals q_v ((g_v - g_r) + sum_u q_u (g_r - g_u)) for any token r; with r the
 * student's argmax the dominant term drops out of the sum. rkl, jsd, skl, srkl and tvd use that form, with
 * the row sum (RS_AUX) taken in pass 2 and g_r kept in RS_G_REF; kl, soft_ce, ce and kd have closed forms.
 *
 * Every loss is its own kernel, generated from one body with the loss as a compile-time constant; the
 * per-logit math is written once (KLCL_LOSS_HELPERS) for vectors of KLCL_VW floats and for the scalar
 * tail. */

#define LOSS_KL 0
#define LOSS_RKL 1
#define LOSS_SOFT_CE 2
#define LOSS_CE 3
#define LOSS_JSD 4
#define LOSS_SKL 5
#define LOSS_SRKL 6
#define LOSS_TVD 7
#define LOSS_KD 8

#define IS_CENTERED(loss)                                                                              \
    ((loss) == LOSS_RKL || (loss) == LOSS_JSD || (loss) == LOSS_SKL || (loss) == LOSS_SRKL || (loss) == LOSS_TVD)

/* The loss parameters every helper may need, passed by value. */
typedef struct loss_params {
    float inv_tau, cap, scale, alpha, beta, lambda, eps, zl, lwa, lwb;
    uint vocab;
} loss_params;

/* Softmax statistics of one row (see common.cl): log p = (x_t - mt) / tau - lst, log q likewise. */
typedef struct row_softmax {
    float mt, lst, ms, lss, lss1;
} row_softmax;

#define KLCL_LOSS_HELPERS(T, IT, S)                                                                     \
    /* g_u = dL/dq_u of the centred losses, up to a constant that cancels. xt, xs: softcapped logits;    \
     * a, b: log p, log q. rkl's g = log q - log p = (xs - xt)/tau + const is formed from the logits,    \
     * exact where both log-probabilities are far below 0. srkl's lambda q/m is exp(log lambda + log    \
     * q/m), exactly 0 at lambda = 0. */                                                                 \
    inline T centered_g##S(const int loss, T xt, T xs, T a, T b, loss_params P)                         \
    {                                                                                                    \
        switch (loss) {                                                                                  \
        case LOSS_RKL: return (xs - xt) * P.inv_tau;                                                     \
        case LOSS_JSD: return (1.0f - P.beta) * (b - log_mix##S(a, b, P.lwa, P.lwb));                    \
        case LOSS_SKL:                                                                                   \
            return a == (T)(KLCL_NEG_INF) ? (T)(0.0f)                                                    \
                                          : -(1.0f - P.lambda) * exp(a - log_mix##S(a, b, P.lwa, P.lwb)); \
        case LOSS_SRKL: {                                                                                \
            const T r = b - log_mix##S(a, b, P.lwa, P.lwb);                                              \
            return r - exp(P.lwb + r);                                                                   \
        }                                                                                                \
        case LOSS_TVD: return 0.5f * sign(exp(b) - exp(a));                                              \
        default: return (T)(0.0f);                                                                       \
        }                                                                                                \
    }                                                                                                    \
    /* q (g_r - g) with g_r at the reference token; skl forms q g directly (its g = -(1 - lambda) p/m    \
     * overflows where q is tiny, q g never does). */                                                    \
    inline T centered_term##S(const int loss, T xt, T xs, T a, T b, T q, float g_ref, loss_params P)    \
    {                                                                                                    \
        if (loss == LOSS_SKL) {                                                                          \
            const T qg = ((a == (T)(KLCL_NEG_INF)) | (q == (T)(0.0f)))                                   \
                             ? (T)(0.0f)                                                                 \
                             : -(1.0f - P.lambda) * exp(a + b - log_mix##S(a, b, P.lwa, P.lwb));         \
            return q * g_ref - qg;                                                                       \
        }                                                                                                \
        return q * (g_ref - centered_g##S(loss, xt, xs, a, b, P));                                       \
    }                                                                                                    \
    /* Pass 2 for one group of logits (jsd, skl, srkl, tvd): adds the loss terms and the centred row    \
     * sum. */                                                                                           \
    inline void pass2_##S(const int loss, int teacher_ok, T rt, T rs, row_softmax R, float g_ref,        \
                          loss_params P, T *l, T *aux)                                                   \
    {                                                                                                    \
        const T xs = softcap##S(rs, P.cap), xt = softcap##S(rt, P.cap);                                  \
        const T b = (xs - R.ms) * P.inv_tau - R.lss, q = exp(b);                                         \
        const T a = (xt - R.mt) * P.inv_tau - R.lst, p = exp(a);                                         \
        switch (loss) {                                                                                  \
        case LOSS_JSD: {                                                                                 \
            const T lm = log_mix##S(a, b, P.lwa, P.lwb);                                                 \
            *l += P.beta * xlogratio##S(p, a, lm) + (1.0f - P.beta) * xlogratio##S(q, b, lm);            \
            break;                                                                                       \
        }                                                                                                \
        case LOSS_SKL: *l += xlogratio##S(p, a, log_mix##S(a, b, P.lwa, P.lwb)); break;                  \
        case LOSS_SRKL: *l += xlogratio##S(q, b, log_mix##S(a, b, P.lwa, P.lwb)); break;                 \
        case LOSS_TVD: *l += 0.5f * fabs(p - q); break;                                                  \
        }                                                                                                \
        *aux += q > (T)(0.0f) ? centered_term##S(loss, xt, xs, a, b, q, g_ref, P) : (T)(0.0f);           \
    }                                                                                                    \
    /* dL/ds for one group of logits, before 1/denominator; idx: their token indices. */                 \
    inline T grad_##S(const int loss, T rt, T rs, IT idx, int y, row_softmax R, float aux, float g_ref,  \
                      loss_params P)                                                                     \
    {                                                                                                    \
        const T xs = softcap##S(rs, P.cap);                                                              \
        const T b = (xs - R.ms) * P.inv_tau - R.lss, q = exp(b);                                         \
        T xt = (T)(0.0f), a = (T)(KLCL_NEG_INF), p = (T)(0.0f);                                          \
        if (loss != LOSS_CE) {                                                                           \
            xt = softcap##S(rt, P.cap);                                                                  \
            a = (xt - R.mt) * P.inv_tau - R.lst;                                                         \
            p = exp(a);                                                                                  \
        }                                                                                                \
        const T onehot = idx == (IT)(y) ? (T)(1.0f) : (T)(0.0f);                                         \
        T dz, ds;                                                                                        \
        if (IS_CENTERED(loss))                                                                           \
            dz = q == (T)(0.0f) ? (T)(0.0f) : q * aux - centered_term##S(loss, xt, xs, a, b, q, g_ref, P); \
        else if (loss == LOSS_CE) /* q - onehot is formed in fp32 before anything else touches it */     \
            dz = (q - (1.0f - P.eps) * onehot) - P.eps / (float)P.vocab +                                \
                 2.0f * P.zl * (R.ms * P.inv_tau + R.lss) * q;                                           \
        else                                                                                             \
            dz = q - p; /* kl, soft_ce, and kd's soft part */                                            \
        if (loss == LOSS_KD)                                                                             \
            ds = P.alpha * (exp((xs - R.ms) - R.lss1) - onehot) + (1.0f - P.alpha) * P.scale * dz * P.inv_tau; \
        else                                                                                             \
            ds = P.scale * dz * P.inv_tau;                                                               \
        if (P.cap > 0.0f) {                                                                              \
            const T th = tanh(rs / P.cap);                                                               \
            ds *= 1.0f - th * th;                                                                        \
        }                                                                                                \
        return ds;                                                                                       \
    }

KLCL_LOSS_HELPERS(float, int, 1)
KLCL_LOSS_HELPERS(floatV, intV, V)

#define ONE_PASS(loss) ((loss) == LOSS_KL || (loss) == LOSS_RKL || (loss) == LOSS_SOFT_CE || (loss) == LOSS_CE || (loss) == LOSS_KD)
#define USES_CTS(loss) ((loss) == LOSS_KL || (loss) == LOSS_SOFT_CE || (loss) == LOSS_KD)

/* Pass-1 sums of one work-item (or of each of its 8 lanes), with w_t = exp((x_t - mt)/tau) and
 * w_s = exp((x_s - ms)/tau) against running maxima mt, ms shared by the lanes:
 *   st = sum w_t, bt = sum w_t (x_t - mt), cts = sum w_t (x_s - ms),
 *   ss = sum w_s, bs = sum w_s (x_s - ms), cst = sum w_s (x_t - mt),
 *   ss1 = sum exp(x_s - ms) (kd's tau = 1), dsum = sum (x_s - ms) (ce's smoothing).
 * Then H(p) = log st - bt/(tau st), kl = (bt - cts)/(tau st) - log st + log ss, soft_ce = log ss -
 * cts/(tau st), and rkl mirrors kl: the row value in the same pass as the softmax. A token where one
 * side has mass and the other probability 0 makes kl (or rkl) +inf: it is flagged from the logits and
 * kept out of the sums, so the answer never depends on when a weight underflowed. */
/* T: the sums' type; F: the scalar type of a rescale factor (double for the double accumulator, so
 * that a maximum rising at every step does not multiply the same rounded fp32 factor in thousands of
 * times: measured 2.2e-4 on kl at V = 262144 with one work-item per row). */
#define KLCL_ROW_LANES(T, S, F)                                                                         \
    typedef struct row_lanes##S {                                                                        \
        T st, bt, cts, ss, bs, cst, ss1, dsum;                                                           \
    } row_lanes##S;                                                                                      \
    /* Moves the sums to larger maxima; cnt: logits each lane has seen (for dsum). An old maximum of    \
     * -inf means no mass yet: the sums are 0 (or -inf where they must be) and stay. */                 \
    inline void lanes_rescale##S(const int loss, row_lanes##S *L, float *mt, float *ms, float mt_new,    \
                                 float ms_new, float cnt, float k)                                       \
    {                                                                                                    \
        if (mt_new > *mt) {                                                                              \
            if (*mt != KLCL_NEG_INF) {                                                                   \
                const F d = (F)(*mt) - (F)(mt_new), f = exp2(d * (F)(k));                                \
                L->bt = f * (L->bt + d * L->st);                                                         \
                L->st *= f;                                                                              \
                if (USES_CTS(loss)) L->cts *= f;                                                         \
                if (loss == LOSS_RKL) L->cst += d * L->ss;                                               \
            }                                                                                            \
            *mt = mt_new;                                                                                \
        }                                                                                                \
        if (ms_new > *ms) {                                                                              \
            if (*ms != KLCL_NEG_INF) {                                                                   \
                const F d = (F)(*ms) - (F)(ms_new), g = exp2(d * (F)(k));                                \
                L->bs = g * (L->bs + d * L->ss);                                                         \
                L->ss *= g;                                                                              \
                if (loss == LOSS_RKL) L->cst *= g;                                                       \
                if (USES_CTS(loss)) L->cts += d * L->st;                                                 \
                if (loss == LOSS_KD) L->ss1 *= exp2(d * (F)(M_LOG2E_F));                                 \
                if (loss == LOSS_CE) L->dsum += d * (F)(cnt);                                            \
            }                                                                                            \
            *ms = ms_new;                                                                                \
        }                                                                                                \
    }                                                                                                    \
    /* Adds softcapped logits xt, xs (maxima already raised to cover them). */                           \
    inline void lanes_add##S(const int loss, row_lanes##S *L, float mt, float ms, T xt, T xs, float k,  \
                             int has_teacher)                                                            \
    {                                                                                                    \
        const T ds = xs - ms;                                                                            \
        const T ws = ms == KLCL_NEG_INF ? (T)(0.0f) : exp2(ds * k);                                      \
        L->ss += ws;                                                                                     \
        L->bs += ws * fmax(ds, (T)(-FLT_MAX)); /* -inf - ms is -inf, and 0 x -inf would be NaN */             \
        if (loss == LOSS_KD) L->ss1 += ms == KLCL_NEG_INF ? (T)(0.0f) : exp2(ds * M_LOG2E_F);           \
        if (loss == LOSS_CE) L->dsum += xs == (T)(KLCL_NEG_INF) ? (T)(KLCL_NEG_INF) : ds;                \
        if (!has_teacher) return;                                                                        \
        const T dt = xt - mt;                                                                            \
        const T wt = mt == KLCL_NEG_INF ? (T)(0.0f) : exp2(dt * k);                                      \
        L->st += wt;                                                                                     \
        L->bt += wt * fmax(dt, (T)(-FLT_MAX));                                                                \
        /* Tokens with mass against probability 0 are flagged (FLAG bits 4, 8 of `bad`), which makes the   \
         * row value +inf whatever their weight has underflowed to; what they add here is then unused. */  \
        if (USES_CTS(loss)) L->cts += wt * fmax(ds, (T)(-FLT_MAX));                                           \
        if (loss == LOSS_RKL) L->cst += ws * fmax(dt, (T)(-FLT_MAX));                                         \
    }

KLCL_ROW_LANES(float, 1, float)
KLCL_ROW_LANES(floatV, V, float)

/* Long rows are summed in two levels: blocks of ACC_BLOCK vectors in fp32 lanes, folded into one
 * accumulator per work-item, in double where the device has it. A single fp32 running sum over a long
 * tail drops every term below half an ulp of the sum (a language model's thousands of unlikely tokens:
 * 6e-5 of S measured at V = 32000); per block the loss is bounded by the block, and the fold is exact
 * enough in double. */
#define ACC_BLOCK 32
/* log2 of the largest weight a block may sum against a stale maximum (see pass 1): 2^64 x 2^8 terms x a
 * logit difference stays far below FLT_MAX. */
#define BLOCK_HEADROOM 64.0f
#ifdef KLCL_HAS_FP64
#pragma OPENCL EXTENSION cl_khr_fp64 : enable
typedef double acc_t;
#else
typedef float acc_t;
#endif
KLCL_ROW_LANES(acc_t, A, acc_t)

inline void lanes_foldV(row_lanesA *acc, row_lanesV *blk)
{
    acc->st += hsumV(blk->st);
    acc->bt += hsumV(blk->bt);
    acc->cts += hsumV(blk->cts);
    acc->ss += hsumV(blk->ss);
    acc->bs += hsumV(blk->bs);
    acc->cst += hsumV(blk->cst);
    acc->ss1 += hsumV(blk->ss1);
    acc->dsum += hsumV(blk->dsum);
    const floatV z = (floatV)(0.0f);
    blk->st = blk->bt = blk->cts = blk->ss = blk->bs = blk->cst = blk->ss1 = blk->dsum = z;
}

inline void lanes_fold1(row_lanesA *acc, row_lanes1 *blk)
{
    acc->st += blk->st;
    acc->bt += blk->bt;
    acc->cts += blk->cts;
    acc->ss += blk->ss;
    acc->bs += blk->bs;
    acc->cst += blk->cst;
    acc->ss1 += blk->ss1;
    acc->dsum += blk->dsum;
    blk->st = blk->bt = blk->cts = blk->ss = blk->bs = blk->cst = blk->ss1 = blk->dsum = 0.0f;
}

/* Number of row_lanes fields, plus mt and ms, that the merge tree keeps in local memory. */
#define LANE_FLOATS 10

inline void lanes_store(__local float *lf, uint i, float mt, float ms, row_lanes1 L)
{
    const float v[LANE_FLOATS] = {mt, ms, L.st, L.bt, L.cts, L.ss, L.bs, L.cst, L.ss1, L.dsum};
    for (int j = 0; j < LANE_FLOATS; j++) lf[j * KLCL_WG + i] = v[j];
}

inline void lanes_load(__local const float *lf, uint i, float *mt, float *ms, row_lanes1 *L)
{
    *mt = lf[i];
    *ms = lf[KLCL_WG + i];
    L->st = lf[2 * KLCL_WG + i];
    L->bt = lf[3 * KLCL_WG + i];
    L->cts = lf[4 * KLCL_WG + i];
    L->ss = lf[5 * KLCL_WG + i];
    L->bs = lf[6 * KLCL_WG + i];
    L->cst = lf[7 * KLCL_WG + i];
    L->ss1 = lf[8 * KLCL_WG + i];
    L->dsum = lf[9 * KLCL_WG + i];
}

#define ROW_ARGS                                                                                       \
    __global const T_ELEM *teacher, ulong t_off, ulong t_stride, __global const S_ELEM *student,        \
        ulong s_off, ulong s_stride, __global const int *labels, ulong l_off, int has_labels,           \
        __global const uchar *mask, ulong m_off, int has_mask, uint vocab, uint t_cols, uint s_cols,    \
        int t_logprob, int has_teacher,                                                                 \
        int ignore_index, float inv_tau, float cap, float scale, float alpha, float beta, float lambda, \
        float eps, float zl, float lwa, float lwb, __global float *row_loss, ulong rl_off,              \
        __global float *row_stats, __global int *row_flags, ulong row0, int want_grad,                  \
        __global G_ELEM *grad, ulong g_off, ulong g_stride, float inv_denom, int fuse_grad

#define ROW_ARG_NAMES                                                                                  \
    teacher, t_off, t_stride, student, s_off, s_stride, labels, l_off, has_labels, mask, m_off,         \
        has_mask, vocab, t_cols, s_cols, t_logprob, has_teacher, ignore_index, inv_tau, cap, scale, alpha, beta, lambda, eps, zl,  \
        lwa, lwb, row_loss, rl_off, row_stats, row_flags, row0, want_grad, grad, g_off, g_stride,      \
        inv_denom, fuse_grad

#define PARAMS_FROM_ARGS {inv_tau, cap, scale, alpha, beta, lambda, eps, zl, lwa, lwb, vocab}

/* The first index, in the order a work-item reads its vectors kb, kb + KLCL_WG, ... < ke, whose logit
 * equals v (the block's maximum, so one exists): the argmax with ties to the lowest index. */
#define KLCL_FIRST_INDEX(X, ELEM, LOADV)                                                               \
    inline uint first_indexV_##X(__global const ELEM *p, uint kb, uint ke, float v)                     \
    {                                                                                                  \
        for (uint kk = kb; kk < ke; kk += KLCL_WG) {                                                   \
            float x[KLCL_VW];                                                                                \
            vstoreV(LOADV(kk, p), 0, x);                                                               \
            for (uint j = 0; j < KLCL_VW; j++)                                                               \
                if (x[j] == v) return kk * KLCL_VW + j;                                                      \
        }                                                                                              \
        return UINT_MAX;                                                                               \
    }
KLCL_FIRST_INDEX(S, S_ELEM, LOAD_SV)
KLCL_FIRST_INDEX(T, T_ELEM, LOAD_TV)

/* Writes the s_cols columns of a student-shaped gradient row from the row's statistics, columns
 * first, first + step, ... (KLCL_VW-wide vectors, then the tail): the loss's columns [0, vocab) (teacher
 * columns past t_cols read as -inf), zeros for student columns a truncated loss does not use; or, when
 * `compute` is 0, `fill` everywhere (0 for a skipped row, NaN for an invalid one). Element-wise: whoever
 * calls it, and with whatever step, the same bits. */
inline void grad_row(const int loss, __global const T_ELEM *t, __global const S_ELEM *s, __global G_ELEM *g,
                     uint first, uint step, uint vocab, uint t_cols, uint s_cols, int y, row_softmax R, float aux,
                     float g_ref, loss_params P, float inv_denom, int compute, float fill)
{
    if (!compute) {
        for (uint kk = first; kk < s_cols / KLCL_VW; kk += step) STORE_GV((floatV)(fill), kk, g);
        for (uint v = s_cols / KLCL_VW * KLCL_VW + first; v < s_cols; v += step) STORE_G1(fill, v, g);
        return;
    }
    const uint nvec = min(vocab, min(t_cols, s_cols)) / KLCL_VW;
    const intV lane = KLCL_CAT(as_int, KLCL_VW)(KLCL_LANES);
    for (uint kk = first; kk < nvec; kk += step) {
        const floatV rt = loss != LOSS_CE ? LOAD_TV(kk, t) : (floatV)(0.0f);
        const floatV ds = grad_V(loss, rt, LOAD_SV(kk, s), (intV)(kk * KLCL_VW) + lane, y, R, aux, g_ref, P);
        STORE_GV(ds * inv_denom, kk, g);
    }
    for (uint v = nvec * KLCL_VW + first; v < s_cols; v += step) {
        float ds = 0.0f;
        if (v < vocab) {
            const float rt = loss != LOSS_CE ? LOAD_T1(v, t, t_cols) : 0.0f;
            ds = grad_1(loss, rt, LOAD_S1(v, s, s_cols), (int)v, y, R, aux, g_ref, P) * inv_denom;
        }
        STORE_G1(ds, v, g);
    }
}

inline void rows_body(const int loss, __local float *lf, __local uint *lu, __local float4 *l4, ROW_ARGS)
{
    const uint lid = get_local_id(0);
    const ulong row = row0 + get_group_id(0);
    const float k = M_LOG2E_F * inv_tau;
    const loss_params P = PARAMS_FROM_ARGS;
    const int uses_teacher = loss != LOSS_CE;
    /* Whole vectors where both rows have columns; the rest one by one, -inf past a row's width. */
    const uint nvec = min(vocab, min(t_cols, s_cols)) / KLCL_VW;
    __global float *stats = row_stats + row * RS_COUNT;
    __global int *rflags = row_flags + row * RF_COUNT;

    int flags = 0, y = -1;
    if (has_mask && mask[m_off + row] == 0) flags |= FLAG_SKIPPED;
    if (has_labels) {
        y = labels[l_off + row];
        if (y == ignore_index)
            flags |= FLAG_SKIPPED;
        else if (y < 0 || (uint)y >= min(vocab, s_cols))
            flags |= FLAG_SKIPPED | FLAG_BAD_LABEL;
    }
    if (flags & FLAG_SKIPPED) {
        if (lid == 0) {
            for (int i = 0; i < RS_COUNT; i++) stats[i] = 0.0f;
            rflags[RF_FLAGS] = flags;
            rflags[RF_ARGMAX_T] = -1;
            rflags[RF_ARGMAX_S] = -1;
            row_loss[rl_off + row] = 0.0f;
        }
        if (fuse_grad) {
            const row_softmax R0 = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
            grad_row(loss, 0, 0, grad + g_off + get_group_id(0) * g_stride, lid, KLCL_WG, vocab, t_cols,
                     s_cols, y, R0, 0.0f, 0.0f, P, inv_denom, 0, 0.0f);
        }
        return;
    }

    /* Logit rows are addressed from the launch's first row (t_off, s_off point there: a chunk of a
     * longer batch, or the caller's buffer); per-row arrays by the row's index in the whole batch. */
    const ulong lrow = get_group_id(0);
    __global const T_ELEM *t = teacher + t_off + lrow * t_stride;
    __global const S_ELEM *s = student + s_off + lrow * s_stride;

    /* Pass 1: softmax sums and argmax, KLCL_VW logits at a time in blocks of ACC_BLOCK vectors, then the tail
     * one by one. Within a block nothing is horizontal and nothing branches: the exponentials are taken
     * against the maxima known when the block starts (from the work-item's first vector at the start),
     * the block's own maxima are kept lane-wise, and only at the block's end are the sums moved to a
     * higher maximum (one rescale per block, not per vector). Logits above the block's reference make
     * weights above 1; while they stay below 2^BLOCK_HEADROOM the fp32 sums cannot overflow and are exact
     * to the same relative rounding, else the block is summed again from the start against its own
     * maxima (a row's first block when its first vector is all -inf, or a huge jump). The argmax comes
     * from the same lane-wise maxima: a block whose maximum beats the best so far is searched once for
     * its first index of that value. */
    float mt = KLCL_NEG_INF, ms = KLCL_NEG_INF;
    if (lid < nvec) {
        ms = softcap1(hmaxV(LOAD_SV(lid, s)), cap);
        if (has_teacher) mt = softcap1(hmaxV(LOAD_TV(lid, t)), cap);
    }
    /* kd also sums exp(x_s - ms) at tau = 1: the headroom holds for the larger of the two scales. */
    const float k_room = loss == LOSS_KD ? fmax(k, M_LOG2E_F) : k;
    row_lanesA acc = {0, 0, 0, 0, 0, 0, 0, 0};
    row_lanesV blk = {(floatV)(0.0f), (floatV)(0.0f), (floatV)(0.0f), (floatV)(0.0f),
                      (floatV)(0.0f), (floatV)(0.0f), (floatV)(0.0f), (floatV)(0.0f)};
    float atv = KLCL_NEG_INF, asv = KLCL_NEG_INF;
    uint ati = UINT_MAX, asi = UINT_MAX;
    uint bad = 0, count = 0; /* count: logits per work-item in acc */
    /* The flags of `bad`, kept lane-wise in the vector loop (an OR per vector, no horizontal test) and
     * folded after it: NaN or +inf in the student (2) or teacher (1) is "not below +inf"; mass against
     * probability 0 (4 for kl, soft_ce and kd; 8 for rkl) is a finite logit facing -inf. */
    intV bad_sv = (intV)(0), bad_tv = (intV)(0), bad_zv = (intV)(0);
    for (uint kb = lid; kb < nvec; kb += ACC_BLOCK * KLCL_WG) {
        const uint ke = min(nvec, kb + ACC_BLOCK * KLCL_WG);
        const uint in_block = (ke - kb + KLCL_WG - 1) / KLCL_WG;
        floatV bmtv = (floatV)(KLCL_NEG_INF), bmsv = (floatV)(KLCL_NEG_INF);
        for (uint kk = kb; kk < ke; kk += KLCL_WG) {
            const floatV rs = LOAD_SV(kk, s);
            bad_sv |= ~(rs < (floatV)(INFINITY));
            bmsv = fmax(bmsv, rs);
            const floatV xs = softcapV(rs, cap);
            floatV xt = (floatV)(0.0f);
            if (has_teacher) {
                const floatV rt = LOAD_TV(kk, t);
                bad_tv |= ~(rt < (floatV)(INFINITY));
                bmtv = fmax(bmtv, rt);
                xt = softcapV(rt, cap);
                if (USES_CTS(loss)) bad_zv |= (xs == (floatV)(KLCL_NEG_INF)) & (xt != (floatV)(KLCL_NEG_INF));
                if (loss == LOSS_RKL) bad_zv |= (xt == (floatV)(KLCL_NEG_INF)) & (xs != (floatV)(KLCL_NEG_INF));
            }
            lanes_addV(loss, &blk, mt, ms, xt, xs, k, has_teacher);
        }
        const float bms = hmaxV(bmsv), bmt = hmaxV(bmtv);
        const float ms_new = fmax(ms, softcap1(bms, cap)), mt_new = fmax(mt, softcap1(bmt, cap));
        if (ms_new > ms || mt_new > mt) {
            const int again = (ms_new - ms) * k_room > BLOCK_HEADROOM || (mt_new - mt) * k_room > BLOCK_HEADROOM;
            if (!again) {
                float bt_ = mt, bs_ = ms;
                lanes_rescaleV(loss, &blk, &bt_, &bs_, mt_new, ms_new, (float)in_block, k);
            }
            lanes_rescaleA(loss, &acc, &mt, &ms, mt_new, ms_new, (float)count, k);
            if (again) {
                blk.st = blk.bt = blk.cts = blk.ss = blk.bs = blk.cst = blk.ss1 = blk.dsum = (floatV)(0.0f);
                for (uint kk = kb; kk < ke; kk += KLCL_WG) {
                    const floatV xs = softcapV(LOAD_SV(kk, s), cap);
                    const floatV xt = has_teacher ? softcapV(LOAD_TV(kk, t), cap) : (floatV)(0.0f);
                    lanes_addV(loss, &blk, mt, ms, xt, xs, k, has_teacher);
                }
            }
        }
        if (bms > asv) {
            asv = bms;
            asi = first_indexV_S(s, kb, ke, bms);
        }
        if (has_teacher && bmt > atv) {
            atv = bmt;
            ati = first_indexV_T(t, kb, ke, bmt);
        }
        lanes_foldV(&acc, &blk);
        count += KLCL_VW * in_block;
    }
    bad |= (any(bad_tv) ? 1u : 0u) | (any(bad_sv) ? 2u : 0u) | (any(bad_zv) ? (loss == LOSS_RKL ? 8u : 4u) : 0u);
    row_lanes1 tail = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
    uint in_tail = 0;
    for (uint v = nvec * KLCL_VW + lid; v < vocab; v += KLCL_WG) {
        const float rs = LOAD_S1(v, s, s_cols);
        bad |= (isnan(rs) || rs == INFINITY) ? 2u : 0u;
        argmax_merge(&asv, &asi, rs, v);
        const float xs = softcap1(rs, cap);
        float xt = 0.0f, mt_new = mt;
        if (has_teacher) {
            const float rt = LOAD_T1(v, t, t_cols);
            bad |= (isnan(rt) || rt == INFINITY) ? 1u : 0u;
            argmax_merge(&atv, &ati, rt, v);
            xt = softcap1(rt, cap);
            mt_new = fmax(mt, xt);
            bad |= (xs == KLCL_NEG_INF && xt != KLCL_NEG_INF) ? 4u : 0u;
            bad |= (xt == KLCL_NEG_INF && xs != KLCL_NEG_INF) ? 8u : 0u;
        }
        const float ms_new = fmax(ms, xs);
        if (mt_new > mt || ms_new > ms) {
            float bmt = mt, bms = ms;
            lanes_rescale1(loss, &tail, &bmt, &bms, mt_new, ms_new, (float)in_tail, k);
            lanes_rescaleA(loss, &acc, &mt, &ms, mt_new, ms_new, (float)count, k);
        }
        lanes_add1(loss, &tail, mt, ms, xt, xs, k, has_teacher);
        in_tail++;
    }
    lanes_fold1(&acc, &tail);
    count += in_tail;
    row_lanes1 L = {(float)acc.st, (float)acc.bt, (float)acc.cts, (float)acc.ss,
                    (float)acc.bs, (float)acc.cst, (float)acc.ss1, (float)acc.dsum};

    /* Merge the work-items' sums in a fixed tree. OpenCL C 1.2 has no generic address space, so each
     * step merges private copies and stores back. */
    lanes_store(lf, lid, mt, ms, L);
    lf[LANE_FLOATS * KLCL_WG + lid] = atv;
    lf[(LANE_FLOATS + 1) * KLCL_WG + lid] = asv;
    lu[lid] = ati;
    lu[KLCL_WG + lid] = asi;
    lu[2 * KLCL_WG + lid] = bad;
    lu[3 * KLCL_WG + lid] = count;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (uint off = KLCL_WG / 2; off > 0; off >>= 1) {
        if (lid < off) {
            const uint o = lid + off;
            float amt, ams, bmt, bms;
            row_lanes1 A, B;
            lanes_load(lf, lid, &amt, &ams, &A);
            lanes_load(lf, o, &bmt, &bms, &B);
            const uint acount = lu[3 * KLCL_WG + lid], bcount = lu[3 * KLCL_WG + o];
            const float nmt = fmax(amt, bmt), nms = fmax(ams, bms);
            lanes_rescale1(loss, &A, &amt, &ams, nmt, nms, (float)acount, k);
            lanes_rescale1(loss, &B, &bmt, &bms, nmt, nms, (float)bcount, k);
            A.st += B.st;
            A.bt += B.bt;
            A.cts += B.cts;
            A.ss += B.ss;
            A.bs += B.bs;
            A.cst += B.cst;
            A.ss1 += B.ss1;
            A.dsum += B.dsum;
            lanes_store(lf, lid, nmt, nms, A);
            float tv = lf[LANE_FLOATS * KLCL_WG + lid], sv = lf[(LANE_FLOATS + 1) * KLCL_WG + lid];
            uint ti = lu[lid], si = lu[KLCL_WG + lid];
            argmax_merge(&tv, &ti, lf[LANE_FLOATS * KLCL_WG + o], lu[o]);
            argmax_merge(&sv, &si, lf[(LANE_FLOATS + 1) * KLCL_WG + o], lu[KLCL_WG + o]);
            lf[LANE_FLOATS * KLCL_WG + lid] = tv;
            lf[(LANE_FLOATS + 1) * KLCL_WG + lid] = sv;
            lu[lid] = ti;
            lu[KLCL_WG + lid] = si;
            lu[2 * KLCL_WG + lid] |= lu[2 * KLCL_WG + o];
            lu[3 * KLCL_WG + lid] = acount + bcount;
        }
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    row_softmax R;
    lanes_load(lf, 0, &R.mt, &R.ms, &L);
    atv = lf[LANE_FLOATS * KLCL_WG];
    asv = lf[(LANE_FLOATS + 1) * KLCL_WG];
    ati = lu[0];
    asi = lu[KLCL_WG];
    bad = lu[2 * KLCL_WG];

    /* Validity from the raw maxima: softcap maps -inf to -c, so the capped maxima cannot tell. */
    const int teacher_ok = has_teacher && !(bad & 1u) && atv != KLCL_NEG_INF;
    const int invalid = (bad & 2u) || asv == KLCL_NEG_INF || (uses_teacher && !teacher_ok);
    /* p = w_t * c with c = 1 / S_t, and total mass P = 1. Teacher log-probabilities (t_logprob: only at
     * tau = 1 without softcap) are used as log p as they are: log p = x_t, so c = exp(mt) and P = S_t c,
     * 1 up to the producer's rounding, with no second normalisation. */
    float c_t = 1.0f / L.st, mass_t = 1.0f;
    R.lst = log(L.st);
    if (t_logprob) {
        R.lst = -R.mt;
        c_t = exp(R.mt);
        mass_t = L.st * c_t;
    }
    R.lss = log(L.ss);
    R.lss1 = log(L.ss1);
    /* An invalid row writes NaN and does no more work, but every work-item still runs to the end: no
     * return between barriers (PoCL 3.1 hangs or miscompiles work-groups of 2 when one is taken, even
     * though every work-item takes it alike). */
    if (invalid && lid == 0) {
        for (int i = 0; i < RS_COUNT; i++) stats[i] = NAN;
        rflags[RF_FLAGS] = FLAG_INVALID | (teacher_ok ? FLAG_TEACHER_OK : 0);
        rflags[RF_ARGMAX_T] = -1;
        rflags[RF_ARGMAX_S] = -1;
        row_loss[rl_off + row] = NAN;
    }

    float g_ref = 0.0f;
    if (IS_CENTERED(loss) && !invalid) {
        const float xt = softcap1(LOAD_T1(asi, t, t_cols), cap), xs = softcap1(LOAD_S1(asi, s, s_cols), cap);
        g_ref = centered_g1(loss, xt, xs, (xt - R.mt) * inv_tau - R.lst, (xs - R.ms) * inv_tau - R.lss, P);
    }

    /* Pass 2 (jsd, skl, srkl, tvd; rkl only for its gradient): row value and the centred row sum (see
     * the table of LOSSES.md). rkl's sum needs its reference token, known only after pass 1; forming it
     * from pass-1 sums instead would bring back the cancellation the centred form removes. */
    float value = 0.0f, aux = 0.0f;
    if (!ONE_PASS(loss) || (IS_CENTERED(loss) && want_grad)) {
        /* Two levels again: blocks of ACC_BLOCK vectors folded into acc_t. */
        floatV lv = (floatV)(0.0f), auxv = (floatV)(0.0f);
        acc_t l_acc = 0, aux_acc = 0;
        uint n = 0;
        const uint nvec2 = invalid ? 0 : nvec, vocab2 = invalid ? 0 : vocab;
        for (uint kk = lid; kk < nvec2; kk += KLCL_WG) {
            pass2_V(loss, teacher_ok, LOAD_TV(kk, t), LOAD_SV(kk, s), R, g_ref, P, &lv, &auxv);
            if (++n == ACC_BLOCK) {
                l_acc += hsumV(lv);
                aux_acc += hsumV(auxv);
                lv = auxv = (floatV)(0.0f);
                n = 0;
            }
        }
        float l1 = hsumV(lv), aux1 = hsumV(auxv);
        for (uint v = nvec * KLCL_VW + lid; v < vocab2; v += KLCL_WG)
            pass2_1(loss, teacher_ok, LOAD_T1(v, t, t_cols), LOAD_S1(v, s, s_cols), R, g_ref, P, &l1, &aux1);
        l4[lid] = (float4)((float)(l_acc + l1), (float)(aux_acc + aux1), 0.0f, 0.0f);
        barrier(CLK_LOCAL_MEM_FENCE);
        for (uint off = KLCL_WG / 2; off > 0; off >>= 1) {
            if (lid < off) l4[lid] += l4[lid + off];
            barrier(CLK_LOCAL_MEM_FENCE);
        }
        if (!ONE_PASS(loss)) value = l4[0].x;
        aux = l4[0].y;
    }

    if (lid == 0 && !invalid) {
        /* The one-pass values from the sums (row_lanes); log p - log q terms divided by tau once. */
        const float h_t = teacher_ok ? mass_t * R.lst - L.bt * c_t * inv_tau : NAN;
        const float h_s = R.lss - L.bs / L.ss * inv_tau;
        float out;
        if (loss == LOSS_KL || loss == LOSS_KD)
            value = (bad & 4u) ? INFINITY : (L.bt - L.cts) * c_t * inv_tau + mass_t * (R.lss - R.lst);
        else if (loss == LOSS_RKL)
            value = (bad & 8u) ? INFINITY : (L.bs - L.cst) / L.ss * inv_tau - R.lss + R.lst;
        else if (loss == LOSS_SOFT_CE)
            value = (bad & 4u) ? INFINITY : mass_t * R.lss - L.cts * c_t * inv_tau;
        if (loss == LOSS_CE) {
            const float lse_s = R.ms * inv_tau + R.lss;
            const float b_y = (softcap1(LOAD_S1((uint)y, s, s_cols), cap) - R.ms) * inv_tau - R.lss;
            const float sum_log_q = L.dsum * inv_tau - (float)vocab * R.lss;
            /* A term whose weight is exactly 0 is left out: never 0 * inf. */
            value = zl > 0.0f ? zl * lse_s * lse_s : 0.0f;
            if (eps < 1.0f) value -= (1.0f - eps) * b_y;
            if (eps > 0.0f) value -= eps / (float)vocab * sum_log_q;
            out = scale == 0.0f ? 0.0f : scale * value;
        } else if (loss == LOSS_KD) {
            const float b1_y = (softcap1(LOAD_S1((uint)y, s, s_cols), cap) - R.ms) - R.lss1;
            const float soft = (1.0f - alpha) * scale;
            out = (alpha > 0.0f ? alpha * -b1_y : 0.0f) + (soft != 0.0f ? soft * value : 0.0f);
        } else {
            out = scale == 0.0f ? 0.0f : scale * value;
        }
        stats[RS_MAX_T] = R.mt;
        stats[RS_LOGS_T] = R.lst;
        stats[RS_MAX_S] = R.ms;
        stats[RS_LOGS_S] = R.lss;
        stats[RS_LOGS_S1] = R.lss1;
        stats[RS_AUX] = aux;
        stats[RS_G_REF] = g_ref;
        stats[RS_H_T] = h_t;
        stats[RS_H_S] = h_s;
        int f = teacher_ok ? FLAG_TEACHER_OK : 0;
        if (loss == LOSS_RKL && (bad & 8u)) f |= FLAG_NO_GRADIENT;
        if (teacher_ok && ati == asi) f |= FLAG_AGREE;
        if (has_labels && (uint)y == asi) f |= FLAG_CORRECT;
        rflags[RF_FLAGS] = f;
        rflags[RF_ARGMAX_T] = teacher_ok ? (int)ati : -1;
        rflags[RF_ARGMAX_S] = (int)asi;
        row_loss[rl_off + row] = out;
    }
    /* The gradient in the same launch (fuse_grad), while the row is still in cache: every read of the
     * row above is done before any work-item writes (the gradient may overwrite the student in place). */
    if (fuse_grad) {
        barrier(CLK_GLOBAL_MEM_FENCE);
        const int compute = !invalid && !(loss == LOSS_RKL && (bad & 8u));
        grad_row(loss, t, s, grad + g_off + lrow * g_stride, lid, KLCL_WG, vocab, t_cols, s_cols, y, R, aux,
                 g_ref, P, inv_denom, compute, NAN);
    }
}

#define GRAD_ARGS                                                                                      \
    __global const T_ELEM *teacher, ulong t_off, ulong t_stride, __global const S_ELEM *student,        \
        ulong s_off, ulong s_stride, __global const int *labels, ulong l_off, int has_labels,           \
        uint vocab, uint t_cols, uint s_cols, float inv_tau, float cap, float scale, float alpha,       \
        float beta, float lambda, float eps, float zl, float lwa, float lwb, float inv_denom_arg,        \
        __global const float *inv_denom_buf, int denom_from_buf, __global const float *row_stats,        \
        __global const int *row_flags, ulong row0, __global G_ELEM *grad, ulong g_off, ulong g_stride

#define GRAD_ARG_NAMES                                                                                 \
    teacher, t_off, t_stride, student, s_off, s_stride, labels, l_off, has_labels, vocab, t_cols,       \
        s_cols, inv_tau, cap, scale, alpha, beta, lambda, eps, zl, lwa, lwb, inv_denom_arg,             \
        inv_denom_buf, denom_from_buf, row_stats, row_flags, row0, grad, g_off, g_stride

/* Writes the s_cols columns of a student-shaped gradient row: the loss's columns [0, vocab) (teacher
 * columns past t_cols read as -inf), zeros for student columns a truncated loss does not use. */
inline void grad_body(const int loss, GRAD_ARGS)
{
    const ulong row = row0 + get_global_id(1);
    const uint gid = get_global_id(0), gsize = get_global_size(0);
    __global const float *stats = row_stats + row * RS_COUNT;
    const int flags = row_flags[row * RF_COUNT + RF_FLAGS];
    /* 1/denominator: known to the host, or (asynchronous calls) written by klcl_reduce beforehand. */
    const float inv_denom = denom_from_buf ? inv_denom_buf[0] : inv_denom_arg;
    const ulong lrow = get_global_id(1); /* from the launch's first row, as in rows_body */
    __global G_ELEM *g = grad + g_off + lrow * g_stride;

    __global const T_ELEM *t = teacher + t_off + lrow * t_stride;
    __global const S_ELEM *s = student + s_off + lrow * s_stride;
    const loss_params P = PARAMS_FROM_ARGS;
    const int compute = !(flags & (FLAG_SKIPPED | FLAG_INVALID | FLAG_NO_GRADIENT));
    row_softmax R;
    R.mt = stats[RS_MAX_T];
    R.lst = stats[RS_LOGS_T];
    R.ms = stats[RS_MAX_S];
    R.lss = stats[RS_LOGS_S];
    R.lss1 = stats[RS_LOGS_S1];
    const int y = has_labels ? labels[l_off + row] : -1;
    grad_row(loss, t, s, g, gid, gsize, vocab, t_cols, s_cols, y, R, stats[RS_AUX], stats[RS_G_REF], P, inv_denom,
             compute, (flags & FLAG_SKIPPED) ? 0.0f : NAN);
}

/* The reduction of an asynchronous call, on the device: one work-group sums the per-row losses of the
 * rows not skipped (work-item i takes rows i, i + KLCL_WG, ... in order, then a fixed tree), writes the
 * reduced loss as one fp32 and 1/denominator for the gradient kernel. Deterministic; it may differ in the
 * last bits from the host's double sum of a synchronous call. */
#if KLCL_IN_GROUP(KLCL_GROUP_SHARED)
__kernel __attribute__((reqd_work_group_size(KLCL_WG, 1, 1))) void klcl_reduce(
    __global const float *row_loss, ulong rl_off, __global const int *row_flags, ulong rows, int reduction,
    __global float *loss_out, ulong loss_off, int has_loss_out, __global float *inv_denom_out)
{
    __local acc_t lsum[KLCL_WG];
    __local ulong lused[KLCL_WG];
    const uint lid = get_local_id(0);
    acc_t sum = 0;
    ulong used = 0;
    for (ulong i = lid; i < rows; i += KLCL_WG) {
        if (row_flags[i * RF_COUNT + RF_FLAGS] & FLAG_SKIPPED) continue;
        used++;
        sum += row_loss[rl_off + i];
    }
    lsum[lid] = sum;
    lused[lid] = used;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (uint off = KLCL_WG / 2; off > 0; off >>= 1) {
        if (lid < off) {
            lsum[lid] += lsum[lid + off];
            lused[lid] += lused[lid + off];
        }
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    if (lid == 0) {
        /* Reductions as klcl_reduction numbers them: none 0, sum 1, mean 2, batchmean 3. */
        const acc_t total = lsum[0];
        const ulong n = lused[0];
        acc_t den = 1;
        if (reduction == 2) den = n ? (acc_t)n : (acc_t)1;
        if (reduction == 3) den = (acc_t)rows;
        if (has_loss_out) loss_out[loss_off] = (reduction == 2 && n == 0) ? 0.0f : (float)(total / den);
        inv_denom_out[0] = (float)((acc_t)1 / den);
    }
}
#endif

#define KLCL_LOSS_KERNELS(name, id)                                                                    \
    __kernel __attribute__((reqd_work_group_size(KLCL_WG, 1, 1))) void klcl_rows_##name(ROW_ARGS)      \
    {                                                                                                  \
        __local float lf[(LANE_FLOATS + 2) * KLCL_WG];                                                 \
        __local uint lu[4 * KLCL_WG];                                                                  \
        __local float4 l4[KLCL_WG];                                                                    \
        rows_body(id, lf, lu, l4, ROW_ARG_NAMES);                                                      \
    }                                                                                                  \
    __kernel void klcl_grad_##name(GRAD_ARGS) { grad_body(id, GRAD_ARG_NAMES); }

#if KLCL_IN_GROUP(LOSS_KL)
KLCL_LOSS_KERNELS(kl, LOSS_KL)
#endif
#if KLCL_IN_GROUP(LOSS_RKL)
KLCL_LOSS_KERNELS(rkl, LOSS_RKL)
#endif
#if KLCL_IN_GROUP(LOSS_SOFT_CE)
KLCL_LOSS_KERNELS(soft_ce, LOSS_SOFT_CE)
#endif
#if KLCL_IN_GROUP(LOSS_CE)
KLCL_LOSS_KERNELS(ce, LOSS_CE)
#endif
#if KLCL_IN_GROUP(LOSS_JSD)
KLCL_LOSS_KERNELS(jsd, LOSS_JSD)
#endif
#if KLCL_IN_GROUP(LOSS_SKL)
KLCL_LOSS_KERNELS(skl, LOSS_SKL)
#endif
#if KLCL_IN_GROUP(LOSS_SRKL)
KLCL_LOSS_KERNELS(srkl, LOSS_SRKL)
#endif
#if KLCL_IN_GROUP(LOSS_TVD)
KLCL_LOSS_KERNELS(tvd, LOSS_TVD)
#endif
#if KLCL_IN_GROUP(LOSS_KD)
KLCL_LOSS_KERNELS(kd, LOSS_KD)
#endif
