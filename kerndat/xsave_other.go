//go:build !amd64

package kerndat

// readXSave: xsave is x86's; other architectures report its absence.
func readXSave() xsaveInfo { return xsaveInfo{} }
