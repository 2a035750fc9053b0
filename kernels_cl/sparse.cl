/* Sparse (top-k) teacher: LOSSES.md, "Sparse teacher". The teacher of a row is k token indices K and their
 * log-probabilities lp; the student is a dense row of logits. Both policies are one computation over k + 1
 * categories, the k tokens and a bucket for every other token:
 *   teacher  l_i = lp_i, l_tail = log max(0, 1 - sum_i exp(lp_i)) (tail policy, k < V) or -inf (renorm,
 *            or k = V: the bucket holds no token); p_c = exp(l_c / tau) / sum_c' exp(l_c' / tau);
 *   student  Q_i = q_{K_i}, Q_tail = sum_{v not in K} q_v, q = softmax(softcap(s) / tau) over V;
 *   loss     the dense loss over the categories (renorm's p = 0 outside K gives the same value for every
 *            supported loss token by token or bucketed: each term is 0 or linear in q_v there);
 *   gradient dL/dz_v = q_v (G_c(v) - sum_c Q_c G_c), G_c = dL/dQ_c, c(v) the category of token v.
 *
 * klcl_sparse_rows, one work-group of KLCL_WG work-items per row:
 *   1  the k indices are range-checked and sorted in local memory (bitonic), which finds repeats and lets
 *      the dense pass tell the tokens of K from the others by walking the sorted list;
 *   2  one read of the student row, as in losses.cl (8-wide loads, blocks of fp32 lanes folded into acc_t,
 *      fixed merge tree): max m and S = sum exp((x - m)/tau) with the entropy's sum, the argmax, and the
 *      bucket's own max mo and O = sum_{v not in K} exp((x - mo)/tau). Q_tail is summed directly over the
 *      tokens outside K against its own maximum, never formed as 1 - sum_K q (which cancels when K holds
 *      nearly all of the mass) nor as S - sum_K (which loses it to rounding and underflow):
 *      log Q_tail = (mo - m)/tau + log O - log S, exact to the rounding of O's terms;
 *   3  the k teacher terms (normaliser, entropy), then the k loss terms and the centred gradient sum, in
 *      acc_t, fixed tree; the bucket's terms are added once.
 * klcl_sparse_grad_dense writes every token of a row as if it were outside K:
 *   dz_v = C1 q_v + C2 q_v / Q_tail (kl, soft_ce: C1 = 1, C2 = -p_tail; the others: C1 from the centred
 *   sum, C2 = 0); klcl_sparse_grad_topk then overwrites the k entries (distinct tokens, so no two
 *   work-items write one place). Launched in that order on one in-order queue.
 *
 * The centred form of losses.cl is kept for rkl, jsd and tvd: dz_v = q_v ((G_c(v) - G_r) + aux), aux =
 * sum_c Q_c (G_r - G_c), with r the category of the student's argmax. */

#ifdef KLCL_HAS_FP64
#pragma OPENCL EXTENSION cl_khr_fp64 : enable
typedef double sp_acc;
#else
typedef float sp_acc;
#endif

/* Loss ids (klcl_loss) that the sparse kernels serve. */
#define SP_KL 0
#define SP_RKL 1
#define SP_SOFT_CE 2
#define SP_JSD 4
#define SP_TVD 7

#define SP_RENORM 0
#define SP_TAIL 1

#define SP_K_MAX 1024   /* KLCL_SPARSE_K_MAX */
#define SP_BLOCK 32     /* vectors per fp32 block before folding into sp_acc */

/* Per-row statistics (host/sparse.c mirrors these). */
#define SS_MS 0    /* student max of the softcapped logits */
#define SS_LSS 1   /* log S */
#define SS_MO 2    /* max over the tokens outside K (-inf: none with mass) */
#define SS_LSO 3   /* log O */
#define SS_C1 4    /* gradient of a token outside K: dz = C1 q + C2 q / Q_tail */
#define SS_C2 5
#define SS_MT 6    /* teacher max over the categories */
#define SS_LST 7   /* log of the teacher's sum at tau */
#define SS_GREF 8  /* G at the reference category, up to the row constant (centred losses) */
#define SS_AUX 9   /* sum_c Q_c (G_r - G_c) */
#define SS_H_T 10
#define SS_H_S 11
#define SS_COUNT 12

/* Flags beyond common.cl's FLAG_*: the row's indices are out of range, or repeat. The call fails. */
#define SP_FLAG_RANGE 128
#define SP_FLAG_REPEAT 256

#define SP_IS_CENTERED(loss) ((loss) == SP_RKL || (loss) == SP_JSD || (loss) == SP_TVD)

/* The row's teacher and student constants every category term needs. */
typedef struct sp_row {
    float ms, lss, mo, lso, mt, lst, l_tail, inv_tau, beta, lwa, lwb;
} sp_row;

/* G_c = dL/dQ_c of the centred losses, up to a row constant. */
inline float sp_gprime(int loss, float a, float b, float d, sp_row R)
{
    switch (loss) {
    case SP_RKL: return d;
    case SP_JSD: return (1.0f - R.beta) * (b - log_mix1(a, b, R.lwa, R.lwb));
    case SP_TVD: return 0.5f * sign(exp(b) - exp(a));
    default: return 0.0f;
    }
}

/* The loss term of one category. */
inline float sp_term(int loss, float a, float b, sp_row R)
{
    const float p = exp(a), q = exp(b);
    switch (loss) {
    case SP_KL: return xlogratio1(p, a, b);
    case SP_SOFT_CE: return a == KLCL_NEG_INF ? 0.0f : (b == KLCL_NEG_INF ? INFINITY : -p * b);
    case SP_RKL: return xlogratio1(q, b, a);
    case SP_JSD: {
        const float lm = log_mix1(a, b, R.lwa, R.lwb);
        return R.beta * xlogratio1(p, a, lm) + (1.0f - R.beta) * xlogratio1(q, b, lm);
    }
    case SP_TVD: return 0.5f * fabs(p - q);
    default: return 0.0f;
    }
}

/* One category: a = log p_c, b = log Q_c, d = G_c of rkl up to the row constant (from logits). */
typedef struct sp_cat {
    float a, b, d;
} sp_cat;

/* A top-k entry: x the student's softcapped logit, lp the teacher's log-probability. */
inline void sp_entry(float x, float lp, sp_row R, sp_cat *c)
{
    c->b = (x - R.ms) * R.inv_tau - R.lss;
    c->a = (lp - R.mt) * R.inv_tau - R.lst;
    c->d = ((x - R.ms) - (lp - R.mt)) * R.inv_tau;
}

/* The bucket on the same footing: log Q_tail = (mo - ms)/tau + log O - log S. */
inline void sp_bucket(sp_row R, sp_cat *c)
{
    const float lo = R.mo == KLCL_NEG_INF ? KLCL_NEG_INF : (R.mo - R.ms) * R.inv_tau + R.lso;
    c->b = lo - R.lss;
    c->a = R.l_tail == KLCL_NEG_INF ? KLCL_NEG_INF : (R.l_tail - R.mt) * R.inv_tau - R.lst;
    c->d = lo - (R.l_tail - R.mt) * R.inv_tau;
}

/* Fixed-tree reductions over the work-group; every work-item gets the result. Macros rather than
 * functions: PoCL miscompiled the same code with the barriers inside inline functions (work-groups of 4
 * and more). */
#define SP_SUM2(la, x, y)                                                                              \
    do {                                                                                               \
        la[lid] = (x);                                                                                 \
        la[KLCL_WG + lid] = (y);                                                                       \
        barrier(CLK_LOCAL_MEM_FENCE);                                                                  \
        for (uint off_ = KLCL_WG / 2; off_ > 0; off_ >>= 1) {                                          \
            if (lid < off_) {                                                                          \
                la[lid] += la[lid + off_];                                                             \
                la[KLCL_WG + lid] += la[KLCL_WG + lid + off_];                                         \
            }                                                                                          \
            barrier(CLK_LOCAL_MEM_FENCE);                                                              \
        }                                                                                              \
        (x) = la[0];                                                                                   \
        (y) = la[KLCL_WG];                                                                             \
        barrier(CLK_LOCAL_MEM_FENCE);                                                                  \
    } while (0)

#define SP_OR(lu, bits)                                                                                \
    do {                                                                                               \
        lu[lid] = (bits);                                                                              \
        barrier(CLK_LOCAL_MEM_FENCE);                                                                  \
        for (uint off_ = KLCL_WG / 2; off_ > 0; off_ >>= 1) {                                          \
            if (lid < off_) lu[lid] |= lu[lid + off_];                                                 \
            barrier(CLK_LOCAL_MEM_FENCE);                                                              \
        }                                                                                              \
        (bits) = lu[0];                                                                                \
        barrier(CLK_LOCAL_MEM_FENCE);                                                                  \
    } while (0)

/* Largest value, ties to the lowest index. */
#define SP_ARGMAX(lf, lu, val, idx)                                                                    \
    do {                                                                                               \
        lf[lid] = (val);                                                                               \
        lu[lid] = (idx);                                                                               \
        barrier(CLK_LOCAL_MEM_FENCE);                                                                  \
        for (uint off_ = KLCL_WG / 2; off_ > 0; off_ >>= 1) {                                          \
            if (lid < off_) {                                                                          \
                float v_ = lf[lid];                                                                    \
                uint i_ = lu[lid];                                                                     \
                argmax_merge(&v_, &i_, lf[lid + off_], lu[lid + off_]);                                \
                lf[lid] = v_;                                                                          \
                lu[lid] = i_;                                                                          \
            }                                                                                          \
            barrier(CLK_LOCAL_MEM_FENCE);                                                              \
        }                                                                                              \
        (val) = lf[0];                                                                                 \
        (idx) = lu[0];                                                                                 \
        barrier(CLK_LOCAL_MEM_FENCE);                                                                  \
    } while (0)

/* Moves sums (s = sum w, b = sum w d with d = x - max) to a larger maximum; an old maximum of -inf means
 * nothing has mass yet. */
inline void sp_rescale_acc(sp_acc *s, sp_acc *b, float m_old, float m_new, float k2)
{
    if (m_old == KLCL_NEG_INF) return;
    const sp_acc d = (sp_acc)m_old - (sp_acc)m_new, f = exp2(d * (sp_acc)k2);
    *b = f * (*b + d * *s);
    *s *= f;
}

inline void sp_rescale8(float8 *s, float8 *b, float m_old, float m_new, float k2)
{
    if (m_old == KLCL_NEG_INF) return;
    const float d = m_old - m_new, f = exp2(d * k2);
    *b = f * (*b + d * *s);
    *s *= f;
}

inline void sp_rescale1(float *s, float *b, float m_old, float m_new, float k2)
{
    if (m_old == KLCL_NEG_INF) return;
    const float d = m_old - m_new, f = exp2(d * k2);
    *b = f * (*b + d * *s);
    *s *= f;
}

#define SP_ROW_ARGS                                                                                    \
    __global const S_ELEM *student, ulong s_off, ulong s_stride, __global const int *indices,           \
        ulong i_off, ulong i_stride, __global const float *logprobs, ulong p_off, ulong p_stride,       \
        __global const int *labels, ulong l_off, int has_labels, __global const uchar *mask,            \
        ulong m_off, int has_mask, uint vocab, uint k, int loss, int policy, int ignore_index,          \
        float inv_tau, float cap, float scale, float beta, float lwa, float lwb,                        \
        __global float *row_loss, ulong rl_off, __global float *row_stats, __global int *row_flags,     \
        ulong row0

#if KLCL_IN_GROUP(KLCL_GROUP_SHARED)
__kernel __attribute__((reqd_work_group_size(KLCL_WG, 1, 1))) void klcl_sparse_rows(SP_ROW_ARGS)
{
    __local uint sorted[SP_K_MAX];
    __local float lf[6 * KLCL_WG];
    __local uint lu[2 * KLCL_WG];
    __local sp_acc la[2 * KLCL_WG];
    __local int ref_pos;

    const uint lid = get_local_id(0);
    const ulong row = row0 + get_group_id(0);
    const float k2 = M_LOG2E_F * inv_tau;
    __global float *stats = row_stats + row * SS_COUNT;
    __global int *rflags = row_flags + row * RF_COUNT;

    /* One exit for the whole work-group: a row that is skipped, has bad indices or is invalid still runs
     * every barrier (PoCL miscompiled this kernel with early returns between barriers), with its loops
     * over data cut to nothing. `live`: the row is used and its indices are good so far. */
    int flags = 0, y = -1;
    if (has_mask && mask[m_off + row] == 0) flags |= FLAG_SKIPPED;
    if (has_labels) {
        y = labels[l_off + row];
        if (y == ignore_index)
            flags |= FLAG_SKIPPED;
        else if (y < 0 || (uint)y >= vocab)
            flags |= FLAG_SKIPPED | FLAG_BAD_LABEL;
    }
    int live = !(flags & FLAG_SKIPPED);
    __global const S_ELEM *s = student + s_off + row * s_stride;
    __global const int *ix = indices + i_off + row * i_stride;
    __global const float *lp = logprobs + p_off + row * p_stride;

    /* 1: indices into local memory, padded to a power of two with UINT_MAX (sorts last); the teacher's
     * max and top token, its sum of probabilities, and its non-finite values on the way. */
    uint n2 = 1;
    while (n2 < k) n2 <<= 1;
    uint bad = 0, ati = UINT_MAX;
    float atv = KLCL_NEG_INF;
    sp_acc sum_p = 0, unused = 0;
    if (lid == 0) ref_pos = -1;
    for (uint j = lid; j < n2; j += KLCL_WG) {
        uint key = UINT_MAX;
        if (live && j < k) {
            const int t = ix[j];
            const float l = lp[j];
            if (t < 0 || (uint)t >= vocab) bad |= 1u;
            key = (uint)t;
            bad |= (isnan(l) || l == INFINITY) ? 2u : 0u;
            argmax_merge(&atv, &ati, l, key);
            sum_p += exp((sp_acc)l);
        }
        sorted[j] = key;
    }
    SP_OR(lu, bad);
    const int teacher_nonfinite = (bad & 2u) != 0;
    if (bad & 1u) {
        flags |= FLAG_SKIPPED | SP_FLAG_RANGE;
        live = 0;
    }
    SP_ARGMAX(lf, lu, atv, ati);
    SP_SUM2(la, sum_p, unused);

    /* Bitonic sort of the n2 keys, then repeats are neighbours. */
    for (uint size = 2; size <= n2; size <<= 1)
        for (uint gap = size >> 1; gap > 0; gap >>= 1) {
            for (uint i = lid; i < n2 / 2; i += KLCL_WG) {
                const uint lo = 2 * gap * (i / gap) + i % gap, hi = lo + gap;
                const uint x = sorted[lo], z = sorted[hi];
                if ((x > z) == ((lo & size) == 0)) {
                    sorted[lo] = z;
                    sorted[hi] = x;
                }
            }
            barrier(CLK_LOCAL_MEM_FENCE);
        }
    uint repeat = 0;
    for (uint j = lid + 1; live && j < k; j += KLCL_WG) repeat |= sorted[j] == sorted[j - 1];
    SP_OR(lu, repeat);
    if (repeat) {
        flags |= FLAG_SKIPPED | SP_FLAG_REPEAT;
        live = 0;
    }

    /* 2: the dense student pass. Work-item lid reads vectors lid, lid + KLCL_WG, ... in increasing order,
     * so one cursor into the sorted indices marks the lanes that belong to K. */
    const uint nvec = live ? vocab / 8 : 0, vend = live ? vocab : 0;
    const uint8 lane = (uint8)(0, 1, 2, 3, 4, 5, 6, 7);
    float m = KLCL_NEG_INF, mo = KLCL_NEG_INF;
    sp_acc S = 0, B = 0, O = 0, O_unused = 0;
    float8 S8 = (float8)(0.0f), B8 = (float8)(0.0f), O8 = (float8)(0.0f), Ob8 = (float8)(0.0f);
    float8 asv8 = (float8)(KLCL_NEG_INF);
    uint8 asi8 = (uint8)(UINT_MAX);
    uint cursor = 0, in_block = 0;
    bad = 0;
    for (uint kk = lid; kk < nvec; kk += KLCL_WG) {
        const uint base = kk * 8;
        while (cursor < k && sorted[cursor] < base) cursor++;
        uint bits = 0;
        while (cursor < k && sorted[cursor] < base + 8) bits |= 1u << (sorted[cursor++] - base);
        const int8 in_k = as_int8(((uint8)(bits) >> lane) & (uint8)(1u)) != (int8)(0);
        const float8 rs = LOAD_S8(kk, s);
        bad |= any(isnan(rs) | (rs == (float8)(INFINITY))) ? 2u : 0u;
        const int8 up = rs > asv8;
        asv8 = select(asv8, rs, up);
        asi8 = select(asi8, (uint8)(base) + lane, as_uint8(up));
        const float8 x = softcap8(rs, cap);
        const float8 xo = select(x, (float8)(KLCL_NEG_INF), in_k);
        const float m_new = fmax(m, hmax8(x)), mo_new = fmax(mo, hmax8(xo));
        if (m_new > m) {
            sp_rescale8(&S8, &B8, m, m_new, k2);
            sp_rescale_acc(&S, &B, m, m_new, k2);
            m = m_new;
        }
        if (mo_new > mo) {
            sp_rescale8(&O8, &Ob8, mo, mo_new, k2);
            sp_rescale_acc(&O, &O_unused, mo, mo_new, k2);
            mo = mo_new;
        }
        const float8 d = x - m, w = m == KLCL_NEG_INF ? (float8)(0.0f) : exp2(d * k2);
        S8 += w;
        B8 += w > (float8)(0.0f) ? w * d : (float8)(0.0f);
        O8 += mo == KLCL_NEG_INF ? (float8)(0.0f) : exp2((xo - mo) * k2);
        if (++in_block == SP_BLOCK) {
            S += hsum8(S8);
            B += hsum8(B8);
            O += hsum8(O8);
            S8 = B8 = O8 = (float8)(0.0f);
            in_block = 0;
        }
    }
    S += hsum8(S8);
    B += hsum8(B8);
    O += hsum8(O8);
    float asv = KLCL_NEG_INF;
    uint asi = UINT_MAX;
    {
        float v[8];
        uint i8[8];
        vstore8(asv8, 0, v);
        vstore8(asi8, 0, i8);
        for (int j = 0; j < 8; j++) argmax_merge(&asv, &asi, v[j], i8[j]);
    }
    float S1 = 0.0f, B1 = 0.0f, O1 = 0.0f, Ob1 = 0.0f;
    for (uint v = vocab / 8 * 8 + lid; v < vend; v += KLCL_WG) {
        while (cursor < k && sorted[cursor] < v) cursor++;
        const int in_k = cursor < k && sorted[cursor] == v;
        const float rs = LOAD_S1(v, s, vocab);
        bad |= (isnan(rs) || rs == INFINITY) ? 2u : 0u;
        argmax_merge(&asv, &asi, rs, v);
        const float x = softcap1(rs, cap), xo = in_k ? KLCL_NEG_INF : x;
        const float m_new = fmax(m, x), mo_new = fmax(mo, xo);
        if (m_new > m) {
            sp_rescale1(&S1, &B1, m, m_new, k2);
            sp_rescale_acc(&S, &B, m, m_new, k2);
            m = m_new;
        }
        if (mo_new > mo) {
            sp_rescale1(&O1, &Ob1, mo, mo_new, k2);
            sp_rescale_acc(&O, &O_unused, mo, mo_new, k2);
            mo = mo_new;
        }
        const float d = x - m, w = m == KLCL_NEG_INF ? 0.0f : exp2(d * k2);
        S1 += w;
        B1 += w > 0.0f ? w * d : 0.0f;
        O1 += mo == KLCL_NEG_INF ? 0.0f : exp2((xo - mo) * k2);
    }
    S += S1;
    B += B1;
    O += O1;

    /* Merge the work-items in a fixed tree: (m, S, B), (mo, O), argmax. */
    lf[lid] = m;
    lf[KLCL_WG + lid] = (float)S;
    lf[2 * KLCL_WG + lid] = (float)B;
    lf[3 * KLCL_WG + lid] = mo;
    lf[4 * KLCL_WG + lid] = (float)O;
    lf[5 * KLCL_WG + lid] = asv;
    lu[lid] = asi;
    lu[KLCL_WG + lid] = bad;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (uint off = KLCL_WG / 2; off > 0; off >>= 1) {
        if (lid < off) {
            const uint o = lid + off;
            float am = lf[lid], as = lf[KLCL_WG + lid], ab = lf[2 * KLCL_WG + lid];
            float bm = lf[o], bs = lf[KLCL_WG + o], bb = lf[2 * KLCL_WG + o];
            const float nm = fmax(am, bm);
            if (nm > am) sp_rescale1(&as, &ab, am, nm, k2);
            if (nm > bm) sp_rescale1(&bs, &bb, bm, nm, k2);
            lf[lid] = nm;
            lf[KLCL_WG + lid] = as + bs;
            lf[2 * KLCL_WG + lid] = ab + bb;
            float amo = lf[3 * KLCL_WG + lid], ao = lf[4 * KLCL_WG + lid], ax = 0.0f;
            float bmo = lf[3 * KLCL_WG + o], bo = lf[4 * KLCL_WG + o], bx = 0.0f;
            const float nmo = fmax(amo, bmo);
            if (nmo > amo) sp_rescale1(&ao, &ax, amo, nmo, k2);
            if (nmo > bmo) sp_rescale1(&bo, &bx, bmo, nmo, k2);
            lf[3 * KLCL_WG + lid] = nmo;
            lf[4 * KLCL_WG + lid] = ao + bo;
            float v = lf[5 * KLCL_WG + lid];
            uint i = lu[lid];
            argmax_merge(&v, &i, lf[5 * KLCL_WG + o], lu[o]);
            lf[5 * KLCL_WG + lid] = v;
            lu[lid] = i;
            lu[KLCL_WG + lid] |= lu[KLCL_WG + o];
        }
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    sp_row R;
    R.ms = lf[0];
    const float S_all = lf[KLCL_WG], B_all = lf[2 * KLCL_WG];
    R.mo = lf[3 * KLCL_WG];
    const float O_all = lf[4 * KLCL_WG];
    asv = lf[5 * KLCL_WG];
    asi = lu[0];
    bad = lu[KLCL_WG];
    barrier(CLK_LOCAL_MEM_FENCE);
    R.lss = log(S_all);
    R.lso = log(O_all);
    R.inv_tau = inv_tau;
    R.beta = beta;
    R.lwa = lwa;
    R.lwb = lwb;

    /* 3: the teacher over the categories. The bucket is empty for renorm and when K covers the vocabulary. */
    R.l_tail = KLCL_NEG_INF;
    if (policy == SP_TAIL && k < vocab && sum_p < (sp_acc)1) R.l_tail = (float)log1p(-sum_p);
    R.mt = fmax(atv, R.l_tail);
    const int student_ok = !(bad & 2u) && asv != KLCL_NEG_INF;
    const int teacher_ok = !teacher_nonfinite && R.mt != KLCL_NEG_INF;
    const int valid = live && student_ok && teacher_ok;
    sp_acc st = 0, bt = 0;
    for (uint j = lid; live && j < k; j += KLCL_WG) {
        const float dl = lp[j] - R.mt, w = exp(dl * inv_tau);
        st += w;
        bt += w > 0.0f ? w * dl : 0.0f;
        if (student_ok && (uint)ix[j] == asi) ref_pos = (int)j; /* tokens are distinct: one writer */
    }
    if (lid == 0 && R.l_tail != KLCL_NEG_INF) {
        const float dl = R.l_tail - R.mt, w = exp(dl * inv_tau);
        st += w;
        bt += w > 0.0f ? w * dl : 0.0f;
    }
    SP_SUM2(la, st, bt);
    R.lst = log((float)st);

    /* The loss terms and the centred sum, against the reference category r (the student's argmax). */
    sp_cat r, c, t;
    if (valid && ref_pos >= 0)
        sp_entry(softcap1(LOAD_S1(asi, s, vocab), cap), lp[ref_pos], R, &r);
    else
        sp_bucket(R, &r);
    const float g_ref = SP_IS_CENTERED(loss) ? sp_gprime(loss, r.a, r.b, r.d, R) : 0.0f;
    sp_acc value = 0, aux = 0;
    for (uint j = lid; valid && j < k; j += KLCL_WG) {
        sp_entry(softcap1(LOAD_S1((uint)ix[j], s, vocab), cap), lp[j], R, &c);
        value += sp_term(loss, c.a, c.b, R);
        if (SP_IS_CENTERED(loss) && c.b != KLCL_NEG_INF)
            aux += exp(c.b) * (g_ref - sp_gprime(loss, c.a, c.b, c.d, R));
    }
    sp_bucket(R, &t);
    if (lid == 0 && valid) {
        value += sp_term(loss, t.a, t.b, R);
        if (SP_IS_CENTERED(loss) && t.b != KLCL_NEG_INF)
            aux += exp(t.b) * (g_ref - sp_gprime(loss, t.a, t.b, t.d, R));
    }
    SP_SUM2(la, value, aux);

    if (lid != 0) return;
    if (!live) { /* skipped, or bad indices (the call fails) */
        for (int i = 0; i < SS_COUNT; i++) stats[i] = 0.0f;
        rflags[RF_FLAGS] = flags;
        rflags[RF_ARGMAX_T] = rflags[RF_ARGMAX_S] = -1;
        row_loss[rl_off + row] = 0.0f;
    } else if (!valid) {
        for (int i = 0; i < SS_COUNT; i++) stats[i] = NAN;
        rflags[RF_FLAGS] = FLAG_INVALID | (teacher_ok ? FLAG_TEACHER_OK : 0);
        rflags[RF_ARGMAX_T] = rflags[RF_ARGMAX_S] = -1;
        row_loss[rl_off + row] = NAN;
    } else {
        const float v = (float)value;
        float c1 = 1.0f, c2 = 0.0f;
        if (SP_IS_CENTERED(loss))
            c1 = t.b == KLCL_NEG_INF ? 0.0f : (sp_gprime(loss, t.a, t.b, t.d, R) - g_ref) + (float)aux;
        else
            c2 = -exp(t.a);
        stats[SS_MS] = R.ms;
        stats[SS_LSS] = R.lss;
        stats[SS_MO] = R.mo;
        stats[SS_LSO] = R.lso;
        stats[SS_C1] = c1;
        stats[SS_C2] = c2;
        stats[SS_MT] = R.mt;
        stats[SS_LST] = R.lst;
        stats[SS_GREF] = g_ref;
        stats[SS_AUX] = (float)aux;
        stats[SS_H_T] = R.lst - (float)(bt / st) * inv_tau;
        stats[SS_H_S] = R.lss - B_all / S_all * inv_tau;
        int f = FLAG_TEACHER_OK;
        if (loss == SP_RKL && v == INFINITY) f |= FLAG_NO_GRADIENT; /* mass against probability 0 */
        if (ati == asi) f |= FLAG_AGREE;
        if (has_labels && (uint)y == asi) f |= FLAG_CORRECT;
        rflags[RF_FLAGS] = f;
        rflags[RF_ARGMAX_T] = (int)ati;
        rflags[RF_ARGMAX_S] = (int)asi;
        row_loss[rl_off + row] = scale == 0.0f ? 0.0f : scale * v;
    }
}

/* Every token of a row as if it lay outside K (the top-k kernel overwrites the k entries next):
 * dz_v = C1 q_v + C2 q_v / Q_tail, then ds = dz / tau * softcap' * scale / denominator. */
__kernel void klcl_sparse_grad_dense(__global const S_ELEM *student, ulong s_off, ulong s_stride, uint vocab,
                                     float inv_tau, float cap, float scale, float inv_denom,
                                     __global const float *row_stats, __global const int *row_flags, ulong row0,
                                     __global G_ELEM *grad, ulong g_off, ulong g_stride)
{
    const ulong row = row0 + get_global_id(1);
    const uint gid = get_global_id(0), gsize = get_global_size(0), nvec = vocab / 8;
    __global const float *st = row_stats + row * SS_COUNT;
    const int flags = row_flags[row * RF_COUNT + RF_FLAGS];
    __global G_ELEM *g = grad + g_off + row * g_stride;
    if (flags & (FLAG_SKIPPED | FLAG_INVALID | FLAG_NO_GRADIENT)) {
        const float fill = (flags & FLAG_SKIPPED) ? 0.0f : NAN;
        for (uint kk = gid; kk < nvec; kk += gsize) STORE_G8((float8)(fill), kk, g);
        for (uint v = nvec * 8 + gid; v < vocab; v += gsize) STORE_G1(fill, v, g);
        return;
    }
    __global const S_ELEM *s = student + s_off + row * s_stride;
    const float ms = st[SS_MS], lss = st[SS_LSS], mo = st[SS_MO], lso = st[SS_LSO];
    const float c1 = st[SS_C1], c2 = st[SS_C2], f = scale * inv_tau * inv_denom;
    for (uint kk = gid; kk < nvec; kk += gsize) {
        const float8 rs = LOAD_S8(kk, s), x = softcap8(rs, cap);
        const float8 q = exp((x - ms) * inv_tau - lss);
        const float8 r = mo == KLCL_NEG_INF ? (float8)(0.0f) : exp((x - mo) * inv_tau - lso);
        float8 ds = ((q > (float8)(0.0f) ? q * c1 : (float8)(0.0f)) + (r > (float8)(0.0f) ? r * c2 : (float8)(0.0f))) * f;
        if (cap > 0.0f) {
            const float8 th = tanh(rs / cap);
            ds *= 1.0f - th * th;
        }
        STORE_G8(ds, kk, g);
    }
    for (uint v = nvec * 8 + gid; v < vocab; v += gsize) {
        const float rs = LOAD_S1(v, s, vocab), x = softcap1(rs, cap);
        const float q = exp((x - ms) * inv_tau - lss);
        const float r = mo == KLCL_NEG_INF ? 0.0f : exp((x - mo) * inv_tau - lso);
        float ds = ((q > 0.0f ? q * c1 : 0.0f) + (r > 0.0f ? r * c2 : 0.0f)) * f;
        if (cap > 0.0f) {
            const float th = tanh(rs / cap);
            ds *= 1.0f - th * th;
        }
        STORE_G1(ds, v, g);
    }
}

/* The k entries of a row: kl, soft_ce dz = q - p; rkl, jsd, tvd dz = q ((G_i - G_r) + aux). */
__kernel void klcl_sparse_grad_topk(__global const S_ELEM *student, ulong s_off, ulong s_stride,
                                    __global const int *indices, ulong i_off, ulong i_stride,
                                    __global const float *logprobs, ulong p_off, ulong p_stride, uint vocab, uint k,
                                    int loss, float inv_tau, float cap, float scale, float beta,
                                    float lwa, float lwb, float inv_denom, __global const float *row_stats,
                                    __global const int *row_flags, ulong row0, __global G_ELEM *grad, ulong g_off,
                                    ulong g_stride)
{
    const ulong row = row0 + get_global_id(1);
    const uint j = get_global_id(0);
    const int flags = row_flags[row * RF_COUNT + RF_FLAGS];
    if (j >= k || (flags & (FLAG_SKIPPED | FLAG_INVALID | FLAG_NO_GRADIENT))) return;
    __global const float *st = row_stats + row * SS_COUNT;
    const int t = indices[i_off + row * i_stride + j];
    const float rs = LOAD_S1((uint)t, student + s_off + row * s_stride, vocab), x = softcap1(rs, cap);
    const sp_row R = {st[SS_MS], st[SS_LSS], st[SS_MO], st[SS_LSO], st[SS_MT], st[SS_LST], KLCL_NEG_INF,
                      inv_tau, beta, lwa, lwb};
    sp_cat c;
    sp_entry(x, logprobs[p_off + row * p_stride + j], R, &c);
    const float q = exp(c.b);
    float dz;
    if (SP_IS_CENTERED(loss))
        dz = q == 0.0f ? 0.0f : q * ((sp_gprime(loss, c.a, c.b, c.d, R) - st[SS_GREF]) + st[SS_AUX]);
    else
        dz = q - exp(c.a);
    float ds = dz * scale * inv_tau * inv_denom;
    if (cap > 0.0f) {
        const float th = tanh(rs / cap);
        ds *= 1.0f - th * th;
    }
    STORE_G1(ds, (uint)t, grad + g_off + row * g_stride);
}
#endif
