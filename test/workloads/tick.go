package workloads

import "testing"

// TickSource is the C of a ticking workload (StartTicking): its includes
// besides workload.h and time.h, functions of its own, declarations at
// the top of main, and what main does before its loop.
type TickSource struct{ Includes, Funcs, Decls, Setup string }

// StartTicking builds the workload kind-name of src and starts it in a
// directory of its own: main runs src.Setup (the log is fd 3, the first
// fd of Setup 4), then writes "tick N" to out-KIND.log every millisecond.
// Tests put into Setup the state a dump must keep or refuse.
func StartTicking(t testing.TB, kind, name string, src TickSource) *Process {
	t.Helper()
	c := "#define _GNU_SOURCE\n" + src.Includes + `#include <time.h>
#include "workload.h"
` + src.Funcs + `
int main(void)
{
	struct timespec ms = { 0, 1000 * 1000 };
	int logfd = open_log("` + kind + `");
	char line[64];
	` + src.Decls + `

	` + src.Setup + `
	for (unsigned long n = 1;; n++) {
		snprintf(line, sizeof line, "tick %lu\n", n);
		say(logfd, line);
		nanosleep(&ms, NULL);
	}
}
`
	bin, err := BuildSource(kind+"-"+name, kind+".c", []byte(c), []string{"-static", "-O2"})
	if err != nil {
		t.Fatal(err)
	}
	return StartIn(t, bin, t.TempDir())
}
