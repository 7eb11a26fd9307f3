package nlattr

import (
	"bytes"
	"encoding/binary"
	"testing"

	"golang.org/x/sys/unix"
)

func attr(typ uint16, data []byte) []byte {
	a := make([]byte, (unix.SizeofRtAttr+len(data)+3)&^3)
	binary.NativeEndian.PutUint16(a[0:], uint16(unix.SizeofRtAttr+len(data)))
	binary.NativeEndian.PutUint16(a[2:], typ)
	copy(a[unix.SizeofRtAttr:], data)
	return a
}

func TestParse(t *testing.T) {
	var b []byte
	b = append(b, attr(1, []byte("lo\x00"))...)            // padded to 8
	b = append(b, attr(2|unix.NLA_F_NESTED, []byte{7})...) // flags masked off
	b = append(b, attr(1, []byte("second"))...)            // the first of a type wins
	b = append(b, attr(3, nil)...)                         // empty
	got := Parse(b)
	want := map[uint16][]byte{1: []byte("lo\x00"), 2: {7}, 3: {}}
	if len(got) != len(want) {
		t.Fatalf("%d attributes %v, want %v", len(got), got, want)
	}
	for k, v := range want {
		if !bytes.Equal(got[k], v) {
			t.Errorf("type %d: %q, want %q", k, got[k], v)
		}
	}
	// a length past the end, or below the header, ends the walk
	bad := append(attr(4, []byte{1}), 0xff, 0x00, 5, 0)
	if got := Parse(bad); len(got) != 1 || !bytes.Equal(got[4], []byte{1}) {
		t.Errorf("past the end: %v", got)
	}
	short := append(attr(4, []byte{1}), 2, 0, 5, 0)
	if got := Parse(short); len(got) != 1 {
		t.Errorf("length below the header: %v", got)
	}
	if got := Parse([]byte{1, 2}); len(got) != 0 {
		t.Errorf("shorter than a header: %v", got)
	}
}
