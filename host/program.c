/* The program layer: kernel sources (embedded at build time, or read from KLCL_KERNEL_DIR), one build per
 * context, the work-group size chosen for the device and clamped to what the built kernels allow, and the
 * row strategy of a call (team size and parts per row). */
#include "internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Generated from kernels_cl/ by cmake/embed_kernels.cmake, in the order they are concatenated. */
extern const char *const klcl_kernel_names[];
extern const char *const klcl_kernel_sources[];
extern const size_t klcl_kernel_lengths[];
extern const size_t klcl_kernel_count;

enum { WG_MAX = 256, WG_CPU = 1, WG_MIN = 1 };
/* Local memory of one row-kernel work-group per work-item: 12 float + 4 uint lanes and a float4. */
enum { LOCAL_BYTES_PER_ITEM = 12 * 4 + 4 * 4 + 16 };

static char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    char *buf = NULL;
    if (fseek(f, 0, SEEK_END) == 0) {
        long n = ftell(f);
        if (n >= 0 && fseek(f, 0, SEEK_SET) == 0 && (buf = malloc((size_t)n + 1))) {
            if (fread(buf, 1, (size_t)n, f) != (size_t)n) {
                free(buf);
                buf = NULL;
            } else {
                buf[n] = '\0';
                *len = (size_t)n;
            }
        }
    }
    fclose(f);
    return buf;
}

/* The concatenated sources: embedded, or the same file names under KLCL_KERNEL_DIR. */
static klcl_status load_sources(klcl_context *ctx, char **out)
{
    const char *dir = getenv("KLCL_KERNEL_DIR");
    size_t total = 1;
    char **parts = calloc(klcl_kernel_count, sizeof *parts);
    size_t *lens = calloc(klcl_kernel_count, sizeof *lens);
    klcl_status st = KLCL_OK;
    if (!parts || !lens) {
        st = klcl_fail(ctx, KLCL_ERR_OUT_OF_HOST_MEMORY, "loading kernel sources: out of host memory");
        goto done;
    }
    for (size_t i = 0; i < klcl_kernel_count; i++) {
        if (dir && *dir) {
            char path[4096];
            snprintf(path, sizeof path, "%s/%s", dir, klcl_kernel_names[i]);
            parts[i] = read_file(path, &lens[i]);
            if (!parts[i]) {
                st = klcl_fail(ctx, KLCL_ERR_KERNEL_SOURCE, "KLCL_KERNEL_DIR: cannot read %s", path);
                goto done;
            }
        }
        total += (parts[i] ? lens[i] : klcl_kernel_lengths[i]) + 1;
    }
    char *src = malloc(total);
    if (!src) {
        st = klcl_fail(ctx, KLCL_ERR_OUT_OF_HOST_MEMORY, "loading kernel sources: out of host memory");
        goto done;
    }
    size_t at = 0;
    for (size_t i = 0; i < klcl_kernel_count; i++) {
        const char *p = parts[i] ? parts[i] : klcl_kernel_sources[i];
        size_t n = parts[i] ? lens[i] : klcl_kernel_lengths[i];
        memcpy(src + at, p, n);
        at += n;
        src[at++] = '\n';
    }
    src[at] = '\0';
    *out = src;
done:
    if (parts)
        for (size_t i = 0; i < klcl_kernel_count; i++) free(parts[i]);
    free(parts);
    free(lens);
    return st;
}

static void keep_build_log(klcl_context *ctx, cl_program program)
{
    size_t n = 0;
    free(ctx->build_log);
    ctx->build_log = NULL;
    if (clGetProgramBuildInfo(program, ctx->device, CL_PROGRAM_BUILD_LOG, 0, NULL, &n) != CL_SUCCESS) return;
    ctx->build_log = malloc(n + 1);
    if (!ctx->build_log) return;
    if (clGetProgramBuildInfo(program, ctx->device, CL_PROGRAM_BUILD_LOG, n, ctx->build_log, NULL) != CL_SUCCESS)
        n = 0;
    ctx->build_log[n] = '\0';
}

static void release_group(klcl_program *v, int group)
{
    if (group == KLCL_GROUP_SHARED) {
        klcl_sparse_kernels_release(v);
        cl_kernel *single[] = {&v->reduce_kernel, &v->widen_kernel, &v->narrow_kernel};
        for (size_t i = 0; i < sizeof single / sizeof single[0]; i++) {
            if (*single[i]) clReleaseKernel(*single[i]);
            *single[i] = NULL;
        }
    } else {
        cl_kernel *per_loss[] = {&v->rows_kernel[group], &v->part_kernel[group], &v->merge_kernel[group],
                                 &v->grad_kernel[group]};
        for (size_t j = 0; j < sizeof per_loss / sizeof per_loss[0]; j++) {
            if (*per_loss[j]) clReleaseKernel(*per_loss[j]);
            *per_loss[j] = NULL;
        }
    }
    if (v->program[group]) clReleaseProgram(v->program[group]);
    v->program[group] = NULL;
    v->built &= ~(1u << group);
}

void klcl_program_release(klcl_context *ctx)
{
    for (int i = 0; i < KLCL_VARIANT_COUNT; i++)
        for (int g = 0; g < KLCL_GROUP_COUNT; g++) release_group(&ctx->variants[i], g);
    ctx->built = 0;
}

/* Floats per vector load of the row and gradient kernels: by default 16 on a CPU device whose preferred
 * float vector is that wide (512-bit vectors: PoCL computes 16-wide exponentials 1.6x faster than 8-wide
 * there), else 8 (GPUs: one 32-byte load per work-item, coalesced across the group); the tuner's
 * candidate, KLCL_VECTOR_WIDTH or the tuning table first (tune.c). */
static int vector_width(klcl_context *ctx, cl_device_type type)
{
    cl_uint preferred = 0;
    if (clGetDeviceInfo(ctx->device, CL_DEVICE_PREFERRED_VECTOR_WIDTH_FLOAT, sizeof preferred, &preferred, NULL) !=
        CL_SUCCESS)
        preferred = 0;
    return klcl_vector_width_request(ctx, (type & CL_DEVICE_TYPE_CPU) && preferred >= 16 ? 16 : 8);
}

int klcl_vector_width_choice(klcl_context *ctx)
{
    cl_device_type type = 0;
    clGetDeviceInfo(ctx->device, CL_DEVICE_TYPE, sizeof type, &type, NULL);
    return vector_width(ctx, type);
}

static size_t floor_pow2(size_t x)
{
    size_t p = 1;
    while (p * 2 <= x) p *= 2;
    return p;
}

/* The row strategy's limits: at most PARTS_MAX parts per row; an automatic split keeps at least
 * ctx->split_columns columns per part (built-in: SPLIT_COLUMNS, SPLIT_COLUMNS_CPU on CPU devices; the
 * tuner's candidate, KLCL_SPLIT_COLUMNS or the tuning table first), and SPLIT_MIN_VECTORS vectors per
 * work-item of a work-group. */
enum { PARTS_MAX = 1024, SPLIT_COLUMNS = 4096, SPLIT_COLUMNS_CPU = 262144, SPLIT_MIN_VECTORS = 8 };

/* KLCL_TEAM and KLCL_ROW_SPLIT: decimal digits only, from 1 to `limit`; 0 (the automatic choice) otherwise. */
static size_t env_count(const char *name, size_t limit)
{
    const char *s = getenv(name);
    if (!s || !*s || strspn(s, "0123456789") != strlen(s) || strlen(s) > 6) return 0;
    unsigned long v = strtoul(s, NULL, 10);
    return v >= 1 && v <= limit ? (size_t)v : 0;
}

/* KLCL_FUSE_GRAD and KLCL_PREFETCH: exactly "0" or "1" sets the switch; anything else leaves `fallback`. */
static int env_switch(const char *name, int fallback)
{
    const char *s = getenv(name);
    return s && (s[0] == '0' || s[0] == '1') && !s[1] ? s[0] == '1' : fallback;
}

/* One build of group `group` of variant `index` with work-group size wg; on success *kernel_limit is the
 * smallest CL_KERNEL_WORK_GROUP_SIZE of its work-group kernels on this device, *from_cache whether it came
 * from the binary cache. */
static klcl_status build_once(klcl_context *ctx, const char *src, int index, int group, size_t wg,
                              size_t *kernel_limit, int use_cache, int *from_cache)
{
    cl_int err;
    char options[320 + KLCL_BUILD_EXTRA_MAX];
    cl_device_fp_config fp64 = 0; /* long row sums fold into double where the device has it */
    if (clGetDeviceInfo(ctx->device, CL_DEVICE_DOUBLE_FP_CONFIG, sizeof fp64, &fp64, NULL) != CL_SUCCESS) fp64 = 0;
    snprintf(options, sizeof options,
             "-DKLCL_WG=%zu -DKLCL_VW=%d -DKLCL_HOST_LAYOUT=%d -DKLCL_HOST_PART_WORDS=%d%s%s -DKLCL_GROUP=%d "
             "-DKLCL_T_DTYPE=%d -DKLCL_S_DTYPE=%d -DKLCL_G_DTYPE=%d%s%s",
             wg, ctx->vw, KLCL_HOST_LAYOUT, PART_STATE_WORDS, fp64 ? " -DKLCL_HAS_FP64" : "",
             ctx->prefetch ? " -DKLCL_PREFETCH" : "", group,
             index / (KLCL_DTYPE_COUNT * KLCL_DTYPE_COUNT), index / KLCL_DTYPE_COUNT % KLCL_DTYPE_COUNT,
             index % KLCL_DTYPE_COUNT, ctx->build_extra[0] ? " " : "", ctx->build_extra);
    klcl_program *v = &ctx->variants[index];
    release_group(v, group);
    cl_program *prog = &v->program[group];
    *prog = use_cache ? klcl_cache_load(ctx, src, options) : NULL;
    *from_cache = *prog != NULL;
    if (!*prog) {
        *prog = clCreateProgramWithSource(ctx->cl_ctx, 1, &src, NULL, &err);
        if (!*prog) return klcl_fail_cl(ctx, err, "clCreateProgramWithSource");
        err = clBuildProgram(*prog, 1, &ctx->device, options, NULL, NULL);
        keep_build_log(ctx, *prog);
        if (err != CL_SUCCESS) return klcl_fail_cl(ctx, err, "clBuildProgram (log: klcl_build_log)");
        /* A tuner's candidate (wg_forced) is not stored: most sizes it tries are never used again, and on a
         * CPU device handing a binary out compiles every kernel of the group. */
        if (!ctx->wg_forced) klcl_cache_store(ctx, src, options, *prog);
    }
    *kernel_limit = wg;
    if (group == KLCL_GROUP_SHARED) {
        struct {
            cl_kernel *k;
            const char *name;
        } ks[] = {{&v->reduce_kernel, "klcl_reduce"}, {&v->widen_kernel, "klcl_widen"}, {&v->narrow_kernel, "klcl_narrow"}};
        for (size_t i = 0; i < sizeof ks / sizeof ks[0]; i++) {
            *ks[i].k = clCreateKernel(*prog, ks[i].name, &err);
            if (!*ks[i].k) return klcl_fail_cl(ctx, err, "clCreateKernel (shared kernels)");
        }
        return klcl_sparse_kernels_create(ctx, v, kernel_limit);
    }
    const struct {
        cl_kernel *k;
        const char *prefix, *what;
        int fixed_size; /* reqd_work_group_size(KLCL_WG): bounds the work-group size */
    } kinds[] = {{&v->rows_kernel[group], "klcl_rows_", "clCreateKernel (row kernel)", 1},
                 {&v->part_kernel[group], "klcl_part_", "clCreateKernel (split-row kernel)", 1},
                 {&v->merge_kernel[group], "klcl_merge_", "clCreateKernel (split-row merge kernel)", 0},
                 {&v->grad_kernel[group], "klcl_grad_", "clCreateKernel (gradient kernel)", 0}};
    for (size_t j = 0; j < sizeof kinds / sizeof kinds[0]; j++) {
        char name[64];
        snprintf(name, sizeof name, "%s%s", kinds[j].prefix, klcl_loss_name((klcl_loss)group));
        *kinds[j].k = clCreateKernel(*prog, name, &err);
        if (!*kinds[j].k) return klcl_fail_cl(ctx, err, kinds[j].what);
        if (!kinds[j].fixed_size) continue;
        size_t limit = 0;
        err = clGetKernelWorkGroupInfo(*kinds[j].k, ctx->device, CL_KERNEL_WORK_GROUP_SIZE, sizeof limit, &limit,
                                       NULL);
        if (err != CL_SUCCESS) return klcl_fail_cl(ctx, err, "clGetKernelWorkGroupInfo");
        if (limit < *kernel_limit) *kernel_limit = limit;
    }
    return KLCL_OK;
}

/* A build that came from the cache and then failed (a binary the driver took but cannot use) is
 * repeated from source: the cache may make a start faster, never make it fail. */
static klcl_status build_with(klcl_context *ctx, const char *src, int index, int group, size_t wg,
                              size_t *kernel_limit, int *from_cache)
{
    klcl_status st = build_once(ctx, src, index, group, wg, kernel_limit, 1, from_cache);
    if (st != KLCL_OK && *from_cache) st = build_once(ctx, src, index, group, wg, kernel_limit, 0, from_cache);
    return st;
}

klcl_status klcl_program_build(klcl_context *ctx)
{
    if (ctx->built) return KLCL_OK;
    if (ctx->build_status != KLCL_OK)
        return klcl_fail(ctx, ctx->build_status, "%s", ctx->build_error);
    size_t dev_wg = 0;
    cl_ulong local_mem = 0;
    cl_int err = clGetDeviceInfo(ctx->device, CL_DEVICE_MAX_WORK_GROUP_SIZE, sizeof dev_wg, &dev_wg, NULL);
    if (err != CL_SUCCESS) return klcl_fail_cl(ctx, err, "clGetDeviceInfo(CL_DEVICE_MAX_WORK_GROUP_SIZE)");
    err = clGetDeviceInfo(ctx->device, CL_DEVICE_LOCAL_MEM_SIZE, sizeof local_mem, &local_mem, NULL);
    if (err != CL_SUCCESS) return klcl_fail_cl(ctx, err, "clGetDeviceInfo(CL_DEVICE_LOCAL_MEM_SIZE)");

    /* A CPU device runs a work-group's items one after another: one work-item per row streams the row
     * contiguously in vectors (measured 4-6x faster than 256 on PoCL, BENCHMARKS.md). GPUs want
     * wide groups for coalesced loads. KLCL_WORK_GROUP, else a tuning-table entry, replaces it (clamped below). */
    cl_device_type type = 0;
    clGetDeviceInfo(ctx->device, CL_DEVICE_TYPE, sizeof type, &type, NULL);
    size_t wg = klcl_work_group_request(ctx, (type & CL_DEVICE_TYPE_CPU) ? WG_CPU : WG_MAX); /* tune.c */
    if (wg > dev_wg) wg = dev_wg;
    if (local_mem / LOCAL_BYTES_PER_ITEM < wg) wg = (size_t)(local_mem / LOCAL_BYTES_PER_ITEM);
    wg = floor_pow2(wg < WG_MIN ? WG_MIN : wg);

    ctx->vw = vector_width(ctx, type);
    /* The GPU row loop (losses.cl, KLCL_PREFETCH): each work-item loads its next vectors before it reduces
     * the current ones, and keeps its block sums and running maxima as scalars, which saves registers.
     * NVIDIA's compiler does not pipeline the loads across the loop's branches, so without it every
     * iteration waits a full memory latency (BENCHMARKS.md). A CPU device keeps the plain loop: its caches
     * prefetch and hold the block, the spare vectors cost registers, and lane-wise sums save horizontal
     * work. KLCL_PREFETCH=0 or 1 overrides; the two add their sums in different orders, so their last bits
     * may differ. */
    ctx->prefetch = env_switch("KLCL_PREFETCH", !(type & CL_DEVICE_TYPE_CPU));
    /* Options for the device's own compiler, added to every build of this context (and so to the binary
     * cache's key): a register limit on NVIDIA (-cl-nv-maxrregcount=N), say. */
    const char *extra = getenv("KLCL_BUILD_OPTIONS");
    const size_t extra_len = extra ? strlen(extra) : 0;
    if (extra_len > KLCL_BUILD_EXTRA_MAX)
        return klcl_fail(ctx, KLCL_ERR_INVALID_VALUE, "KLCL_BUILD_OPTIONS: %zu characters, at most %d", extra_len,
                         KLCL_BUILD_EXTRA_MAX);
    memcpy(ctx->build_extra, extra ? extra : "", extra_len + 1);
    /* The fewest columns per part of an automatic row split (klcl_row_strategy explains the built-ins):
     * the host's choice of launches only, so the kernels are the same whatever it is. */
    ctx->split_columns =
        klcl_split_columns_request(ctx, (type & CL_DEVICE_TYPE_CPU) ? SPLIT_COLUMNS_CPU : SPLIT_COLUMNS);
    char *src = NULL;
    klcl_status st = load_sources(ctx, &src);
    if (st != KLCL_OK) return st; /* not kept: the file may appear later */
    for (;;) {
        size_t limit = 0;
        st = build_with(ctx, src, 0, KLCL_LOSS_KL, wg, &limit, &ctx->from_cache);
        if (st != KLCL_OK || limit >= wg || wg == WG_MIN) break;
        wg = floor_pow2(limit); /* clamp to the kernel's own limit on this device and rebuild */
    }
    free(src);
    if (st != KLCL_OK) {
        klcl_program_release(ctx);
        ctx->build_status = st;
        memcpy(ctx->build_error, ctx->error, sizeof ctx->build_error);
        return st;
    }
    ctx->wg = wg;
    /* One work-item per row on a CPU device: the row is still in its cache when the gradient is written
     * right after the statistics, instead of a second kernel reading it again from memory. A GPU keeps the
     * separate, fully parallel gradient kernel. KLCL_FUSE_GRAD=0 or 1 overrides (the bits are the same). */
    ctx->fuse_grad = env_switch("KLCL_FUSE_GRAD", (type & CL_DEVICE_TYPE_CPU) != 0);
    /* On one work-item per row, a loss with a gradient takes each row's student maximum first, so that
     * pass 1's weights are the exponentials of q bit for bit; fused, they are kept in the gradient's row
     * instead of computed again: ce takes one exponential per logit instead of two, kl and soft_ce three
     * instead of four, kd five instead of six, and a centred loss's gradient only q's, its pass 2 leaving
     * it the rest (losses.cl, student_max; BENCHMARKS.md). KLCL_KEEP_EXPS=0 turns both off. */
    ctx->keep_exps = env_switch("KLCL_KEEP_EXPS", 1);
    cl_uint units = 1;
    if (clGetDeviceInfo(ctx->device, CL_DEVICE_MAX_COMPUTE_UNITS, sizeof units, &units, NULL) != CL_SUCCESS || !units)
        units = 1;
    ctx->compute_units = units;
    ctx->is_cpu = (type & CL_DEVICE_TYPE_CPU) != 0;
    ctx->team_env = env_count("KLCL_TEAM", KLCL_WORK_GROUP_LIMIT);
    ctx->split_env = env_count("KLCL_ROW_SPLIT", PARTS_MAX);
    ctx->variants[0].built = 1u << KLCL_LOSS_KL;
    ctx->built = 1;
    return KLCL_OK;
}

klcl_status klcl_program_group(klcl_context *ctx, klcl_dtype t, klcl_dtype s, klcl_dtype g, int group,
                               const klcl_program **out)
{
    klcl_status st = klcl_program_build(ctx);
    if (st != KLCL_OK) return st;
    const int index = klcl_variant_index(t, s, g);
    klcl_program *v = &ctx->variants[index];
    *out = v;
    if (v->built & (1u << group)) return KLCL_OK;
    if (v->status[group] != KLCL_OK) return klcl_fail(ctx, v->status[group], "%s", v->error[group]);
    char *src = NULL;
    if ((st = load_sources(ctx, &src)) != KLCL_OK) return st;
    size_t limit = 0;
    int from_cache = 0;
    st = build_with(ctx, src, index, group, ctx->wg, &limit, &from_cache);
    free(src);
    if (st == KLCL_OK && limit < ctx->wg)
        st = klcl_fail(ctx, (klcl_status)CL_INVALID_WORK_GROUP_SIZE,
                       "%s kernels for %s teacher, %s student, %s gradient allow work-groups of %zu, not %zu: set "
                       "KLCL_WORK_GROUP=%zu", group == KLCL_GROUP_SHARED ? "shared" : klcl_loss_name((klcl_loss)group),
                       klcl_dtype_name(t), klcl_dtype_name(s), klcl_dtype_name(g), limit, ctx->wg, floor_pow2(limit));
    if (st != KLCL_OK) {
        release_group(v, group);
        v->status[group] = st;
        snprintf(v->error[group], sizeof v->error[group], "%.255s", ctx->error);
        return st;
    }
    if (index == 0) ctx->from_cache = ctx->from_cache && from_cache;
    v->built |= 1u << group;
    return KLCL_OK;
}

klcl_status klcl_program_build_all(klcl_context *ctx)
{
    const klcl_program *p;
    klcl_status st = KLCL_OK;
    for (int g = 0; g < KLCL_GROUP_COUNT && st == KLCL_OK; g++)
        st = klcl_program_group(ctx, KLCL_DTYPE_F32, KLCL_DTYPE_F32, KLCL_DTYPE_F32, g, &p);
    return st;
}

/* The row strategy (internal.h). Two shapes leave the one-work-group-per-row kernel idle:
 *   few rows: each work-group holds one row, so fewer rows than the device runs at once leave compute
 *     units empty (a single row of 262144 columns runs on one core of a CPU device). When rows is below
 *     the device's parallelism, target = 2 x compute units on a CPU device and 4 x compute units
 *     elsewhere, each row is cut into parts = ceil(target / rows) ranges of whole vectors, fewer where a
 *     part would keep less than ctx->split_columns columns or SPLIT_MIN_VECTORS vectors per work-item: a
 *     short part costs more in its launch and merge than it saves. The split columns are tuned per device
 *     (klcl_tune, tuner.c; KLCL_SPLIT_COLUMNS and the tuning table, tune.c); the built-in is
 *     SPLIT_COLUMNS (4096), and SPLIT_COLUMNS_CPU on a CPU device (262144, about 0.1 ms of one core at
 *     16-wide vectors): on PoCL 3.1 with 2 cores, splitting a row of 65536 or 131072 columns gained
 *     nothing (the extra launches, and a second worker thread that mostly starts too late for a short
 *     launch), 262144 in two parts lost with a gradient (0.61 against 0.47 ms for kl: a split row cannot
 *     write its gradient from the row kernel), 524288 and more gain up to 1.7x (docs/DEVICES.md,
 *     BENCHMARKS.md). Else 1.
 *   short rows: with all KLCL_WG work-items on a row (part) of fewer than 4 vectors each
 *     (columns / vw < 4 KLCL_WG, vw the vector width: a GPU's 256 work-items on V = 4096 read 2 vectors of
 *     8 each), the merge tree costs more than the reads, so a team of the smallest power of two >=
 *     columns / (4 vw) (about 4 vectors each, at least 1) takes each row and a work-group holds
 *     KLCL_WG / team rows. Else the whole group.
 * KLCL_ROW_SPLIT=P and KLCL_TEAM=T replace either choice (tests, A/B timings): P is cut to the row's
 * whole vectors, T to a power of two at most KLCL_WG. CPU devices default to KLCL_WG = 1, so team 1. The
 * inputs are the call's, never a chunk's: every chunk of a streamed call is reduced alike, and the same
 * call gives the same bits; a split row sums in another order than an unsplit one, so the two may differ
 * in the last bits (docs/LOSSES.md, "Bits and the shape of a call"). */
klcl_strategy klcl_row_strategy(const klcl_context *ctx, size_t rows, size_t width, size_t vectors)
{
    klcl_strategy s = {ctx->wg, 1};
    const size_t target = (ctx->is_cpu ? 2 : 4) * ctx->compute_units;
    if (ctx->split_env) {
        s.parts = ctx->split_env;
    } else if (rows < target) {
        size_t per_part = ctx->split_columns;
        if (per_part < (size_t)ctx->vw * SPLIT_MIN_VECTORS * ctx->wg) per_part = (size_t)ctx->vw * SPLIT_MIN_VECTORS * ctx->wg;
        const size_t most = width / per_part;
        s.parts = (target + rows - 1) / rows;
        if (s.parts > most) s.parts = most;
    }
    if (s.parts > vectors) s.parts = vectors;
    if (s.parts > PARTS_MAX) s.parts = PARTS_MAX;
    if (s.parts < 1) s.parts = 1;
    const size_t columns = width / s.parts;
    if (ctx->team_env) {
        s.team = floor_pow2(ctx->team_env < ctx->wg ? ctx->team_env : ctx->wg);
    } else if (columns / (size_t)ctx->vw < 4 * ctx->wg) {
        const size_t need = (columns + 4 * (size_t)ctx->vw - 1) / (4 * (size_t)ctx->vw);
        s.team = 1;
        while (s.team < need && s.team < ctx->wg) s.team *= 2;
    }
    return s;
}

klcl_status klcl_context_row_strategy(klcl_context *ctx, size_t rows, size_t vocab, size_t *team, size_t *parts)
{
    if (!ctx) return KLCL_ERR_NULL_POINTER;
    ctx->error[0] = '\0';
    if (team) *team = 0;
    if (parts) *parts = 0;
    if (rows == 0 || vocab == 0)
        return klcl_fail(ctx, KLCL_ERR_INVALID_SHAPE, "klcl_context_row_strategy: rows and vocab must be above 0");
    if (ctx->is_reference) return KLCL_OK;
    klcl_status st = klcl_program_build(ctx);
    if (st != KLCL_OK) return st;
    const klcl_strategy s = klcl_row_strategy(ctx, rows, vocab, vocab / (size_t)ctx->vw);
    if (team) *team = s.team;
    if (parts) *parts = s.parts;
    return KLCL_OK;
}
