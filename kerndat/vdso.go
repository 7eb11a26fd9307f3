package kerndat

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
)

// VDSOLayout is how this kernel maps the vDSO into a process: the vvar
// pages ([vvar] and, since 6.13, [vvar_vclock]) right below the vDSO
// text. A task restored with a fresh vDSO (ARCH_MAP_VDSO_64) gets this
// layout, so its image must have the same: the vDSO reads vvar at a fixed
// offset from itself.
type VDSOLayout struct {
	VVAR uint64 // bytes of vvar pages below the text
	VDSO uint64 // bytes of vDSO text
}

// VDSO returns this process's vDSO layout, read once from
// /proc/self/maps; zero sizes when it has no vDSO.
var VDSO = sync.OnceValues(func() (VDSOLayout, error) {
	f, err := os.Open("/proc/self/maps")
	if err != nil {
		return VDSOLayout{}, err
	}
	defer f.Close()
	return parseVDSOLayout(f.Name(), bufio.NewScanner(f))
})

func parseVDSOLayout(name string, sc *bufio.Scanner) (VDSOLayout, error) {
	var l VDSOLayout
	var vvarEnd uint64
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		if len(fs) < 6 || !strings.HasPrefix(fs[5], "[v") {
			continue
		}
		lo, hi, ok := strings.Cut(fs[0], "-")
		start, err1 := strconv.ParseUint(lo, 16, 64)
		end, err2 := strconv.ParseUint(hi, 16, 64)
		if !ok || err1 != nil || err2 != nil || end < start {
			return VDSOLayout{}, fmt.Errorf("%s: %q: not an address range", name, fs[0])
		}
		switch fs[5] {
		case "[vvar]", "[vvar_vclock]":
			if l.VVAR != 0 && start != vvarEnd {
				return VDSOLayout{}, fmt.Errorf("%s: %s at %#x is apart from the vvar pages before it", name, fs[5], start)
			}
			l.VVAR += end - start
			vvarEnd = end
		case "[vdso]":
			if l.VVAR != 0 && start != vvarEnd {
				return VDSOLayout{}, fmt.Errorf("%s: [vdso] at %#x is not right above the vvar pages (%#x)", name, start, vvarEnd)
			}
			l.VDSO = end - start
		}
	}
	return l, sc.Err()
}
