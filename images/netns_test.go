package images

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestIPDumps reads the ip save dumps CRIU 4.2 wrote of the netns workload
// (testdata/criu-4.2-netns): iproute2's magic, then the kernel's messages.
func TestIPDumps(t *testing.T) {
	for _, tc := range []struct {
		file  string
		magic uint32
		typ   uint16
		n     int
	}{
		{"ifaddr-10.img", IPDumpAddrMagic, 20, 4},  // RTM_NEWADDR: 127.0.0.1, 10.53.0.1, fd53::1, ::1
		{"route-10.img", IPDumpRouteMagic, 24, 1},  // RTM_NEWROUTE: 10.54.0.0/16
		{"route6-10.img", IPDumpRouteMagic, 24, 2}, // fd53::/64, fd54::/64
		{"rule-10.img", IPDumpRuleMagic, 32, 4},    // RTM_NEWRULE: local, the prohibit, main, default
	} {
		b, err := os.ReadFile(filepath.Join("testdata", "criu-4.2-netns", tc.file))
		if err != nil {
			t.Fatal(err)
		}
		msgs, err := ParseIPDump(tc.file, b, tc.magic)
		if err != nil {
			t.Fatalf("%s: %v", tc.file, err)
		}
		if len(msgs) != tc.n {
			t.Errorf("%s: %d messages, want %d", tc.file, len(msgs), tc.n)
		}
		end := int64(4)
		for i, m := range msgs {
			if m.Type != tc.typ || m.Offset != end || int(binary.NativeEndian.Uint32(m.Raw)) != len(m.Raw) {
				t.Errorf("%s: message %d: type %d at %d, %d bytes", tc.file, i, m.Type, m.Offset, len(m.Raw))
			}
			end += int64(len(m.Raw)+3) &^ 3
		}
		if end != int64(len(b)) {
			t.Errorf("%s: messages end at %d, the file at %d", tc.file, end, len(b))
		}
	}
	for _, tc := range []struct {
		name string
		b    []byte
		err  string
	}{
		{"no magic", []byte{0x22, 0x12}, "x.img: header at offset 0: 2 bytes: no iproute2 magic"},
		{"another magic", []byte{0x24, 0x12, 0x31, 0x45}, "x.img: header at offset 0: magic 0x45311224, want iproute2's 0x47361222"},
		{"short header", append(le(IPDumpAddrMagic), 1, 2, 3), "x.img: entry 0 at offset 4: 3 bytes left: a netlink header needs 16"},
		{"length too small", append(le(IPDumpAddrMagic), append(le(8), make([]byte, 12)...)...), "entry 0 at offset 4: nlmsg_len 8, not in 16..16384"},
		{"length past the end", append(le(IPDumpAddrMagic), append(le(40), make([]byte, 20)...)...), "entry 0 at offset 4: message of 40 bytes runs past the end of the file"},
		{"unaligned end", append(le(IPDumpAddrMagic), append(le(17), make([]byte, 13)...)...), "message of 17 bytes runs past the end"},
	} {
		_, err := ParseIPDump("x.img", tc.b, IPDumpAddrMagic)
		var fe *FormatError
		if !errors.As(err, &fe) || !strings.Contains(err.Error(), tc.err) {
			t.Errorf("%s: %v, want a FormatError %q", tc.name, err, tc.err)
		}
	}
	if _, ok, err := ReadRaw(filepath.Join(t.TempDir(), "none.img")); ok || err != nil {
		t.Errorf("a missing raw image: ok %v, %v; want neither", ok, err)
	}
}

func le(v uint32) []byte { return binary.LittleEndian.AppendUint32(nil, v) }

// FuzzParseIPDump: any bytes give messages that tile the file (each at
// its offset, as long as its nlmsg_len, 4-aligned), or a FormatError.
func FuzzParseIPDump(f *testing.F) {
	for _, name := range []string{"ifaddr-10.img", "route-10.img", "rule-10.img"} {
		b, err := os.ReadFile(filepath.Join("testdata", "criu-4.2-netns", name))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) >= 4 {
			binary.LittleEndian.PutUint32(b, IPDumpAddrMagic)
		}
		msgs, err := ParseIPDump("f.img", b, IPDumpAddrMagic)
		if err != nil {
			var fe *FormatError
			if !errors.As(err, &fe) {
				t.Fatalf("%v: not a FormatError", err)
			}
			return
		}
		off := int64(4)
		for _, m := range msgs {
			if m.Offset != off || !bytes.Equal(m.Raw, b[off:off+int64(len(m.Raw))]) || len(m.Raw) < 16 {
				t.Fatalf("message at %d (%d bytes), want at %d", m.Offset, len(m.Raw), off)
			}
			off += int64(len(m.Raw)+3) &^ 3
		}
		if off != int64(len(b)) {
			t.Fatalf("messages end at %d, the input at %d", off, len(b))
		}
	})
}
