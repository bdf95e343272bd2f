/* Loads the Rust cdylib at run time, as an enclave app loads a plug-in library. */
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>

typedef uint64_t (*add_fn)(uint64_t, uint64_t);
typedef const char *(*version_fn)(void);

int main(int argc, char **argv) {
    const char *path = argc > 1 ? argv[1] : "libenclave_lib.so";
    void *lib = dlopen(path, RTLD_NOW);
    if (lib == NULL) {
        fprintf(stderr, "dlopen %s: %s\n", path, dlerror());
        return 1;
    }
    add_fn add = (add_fn)dlsym(lib, "enclave_lib_add");
    version_fn version = (version_fn)dlsym(lib, "enclave_lib_version");
    if (add == NULL || version == NULL) {
        fprintf(stderr, "dlsym: %s\n", dlerror());
        return 1;
    }
    printf("%s: 2 + 40 = %llu\n", version(), (unsigned long long)add(2, 40));
    dlclose(lib);
    return 0;
}
