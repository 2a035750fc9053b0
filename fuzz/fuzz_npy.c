/* libFuzzer harness for the .npy reader. The parser works on memory, so the input is parsed in place
 * (libFuzzer allocates it at its exact size, so AddressSanitizer sees any read past the end) with no file
 * or map in between. arrays.c is included to reach its static parse_npy. */
#include "arrays.c"

#include "fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    kt_array a;
    char err[512];
    err[0] = '\0';
    if (parse_npy(data, size, "fuzz.npy", &a, err, sizeof err) == 0)
        fuzz_exercise(&a, data, size);
    else
        fuzz_check_failure(&a, err);
    return 0;
}
