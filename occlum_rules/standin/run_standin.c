/*
 * run_standin.c -- the occlum-rules STAND-IN for Occlum's `occlum-run`.
 *
 * THIS IS NOT OCCLUM's occlum-run. It only fills its place in an instance
 * built without an Occlum install. It says so and exits with 1, whatever the
 * arguments. Freestanding (raw syscalls), so it needs no C library.
 */
#include "standin.h"

STANDIN_DEFINE_START;

__attribute__((noreturn, used)) void standin_main(long *sp)
{
    (void)sp;
    standin_puts(2, "occlum-run: " STANDIN_MESSAGE " (stand-in occlum-run, not Occlum's)\n");
    standin_exit(1);
}
