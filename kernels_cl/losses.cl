/* The loss kernels of LOSSES.md. One work-group reduces one row (klcl_rows_*), then an element-wise kernel
 * writes the gradient (klcl_grad_*) from the row's statistics.
 *
 * klcl_rows_<loss>, one work-group of KLCL_WG work-items per row:
 *   pass 1  one read of both rows: running max and sum of exponentials of teacher and student (online
 *           softmax: one running max per work-item, one exponential per logit), argmax of each (ties to the
 *           lowest index), non-finite flags; merged across work-items in a fixed tree;
 *   pass 2  one more read: the row value, the row sum the gradient needs, both entropies (fixed tree).
 * klcl_grad_<loss>, global size (columns, rows): dL/ds_v = dL/dz_v / tau * softcap' * scale / denominator.
 *
 * The gradient rule of LOSSES.md, dL/dz_v = q_v (g_v - sum_u q_u g_u) with g = dL/dq, cancels
 * catastrophically at the student's dominant token when tau is small: both terms are near the same large
 * value. Since sum_u q_u = 1 it equals q_v ((g_v - g_r) + sum_u q_u (g_r - g_u)) for any token r; with r the
 * student's argmax the dominant term drops out of the sum. rkl, jsd, skl, srkl and tvd use that form, with
 * the row sum (RS_AUX) taken in pass 2 and g_r kept in RS_G_REF; kl, soft_ce, ce and kd have closed forms.
 *
 * Every loss is its own kernel, generated from one body with the loss as a compile-time constant; the
 * per-logit math is written once (KLCL_LOSS_HELPERS) for 8-wide vectors and for the scalar tail. */

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
            const T qg = (a == (T)(KLCL_NEG_INF)) | (q == (T)(0.0f))                                     \
                             ? (T)(0.0f)                                                                 \
                             : -(1.0f - P.lambda) * exp(a + b - log_mix##S(a, b, P.lwa, P.lwb));         \
            return q * g_ref - qg;                                                                       \
        }                                                                                                \
        return q * (g_ref - centered_g##S(loss, xt, xs, a, b, P));                                       \
    }                                                                                                    \
    /* Pass 2 for one group of logits: adds the loss terms, the centred row sum and both entropies. */   \
    inline void pass2_##S(const int loss, int teacher_ok, T rt, T rs, row_softmax R, float g_ref,        \
                          loss_params P, T *l, T *aux, T *ht, T *hs)                                     \
    {                                                                                                    \
        const T xs = softcap##S(rs, P.cap);                                                              \
        const T b = (xs - R.ms) * P.inv_tau - R.lss, q = exp(b);                                         \
        T xt = (T)(0.0f), a = (T)(KLCL_NEG_INF), p = (T)(0.0f);                                          \
        if (teacher_ok) {                                                                                \
            xt = softcap##S(rt, P.cap);                                                                  \
            a = (xt - R.mt) * P.inv_tau - R.lst;                                                         \
            p = exp(a);                                                                                  \
        }                                                                                                \
        switch (loss) {                                                                                  \
        case LOSS_KL:                                                                                    \
        case LOSS_KD: *l += xlogratio##S(p, a, b); break;                                                \
        case LOSS_RKL: *l += xlogratio##S(q, b, a); break;                                               \
        case LOSS_SOFT_CE: *l += xlogratio##S(p, (T)(0.0f), b); break;                                   \
        case LOSS_CE: *aux += P.eps > 0.0f ? b : (T)(0.0f); break; /* sum log q, for smoothing only */   \
        case LOSS_JSD: {                                                                                 \
            const T lm = log_mix##S(a, b, P.lwa, P.lwb);                                                 \
            *l += P.beta * xlogratio##S(p, a, lm) + (1.0f - P.beta) * xlogratio##S(q, b, lm);            \
            break;                                                                                       \
        }                                                                                                \
        case LOSS_SKL: *l += xlogratio##S(p, a, log_mix##S(a, b, P.lwa, P.lwb)); break;                  \
        case LOSS_SRKL: *l += xlogratio##S(q, b, log_mix##S(a, b, P.lwa, P.lwb)); break;                 \
        case LOSS_TVD: *l += 0.5f * fabs(p - q); break;                                                  \
        }                                                                                                \
        if (IS_CENTERED(loss))                                                                           \
            *aux += q > (T)(0.0f) ? centered_term##S(loss, xt, xs, a, b, q, g_ref, P) : (T)(0.0f);       \
        *ht -= xlogratio##S(p, a, (T)(0.0f));                                                            \
        *hs -= xlogratio##S(q, b, (T)(0.0f));                                                            \
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
KLCL_LOSS_HELPERS(float8, int8, 8)

#define ROW_ARGS                                                                                       \
    __global const float *teacher, ulong t_off, ulong t_stride, __global const float *student,          \
        ulong s_off, ulong s_stride, __global const int *labels, ulong l_off, int has_labels,           \
        __global const uchar *mask, ulong m_off, int has_mask, uint vocab, int has_teacher,             \
        int ignore_index, float inv_tau, float cap, float scale, float alpha, float beta, float lambda, \
        float eps, float zl, float lwa, float lwb, __global float *row_loss, ulong rl_off,              \
        __global float *row_stats, __global int *row_flags, ulong row0

#define ROW_ARG_NAMES                                                                                  \
    teacher, t_off, t_stride, student, s_off, s_stride, labels, l_off, has_labels, mask, m_off,         \
        has_mask, vocab, has_teacher, ignore_index, inv_tau, cap, scale, alpha, beta, lambda, eps, zl,  \
        lwa, lwb, row_loss, rl_off, row_stats, row_flags, row0

#define PARAMS_FROM_ARGS {inv_tau, cap, scale, alpha, beta, lambda, eps, zl, lwa, lwb, vocab}

/* Adds 8 logits to a running (max, 8 lane sums) pair sharing one maximum: one exponential per logit,
 * one more per group that raises the maximum. */
inline void online_add8(float *m, float8 *s, float8 x, float k)
{
    const float cm = hmax8(x);
    if (cm > *m) {
        *s *= exp2((*m - cm) * k);
        *m = cm;
    }
    if (*m != KLCL_NEG_INF) *s += exp2((x - *m) * k);
}

/* Lane-wise argmax (ties keep the earlier, lower index), folded into a scalar (value, index) pair. */
inline void argmax_fold8(float *val, uint *idx, float8 vals, uint8 idxs)
{
    float v[8];
    uint i[8];
    vstore8(vals, 0, v);
    vstore8(idxs, 0, i);
    for (int j = 0; j < 8; j++) argmax_merge(val, idx, v[j], i[j]);
}

inline void rows_body(const int loss, __local float *lf, __local uint *lu, __local float4 *l4, ROW_ARGS)
{
    const uint lid = get_local_id(0);
    const ulong row = row0 + get_group_id(0);
    const float k = M_LOG2E_F * inv_tau;
    const loss_params P = PARAMS_FROM_ARGS;
    const int uses_teacher = loss != LOSS_CE;
    const uint nvec = vocab / 8;
    __global float *stats = row_stats + row * RS_COUNT;
    __global int *rflags = row_flags + row * RF_COUNT;

    int flags = 0, y = -1;
    if (has_mask && mask[m_off + row] == 0) flags |= FLAG_SKIPPED;
    if (has_labels) {
        y = labels[l_off + row];
        if (y == ignore_index)
            flags |= FLAG_SKIPPED;
        else if (y < 0 || (uint)y >= vocab)
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
        return;
    }

    __global const float *t = teacher + t_off + row * t_stride;
    __global const float *s = student + s_off + row * s_stride;

    /* Pass 1: softmax statistics and argmax, 8 logits at a time, then the tail one by one. */
    float mt = KLCL_NEG_INF, ms = KLCL_NEG_INF;
    float8 st8 = (float8)(0.0f), ss8 = (float8)(0.0f), ss18 = (float8)(0.0f);
    float8 atv8 = (float8)(KLCL_NEG_INF), asv8 = (float8)(KLCL_NEG_INF);
    uint8 ati8 = (uint8)(UINT_MAX), asi8 = (uint8)(UINT_MAX);
    const uint8 lane = (uint8)(0, 1, 2, 3, 4, 5, 6, 7);
    uint bad = 0;
    for (uint kk = lid; kk < nvec; kk += KLCL_WG) {
        const uint8 idx = (uint8)(kk * 8) + lane;
        const float8 rs = vload8(kk, s);
        bad |= any(isnan(rs) | (rs == (float8)(INFINITY))) ? 2u : 0u;
        const int8 sup = rs > asv8;
        asv8 = select(asv8, rs, sup);
        asi8 = select(asi8, idx, as_uint8(sup));
        /* kd's hard term needs the sum at tau = 1 too, against the same maximum. */
        const float8 xs = softcap8(rs, cap);
        if (loss == LOSS_KD) {
            const float cm = hmax8(xs);
            if (cm > ms) ss18 *= exp2((ms - cm) * M_LOG2E_F);
            if (fmax(ms, cm) != KLCL_NEG_INF) ss18 += exp2((xs - fmax(ms, cm)) * M_LOG2E_F);
        }
        online_add8(&ms, &ss8, xs, k);
        if (has_teacher) {
            const float8 rt = vload8(kk, t);
            bad |= any(isnan(rt) | (rt == (float8)(INFINITY))) ? 1u : 0u;
            const int8 tup = rt > atv8;
            atv8 = select(atv8, rt, tup);
            ati8 = select(ati8, idx, as_uint8(tup));
            online_add8(&mt, &st8, softcap8(rt, cap), k);
        }
    }
    float st = hsum8(st8), ss = hsum8(ss8), ss1 = hsum8(ss18), ms1 = ms;
    float atv = KLCL_NEG_INF, asv = KLCL_NEG_INF;
    uint ati = UINT_MAX, asi = UINT_MAX;
    argmax_fold8(&asv, &asi, asv8, asi8);
    argmax_fold8(&atv, &ati, atv8, ati8);
    for (uint v = nvec * 8 + lid; v < vocab; v += KLCL_WG) {
        const float rs = s[v];
        bad |= (isnan(rs) || rs == INFINITY) ? 2u : 0u;
        argmax_merge(&asv, &asi, rs, v);
        const float xs = softcap1(rs, cap);
        online_add(&ms, &ss, xs, k);
        if (loss == LOSS_KD) online_add(&ms1, &ss1, xs, M_LOG2E_F);
        if (has_teacher) {
            const float rt = t[v];
            bad |= (isnan(rt) || rt == INFINITY) ? 1u : 0u;
            argmax_merge(&atv, &ati, rt, v);
            online_add(&mt, &st, softcap1(rt, cap), k);
        }
    }

    /* Merge the work-items' partials in a fixed tree: 8 float lanes and 3 uint lanes in local memory.
     * OpenCL C 1.2 has no generic address space, so each step merges private copies and stores back. */
    lf[0 * KLCL_WG + lid] = mt;
    lf[1 * KLCL_WG + lid] = st;
    lf[2 * KLCL_WG + lid] = ms;
    lf[3 * KLCL_WG + lid] = ss;
    lf[4 * KLCL_WG + lid] = ms1;
    lf[5 * KLCL_WG + lid] = ss1;
    lf[6 * KLCL_WG + lid] = atv;
    lf[7 * KLCL_WG + lid] = asv;
    lu[0 * KLCL_WG + lid] = ati;
    lu[1 * KLCL_WG + lid] = asi;
    lu[2 * KLCL_WG + lid] = bad;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (uint off = KLCL_WG / 2; off > 0; off >>= 1) {
        if (lid < off) {
            const uint o = lid + off;
            float x[8], z[8];
            uint u[3], w[3];
            for (int i = 0; i < 8; i++) {
                x[i] = lf[i * KLCL_WG + lid];
                z[i] = lf[i * KLCL_WG + o];
            }
            for (int i = 0; i < 3; i++) {
                u[i] = lu[i * KLCL_WG + lid];
                w[i] = lu[i * KLCL_WG + o];
            }
            online_merge(&x[0], &x[1], z[0], z[1], k);
            online_merge(&x[2], &x[3], z[2], z[3], k);
            if (loss == LOSS_KD) online_merge(&x[4], &x[5], z[4], z[5], M_LOG2E_F);
            argmax_merge(&x[6], &u[0], z[6], w[0]);
            argmax_merge(&x[7], &u[1], z[7], w[1]);
            u[2] |= w[2];
            for (int i = 0; i < 8; i++) lf[i * KLCL_WG + lid] = x[i];
            for (int i = 0; i < 3; i++) lu[i * KLCL_WG + lid] = u[i];
        }
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    /* ms1 equals ms exactly (the maximum of the same values), so lss1 is stored against ms. */
    row_softmax R;
    R.mt = lf[0];
    R.ms = lf[2 * KLCL_WG];
    st = lf[KLCL_WG];
    ss = lf[3 * KLCL_WG];
    ss1 = lf[5 * KLCL_WG];
    atv = lf[6 * KLCL_WG];
    asv = lf[7 * KLCL_WG];
    ati = lu[0];
    asi = lu[KLCL_WG];
    bad = lu[2 * KLCL_WG];

    /* Validity from the raw maxima: softcap maps -inf to -c, so the capped maxima cannot tell. */
    const int teacher_ok = has_teacher && !(bad & 1u) && atv != KLCL_NEG_INF;
    const int invalid = (bad & 2u) || asv == KLCL_NEG_INF || (uses_teacher && !teacher_ok);
    R.lst = log(st);
    R.lss = log(ss);
    R.lss1 = log(ss1);
    if (invalid) {
        if (lid == 0) {
            for (int i = 0; i < RS_COUNT; i++) stats[i] = NAN;
            rflags[RF_FLAGS] = FLAG_INVALID | (teacher_ok ? FLAG_TEACHER_OK : 0);
            rflags[RF_ARGMAX_T] = -1;
            rflags[RF_ARGMAX_S] = -1;
            row_loss[rl_off + row] = NAN;
        }
        return;
    }

    float g_ref = 0.0f;
    if (IS_CENTERED(loss)) {
        const float xt = softcap1(t[asi], cap), xs = softcap1(s[asi], cap);
        g_ref = centered_g1(loss, xt, xs, (xt - R.mt) * inv_tau - R.lst, (xs - R.ms) * inv_tau - R.lss, P);
    }

    /* Pass 2: row value, the centred row sum, entropies (see the table of LOSSES.md). */
    float8 l8 = (float8)(0.0f), aux8 = (float8)(0.0f), ht8 = (float8)(0.0f), hs8 = (float8)(0.0f);
    for (uint kk = lid; kk < nvec; kk += KLCL_WG) {
        const float8 rt = has_teacher ? vload8(kk, t) : (float8)(0.0f);
        pass2_8(loss, teacher_ok, rt, vload8(kk, s), R, g_ref, P, &l8, &aux8, &ht8, &hs8);
    }
    float l1 = hsum8(l8), aux1 = hsum8(aux8), ht1 = hsum8(ht8), hs1 = hsum8(hs8);
    for (uint v = nvec * 8 + lid; v < vocab; v += KLCL_WG)
        pass2_1(loss, teacher_ok, has_teacher ? t[v] : 0.0f, s[v], R, g_ref, P, &l1, &aux1, &ht1, &hs1);
    l4[lid] = (float4)(l1, aux1, ht1, hs1);
    barrier(CLK_LOCAL_MEM_FENCE);
    for (uint off = KLCL_WG / 2; off > 0; off >>= 1) {
        if (lid < off) l4[lid] += l4[lid + off];
        barrier(CLK_LOCAL_MEM_FENCE);
    }

    if (lid == 0) {
        const float4 acc = l4[0];
        float value = acc.x, out;
        if (loss == LOSS_CE) {
            const float lse_s = R.ms * inv_tau + R.lss;
            const float b_y = (softcap1(s[y], cap) - R.ms) * inv_tau - R.lss;
            /* A term whose weight is exactly 0 is left out: never 0 * inf. */
            value = zl > 0.0f ? zl * lse_s * lse_s : 0.0f;
            if (eps < 1.0f) value -= (1.0f - eps) * b_y;
            if (eps > 0.0f) value -= eps / (float)vocab * acc.y;
            out = scale == 0.0f ? 0.0f : scale * value;
        } else if (loss == LOSS_KD) {
            const float b1_y = (softcap1(s[y], cap) - R.ms) - R.lss1;
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
        stats[RS_AUX] = acc.y;
        stats[RS_G_REF] = g_ref;
        stats[RS_H_T] = acc.z;
        stats[RS_H_S] = acc.w;
        int f = teacher_ok ? FLAG_TEACHER_OK : 0;
        if (teacher_ok && ati == asi) f |= FLAG_AGREE;
        if (has_labels && (uint)y == asi) f |= FLAG_CORRECT;
        rflags[RF_FLAGS] = f;
        rflags[RF_ARGMAX_T] = teacher_ok ? (int)ati : -1;
        rflags[RF_ARGMAX_S] = (int)asi;
        row_loss[rl_off + row] = out;
    }
}

#define GRAD_ARGS                                                                                      \
    __global const float *teacher, ulong t_off, ulong t_stride, __global const float *student,          \
        ulong s_off, ulong s_stride, __global const int *labels, ulong l_off, int has_labels,           \
        uint vocab, float inv_tau, float cap, float scale, float alpha, float beta, float lambda,       \
        float eps, float zl, float lwa, float lwb, float inv_denom, __global const float *row_stats,    \
        __global const int *row_flags, ulong row0, __global float *grad, ulong g_off, ulong g_stride

#define GRAD_ARG_NAMES                                                                                 \
    teacher, t_off, t_stride, student, s_off, s_stride, labels, l_off, has_labels, vocab, inv_tau,      \
        cap, scale, alpha, beta, lambda, eps, zl, lwa, lwb, inv_denom, row_stats, row_flags, row0,      \
        grad, g_off, g_stride

inline void grad_body(const int loss, GRAD_ARGS)
{
    const ulong row = row0 + get_global_id(1);
    const uint gid = get_global_id(0), gsize = get_global_size(0), nvec = vocab / 8;
    __global const float *stats = row_stats + row * RS_COUNT;
    const int flags = row_flags[row * RF_COUNT + RF_FLAGS];
    __global float *g = grad + g_off + row * g_stride;

    if (flags & (FLAG_SKIPPED | FLAG_INVALID)) {
        const float fill = (flags & FLAG_SKIPPED) ? 0.0f : NAN;
        for (uint kk = gid; kk < nvec; kk += gsize) vstore8((float8)(fill), kk, g);
        for (uint v = nvec * 8 + gid; v < vocab; v += gsize) g[v] = fill;
        return;
    }
    __global const float *t = teacher + t_off + row * t_stride;
    __global const float *s = student + s_off + row * s_stride;
    const loss_params P = PARAMS_FROM_ARGS;
    row_softmax R;
    R.mt = stats[RS_MAX_T];
    R.lst = stats[RS_LOGS_T];
    R.ms = stats[RS_MAX_S];
    R.lss = stats[RS_LOGS_S];
    R.lss1 = stats[RS_LOGS_S1];
    const float aux = stats[RS_AUX], g_ref = stats[RS_G_REF];
    const int y = has_labels ? labels[l_off + row] : -1;
    const int8 lane = (int8)(0, 1, 2, 3, 4, 5, 6, 7);

    for (uint kk = gid; kk < nvec; kk += gsize) {
        const float8 rt = loss != LOSS_CE ? vload8(kk, t) : (float8)(0.0f);
        const float8 ds = grad_8(loss, rt, vload8(kk, s), (int8)(kk * 8) + lane, y, R, aux, g_ref, P);
        vstore8(ds * inv_denom, kk, g);
    }
    for (uint v = nvec * 8 + gid; v < vocab; v += gsize) {
        const float rt = loss != LOSS_CE ? t[v] : 0.0f;
        g[v] = grad_1(loss, rt, s[v], (int)v, y, R, aux, g_ref, P) * inv_denom;
    }
}

#define KLCL_LOSS_KERNELS(name, id)                                                                    \
    __kernel __attribute__((reqd_work_group_size(KLCL_WG, 1, 1))) void klcl_rows_##name(ROW_ARGS)      \
    {                                                                                                  \
        __local float lf[8 * KLCL_WG];                                                                 \
        __local uint lu[3 * KLCL_WG];                                                                  \
        __local float4 l4[KLCL_WG];                                                                    \
        rows_body(id, lf, lu, l4, ROW_ARG_NAMES);                                                      \
    }                                                                                                  \
    __kernel void klcl_grad_##name(GRAD_ARGS) { grad_body(id, GRAD_ARG_NAMES); }

KLCL_LOSS_KERNELS(kl, LOSS_KL)
KLCL_LOSS_KERNELS(rkl, LOSS_RKL)
KLCL_LOSS_KERNELS(soft_ce, LOSS_SOFT_CE)
KLCL_LOSS_KERNELS(ce, LOSS_CE)
KLCL_LOSS_KERNELS(jsd, LOSS_JSD)
KLCL_LOSS_KERNELS(skl, LOSS_SKL)
KLCL_LOSS_KERNELS(srkl, LOSS_SRKL)
KLCL_LOSS_KERNELS(tvd, LOSS_TVD)
KLCL_LOSS_KERNELS(kd, LOSS_KD)
