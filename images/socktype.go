package images

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// SockTypeName names a socket type as the images hold it (a unix
// socket's type, SOCK_*) for messages: "stream", "datagram" ...
func SockTypeName(typ uint32) string {
	switch typ {
	case unix.SOCK_STREAM:
		return "stream"
	case unix.SOCK_SEQPACKET:
		return "seqpacket"
	case unix.SOCK_DGRAM:
		return "datagram"
	}
	return fmt.Sprintf("type %d", typ)
}
