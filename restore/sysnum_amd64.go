package restore

// x86-64 system call numbers the syscall package does not define.
const (
	sysMemfdCreate     = 319
	sysPidfdSendSignal = 424
	sysPidfdOpen       = 434
)
