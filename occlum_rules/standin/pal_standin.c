/*
 * pal_standin.c -- the occlum-rules STAND-IN for libocclum-pal.so.
 *
 * THIS IS NOT OCCLUM's PAL. It exists only so that an instance built without
 * an Occlum install has a file where Occlum puts its PAL. It exports the PAL
 * API names; every call prints why it cannot work and fails with ENOSYS.
 */
#include <errno.h>
#include <stdio.h>

#include "standin.h"

struct occlum_pal_attr;
struct occlum_pal_create_process_args;
struct occlum_pal_exec_args;

#define PAL_EXPORT __attribute__((visibility("default")))

static int standin_fail(const char *what)
{
    fprintf(stderr, "%s: %s\n", what, STANDIN_MESSAGE);
    errno = ENOSYS;
    return -1;
}

/* A version <= 0 is "invalid" in the PAL API, so callers stop here. */
PAL_EXPORT int occlum_pal_get_version(void)
{
    return standin_fail("occlum_pal_get_version");
}

PAL_EXPORT int occlum_pal_init(const struct occlum_pal_attr *attr)
{
    (void)attr;
    return standin_fail("occlum_pal_init");
}

PAL_EXPORT int occlum_pal_create_process(struct occlum_pal_create_process_args *args)
{
    (void)args;
    return standin_fail("occlum_pal_create_process");
}

PAL_EXPORT int occlum_pal_exec(struct occlum_pal_exec_args *args)
{
    (void)args;
    return standin_fail("occlum_pal_exec");
}

PAL_EXPORT int occlum_pal_kill(int pid, int sig)
{
    (void)pid;
    (void)sig;
    return standin_fail("occlum_pal_kill");
}

PAL_EXPORT int occlum_pal_destroy(void)
{
    return standin_fail("occlum_pal_destroy");
}
