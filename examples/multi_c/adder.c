#include <stdio.h>
#include <stdlib.h>
#include "greet.h"

int main(int argc, char **argv) {
    int a = argc > 1 ? atoi(argv[1]) : 2;
    int b = argc > 2 ? atoi(argv[2]) : 3;
    printf("%d + %d = %d\n", a, b, add(a, b));
    return 0;
}
