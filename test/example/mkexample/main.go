// Command mkexample writes crest's built-in example image set into a
// directory (make demo uses it until crest dumps live workloads).
package main

import (
	"fmt"
	"os"

	"github.com/crest-restore/crest/test/example"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: mkexample DIR")
		os.Exit(2)
	}
	if err := example.Write(os.Args[1]); err != nil {
		fmt.Fprintln(os.Stderr, "mkexample:", err)
		os.Exit(1)
	}
}
