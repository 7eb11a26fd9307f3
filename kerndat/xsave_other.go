//go:build !amd64

package kerndat

// readXSave: xsave is x86's; other architectures report its absence.
func readXSave() xsaveInfo { return xsaveInfo{} }

// XSaveComponent: no xsave state outside x86.
func XSaveComponent(bit int) (off, size int) { return 0, 0 }
