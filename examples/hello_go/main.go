// Hello from Go inside an Occlum enclave (standard library only).
package main

import (
	"fmt"
	"os"
	"runtime"
)

func main() {
	who := "Occlum"
	if len(os.Args) > 1 {
		who = os.Args[1]
	}
	fmt.Printf("Hello, %s, from Go %s!\n", who, runtime.Version())
}
