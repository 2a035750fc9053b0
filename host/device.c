/* The device layer: enumerate OpenCL platforms and devices, and pick one from a user's description. */
#include "internal.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { MAX_PLATFORMS = 16, MAX_DEVICES = 64 };

typedef struct found_device {
    cl_platform_id platform;
    cl_device_id device;
    klcl_device_info info;
} found_device;

/* buf (NUL-terminated by the caller) into out, cut to cap - 1 characters. */
static void copy_truncated(char *out, size_t cap, const char *buf)
{
    size_t n = strlen(buf);
    if (n >= cap) n = cap - 1;
    memcpy(out, buf, n);
    out[n] = '\0';
}

void klcl_device_string(cl_device_id dev, cl_device_info what, char *out, size_t cap)
{
    char buf[1024] = {0};
    out[0] = '\0';
    if (clGetDeviceInfo(dev, what, sizeof buf - 1, buf, NULL) == CL_SUCCESS) copy_truncated(out, cap, buf);
}

void klcl_platform_string(cl_platform_id p, cl_platform_info what, char *out, size_t cap)
{
    char buf[1024] = {0};
    out[0] = '\0';
    if (clGetPlatformInfo(p, what, sizeof buf - 1, buf, NULL) == CL_SUCCESS) copy_truncated(out, cap, buf);
}

static void fill_info(found_device *d, unsigned pi, unsigned di)
{
    klcl_device_info *info = &d->info;
    cl_device_type type = 0;
    cl_ulong mem = 0, alloc = 0;
    cl_uint units = 0;
    memset(info, 0, sizeof *info);
    snprintf(info->id, sizeof info->id, "%u:%u", pi, di);
    info->platform_index = pi;
    info->device_index = di;
    klcl_device_string(d->device, CL_DEVICE_NAME, info->name, sizeof info->name);
    if (!info->name[0]) snprintf(info->name, sizeof info->name, "(unnamed)");
    klcl_platform_string(d->platform, CL_PLATFORM_NAME, info->platform_name, sizeof info->platform_name);
    if (!info->platform_name[0]) snprintf(info->platform_name, sizeof info->platform_name, "(unnamed)");
    klcl_device_string(d->device, CL_DRIVER_VERSION, info->driver_version, sizeof info->driver_version);
    clGetDeviceInfo(d->device, CL_DEVICE_TYPE, sizeof type, &type, NULL);
    clGetDeviceInfo(d->device, CL_DEVICE_GLOBAL_MEM_SIZE, sizeof mem, &mem, NULL);
    clGetDeviceInfo(d->device, CL_DEVICE_MAX_MEM_ALLOC_SIZE, sizeof alloc, &alloc, NULL);
    clGetDeviceInfo(d->device, CL_DEVICE_MAX_COMPUTE_UNITS, sizeof units, &units, NULL);
    info->is_gpu = (type & CL_DEVICE_TYPE_GPU) != 0;
    info->is_cpu = (type & CL_DEVICE_TYPE_CPU) != 0;
    info->global_mem_bytes = mem;
    info->max_alloc_bytes = alloc;
    info->compute_units = units;
}

/* Every device of every platform that answers; a platform that fails to list its devices is skipped. */
static size_t enumerate(found_device *out, size_t capacity)
{
    cl_platform_id platforms[MAX_PLATFORMS];
    cl_uint np = 0;
    if (clGetPlatformIDs(MAX_PLATFORMS, platforms, &np) != CL_SUCCESS) return 0;
    if (np > MAX_PLATFORMS) np = MAX_PLATFORMS;
    size_t n = 0;
    for (cl_uint pi = 0; pi < np; pi++) {
        cl_device_id devices[MAX_DEVICES];
        cl_uint nd = 0;
        if (clGetDeviceIDs(platforms[pi], CL_DEVICE_TYPE_ALL, MAX_DEVICES, devices, &nd) != CL_SUCCESS) continue;
        if (nd > MAX_DEVICES) nd = MAX_DEVICES;
        for (cl_uint di = 0; di < nd && n < capacity; di++) {
            out[n].platform = platforms[pi];
            out[n].device = devices[di];
            fill_info(&out[n], pi, di);
            n++;
        }
    }
    return n;
}

klcl_status klcl_list_devices(klcl_device_info *out, size_t capacity, size_t *count)
{
    if (!count || (!out && capacity > 0)) return KLCL_ERR_NULL_POINTER;
    found_device *all = malloc(MAX_PLATFORMS * MAX_DEVICES * sizeof *all);
    if (!all) return KLCL_ERR_OUT_OF_HOST_MEMORY;
    size_t n = enumerate(all, MAX_PLATFORMS * MAX_DEVICES);
    for (size_t i = 0; i < n && i < capacity; i++) out[i] = all[i].info;
    *count = n;
    free(all);
    return KLCL_OK;
}

static int contains_nocase(const char *hay, const char *needle)
{
    size_t nl = strlen(needle);
    for (; *hay; hay++) {
        size_t i = 0;
        while (i < nl && hay[i] && tolower((unsigned char)hay[i]) == tolower((unsigned char)needle[i])) i++;
        if (i == nl) return 1;
    }
    return nl == 0;
}

/* "P:D" with both parts decimal; returns 1 and the indices when spec has that form. */
static int parse_index(const char *spec, unsigned *pi, unsigned *di)
{
    char *end;
    if (!isdigit((unsigned char)spec[0])) return 0;
    unsigned long p = strtoul(spec, &end, 10);
    if (*end != ':' || !isdigit((unsigned char)end[1])) return 0;
    unsigned long d = strtoul(end + 1, &end, 10);
    if (*end != '\0' || p > 0xFFFF || d > 0xFFFF) return 0;
    *pi = (unsigned)p;
    *di = (unsigned)d;
    return 1;
}

static void use_reference(klcl_context *ctx)
{
    ctx->is_reference = 1;
    snprintf(ctx->device_name, sizeof ctx->device_name, "cpu reference");
}

klcl_status klcl_select_device(klcl_context *ctx, const char *spec)
{
    if (!spec || !*spec) spec = getenv("KLCL_DEVICE");
    int fallback = !spec || !*spec; /* nothing asked for: the CPU reference serves when no device exists */
    if (!fallback && strcmp(spec, "cpu") == 0) {
        use_reference(ctx);
        return KLCL_OK;
    }
    found_device *all = malloc(MAX_PLATFORMS * MAX_DEVICES * sizeof *all);
    if (!all) return klcl_fail(ctx, KLCL_ERR_OUT_OF_HOST_MEMORY, "listing devices: out of host memory");
    size_t n = enumerate(all, MAX_PLATFORMS * MAX_DEVICES);
    const found_device *pick = NULL;
    unsigned pi, di;
    if (fallback || strcmp(spec, "opencl") == 0) {
        for (size_t i = 0; i < n && !pick; i++)
            if (all[i].info.is_gpu) pick = &all[i];
        if (!pick && n > 0) pick = &all[0];
    } else if (parse_index(spec, &pi, &di)) {
        for (size_t i = 0; i < n && !pick; i++)
            if (all[i].info.platform_index == pi && all[i].info.device_index == di) pick = &all[i];
    } else {
        for (size_t i = 0; i < n && !pick; i++)
            if (contains_nocase(all[i].info.name, spec) || contains_nocase(all[i].info.platform_name, spec))
                pick = &all[i];
    }
    klcl_status st = KLCL_OK;
    if (pick) {
        ctx->platform = pick->platform;
        ctx->device = pick->device;
        snprintf(ctx->device_name, sizeof ctx->device_name, "%s", pick->info.name);
    } else if (fallback) {
        use_reference(ctx);
    } else {
        st = klcl_fail(ctx, KLCL_ERR_NO_DEVICE, "device \"%s\": no OpenCL device matches (%zu found)", spec, n);
    }
    free(all);
    return st;
}
