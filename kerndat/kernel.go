package kerndat

import (
	"sync"

	"golang.org/x/sys/unix"
)

var uname = sync.OnceValues(func() (string, string) {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return "unknown (uname: " + ErrText(err) + ")", "unknown"
	}
	return unix.ByteSliceToString(u.Release[:]), unix.ByteSliceToString(u.Machine[:])
})

// Kernel returns the running kernel's release and machine, as uname -r and
// uname -m print them.
func Kernel() (release, machine string) { return uname() }
