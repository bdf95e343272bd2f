#include <stdio.h>

int main(void) {
    printf("Hello from an Occlum enclave!\n");
    return 0;
}
