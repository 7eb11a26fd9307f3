package kerndat

import (
	"bufio"
	"strings"
	"testing"
)

// TestVDSO: this kernel maps vvar pages right below the vDSO text, both
// whole pages.
func TestVDSO(t *testing.T) {
	l, err := VDSO()
	if err != nil {
		t.Fatal(err)
	}
	if l.VVAR == 0 || l.VDSO == 0 || l.VVAR%4096 != 0 || l.VDSO%4096 != 0 {
		t.Errorf("layout %+v: want whole pages of vvar and vdso", l)
	}
}

func TestParseVDSOLayout(t *testing.T) {
	tests := []struct {
		name, maps string
		want       VDSOLayout
		err        string
	}{
		{"6.18", "7f8a9218e000-7f8a92192000 r--p 00000000 00:00 0 [vvar]\n" +
			"7f8a92192000-7f8a92194000 r--p 00000000 00:00 0 [vvar_vclock]\n" +
			"7f8a92194000-7f8a92196000 r-xp 00000000 00:00 0 [vdso]\n" +
			"ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0 [vsyscall]\n",
			VDSOLayout{VVAR: 0x6000, VDSO: 0x2000}, ""},
		{"one vvar", "7000-b000 r--p 00000000 00:00 0 [vvar]\nb000-d000 r-xp 00000000 00:00 0 [vdso]\n",
			VDSOLayout{VVAR: 0x4000, VDSO: 0x2000}, ""},
		{"none", "400000-401000 r-xp 00000000 08:01 12 /bin/x\n", VDSOLayout{}, ""},
		{"apart", "7000-b000 r--p 00000000 00:00 0 [vvar]\nc000-e000 r-xp 00000000 00:00 0 [vdso]\n",
			VDSOLayout{}, "not right above"},
		{"garbage", "zz-b000 r--p 00000000 00:00 0 [vvar]\n", VDSOLayout{}, "not an address range"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseVDSOLayout("maps", bufio.NewScanner(strings.NewReader(tt.maps)))
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("error %v, want %q", err, tt.err)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Errorf("%+v, %v; want %+v", got, err, tt.want)
			}
		})
	}
}
