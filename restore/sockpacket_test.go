package restore

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	"github.com/checkpoint-restore/go-criu/v8/crit/images/fdinfo"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/fown"
	packet_sock "github.com/checkpoint-restore/go-criu/v8/crit/images/packet-sock"

	"github.com/crest-restore/crest/dump"
	"github.com/crest-restore/crest/images"
	"github.com/crest-restore/crest/test/check"
	"github.com/crest-restore/crest/test/cli"
	"github.com/crest-restore/crest/test/fixture"
	"github.com/crest-restore/crest/test/workloads"
)

// The sockets of the packetsk workload (test/workloads/src/packetsk.c),
// by fd.
const (
	pkRaw   = 4 // SOCK_RAW 0x88b5 on lo, options, two memberships
	pkDgram = 5 // SOCK_DGRAM 0x88b5 on lo, O_NONBLOCK, allmulti
	pkFan1  = 6 // SOCK_RAW 0x88b5 on lo, fanout 0x4242 (hash)
	pkFan2  = 7
	pkIdle  = 8 // SOCK_DGRAM, protocol 0, never bound
	pkVnet  = 9 // SOCK_RAW, protocol 0, PACKET_VNET_HDR, PACKET_LOSS
)

var packetLogs = map[string]check.Next{"out-packetsk.log": check.Counter}

// packetImages starts the packetsk workload in a net namespace of its
// own, dumps it with crest's dump (which kills it) and returns the images
// and the workload's directory.
func packetImages(t *testing.T) (imgs, wdir string) {
	t.Helper()
	p, imgs := dumpedWorkload(t, "packetsk", packetLogs, 3, dump.Options{})
	return imgs, p.Dir
}

// editPacket rewrites the packet socket entries of the root in dir's
// files.img, each given by its fd.
func editPacket(t *testing.T, dir string, edit func(fd uint32, fe *fdinfo.FileEntry)) {
	t.Helper()
	fdOf := map[uint32]uint32{}
	for fd, id := range rootFileIDs(t, dir) {
		fdOf[id] = fd
	}
	editImage(t, dir, "files.img", func(img *images.Image) {
		for _, en := range img.Entries {
			fe := en.Message.(*fdinfo.FileEntry)
			if fd, ok := fdOf[fe.GetId()]; ok && fe.GetType() == fdinfo.FdTypes_PACKETSK {
				edit(fd, fe)
			}
		}
	})
}

// editPacketAt is an editPacket of the socket at fd alone.
func editPacketAt(fd uint32, edit func(e *packet_sock.PacketSockEntry)) func(t *testing.T, dir string) {
	return func(t *testing.T, dir string) {
		editPacket(t, dir, func(at uint32, fe *fdinfo.FileEntry) {
			if at == fd {
				edit(fe.Psk)
			}
		})
	}
}

// restorePacket restores the images in dir (the workload's directory
// wdir), rolled back when the test ends, and returns what its log got
// (30 lines, or up to a CORRUPT one) and the restore.
func restorePacket(t *testing.T, dir, wdir string) (string, *Restore, *recorder) {
	t.Helper()
	p := planDir(t, dir)
	from := logSize(wdir, "out-packetsk.log")
	rec := &recorder{}
	r, err := Start(context.Background(), p, Options{Observer: rec})
	if err != nil {
		t.Fatal(err)
	}
	abortAtCleanup(t, r, p)
	// past a tick that asks the socket diag (one in 25)
	return waitLog(t, wdir, "out-packetsk.log", from, lines(30)), r, rec
}

// livePacket reads packet socket fd of process pid as the kernel has it:
// its binding, type and the packet options getsockopt tells.
func livePacket(t *testing.T, pid, fd int) string {
	t.Helper()
	c := taskFD(t, pid, fd)
	sa, err := unix.Getsockname(c)
	if err != nil {
		t.Fatal(err)
	}
	ll := sa.(*unix.SockaddrLinklayer)
	geti := func(level, opt int) int {
		v, err := unix.GetsockoptInt(c, level, opt)
		if err != nil {
			t.Fatalf("fd %d: getsockopt(%d, %d): %v", fd, level, opt, err)
		}
		return v
	}
	return fmt.Sprintf("type %d protocol %#x ifindex %d version %d reserve %d tstamp %#x aux %d origdev %d vnet %d loss %d fanout %#x",
		geti(unix.SOL_SOCKET, unix.SO_TYPE), htons(ll.Protocol), ll.Ifindex, geti(unix.SOL_PACKET, unix.PACKET_VERSION),
		geti(unix.SOL_PACKET, unix.PACKET_RESERVE), geti(unix.SOL_PACKET, unix.PACKET_TIMESTAMP),
		geti(unix.SOL_PACKET, unix.PACKET_AUXDATA), geti(unix.SOL_PACKET, unix.PACKET_ORIGDEV),
		geti(unix.SOL_PACKET, unix.PACKET_VNET_HDR), geti(unix.SOL_PACKET, unix.PACKET_LOSS),
		geti(unix.SOL_PACKET, unix.PACKET_FANOUT))
}

// packetWant is what livePacket must read of socket s of the plan.
func packetWant(s *PacketSocket) string {
	b := func(v bool) int {
		if v {
			return 1
		}
		return 0
	}
	var fanout uint32
	if s.HasFanout {
		fanout = s.Fanout
	}
	return fmt.Sprintf("type %d protocol %#x ifindex %d version %d reserve %d tstamp %#x aux %d origdev %d vnet %d loss %d fanout %#x",
		s.Type, s.Protocol, s.Ifindex, s.Version, s.Reserve, s.Timestamp, b(s.AuxData), b(s.OrigDev), b(s.VnetHdr), b(s.Loss), fanout)
}

// checkPacketFDs compares every packet socket of the restored root (host
// pid) with the plan; it returns how many there were.
func checkPacketFDs(t *testing.T, p *Plan, pid int) int {
	t.Helper()
	n := 0
	for _, fd := range p.Root().FDs {
		if fd.File.Kind != FilePacketSocket {
			continue
		}
		n++
		if live, want := livePacket(t, pid, fd.FD), packetWant(fd.File.Packet); live != want {
			t.Errorf("fd %d:\n got %s\nwant %s", fd.FD, live, want)
		}
	}
	return n
}

// TestPlanPacket: what the plan takes from crest dump's images of the
// packetsk workload, and what it refuses, naming the task, files.img,
// the file and the socket.
func TestPlanPacket(t *testing.T) {
	imgs, _ := packetImages(t)
	p := planDir(t, imgs)
	got := map[int]string{}
	for _, fd := range p.Root().FDs {
		if f := fd.File; f.Kind == FilePacketSocket {
			s := f.Packet
			got[fd.FD] = fmt.Sprintf("%s flags %#o memberships %d", s, f.Flags&^syscall.O_ACCMODE, len(s.Memberships))
		}
	}
	want := map[int]string{
		pkRaw:   "SOCK_RAW protocol 0x88b5 on ifindex 1 flags 0 memberships 2",
		pkDgram: "SOCK_DGRAM protocol 0x88b5 on ifindex 1 flags 04000 memberships 1",
		pkFan1:  "SOCK_RAW protocol 0x88b5 on ifindex 1 fanout 16962 (hash) flags 0 memberships 0",
		pkFan2:  "SOCK_RAW protocol 0x88b5 on ifindex 1 fanout 16962 (hash) flags 0 memberships 0",
		pkIdle:  "SOCK_DGRAM protocol 0x0 on every interface flags 0 memberships 0",
		pkVnet:  "SOCK_RAW protocol 0x0 on every interface flags 0 memberships 0",
	}
	for fd, w := range want {
		if got[fd] != w {
			t.Errorf("fd %d: %q, want %q", fd, got[fd], w)
		}
	}
	if len(got) != len(want) {
		t.Errorf("packet sockets planned: %v", got)
	}

	ids := rootFileIDs(t, imgs)
	ring := &packet_sock.PacketRing{BlockSize: proto.Uint32(4096), BlockNr: proto.Uint32(1), FrameSize: proto.Uint32(2048),
		FrameNr: proto.Uint32(2), RetireTmo: proto.Uint32(0), SizeofPriv: proto.Uint32(0), Features: proto.Uint32(0)}
	for _, tc := range []struct {
		name string
		fd   uint32
		edit func(e *packet_sock.PacketSockEntry)
		want string
	}{
		{"sock packet", pkRaw, func(e *packet_sock.PacketSockEntry) { e.Type = proto.Uint32(sockPacket) }, "SOCK_PACKET protocol 0x88b5 on ifindex 1: SOCK_PACKET sockets are not restored"},
		{"type", pkIdle, func(e *packet_sock.PacketSockEntry) { e.Type = proto.Uint32(unix.SOCK_STREAM) }, "type 1 (packet sockets are SOCK_RAW or SOCK_DGRAM)"},
		{"protocol", pkIdle, func(e *packet_sock.PacketSockEntry) { e.Protocol = proto.Uint32(0x10000) }, "protocol 0x10000 does not fit an ethertype"},
		{"rx ring", pkRaw, func(e *packet_sock.PacketSockEntry) { e.RxRing = ring }, "a mapped ring (PACKET_RX_RING, PACKET_TX_RING) is not restored"},
		{"tx ring", pkVnet, func(e *packet_sock.PacketSockEntry) { e.TxRing = ring }, "a mapped ring (PACKET_RX_RING, PACKET_TX_RING) is not restored"},
		{"bpf fanout", pkFan1, func(e *packet_sock.PacketSockEntry) { e.Fanout = proto.Uint32(0x4242 | unix.PACKET_FANOUT_EBPF<<16) }, "fanout 16962 (ebpf): a fanout group steered by a BPF program"},
		{"fanout type", pkFan1, func(e *packet_sock.PacketSockEntry) { e.Fanout = proto.Uint32(0x4242 | 9<<16) }, "fanout type 9 unknown"},
		{"membership type", pkDgram, func(e *packet_sock.PacketSockEntry) { e.Mclist[0].Type = proto.Uint32(7) }, "membership 0: type 7 unknown"},
		{"membership address", pkRaw, func(e *packet_sock.PacketSockEntry) { e.Mclist[1].Addr = make([]byte, 33) }, "membership 1 (multicast on ifindex 1): a 33-byte address, above 32"},
		{"status flags", pkDgram, func(e *packet_sock.PacketSockEntry) { e.Flags = proto.Uint32(syscall.O_RDWR | syscall.O_APPEND) }, "status flags 02000: only O_NONBLOCK and O_ASYNC"},
		{"net namespace", pkVnet, func(e *packet_sock.PacketSockEntry) { e.NsId = proto.Uint32(99) }, "in net namespace 99, its task in 10: sockets of other net namespaces are not restored"},
		{"no entry", pkFan2, nil, "PACKETSK without its entry"},
	} {
		t.Run(strings.ReplaceAll(tc.name, " ", "-"), func(t *testing.T) {
			dir := fixture.CopyDir(t, imgs)
			editPacket(t, dir, func(fd uint32, fe *fdinfo.FileEntry) {
				if fd == tc.fd {
					if tc.edit == nil {
						fe.Psk = nil
					} else {
						tc.edit(fe.Psk)
					}
				}
			})
			wantPlanError(t, dir, fmt.Sprintf("plan: task 1: files.img: file %d: packet socket: ", ids[tc.fd]))
			wantPlanError(t, dir, tc.want)
		})
	}
	// An owner for SIGIO and O_ASYNC are planned as on every kind of
	// file (fown.go).
	for _, tc := range []struct {
		name string
		edit func(*packet_sock.PacketSockEntry)
	}{
		{"owner", func(e *packet_sock.PacketSockEntry) {
			e.Fown = &fown.FownEntry{Uid: proto.Uint32(0), Euid: proto.Uint32(0), Signum: proto.Uint32(0), PidType: proto.Uint32(1), Pid: proto.Uint32(1)}
		}},
		{"async", func(e *packet_sock.PacketSockEntry) { e.Flags = proto.Uint32(syscall.O_RDWR | syscall.O_ASYNC) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := fixture.CopyDir(t, imgs)
			editPacket(t, dir, func(fd uint32, fe *fdinfo.FileEntry) {
				if fd == pkRaw {
					tc.edit(fe.Psk)
				}
			})
			p := planDir(t, dir)
			if async, ok := p.sigio[ids[pkRaw]]; !ok || async != (tc.name == "async") {
				t.Errorf("file %d: planned for SIGIO %v (O_ASYNC %v), want O_ASYNC %v", ids[pkRaw], ok, async, tc.name == "async")
			}
		})
	}
}

// TestRestorePacket restores crest dump's images of the packetsk
// workload: its sockets are made in the tree's new net namespace, in
// PREPARE_NAMESPACES (step "sockets"), and the workload, which checks
// every socket's binding and options every tick and sends a frame on lo
// that each bound one must receive (the fanout group's one of its two),
// runs on; from outside, each has the binding and options of its image.
func TestRestorePacket(t *testing.T) {
	imgs, wdir := packetImages(t)
	out, r, rec := restorePacket(t, imgs, wdir)
	if strings.Contains(out, "CORRUPT") {
		t.Fatalf("the restored workload wrote:\n%s", out)
	}
	steps := map[string]bool{}
	for _, s := range rec.Steps {
		if s.Stage == StagePrepareNamespaces && s.Succeeded {
			steps[s.Step] = true
		}
	}
	if !steps[stepNetSockets] {
		t.Errorf("no step %q in PREPARE_NAMESPACES: %v", stepNetSockets, steps)
	}
	if n := checkPacketFDs(t, r.plan, r.RootPID()); n != 6 {
		t.Errorf("%d packet sockets in the plan, want 6", n)
	}
}

// TestRestorePacketCRIU restores CRIU 4.2's packet entries
// (images/testdata/criu-4.2-packetsk/packetsk: the same workload) in
// place of crest's: the workload runs on.
func TestRestorePacketCRIU(t *testing.T) {
	imgs, wdir := packetImages(t)
	dir := fixture.CopyDir(t, imgs)
	criu := filepath.Join("..", "images", "testdata", "criu-4.2-packetsk", "packetsk")
	img, err := images.ReadFile(filepath.Join(criu, "files.img"))
	if err != nil {
		t.Fatal(err)
	}
	fis, err := images.ReadFile(filepath.Join(criu, "fdinfo-2.img"))
	if err != nil {
		t.Fatal(err)
	}
	theirs := map[uint32]*packet_sock.PacketSockEntry{}
	for _, fi := range fis.Entries {
		fi := fi.Message.(*fdinfo.FdinfoEntry)
		for _, en := range img.Entries {
			if fe := en.Message.(*fdinfo.FileEntry); fe.GetId() == fi.GetId() && fe.Psk != nil {
				theirs[fi.GetFd()] = fe.Psk
			}
		}
	}
	if len(theirs) != 6 {
		t.Fatalf("%d packet sockets in CRIU's images, want 6", len(theirs))
	}
	editPacket(t, dir, func(fd uint32, fe *fdinfo.FileEntry) {
		c := theirs[fd]
		if c == nil {
			t.Fatalf("fd %d: no packet socket in CRIU's images", fd)
		}
		e := proto.Clone(c).(*packet_sock.PacketSockEntry)
		e.Id = fe.Psk.Id
		fe.Psk = e
	})
	out, r, _ := restorePacket(t, dir, wdir)
	if strings.Contains(out, "CORRUPT") {
		t.Fatalf("the restored workload wrote:\n%s", out)
	}
	checkPacketFDs(t, r.plan, r.RootPID())
}

// TestRestorePacketBroken breaks each property of a packet socket through
// the images: the restored workload must see it.
func TestRestorePacketBroken(t *testing.T) {
	imgs, wdir := packetImages(t)
	for _, tc := range []struct {
		name string
		edit func(t *testing.T, dir string)
		want string
	}{
		{"raw unbound", editPacketAt(pkRaw, func(e *packet_sock.PacketSockEntry) { e.Ifindex = proto.Uint32(0) }), "raw: bound ifindex 0"},
		{"raw auxdata", editPacketAt(pkRaw, func(e *packet_sock.PacketSockEntry) { e.AuxData = proto.Bool(false) }), "raw: PACKET_AUXDATA 0"},
		{"raw origdev", editPacketAt(pkRaw, func(e *packet_sock.PacketSockEntry) { e.OrigDev = proto.Bool(false) }), "raw: PACKET_ORIGDEV 0"},
		{"raw version", editPacketAt(pkRaw, func(e *packet_sock.PacketSockEntry) { e.Version = proto.Uint32(2) }), "raw: PACKET_VERSION 2"},
		{"raw reserve", editPacketAt(pkRaw, func(e *packet_sock.PacketSockEntry) { e.Reserve = proto.Uint32(8) }), "raw: PACKET_RESERVE 8"},
		{"raw timestamp", editPacketAt(pkRaw, func(e *packet_sock.PacketSockEntry) { e.Timestamp = proto.Uint32(0) }), "raw: PACKET_TIMESTAMP 0"},
		{"raw copy thresh", editPacketAt(pkRaw, func(e *packet_sock.PacketSockEntry) { e.CopyThresh = proto.Uint32(100) }), "raw: diag copy_thresh 100"},
		// the diag lists the newest first: promisc, then the address
		{"raw promisc", editPacketAt(pkRaw, func(e *packet_sock.PacketSockEntry) { e.Mclist = e.Mclist[1:] }), "raw: diag memberships 1"},
		{"raw multicast", editPacketAt(pkRaw, func(e *packet_sock.PacketSockEntry) { e.Mclist = e.Mclist[:1] }), "lo's multicast list has 01:00:5e:00:00:fb 0"},
		{"raw rcvbuf", editPacketAt(pkRaw, func(e *packet_sock.PacketSockEntry) { e.Opts.SoRcvbuf = proto.Uint32(300000) }), "raw: SO_RCVBUF 300000"},
		{"dgram blocking", editPacketAt(pkDgram, func(e *packet_sock.PacketSockEntry) { e.Flags = proto.Uint32(syscall.O_RDWR) }), "dgram: O_NONBLOCK 0"},
		{"dgram protocol", editPacketAt(pkDgram, func(e *packet_sock.PacketSockEntry) { e.Protocol = proto.Uint32(uint32(htons(0x88b6))) }), "dgram: bound protocol 34998"},
		{"fan2 alone", editPacketAt(pkFan2, func(e *packet_sock.PacketSockEntry) { e.Fanout = nil }), "fan2: PACKET_FANOUT 0"},
		{"idle bound", editPacketAt(pkIdle, func(e *packet_sock.PacketSockEntry) { e.Ifindex = proto.Uint32(1) }), "idle: bound ifindex 1"},
		{"vnet loss", editPacketAt(pkVnet, func(e *packet_sock.PacketSockEntry) { e.Loss = proto.Bool(false) }), "vnet: PACKET_LOSS 0"},
		{"vnet type", editPacketAt(pkVnet, func(e *packet_sock.PacketSockEntry) {
			e.Type = proto.Uint32(unix.SOCK_DGRAM)
			e.VnetHdr = proto.Bool(false)
		}), "vnet: SO_TYPE 2"},
	} {
		t.Run(strings.ReplaceAll(tc.name, " ", "-"), func(t *testing.T) {
			dir := fixture.CopyDir(t, imgs)
			tc.edit(t, dir)
			out, _, _ := restorePacket(t, dir, wdir)
			if !strings.Contains(out, "CORRUPT packetsk: "+tc.want) {
				t.Errorf("the workload wrote %q, want a CORRUPT line with %q", out, tc.want)
			}
		})
	}
}

// TestRestorePacketRollback: a restore that fails on a packet socket once
// others are made in the tree's namespace (vnet bound to interface 7,
// which the namespace does not have) fails naming the task, fd, file,
// socket, call and errno, and leaves nothing: no task, no fd of ours in
// the tree's namespace, which is gone.
func TestRestorePacketRollback(t *testing.T) {
	imgs, _ := packetImages(t)
	dir := fixture.CopyDir(t, imgs)
	editPacketAt(pkVnet, func(e *packet_sock.PacketSockEntry) { e.Ifindex = proto.Uint32(7) })(t, dir)
	obs := &netRootArrival{}
	_, err := Start(context.Background(), planDir(t, dir), Options{Observer: obs})
	var se *StageError
	if !errors.As(err, &se) || se.Stage != StagePrepareNamespaces {
		t.Fatalf("error %v, want a StageError of PREPARE_NAMESPACES", err)
	}
	t.Log(err)
	for _, w := range []string{"task 1 fd 9", fmt.Sprintf("file %d", rootFileIDs(t, dir)[pkVnet]),
		"SOCK_RAW protocol 0x0 on ifindex 7", "bind(ifindex 7)", "no such device"} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("%q does not say %q", err, w)
		}
	}
	if obs.net == 0 {
		t.Fatal("no net namespace of the root seen")
	}
	if h := holders("net", obs.net); len(h) > 0 {
		t.Errorf("the tree's net namespace is still held by %q", h)
	}
	if fds := ourFDsIn(obs.net); len(fds) > 0 {
		t.Errorf("our fds in the tree's net namespace: %q", fds)
	}
}

// hostPacketFanout is the fanout group (id, PACKET_FANOUT_LB, with
// PACKET_FANOUT_FLAG_ROLLOVER) of the program below's fd 5.
const hostPacketFanout = 0x7e59 | (unix.PACKET_FANOUT_LB|unix.PACKET_FANOUT_FLAG_ROLLOVER)<<16

// hostPacketImages starts a program in crest's net namespace with packet
// sockets (fd 4 SOCK_RAW of ethertype 0x88b6, which nothing on the host
// sends, bound to lo with PACKET_AUXDATA; fd 5 SOCK_DGRAM of 0x88b6 on
// lo in fanout group hostPacketFanout, whose flag the socket diag does
// not tell; fd 6 SOCK_DGRAM never bound), dumps it (which kills it) and
// returns the images and its directory.
func hostPacketImages(t *testing.T) (imgs, wdir string) {
	t.Helper()
	needRoot(t)
	cli.Subreaper(t)
	p := workloads.StartTicking(t, "packet", "hostns", workloads.TickSource{Includes: `#include <arpa/inet.h>
#include <linux/if_packet.h>
#include <sys/socket.h>
`, Setup: fmt.Sprintf(`struct sockaddr_ll a = { .sll_family = AF_PACKET, .sll_protocol = htons(0x88b6), .sll_ifindex = 1 };
	int one = 1, fan = %#x;
	if (socket(AF_PACKET, SOCK_RAW, htons(0x88b6)) != 4 || bind(4, (struct sockaddr *)&a, sizeof a) ||
	    setsockopt(4, SOL_PACKET, PACKET_AUXDATA, &one, sizeof one))
		return 2;
	if (socket(AF_PACKET, SOCK_DGRAM, htons(0x88b6)) != 5 || bind(5, (struct sockaddr *)&a, sizeof a) ||
	    setsockopt(5, SOL_PACKET, PACKET_FANOUT, &fan, sizeof fan))
		return 2;
	if (socket(AF_PACKET, SOCK_DGRAM, 0) != 6)
		return 2;`, hostPacketFanout)})
	waitLogLines(t, p, "out-packet.log", 3)
	return dumpReaped(t, p, dump.Options{}), p.Dir
}

// joinHostFanout reports whether a socket of ours can join the fanout
// group id of hostPacketFanout with another type (hash): it can when no
// socket holds the group.
func joinHostFanout(t *testing.T) bool {
	t.Helper()
	s, err := unix.Socket(unix.AF_PACKET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, int(htons(0x88b6)))
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(s)
	if err := unix.Bind(s, &unix.SockaddrLinklayer{Ifindex: 1}); err != nil {
		t.Fatal(err)
	}
	return unix.SetsockoptInt(s, unix.SOL_PACKET, unix.PACKET_FANOUT, hostPacketFanout&0xffff) == nil
}

// TestRestorePacketHostNS restores packet sockets of a tree in crest's
// net namespace, which the engine makes with the tree's other files
// before the root is born: each has its binding and options again, the
// fanout group its flag too (which crest's dump reads, and CRIU's
// loses), and the program runs on. A restore that fails on a later
// socket (fd 6 told to join a membership on interface 99, which there
// is not) leaves the earlier ones closed: the fanout group is gone.
func TestRestorePacketHostNS(t *testing.T) {
	imgs, wdir := hostPacketImages(t)
	t.Run("restored", func(t *testing.T) {
		p := planDir(t, imgs)
		from := logSize(wdir, "out-packet.log")
		r, err := Start(context.Background(), p, Options{})
		if err != nil {
			t.Fatal(err)
		}
		abortAtCleanup(t, r, p)
		if out := waitLog(t, wdir, "out-packet.log", from, lines(5)); strings.Contains(out, "CORRUPT") {
			t.Fatalf("the restored program wrote:\n%s", out)
		}
		if n := checkPacketFDs(t, p, r.RootPID()); n != 3 {
			t.Errorf("%d packet sockets in the plan, want 3", n)
		}
		if live := livePacket(t, r.RootPID(), 5); !strings.HasSuffix(live, fmt.Sprintf("fanout %#x", hostPacketFanout)) {
			t.Errorf("fd 5: %s, want fanout %#x", live, hostPacketFanout)
		}
		if joinHostFanout(t) {
			t.Errorf("fanout group %#x joined with another type while the restored program holds it", hostPacketFanout&0xffff)
		}
	})
	t.Run("rollback", func(t *testing.T) {
		dir := fixture.CopyDir(t, imgs)
		editPacket(t, dir, func(fd uint32, fe *fdinfo.FileEntry) {
			if fd == 6 {
				fe.Psk.Mclist = []*packet_sock.PacketMclist{{Index: proto.Uint32(99), Type: proto.Uint32(unix.PACKET_MR_MULTICAST), Addr: []byte{1, 0, 0x5e, 0, 0, 0xfd}}}
			}
		})
		_, err := Start(context.Background(), planDir(t, dir), Options{})
		var se *StageError
		if !errors.As(err, &se) || se.Stage != StageRootTask {
			t.Fatalf("error %v, want a StageError of ROOT_TASK", err)
		}
		t.Log(err)
		for _, w := range []string{"task 1", fmt.Sprintf("file %d", rootFileIDs(t, dir)[6]), "SOCK_DGRAM protocol 0x0 on every interface",
			"setsockopt(PACKET_ADD_MEMBERSHIP, multicast on ifindex 99 address 01005e0000fd)", "no such device"} {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%q does not say %q", err, w)
			}
		}
		if !joinHostFanout(t) {
			t.Errorf("fanout group %#x still held after the failed restore", hostPacketFanout&0xffff)
		}
	})
}
