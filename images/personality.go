package images

import (
	"fmt"
	"strconv"
)

// CRIU 4.2 writes task_core_entry.personality as atoi() of
// /proc/PID/personality, which the kernel prints in hex ("%08x"): the
// field holds the decimal number that the hex digits spell (0x40000,
// ADDR_NO_RANDOMIZE, is written 40000), and a hex digit a-f ends the
// number there. CRIU never reads the field back; crest writes and reads
// it in that encoding, so that images of either restore alike.

// EncodePersonality returns the field CRIU 4.2 writes for personality p;
// ok is false when p has a hex digit a-f, which the encoding can not hold.
func EncodePersonality(p uint32) (v uint32, ok bool) {
	hex := fmt.Sprintf("%08x", p)
	n, err := strconv.ParseUint(hex, 10, 32)
	if err != nil {
		return 0, false
	}
	return uint32(n), true
}

// DecodePersonality returns the personality that field v of an image
// stands for; ok is false when v has more than the 8 digits a personality
// prints as.
func DecodePersonality(v uint32) (p uint32, ok bool) {
	n, err := strconv.ParseUint(strconv.FormatUint(uint64(v), 10), 16, 32)
	if err != nil {
		return 0, false
	}
	return uint32(n), true
}
