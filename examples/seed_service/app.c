/* The service application: loads the enclave library, seals a message into a record and
 * checks it, as a seed deployment's app binary does beside its Rust enclave library. */
#include <dlfcn.h>
#include <stdio.h>
#include <string.h>
#include <sys/types.h>

typedef const char *(*name_fn)(void);
typedef ssize_t (*call_fn)(const char *, char *, size_t);

int main(int argc, char **argv) {
    const char *path = argc > 1 ? argv[1] : "/lib/libneo_service_enclave.so";
    const char *message = argc > 2 ? argv[2] : "hello, enclave";
    void *lib = dlopen(path, RTLD_NOW);
    if (lib == NULL) {
        fprintf(stderr, "dlopen %s: %s\n", path, dlerror());
        return 1;
    }
    name_fn name = (name_fn)dlsym(lib, "neo_service_name");
    call_fn seal = (call_fn)dlsym(lib, "neo_service_seal");
    call_fn verify = (call_fn)dlsym(lib, "neo_service_verify");
    if (name == NULL || seal == NULL || verify == NULL) {
        fprintf(stderr, "dlsym: %s\n", dlerror());
        return 1;
    }
    char record[4096], reason[256];
    if (seal(message, record, sizeof record) < 0) {
        fprintf(stderr, "%s: seal: %s\n", name(), record);
        return 1;
    }
    printf("%s\n", record);
    if (verify(record, reason, sizeof reason) < 0) {
        fprintf(stderr, "%s: verify: %s\n", name(), reason);
        return 1;
    }
    /* a changed message must fail the check */
    char *m = strstr(record, "\"message\":\"");
    if (m != NULL && m[11] != '"') {
        m[11] ^= 1;
        if (verify(record, reason, sizeof reason) == 0) {
            fprintf(stderr, "%s: a tampered record verified\n", name());
            return 1;
        }
        printf("tampered record refused: %s\n", reason);
    }
    dlclose(lib);
    return 0;
}
