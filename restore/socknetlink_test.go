package restore

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	"github.com/checkpoint-restore/go-criu/v8/crit/images/fdinfo"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/fown"
	sk_netlink "github.com/checkpoint-restore/go-criu/v8/crit/images/sk-netlink"

	"github.com/crest-restore/crest/dump"
	"github.com/crest-restore/crest/images"
	"github.com/crest-restore/crest/test/check"
	"github.com/crest-restore/crest/test/cli"
	"github.com/crest-restore/crest/test/fixture"
	"github.com/crest-restore/crest/test/workloads"
)

// The sockets of the netlink workload (test/workloads/src/netlink.c), by
// fd.
const (
	nlMon  = 4 // NETLINK_ROUTE, port 1 (autobound), groups 1, 5, 9
	nlReq  = 5 // NETLINK_ROUTE, autobound at its first send
	nlGen  = 6 // NETLINK_GENERIC, port 0x6e6c0005, O_NONBLOCK
	nlConn = 7 // NETLINK_ROUTE connected to the kernel
	nlIdle = 8 // NETLINK_ROUTE never bound
	nlUev  = 9 // NETLINK_KOBJECT_UEVENT, port 0x6e6c0007, SO_PASSCRED
	nlDiag = 10
)

var netlinkLogs = map[string]check.Next{"out-netlink.log": check.Counter}

// netlinkImages starts the netlink workload in a net namespace of its
// own, dumps it with crest's dump (which kills it) and returns the
// images and the workload's directory.
func netlinkImages(t *testing.T) (imgs, wdir string) {
	t.Helper()
	p, imgs := dumpedWorkload(t, "netlink", netlinkLogs, 3, dump.Options{})
	return imgs, p.Dir
}

// rootFileIDs returns the files.img id of every fd of the root (pid 1)
// of the images in dir.
func rootFileIDs(t *testing.T, dir string) map[uint32]uint32 {
	t.Helper()
	d, err := images.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	ids, err := d.IDs(1)
	if err != nil {
		t.Fatal(err)
	}
	fis, err := d.Fdinfo(ids.GetFilesId())
	if err != nil {
		t.Fatal(err)
	}
	out := map[uint32]uint32{}
	for _, fi := range fis {
		out[fi.GetFd()] = fi.GetId()
	}
	return out
}

// editNetlink rewrites the file entries of the root's netlink sockets in
// dir's files.img, each given by its fd.
func editNetlink(t *testing.T, dir string, edit func(fd uint32, fe *fdinfo.FileEntry)) {
	t.Helper()
	fdOf := map[uint32]uint32{}
	for fd, id := range rootFileIDs(t, dir) {
		fdOf[id] = fd
	}
	editImage(t, dir, "files.img", func(img *images.Image) {
		for _, en := range img.Entries {
			fe := en.Message.(*fdinfo.FileEntry)
			if fd, ok := fdOf[fe.GetId()]; ok && fe.GetType() == fdinfo.FdTypes_NETLINKSK {
				edit(fd, fe)
			}
		}
	})
}

// editSocket is an editNetlink of the socket at fd alone.
func editSocket(fd uint32, edit func(e *sk_netlink.NetlinkSkEntry)) func(t *testing.T, dir string) {
	return func(t *testing.T, dir string) {
		editNetlink(t, dir, func(at uint32, fe *fdinfo.FileEntry) {
			if at == fd {
				edit(fe.Nlsk)
			}
		})
	}
}

// restoreNetlink restores the images in dir (the workload's directory
// wdir), rolled back when the test ends, and returns what its log got
// (30 lines, or up to a CORRUPT one) and the restore.
func restoreNetlink(t *testing.T, dir, wdir string, opts Options) (string, *Restore, *recorder) {
	t.Helper()
	p := planDir(t, dir)
	from := logSize(wdir, "out-netlink.log")
	rec := &recorder{}
	opts.Observer = rec
	r, err := Start(context.Background(), p, opts)
	if err != nil {
		t.Fatal(err)
	}
	abortAtCleanup(t, r, p)
	// past a tick that uses the sockets (one in 25)
	return waitLog(t, wdir, "out-netlink.log", from, lines(30)), r, rec
}

// liveNetlink is a netlink socket of a task as the kernel has it.
type liveNetlink struct {
	protocol int
	port     uint32
	groups   uint32   // getsockname's: 1-32
	members  []uint32 // NETLINK_LIST_MEMBERSHIPS
}

func (l liveNetlink) String() string {
	return fmt.Sprintf("protocol %d port %#x groups %#x members %#x", l.protocol, l.port, l.groups, l.members)
}

// netlinkOf reads socket fd of process pid.
func netlinkOf(t *testing.T, pid, fd int) liveNetlink {
	t.Helper()
	c := taskFD(t, pid, fd)
	var l liveNetlink
	var err error
	if l.protocol, err = unix.GetsockoptInt(c, unix.SOL_SOCKET, unix.SO_PROTOCOL); err != nil {
		t.Fatal(err)
	}
	sa, err := unix.Getsockname(c)
	if err != nil {
		t.Fatal(err)
	}
	nl := sa.(*unix.SockaddrNetlink)
	l.port, l.groups = nl.Pid, nl.Groups
	buf := make([]byte, 64)
	n := uint32(len(buf))
	if _, _, e := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(c), unix.SOL_NETLINK, unix.NETLINK_LIST_MEMBERSHIPS,
		uintptr(unsafe.Pointer(&buf[0])), uintptr(unsafe.Pointer(&n)), 0); e != 0 {
		t.Fatalf("getsockopt(NETLINK_LIST_MEMBERSHIPS): %v", e)
	}
	for b := buf[:min(int(n), len(buf))]; len(b) >= 4; b = b[4:] {
		l.members = append(l.members, binary.NativeEndian.Uint32(b))
	}
	return l
}

// netlinkWant is what socket s of the plan must be once restored:
// getsockname's groups are the first word; the memberships are listed
// (a word per 32 of the protocol's groups) once it joined one.
func netlinkWant(s *NetlinkSocket, live liveNetlink) liveNetlink {
	w := liveNetlink{protocol: s.Protocol, port: s.Port}
	if len(s.groupList()) > 0 {
		w.groups = s.Groups[0]
		w.members = make([]uint32, len(live.members))
		copy(w.members, s.Groups)
	}
	return w
}

// TestPlanNetlink: what the plan takes from crest dump's images of the
// netlink workload, and what it refuses, naming the task, files.img,
// the file and the socket.
func TestPlanNetlink(t *testing.T) {
	imgs, _ := netlinkImages(t)
	p := planDir(t, imgs)
	got := map[int]string{}
	for _, fd := range p.Root().FDs {
		if f := fd.File; f.Kind == FileNetlinkSocket {
			s := f.Netlink
			got[fd.FD] = fmt.Sprintf("%s flags %#o passcred %v", s, f.Flags&^syscall.O_ACCMODE, s.Opts.GetSoPasscred())
		}
	}
	port := func(fd int) uint32 {
		return p.Root().FDs[slices.IndexFunc(p.Root().FDs, func(x FD) bool { return x.FD == fd })].File.Netlink.Port
	}
	want := map[int]string{
		nlMon:  "NETLINK_ROUTE port 1 groups 1,5,9 flags 0 passcred false",
		nlReq:  fmt.Sprintf("NETLINK_ROUTE port %d flags 0 passcred false", port(nlReq)),
		nlGen:  "NETLINK_GENERIC port 1852571653 flags 04000 passcred false",
		nlConn: fmt.Sprintf("NETLINK_ROUTE port %d connected to port 0 group 0 flags 0 passcred false", port(nlConn)),
		nlIdle: "NETLINK_ROUTE unbound flags 0 passcred false",
		nlUev:  "NETLINK_KOBJECT_UEVENT port 1852571655 flags 0 passcred true",
		nlDiag: "NETLINK_SOCK_DIAG port 1 flags 0 passcred false",
	}
	for fd, w := range want {
		if got[fd] != w {
			t.Errorf("fd %d: %q, want %q", fd, got[fd], w)
		}
	}
	if len(got) != len(want) || port(nlReq) == 0 || port(nlConn) == 0 {
		t.Errorf("netlink sockets planned: %v", got)
	}

	ids := rootFileIDs(t, imgs)
	for _, tc := range []struct {
		name string
		fd   uint32
		edit func(e *sk_netlink.NetlinkSkEntry)
		want string
	}{
		{"protocol", nlGen, func(e *sk_netlink.NetlinkSkEntry) { e.Protocol = proto.Uint32(32) }, "protocol 32: netlink has protocols 0 to 31"},
		{"state", nlConn, func(e *sk_netlink.NetlinkSkEntry) { e.State = proto.Uint32(2) }, "state 2 (0 and 7 are unconnected, 1 connected)"},
		{"groups without port", nlIdle, func(e *sk_netlink.NetlinkSkEntry) { e.Groups = []uint32{0, 4} }, "NETLINK_ROUTE unbound groups 35: groups without a port"},
		{"destination group", nlConn, func(e *sk_netlink.NetlinkSkEntry) { e.DstGroup = proto.Uint32(33) }, "connected to group 33, above 32"},
		{"status flags", nlReq, func(e *sk_netlink.NetlinkSkEntry) { e.Flags = proto.Uint32(syscall.O_RDWR | syscall.O_APPEND) }, "status flags 02000: only O_NONBLOCK and O_ASYNC"},
		{"net namespace", nlUev, func(e *sk_netlink.NetlinkSkEntry) { e.NsId = proto.Uint32(99) }, "in net namespace 99, its task in 10: sockets of other net namespaces are not restored"},
		{"owner", nlMon, func(e *sk_netlink.NetlinkSkEntry) {
			e.Fown = &fown.FownEntry{Uid: proto.Uint32(0), Euid: proto.Uint32(0), Signum: proto.Uint32(0), PidType: proto.Uint32(1), Pid: proto.Uint32(1)}
		}, "an owner for SIGIO (F_SETOWN, F_SETSIG, O_ASYNC) is not restored on netlink sockets yet"},
		{"async", nlMon, func(e *sk_netlink.NetlinkSkEntry) { e.Flags = proto.Uint32(syscall.O_RDWR | syscall.O_ASYNC) }, "is not restored on netlink sockets yet"},
		{"no entry", nlDiag, nil, "NETLINKSK without its entry"},
	} {
		t.Run(strings.ReplaceAll(tc.name, " ", "-"), func(t *testing.T) {
			dir := fixture.CopyDir(t, imgs)
			editNetlink(t, dir, func(fd uint32, fe *fdinfo.FileEntry) {
				if fd == tc.fd {
					if tc.edit == nil {
						fe.Nlsk = nil
					} else {
						tc.edit(fe.Nlsk)
					}
				}
			})
			if o, _ := images.FileFown(&fdinfo.FileEntry{Nlsk: &sk_netlink.NetlinkSkEntry{}}); o != nil && strings.Contains(tc.want, "not restored on netlink sockets yet") {
				// images.FileFown knows netlink entries: fown.go
				// plans their owners as every kind's
				p := planDir(t, dir)
				if async, ok := p.sigio[ids[tc.fd]]; !ok || async != (tc.name == "async") {
					t.Errorf("file %d: planned for SIGIO %v (O_ASYNC %v), want O_ASYNC %v", ids[tc.fd], ok, async, tc.name == "async")
				}
				return
			}
			wantPlanError(t, dir, fmt.Sprintf("plan: task 1: files.img: file %d: netlink socket: ", ids[tc.fd]))
			wantPlanError(t, dir, tc.want)
		})
	}
}

// TestRestoreNetlink restores crest dump's images of the netlink
// workload: its sockets are made in the tree's new net namespace, in
// PREPARE_NAMESPACES (step "sockets"), and the workload, which checks
// every socket's port, groups, memberships, state and options every tick
// and uses each, runs on; from outside, each has the port and groups of
// its image.
func TestRestoreNetlink(t *testing.T) {
	imgs, wdir := netlinkImages(t)
	out, r, rec := restoreNetlink(t, imgs, wdir, Options{})
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
	checkNetlinkFDs(t, r.plan, r.RootPID())
}

// checkNetlinkFDs compares every netlink socket of the restored root
// (host pid) with the plan.
func checkNetlinkFDs(t *testing.T, p *Plan, pid int) {
	t.Helper()
	n := 0
	for _, fd := range p.Root().FDs {
		if fd.File.Kind != FileNetlinkSocket {
			continue
		}
		n++
		live := netlinkOf(t, pid, fd.FD)
		if want := netlinkWant(fd.File.Netlink, live); live.String() != want.String() {
			t.Errorf("fd %d: %s, want %s", fd.FD, live, want)
		}
	}
	if n == 0 {
		t.Error("no netlink socket in the plan")
	}
}

// TestRestoreNetlinkCRIU restores CRIU 4.2's netlink entries
// (images/testdata/criu-4.2-netlink/netlink: the same workload) in place
// of crest's: every field of CRIU's but the ports the kernel picked at
// random in CRIU's run (which the workload keeps in its memory, from
// ours). The workload runs on, its connected socket too, which CRIU's own
// restore connects to group 32.
func TestRestoreNetlinkCRIU(t *testing.T) {
	imgs, wdir := netlinkImages(t)
	dir := fixture.CopyDir(t, imgs)
	criu := filepath.Join("..", "images", "testdata", "criu-4.2-netlink", "netlink")
	img, err := images.ReadFile(filepath.Join(criu, "files.img"))
	if err != nil {
		t.Fatal(err)
	}
	fis, err := images.ReadFile(filepath.Join(criu, "fdinfo-2.img"))
	if err != nil {
		t.Fatal(err)
	}
	theirs := map[uint32]*sk_netlink.NetlinkSkEntry{}
	for _, fi := range fis.Entries {
		fi := fi.Message.(*fdinfo.FdinfoEntry)
		for _, en := range img.Entries {
			if fe := en.Message.(*fdinfo.FileEntry); fe.GetId() == fi.GetId() && fe.Nlsk != nil {
				theirs[fi.GetFd()] = fe.Nlsk
			}
		}
	}
	if len(theirs) != 7 {
		t.Fatalf("%d netlink sockets in CRIU's images, want 7", len(theirs))
	}
	editNetlink(t, dir, func(fd uint32, fe *fdinfo.FileEntry) {
		c := theirs[fd]
		if c == nil {
			t.Fatalf("fd %d: no netlink socket in CRIU's images", fd)
		}
		e := proto.Clone(c).(*sk_netlink.NetlinkSkEntry)
		e.Id = fe.Nlsk.Id
		if c.GetPortid() >= 1<<31 {
			e.Portid = fe.Nlsk.Portid
		}
		fe.Nlsk = e
	})
	out, r, _ := restoreNetlink(t, dir, wdir, Options{})
	if strings.Contains(out, "CORRUPT") {
		t.Fatalf("the restored workload wrote:\n%s", out)
	}
	checkNetlinkFDs(t, r.plan, r.RootPID())
}

// TestRestoreNetlinkBroken breaks each property of a netlink socket
// through the images: the restored workload must see it.
func TestRestoreNetlinkBroken(t *testing.T) {
	imgs, wdir := netlinkImages(t)
	for _, tc := range []struct {
		name string
		edit func(t *testing.T, dir string)
		want string
	}{
		{"mon groups", editSocket(nlMon, func(e *sk_netlink.NetlinkSkEntry) { e.Groups = []uint32{0x11} }), "mon: groups 17"},
		{"mon port", editSocket(nlMon, func(e *sk_netlink.NetlinkSkEntry) { e.Portid = proto.Uint32(5) }), "mon: port 5"},
		{"mon rcvbuf", editSocket(nlMon, func(e *sk_netlink.NetlinkSkEntry) { e.Opts.SoRcvbuf = proto.Uint32(300000) }), "mon: SO_RCVBUF 300000"},
		{"gen port", editSocket(nlGen, func(e *sk_netlink.NetlinkSkEntry) { e.Portid = proto.Uint32(0x6e6c0006) }), "gen: port 1852571654"},
		{"gen blocking", editSocket(nlGen, func(e *sk_netlink.NetlinkSkEntry) { e.Flags = proto.Uint32(syscall.O_RDWR) }), "gen: O_NONBLOCK 0"},
		{"conn unconnected", editSocket(nlConn, func(e *sk_netlink.NetlinkSkEntry) { e.State = proto.Uint32(netlinkNew) }), "conn: diag state 7"},
		{"conn group", editSocket(nlConn, func(e *sk_netlink.NetlinkSkEntry) { e.DstGroup = proto.Uint32(32) }), "conn: peer groups 2147483648"},
		{"req connected", editSocket(nlReq, func(e *sk_netlink.NetlinkSkEntry) { e.State = proto.Uint32(netlinkConnected) }), "req: diag state 1"},
		{"idle protocol", editSocket(nlIdle, func(e *sk_netlink.NetlinkSkEntry) { e.Protocol = proto.Uint32(unix.NETLINK_GENERIC) }), "idle: SO_PROTOCOL 16"},
		{"uev passcred", editSocket(nlUev, func(e *sk_netlink.NetlinkSkEntry) { e.Opts.SoPasscred = proto.Bool(false) }), "uev: SO_PASSCRED 0"},
	} {
		t.Run(strings.ReplaceAll(tc.name, " ", "-"), func(t *testing.T) {
			dir := fixture.CopyDir(t, imgs)
			tc.edit(t, dir)
			out, _, _ := restoreNetlink(t, dir, wdir, Options{})
			if !strings.Contains(out, "CORRUPT netlink: "+tc.want) {
				t.Errorf("the workload wrote %q, want a CORRUPT line with %q", out, tc.want)
			}
		})
	}
}

// TestRestoreNetlinkGroupsAbove32: groups above 32, which CRIU 4.2's
// dump never writes (and its restore refuses), are joined with
// NETLINK_ADD_MEMBERSHIP: mon listens to group 34 (RTNLGRP_MCTP_IFADDR)
// too once restored.
func TestRestoreNetlinkGroupsAbove32(t *testing.T) {
	imgs, _ := netlinkImages(t)
	dir := fixture.CopyDir(t, imgs)
	editNetlink(t, dir, func(fd uint32, fe *fdinfo.FileEntry) {
		if fd == nlMon {
			fe.Nlsk.Groups = []uint32{0x111, 0x2}
		}
	})
	p := planDir(t, dir)
	r, err := Start(context.Background(), p, Options{Until: StageRestore}) // every task holds its fds
	if err != nil {
		t.Fatal(err)
	}
	abortAtCleanup(t, r, p)
	live := netlinkOf(t, r.RootPID(), nlMon)
	if want := "protocol 0 port 0x1 groups 0x111 members [0x111 0x2]"; live.String() != want {
		t.Errorf("mon: %s, want %s", live, want)
	}
}

// TestRestoreNetlinkRollback: a restore that fails on a netlink socket
// once others are made in the tree's namespace (uev told to join group
// 33, which NETLINK_KOBJECT_UEVENT does not have) fails naming the task,
// fd, file, socket, call and errno, and leaves nothing: no task, no fd of
// ours in the tree's namespace, which is gone.
func TestRestoreNetlinkRollback(t *testing.T) {
	imgs, _ := netlinkImages(t)
	dir := fixture.CopyDir(t, imgs)
	editSocket(nlUev, func(e *sk_netlink.NetlinkSkEntry) { e.Groups = []uint32{0, 1} })(t, dir)
	obs := &netRootArrival{}
	_, err := Start(context.Background(), planDir(t, dir), Options{Observer: obs})
	var se *StageError
	if !errors.As(err, &se) || se.Stage != StagePrepareNamespaces {
		t.Fatalf("error %v, want a StageError of PREPARE_NAMESPACES", err)
	}
	t.Log(err)
	for _, w := range []string{"task 1 fd 9", fmt.Sprintf("file %d", rootFileIDs(t, dir)[nlUev]),
		"NETLINK_KOBJECT_UEVENT port 1852571655 groups 33", "setsockopt(NETLINK_ADD_MEMBERSHIP, 33)", "invalid argument"} {
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

// hostNetlinkPort is the port the host namespace program below binds its
// NETLINK_USERSOCK socket to (fd 4, group 4).
const hostNetlinkPort = 0x7e570104

// hostNetlinkImages starts a program in crest's net namespace with
// netlink sockets (fd 4 NETLINK_USERSOCK bound to hostNetlinkPort and
// group 4, fd 5 NETLINK_ROUTE never bound, fd 6 NETLINK_GENERIC bound to
// hostNetlinkPort+2: not a port the kernel picks, which another test's
// program might hold by the time of the restore), dumps it (which kills
// it) and returns the images and its directory.
func hostNetlinkImages(t *testing.T) (imgs, wdir string) {
	t.Helper()
	needRoot(t)
	cli.Subreaper(t)
	p := workloads.StartTicking(t, "netlink", "hostns", workloads.TickSource{Includes: `#include <linux/netlink.h>
#include <sys/socket.h>
`, Setup: fmt.Sprintf(`struct sockaddr_nl a = { .nl_family = AF_NETLINK, .nl_pid = %#x, .nl_groups = 1 << 3 };
	struct sockaddr_nl g = { .nl_family = AF_NETLINK, .nl_pid = %#x };
	if (socket(AF_NETLINK, SOCK_RAW, NETLINK_USERSOCK) != 4 || bind(4, (struct sockaddr *)&a, sizeof a))
		return 2;
	if (socket(AF_NETLINK, SOCK_RAW, NETLINK_ROUTE) != 5)
		return 2;
	if (socket(AF_NETLINK, SOCK_RAW, NETLINK_GENERIC) != 6 || bind(6, (struct sockaddr *)&g, sizeof g))
		return 2;`, hostNetlinkPort, hostNetlinkPort+2)})
	waitLogLines(t, p, "out-netlink.log", 3)
	return dumpReaped(t, p, dump.Options{}), p.Dir
}

// holdPort binds a NETLINK_USERSOCK socket of ours to port in our net
// namespace until the test ends; it reports whether it could.
func holdPort(t *testing.T, port uint32) bool {
	t.Helper()
	s, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_USERSOCK)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Bind(s, &unix.SockaddrNetlink{Family: unix.AF_NETLINK, Pid: port}); err != nil {
		unix.Close(s)
		if errors.Is(err, unix.EADDRINUSE) {
			return false
		}
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(s) })
	return true
}

// TestRestoreNetlinkHostNS restores netlink sockets of a tree in crest's
// net namespace, which the engine makes with the tree's other files
// before the root is born: each has its port and groups again, and the
// program runs on. A port someone holds now is given up for one the
// kernel picks (CRIU's rule). A restore that fails on a later socket
// leaves the earlier one closed (its port free).
func TestRestoreNetlinkHostNS(t *testing.T) {
	imgs, wdir := hostNetlinkImages(t)
	run := func(t *testing.T, dir string) (*Restore, *Plan) {
		t.Helper()
		p := planDir(t, dir)
		from := logSize(wdir, "out-netlink.log")
		r, err := Start(context.Background(), p, Options{})
		if err != nil {
			t.Fatal(err)
		}
		abortAtCleanup(t, r, p)
		if out := waitLog(t, wdir, "out-netlink.log", from, lines(5)); strings.Contains(out, "CORRUPT") {
			t.Fatalf("the restored program wrote:\n%s", out)
		}
		return r, p
	}
	t.Run("restored", func(t *testing.T) {
		r, p := run(t, imgs)
		checkNetlinkFDs(t, p, r.RootPID())
		if live := netlinkOf(t, r.RootPID(), 4); live.port != hostNetlinkPort || live.groups != 8 {
			t.Errorf("fd 4: %s", live)
		}
		if holdPort(t, hostNetlinkPort) {
			t.Errorf("port %#x is free while the restored program holds it", hostNetlinkPort)
		}
	})
	t.Run("port taken", func(t *testing.T) {
		if !holdPort(t, hostNetlinkPort) {
			t.Fatalf("port %#x held already", hostNetlinkPort)
		}
		r, _ := run(t, imgs)
		if live := netlinkOf(t, r.RootPID(), 4); live.port == hostNetlinkPort || live.port == 0 || live.groups != 8 || live.protocol != unix.NETLINK_USERSOCK {
			t.Errorf("fd 4 with its port taken: %s, want another port, group 4", live)
		}
	})
	t.Run("rollback", func(t *testing.T) {
		dir := fixture.CopyDir(t, imgs)
		editNetlink(t, dir, func(fd uint32, fe *fdinfo.FileEntry) {
			if fd == 6 {
				fe.Nlsk.Protocol = proto.Uint32(netlinkMaxProtocol) // no such protocol here
			}
		})
		_, err := Start(context.Background(), planDir(t, dir), Options{})
		var se *StageError
		if !errors.As(err, &se) || se.Stage != StageRootTask {
			t.Fatalf("error %v, want a StageError of ROOT_TASK", err)
		}
		t.Log(err)
		for _, w := range []string{"task 1", fmt.Sprintf("file %d", rootFileIDs(t, dir)[6]), "netlink protocol 31", "socket: protocol not supported"} {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%q does not say %q", err, w)
			}
		}
		if !holdPort(t, hostNetlinkPort) {
			t.Errorf("port %#x still held after the failed restore", hostNetlinkPort)
		}
	})
}
