/*
 * libos_standin.c -- the occlum-rules STAND-IN for libocclum-libos.so.
 *
 * THIS IS NOT OCCLUM. It is used only when no Occlum install is found, so that
 * the instance build still runs every stage for real: the config-MAC patch of
 * `.builtin_config`, SGX signing and MRENCLAVE measurement. It has the shape
 * Occlum's LibOS enclave presents to the signer and nothing more; an instance
 * built with it cannot run on SGX.
 *
 * Shape (what sgx_sign and the MAC patch look at):
 *   - ET_DYN x86-64 PIE without an interpreter, PT_DYNAMIC + .dynsym, no
 *     undefined symbols, no text relocations, only RELATIVE relocations;
 *   - exported g_global_data (sizeof(global_data_t) of the Occlum SDK fork,
 *     1760 bytes) in file-backed data, whose first word is the sdk_version
 *     the signer insists on (2.20.100 by default, -DSDK_MINOR=21 for 2.21);
 *   - exported enclave_entry (also the ELF entry point), g_peak_heap_used
 *     and g_peak_rsrv_mem_committed;
 *   - a little TLS, so the signer's TLS/TD sizing is exercised as for the
 *     real LibOS;
 *   - a non-alloc `.note.sgxmeta` note, name "sgx_metadata\0" (13 bytes, not
 *     padded), type 1, desc METADATA_SIZE (0x5000) zero bytes;
 *   - `.builtin_config`: 47 bytes, read-only, align 1, PROGBITS, in a
 *     measured read-only segment, with slack after it (standin.lds) so the
 *     48-byte `objcopy --update-section` patch stays in place.
 */
#include "standin.h"

#ifndef SDK_MAJOR
#define SDK_MAJOR 2
#endif
#ifndef SDK_MINOR
#define SDK_MINOR 20
#endif
#ifndef SDK_REV
#define SDK_REV 100
#endif
#define GLOBAL_DATA_SIZE 1760      /* global_data_t, occlum/linux-sgx 2.20/2.21 forks */
#define METADATA_SIZE 0x5000       /* .note.sgxmeta desc size in those forks */
#define CONFIG_MAC_SLOT_SIZE 47    /* 16 bytes as "xx" joined by 15 '-' */
#define CONFIG_MAC_LEN 16

#define SDK_VERSION_WORD \
    (((unsigned long)SDK_MAJOR << 32) | ((unsigned long)SDK_MINOR << 16) | (unsigned long)SDK_REV)

#define STR2(x) #x
#define STR(x) STR2(x)

/*
 * The signer only checks the first word; the rest is replaced in memory by
 * the signer's global-data template before measuring, so its file bytes do
 * not matter. It must be initialised data so that it is file-backed.
 */
struct standin_global_data {
    unsigned long sdk_version;
    unsigned char rest[GLOBAL_DATA_SIZE - 8];
};
__attribute__((visibility("default"), used, aligned(64)))
volatile struct standin_global_data g_global_data = {
    SDK_VERSION_WORD, {[0 ... GLOBAL_DATA_SIZE - 9] = 0x5a}};

/* Recorded by the signer's ELF parser when present, as in the real LibOS. */
__attribute__((visibility("default"), used)) volatile unsigned long g_peak_heap_used;
__attribute__((visibility("default"), used)) volatile unsigned long g_peak_rsrv_mem_committed;

/* TLS, local-exec: resolved at link time, no TLS relocations. */
static __attribute__((tls_model("local-exec"))) __thread unsigned long standin_tls_calls = 1;

/* A label a human finds with `strings`, reached through a pointer so the file
 * also carries a RELATIVE relocation, like every real PIE enclave. */
static const char standin_label[] =
    "occlum-rules " STANDIN_MESSAGE " (this file is a stand-in, not Occlum's LibOS)";
__attribute__((used)) static const char *volatile standin_label_ptr = standin_label;

/*
 * The config-MAC slot. It is emitted from assembly so that its section type,
 * flags, size and alignment are exactly those of Occlum's 47-byte
 * `#[link_section = ".builtin_config"]` static (a C array of this size would
 * be over-aligned by the compiler). The build later writes the MAC text into
 * it; here it is all zeros, which, as in the real LibOS, does not parse.
 */
__asm__(".pushsection .builtin_config,\"a\",@progbits\n"
        ".p2align 0\n"
        ".type standin_config_mac_slot,@object\n"
        "standin_config_mac_slot:\n"
        ".zero " STR(CONFIG_MAC_SLOT_SIZE) "\n"
        ".size standin_config_mac_slot, " STR(CONFIG_MAC_SLOT_SIZE) "\n"
        ".popsection\n");
extern const unsigned char standin_config_mac_slot[CONFIG_MAC_SLOT_SIZE]
    __attribute__((visibility("hidden")));

static int hex_digit(unsigned char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/*
 * Read the slot the way the LibOS does: split the 47 bytes on '-', demand
 * exactly 16 pieces, and parse each as an unsigned 8-bit number in base 16
 * (optional leading '+', at least one digit, value at most 0xff). Returns 0
 * and fills mac, or -1 where the LibOS would panic.
 */
static int parse_config_mac(const volatile unsigned char *slot, unsigned char mac[CONFIG_MAC_LEN])
{
    unsigned int pieces = 0, value = 0, digits = 0, signed_piece = 0;

    for (unsigned int i = 0; i <= CONFIG_MAC_SLOT_SIZE; i++) {
        /* The end of the slot closes the last piece like a separator. */
        unsigned char c = i < CONFIG_MAC_SLOT_SIZE ? slot[i] : '-';
        if (c == '-') {
            if (digits == 0 || pieces == CONFIG_MAC_LEN)
                return -1;
            mac[pieces++] = (unsigned char)value;
            value = digits = signed_piece = 0;
            continue;
        }
        if (c == '+' && digits == 0 && !signed_piece) {
            signed_piece = 1;
            continue;
        }
        int d = hex_digit(c);
        if (d < 0)
            return -1;
        value = value * 16 + (unsigned int)d;
        digits++;
        if (value > 0xff)
            return -1;
    }
    return pieces == CONFIG_MAC_LEN ? 0 : -1;
}

static unsigned char standin_config_mac[CONFIG_MAC_LEN];

/*
 * Entry point. A real enclave would start the LibOS here; the stand-in only
 * parses its config MAC slot (which keeps the slot referenced, as Occlum's
 * black_box read does) and reports failure: it cannot run anything.
 */
__attribute__((visibility("default"), used, noinline))
long enclave_entry(long arg)
{
    const volatile unsigned char *slot = standin_config_mac_slot;
    __asm__("" : "+r"(slot)); /* like std::hint::black_box: no constant folding */

    standin_tls_calls += (unsigned long)arg;
    if (parse_config_mac(slot, standin_config_mac) != 0)
        return -1;
    g_peak_heap_used = g_global_data.sdk_version + standin_tls_calls;
    return standin_label_ptr[0] == 'o' ? -38 /* ENOSYS: stand-in */ : -1;
}

/* The metadata note the signer fills in: namesz 13, descsz METADATA_SIZE,
 * type 1, desc right after the unpadded name, not SHF_ALLOC. */
__asm__(".pushsection .note.sgxmeta,\"\",@note\n"
        ".p2align 2\n"
        ".long 13\n"
        ".long " STR(METADATA_SIZE) "\n"
        ".long 1\n"
        ".asciz \"sgx_metadata\"\n"
        ".fill " STR(METADATA_SIZE) ",1,0\n"
        ".p2align 2\n"
        ".popsection\n");
