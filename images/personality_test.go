package images

import "testing"

func TestPersonality(t *testing.T) {
	for _, tc := range []struct {
		p, v uint32
		ok   bool
	}{
		{0, 0, true},
		{0x40000, 40000, true},       // ADDR_NO_RANDOMIZE, as CRIU 4.2 wrote it for the procattrs workload
		{0x0008, 8, true},            // PER_LINUX32
		{0x4420008, 4420008, true},   // PER_LINUX32 | READ_IMPLIES_EXEC | STICKY_TIMEOUTS | ADDR_COMPAT_LAYOUT
		{0x00090009, 90009, true},    // zeros inside
		{0x99999999, 99999999, true}, // the largest that fits
		{0x400000d, 0, false},        // PER_SOLARIS: its d can not be written
		{0x0004000c, 0, false},       // a letter after digits
		{0xa0000000, 0, false},       // a letter first
		{0xffffffff, 0, false},       // what personality(2) takes as a query
	} {
		v, ok := EncodePersonality(tc.p)
		if ok != tc.ok || v != tc.v {
			t.Errorf("EncodePersonality(%#x) = %d, %v; want %d, %v", tc.p, v, ok, tc.v, tc.ok)
		}
		if !ok {
			continue
		}
		if p, ok := DecodePersonality(v); !ok || p != tc.p {
			t.Errorf("DecodePersonality(%d) = %#x, %v; want %#x", v, p, ok, tc.p)
		}
	}
	// 9 digits are more than a personality prints as
	if p, ok := DecodePersonality(123456789); ok {
		t.Errorf("DecodePersonality(123456789) = %#x, want an error", p)
	}
}
