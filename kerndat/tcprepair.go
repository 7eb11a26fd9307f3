package kerndat

import (
	"os/exec"
	"strings"

	"golang.org/x/sys/unix"
)

// TCPRepair reports whether established TCP connections can be dumped and
// restored (--tcp-established): a TCP socket is put into repair mode, a
// queue selected, and repair mode switched off again. Only image sets
// with connections need it, so its absence is information.
var TCPRepair = NewProbe(TCPRepairName, 0, probeTCPRepair)

// tcpRecvQueue is TCP_RECV_QUEUE (include/uapi/linux/tcp.h), which
// golang.org/x/sys lacks.
const tcpRecvQueue = 1

func probeTCPRepair() Feature {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return Missing("socket(AF_INET, SOCK_STREAM): %s", ErrText(err))
	}
	defer unix.Close(fd)
	for _, s := range []struct {
		opt, v int
		name   string
	}{
		{unix.TCP_REPAIR, unix.TCP_REPAIR_ON, "TCP_REPAIR, on"},
		{unix.TCP_REPAIR_QUEUE, tcpRecvQueue, "TCP_REPAIR_QUEUE, TCP_RECV_QUEUE"},
		{unix.TCP_QUEUE_SEQ, 1000, "TCP_QUEUE_SEQ, 1000"},
	} {
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_TCP, s.opt, s.v); err != nil {
			return Missing("setsockopt(%s): %s (CAP_NET_ADMIN?)", s.name, ErrText(err))
		}
	}
	seq, err := unix.GetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_QUEUE_SEQ)
	if err != nil {
		return Missing("getsockopt(TCP_QUEUE_SEQ) in repair mode: %s", ErrText(err))
	}
	if err := unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_REPAIR, unix.TCP_REPAIR_OFF); err != nil {
		return Missing("setsockopt(TCP_REPAIR, off): %s", ErrText(err))
	}
	return OK("a TCP socket went into repair mode (TCP_REPAIR), its receive queue's sequence set and read back (%d), and out again", seq)
}

// NetworkLockTools reports whether the tools that take CRIU's network
// lock off are there: criu dump --tcp-established leaves the connections
// behind iptables/ip6tables rules (CRIU's default) or an nftables table,
// which crest restore --tcp-established deletes as criu restore does.
// Without them such connections may stay blocked (a warning says so);
// crest's own dumps set no lock.
var NetworkLockTools = NewProbe(NetworkLockToolsName, 0, probeNetworkLockTools)

func probeNetworkLockTools() Feature {
	var found, missing []string
	for _, tool := range []string{"iptables", "ip6tables", "nft"} {
		if path, err := exec.LookPath(tool); err == nil {
			found = append(found, path)
		} else {
			missing = append(missing, tool)
		}
	}
	if len(missing) > 0 {
		return Missing("not in $PATH: %s (found: %s); images of criu dump --tcp-established with that lock method may keep their connections blocked after a restore",
			strings.Join(missing, ", "), strings.Join(append(found, "none")[:max(len(found), 1)], ", "))
	}
	return OK("%s: CRIU's iptables and nftables network locks can be taken off", strings.Join(found, ", "))
}
