/* The buffer layer: device scratch the context owns (uploads of host inputs, per-row results, outputs
 * headed for host memory), grown on demand and reused across calls. */
#include "internal.h"

klcl_status klcl_scratch_reserve(klcl_context *ctx, int which, size_t bytes)
{
    klcl_scratch *s = &ctx->scratch[which];
    if (bytes == 0) bytes = 1;
    if (s->mem && s->bytes >= bytes) return KLCL_OK;
    if (s->mem) clReleaseMemObject(s->mem);
    s->mem = NULL;
    s->bytes = 0;
    cl_int err;
    cl_mem mem = clCreateBuffer(ctx->cl_ctx, CL_MEM_READ_WRITE, bytes, NULL, &err);
    if (!mem) {
        klcl_fail_cl(ctx, err, "clCreateBuffer");
        return klcl_fail(ctx, (klcl_status)err, "clCreateBuffer of %zu bytes failed: %s", bytes,
                         klcl_status_string(err));
    }
    s->mem = mem;
    s->bytes = bytes;
    return KLCL_OK;
}

void klcl_scratch_release(klcl_context *ctx)
{
    for (int i = 0; i < SCRATCH_COUNT; i++) {
        if (ctx->scratch[i].mem) clReleaseMemObject(ctx->scratch[i].mem);
        ctx->scratch[i].mem = NULL;
        ctx->scratch[i].bytes = 0;
    }
}
