/* The loss kernels of LOSSES.md. One work-group reduces one row (klcl_rows_*), then an element-wise kernel
 * writes the gradient (klcl_grad_*) from the row's statistics.
 *
 * klcl_rows_<loss>, one work-group of KLCL_WG work-items per row:
 *   pass 1  one read of both rows: running max and sum of exponentials of teacher and student (online
 *           softmax, merged in a fixed tree), argmax of each (ties to the lowest index), non-finite flags;
 *   pass 2  one more read: the row value, the row sum the gradient needs, both entropies (fixed tree).
 * klcl_grad_<loss>, global size (columns, rows): dL/ds_v = dL/dz_v / tau * softcap' * scale / denominator.
 *
 * The gradient rule of LOSSES.md, dL/dz_v = q_v (g_v - sum_u q_u g_u) with g = dL/dq, cancels
 * catastrophically at the student's dominant token when tau is small: both terms are near the same large
 * value. Since sum_u q_u = 1 it equals q_v ((g_v - g_r) + sum_u q_u (g_r - g_u)) for any token r; with r the
 * student's argmax the dominant term drops out of the sum. rkl, jsd, skl, srkl and tvd use that form, with
 * the row sum (RS_AUX) taken in pass 2 and g_r kept in RS_G_REF; kl, soft_ce, ce and kd have closed forms.
 *
 * Every loss is its own kernel, generated from one body with the loss as a compile-time constant. */

#define LOSS_KL 0
#define LOSS_RKL 1
#define LOSS_SOFT_CE 2
#define LOSS_CE 3
#define LOSS_JSD 4
#define LOSS_SKL 5
#define LOSS_SRKL 6
#define LOSS_TVD 7
#define LOSS_KD 8

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

/* Pass-1 partials of one work-item, laid out in local memory as 8 float lanes and 3 uint lanes. */
#define LF(i) lf[(i) * KLCL_WG + lid]
#define LU(i) lu[(i) * KLCL_WG + lid]

/* g_u = dL/dq_u of the losses whose gradient is taken in the centred form, up to a constant that cancels.
 * xt, xs: softcapped logits; a, b: log p, log q. rkl's g = log q - log p = (xs - xt)/tau + const is formed
 * from the logits, which keeps it exact where log p and log q are both far below 0. */
inline float centered_g(const int loss, float xt, float xs, float a, float b, float inv_tau, float beta,
                        float lambda, float lwa, float lwb)
{
    switch (loss) {
    case LOSS_RKL: return (xs - xt) * inv_tau;
    case LOSS_JSD: return (1.0f - beta) * (b - log_mix(a, b, lwa, lwb));
    case LOSS_SKL: return a == KLCL_NEG_INF ? 0.0f : -(1.0f - lambda) * exp(a - log_mix(a, b, lwa, lwb));
        /* (used at the reference token only: q_r >= 1/V keeps p/m finite there; see centered_qg) */
    case LOSS_SRKL: {
        const float r = b - log_mix(a, b, lwa, lwb); /* log(q/m) */
        return r - exp(lwb + r);                     /* lambda q/m, exactly 0 at lambda = 0 */
    }
    case LOSS_TVD: {
        const float p = exp(a), q = exp(b);
        return 0.5f * (float)((q > p) - (q < p));
    }
    default: return 0.0f;
    }
}

/* q_u g_u: skl's g = -(1 - lambda) p/m overflows where q (and so m) is tiny, while q g never does. */
inline float centered_qg(const int loss, float xt, float xs, float a, float b, float q, float inv_tau,
                         float beta, float lambda, float lwa, float lwb)
{
    if (loss == LOSS_SKL)
        return (a == KLCL_NEG_INF || q == 0.0f) ? 0.0f
                                                : -(1.0f - lambda) * exp(a + b - log_mix(a, b, lwa, lwb));
    return q * centered_g(loss, xt, xs, a, b, inv_tau, beta, lambda, lwa, lwb);
}

inline void rows_body(const int loss, __local float *lf, __local uint *lu, __local float4 *l4, ROW_ARGS)
{
    const uint lid = get_local_id(0);
    const ulong row = row0 + get_group_id(0);
    const float k = M_LOG2E_F * inv_tau;
    const int uses_teacher = loss != LOSS_CE;
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

    /* Pass 1: softmax statistics and argmax. */
    float mt = KLCL_NEG_INF, st = 0.0f, ms = KLCL_NEG_INF, ss = 0.0f, ms1 = KLCL_NEG_INF, ss1 = 0.0f;
    float atv = KLCL_NEG_INF, asv = KLCL_NEG_INF;
    uint ati = UINT_MAX, asi = UINT_MAX, bad = 0;
    for (uint v = lid; v < vocab; v += KLCL_WG) {
        float rs = s[v];
        bad |= (isnan(rs) || rs == INFINITY) ? 2u : 0u;
        if (rs > asv) {
            asv = rs;
            asi = v;
        }
        float xs = softcap_logit(rs, cap);
        online_add(&ms, &ss, xs, k);
        if (loss == LOSS_KD) online_add(&ms1, &ss1, xs, M_LOG2E_F);
        if (has_teacher) {
            float rt = t[v];
            bad |= (isnan(rt) || rt == INFINITY) ? 1u : 0u;
            if (rt > atv) {
                atv = rt;
                ati = v;
            }
            online_add(&mt, &st, softcap_logit(rt, cap), k);
        }
    }
    LF(0) = mt; LF(1) = st; LF(2) = ms; LF(3) = ss; LF(4) = ms1; LF(5) = ss1; LF(6) = atv; LF(7) = asv;
    LU(0) = ati; LU(1) = asi; LU(2) = bad;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (uint off = KLCL_WG / 2; off > 0; off >>= 1) {
        if (lid < off) {
            /* OpenCL C 1.2 has no generic address space: merge in private copies, store back. */
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
    mt = lf[0]; st = lf[KLCL_WG]; ms = lf[2 * KLCL_WG]; ss = lf[3 * KLCL_WG]; ss1 = lf[5 * KLCL_WG];
    ati = lu[0]; asi = lu[KLCL_WG]; bad = lu[2 * KLCL_WG];

    /* Validity from the raw maxima: softcap maps -inf to -c, so the capped maxima cannot tell. */
    atv = lf[6 * KLCL_WG];
    asv = lf[7 * KLCL_WG];
    const int teacher_ok = has_teacher && !(bad & 1u) && atv != KLCL_NEG_INF;
    const int invalid = (bad & 2u) || asv == KLCL_NEG_INF || (uses_teacher && !teacher_ok);
    const float lst = log(st), lss = log(ss), lss1 = log(ss1);
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

    const int centered = loss == LOSS_RKL || loss == LOSS_JSD || loss == LOSS_SKL || loss == LOSS_SRKL ||
                         loss == LOSS_TVD;
    float g_ref = 0.0f;
    if (centered) {
        const float xt = softcap_logit(t[asi], cap), xs = softcap_logit(s[asi], cap);
        const float a = (xt - mt) * inv_tau - lst, b = (xs - ms) * inv_tau - lss;
        g_ref = centered_g(loss, xt, xs, a, b, inv_tau, beta, lambda, lwa, lwb);
    }

    /* Pass 2: row value and auxiliary sum (see the table of LOSSES.md), entropies. */
    float4 acc = (float4)(0.0f); /* loss, aux, H(p), H(q) */
    for (uint v = lid; v < vocab; v += KLCL_WG) {
        float xs = softcap_logit(s[v], cap);
        float b = (xs - ms) * inv_tau - lss;
        float q = exp(b);
        float a = KLCL_NEG_INF, p = 0.0f;
        if (teacher_ok) {
            a = (softcap_logit(t[v], cap) - mt) * inv_tau - lst;
            p = exp(a);
        }
        float lm;
        switch (loss) {
        case LOSS_KL:
        case LOSS_KD: acc.x += xlogratio(p, a, b); break;
        case LOSS_RKL: acc.x += xlogratio(q, b, a); break;
        case LOSS_SOFT_CE: acc.x += xlogratio(p, 0.0f, b); break;
        case LOSS_CE: acc.y += eps > 0.0f ? b : 0.0f; break; /* sum of log q, for smoothing only */
        case LOSS_JSD:
            lm = log_mix(a, b, lwa, lwb);
            acc.x += beta * xlogratio(p, a, lm) + (1.0f - beta) * xlogratio(q, b, lm);
            break;
        case LOSS_SKL: acc.x += xlogratio(p, a, log_mix(a, b, lwa, lwb)); break;
        case LOSS_SRKL: acc.x += xlogratio(q, b, log_mix(a, b, lwa, lwb)); break;
        case LOSS_TVD: acc.x += 0.5f * fabs(p - q); break;
        }
        if (centered && q > 0.0f) {
            const float xt = softcap_logit(t[v], cap);
            acc.y += loss == LOSS_SKL
                         ? q * g_ref - centered_qg(loss, xt, xs, a, b, q, inv_tau, beta, lambda, lwa, lwb)
                         : q * (g_ref - centered_g(loss, xt, xs, a, b, inv_tau, beta, lambda, lwa, lwb));
        }
        acc.z -= xlogratio(p, a, 0.0f);
        acc.w -= xlogratio(q, b, 0.0f);
    }
    l4[lid] = acc;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (uint off = KLCL_WG / 2; off > 0; off >>= 1) {
        if (lid < off) l4[lid] += l4[lid + off];
        barrier(CLK_LOCAL_MEM_FENCE);
    }

    if (lid == 0) {
        acc = l4[0];
        float value = acc.x, out;
        if (loss == LOSS_CE) {
            float lse_s = ms * inv_tau + lss;
            float b_y = (softcap_logit(s[y], cap) - ms) * inv_tau - lss;
            /* A term whose weight is exactly 0 is left out: never 0 * inf. */
            value = zl > 0.0f ? zl * lse_s * lse_s : 0.0f;
            if (eps < 1.0f) value -= (1.0f - eps) * b_y;
            if (eps > 0.0f) value -= eps / (float)vocab * acc.y;
            out = scale == 0.0f ? 0.0f : scale * value;
        } else if (loss == LOSS_KD) {
            float b1_y = (softcap_logit(s[y], cap) - ms) - lss1;
            float soft = (1.0f - alpha) * scale;
            out = (alpha > 0.0f ? alpha * -b1_y : 0.0f) + (soft != 0.0f ? soft * value : 0.0f);
        } else {
            out = scale == 0.0f ? 0.0f : scale * value;
        }
        stats[RS_MAX_T] = mt;
        stats[RS_LOGS_T] = lst;
        stats[RS_MAX_S] = ms;
        stats[RS_LOGS_S] = lss;
        stats[RS_LOGS_S1] = lss1;
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
    __global const float *stats = row_stats + row * RS_COUNT;
    const int flags = row_flags[row * RF_COUNT + RF_FLAGS];
    __global float *g = grad + g_off + row * g_stride;

    if (flags & (FLAG_SKIPPED | FLAG_INVALID)) {
        const float fill = (flags & FLAG_SKIPPED) ? 0.0f : NAN;
        for (uint v = get_global_id(0); v < vocab; v += get_global_size(0)) g[v] = fill;
        return;
    }
    __global const float *t = teacher + t_off + row * t_stride;
    __global const float *s = student + s_off + row * s_stride;
    const float mt = stats[RS_MAX_T], lst = stats[RS_LOGS_T], ms = stats[RS_MAX_S];
    const float lss = stats[RS_LOGS_S], lss1 = stats[RS_LOGS_S1];
    const float aux = stats[RS_AUX], g_ref = stats[RS_G_REF];
    const int y = has_labels ? labels[l_off + row] : -1;
    const float lse_s = ms * inv_tau + lss;

    for (uint v = get_global_id(0); v < vocab; v += get_global_size(0)) {
        const float rs = s[v];
        const float xs = softcap_logit(rs, cap);
        const float b = (xs - ms) * inv_tau - lss;
        const float q = exp(b);
        float a = KLCL_NEG_INF, p = 0.0f;
        if (loss != LOSS_CE) {
            a = (softcap_logit(t[v], cap) - mt) * inv_tau - lst;
            p = exp(a);
        }
        const float onehot = (int)v == y ? 1.0f : 0.0f;
        float dz, ds;
        if (loss == LOSS_RKL || loss == LOSS_JSD || loss == LOSS_SKL || loss == LOSS_SRKL || loss == LOSS_TVD) {
            const float xt = softcap_logit(t[v], cap);
            if (q == 0.0f)
                dz = 0.0f;
            else if (loss == LOSS_SKL)
                dz = centered_qg(loss, xt, xs, a, b, q, inv_tau, beta, lambda, lwa, lwb) - q * g_ref + q * aux;
            else
                dz = q * ((centered_g(loss, xt, xs, a, b, inv_tau, beta, lambda, lwa, lwb) - g_ref) + aux);
        } else if (loss == LOSS_CE) {
            /* q - onehot is formed in fp32 before anything else touches it. */
            dz = (q - (1.0f - eps) * onehot) - eps / (float)vocab + 2.0f * zl * lse_s * q;
        } else {
            dz = q - p; /* kl, soft_ce, and kd's soft part */
        }
        if (loss == LOSS_KD) {
            const float q1 = exp((xs - ms) - lss1);
            ds = alpha * (q1 - onehot) + (1.0f - alpha) * scale * dz * inv_tau;
        } else {
            ds = scale * dz * inv_tau;
        }
        if (cap > 0.0f) {
            const float th = tanh(rs / cap);
            ds *= 1.0f - th * th;
        }
        g[v] = ds * inv_denom;
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
