/*
 * init_standin.c -- the occlum-rules STAND-IN for Occlum's /bin/init (initfs).
 *
 * THIS IS NOT OCCLUM's init. It only fills the place of /bin/init in an
 * instance built without an Occlum install. It says so and exits with 1.
 * Freestanding (raw syscalls) and a static PIE, so it needs no C library.
 */
#include "standin.h"

STANDIN_DEFINE_START;

__attribute__((noreturn, used)) void standin_main(long *sp)
{
    (void)sp;
    standin_puts(2, "init: " STANDIN_MESSAGE " (stand-in /bin/init, not Occlum's)\n");
    standin_exit(1);
}
