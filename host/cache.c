/* The compiled-program cache: device binaries on disk, keyed by a hash of everything that could change
 * them (source, build options, device, driver, versions, this format), written to a temporary file and
 * renamed, so a reader sees a whole file or none. Every failure is a miss: the cache can make a start
 * faster, never make it fail.
 *
 * Where: $KLCL_CACHE_DIR, else $XDG_CACHE_HOME/klcl, else $HOME/.cache/klcl.
 * When: by default, KLCL_CACHE=off disables it. One file per kernel group (program.c): on PoCL 3.1 a
 * source build costs at least ~55 ms even when PoCL's own cache holds every kernel, while one group's
 * binary loads in ~14 ms; handing a binary out costs ~1.3 s once per group (PoCL compiles the group's
 * kernels then).
 * File: "KLCLBIN2", the 16-byte key, the binary's size (8 bytes, little-endian), a 16-byte hash of the
 * binary (a damaged body is a miss, not a wrong program), the binary. */
#include "internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define CACHE_MAGIC "KLCLBIN2"
enum { KEY_BYTES = 16, HEADER_BYTES = 8 + KEY_BYTES + 8 + KEY_BYTES };

typedef struct cache_key {
    uint64_t h[2];
} cache_key;

/* Two FNV-1a streams with different offsets: a 128-bit content key (the file repeats it and is
 * checked, so a mismatch is a miss, never a wrong program). */
static void key_add(cache_key *k, const void *data, size_t n)
{
    const unsigned char *p = data;
    for (size_t i = 0; i < n; i++) {
        k->h[0] = (k->h[0] ^ p[i]) * 0x100000001b3ull;
        k->h[1] = (k->h[1] ^ p[i]) * 0x100000001b3ull;
    }
    const unsigned char sep = 0xff; /* "ab" + "c" must differ from "a" + "bc" */
    k->h[0] = (k->h[0] ^ sep) * 0x100000001b3ull;
    k->h[1] = (k->h[1] ^ (unsigned char)(sep - 1)) * 0x100000001b3ull;
}

static void key_add_device_string(cache_key *k, cl_device_id dev, cl_device_info what)
{
    char buf[512];
    klcl_device_string(dev, what, buf, sizeof buf);
    key_add(k, buf, strlen(buf));
}

static void key_bytes_of(const cache_key *k, unsigned char *out);

/* The hash of a binary's bytes, as stored beside it. */
static void binary_hash(const unsigned char *bin, size_t n, unsigned char *out)
{
    cache_key h = {{0xcbf29ce484222325ull, 0x84222325cbf29ce4ull}};
    key_add(&h, bin, n);
    key_bytes_of(&h, out);
}

static cache_key make_key(const klcl_context *ctx, const char *src, const char *options)
{
    cache_key k = {{0xcbf29ce484222325ull, 0x84222325cbf29ce4ull}};
    key_add(&k, CACHE_MAGIC, 8);
    key_add(&k, src, strlen(src));
    key_add(&k, options, strlen(options));
    key_add_device_string(&k, ctx->device, CL_DEVICE_NAME);
    key_add_device_string(&k, ctx->device, CL_DEVICE_VENDOR);
    key_add_device_string(&k, ctx->device, CL_DEVICE_VERSION);
    key_add_device_string(&k, ctx->device, CL_DRIVER_VERSION);
    char buf[512];
    klcl_platform_string(ctx->platform, CL_PLATFORM_VERSION, buf, sizeof buf);
    key_add(&k, buf, strlen(buf));
    klcl_platform_string(ctx->platform, CL_PLATFORM_NAME, buf, sizeof buf);
    key_add(&k, buf, strlen(buf));
    return k;
}

static int cache_enabled(const klcl_context *ctx)
{
    const char *mode = getenv("KLCL_CACHE");
    if (mode && strcmp(mode, "off") == 0) return 0;
    (void)ctx;
    return 1;
}

int klcl_cache_dir(char *out, size_t cap, int create)
{
    const char *dir = getenv("KLCL_CACHE_DIR"), *xdg = getenv("XDG_CACHE_HOME"), *home = getenv("HOME");
    int n;
    if (dir && *dir)
        n = snprintf(out, cap, "%s", dir);
    else if (xdg && *xdg)
        n = snprintf(out, cap, "%s/klcl", xdg);
    else if (home && *home)
        n = snprintf(out, cap, "%s/.cache/klcl", home);
    else
        return 0;
    if (n <= 0 || (size_t)n >= cap) return 0;
    if (!create) return 1;
    /* mkdir -p, one level at a time; an existing folder is fine. */
    for (char *p = out + 1; *p; p++) {
        if (*p != '/') continue;
        *p = '\0';
        if (mkdir(out, 0700) != 0 && errno != EEXIST) return 0;
        *p = '/';
    }
    return mkdir(out, 0700) == 0 || errno == EEXIST;
}

static int cache_path(const cache_key *k, char *out, size_t cap)
{
    char dir[3072];
    if (!klcl_cache_dir(dir, sizeof dir, 1)) return 0;
    int n = snprintf(out, cap, "%s/%016llx%016llx.clbin", dir, (unsigned long long)k->h[0],
                     (unsigned long long)k->h[1]);
    return n > 0 && (size_t)n < cap;
}

static void put_u64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++) p[i] = (unsigned char)(v >> (8 * i));
}

static uint64_t get_u64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}

static void key_bytes_of(const cache_key *k, unsigned char *out)
{
    put_u64(out, k->h[0]);
    put_u64(out + 8, k->h[1]);
}

cl_program klcl_cache_load(klcl_context *ctx, const char *src, const char *options)
{
    char path[4096];
    if (!cache_enabled(ctx)) return NULL;
    cache_key k = make_key(ctx, src, options);
    if (!cache_path(&k, path, sizeof path)) return NULL;
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    cl_program program = NULL;
    unsigned char header[HEADER_BYTES], key_bytes[KEY_BYTES], hash[KEY_BYTES];
    unsigned char *binary = NULL;
    key_bytes_of(&k, key_bytes);
    if (fread(header, 1, HEADER_BYTES, f) != HEADER_BYTES || memcmp(header, CACHE_MAGIC, 8) != 0 ||
        memcmp(header + 8, key_bytes, KEY_BYTES) != 0)
        goto done;
    uint64_t size = get_u64(header + 8 + KEY_BYTES);
    if (size == 0 || size > (uint64_t)1 << 30 || !(binary = malloc((size_t)size))) goto done;
    if (fread(binary, 1, (size_t)size, f) != (size_t)size || fgetc(f) != EOF) goto done;
    binary_hash(binary, (size_t)size, hash);
    if (memcmp(hash, header + 8 + KEY_BYTES + 8, KEY_BYTES) != 0) goto done;
    size_t n = (size_t)size;
    const unsigned char *bins[1] = {binary};
    cl_int status = CL_SUCCESS, err;
    program = clCreateProgramWithBinary(ctx->cl_ctx, 1, &ctx->device, &n, bins, &status, &err);
    if (program && (err != CL_SUCCESS || status != CL_SUCCESS ||
                    clBuildProgram(program, 1, &ctx->device, options, NULL, NULL) != CL_SUCCESS)) {
        clReleaseProgram(program);
        program = NULL;
    }
done:
    free(binary);
    fclose(f);
    return program;
}

void klcl_cache_store(klcl_context *ctx, const char *src, const char *options, cl_program program)
{
    char path[4096], tmp[4200];
    if (!cache_enabled(ctx)) return;
    cache_key k = make_key(ctx, src, options);
    if (!cache_path(&k, path, sizeof path)) return;
    size_t size = 0;
    if (clGetProgramInfo(program, CL_PROGRAM_BINARY_SIZES, sizeof size, &size, NULL) != CL_SUCCESS || size == 0)
        return;
    unsigned char *binary = malloc(size);
    if (!binary) return;
    unsigned char *bins[1] = {binary};
    unsigned char header[HEADER_BYTES];
    memcpy(header, CACHE_MAGIC, 8);
    key_bytes_of(&k, header + 8);
    put_u64(header + 8 + KEY_BYTES, size);
    FILE *f = NULL;
    if (clGetProgramInfo(program, CL_PROGRAM_BINARIES, sizeof bins, bins, NULL) != CL_SUCCESS) goto done;
    binary_hash(binary, size, header + 8 + KEY_BYTES + 8);
    /* A unique temporary (threads and processes may store at once), renamed over the final name. */
    snprintf(tmp, sizeof tmp, "%s.XXXXXX", path);
    int fd = mkstemp(tmp);
    if (fd < 0) goto done;
    if (!(f = fdopen(fd, "wb"))) {
        close(fd);
        remove(tmp);
        goto done;
    }
    int ok = fwrite(header, 1, HEADER_BYTES, f) == HEADER_BYTES && fwrite(binary, 1, size, f) == size;
    ok = (fclose(f) == 0) && ok;
    f = NULL;
    if (!ok || rename(tmp, path) != 0) remove(tmp);
done:
    free(binary);
}
