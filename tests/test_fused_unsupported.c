/* Built without CLBlast (KLCL_WITH_CLBLAST=OFF), the fused linear + loss path must say so: every entry
 * point answers KLCL_ERR_UNSUPPORTED with a message that names the missing dependency, and nothing else
 * breaks. Runs on the CPU reference, so it needs no OpenCL device. */
#include "test_util.h"

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <string.h>

static void test_fused_unsupported(void **state)
{
    (void)state;
    assert_int_equal(klcl_fused_supported(), 0);
    klcl_context_options o = KLCL_CONTEXT_OPTIONS_INIT;
    o.device = "cpu";
    klcl_context *ctx = NULL;
    assert_int_equal(klcl_context_create(&o, &ctx), KLCL_OK);

    float hidden[2 * 3] = {0}, weight[4 * 3] = {0}, teacher[2 * 4] = {0};
    klcl_loss_desc desc;
    klcl_loss_desc_init(&desc, KLCL_LOSS_KL);
    klcl_fused_batch b = KLCL_FUSED_BATCH_INIT;
    b.rows = 2;
    b.student.dim = 3;
    b.student.vocab = 4;
    b.student.hidden = klcl_host_tensor(hidden, 0);
    b.student.weight = klcl_host_tensor(weight, 0);
    b.teacher_logits = klcl_host_tensor(teacher, 0);
    klcl_result r;
    assert_int_equal(klcl_compute_fused(ctx, &desc, &b, NULL, &r, NULL), KLCL_ERR_UNSUPPORTED);
    assert_non_null(strstr(klcl_last_error(ctx), "CLBlast"));
    assert_int_equal(klcl_fused_warm(ctx), KLCL_ERR_UNSUPPORTED);
    assert_non_null(strstr(klcl_last_error(ctx), "KLCL_WITH_CLBLAST=OFF"));
    assert_int_equal(klcl_compute_fused(NULL, &desc, &b, NULL, &r, NULL), KLCL_ERR_NULL_POINTER);

    /* the rest of the library is unaffected */
    klcl_batch full = KLCL_BATCH_INIT;
    full.rows = 2;
    full.vocab = 4;
    full.teacher = klcl_host_tensor(teacher, 0);
    full.student = klcl_host_tensor(teacher, 0);
    assert_int_equal(klcl_compute(ctx, &desc, &full, &r), KLCL_OK);
    assert_true(r.loss == 0.0);
    klcl_context_destroy(ctx);
}

int main(void)
{
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_fused_unsupported)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
