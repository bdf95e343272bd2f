/*
 * standin.h -- shared bits of the occlum-rules STAND-IN Occlum binaries.
 *
 * Everything built from this directory is a stand-in, used only when no Occlum
 * install is found so that the build stages (config-MAC patch, signing,
 * measurement) still run end to end. None of it is Occlum code and none of it
 * can run an enclave: an instance built with it cannot run on SGX.
 *
 * The helpers below talk to Linux directly (raw syscalls), so the stand-in
 * init and occlum-run need no C library and come out the same on every host.
 */
#ifndef OCCLUM_RULES_STANDIN_H
#define OCCLUM_RULES_STANDIN_H

#define STANDIN_MESSAGE "stand-in LibOS: this instance cannot run on SGX"

#define STANDIN_SYS_WRITE 1
#define STANDIN_SYS_EXIT_GROUP 231

static inline long standin_syscall3(long nr, long a, long b, long c)
{
    long ret;
    __asm__ volatile("syscall"
                     : "=a"(ret)
                     : "a"(nr), "D"(a), "S"(b), "d"(c)
                     : "rcx", "r11", "memory");
    return ret;
}

static inline unsigned long standin_strlen(const char *s)
{
    unsigned long n = 0;
    while (s[n] != '\0')
        n++;
    return n;
}

/* Write the whole string to fd, retrying short writes; errors are ignored
 * because there is nobody left to tell. */
static inline void standin_puts(int fd, const char *s)
{
    unsigned long left = standin_strlen(s);
    while (left > 0) {
        long n = standin_syscall3(STANDIN_SYS_WRITE, fd, (long)s, (long)left);
        if (n <= 0)
            return;
        s += n;
        left -= (unsigned long)n;
    }
}

static inline __attribute__((noreturn)) void standin_exit(int status)
{
    for (;;)
        standin_syscall3(STANDIN_SYS_EXIT_GROUP, status, 0, 0);
}

/*
 * Program entry for the freestanding stand-in executables: the kernel leaves
 * argc at (%rsp); realign the stack for the C ABI and call
 * standin_main(long *sp), which never returns.
 */
#define STANDIN_DEFINE_START                                  \
    __asm__(".text\n"                                         \
            ".globl _start\n"                                 \
            ".type _start,@function\n"                        \
            "_start:\n"                                       \
            "  xor %ebp, %ebp\n"                              \
            "  mov %rsp, %rdi\n"                              \
            "  and $-16, %rsp\n"                              \
            "  call standin_main\n"                           \
            "  hlt\n"                                         \
            ".size _start, .-_start\n")

#endif /* OCCLUM_RULES_STANDIN_H */
