/* A program built against an installed klcl, as a user's would be (CMake package or pkg-config). */
#include <klcl.h>

#include <math.h>
#include <stdio.h>

int main(void)
{
    if (klcl_version_number() != KLCL_VERSION_NUMBER) {
        fprintf(stderr, "header %d, library %u\n", KLCL_VERSION_NUMBER, klcl_version_number());
        return 1;
    }
    const float teacher[2] = {logf(0.7f), logf(0.3f)}, student[2] = {logf(0.5f), logf(0.5f)};
    klcl_context_options o = KLCL_CONTEXT_OPTIONS_INIT;
    o.device = "cpu";
    klcl_context *ctx;
    if (klcl_context_create(&o, &ctx) != KLCL_OK) return 1;
    klcl_loss_desc desc;
    klcl_loss_desc_init(&desc, KLCL_LOSS_KL);
    klcl_batch b = KLCL_BATCH_INIT;
    b.rows = 1;
    b.vocab = 2;
    b.teacher = klcl_host_tensor(teacher, 0);
    b.student = klcl_host_tensor(student, 0);
    klcl_result r;
    klcl_status st = klcl_compute(ctx, &desc, &b, &r);
    klcl_context_destroy(ctx);
    printf("klcl %s: KL(P||Q) = %.5f\n", klcl_version_string(), r.loss);
    return st == KLCL_OK && fabs(r.loss - 0.08228) < 1e-5 ? 0 : 1;
}
