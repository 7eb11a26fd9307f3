// Package nlattr reads the attributes of netlink messages (struct
// rtattr and struct nlattr share their layout), for the dump and the
// restore of net namespaces and sockets.
package nlattr

import (
	"encoding/binary"

	"golang.org/x/sys/unix"
)

// Parse returns the attributes of b (a message past its fixed header) by
// type, the nested and byte-order flags masked off; the first of a type
// wins. It stops at the first attribute that does not fit.
func Parse(b []byte) map[uint16][]byte {
	out := map[uint16][]byte{}
	for len(b) >= unix.SizeofRtAttr {
		l := int(binary.NativeEndian.Uint16(b[0:]))
		typ := binary.NativeEndian.Uint16(b[2:]) &^ (unix.NLA_F_NESTED | unix.NLA_F_NET_BYTEORDER)
		if l < unix.SizeofRtAttr || l > len(b) {
			break
		}
		if _, ok := out[typ]; !ok {
			out[typ] = b[unix.SizeofRtAttr:l]
		}
		next := (l + 3) &^ 3
		if next > len(b) {
			break
		}
		b = b[next:]
	}
	return out
}
