/* The context: one device, its OpenCL context and queue (own or adopted), the built program, scratch
 * buffers, and the messages of the last failure. */
#include "internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

klcl_status klcl_fail(klcl_context *ctx, klcl_status status, const char *fmt, ...)
{
    if (ctx) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(ctx->error, sizeof ctx->error, fmt, ap);
        va_end(ap);
    }
    return status;
}

klcl_status klcl_fail_cl(klcl_context *ctx, cl_int err, const char *call)
{
    return klcl_fail(ctx, (klcl_status)err, "%s failed: %s (%d)", call, klcl_status_string(err), (int)err);
}

static klcl_status adopt_queue(klcl_context *ctx, const klcl_context_options *o)
{
    cl_context qctx = NULL;
    cl_int err = clGetCommandQueueInfo(o->queue, CL_QUEUE_CONTEXT, sizeof qctx, &qctx, NULL);
    if (err != CL_SUCCESS) return klcl_fail_cl(ctx, err, "options->queue: clGetCommandQueueInfo");
    if (o->cl_ctx && o->cl_ctx != qctx)
        return klcl_fail(ctx, KLCL_ERR_INVALID_VALUE, "options->cl_ctx is not the context of options->queue");
    cl_command_queue_properties props = 0;
    err = clGetCommandQueueInfo(o->queue, CL_QUEUE_PROPERTIES, sizeof props, &props, NULL);
    if (err != CL_SUCCESS) return klcl_fail_cl(ctx, err, "options->queue: clGetCommandQueueInfo");
    if (props & CL_QUEUE_OUT_OF_ORDER_EXEC_MODE_ENABLE)
        return klcl_fail(ctx, KLCL_ERR_UNSUPPORTED, "options->queue is out-of-order: klcl needs an in-order queue");
    err = clGetCommandQueueInfo(o->queue, CL_QUEUE_DEVICE, sizeof ctx->device, &ctx->device, NULL);
    if (err != CL_SUCCESS) return klcl_fail_cl(ctx, err, "options->queue: clGetCommandQueueInfo");
    clGetDeviceInfo(ctx->device, CL_DEVICE_PLATFORM, sizeof ctx->platform, &ctx->platform, NULL);
    klcl_device_string(ctx->device, CL_DEVICE_NAME, ctx->device_name, sizeof ctx->device_name);
    if (!ctx->device_name[0]) snprintf(ctx->device_name, sizeof ctx->device_name, "(adopted device)");
    clRetainCommandQueue(o->queue);
    clRetainContext(qctx);
    ctx->queue = o->queue;
    ctx->cl_ctx = qctx;
    return KLCL_OK;
}

static klcl_status open_device(klcl_context *ctx)
{
    cl_int err;
    cl_context_properties props[] = {CL_CONTEXT_PLATFORM, (cl_context_properties)ctx->platform, 0};
    ctx->cl_ctx = clCreateContext(props, 1, &ctx->device, NULL, NULL, &err);
    if (!ctx->cl_ctx) return klcl_fail_cl(ctx, err, "clCreateContext");
    ctx->queue = clCreateCommandQueue(ctx->cl_ctx, ctx->device, 0, &err);
    if (!ctx->queue) return klcl_fail_cl(ctx, err, "clCreateCommandQueue");
    return KLCL_OK;
}

klcl_status klcl_context_create(const klcl_context_options *options, klcl_context **out)
{
    if (!out) return KLCL_ERR_NULL_POINTER;
    *out = NULL;
    klcl_context_options defaults = KLCL_CONTEXT_OPTIONS_INIT;
    const klcl_context_options *o = options ? options : &defaults;
    klcl_context *ctx = calloc(1, sizeof *ctx);
    if (!ctx) return KLCL_ERR_OUT_OF_HOST_MEMORY;
    const char *env_verify = getenv("KLCL_VERIFY");
    ctx->verify = o->verify || (env_verify && strcmp(env_verify, "1") == 0);
    ctx->chunk_rows = o->chunk_rows;
    const char *env_chunk = getenv("KLCL_CHUNK_ROWS");
    if (!ctx->chunk_rows && env_chunk && *env_chunk) {
        char *end = NULL;
        unsigned long long n = strtoull(env_chunk, &end, 10);
        if (end && *end == '\0' && n > 0) ctx->chunk_rows = (size_t)n;
    }

    klcl_status st;
    if (o->queue) {
        st = adopt_queue(ctx, o);
    } else if (o->cl_ctx) {
        st = klcl_fail(ctx, KLCL_ERR_INVALID_VALUE, "options->cl_ctx given without options->queue");
    } else {
        st = klcl_select_device(ctx, o->device);
        if (st == KLCL_OK && !ctx->is_reference) st = open_device(ctx);
    }
    if (st != KLCL_OK) {
        klcl_context_destroy(ctx);
        return st;
    }
    *out = ctx;
    return KLCL_OK;
}

void klcl_context_destroy(klcl_context *ctx)
{
    if (!ctx) return;
    if (ctx->async.done) {
        clWaitForEvents(1, &ctx->async.done);
        clReleaseEvent(ctx->async.done);
    }
    free(ctx->async.row_loss);
    free(ctx->async.stats);
    free(ctx->async.flags);
    klcl_scratch_release(ctx);
    klcl_program_release(ctx);
    if (ctx->copy_queue) clReleaseCommandQueue(ctx->copy_queue);
    if (ctx->queue) clReleaseCommandQueue(ctx->queue);
    if (ctx->cl_ctx) clReleaseContext(ctx->cl_ctx);
    free(ctx->build_log);
    free(ctx);
}

klcl_status klcl_context_prepare(klcl_context *ctx)
{
    if (!ctx) return KLCL_ERR_NULL_POINTER;
    ctx->error[0] = '\0';
    return ctx->is_reference ? KLCL_OK : klcl_program_build_all(ctx);
}

int klcl_context_is_reference(const klcl_context *ctx)
{
    return ctx ? ctx->is_reference : 0;
}

const char *klcl_context_device_name(const klcl_context *ctx)
{
    return ctx ? ctx->device_name : "";
}

cl_context klcl_context_cl_context(const klcl_context *ctx)
{
    return ctx ? ctx->cl_ctx : NULL;
}

cl_command_queue klcl_context_cl_queue(const klcl_context *ctx)
{
    return ctx ? ctx->queue : NULL;
}

const char *klcl_last_error(const klcl_context *ctx)
{
    return ctx ? ctx->error : "";
}

int klcl_context_cache_hit(const klcl_context *ctx)
{
    return ctx ? ctx->from_cache : 0;
}

const char *klcl_build_log(const klcl_context *ctx)
{
    return ctx && ctx->build_log ? ctx->build_log : "";
}
