// Package dump checkpoints a live process tree into a CRIU 4.2 image
// directory that crest and CRIU both restore.
//
// The tree is frozen with PTRACE_SEIZE and PTRACE_INTERRUPT of every
// thread. What the kernel shows from outside is read from /proc, ptrace
// register sets, prlimit and process_vm_readv; what only a task can say
// about itself (sigactions, itimers, sigaltstack, its tid address, brk) is
// asked by syscalls injected through ptrace, after which every register
// and every byte the injection touched is put back. Images are written
// into a temporary directory beside the target, which is renamed into
// place only once complete; on any failure the tree is let go untouched.
// Zombies (children their parents have not waited for) are not seized:
// their pids and exit status come from /proc, and their core is all CRIU
// writes of them (zombie.go).
//
// Unsupported state (established TCP connections, external unix sockets,
// netlink sockets, ttys, namespaces other than the root's pid
// and time namespaces, ...) fails the dump with an UnsupportedError naming
// the task and the resource, rather than writing images that cannot be
// restored.
package dump
