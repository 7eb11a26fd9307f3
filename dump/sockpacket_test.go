package dump_test

import (
	"bytes"
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	"github.com/checkpoint-restore/go-criu/v8/crit/images/fdinfo"
	packet_sock "github.com/checkpoint-restore/go-criu/v8/crit/images/packet-sock"

	"github.com/crest-restore/crest/dump"
	"github.com/crest-restore/crest/images"
	"github.com/crest-restore/crest/test/workloads"
)

// packetTestType is the ethertype the programs below use (0x88b6, local
// experimental 2): nothing on the host sends frames of it.
const packetTestType = 0x88b6

// packetFds reads the packet sockets of the images in dir by fd (one
// task, fdinfo-2.img).
func packetFds(t *testing.T, dir string) map[uint32]*packet_sock.PacketSockEntry {
	t.Helper()
	files := map[uint32]*packet_sock.PacketSockEntry{}
	for _, raw := range rawEntries(t, filepath.Join(dir, "files.img")) {
		fe := &fdinfo.FileEntry{}
		if err := proto.Unmarshal(raw, fe); err != nil {
			t.Fatal(err)
		}
		if fe.GetType() == fdinfo.FdTypes_PACKETSK {
			files[fe.GetId()] = fe.GetPsk()
		}
	}
	out := map[uint32]*packet_sock.PacketSockEntry{}
	for _, raw := range rawEntries(t, filepath.Join(dir, "fdinfo-2.img")) {
		fi := &fdinfo.FdinfoEntry{}
		if err := proto.Unmarshal(raw, fi); err != nil {
			t.Fatal(err)
		}
		if fi.GetType() == fdinfo.FdTypes_PACKETSK {
			out[fi.GetFd()] = files[fi.GetId()]
		}
	}
	return out
}

// packetProgram is a ticking workload (out-packet.log) in crest's net
// namespace that runs setup, whose first fd is 4; pk(type, protocol,
// ifindex) makes a packet socket (bound when ifindex is not 0), on(s,
// opt, v) sets a SOL_PACKET option, join(s, type, alen) a membership on
// lo (address 01:00:5e:00:00:fc).
func packetProgram(t *testing.T, name, setup string) *workloads.Process {
	t.Helper()
	p := workloads.StartTicking(t, "packet", name, workloads.TickSource{Includes: `#include <errno.h>
#include <sched.h>
#include <arpa/inet.h>
#include <linux/filter.h>
#include <linux/if_packet.h>
#include <sys/mman.h>
#include <sys/socket.h>
`, Funcs: fmt.Sprintf(`static int pk(int type, int protocol, int ifindex)
{
	int s = socket(AF_PACKET, type, htons(protocol));
	struct sockaddr_ll a = { .sll_family = AF_PACKET, .sll_protocol = htons(protocol), .sll_ifindex = ifindex };

	if (s >= 0 && ifindex && bind(s, (struct sockaddr *)&a, sizeof a))
		return -1;
	return s;
}

static int on(int s, int opt, int v)
{
	return setsockopt(s, SOL_PACKET, opt, &v, sizeof v);
}

static int join(int s, int type, int alen)
{
	struct packet_mreq m = { .mr_ifindex = 1, .mr_type = type, .mr_alen = alen,
				 .mr_address = { 0x01, 0x00, 0x5e, 0x00, 0x00, 0xfc } };

	return setsockopt(s, SOL_PACKET, PACKET_ADD_MEMBERSHIP, &m, sizeof m);
}
#define T %#x
`, packetTestType), Setup: setup})
	waitLines(t, p, "out-packet.log", 3)
	return p
}

// criuPacket holds CRIU 4.2's files.img, fdinfo-2.img and ids-1.img of
// the packetsk workload (README.md there).
var criuPacket = filepath.Join("..", "images", "testdata", "criu-4.2-packetsk", "packetsk")

// packetRaw reads the file and fdinfo entries of the packet sockets of
// the images in dir, as bytes, by fd.
func packetRaw(t *testing.T, dir string) map[uint32][2][]byte {
	t.Helper()
	files := map[uint32][]byte{}
	for _, raw := range rawEntries(t, filepath.Join(dir, "files.img")) {
		fe := &fdinfo.FileEntry{}
		if err := proto.Unmarshal(raw, fe); err != nil {
			t.Fatal(err)
		}
		files[fe.GetId()] = raw
	}
	out := map[uint32][2][]byte{}
	for _, raw := range rawEntries(t, filepath.Join(dir, "fdinfo-2.img")) {
		fi := &fdinfo.FdinfoEntry{}
		if err := proto.Unmarshal(raw, fi); err != nil {
			t.Fatal(err)
		}
		if fi.GetType() == fdinfo.FdTypes_PACKETSK {
			out[fi.GetFd()] = [2][]byte{files[fi.GetId()], raw}
		}
	}
	return out
}

// TestDumpPacketAsCRIU dumps the packetsk workload (a net namespace of
// its own; raw and datagram sockets bound to lo or not, with options,
// memberships, a fanout group) and compares every packet socket's file
// and fdinfo entries with CRIU 4.2's of the same workload, byte for byte
// (packet entries have no inode number: nothing differs between runs).
func TestDumpPacketAsCRIU(t *testing.T) {
	theirs := packetRaw(t, criuPacket)
	if len(theirs) != 6 {
		t.Fatalf("CRIU's images have %d packet sockets, want 6", len(theirs))
	}
	p := workloads.Start(t, "packetsk")
	waitLines(t, p, "out-packetsk.log", 3)
	dir := filepath.Join(t.TempDir(), "images")
	if _, err := dump.Dump(context.Background(), dump.Options{Pid: p.Pid, Dir: dir}); err != nil {
		t.Fatal(err)
	}
	ours, decoded, criu := packetRaw(t, dir), packetFds(t, dir), packetFds(t, criuPacket)
	if len(ours) != len(theirs) {
		t.Errorf("%d packet sockets, CRIU's images %d", len(ours), len(theirs))
	}
	for fd, c := range theirs {
		o, ok := ours[fd]
		if !ok {
			t.Errorf("fd %d: not a packet socket in our images", fd)
			continue
		}
		if !bytes.Equal(o[0], c[0]) {
			t.Errorf("fd %d: files.img entry\n%x\nCRIU's\n%x\nours:   %v\nCRIU's: %v", fd, o[0], c[0], decoded[fd], criu[fd])
		}
		if !bytes.Equal(o[1], c[1]) {
			t.Errorf("fd %d: fdinfo entry %x, CRIU's %x", fd, o[1], c[1])
		}
	}
}

// packetString is what the tests compare of a packet_sock_entry.
func packetString(e *packet_sock.PacketSockEntry) string {
	var ms []string
	for _, m := range e.GetMclist() {
		ms = append(ms, fmt.Sprintf("%d/%d/%x", m.GetIndex(), m.GetType(), m.GetAddr()))
	}
	fanout := "none"
	if e.Fanout != nil {
		fanout = fmt.Sprintf("%#x", e.GetFanout())
	}
	return fmt.Sprintf("type %d protocol %#x ifindex %d flags %#o version %d reserve %d tstamp %#x copy %d aux %v origdev %v vnet %v loss %v mclist %v fanout %s rings %v %v rcvbuf %d",
		e.GetType(), e.GetProtocol(), e.GetIfindex(), e.GetFlags(), e.GetVersion(), e.GetReserve(), e.GetTimestamp(),
		e.GetCopyThresh(), e.GetAuxData(), e.GetOrigDev(), e.GetVnetHdr(), e.GetLoss(), ms, fanout,
		e.GetRxRing() != nil, e.GetTxRing() != nil, e.GetOpts().GetSoRcvbuf())
}

// TestDumpPacketHostNS dumps packet sockets of crest's net namespace:
// every field CRIU 4.2 writes from the socket diag, a membership joined
// twice written twice (CRIU refuses it), in the diag's order (the
// newest first), and the fanout group's flags,
// which the diag leaves out (CRIU loses them); the protocol in network
// order, as CRIU writes it and socket(2) takes it; the namespace's id.
func TestDumpPacketHostNS(t *testing.T) {
	p := packetProgram(t, "hostns", `int r = pk(SOCK_RAW, T, 1);
	if (r != 4 || on(r, PACKET_AUXDATA, 1) || on(r, PACKET_ORIGDEV, 1) || on(r, PACKET_VERSION, TPACKET_V3) ||
	    on(r, PACKET_RESERVE, 32) || on(r, PACKET_TIMESTAMP, 0x40) || on(r, PACKET_COPY_THRESH, 200) ||
	    join(r, PACKET_MR_MULTICAST, 6) || join(r, PACKET_MR_MULTICAST, 6) || join(r, PACKET_MR_PROMISC, 0))
		return 2;
	int f1 = pk(SOCK_DGRAM | SOCK_NONBLOCK, T, 1), f2 = pk(SOCK_DGRAM | SOCK_NONBLOCK, T, 1);
	int fan = 0x7e57 | (PACKET_FANOUT_LB | PACKET_FANOUT_FLAG_ROLLOVER) << 16;
	if (f1 != 5 || f2 != 6 || on(f1, PACKET_FANOUT, fan) || on(f2, PACKET_FANOUT, fan))
		return 2;
	int v = pk(SOCK_RAW, 0, 0);
	if (v != 7 || on(v, PACKET_VNET_HDR, 1) || on(v, PACKET_LOSS, 1))
		return 2;`)
	dir := filepath.Join(t.TempDir(), "images")
	if _, err := dump.Dump(context.Background(), dump.Options{Pid: p.Pid, Dir: dir}); err != nil {
		t.Fatal(err)
	}
	d, err := images.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	ids, err := d.IDs(1)
	if err != nil {
		t.Fatal(err)
	}
	got := packetFds(t, dir)
	nsID := ids.GetNetNsId()
	want := map[uint32]string{
		4: "type 3 protocol 0xb688 ifindex 1 flags 02 version 2 reserve 32 tstamp 0x40 copy 200 aux true origdev true vnet false loss false mclist [1/1/ 1/0/01005e0000fc 1/0/01005e0000fc] fanout none rings false false rcvbuf 212992",
		5: "type 2 protocol 0xb688 ifindex 1 flags 04002 version 0 reserve 0 tstamp 0x0 copy 0 aux false origdev false vnet false loss false mclist [] fanout 0x10017e57 rings false false rcvbuf 212992",
		7: "type 3 protocol 0x0 ifindex 0 flags 02 version 0 reserve 0 tstamp 0x0 copy 0 aux false origdev false vnet true loss true mclist [] fanout none rings false false rcvbuf 212992",
	}
	want[6] = want[5]
	if len(got) != len(want) {
		t.Errorf("%d packet sockets dumped, want %d", len(got), len(want))
	}
	for fd, w := range want {
		e := got[fd]
		if e == nil {
			t.Errorf("fd %d: no packet socket", fd)
			continue
		}
		// the default SO_RCVBUF is the host's net.core.rmem_default
		s := packetString(e)
		if i, j := strings.LastIndex(s, "rcvbuf "), strings.LastIndex(w, "rcvbuf "); i >= 0 && j >= 0 {
			s, w = s[:i], w[:j]
		}
		if s != w {
			t.Errorf("fd %d:\n got %s\nwant %s", fd, s, w)
		}
		if e.GetNsId() != nsID {
			t.Errorf("fd %d: ns_id %d, want the root's %d", fd, e.GetNsId(), nsID)
		}
	}
}

// TestDumpPacketRefused: a packet socket the images can not carry, or
// that crest's restore does not restore, fails the dump with an error
// naming the task, the fd and why; nothing is left and the tree runs on.
func TestDumpPacketRefused(t *testing.T) {
	for _, tc := range []struct {
		name, setup string
		fd          int
		want        string
	}{
		{"rx ring", `int s = pk(SOCK_RAW, T, 1);
	struct tpacket_req req = { .tp_block_size = 4096, .tp_block_nr = 1, .tp_frame_size = 2048, .tp_frame_nr = 2 };
	if (s != 4 || setsockopt(s, SOL_PACKET, PACKET_RX_RING, &req, sizeof req))
		return 2;`, 4, "a mapped ring (PACKET_RX_RING, PACKET_TX_RING) is not supported"},
		{"mapped rx ring", `int s = pk(SOCK_RAW, T, 1);
	struct tpacket_req req = { .tp_block_size = 4096, .tp_block_nr = 2, .tp_frame_size = 2048, .tp_frame_nr = 4 };
	if (s != 4 || on(s, PACKET_VERSION, TPACKET_V2) || setsockopt(s, SOL_PACKET, PACKET_RX_RING, &req, sizeof req) ||
	    mmap(NULL, 8192, PROT_READ | PROT_WRITE, MAP_SHARED, s, 0) == MAP_FAILED)
		return 2;`, -1, "packet socket ring mappings (PACKET_RX_RING, PACKET_TX_RING) are not supported"},
		{"ring mapped alone", `int s = pk(SOCK_RAW, T, 1);
	struct tpacket_req req = { .tp_block_size = 4096, .tp_block_nr = 2, .tp_frame_size = 2048, .tp_frame_nr = 4 };
	if (s != 4 || on(s, PACKET_VERSION, TPACKET_V2) || setsockopt(s, SOL_PACKET, PACKET_RX_RING, &req, sizeof req) ||
	    mmap(NULL, 8192, PROT_READ | PROT_WRITE, MAP_SHARED, s, 0) == MAP_FAILED || close(s))
		return 2;`, -1, "packet socket ring mappings (PACKET_RX_RING, PACKET_TX_RING) are not supported"},
		{"cbpf fanout", `int s = pk(SOCK_RAW, T, 1);
	if (s != 4 || on(s, PACKET_FANOUT, 0x7e58 | PACKET_FANOUT_CBPF << 16))
		return 2;`, 4, "fanout group steered by a BPF program"},
		{"qdisc bypass", `int s = pk(SOCK_RAW, T, 1);
	if (s != 4 || on(s, PACKET_QDISC_BYPASS, 1))
		return 2;`, 4, "PACKET_QDISC_BYPASS on a packet socket is not kept"},
		{"ignore outgoing", `int s = pk(SOCK_RAW, T, 1);
	if (s != 4 || on(s, PACKET_IGNORE_OUTGOING, 1))
		return 2;`, 4, "PACKET_IGNORE_OUTGOING on a packet socket is not kept"},
		{"vnet hdr size", `int s = pk(SOCK_RAW, 0, 0);
	if (s != 4 || on(s, 24 /* PACKET_VNET_HDR_SZ */, 12))
		return 2;`, 4, "PACKET_VNET_HDR_SZ 12"},
		{"sock packet", `int s = socket(AF_PACKET, SOCK_PACKET, htons(T));
	if (s != 4)
		return 2;`, 4, "SOCK_PACKET is not supported"},
		{"async", `int s = pk(SOCK_DGRAM, T, 1);
	if (s != 4 || fcntl(s, F_SETFL, O_ASYNC))
		return 2;`, 4, ""},
		{"owner", `int s = pk(SOCK_DGRAM, T, 1);
	if (s != 4 || fcntl(s, F_SETOWN, getpid()))
		return 2;`, 4, ""},
		{"other netns", `int self = open("/proc/self/ns/net", O_RDONLY | O_CLOEXEC);
	if (self != 4 || unshare(CLONE_NEWNET))
		return 2;
	int s = pk(SOCK_RAW, T, 1);
	if (s != 5 || setns(self, CLONE_NEWNET) || close(self))
		return 2;`, 5, "a socket of another net namespace (net:["},
	} {
		t.Run(strings.ReplaceAll(tc.name, " ", "-"), func(t *testing.T) {
			p := packetProgram(t, strings.ReplaceAll(tc.name, " ", "-"), tc.setup)
			parent := t.TempDir()
			dir := filepath.Join(parent, "images")
			_, err := dump.Dump(context.Background(), dump.Options{Pid: p.Pid, Dir: dir})
			if tc.want == "" { // kept, as on every kind of file
				if err != nil {
					t.Fatal(err)
				}
				e := packetFds(t, dir)[4]
				if async := e.GetFlags()&unix.O_ASYNC != 0; async != (tc.name == "async") || (tc.name == "owner") != (e.GetFown().GetPid() == 1) {
					t.Errorf("fd 4: flags %#o owner %v: want the %s kept, and nothing else", e.GetFlags(), e.GetFown(), tc.name)
				}
				return
			}
			where := fmt.Sprintf("fd %d (socket:[", tc.fd)
			if tc.fd < 0 {
				where = "mapping " // the task's memory is read before its fds
			}
			refusedCleanly(t, err, p, parent, "out-packet.log", "task 1", where, tc.want)
		})
	}
}
