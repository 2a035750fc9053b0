/* libFuzzer harness for the .safetensors reader: the input is parsed in place, once with no tensor name
 * (the file must hold exactly one tensor) and once asking for the tensor "a" (the name the seeds use).
 * arrays.c is included to reach its static parse_safetensors. */
#include "arrays.c"

#include "fuzz_common.h"

static void one(const uint8_t *data, size_t size, const char *name)
{
    kt_array a;
    char err[512];
    err[0] = '\0';
    if (parse_safetensors(data, size, "fuzz.safetensors", name, &a, err, sizeof err) == 0)
        fuzz_exercise(&a, data, size);
    else
        fuzz_check_failure(&a, err);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    one(data, size, NULL);
    one(data, size, "a");
    return 0;
}
