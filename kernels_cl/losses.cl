/* The loss kernels of LOSSES.md. A row is reduced by a team of work-items (klcl_rows_*), or, when the rows
 * are too few to fill the device, in parts by several work-groups (klcl_part_*, klcl_merge_*); the gradient
 * is written from the row's statistics by the row kernel itself (fuse_grad) or by an element-wise kernel
 * (klcl_grad_*).
 *
 * klcl_rows_<loss>, KLCL_WG / team rows per work-group, `team` work-items per row (the host picks team, a
 * power of two dividing KLCL_WG: all of it unless rows are short, see host/program.c):
 *   pass 1  one read of both rows: online softmax of teacher and student (one running max per work-item,
 *           one exponential per logit) with the sums that give both entropies and, for kl, rkl, soft_ce,
 *           ce and kd, the row value itself (see row_lanes); argmax of each (ties to the lowest index);
 *           non-finite flags; the team's work-items merged in a fixed tree (state_merge);
 *   pass 2  for jsd, skl, srkl and tvd only, whose terms need log p and log q first: one more read for
 *           the row value and the row sum their gradient needs (fixed tree).
 *   gradient  with fuse_grad, the row kernel then writes the row's gradient itself while the row is still
 *           in cache (CPU devices, where one work-item streams a whole row); else:
 * klcl_grad_<loss>, global size (columns, rows): dL/ds_v = dL/dz_v / tau * softcap' * scale / denominator.
 * Both write the gradient through grad_row, element by element: the same bits either way.
 *
 * A split row (parts > 1): klcl_part_<loss> runs pass 1 on each part, a contiguous range of the row's
 * vectors, and writes the part's state; klcl_merge_<loss> merges the parts in part order with the same
 * state_merge and writes the row's outputs as the row kernel does; for losses with a pass 2, klcl_part and
 * klcl_merge run once more for it. The gradient then comes from klcl_grad_<loss>. The order of the sums
 * differs from the unsplit kernel's, so the last bits may too; the host's choice of parts depends only on
 * the call (rows, columns, device, settings), so a call gives the same bits every time.
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
    float wa, wb; /* e^lwa, e^lwb: the mixture's weights */
} loss_params;

/* Softmax statistics of one row (see common.cl): log p = (x_t - mt) / tau - lst, log q likewise. */
typedef struct row_softmax {
    float mt, lst, ms, lss, lss1;
    float ps, qs; /* exp2(-lst log2(e)), exp2(-lss log2(e)): the factors of p and q in `weighed` */
} row_softmax;

/* R's ps and qs, from its lst and lss: once per row, not per logit. */
inline void softmax_scales(row_softmax *R)
{
    R->ps = exp2(-R->lst * M_LOG2E_F);
    R->qs = exp2(-R->lss * M_LOG2E_F);
}

/* A row's softmax statistics as row_write stored them in its row_stats, with their scales. */
inline row_softmax softmax_of_stats(__global const float *stats)
{
    row_softmax R;
    R.mt = stats[RS_MAX_T];
    R.lst = stats[RS_LOGS_T];
    R.ms = stats[RS_MAX_S];
    R.lss = stats[RS_LOGS_S];
    R.lss1 = stats[RS_LOGS_S1];
    softmax_scales(&R);
    return R;
}

/* The losses whose gradient is a closed form in q, and p, formed as pass 1 forms its weights (exact_max):
 * ce, kl, soft_ce and kd. */
#define WEIGHED_GRAD(loss) ((loss) == LOSS_CE || (loss) == LOSS_KL || (loss) == LOSS_SOFT_CE || (loss) == LOSS_KD)

#define MIXES(loss) ((loss) == LOSS_JSD || (loss) == LOSS_SKL || (loss) == LOSS_SRKL)

#define KLCL_LOSS_HELPERS(T, IT, S)                                                                     \
    /* log m, the log of the mixture of jsd, skl and srkl, from log p = a, log q = b and p, q; 0 for    \
     * the other losses. */                                                                              \
    inline T mix_log##S(const int loss, T a, T b, T p, T q, loss_params P)                              \
    {                                                                                                    \
        return MIXES(loss) ? log_mix_pq##S(a, b, p, q, P.wa, P.wb, P.lwa, P.lwb) : (T)(0.0f);           \
    }                                                                                                    \
    /* g_u = dL/dq_u of the centred losses, up to a constant that cancels. xt, xs: softcapped logits;    \
     * a, b: log p, log q; lm: log m (mix_log). rkl's g = log q - log p = (xs - xt)/tau + const is       \
     * formed from the logits, exact where both log-probabilities are far below 0. srkl's lambda q/m is  \
     * exp(log lambda + log q/m), exactly 0 at lambda = 0. */                                            \
    inline T centered_g##S(const int loss, T xt, T xs, T a, T b, T lm, loss_params P)                   \
    {                                                                                                    \
        switch (loss) {                                                                                  \
        case LOSS_RKL: return (xs - xt) * P.inv_tau;                                                     \
        case LOSS_JSD: return (1.0f - P.beta) * (b - lm);                                                \
        case LOSS_SKL: return a == (T)(KLCL_NEG_INF) ? (T)(0.0f) : -(1.0f - P.lambda) * exp(a - lm);      \
        case LOSS_SRKL: {                                                                                \
            const T r = b - lm;                                                                          \
            return r - exp(P.lwb + r);                                                                   \
        }                                                                                                \
        case LOSS_TVD: return 0.5f * sign(b - a); /* sign(q - p), decided where q and p round alike */    \
        default: return (T)(0.0f);                                                                       \
        }                                                                                                \
    }                                                                                                    \
    /* q (g_r - g) with g_r at the reference token; skl forms q g directly (its g = -(1 - lambda) p/m    \
     * overflows where q is tiny, q g never does). */                                                    \
    inline T centered_term##S(const int loss, T xt, T xs, T a, T b, T q, T lm, float g_ref, loss_params P) \
    {                                                                                                    \
        if (loss == LOSS_SKL) {                                                                          \
            const T qg = ((a == (T)(KLCL_NEG_INF)) | (q == (T)(0.0f))) ? (T)(0.0f)                        \
                                                                       : -(1.0f - P.lambda) * exp(a + b - lm); \
            return q * g_ref - qg;                                                                       \
        }                                                                                                \
        return q * (g_ref - centered_g##S(loss, xt, xs, a, b, lm, P));                                   \
    }                                                                                                    \
    /* Pass 2 for one group of softcapped logits xt, xs with q (weighed): adds the loss terms (jsd, skl,  \
     * srkl, tvd) and the centred row sum; returns the term it added to the sum, which the gradient       \
     * (centered_ds) needs again. */                                                                     \
    inline T pass2_##S(const int loss, T xt, T xs, T q, row_softmax R, float g_ref, loss_params P, T *l,  \
                       T *aux)                                                                           \
    {                                                                                                    \
        const T b = (xs - R.ms) * P.inv_tau - R.lss;                                                     \
        const T a = (xt - R.mt) * P.inv_tau - R.lst, p = exp(a);                                         \
        const T lm = mix_log##S(loss, a, b, p, q, P);                                                    \
        switch (loss) {                                                                                  \
        case LOSS_JSD: *l += P.beta * xlogratio##S(p, a, lm) + (1.0f - P.beta) * xlogratio##S(q, b, lm); break; \
        case LOSS_SKL: *l += xlogratio##S(p, a, lm); break;                                              \
        case LOSS_SRKL: *l += xlogratio##S(q, b, lm); break;                                             \
        case LOSS_TVD: *l += 0.5f * fabs(p - q); break;                                                  \
        }                                                                                                \
        const T term = q > (T)(0.0f) ? centered_term##S(loss, xt, xs, a, b, q, lm, g_ref, P) : (T)(0.0f); \
        *aux += term;                                                                                    \
        return term;                                                                                     \
    }                                                                                                    \
    /* ds times the softcap's derivative at the raw logits rs. */                                      \
    inline T capped##S(T ds, T rs, loss_params P)                                                        \
    {                                                                                                    \
        if (P.cap > 0.0f) {                                                                              \
            const T th = tanh(rs / P.cap);                                                               \
            ds *= 1.0f - th * th;                                                                        \
        }                                                                                                \
        return ds;                                                                                       \
    }                                                                                                    \
    /* exp((x - m)/tau - l) as exp2((x - m) k) times scale = exp2(-l log2(e)) (softmax_scales): the     \
     * first factor is pass 1's weight bit for bit (exact_max), which grad_kept scales instead of       \
     * computing again. */                                                                               \
    inline T weight##S(T x, float m, loss_params P)                                                     \
    {                                                                                                    \
        return exp2((x - m) * (M_LOG2E_F * P.inv_tau));                                                  \
    }                                                                                                    \
    inline T weighed##S(T x, float m, float scale, loss_params P)                                        \
    {                                                                                                    \
        return weight##S(x, m, P) * scale;                                                               \
    }                                                                                                    \
    /* dL/ds of the centred losses from q and the term pass 2 added for it (pass2_), before             \
     * 1/denominator. */                                                                                 \
    inline T centered_ds##S(T q, T term, float aux, T rs, loss_params P)                                 \
    {                                                                                                    \
        const T dz = q == (T)(0.0f) ? (T)(0.0f) : q * aux - term;                                        \
        return capped##S(P.scale * dz * P.inv_tau, rs, P);                                               \
    }                                                                                                    \
    /* dL/ds of ce, kl, soft_ce and kd from q (the student's probabilities), before 1/denominator; rt,   \
     * rs: the raw logits; idx: their token indices. ce's q - onehot is formed in fp32 before anything   \
     * else touches it. kd: alpha times ce at tau = 1 plus (1 - alpha) times its soft part, kl's. */     \
    inline T weighed_grad##S(const int loss, T q, T rt, T rs, IT idx, int y, row_softmax R, loss_params P) \
    {                                                                                                    \
        const T onehot = idx == (IT)(y) ? (T)(1.0f) : (T)(0.0f);                                         \
        T dz;                                                                                            \
        if (loss == LOSS_CE) {                                                                           \
            dz = (q - (1.0f - P.eps) * onehot) - P.eps / (float)P.vocab +                                \
                 2.0f * P.zl * (R.ms * P.inv_tau + R.lss) * q;                                           \
        } else {                                                                                         \
            dz = q - weighed##S(softcap##S(rt, P.cap), R.mt, R.ps, P);                                   \
        }                                                                                                \
        if (loss == LOSS_KD) {                                                                           \
            const T xs = softcap##S(rs, P.cap);                                                          \
            return capped##S(P.alpha * (exp((xs - R.ms) - R.lss1) - onehot) +                           \
                                 (1.0f - P.alpha) * P.scale * dz * P.inv_tau,                            \
                             rs, P);                                                                     \
        }                                                                                                \
        return capped##S(P.scale * dz * P.inv_tau, rs, P);                                               \
    }                                                                                                    \
    /* dL/ds for one group of logits, before 1/denominator; idx: their token indices. A centred loss's:  \
     * q aux less the term its pass 2 adds (centered_ds). */                                             \
    inline T grad_##S(const int loss, T rt, T rs, IT idx, int y, row_softmax R, float aux, float g_ref,  \
                      loss_params P)                                                                     \
    {                                                                                                    \
        const T xs = softcap##S(rs, P.cap), q = weighed##S(xs, R.ms, R.qs, P);                           \
        if (WEIGHED_GRAD(loss)) return weighed_grad##S(loss, q, rt, rs, idx, y, R, P);                   \
        T l = (T)(0.0f), sum = (T)(0.0f);                                                                \
        return centered_ds##S(q, pass2_##S(loss, softcap##S(rt, P.cap), xs, q, R, g_ref, P, &l, &sum), aux, rs, P); \
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
    /* Every sum back to 0. */                                                                           \
    inline void lanes_clear##S(row_lanes##S *L)                                                          \
    {                                                                                                    \
        L->st = L->bt = L->cts = L->ss = L->bs = L->cst = L->ss1 = L->dsum = (T)(0.0f);                  \
    }                                                                                                    \
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
    /* Adds softcapped logits xt, xs (maxima already raised to cover them); returns the student's       \
     * weights w_s. */                                                                                   \
    inline T lanes_add##S(const int loss, row_lanes##S *L, float mt, float ms, T xt, T xs, float k,     \
                          int has_teacher)                                                               \
    {                                                                                                    \
        const T ds = xs - ms;                                                                            \
        const T ws = ms == KLCL_NEG_INF ? (T)(0.0f) : exp2(ds * k);                                      \
        L->ss += ws;                                                                                     \
        L->bs += ws * fmax(ds, (T)(-FLT_MAX)); /* -inf - ms is -inf, and 0 x -inf would be NaN */        \
        if (loss == LOSS_KD) L->ss1 += ms == KLCL_NEG_INF ? (T)(0.0f) : exp2(ds * M_LOG2E_F);           \
        if (loss == LOSS_CE) L->dsum += xs == (T)(KLCL_NEG_INF) ? (T)(KLCL_NEG_INF) : ds;                \
        if (!has_teacher) return ws;                                                                     \
        const T dt = xt - mt;                                                                            \
        const T wt = mt == KLCL_NEG_INF ? (T)(0.0f) : exp2(dt * k);                                      \
        L->st += wt;                                                                                     \
        L->bt += wt * fmax(dt, (T)(-FLT_MAX));                                                           \
        /* Tokens with mass against probability 0 are flagged (FLAG bits 4, 8 of `bad`), which makes the   \
         * row value +inf whatever their weight has underflowed to; what they add here is then unused. */  \
        if (USES_CTS(loss)) L->cts += wt * fmax(ds, (T)(-FLT_MAX));                                      \
        if (loss == LOSS_RKL) L->cst += ws * fmax(dt, (T)(-FLT_MAX));                                    \
        return ws;                                                                                       \
    }

KLCL_ROW_LANES(float, 1, float)
KLCL_ROW_LANES(floatV, V, float)

/* Long rows are summed in two levels: blocks of ACC_BLOCK vectors in fp32 lanes, folded into one
 * accumulator per work-item, in double where the device has it. A single fp32 running sum over a long
 * tail drops every term below half an ulp of the sum (a language model's thousands of unlikely tokens:
 * 6e-5 of S measured at V = 32000); per block the loss is bounded by the block, and the fold is exact
 * enough in double. */
#define ACC_BLOCK 32
/* The GPU row loop (KLCL_PREFETCH, set by the host for non-CPU devices): each work-item loads its next
 * vectors before it reduces the current ones. Measured on an H200 (BENCHMARKS.md): with the argmax kept in
 * registers it raised kl forward at V = 131072 from 0.33 to 0.41-0.52 of the read bandwidth. Its block sums
 * and running maxima are scalars (row_block, run_max below), so that the registers a work-item holds no
 * longer grow with the vector width, only its loads do. */
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

/* Adds each lane sum of v, summed across its lanes in a fixed order, to the scalar sums h. */
inline void lanes_hsum_into(row_lanes1 *h, const row_lanesV *v)
{
    h->st += hsumV(v->st);
    h->bt += hsumV(v->bt);
    h->cts += hsumV(v->cts);
    h->ss += hsumV(v->ss);
    h->bs += hsumV(v->bs);
    h->cst += hsumV(v->cst);
    h->ss1 += hsumV(v->ss1);
    h->dsum += hsumV(v->dsum);
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
    lanes_clear1(blk);
}

/* The sums of one block of pass 1. A CPU device keeps them lane-wise (a lane's own sum, across lanes
 * once per block). The GPU row loop keeps one scalar per sum: each vector's terms are summed across their
 * lanes as they come (the same pairwise tree, then the vectors in order), which costs a few adds per
 * vector and saves the 7 (or 15) other lanes of every sum in registers. */
#ifdef KLCL_PREFETCH
typedef row_lanes1 row_block;
inline floatV block_add(const int loss, row_block *b, float mt, float ms, floatV xt, floatV xs, float k,
                        int has_teacher)
{
    row_lanesV v;
    lanes_clearV(&v);
    const floatV ws = lanes_addV(loss, &v, mt, ms, xt, xs, k, has_teacher);
    lanes_hsum_into(b, &v);
    return ws;
}
/* vecs: the vectors each work-item added (a sum counts KLCL_VW logits per vector) */
inline void block_rescale(const int loss, row_block *b, float *mt, float *ms, float mt_new, float ms_new,
                          uint vecs, float k)
{
    lanes_rescale1(loss, b, mt, ms, mt_new, ms_new, (float)(KLCL_VW * vecs), k);
}
inline void block_fold(row_lanesA *acc, row_block *b) { lanes_fold1(acc, b); }
inline void block_clear(row_block *b) { lanes_clear1(b); }
inline int block_nan(const row_block *b) { return isnan(b->ss) || isnan(b->st); }
#else
typedef row_lanesV row_block;
inline floatV block_add(const int loss, row_block *b, float mt, float ms, floatV xt, floatV xs, float k,
                        int has_teacher)
{
    return lanes_addV(loss, b, mt, ms, xt, xs, k, has_teacher);
}
inline void block_rescale(const int loss, row_block *b, float *mt, float *ms, float mt_new, float ms_new,
                          uint vecs, float k)
{
    lanes_rescaleV(loss, b, mt, ms, mt_new, ms_new, (float)vecs, k);
}
inline void block_fold(row_lanesA *acc, row_block *b)
{
    row_lanes1 h = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
    lanes_hsum_into(&h, b);
    lanes_fold1(acc, &h);
    lanes_clearV(b);
}
inline void block_clear(row_block *b) { lanes_clearV(b); }
inline int block_nan(const row_block *b) { return any(isnan(b->ss)) || any(isnan(b->st)); }
#endif

/* Pass-1 state of some of a row's columns: one work-item's, a team's after the merge tree, or one part's
 * of a split row. The maxima of the softcapped logits and the row_lanes sums against them, the logits
 * counted (ce's dsum needs them to rescale), each side's argmax on the raw logits (value and index) and the
 * `bad` flags of pass 1. */
typedef struct row_state {
    float mt, ms;
    row_lanes1 L;
    float atv, asv;
    uint ati, asi, bad, count;
} row_state;

/* The state's words, floats then uints: one column of the tree's local arrays, or one part's record in a
 * split row's scratch (the uints stored as their bits). */
#define STATE_FLOATS 12
#define STATE_UINTS 4
#define STATE_WORDS (STATE_FLOATS + STATE_UINTS)
#if defined(KLCL_HOST_PART_WORDS) && KLCL_HOST_PART_WORDS != STATE_WORDS
#error "a part's record differs between kernels_cl/losses.cl and host/internal.h"
#endif

inline void state_words(row_state S, float *f, uint *u)
{
    const float v[STATE_FLOATS] = {S.mt,    S.ms,    S.L.st,  S.L.bt,   S.L.cts, S.L.ss,
                                   S.L.bs,  S.L.cst, S.L.ss1, S.L.dsum, S.atv,   S.asv};
    for (int j = 0; j < STATE_FLOATS; j++) f[j] = v[j];
    u[0] = S.ati;
    u[1] = S.asi;
    u[2] = S.bad;
    u[3] = S.count;
}

inline row_state state_of_words(const float *f, const uint *u)
{
    row_state S;
    S.mt = f[0];
    S.ms = f[1];
    S.L.st = f[2];
    S.L.bt = f[3];
    S.L.cts = f[4];
    S.L.ss = f[5];
    S.L.bs = f[6];
    S.L.cst = f[7];
    S.L.ss1 = f[8];
    S.L.dsum = f[9];
    S.atv = f[10];
    S.asv = f[11];
    S.ati = u[0];
    S.asi = u[1];
    S.bad = u[2];
    S.count = u[3];
    return S;
}

/* Work-item i's column of the tree's arrays: lf[j * KLCL_WG + i], lu[j * KLCL_WG + i]. */
inline void state_store_local(__local float *lf, __local uint *lu, uint i, row_state S)
{
    float f[STATE_FLOATS];
    uint u[STATE_UINTS];
    state_words(S, f, u);
    for (int j = 0; j < STATE_FLOATS; j++) lf[j * KLCL_WG + i] = f[j];
    for (int j = 0; j < STATE_UINTS; j++) lu[j * KLCL_WG + i] = u[j];
}

inline row_state state_load_local(__local const float *lf, __local const uint *lu, uint i)
{
    float f[STATE_FLOATS];
    uint u[STATE_UINTS];
    for (int j = 0; j < STATE_FLOATS; j++) f[j] = lf[j * KLCL_WG + i];
    for (int j = 0; j < STATE_UINTS; j++) u[j] = lu[j * KLCL_WG + i];
    return state_of_words(f, u);
}

inline void state_store_global(__global float *p, row_state S)
{
    float f[STATE_FLOATS];
    uint u[STATE_UINTS];
    state_words(S, f, u);
    for (int j = 0; j < STATE_FLOATS; j++) p[j] = f[j];
    for (int j = 0; j < STATE_UINTS; j++) p[STATE_FLOATS + j] = as_float(u[j]);
}

inline row_state state_load_global(__global const float *p)
{
    float f[STATE_FLOATS];
    uint u[STATE_UINTS];
    for (int j = 0; j < STATE_FLOATS; j++) f[j] = p[j];
    for (int j = 0; j < STATE_UINTS; j++) u[j] = as_uint(p[STATE_FLOATS + j]);
    return state_of_words(f, u);
}

/* a <- a merged with b, the one merge of the work-item tree and of a split row's parts: both moved to the
 * larger maxima, then added; each argmax keeps the larger value, ties to the lower index. */
inline void state_merge(const int loss, row_state *a, row_state b, float k)
{
    const float mt = fmax(a->mt, b.mt), ms = fmax(a->ms, b.ms);
    lanes_rescale1(loss, &a->L, &a->mt, &a->ms, mt, ms, (float)a->count, k);
    lanes_rescale1(loss, &b.L, &b.mt, &b.ms, mt, ms, (float)b.count, k);
    a->L.st += b.L.st;
    a->L.bt += b.L.bt;
    a->L.cts += b.L.cts;
    a->L.ss += b.L.ss;
    a->L.bs += b.L.bs;
    a->L.cst += b.L.cst;
    a->L.ss1 += b.L.ss1;
    a->L.dsum += b.L.dsum;
    argmax_merge(&a->atv, &a->ati, b.atv, b.ati);
    argmax_merge(&a->asv, &a->asi, b.asv, b.asi);
    a->bad |= b.bad;
    a->count += b.count;
}

#define ROW_ARGS                                                                                       \
    __global const T_ELEM *teacher, ulong t_off, ulong t_stride, __global const S_ELEM *student,        \
        ulong s_off, ulong s_stride, __global const int *labels, ulong l_off, int has_labels,           \
        __global const uchar *mask, ulong m_off, int has_mask, uint vocab, uint t_cols, uint s_cols,    \
        int t_logprob, int has_teacher,                                                                 \
        int ignore_index, float inv_tau, float cap, float scale, float alpha, float beta, float lambda, \
        float eps, float zl, float lwa, float lwb, __global float *row_loss, ulong rl_off,              \
        __global float *row_stats, __global int *row_flags, ulong row0, int want_grad,                  \
        __global G_ELEM *grad, ulong g_off, ulong g_stride, float inv_denom, int fuse_grad,            \
        uint launch_rows, uint team_size, uint parts, __global float *partials, int pass, int exact_max,     \
        int keep_exps

#define ROW_ARG_NAMES                                                                                  \
    teacher, t_off, t_stride, student, s_off, s_stride, labels, l_off, has_labels, mask, m_off,         \
        has_mask, vocab, t_cols, s_cols, t_logprob, has_teacher, ignore_index, inv_tau, cap, scale, alpha, beta, lambda, eps, zl,  \
        lwa, lwb, row_loss, rl_off, row_stats, row_flags, row0, want_grad, grad, g_off, g_stride,      \
        inv_denom, fuse_grad, launch_rows, team_size, parts, partials, pass, exact_max, keep_exps

#define PARAMS_FROM_ARGS {inv_tau, cap, scale, alpha, beta, lambda, eps, zl, lwa, lwb, vocab, exp(lwa), exp(lwb)}

/* The GPU row loop's load (KLCL_PREFETCH): vector kk of the student and, when with_t, of the teacher, into
 * the next-vector registers the loop reduces one iteration later. */
inline void load_next(__global const T_ELEM *t, __global const S_ELEM *s, uint kk, int with_t, floatV *nt,
                      floatV *ns)
{
    *ns = LOAD_SV(kk, s);
    if (with_t) *nt = LOAD_TV(kk, t);
}

/* A work-item's running maximum of one side's raw logits and the lowest column where it was first seen
 * (the argmax; UINT_MAX while no logit is above -inf). A NaN never raises it. */
#ifdef KLCL_PREFETCH
/* The GPU row loop: one value and one column. A vector that beats the maximum (a few times per row
 * after the first vectors) is searched for the first lane that holds its maximum. */
typedef struct run_max {
    float m;
    uint at;
} run_max;
inline void run_max_init(run_max *r)
{
    r->m = KLCL_NEG_INF;
    r->at = UINT_MAX;
}
inline void run_max_add(run_max *r, floatV x, uint kk)
{
    const float h = hmaxV(x);
    if (h > r->m) {
        r->m = h;
        r->at = kk * KLCL_VW + hminuV(x == (floatV)(h) ? KLCL_LANES : (uintV)(UINT_MAX));
    }
}
inline float run_max_value(const run_max *r) { return r->m; }
inline uint run_max_index(const run_max *r) { return r->at; }
#else
/* A CPU device: lane-wise maxima and the vector where each lane first reached its maximum (one compare
 * and two selects per vector), searched once per row. */
typedef struct run_max {
    floatV m;
    intV at;
} run_max;
inline void run_max_init(run_max *r)
{
    r->m = (floatV)(KLCL_NEG_INF);
    r->at = (intV)(-1);
}
inline void run_max_add(run_max *r, floatV x, uint kk)
{
    const intV up = x > r->m;
    r->m = up ? x : r->m;
    r->at = up ? (intV)((int)kk) : r->at;
}
inline float run_max_value(const run_max *r) { return hmaxV(r->m); }
inline uint run_max_index(const run_max *r)
{
    const float v = hmaxV(r->m);
    float mm[KLCL_VW];
    int ii[KLCL_VW];
    vstoreV(r->m, 0, mm);
    vstoreV(r->at, 0, ii);
    uint best = UINT_MAX;
    if (v != KLCL_NEG_INF)
        for (uint j = 0; j < KLCL_VW; j++)
            if (mm[j] == v) best = min(best, (uint)ii[j] * KLCL_VW + j);
    return best;
}
#endif

/* Whether a block holds a -inf logit on the side whose -inf would face mass (pass 1 then takes its flags
 * exactly): one flag in the GPU row loop, lane-wise minima on a CPU device (one instruction per vector
 * there, where the flag's horizontal test costs more; on a GPU the minima cost about 6 registers more). */
#ifdef KLCL_PREFETCH
typedef int neg_seen;
inline neg_seen neg_none(void) { return 0; }
inline neg_seen neg_note(neg_seen n, floatV x) { return n | any(x == (floatV)(KLCL_NEG_INF)); }
inline int neg_any(neg_seen n) { return n; }
#else
typedef floatV neg_seen;
inline neg_seen neg_none(void) { return (floatV)(INFINITY); }
inline neg_seen neg_note(neg_seen n, floatV x) { return x < n ? x : n; }
inline int neg_any(neg_seen n) { return any(n == (floatV)(KLCL_NEG_INF)); }
#endif

/* The gradient's columns first, first + step, ... below s_cols one by one, as grad_row writes those past its
 * whole vectors: 0 past the loss's columns. */
inline void grad_columns(const int loss, __global const T_ELEM *t, __global const S_ELEM *s, __global G_ELEM *g,
                         uint first, uint step, uint vocab, uint t_cols, uint s_cols, int y, row_softmax R, float aux,
                         float g_ref, loss_params P, float inv_denom)
{
    for (uint v = first; v < s_cols; v += step) {
        float ds = 0.0f;
        if (v < vocab) {
            const float rt = loss != LOSS_CE ? LOAD_T1(v, t, t_cols) : 0.0f;
            ds = grad_1(loss, rt, LOAD_S1(v, s, s_cols), (int)v, y, R, aux, g_ref, P) * inv_denom;
        }
        STORE_G1(ds, v, g);
    }
}

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
#ifdef KLCL_PREFETCH
    floatV next_t = (floatV)(0.0f), next_s = (floatV)(0.0f);
    if (first < nvec) load_next(t, s, first, loss != LOSS_CE, &next_t, &next_s);
    for (uint kk = first; kk < nvec; kk += step) {
        const floatV rt = next_t, rs = next_s;
        if (kk + step < nvec) load_next(t, s, kk + step, loss != LOSS_CE, &next_t, &next_s);
        const floatV ds = grad_V(loss, rt, rs, (intV)(kk * KLCL_VW) + lane, y, R, aux, g_ref, P);
        STORE_GV(ds * inv_denom, kk, g);
    }
#else
    for (uint kk = first; kk < nvec; kk += step) {
        const floatV rt = loss != LOSS_CE ? LOAD_TV(kk, t) : (floatV)(0.0f);
        const floatV ds = grad_V(loss, rt, LOAD_SV(kk, s), (intV)(kk * KLCL_VW) + lane, y, R, aux, g_ref, P);
        STORE_GV(ds * inv_denom, kk, g);
    }
#endif
    grad_columns(loss, t, s, g, nvec * KLCL_VW + first, step, vocab, t_cols, s_cols, y, R, aux, g_ref, P, inv_denom);
}

/* A row's flags before any logit is read (mask, ignore_index, a label outside the loss's columns), and
 * its label in *y (-1 without labels). */
inline int row_skip_flags(ulong row, __global const int *labels, ulong l_off, int has_labels,
                          __global const uchar *mask, ulong m_off, int has_mask, int ignore_index, uint vocab,
                          uint s_cols, int *y)
{
    int flags = 0;
    *y = -1;
    if (has_mask && mask[m_off + row] == 0) flags |= FLAG_SKIPPED;
    if (has_labels) {
        *y = labels[l_off + row];
        if (*y == ignore_index)
            flags |= FLAG_SKIPPED;
        else if (*y < 0 || (uint)*y >= min(vocab, s_cols))
            flags |= FLAG_SKIPPED | FLAG_BAD_LABEL;
    }
    return flags;
}

/* The `bad` flags of vectors kb, kb + team, ... below ke, exactly: NaN or +inf in the student (2) or the
 * teacher (1); mass against probability 0, a finite softcapped logit facing -inf (4 for kl, soft_ce and kd,
 * 8 for rkl). pass 1 calls it only for the blocks that may hold one. */
inline uint block_flags(const int loss, __global const T_ELEM *t, __global const S_ELEM *s, uint kb, uint ke,
                        uint team, int has_teacher, float cap)
{
    intV bad_sv = (intV)(0), bad_tv = (intV)(0), bad_zv = (intV)(0);
    for (uint kk = kb; kk < ke; kk += team) {
        const floatV rs = LOAD_SV(kk, s);
        bad_sv |= ~(rs < (floatV)(INFINITY));
        if (has_teacher) {
            const floatV rt = LOAD_TV(kk, t);
            bad_tv |= ~(rt < (floatV)(INFINITY));
            const floatV xs = softcapV(rs, cap), xt = softcapV(rt, cap);
            if (USES_CTS(loss)) bad_zv |= (xs == (floatV)(KLCL_NEG_INF)) & (xt != (floatV)(KLCL_NEG_INF));
            if (loss == LOSS_RKL) bad_zv |= (xt == (floatV)(KLCL_NEG_INF)) & (xs != (floatV)(KLCL_NEG_INF));
        }
    }
    return (any(bad_tv) ? 1u : 0u) | (any(bad_sv) ? 2u : 0u) | (any(bad_zv) ? (loss == LOSS_RKL ? 8u : 4u) : 0u);
}

/* A gradient on one work-item per row (exact_max; CPU devices; every loss): the row's largest
 * softcapped student logit, taken before pass 1 so that pass 1 weighs every logit against the final
 * maximum ms. Its weights exp2((x_s - ms) k) are then the exponentials of
 * q = exp2((x_s - ms) k) exp2(-log S log2(e)) (weighed), bit for bit: pass 1 stores them in the gradient's
 * row (keep_exps). For ce, kl, soft_ce and kd the gradient scales them (grad_kept) instead of taking
 * that exponential again; a centred loss's pass 2 forms its q from them and leaves in their place the
 * term its gradient needs (pass2_), whose log m and teacher's exponential the gradient then does not take.
 * The same maximum as pass 1 would end with: softcap is monotonic, and fmax ignores NaN as the running
 * maxima do. */
inline float student_max(__global const S_ELEM *s, uint nvec, uint v0, uint v1, uint s_cols, float cap)
{
    floatV m = (floatV)(KLCL_NEG_INF);
    for (uint kk = 0; kk < nvec; kk++) m = fmax(m, LOAD_SV(kk, s));
    float r = hmaxV(m);
    for (uint v = v0; v < v1; v++) r = fmax(r, LOAD_S1(v, s, s_cols));
    return softcap1(r, cap);
}

/* Pass 1 of work-item `tid` of a team of `team` over vectors [k0, k1) of a row and its scalar columns
 * [v0, v1): softmax sums and argmax, KLCL_VW logits at a time in blocks of ACC_BLOCK vectors, then the scalar
 * columns one by one. The work-item reads vectors k0 + tid, k0 + tid + team, ... and columns v0 + tid,
 * v0 + tid + team, ...
 *
 * Within a block nothing is horizontal and nothing branches: the exponentials are taken against the
 * maxima known when the block starts (from the work-item's first vector at the start), the block's own
 * maxima are kept lane-wise, and only at the block's end are the sums moved to a higher maximum (one
 * rescale per block, not per vector). Logits above the block's reference make weights above 1; while they
 * stay below 2^BLOCK_HEADROOM the fp32 sums cannot overflow and are exact to the same relative rounding,
 * else the block is summed again from the start against its own maxima (a range's first block when its
 * first vector is all -inf, or a huge jump). The argmax comes from the running lane-wise maxima and the
 * vector where each lane first reached its maximum. */
inline row_state pass1(const int loss, __global const T_ELEM *t, __global const S_ELEM *s, uint k0, uint k1,
                       uint v0, uint v1, uint tid, uint team, uint t_cols, uint s_cols, int has_teacher, float cap,
                       float k, float ms_floor, __global float *keep, int *keeping)
{
    float mt = KLCL_NEG_INF, ms = KLCL_NEG_INF;
    if (k0 + tid < k1) {
        ms = softcap1(hmaxV(LOAD_SV(k0 + tid, s)), cap);
        if (has_teacher) mt = softcap1(hmaxV(LOAD_TV(k0 + tid, t)), cap);
    }
    if (ms_floor > ms) ms = ms_floor; /* student_max: every weight against the final maximum */
    /* kd also sums exp(x_s - ms) at tau = 1: the headroom holds for the larger of the two scales. */
    const float k_room = loss == LOSS_KD ? fmax(k, M_LOG2E_F) : k;
    row_lanesA acc = {0, 0, 0, 0, 0, 0, 0, 0};
    row_block blk;
    block_clear(&blk);
    uint bad = 0, count = 0; /* count: logits in acc */
    /* Running maxima of the raw logits and where they were first seen: the argmax, without searching a
     * block again for its first maximum when it holds a new best (a second read and a scalar search, which
     * cost kl forward 16% at V = 4096 on an AVX-512 CPU, BENCHMARKS.md). */
    run_max ams, amt;
    run_max_init(&ams);
    run_max_init(&amt);
    for (uint kb = k0 + tid; kb < k1; kb += ACC_BLOCK * team) {
        const uint ke = min(k1, kb + ACC_BLOCK * team);
        const uint in_block = (ke - kb + team - 1) / team;
        /* NaN and +inf (flags 2, 1) and mass against probability 0 (4, 8) are not tested per vector: a
         * block's flags are taken exactly (block_flags) only when it may hold one. The running maxima (a
         * NaN never raises one) show +inf; neg_seen shows a -inf on the side whose -inf would face mass;
         * a NaN makes its weight, hence its block sum, NaN, unless the maximum it is weighed against is
         * still -inf (then the block is checked too). A block that holds none of these costs only its
         * maxima and neg_seen. */
        const int blind = ms == KLCL_NEG_INF || (has_teacher && mt == KLCL_NEG_INF);
        neg_seen bneg = neg_none();
#ifdef KLCL_PREFETCH
        floatV next_t = (floatV)(0.0f), next_s;
        load_next(t, s, kb, has_teacher, &next_t, &next_s);
#endif
        for (uint kk = kb; kk < ke; kk += team) {
#ifdef KLCL_PREFETCH
            const floatV rs = next_s, rt_now = next_t;
            if (kk + team < ke) load_next(t, s, kk + team, has_teacher, &next_t, &next_s);
#else
            const floatV rs = LOAD_SV(kk, s);
#endif
            run_max_add(&ams, rs, kk);
            const floatV xs = softcapV(rs, cap);
            floatV xt = (floatV)(0.0f);
            if (has_teacher) {
#ifdef KLCL_PREFETCH
                const floatV rt = rt_now;
#else
                const floatV rt = LOAD_TV(kk, t);
#endif
                run_max_add(&amt, rt, kk);
                if (USES_CTS(loss)) bneg = neg_note(bneg, rs);
                if (loss == LOSS_RKL) bneg = neg_note(bneg, rt);
                xt = softcapV(rt, cap);
            }
            const floatV ws = block_add(loss, &blk, mt, ms, xt, xs, k, has_teacher);
#if KLCL_G_DTYPE == 0
            if (*keeping) KLCL_CAT(vstore, KLCL_VW)(ws, kk, keep);
#endif
        }
        /* The running maxima, not the block's: the same new maxima ms_new, mt_new (ms, mt already cover the
         * blocks before), one compare and select less per vector; a +inf seen once keeps every later block
         * checked by block_flags, which only sets again the flag it set. */
        const float bms = run_max_value(&ams), bmt = run_max_value(&amt);
        const float ms_new = fmax(ms, softcap1(bms, cap)), mt_new = fmax(mt, softcap1(bmt, cap));
        if (ms_new > ms) *keeping = 0; /* never after student_max: the weights kept are against ms */
        if (ms_new > ms || mt_new > mt) {
            const int again = (ms_new - ms) * k_room > BLOCK_HEADROOM || (mt_new - mt) * k_room > BLOCK_HEADROOM;
            if (!again) {
                float bt_ = mt, bs_ = ms;
                block_rescale(loss, &blk, &bt_, &bs_, mt_new, ms_new, in_block, k);
            }
            lanes_rescaleA(loss, &acc, &mt, &ms, mt_new, ms_new, (float)count, k);
            if (again) {
                block_clear(&blk);
                for (uint kk = kb; kk < ke; kk += team) {
                    const floatV xs = softcapV(LOAD_SV(kk, s), cap);
                    const floatV xt = has_teacher ? softcapV(LOAD_TV(kk, t), cap) : (floatV)(0.0f);
                    block_add(loss, &blk, mt, ms, xt, xs, k, has_teacher);
                }
            }
        }
        if (blind || bms == INFINITY || bmt == INFINITY || neg_any(bneg) ||
            block_nan(&blk))
            bad |= block_flags(loss, t, s, kb, ke, team, has_teacher, cap);
        block_fold(&acc, &blk);
        count += KLCL_VW * in_block;
    }
    /* Without a teacher amt stays -inf: atv -inf and ati none. */
    float asv = run_max_value(&ams), atv = run_max_value(&amt);
    uint asi = run_max_index(&ams), ati = run_max_index(&amt);
    row_lanes1 tail = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
    uint in_tail = 0;
    for (uint v = v0 + tid; v < v1; v += team) {
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
    row_state S;
    S.mt = mt;
    S.ms = ms;
    S.L.st = (float)acc.st;
    S.L.bt = (float)acc.bt;
    S.L.cts = (float)acc.cts;
    S.L.ss = (float)acc.ss;
    S.L.bs = (float)acc.bs;
    S.L.cst = (float)acc.cst;
    S.L.ss1 = (float)acc.ss1;
    S.L.dsum = (float)acc.dsum;
    S.atv = atv;
    S.asv = asv;
    S.ati = ati;
    S.asi = asi;
    S.bad = bad;
    S.count = count;
    return S;
}

/* The gradient of one row from what its passes kept in g (keep_exps): for ce, kl, soft_ce and kd the
 * student's weights of pass 1; for the centred losses the terms of pass 2 (pass2_), with q computed
 * again. The whole vectors [0, nvec) from them, the same bits as grad_row's; the columns past them as
 * grad_row computes them. One work-item per row; g holds fp32 (G_ELEM is float). */
inline void grad_kept(const int loss, __global const T_ELEM *t, __global const S_ELEM *s, __global G_ELEM *g,
                      uint nvec, uint vocab, uint t_cols, uint s_cols, int y, row_softmax R, float aux, float g_ref,
                      loss_params P, float inv_denom)
{
    __global float *kept = (__global float *)g;
    const intV lane = KLCL_CAT(as_int, KLCL_VW)(KLCL_LANES);
    if (IS_CENTERED(loss)) {
        for (uint kk = 0; kk < nvec; kk++) {
            const floatV rs = LOAD_SV(kk, s), term = KLCL_CAT(vload, KLCL_VW)(kk, kept);
            const floatV ds = centered_dsV(weighedV(softcapV(rs, P.cap), R.ms, R.qs, P), term, aux, rs, P);
            KLCL_CAT(vstore, KLCL_VW)(ds * inv_denom, kk, kept);
        }
    } else {
        for (uint kk = 0; kk < nvec; kk++) {
            const floatV q = KLCL_CAT(vload, KLCL_VW)(kk, kept) * R.qs;
            const floatV rt = loss != LOSS_CE ? LOAD_TV(kk, t) : (floatV)(0.0f);
            const floatV rs = P.cap > 0.0f || loss == LOSS_KD ? LOAD_SV(kk, s) : (floatV)(0.0f);
            const floatV ds = weighed_gradV(loss, q, rt, rs, (intV)(kk * KLCL_VW) + lane, y, R, P);
            KLCL_CAT(vstore, KLCL_VW)(ds * inv_denom, kk, kept);
        }
    }
    grad_columns(loss, t, s, g, nvec * KLCL_VW, 1, vocab, t_cols, s_cols, y, R, aux, g_ref, P, inv_denom);
}

/* Merges the pass-1 states of each team's work-items in a fixed tree (work-item tid takes tid + off for
 * off = team/2, ..., 1) and returns the team's state to all its work-items. Every work-item of the group
 * calls it: it holds barriers. OpenCL C 1.2 has no generic address space, so each step merges private
 * copies and stores back. */
inline row_state team_merge(const int loss, __local float *lf, __local uint *lu, uint lid, uint tid, uint team,
                            row_state S, float k)
{
    state_store_local(lf, lu, lid, S);
    barrier(CLK_LOCAL_MEM_FENCE);
    for (uint off = team / 2; off > 0; off >>= 1) {
        if (tid < off) {
            row_state A = state_load_local(lf, lu, lid);
            state_merge(loss, &A, state_load_local(lf, lu, lid + off), k);
            state_store_local(lf, lu, lid, A);
        }
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    return state_load_local(lf, lu, lid - tid);
}

/* What a row's merged pass-1 state gives before pass 2: the softmax normalisers R, validity, the
 * teacher's normalisation (p = w_t c_t, total mass mass_t) and g at the reference token (centred losses). */
typedef struct row_setup {
    row_softmax R;
    int teacher_ok, invalid;
    float c_t, mass_t, g_ref;
} row_setup;

inline row_setup row_prepare(const int loss, row_state S, __global const T_ELEM *t, __global const S_ELEM *s,
                             uint t_cols, uint s_cols, int has_teacher, int t_logprob, loss_params P)
{
    row_setup U;
    U.R.mt = S.mt;
    U.R.ms = S.ms;
    /* Validity from the raw maxima: softcap maps -inf to -c, so the capped maxima cannot tell. */
    U.teacher_ok = has_teacher && !(S.bad & 1u) && S.atv != KLCL_NEG_INF;
    U.invalid = (S.bad & 2u) || S.asv == KLCL_NEG_INF || (loss != LOSS_CE && !U.teacher_ok);
    /* p = w_t * c with c = 1 / S_t, and total mass P = 1. Teacher log-probabilities (t_logprob: only at
     * tau = 1 without softcap) are used as log p as they are: log p = x_t, so c = exp(mt) and P = S_t c,
     * 1 up to the producer's rounding, with no second normalisation. */
    U.c_t = 1.0f / S.L.st;
    U.mass_t = 1.0f;
    U.R.lst = log(S.L.st);
    if (t_logprob) {
        U.R.lst = -U.R.mt;
        U.c_t = exp(U.R.mt);
        U.mass_t = S.L.st * U.c_t;
    }
    U.R.lss = log(S.L.ss);
    U.R.lss1 = log(S.L.ss1);
    softmax_scales(&U.R);
    U.g_ref = 0.0f;
    if (IS_CENTERED(loss) && !U.invalid) {
        const float xt = softcap1(LOAD_T1(S.asi, t, t_cols), P.cap), xs = softcap1(LOAD_S1(S.asi, s, s_cols), P.cap);
        const float a = (xt - U.R.mt) * P.inv_tau - U.R.lst, b = (xs - U.R.ms) * P.inv_tau - U.R.lss;
        U.g_ref = centered_g1(loss, xt, xs, a, b, mix_log1(loss, a, b, exp(a), exp(b), P), P);
    }
    return U;
}

/* Pass 2 (jsd, skl, srkl, tvd; rkl only for its gradient), over the columns pass1 reads: the terms of the
 * row value and of the centred row sum (see the table of LOSSES.md), returned as (value, sum). rkl's sum
 * needs its reference token, known only after pass 1; forming it from pass-1 sums instead would bring
 * back the cancellation the centred form removes. Two levels again: blocks of ACC_BLOCK vectors folded
 * into acc_t. */
#define NEEDS_PASS2(loss, want_grad) (!ONE_PASS(loss) || (IS_CENTERED(loss) && (want_grad)))

inline float2 pass2(const int loss, __global const T_ELEM *t, __global const S_ELEM *s, uint k0, uint k1, uint v0,
                    uint v1, uint tid, uint team, uint t_cols, uint s_cols, row_softmax R, float g_ref, loss_params P,
                    __global float *keep, int keeping)
{
    acc_t l_acc = 0, aux_acc = 0;
    uint n = 0;
#ifdef KLCL_PREFETCH
    /* The GPU row loop's block sums are scalars, each vector's terms summed across lanes as they come (as
     * pass 1's row_block); a CPU device keeps them lane-wise. */
    float lv = 0.0f, auxv = 0.0f;
#define P2_TOTAL(x) (x)
    floatV next_t = (floatV)(0.0f), next_s = (floatV)(0.0f);
    if (k0 + tid < k1) load_next(t, s, k0 + tid, 1, &next_t, &next_s);
#else
    floatV lv = (floatV)(0.0f), auxv = (floatV)(0.0f);
#define P2_TOTAL(x) hsumV(x)
#endif
    /* keeping (one work-item per row): pass 1's weights of q in, the terms of the gradient (centered_ds)
     * out */
    const int kept = KLCL_WG == 1 && keeping;
    for (uint kk = k0 + tid; kk < k1; kk += team) {
#ifdef KLCL_PREFETCH
        const floatV rt = next_t, rs = next_s;
        if (kk + team < k1) load_next(t, s, kk + team, 1, &next_t, &next_s);
#else
        const floatV rt = LOAD_TV(kk, t), rs = LOAD_SV(kk, s);
#endif
        const floatV xt = softcapV(rt, P.cap), xs = softcapV(rs, P.cap);
        const floatV w = kept ? KLCL_CAT(vload, KLCL_VW)(kk, keep) : weightV(xs, R.ms, P);
#ifdef KLCL_PREFETCH
        floatV lt = (floatV)(0.0f), at = (floatV)(0.0f);
        const floatV term = pass2_V(loss, xt, xs, w * R.qs, R, g_ref, P, &lt, &at);
        lv += hsumV(lt);
        auxv += hsumV(at);
#else
        const floatV term = pass2_V(loss, xt, xs, w * R.qs, R, g_ref, P, &lv, &auxv);
#endif
        if (kept) KLCL_CAT(vstore, KLCL_VW)(term, kk, keep);
        if (++n == ACC_BLOCK) {
            l_acc += P2_TOTAL(lv);
            aux_acc += P2_TOTAL(auxv);
            lv = auxv = 0.0f;
            n = 0;
        }
    }
    float l1 = P2_TOTAL(lv), aux1 = P2_TOTAL(auxv);
#undef P2_TOTAL
    for (uint v = v0 + tid; v < v1; v += team) {
        const float xt = softcap1(LOAD_T1(v, t, t_cols), P.cap), xs = softcap1(LOAD_S1(v, s, s_cols), P.cap);
        pass2_1(loss, xt, xs, weighed1(xs, R.ms, R.qs, P), R, g_ref, P, &l1, &aux1);
    }
    return (float2)((float)(l_acc + l1), (float)(aux_acc + aux1));
}

/* Sums each team's pass-2 pairs in a fixed tree; every work-item of the group calls it. */
inline float2 team_sum(__local float4 *l4, uint lid, uint tid, uint team, float2 x)
{
    l4[lid] = (float4)(x.x, x.y, 0.0f, 0.0f);
    barrier(CLK_LOCAL_MEM_FENCE);
    for (uint off = team / 2; off > 0; off >>= 1) {
        if (tid < off) l4[lid] += l4[lid + off];
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    return l4[lid - tid].xy;
}

/* The per-row outputs of a row that is skipped (mask 0, ignore_index, or a label out of range). */
inline void row_write_skipped(int flags, __global float *stats, __global int *rflags, __global float *loss_out)
{
    for (int i = 0; i < RS_COUNT; i++) stats[i] = 0.0f;
    rflags[RF_FLAGS] = flags;
    rflags[RF_ARGMAX_T] = -1;
    rflags[RF_ARGMAX_S] = -1;
    *loss_out = 0.0f;
}

/* The per-row outputs of a used row: statistics, flags and the loss after scale, from its merged pass-1
 * state, its setup and pass 2's (value, centred sum) (the value counts for jsd, skl, srkl and tvd only;
 * the other losses take theirs from the pass-1 sums). An invalid row gets NaN. */
inline void row_write(const int loss, row_state S, row_setup U, float2 p2, int y, int has_labels,
                      __global const S_ELEM *s, uint s_cols, loss_params P, __global float *stats,
                      __global int *rflags, __global float *loss_out)
{
    if (U.invalid) {
        for (int i = 0; i < RS_COUNT; i++) stats[i] = NAN;
        rflags[RF_FLAGS] = FLAG_INVALID | (U.teacher_ok ? FLAG_TEACHER_OK : 0);
        rflags[RF_ARGMAX_T] = -1;
        rflags[RF_ARGMAX_S] = -1;
        *loss_out = NAN;
        return;
    }
    const row_lanes1 L = S.L;
    const row_softmax R = U.R;
    const float inv_tau = P.inv_tau, c_t = U.c_t, mass_t = U.mass_t;
    /* The one-pass values from the sums (row_lanes); log p - log q terms divided by tau once. */
    const float h_t = U.teacher_ok ? mass_t * R.lst - L.bt * c_t * inv_tau : NAN;
    const float h_s = R.lss - L.bs / L.ss * inv_tau;
    float value = ONE_PASS(loss) ? 0.0f : p2.x, out;
    if (loss == LOSS_KL || loss == LOSS_KD)
        value = (S.bad & 4u) ? INFINITY : (L.bt - L.cts) * c_t * inv_tau + mass_t * (R.lss - R.lst);
    else if (loss == LOSS_RKL)
        value = (S.bad & 8u) ? INFINITY : (L.bs - L.cst) / L.ss * inv_tau - R.lss + R.lst;
    else if (loss == LOSS_SOFT_CE)
        value = (S.bad & 4u) ? INFINITY : mass_t * R.lss - L.cts * c_t * inv_tau;
    if (loss == LOSS_CE) {
        const float lse_s = R.ms * inv_tau + R.lss;
        const float b_y = (softcap1(LOAD_S1((uint)y, s, s_cols), P.cap) - R.ms) * inv_tau - R.lss;
        const float sum_log_q = L.dsum * inv_tau - (float)P.vocab * R.lss;
        /* A term whose weight is exactly 0 is left out: never 0 * inf. */
        value = P.zl > 0.0f ? P.zl * lse_s * lse_s : 0.0f;
        if (P.eps < 1.0f) value -= (1.0f - P.eps) * b_y;
        if (P.eps > 0.0f) value -= P.eps / (float)P.vocab * sum_log_q;
        out = P.scale == 0.0f ? 0.0f : P.scale * value;
    } else if (loss == LOSS_KD) {
        const float b1_y = (softcap1(LOAD_S1((uint)y, s, s_cols), P.cap) - R.ms) - R.lss1;
        const float soft = (1.0f - P.alpha) * P.scale;
        out = (P.alpha > 0.0f ? P.alpha * -b1_y : 0.0f) + (soft != 0.0f ? soft * value : 0.0f);
    } else {
        out = P.scale == 0.0f ? 0.0f : P.scale * value;
    }
    stats[RS_MAX_T] = R.mt;
    stats[RS_LOGS_T] = R.lst;
    stats[RS_MAX_S] = R.ms;
    stats[RS_LOGS_S] = R.lss;
    stats[RS_LOGS_S1] = R.lss1;
    stats[RS_AUX] = p2.y;
    stats[RS_G_REF] = U.g_ref;
    stats[RS_H_T] = h_t;
    stats[RS_H_S] = h_s;
    int f = U.teacher_ok ? FLAG_TEACHER_OK : 0;
    if (loss == LOSS_RKL && (S.bad & 8u)) f |= FLAG_NO_GRADIENT;
    if (U.teacher_ok && S.ati == S.asi) f |= FLAG_AGREE;
    if (has_labels && (uint)y == S.asi) f |= FLAG_CORRECT;
    rflags[RF_FLAGS] = f;
    rflags[RF_ARGMAX_T] = U.teacher_ok ? (int)S.ati : -1;
    rflags[RF_ARGMAX_S] = (int)S.asi;
    *loss_out = out;
}

/* Work-items per row (or per part of a split row): the host's team size, a power of two dividing KLCL_WG;
 * a constant 1 where KLCL_WG is 1 (CPU devices), so that those loops keep a fixed stride. */
inline uint team_of(uint team_size)
{
    return KLCL_WG == 1 ? 1u : team_size;
}

/* klcl_rows_<loss>: `team` work-items per row, work-items j team .. (j + 1) team - 1 of a work-group
 * reducing its j-th row (with team = KLCL_WG, one work-group per row). Every work-item runs to the end, whatever its
 * row: a skipped row, or a team past the launch's last row, reads nothing but takes every barrier with the
 * others (no return between barriers: PoCL 3.1 hangs or miscompiles work-groups of 2 when one is taken,
 * even though every work-item takes it alike, and with teams the other rows of the group still have
 * barriers to take). */
inline void rows_body(const int loss, __local float *lf, __local uint *lu, __local float4 *l4, ROW_ARGS)
{
    const uint lid = get_local_id(0), team = team_of(team_size), tid = lid & (team - 1);
    const ulong lrow = get_group_id(0) * (ulong)(KLCL_WG / team) + lid / team;
    const int in_launch = lrow < launch_rows;
    const ulong row = row0 + lrow;
    const float k = M_LOG2E_F * inv_tau;
    const loss_params P = PARAMS_FROM_ARGS;
    /* Whole vectors where both rows have columns; the rest one by one, -inf past a row's width. */
    const uint nvec = min(vocab, min(t_cols, s_cols)) / KLCL_VW;
    int y = -1;
    const int flags = in_launch ? row_skip_flags(row, labels, l_off, has_labels, mask, m_off, has_mask, ignore_index,
                                                 vocab, s_cols, &y)
                                : FLAG_SKIPPED;
    const int used = !(flags & FLAG_SKIPPED);

    /* Logit rows are addressed from the launch's first row (t_off, s_off point there: a chunk of a
     * longer batch, or the caller's buffer); per-row arrays by the row's index in the whole batch. */
    const ulong at = in_launch ? lrow : 0;
    __global const T_ELEM *t = teacher + t_off + at * t_stride;
    __global const S_ELEM *s = student + s_off + at * s_stride;
    /* A gradient on one work-item per row: the student's exact maximum first (student_max), and the
     * passes keep their weights and terms in the gradient's row where the host allows it (keep_exps: an
     * fp32 gradient in a buffer of its own). */
    int exact = 0, keeping = 0;
#if KLCL_WG == 1
    exact = exact_max && used;
#if KLCL_G_DTYPE == 0
    keeping = exact && keep_exps && fuse_grad && in_launch;
#endif
#endif
    const float ms_floor = exact ? student_max(s, nvec, nvec * KLCL_VW, vocab, s_cols, cap) : KLCL_NEG_INF;
    __global G_ELEM *g = grad + g_off + at * g_stride;
    row_state S = pass1(loss, t, s, 0, used ? nvec : 0, nvec * KLCL_VW, used ? vocab : 0, tid, team, t_cols, s_cols,
                        has_teacher, cap, k, ms_floor, (__global float *)g, &keeping);
    S = team_merge(loss, lf, lu, lid, tid, team, S, k);
    const row_setup U = row_prepare(loss, S, t, s, t_cols, s_cols, has_teacher, t_logprob, P);
    float2 p2 = (float2)(0.0f);
    if (NEEDS_PASS2(loss, want_grad)) {
        const int work = used && !U.invalid;
        p2 = team_sum(l4, lid, tid, team,
                      pass2(loss, t, s, 0, work ? nvec : 0, nvec * KLCL_VW, work ? vocab : 0, tid, team, t_cols, s_cols, U.R,
                            U.g_ref, P, (__global float *)g, keeping));
    }
    if (in_launch && tid == 0) {
        __global float *stats = row_stats + row * RS_COUNT;
        __global int *rflags = row_flags + row * RF_COUNT;
        if (used)
            row_write(loss, S, U, p2, y, has_labels, s, s_cols, P, stats, rflags, row_loss + rl_off + row);
        else
            row_write_skipped(flags, stats, rflags, row_loss + rl_off + row);
    }
    /* The gradient in the same launch (fuse_grad), while the row is still in cache: every read of the
     * row above is done before any work-item writes (the gradient may overwrite the student in place).
     * A skipped row gets zeros, an invalid one NaN. */
    if (fuse_grad) {
        barrier(CLK_GLOBAL_MEM_FENCE);
        const int compute = used && !U.invalid && !(loss == LOSS_RKL && (S.bad & 8u));
        if (in_launch && compute && keeping)
            grad_kept(loss, t, s, g, nvec, vocab, t_cols, s_cols, y, U.R, p2.y, U.g_ref, P, inv_denom);
        else if (in_launch) /* at is lrow */
            grad_row(loss, t, s, g, tid, team, vocab, t_cols, s_cols, y, U.R, p2.y, U.g_ref, P, inv_denom, compute,
                     used ? NAN : 0.0f);
    }
}

/* klcl_part_<loss>: one pass over one part of a split row, for rows too few to fill the device. A row's
 * vectors are cut into `parts` contiguous ranges, part p taking [p nvec / parts, (p + 1) nvec / parts)
 * and the last part the scalar columns too; KLCL_WG / team (row, part) units per work-group, unit
 * u = row * parts + part. pass 1 writes each part's row_state to partials[u * STATE_WORDS ...]; pass 2,
 * after klcl_merge has written the row's statistics, writes each part's (value, centred sum) after the
 * launch's pass-1 records. Every work-item runs to the end, as in rows_body. */
inline void part_body(const int loss, __local float *lf, __local uint *lu, __local float4 *l4, ROW_ARGS)
{
    const uint lid = get_local_id(0), team = team_of(team_size), tid = lid & (team - 1);
    const ulong unit = get_group_id(0) * (ulong)(KLCL_WG / team) + lid / team;
    const ulong lrow = unit / parts;
    const uint part = (uint)(unit % parts);
    const int in_launch = lrow < launch_rows;
    const ulong row = row0 + lrow;
    const float k = M_LOG2E_F * inv_tau;
    const loss_params P = PARAMS_FROM_ARGS;
    const uint nvec = min(vocab, min(t_cols, s_cols)) / KLCL_VW;
    int y = -1;
    const int flags = in_launch ? row_skip_flags(row, labels, l_off, has_labels, mask, m_off, has_mask, ignore_index,
                                                 vocab, s_cols, &y)
                                : FLAG_SKIPPED;
    const int used = !(flags & FLAG_SKIPPED);
    const ulong at = in_launch ? lrow : 0;
    __global const T_ELEM *t = teacher + t_off + at * t_stride;
    __global const S_ELEM *s = student + s_off + at * s_stride;
    const uint k0 = (uint)((ulong)part * nvec / parts), k1 = (uint)((ulong)(part + 1) * nvec / parts);
    const uint v1 = part == parts - 1 ? vocab : 0;
    if (pass == 1) {
        int keeping = 0; /* a split row's gradient comes from the gradient kernel */
        row_state S = pass1(loss, t, s, k0, used ? k1 : k0, nvec * KLCL_VW, used ? v1 : 0, tid, team, t_cols, s_cols,
                            has_teacher, cap, k, KLCL_NEG_INF, (__global float *)grad, &keeping);
        S = team_merge(loss, lf, lu, lid, tid, team, S, k);
        if (in_launch && tid == 0) state_store_global(partials + unit * STATE_WORDS, S);
    } else {
        /* The merged row's softmax statistics and reference token, as klcl_merge wrote them. */
        __global const float *stats = row_stats + row * RS_COUNT;
        row_softmax R = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
        float g_ref = 0.0f;
        int work = 0;
        if (in_launch && used) {
            const int f = row_flags[row * RF_COUNT + RF_FLAGS];
            work = !(f & FLAG_INVALID);
            R = softmax_of_stats(stats);
            g_ref = stats[RS_G_REF];
        }
        const float2 p2 = team_sum(l4, lid, tid, team,
                                   pass2(loss, t, s, k0, work ? k1 : k0, nvec * KLCL_VW, work ? v1 : 0, tid, team, t_cols,
                                         s_cols, R, g_ref, P, (__global float *)grad, 0));
        if (in_launch && tid == 0) vstore2(p2, unit, partials + (ulong)launch_rows * parts * STATE_WORDS);
    }
}

/* klcl_merge_<loss>: one work-item per split row. It merges the row's parts in part order (0, 1, ...,
 * with state_merge, as the tree merges work-items), then writes the row's outputs as rows_body does:
 * after pass 1 (pass == 1), with the pass-2 value and sum still 0, and again after pass 2 (pass == 2), with
 * the parts' pass-2 pairs added in part order. No barriers: one work-item per row. */
inline void merge_body(const int loss, ROW_ARGS)
{
    const ulong lrow = get_global_id(0);
    const ulong row = row0 + lrow;
    const float k = M_LOG2E_F * inv_tau;
    const loss_params P = PARAMS_FROM_ARGS;
    int y = -1;
    const int flags = lrow < launch_rows ? row_skip_flags(row, labels, l_off, has_labels, mask, m_off, has_mask,
                                                          ignore_index, vocab, s_cols, &y)
                                         : FLAG_SKIPPED;
    __global float *stats = row_stats + row * RS_COUNT;
    __global int *rflags = row_flags + row * RF_COUNT;
    if (lrow >= launch_rows) {
        /* past the launch's rows: nothing to write */
    } else if (flags & FLAG_SKIPPED) {
        row_write_skipped(flags, stats, rflags, row_loss + rl_off + row);
    } else {
        __global const T_ELEM *t = teacher + t_off + lrow * t_stride;
        __global const S_ELEM *s = student + s_off + lrow * s_stride;
        __global const float *in = partials + lrow * parts * STATE_WORDS;
        row_state S = state_load_global(in);
        for (uint p = 1; p < parts; p++) state_merge(loss, &S, state_load_global(in + p * STATE_WORDS), k);
        const row_setup U = row_prepare(loss, S, t, s, t_cols, s_cols, has_teacher, t_logprob, P);
        float2 p2 = (float2)(0.0f);
        if (pass == 2)
            for (uint p = 0; p < parts; p++)
                p2 += vload2(lrow * parts + p, partials + (ulong)launch_rows * parts * STATE_WORDS);
        row_write(loss, S, U, p2, y, has_labels, s, s_cols, P, stats, rflags, row_loss + rl_off + row);
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
    const row_softmax R = softmax_of_stats(stats);
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

/* Every loss's kernels: the row kernel, the two steps of a split row (its parts, their merge), the
 * gradient. The row and part kernels share their local arrays' shape: the tree's row_state columns and
 * the pass-2 pairs. */
#define KLCL_LOSS_KERNELS(name, id)                                                                    \
    __kernel __attribute__((reqd_work_group_size(KLCL_WG, 1, 1))) void klcl_rows_##name(ROW_ARGS)      \
    {                                                                                                  \
        __local float lf[STATE_FLOATS * KLCL_WG];                                                      \
        __local uint lu[STATE_UINTS * KLCL_WG];                                                        \
        __local float4 l4[KLCL_WG];                                                                    \
        rows_body(id, lf, lu, l4, ROW_ARG_NAMES);                                                      \
    }                                                                                                  \
    __kernel __attribute__((reqd_work_group_size(KLCL_WG, 1, 1))) void klcl_part_##name(ROW_ARGS)      \
    {                                                                                                  \
        __local float lf[STATE_FLOATS * KLCL_WG];                                                      \
        __local uint lu[STATE_UINTS * KLCL_WG];                                                        \
        __local float4 l4[KLCL_WG];                                                                    \
        part_body(id, lf, lu, l4, ROW_ARG_NAMES);                                                      \
    }                                                                                                  \
    __kernel void klcl_merge_##name(ROW_ARGS) { merge_body(id, ROW_ARG_NAMES); }                       \
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
