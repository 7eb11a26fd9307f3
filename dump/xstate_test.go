package dump

import (
	"errors"
	"strings"
	"testing"
)

// TestCarriedXState: a thread's xsave state passes when every component
// in use has a field in CRIU's images (x87, SSE, AVX, MPX, AVX-512,
// PKRU) and is refused, naming the others, when AMX tiles or APX
// registers are in use.
func TestCarriedXState(t *testing.T) {
	for _, bv := range []uint64{0, 0x3, 0xe7, 0x2ff} {
		if err := carriedXState(bv); err != nil {
			t.Errorf("xstate_bv %#x: %v", bv, err)
		}
	}
	for bv, want := range map[uint64]string{
		0x200e7: "components 0x20000 (amx_tilecfg)",
		0x600e7: "components 0x60000 (amx_tilecfg amx_tiledata)",
		0x80003: "components 0x80000 (apx)",
		0x1e7:   "components 0x100 (bit8)",
	} {
		err := carriedXState(bv)
		var xe *xstateError
		if !errors.As(err, &xe) || !strings.Contains(err.Error(), want) {
			t.Errorf("xstate_bv %#x: %v, want an xstateError with %q", bv, err, want)
		}
	}
}
