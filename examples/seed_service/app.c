/* The service application: loads the enclave library and calls it, as a seed deployment's
 * app binary does beside its Rust enclave library. */
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

typedef const char *(*name_fn)(void);
typedef uint64_t (*checksum_fn)(const uint8_t *, size_t);

int main(int argc, char **argv) {
    const char *path = argc > 1 ? argv[1] : "/lib/libneo_service_enclave.so";
    const char *message = argc > 2 ? argv[2] : "hello, enclave";
    void *lib = dlopen(path, RTLD_NOW);
    if (lib == NULL) {
        fprintf(stderr, "dlopen %s: %s\n", path, dlerror());
        return 1;
    }
    name_fn name = (name_fn)dlsym(lib, "neo_service_name");
    checksum_fn checksum = (checksum_fn)dlsym(lib, "neo_service_checksum");
    if (name == NULL || checksum == NULL) {
        fprintf(stderr, "dlsym: %s\n", dlerror());
        return 1;
    }
    printf("%s: checksum(\"%s\") = %016llx\n", name(), message,
           (unsigned long long)checksum((const uint8_t *)message, strlen(message)));
    dlclose(lib);
    return 0;
}
