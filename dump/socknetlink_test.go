package dump_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/checkpoint-restore/go-criu/v8/crit/images/fdinfo"
	sk_netlink "github.com/checkpoint-restore/go-criu/v8/crit/images/sk-netlink"

	"github.com/crest-restore/crest/dump"
	"github.com/crest-restore/crest/images"
	"github.com/crest-restore/crest/test/workloads"
)

// criuNetlink holds CRIU 4.2's files.img, fdinfo-2.img and ids-1.img of
// the netlink and sock workloads (README.md there).
var criuNetlink = filepath.Join("..", "images", "testdata", "criu-4.2-netlink")

// rawEntries reads the entries of the protobuf image file path as bytes:
// after its two magics, each is a u32 length and the message.
func rawEntries(t *testing.T, path string) [][]byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(b) < 8 {
		t.Fatalf("%s: %d bytes", path, len(b))
	}
	var out [][]byte
	for b = b[8:]; len(b) > 0; {
		if len(b) < 4 || int(binary.LittleEndian.Uint32(b)) > len(b)-4 {
			t.Fatalf("%s: a truncated entry", path)
		}
		n := binary.LittleEndian.Uint32(b)
		out = append(out, b[4:4+n])
		b = b[4+n:]
	}
	return out
}

// setVarints returns message m with its varint fields of vals set to
// those values, every other byte as it is.
func setVarints(t *testing.T, m []byte, vals map[protowire.Number]uint64) []byte {
	t.Helper()
	var out []byte
	for len(m) > 0 {
		num, typ, n := protowire.ConsumeTag(m)
		if n < 0 {
			t.Fatalf("bad tag in %x", m)
		}
		l := protowire.ConsumeFieldValue(num, typ, m[n:])
		if l < 0 {
			t.Fatalf("bad field %d in %x", num, m)
		}
		if v, ok := vals[num]; ok && typ == protowire.VarintType {
			out = protowire.AppendVarint(protowire.AppendTag(out, num, typ), v)
		} else {
			out = append(out, m[:n+l]...)
		}
		m = m[n+l:]
	}
	return out
}

// setNested returns message m with its bytes field num replaced by v.
func setNested(t *testing.T, m []byte, num protowire.Number, v []byte) []byte {
	t.Helper()
	var out []byte
	for len(m) > 0 {
		n2, typ, n := protowire.ConsumeTag(m)
		l := protowire.ConsumeFieldValue(n2, typ, m[n:])
		if n < 0 || l < 0 {
			t.Fatalf("bad field in %x", m)
		}
		if n2 == num && typ == protowire.BytesType {
			out = protowire.AppendBytes(protowire.AppendTag(out, num, typ), v)
		} else {
			out = append(out, m[:n+l]...)
		}
		m = m[n+l:]
	}
	return out
}

// netlinkFd is a netlink socket of an image set: its file entry and
// fdinfo entry, as bytes and decoded.
type netlinkFd struct {
	file, fdinfo []byte
	fe           *fdinfo.FileEntry
}

// netlinkFds reads the netlink sockets of the images in dir by fd (one
// task, fdinfo-2.img).
func netlinkFds(t *testing.T, dir string) map[uint32]netlinkFd {
	t.Helper()
	files := map[uint32][]byte{}
	decoded := map[uint32]*fdinfo.FileEntry{}
	for _, raw := range rawEntries(t, filepath.Join(dir, "files.img")) {
		fe := &fdinfo.FileEntry{}
		if err := proto.Unmarshal(raw, fe); err != nil {
			t.Fatal(err)
		}
		files[fe.GetId()], decoded[fe.GetId()] = raw, fe
	}
	out := map[uint32]netlinkFd{}
	for _, raw := range rawEntries(t, filepath.Join(dir, "fdinfo-2.img")) {
		fi := &fdinfo.FdinfoEntry{}
		if err := proto.Unmarshal(raw, fi); err != nil {
			t.Fatal(err)
		}
		if fi.GetType() == fdinfo.FdTypes_NETLINKSK {
			out[fi.GetFd()] = netlinkFd{file: files[fi.GetId()], fdinfo: raw, fe: decoded[fi.GetId()]}
		}
	}
	return out
}

// livePort is the port id of netlink socket fd of process pid.
func livePort(t *testing.T, pid, fd int) uint32 {
	t.Helper()
	c, err := stealFD(pid, fd)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(c)
	sa, err := unix.Getsockname(c)
	if err != nil {
		t.Fatal(err)
	}
	return sa.(*unix.SockaddrNetlink).Pid
}

// TestDumpNetlinkAsCRIU dumps the netlink workload (in a net namespace of
// its own: sockets bound by the kernel and by the program, listening to
// groups, connected, never bound, of four protocols) and sock (crest's
// namespace, a socket never bound) and compares every netlink socket's
// file and fdinfo entries with CRIU 4.2's of the same workloads, byte
// for byte. What differs between two runs is set to ours first: the
// inode, and the ports the kernel picked at random (negative ones), which
// must be the live ones.
func TestDumpNetlinkAsCRIU(t *testing.T) {
	for _, tc := range []struct {
		workload, log string
		fds           int
	}{{"netlink", "out-netlink.log", 7}, {"sock", "out.log", 1}} {
		t.Run(tc.workload, func(t *testing.T) {
			theirs := netlinkFds(t, filepath.Join(criuNetlink, tc.workload))
			if len(theirs) != tc.fds {
				t.Fatalf("CRIU's images have %d netlink sockets, want %d", len(theirs), tc.fds)
			}
			p := workloads.Start(t, tc.workload)
			waitLines(t, p, tc.log, 3)
			live := map[uint32]uint32{}
			for fd := range theirs {
				live[fd] = livePort(t, p.Pid, int(fd))
			}
			dir := filepath.Join(t.TempDir(), "images")
			if _, err := dump.Dump(context.Background(), dump.Options{Pid: p.Pid, Dir: dir}); err != nil {
				t.Fatal(err)
			}
			ours := netlinkFds(t, dir)
			if len(ours) != len(theirs) {
				t.Errorf("%d netlink sockets, CRIU's images %d", len(ours), len(theirs))
			}
			for fd, c := range theirs {
				o, ok := ours[fd]
				if !ok {
					t.Errorf("fd %d: not a netlink socket in our images", fd)
					continue
				}
				if port := o.fe.GetNlsk().GetPortid(); port != live[fd] {
					t.Errorf("fd %d: port %d, the live socket's %d", fd, port, live[fd])
				}
				set := map[protowire.Number]uint64{2: uint64(o.fe.GetNlsk().GetIno())} // ino
				if c.fe.GetNlsk().GetPortid() >= 1<<31 {
					set[7] = uint64(o.fe.GetNlsk().GetPortid()) // portid
				}
				nlsk := setVarints(t, mustNested(t, c.file, 7), set)
				if want := setNested(t, c.file, 7, nlsk); !bytes.Equal(o.file, want) {
					t.Errorf("fd %d: files.img entry\n%x\nCRIU's (inode and random port ours)\n%x\nours:   %v\nCRIU's: %v",
						fd, o.file, want, o.fe.GetNlsk(), c.fe.GetNlsk())
				}
				if !bytes.Equal(o.fdinfo, c.fdinfo) {
					t.Errorf("fd %d: fdinfo entry %x, CRIU's %x", fd, o.fdinfo, c.fdinfo)
				}
			}
		})
	}
}

// mustNested returns the bytes field num of message m.
func mustNested(t *testing.T, m []byte, num protowire.Number) []byte {
	t.Helper()
	for len(m) > 0 {
		n2, typ, n := protowire.ConsumeTag(m)
		l := protowire.ConsumeFieldValue(n2, typ, m[n:])
		if n < 0 || l < 0 {
			t.Fatalf("bad field in %x", m)
		}
		if n2 == num && typ == protowire.BytesType {
			v, _ := protowire.ConsumeBytes(m[n:])
			return v
		}
		m = m[n+l:]
	}
	t.Fatalf("no field %d in %x", num, m)
	return nil
}

// netlinkFownKnown says whether images.FileFown knows where netlink
// entries keep their owner for SIGIO: until it does, crest refuses
// owners and O_ASYNC on netlink sockets.
func netlinkFownKnown() bool {
	o, _ := images.FileFown(&fdinfo.FileEntry{Nlsk: &sk_netlink.NetlinkSkEntry{}})
	return o != nil
}

// netlinkProgram is a ticking workload (out-netlink.log) that runs setup,
// whose first fd is 4.
func netlinkProgram(t *testing.T, name, setup string) *workloads.Process {
	t.Helper()
	p := workloads.StartTicking(t, "netlink", name, workloads.TickSource{Includes: `#include <errno.h>
#include <sched.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <sys/socket.h>
`, Funcs: `static int nl(int protocol)
{
	return socket(AF_NETLINK, SOCK_RAW, protocol);
}

static int nl_bind(int s, unsigned int port, unsigned int groups)
{
	struct sockaddr_nl a = { .nl_family = AF_NETLINK, .nl_pid = port, .nl_groups = groups };

	return bind(s, (struct sockaddr *)&a, sizeof a);
}

static int join(int s, int group)
{
	return setsockopt(s, SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, &group, sizeof group);
}

static int on(int s, int opt)
{
	int one = 1;

	return setsockopt(s, SOL_NETLINK, opt, &one, sizeof one);
}
`, Setup: setup})
	waitLines(t, p, "out-netlink.log", 3)
	return p
}

// TestDumpNetlinkHostNS: a netlink socket bound in crest's net namespace
// (NETLINK_USERSOCK, whose groups no one sends to, port and group 4 of
// the program's choosing) is written with its port and groups, and with
// the namespace's id, as CRIU names the namespace of every socket the
// diag lists.
func TestDumpNetlinkHostNS(t *testing.T) {
	p := netlinkProgram(t, "hostns", `int s = nl(NETLINK_USERSOCK);
	if (s != 4 || nl_bind(s, 0x7e570004, 1 << 3))
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
	fd, ok := netlinkFds(t, dir)[4]
	if !ok {
		t.Fatal("fd 4 is not a netlink socket in the images")
	}
	e := fd.fe.GetNlsk()
	got := fmt.Sprintf("protocol %d port %#x groups %v state %d ns %d", e.GetProtocol(), e.GetPortid(), e.GetGroups(), e.GetState(), e.GetNsId())
	want := fmt.Sprintf("protocol %d port %#x groups [8] state 7 ns %d", unix.NETLINK_USERSOCK, 0x7e570004, ids.GetNetNsId())
	if got != want {
		t.Errorf("fd 4: %s, want %s", got, want)
	}
}

// TestDumpNetlinkRefused: a netlink socket the images can not carry, or
// that crest's and CRIU's restores would give back otherwise, fails the
// dump with an error naming the task, the fd and why; nothing is left and
// the tree runs on. The groups used are ones the host's kernel never
// sends to (RTNLGRP_NOP2, RTNLGRP_MCTP_IFADDR without MCTP devices).
func TestDumpNetlinkRefused(t *testing.T) {
	for _, tc := range []struct {
		name, setup string
		fd          int
		want        string
	}{
		{"queued", `int s = nl(NETLINK_ROUTE);
	struct { struct nlmsghdr h; struct ifinfomsg i; } r = { { sizeof r, RTM_GETLINK, NLM_F_REQUEST | NLM_F_DUMP, 1, 0 }, { 0 } };
	struct sockaddr_nl k = { .nl_family = AF_NETLINK };
	if (s != 4 || sendto(s, &r, sizeof r, 0, (struct sockaddr *)&k, sizeof k) != sizeof r)
		return 2;`, 4, "messages to read (poll revents 0x1)"},
		{"groups above 32", `int s = nl(NETLINK_ROUTE);
	if (s != 4 || nl_bind(s, 0, 0) || join(s, 14) || join(s, 34))
		return 2;`, 4, "groups above 32 (34)"},
		{"groups without port", `int s = nl(NETLINK_ROUTE);
	if (s != 4 || join(s, 14))
		return 2;`, 4, "listens to groups without a port"},
		{"pktinfo", `int s = nl(NETLINK_ROUTE);
	if (s != 4 || on(s, NETLINK_PKTINFO))
		return 2;`, 4, "NETLINK_PKTINFO is not kept by CRIU's images"},
		{"ext ack", `int s = nl(NETLINK_GENERIC);
	if (s != 4 || nl_bind(s, 0, 0) || on(s, NETLINK_EXT_ACK))
		return 2;`, 4, "NETLINK_EXT_ACK is not kept by CRIU's images"},
		{"no enobufs", `int s = nl(NETLINK_ROUTE);
	if (s != 4 || on(s, NETLINK_NO_ENOBUFS))
		return 2;`, 4, "NETLINK_NO_ENOBUFS is not kept"},
		{"async", `int s = nl(NETLINK_ROUTE);
	if (s != 4 || fcntl(s, F_SETFL, O_ASYNC))
		return 2;`, 4, "O_ASYNC on a netlink socket"},
		{"owner", `int s = nl(NETLINK_ROUTE);
	if (s != 4 || fcntl(s, F_SETOWN, getpid()))
		return 2;`, 4, "an owner for SIGIO (F_SETOWN, F_SETSIG) on a NETLINKSK file"},
		{"other netns", `int self = open("/proc/self/ns/net", O_RDONLY | O_CLOEXEC);
	if (self != 4 || unshare(CLONE_NEWNET))
		return 2;
	int s = nl(NETLINK_ROUTE);
	if (s != 5 || nl_bind(s, 0, 0) || setns(self, CLONE_NEWNET) || close(self))
		return 2;`, 5, "a socket of another net namespace (net:["},
	} {
		t.Run(strings.ReplaceAll(tc.name, " ", "-"), func(t *testing.T) {
			p := netlinkProgram(t, strings.ReplaceAll(tc.name, " ", "-"), tc.setup)
			parent := t.TempDir()
			dir := filepath.Join(parent, "images")
			_, err := dump.Dump(context.Background(), dump.Options{Pid: p.Pid, Dir: dir})
			// refused only while images.FileFown does not know where
			// netlink entries keep their owner; then dumped with it
			if (tc.name == "async" || tc.name == "owner") && netlinkFownKnown() {
				if err != nil {
					t.Fatal(err)
				}
				fe := netlinkFds(t, dir)[uint32(tc.fd)].fe.GetNlsk()
				if fe.GetFlags()&unix.O_ASYNC == 0 && fe.GetFown().GetPid() != 1 {
					t.Errorf("fd %d: flags %#o owner %v: neither O_ASYNC nor the owner kept", tc.fd, fe.GetFlags(), fe.GetFown())
				}
				return
			}
			refusedCleanly(t, err, p, parent, "out-netlink.log", "task 1", fmt.Sprintf("fd %d (socket:[", tc.fd), tc.want)
		})
	}
}
