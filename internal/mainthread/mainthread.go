// Package mainthread keeps the main goroutine on the process's main
// thread, so that no other goroutine ever runs there. The test binaries
// that restore and dump trees in-process import it.
//
// crest's engine (and its tests) move locked threads into a tree's
// namespaces (setns, unshare) and let some of them end with their
// goroutine rather than come back: the Go runtime then ends the thread.
// It cannot end the main thread: a locked goroutine that exits there
// leaves it parked for good, in the tree's namespaces, and /proc/self/ns,
// which is the main thread's, says them from then on. crest reads its
// own namespaces through /proc/thread-self, which an unlocked goroutine
// reads from a thread in them; a test binary, which restores and dumps
// many trees and reads /proc/self, imports this package to rule the
// parked main thread out. (crest itself does not: keeping the main
// goroutine on one thread costs it a thread switch at every wake-up.)
package mainthread

import "runtime"

func init() { runtime.LockOSThread() }
