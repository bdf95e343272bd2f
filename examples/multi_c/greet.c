#include <stdio.h>
#include "greet.h"

static char buffer[128];

const char *greeting(const char *who) {
    snprintf(buffer, sizeof buffer, "Hello, %s!", who);
    return buffer;
}

int add(int a, int b) {
    return a + b;
}
