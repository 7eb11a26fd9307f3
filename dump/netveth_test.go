package dump_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/checkpoint-restore/go-criu/v8/crit/images/netdev"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/sysctl"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/crest-restore/crest/dump"
	"github.com/crest-restore/crest/images"
	"github.com/crest-restore/crest/internal/nlattr"
	"github.com/crest-restore/crest/test/workloads"
)

// criuVeth is CRIU 4.2's dump of netveth (images/testdata/criu-4.2-veth).
var criuVeth = filepath.Join("..", "images", "testdata", "criu-4.2-veth")

// vethSh runs a command of the test's set-up, failing the test on error.
func vethSh(t *testing.T, args ...string) {
	t.Helper()
	if b, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, b)
	}
}

// startNetveth starts netveth with a veth made from outside: out in our
// namespace (10.57.71.1/24), in in the workload's, with mtu 1400, mac
// 02:00:00:57:71:02, 10.57.71.2/24, a route to 10.59.0.0/16 through
// 10.57.71.1 and rp_filter 2. It returns the workload and the outside
// end's ifindex. The pair goes when the test ends.
func startNetveth(t *testing.T, in, out string) (*workloads.Process, int) {
	t.Helper()
	netnsRoot(t)
	if _, err := net.InterfaceByName(out); err == nil {
		t.Fatalf("device %s is in our net namespace already", out)
	}
	p := workloads.Start(t, "netveth")
	t.Cleanup(func() {
		if _, err := net.InterfaceByName(out); err == nil {
			exec.Command("ip", "link", "del", out).Run()
		}
	})
	vethSh(t, "ip", "link", "add", out, "type", "veth", "peer", "name", in, "netns", fmt.Sprintf("/proc/%d/ns/net", p.Pid))
	vethSh(t, "ip", "addr", "add", "10.57.71.1/24", "dev", out)
	vethSh(t, "ip", "link", "set", out, "up")
	ns := []string{"nsenter", fmt.Sprintf("--net=/proc/%d/ns/net", p.Pid)}
	for _, c := range [][]string{
		{"ip", "link", "set", in, "mtu", "1400", "address", "02:00:00:57:71:02"},
		{"ip", "addr", "add", "10.57.71.2/24", "dev", in},
		{"ip", "link", "set", in, "up"},
		{"ip", "link", "set", "lo", "up"},
		{"ip", "route", "add", "10.59.0.0/16", "via", "10.57.71.1"},
		{"sysctl", "-qw", "net.ipv4.conf." + in + ".rp_filter=2"},
	} {
		vethSh(t, append(ns, c...)...)
	}
	if err := os.WriteFile(filepath.Join(p.Dir, "veth"), []byte(in+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	n := len(waitLines(t, p, "out-netveth.log", 1))
	waitLines(t, p, "out-netveth.log", n+3)
	ifi, err := net.InterfaceByName(out)
	if err != nil {
		t.Fatal(err)
	}
	return p, ifi.Index
}

// TestDumpVeth: a veth in the tree's net namespace whose peer is ours is
// written as CRIU 4.2 writes it (type VETH, ifindex, name, mtu, flags,
// link-layer address, the peer's ifindex but no peer_nsid, sysctls), the
// very fields CRIU's image of the same workload has, and its address and
// routes are in the ip dumps, by its ifindex.
func TestDumpVeth(t *testing.T) {
	p, peer := startNetveth(t, "ceth0", "cdv71")
	dir := filepath.Join(t.TempDir(), "images")
	if _, err := dump.Dump(context.Background(), dump.Options{Pid: p.Pid, Dir: dir}); err != nil {
		t.Fatal(err)
	}
	img, err := images.ReadFile(filepath.Join(dir, "netdev-10.img"))
	if err != nil {
		t.Fatal(err)
	}
	if len(img.Entries) != 2 {
		t.Fatalf("%d devices, want lo and ceth0", len(img.Entries))
	}
	d := img.Entries[1].Message.(*netdev.NetDeviceEntry)
	if d.GetType() != netdev.NdType_VETH || d.GetName() != "ceth0" || d.GetIfindex() != 2 || d.GetMtu() != 1400 ||
		d.GetFlags()&unix.IFF_UP == 0 || !bytes.Equal(d.GetAddress(), []byte{2, 0, 0, 0x57, 0x71, 2}) ||
		d.GetPeerIfindex() != uint32(peer) || d.PeerNsid != nil || d.Master != nil {
		t.Errorf("veth %v; want ceth0, ifindex 2, mtu 1400, up, 02:00:00:57:71:02, peer %d, no peer_nsid", d, peer)
	}
	if c := d.GetConf4()[slices.Index(images.NetConf4Names, "rp_filter")]; c.GetIarg() != 2 {
		t.Errorf("conf4 rp_filter %v, want 2", c)
	}
	if c := d.GetConf6()[slices.Index(images.NetConf6Names, "mtu")]; c.GetIarg() != 1400 {
		t.Errorf("conf6 mtu %v, want 1400", c)
	}

	// field by field against CRIU's: the same fields set, the same
	// sysctls with values
	criu, err := images.ReadFile(filepath.Join(criuVeth, "netdev-10.img"))
	if err != nil {
		t.Fatal(err)
	}
	for i := range criu.Entries {
		want, got := criu.Entries[i].Message.(*netdev.NetDeviceEntry), img.Entries[i].Message.(*netdev.NetDeviceEntry)
		if w, g := setFields(want), setFields(got); w != g {
			t.Errorf("entry %d (%s): fields %s, CRIU's %s", i, got.GetName(), g, w)
		}
		for _, c := range []struct {
			name      string
			want, got []sysctlEntry
		}{{"conf4", sysctls(want.GetConf4()), sysctls(got.GetConf4())}, {"conf6", sysctls(want.GetConf6()), sysctls(got.GetConf6())}} {
			if fmt.Sprint(c.want) != fmt.Sprint(c.got) {
				t.Errorf("entry %d (%s) %s: %v, CRIU's %v", i, got.GetName(), c.name, c.got, c.want)
			}
		}
	}

	// the address and routes name the veth by its ifindex
	var addr, route bool
	for _, m := range ipDump(t, dir, "ifaddr-10.img", images.IPDumpAddrMagic) {
		p := m.Payload()
		a := nlattr.Parse(p[unix.SizeofIfAddrmsg:])
		if binary.NativeEndian.Uint32(p[4:]) == 2 && bytes.Equal(a[unix.IFA_LOCAL], netip.MustParseAddr("10.57.71.2").AsSlice()) {
			addr = true
		}
	}
	for _, m := range ipDump(t, dir, "route-10.img", images.IPDumpRouteMagic) {
		a := nlattr.Parse(m.Payload()[unix.SizeofRtMsg:])
		if bytes.Equal(a[unix.RTA_OIF], binary.NativeEndian.AppendUint32(nil, 2)) && bytes.Equal(a[unix.RTA_GATEWAY], netip.MustParseAddr("10.57.71.1").AsSlice()) {
			route = true
		}
	}
	if !addr || !route {
		t.Errorf("10.57.71.2 on ifindex 2 in ifaddr-10.img: %v; the route through 10.57.71.1 on ifindex 2 in route-10.img: %v", addr, route)
	}
}

// setFields names the fields of d that are set, sysctls aside.
func setFields(d *netdev.NetDeviceEntry) string {
	var out []string
	d.ProtoReflect().Range(func(f protoreflect.FieldDescriptor, _ protoreflect.Value) bool {
		out = append(out, string(f.Name()))
		return true
	})
	return strings.Join(out, " ")
}

// sysctlEntry is what of a sysctl entry is compared with CRIU's: its
// type and whether it has a value.
type sysctlEntry struct {
	typ   string
	value bool
}

func sysctls(es []*sysctl.SysctlEntry) []sysctlEntry {
	out := make([]sysctlEntry, len(es))
	for i, e := range es {
		out[i] = sysctlEntry{typ: e.GetType().String(), value: e.Iarg != nil || e.Sarg != nil}
	}
	return out
}

// TestDumpVethRefused: a veth with both ends in the tree's namespace is
// refused, naming the device and why, and the tree runs on.
func TestDumpVethRefused(t *testing.T) {
	netnsRoot(t)
	p := workloads.Start(t, "netveth")
	waitLines(t, p, "out-netveth.log", 3)
	vethSh(t, "nsenter", fmt.Sprintf("--net=/proc/%d/ns/net", p.Pid), "ip", "link", "add", "cin0", "type", "veth", "peer", "name", "cin1")
	parent := t.TempDir()
	_, err := dump.Dump(context.Background(), dump.Options{Pid: p.Pid, Dir: filepath.Join(parent, "images")})
	refusedCleanly(t, err, p, parent, "out-netveth.log", "net device", `device "cin`, "of kind veth", "is there too: only veths with their peer outside the tree are dumped")
}
