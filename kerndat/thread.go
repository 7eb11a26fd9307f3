package kerndat

import (
	"runtime"

	"golang.org/x/sys/unix"
)

// onThrowawayThread runs fn on an OS thread that ends with it, so fn may
// change the thread's namespaces or credentials for good (unshare,
// capset): the goroutine stays locked to the thread and exits without
// unlocking, which makes the runtime terminate the thread.
//
// The main thread is the exception: the runtime can not end it and parks
// it instead, and /proc/self reads it, so a changed main thread would
// mislead everything that looks at /proc/self/ns or status afterwards. If
// the goroutine lands there, it holds the main thread (locked, so nothing
// else runs on it) while a second locked goroutine, necessarily on another
// thread, runs fn; the main thread is then released unchanged.
func onThrowawayThread(fn func()) {
	done := make(chan struct{})
	go func() {
		runtime.LockOSThread()
		if unix.Gettid() != unix.Getpid() {
			fn()
			close(done) // exits locked: the thread goes away
			return
		}
		inner := make(chan struct{})
		go func() {
			runtime.LockOSThread()
			fn()
			close(inner)
		}()
		<-inner
		runtime.UnlockOSThread()
		close(done)
	}()
	<-done
}
