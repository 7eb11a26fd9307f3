package restore

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	criu_core "github.com/checkpoint-restore/go-criu/v8/crit/images/criu-core"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/inventory"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/netdev"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/sysctl"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	"github.com/crest-restore/crest/dump"
	"github.com/crest-restore/crest/images"
	"github.com/crest-restore/crest/internal/nlattr"
	"github.com/crest-restore/crest/test/check"
	"github.com/crest-restore/crest/test/fixture"
)

// The netns workload (test/workloads/src/netns.c) as crest dump writes
// it: net namespace 10 (crest's own take ids 1-8, the root's pid
// namespace 9).
const netnsID = 10

var netnsLogs = map[string]check.Next{"out-netns.log": check.Counter}

// netnsImages starts the netns workload in a net namespace of its own,
// dumps it with crest's dump and --tcp-established (which kills it) and
// returns the images and the workload's directory.
func netnsImages(t *testing.T) (imgs, wdir string) {
	t.Helper()
	p, imgs := dumpedWorkload(t, "netns", netnsLogs, 3, dump.Options{TCPEstablished: true})
	return imgs, p.Dir
}

// editIPDump rewrites the ip save image file of dir with the messages
// keep keeps (edit may change each one's bytes).
func editIPDump(t *testing.T, dir, file string, magic uint32, keep func(i int, m []byte) bool) {
	t.Helper()
	path := filepath.Join(dir, file)
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	msgs, err := images.ParseIPDump(file, b, magic)
	if err != nil {
		t.Fatal(err)
	}
	out := binary.LittleEndian.AppendUint32(nil, magic)
	for i, m := range msgs {
		raw := bytes.Clone(m.Raw)
		if keep(i, raw) {
			out = append(out, raw...)
			out = append(out, make([]byte, (4-len(raw)%4)%4)...)
		}
	}
	if err := os.WriteFile(path, out, 0o600); err != nil {
		t.Fatal(err)
	}
}

// hasAttr says whether the route or rule message m (header, 12-byte
// rtmsg or fib_rule_hdr) has attribute typ equal to val.
func hasAttr(m []byte, typ uint16, val []byte) bool {
	a := nlattr.Parse(m[unix.SizeofNlMsghdr+12:])
	v, ok := a[typ]
	return ok && bytes.Equal(v, val)
}

func editNetns(t *testing.T, dir string, edit func(e *netdev.NetnsEntry)) {
	t.Helper()
	editImage(t, dir, netImage("netns", netnsID), func(img *images.Image) { edit(img.Entries[0].Message.(*netdev.NetnsEntry)) })
}

func editNetdev(t *testing.T, dir string, edit func(img *images.Image)) {
	t.Helper()
	editImage(t, dir, netImage("netdev", netnsID), edit)
}

func loopback(img *images.Image) *netdev.NetDeviceEntry {
	return img.Entries[0].Message.(*netdev.NetDeviceEntry)
}

// conf returns entry name of a conf list (NetConf4Names' or
// NetConf6Names' order).
func conf(entries []*sysctl.SysctlEntry, names []string, name string) *sysctl.SysctlEntry {
	return entries[slices.Index(names, name)]
}

// netPlanDir plans the images in dir with established connections
// allowed (the workload has one).
func netPlanDir(t *testing.T, dir string) *Plan {
	t.Helper()
	p, err := openNetPlan(t, dir)
	if err != nil {
		t.Fatalf("%s: %v", dir, err)
	}
	return p
}

func openNetPlan(t *testing.T, dir string) (*Plan, error) {
	t.Helper()
	d, err := images.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	return NewPlan(d, Options{TCPEstablished: true})
}

func wantNetPlanError(t *testing.T, dir, want string) {
	t.Helper()
	_, err := openNetPlan(t, dir)
	var pe *PlanError
	if !errors.As(err, &pe) || !strings.Contains(err.Error(), want) {
		t.Errorf("error %v, want a PlanError with %q", err, want)
	}
}

// TestPlanNetNS: what the plan takes from the images of a tree with a net
// namespace of its own (crest dump's of netns), and what it refuses,
// naming the image file and entry.
func TestPlanNetNS(t *testing.T) {
	imgs, _ := netnsImages(t)
	p := netPlanDir(t, imgs)
	ns := p.Net
	if ns == nil || ns.ID != netnsID {
		t.Fatalf("net namespace %+v", ns)
	}
	if lo := ns.Loopback; lo.GetName() != "lo" || lo.GetMtu() != 61000 || lo.GetFlags()&unix.IFF_UP == 0 || lo.GetIfindex() != 1 {
		t.Errorf("loopback %v", lo)
	}
	writes := map[string]string{}
	for _, s := range append(slices.Clone(ns.Sysctls), ns.LinkSysctls...) {
		writes[s.Path] = s.Value
	}
	for path, want := range map[string]string{
		"net/unix/max_dgram_qlen": "77\n", "net/ipv4/ping_group_range": "100\t200\n\n",
		"net/ipv4/conf/all/log_martians": "1\n", "net/ipv4/conf/default/arp_ignore": "2\n",
		"net/ipv4/conf/lo/route_localnet": "1\n", "net/ipv6/conf/default/hop_limit": "44\n",
		"net/ipv6/conf/lo/hop_limit": "33\n", "net/ipv6/conf/lo/mtu": "61000\n",
	} {
		if writes[path] != want {
			t.Errorf("sysctl %s: %q, want %q", path, writes[path], want)
		}
	}
	// accept_redirects goes after forwarding, last of its directory
	if i := slices.IndexFunc(ns.Sysctls, func(s NetSysctl) bool { return s.Path == "net/ipv4/conf/all/accept_redirects" }); i < 0 ||
		ns.Sysctls[i+1].Path != "net/ipv4/conf/default/accept_local" {
		t.Errorf("all/accept_redirects at %d, not last of net/ipv4/conf/all", i)
	}
	if len(ns.Addrs) != 4 || len(ns.Routes) != 1 || len(ns.Routes6) != 2 || len(ns.Rules) != 4 || !ns.HasRules {
		t.Errorf("%d addresses, %d and %d routes, %d rules; want 4, 1, 2, 4", len(ns.Addrs), len(ns.Routes), len(ns.Routes6), len(ns.Rules))
	}
	if !bytes.Contains(ns.Nftables, []byte("udp dport 9977")) || ns.Lock.any() {
		t.Errorf("nftables %q, lock %+v (crest's dump takes none)", ns.Nftables, ns.Lock)
	}
	if f := p.namespaceFlags(); f != 0x40 {
		t.Errorf("plan flags %#x, want a new net namespace", f)
	}

	id := netnsID
	for _, tc := range []struct {
		name string
		edit func(t *testing.T, dir string)
		err  string // "": plans
	}{
		{"a veth", func(t *testing.T, dir string) {
			editNetdev(t, dir, func(img *images.Image) {
				veth := proto.Clone(loopback(img)).(*netdev.NetDeviceEntry)
				veth.Type, veth.Name, veth.Ifindex = netdev.NdType_VETH.Enum(), proto.String("veth0"), proto.Uint32(2)
				img.Entries = append(img.Entries, images.Entry{Message: veth})
			})
		}, fmt.Sprintf("netdev-%d.img: entry 1: veth \"veth0\": its peer (ifindex 1) is in the same net namespace: veths with both ends in the tree are not restored", id)},
		{"a tun", func(t *testing.T, dir string) {
			editNetdev(t, dir, func(img *images.Image) { loopback(img).Type = netdev.NdType_TUN.Enum() })
		}, "entry 0: device \"lo\" of kind tun"},
		{"two loopbacks", func(t *testing.T, dir string) {
			editNetdev(t, dir, func(img *images.Image) {
				img.Entries = append(img.Entries, images.Entry{Message: proto.Clone(loopback(img))})
			})
		}, "entry 1: a second loopback \"lo\""},
		{"loopback ifindex", func(t *testing.T, dir string) {
			editNetdev(t, dir, func(img *images.Image) { loopback(img).Ifindex = proto.Uint32(3) })
		}, "entry 0: loopback \"lo\" has ifindex 3; a new net namespace's is 1"},
		{"loopback name", func(t *testing.T, dir string) {
			editNetdev(t, dir, func(img *images.Image) { loopback(img).Name = proto.String("a/b") })
		}, "entry 0: loopback name \"a/b\" is not a device name"},
		{"no devices", func(t *testing.T, dir string) { os.Remove(filepath.Join(dir, netImage("netdev", netnsID))) },
			fmt.Sprintf("netdev-%d.img: the tree's own net namespace %d has no devices image", id, id)},
		{"no netns image", func(t *testing.T, dir string) { os.Remove(filepath.Join(dir, netImage("netns", netnsID))) },
			fmt.Sprintf("netns-%d.img: the tree's own net namespace %d has no image", id, id)},
		{"external", func(t *testing.T, dir string) {
			editNetns(t, dir, func(e *netdev.NetnsEntry) { e.ExtKey = proto.String("net0") })
		}, "entry 0: an external net namespace (ext_key \"net0\")"},
		{"ids of other namespaces", func(t *testing.T, dir string) {
			editNetns(t, dir, func(e *netdev.NetnsEntry) {
				e.Nsids = []*netdev.NetnsId{{TargetNsId: proto.Uint32(2), NetnsidValue: proto.Int32(0)}}
			})
		}, "entry 0: nsids[0]: id 0 of net namespace 2: ids of other net namespaces are not restored"},
		{"two unix sysctls", func(t *testing.T, dir string) {
			editNetns(t, dir, func(e *netdev.NetnsEntry) { e.UnixConf = append(e.UnixConf, e.UnixConf[0]) })
		}, "entry 0: unix_conf of 2 entries"},
		{"ip addr magic", func(t *testing.T, dir string) {
			os.WriteFile(filepath.Join(dir, netImage("ifaddr", netnsID)), []byte{1, 2, 3, 4}, 0o600)
		}, fmt.Sprintf("ifaddr-%d.img: header at offset 0: magic 0x4030201, want iproute2's 0x47361222", id)},
		{"empty route dump", func(t *testing.T, dir string) {
			os.WriteFile(filepath.Join(dir, netImage("route", netnsID)), nil, 0o600)
		},
			"route-10.img: header at offset 0: 0 bytes: no iproute2 magic"},
		{"truncated rule", func(t *testing.T, dir string) {
			path := filepath.Join(dir, netImage("rule", netnsID))
			b, _ := os.ReadFile(path)
			os.WriteFile(path, b[:len(b)-8], 0o600)
		}, "rule-10.img: entry 3 at offset"},
		{"a delete in the routes", func(t *testing.T, dir string) {
			editIPDump(t, dir, netImage("route", netnsID), images.IPDumpRouteMagic, func(i int, m []byte) bool {
				binary.NativeEndian.PutUint16(m[4:], unix.RTM_DELROUTE)
				return true
			})
		}, "route-10.img: entry 0 (offset 4): netlink message of type 25, want 24"},
		{"conntrack", func(t *testing.T, dir string) {
			msg := make([]byte, 20)
			binary.NativeEndian.PutUint32(msg, 20)
			os.WriteFile(filepath.Join(dir, netImage("netns-ct", netnsID)), msg, 0o600)
		}, "netns-ct-10.img: 1 conntrack entries: conntrack state is not restored"},
		{"NUL in nftables", func(t *testing.T, dir string) {
			os.WriteFile(filepath.Join(dir, netImage("nftables", netnsID)), []byte("table ip x {\x00}\n"), 0o600)
		}, "nftables-10.img: a NUL byte at offset 12"},
		{"no ip dumps", func(t *testing.T, dir string) {
			for _, k := range []string{"ifaddr", "route", "route6", "rule", "iptables", "ip6tables", "nftables"} {
				os.Remove(filepath.Join(dir, netImage(k, netnsID)))
			}
		}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := fixture.CopyDir(t, imgs)
			tc.edit(t, dir)
			if tc.err != "" {
				wantNetPlanError(t, dir, tc.err)
				return
			}
			p := netPlanDir(t, dir)
			if p.Net == nil || p.Net.HasRules || len(p.Net.Addrs) != 0 || len(p.Net.Nftables) != 0 {
				t.Errorf("net namespace %+v", p.Net)
			}
		})
	}

	// A task in a net namespace other than the root's: CRIU's tree
	// fixture with one child moved.
	dir := fixture.CopyImages(t, "tree")
	pid := planDir(t, dir).Tasks[1].PID
	editImage(t, dir, fmt.Sprintf("ids-%d.img", pid), func(img *images.Image) {
		img.Entries[0].Message.(*criu_core.TaskKobjIdsEntry).NetNsId = proto.Uint32(99)
	})
	wantPlanError(t, dir, fmt.Sprintf("task %d: ids-%d.img: net namespace 99, not the root's", pid, pid))
	// A net namespace image of a tree in the dumper's net namespace.
	dir = fixture.CopyImages(t, "counter")
	if err := os.WriteFile(filepath.Join(dir, "netns-2.img"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	wantPlanError(t, dir, "netns-2.img: namespaces other than the root's are not restored yet")
}

// netnsRun restores the netns images in dir, waits until the workload
// runs on, asks for its network check and returns what its logs added.
func netnsRun(t *testing.T, dir, wdir string) (string, *Restore, *recorder) {
	t.Helper()
	p := netPlanDir(t, dir)
	from, netFrom := logSize(wdir, "out-netns.log"), logSize(wdir, "out-net.log")
	rec := &recorder{}
	r, err := Start(context.Background(), p, Options{Observer: rec, TCPEstablished: true})
	if err != nil {
		t.Fatal(err)
	}
	abortAtCleanup(t, r, p)
	out := waitLog(t, wdir, "out-netns.log", from, lines(5))
	if strings.Contains(out, "CORRUPT") {
		return out, r, rec
	}
	if err := os.WriteFile(filepath.Join(wdir, "check-net"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	return out + waitLog(t, wdir, "out-net.log", netFrom, func(s string) bool { return strings.Contains(s, "net ok") }), r, rec
}

// hostNet is what of our own net namespace a restore must leave alone.
func hostNet(t *testing.T) string {
	t.Helper()
	var out []string
	for _, c := range [][]string{{"ip", "-o", "addr"}, {"ip", "route"}, {"ip", "rule"}, {"nft", "list", "ruleset"}} {
		b, err := exec.Command(c[0], c[1:]...).CombinedOutput()
		if err != nil {
			t.Fatalf("%s: %v\n%s", strings.Join(c, " "), err, b)
		}
		out = append(out, string(b))
	}
	for _, s := range []string{"net/unix/max_dgram_qlen", "net/ipv4/ping_group_range", "net/ipv4/conf/all/log_martians", "net/ipv4/conf/lo/route_localnet"} {
		b, err := os.ReadFile("/proc/sys/" + s)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, s+" "+string(b))
	}
	// counters of rules move with the host's traffic
	return strings.Join(out, "\n")
}

func stripCounters(s string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if i := strings.Index(l, "counter packets"); i >= 0 {
			l = l[:i]
		}
		out = append(out, l)
	}
	return strings.Join(out, "\n")
}

// TestRestoreNetNS restores crest dump's images of netns: the root is
// born in a new net namespace, which the engine fills in
// PREPARE_NAMESPACES (steps "net namespace", "netfilter" and "sockets"),
// and the workload, which checks its loopback, address, routes, rule,
// iptables rule, sysctls and connection every tick, and on demand a new
// connection, its unix queue's length and its IPv6 address, runs on. Our
// own net namespace is as it was.
func TestRestoreNetNS(t *testing.T) {
	imgs, wdir := netnsImages(t)
	host := stripCounters(hostNet(t))
	out, r, rec := netnsRun(t, imgs, wdir)
	if strings.Contains(out, "CORRUPT") || !strings.Contains(out, "net ok") {
		t.Fatalf("the restored netns wrote:\n%s", out)
	}
	self, _ := nsIno("/proc/self/ns/net")
	tree, err := nsIno(fmt.Sprintf("/proc/%d/ns/net", r.RootPID()))
	if err != nil || tree == self {
		t.Errorf("net namespace of the restored root %d: %d (%v), ours %d", r.RootPID(), tree, err, self)
	}
	steps := map[string]StepEvent{}
	for _, s := range rec.Steps {
		if s.Stage == StagePrepareNamespaces {
			steps[s.Step] = s
		}
	}
	for _, name := range []string{"net namespace", stepNetfilter, stepNetSockets} {
		s, ok := steps[name]
		if !ok || !s.Succeeded || s.PID != 1 || s.End < s.Begin {
			t.Errorf("step %q of PREPARE_NAMESPACES: %+v (%v)", name, s, ok)
		}
	}
	if now := stripCounters(hostNet(t)); now != host {
		t.Errorf("our net namespace changed:\n%s\nwas:\n%s", now, host)
	}
}

// TestRestoreNetNSCRIU restores CRIU 4.2's images of the namespace
// (images/testdata/criu-4.2-netns: the same workload, CRIU's network lock
// in its nftables) in place of crest's: the workload runs on, and the
// lock is gone from the namespace once the restore is over.
func TestRestoreNetNSCRIU(t *testing.T) {
	imgs, wdir := netnsImages(t)
	dir := fixture.CopyDir(t, imgs)
	criu := filepath.Join("..", "images", "testdata", "criu-4.2-netns")
	ents, err := os.ReadDir(criu)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if !strings.HasSuffix(e.Name(), ".img") {
			continue
		}
		b, err := os.ReadFile(filepath.Join(criu, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, e.Name()), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	// CRIU's lock method (iptables, through iptables on nftables here)
	editImage(t, dir, "inventory.img", func(img *images.Image) {
		img.Entries[0].Message.(*inventory.InventoryEntry).NetworkLockMethod = proto.Uint32(networkLockIptables)
	})
	p := netPlanDir(t, dir)
	if !p.Net.Lock.IPv4 || !p.Net.Lock.IPv6 {
		t.Fatalf("CRIU's lock not found in its rules: %+v", p.Net.Lock)
	}
	out, r, rec := netnsRun(t, dir, wdir)
	if strings.Contains(out, "CORRUPT") || !strings.Contains(out, "net ok") {
		t.Fatalf("the restored netns wrote:\n%s", out)
	}
	b, err := exec.Command("nsenter", "-t", fmt.Sprint(r.RootPID()), "-n", "nft", "list", "ruleset").CombinedOutput()
	if err != nil || bytes.Contains(b, []byte("CRIU")) || !bytes.Contains(b, []byte("udp dport 9977")) {
		t.Errorf("the namespace's rules after the restore (%v):\n%s", err, b)
	}
	var unlock *StepEvent
	for i, s := range rec.Steps {
		if s.Step == stepNetworkUnlock {
			unlock = &rec.Steps[i]
		}
	}
	if unlock == nil || !unlock.Succeeded || unlock.Stage != StageRestoreSigchld {
		t.Errorf("step %q: %+v", stepNetworkUnlock, unlock)
	}
}

// TestRestoreNetNSBroken breaks each property the restore gives the
// namespace, through the images, and checks that the workload sees it, or
// that the restore fails naming the image and entry.
func TestRestoreNetNSBroken(t *testing.T) {
	imgs, wdir := netnsImages(t)
	netns := func(edit func(e *netdev.NetnsEntry)) func(t *testing.T, dir string) {
		return func(t *testing.T, dir string) { editNetns(t, dir, edit) }
	}
	lo := func(edit func(d *netdev.NetDeviceEntry)) func(t *testing.T, dir string) {
		return func(t *testing.T, dir string) {
			editNetdev(t, dir, func(img *images.Image) { edit(loopback(img)) })
		}
	}
	drop := func(kind string, magic uint32, typ uint16, val []byte) func(t *testing.T, dir string) {
		return func(t *testing.T, dir string) {
			editIPDump(t, dir, netImage(kind, netnsID), magic, func(i int, m []byte) bool { return !hasAttr(m, typ, val) })
		}
	}
	ip4 := func(s string) []byte { return netipBytes(t, s) }
	setInt := func(e *sysctl.SysctlEntry, v int32) { e.Iarg = proto.Int32(v) }
	c4, c6 := images.NetConf4Names, images.NetConf6Names
	for _, tc := range []struct {
		name string
		edit func(t *testing.T, dir string)
		want string // what the workload writes, or the restore's error
	}{
		{"lo mtu", lo(func(d *netdev.NetDeviceEntry) {
			d.Mtu = proto.Uint32(60000)
			setInt(conf(d.Conf6, c6, "mtu"), 60000)
		}), "CORRUPT lo mtu 60000"},
		// routes through a loopback that is down are refused, as ip
		// route restore's are
		{"lo down", lo(func(d *netdev.NetDeviceEntry) { d.Flags = proto.Uint32(d.GetFlags() &^ unix.IFF_UP) }),
			"net namespace: route-10.img: entry 0 (offset 4, RTM_NEWROUTE family 2): network is down"},
		{"lo down, no routes", func(t *testing.T, dir string) {
			editNetdev(t, dir, func(img *images.Image) { loopback(img).Flags = proto.Uint32(loopback(img).GetFlags() &^ unix.IFF_UP) })
			for _, k := range []string{"route", "route6"} {
				editIPDump(t, dir, netImage(k, netnsID), images.IPDumpRouteMagic, func(int, []byte) bool { return false })
			}
		}, "CORRUPT lo not up"},
		{"unix max_dgram_qlen", netns(func(e *netdev.NetnsEntry) { setInt(e.UnixConf[0], 78) }), "CORRUPT /proc/sys/net/unix/max_dgram_qlen"},
		{"ping_group_range", netns(func(e *netdev.NetnsEntry) { e.Ipv4Sysctl[0].Sarg = proto.String("100\t201\n") }), "CORRUPT /proc/sys/net/ipv4/ping_group_range"},
		{"all log_martians", netns(func(e *netdev.NetnsEntry) { setInt(conf(e.AllConf4, c4, "log_martians"), 0) }), "CORRUPT /proc/sys/net/ipv4/conf/all/log_martians"},
		{"default arp_ignore", netns(func(e *netdev.NetnsEntry) { setInt(conf(e.DefConf4, c4, "arp_ignore"), 1) }), "CORRUPT /proc/sys/net/ipv4/conf/default/arp_ignore"},
		{"default hop_limit", netns(func(e *netdev.NetnsEntry) { setInt(conf(e.DefConf6, c6, "hop_limit"), 45) }), "CORRUPT /proc/sys/net/ipv6/conf/default/hop_limit"},
		{"lo route_localnet", lo(func(d *netdev.NetDeviceEntry) { setInt(conf(d.Conf4, c4, "route_localnet"), 0) }), "CORRUPT /proc/sys/net/ipv4/conf/lo/route_localnet"},
		{"lo hop_limit", lo(func(d *netdev.NetDeviceEntry) { setInt(conf(d.Conf6, c6, "hop_limit"), 34) }), "CORRUPT /proc/sys/net/ipv6/conf/lo/hop_limit"},
		{"a sysctl the kernel refuses", netns(func(e *netdev.NetnsEntry) { setInt(conf(e.AllConf6, c6, "hop_limit"), 300) }),
			"net namespace: netns-10.img entry 0 all_conf6[19]: write \"300\" to /proc/sys/net/ipv6/conf/all/hop_limit: invalid argument"},
		{"route", drop("route", images.IPDumpRouteMagic, unix.RTA_DST, ip4("10.54.0.0")), "CORRUPT no route to 10.54.0.7"},
		{"route6", drop("route6", images.IPDumpRouteMagic, unix.RTA_DST, netipBytes(t, "fd54::")), "CORRUPT no route to fd54::7"},
		{"rule", drop("rule", images.IPDumpRuleMagic, unix.FRA_DST, ip4("10.55.0.0")), "CORRUPT 10.55.0.7 not prohibited"},
		{"address", func(t *testing.T, dir string) {
			editIPDump(t, dir, netImage("ifaddr", netnsID), images.IPDumpAddrMagic, func(i int, m []byte) bool {
				a := nlattr.Parse(m[unix.SizeofNlMsghdr+unix.SizeofIfAddrmsg:])
				return !bytes.Equal(a[unix.IFA_LOCAL], ip4("10.53.0.1"))
			})
		}, "10.53.0.1:9979"},
		{"an address on no device", func(t *testing.T, dir string) {
			editIPDump(t, dir, netImage("ifaddr", netnsID), images.IPDumpAddrMagic, func(i int, m []byte) bool {
				if i == 1 {
					binary.NativeEndian.PutUint32(m[unix.SizeofNlMsghdr+4:], 7) // ifa_index
				}
				return true
			})
		}, "net namespace: ifaddr-10.img: entry 1 (offset 80, RTM_NEWADDR family 2): no such device"},
		{"iptables rule", func(t *testing.T, dir string) {
			path := filepath.Join(dir, netImage("nftables", netnsID))
			b, _ := os.ReadFile(path)
			var keep []string
			for _, l := range strings.Split(string(b), "\n") {
				if !strings.Contains(l, "dport 9977") {
					keep = append(keep, l)
				}
			}
			os.WriteFile(path, []byte(strings.Join(keep, "\n")), 0o600)
		}, "CORRUPT a datagram to 9977 passed the iptables rule"},
		{"nftables garbage", func(t *testing.T, dir string) {
			os.WriteFile(filepath.Join(dir, netImage("nftables", netnsID)), []byte("table ip filter {\n\tchain INPUT {\n\t\tno such thing\n"), 0o600)
		}, "netfilter: nftables-10.img: "},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := fixture.CopyDir(t, imgs)
			tc.edit(t, dir)
			if !strings.HasPrefix(tc.want, "CORRUPT") {
				_, err := Start(context.Background(), netPlanDir(t, dir), Options{TCPEstablished: true})
				if err == nil || !strings.Contains(err.Error(), tc.want) {
					t.Errorf("error %v, want one with %q", err, tc.want)
				}
				return
			}
			out, _, _ := netnsRun(t, dir, wdir)
			if !strings.Contains(out, tc.want) {
				t.Errorf("the restored netns wrote:\n%s\nwant %q", out, tc.want)
			}
		})
	}
}

// netipBytes is the address s in network order.
func netipBytes(t *testing.T, s string) []byte {
	t.Helper()
	a, err := netip.ParseAddr(s)
	if err != nil {
		t.Fatal(err)
	}
	return a.AsSlice()
}

// netRootArrival notes the net namespace of the restored root when it
// arrives at ROOT_TASK: a failing restore returns no Restore to ask.
type netRootArrival struct {
	Timeline
	net uint64
}

func (r *netRootArrival) TaskArrived(e ArrivalEvent) {
	r.Timeline.TaskArrived(e)
	if e.Stage == StageRootTask && e.HostPID != 0 {
		r.net, _ = nsIno(fmt.Sprintf("/proc/%d/ns/net", e.HostPID))
	}
}

// ourFDsIn returns our fds that are of net namespace ino: sockets made in
// it, or the namespace itself.
func ourFDsIn(ino uint64) []string {
	var out []string
	ents, _ := os.ReadDir("/proc/self/fd")
	for _, e := range ents {
		var fd int
		if _, err := fmt.Sscan(e.Name(), &fd); err != nil {
			continue
		}
		link, _ := os.Readlink("/proc/self/fd/" + e.Name())
		if link == fmt.Sprintf("net:[%d]", ino) {
			out = append(out, e.Name()+" "+link)
			continue
		}
		if !strings.HasPrefix(link, "socket:") {
			continue
		}
		ns, err := unix.IoctlRetInt(fd, unix.SIOCGSKNS)
		if err != nil {
			continue
		}
		var st unix.Stat_t
		if unix.Fstat(ns, &st) == nil && st.Ino == ino {
			out = append(out, e.Name()+" "+link)
		}
		unix.Close(ns)
	}
	return out
}

// TestRestoreNetNSRollback: a restore that fails once the namespace is
// made and partly filled (nftables it can not take), or is aborted once
// the sockets are made in it, leaves nothing behind: no task or thread in
// the tree's namespace, no fd of ours in it (the namespace goes with its
// last holder), and our own namespace as it was.
func TestRestoreNetNSRollback(t *testing.T) {
	imgs, _ := netnsImages(t)
	host := stripCounters(hostNet(t))
	gone := func(t *testing.T, ino uint64) {
		t.Helper()
		if ino == 0 {
			t.Fatal("no net namespace of the root seen")
		}
		if h := holders("net", ino); len(h) > 0 {
			t.Errorf("the tree's net namespace is still held by %q", h)
		}
		if fds := ourFDsIn(ino); len(fds) > 0 {
			t.Errorf("our fds in the tree's net namespace: %q", fds)
		}
		if now := stripCounters(hostNet(t)); now != host {
			t.Errorf("our net namespace changed:\n%s\nwas:\n%s", now, host)
		}
	}
	t.Run("fails", func(t *testing.T) {
		dir := fixture.CopyDir(t, imgs)
		os.WriteFile(filepath.Join(dir, netImage("nftables", netnsID)), []byte("no such command\n"), 0o600)
		obs := &netRootArrival{}
		_, err := Start(context.Background(), netPlanDir(t, dir), Options{Observer: obs, TCPEstablished: true})
		var se *StageError
		if !errors.As(err, &se) || se.Stage != StagePrepareNamespaces || se.Step != stepNetfilter ||
			!strings.Contains(err.Error(), "nftables-10.img: ") || !strings.Contains(err.Error(), "nft -f -") {
			t.Fatalf("error %v, want a StageError of step %q naming nftables-10.img and nft", err, stepNetfilter)
		}
		gone(t, obs.net)
	})
	t.Run("aborted", func(t *testing.T) {
		r, err := Start(context.Background(), netPlanDir(t, imgs), Options{Until: StageForking, TCPEstablished: true})
		if err != nil {
			t.Fatal(err)
		}
		ino, _ := nsIno(fmt.Sprintf("/proc/%d/ns/net", r.RootPID()))
		if fds := ourFDsIn(ino); len(fds) == 0 {
			t.Error("the engine holds no socket of the tree's namespace before the abort")
		}
		if err := r.Abort(); err != nil {
			t.Fatal(err)
		}
		gone(t, ino)
	})
}

// TestNetNSChecks shows the two checks that keep the restore out of our
// own net namespace firing: joining a namespace that is ours, and a tool
// that starts in another namespace than the tree's.
func TestNetNSChecks(t *testing.T) {
	needRoot(t)
	sleeper := func(args ...string) int {
		cmd := exec.Command(args[0], args[1:]...)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
		return cmd.Process.Pid
	}
	join := func(pid int) error {
		done := make(chan error, 1)
		go func() {
			// A locked goroutine that ends takes its thread along, but
			// for the main thread, which the runtime keeps: then
			// /proc/self/ns/net (what crest dump takes for its own) would
			// stay the other namespace. So it goes back.
			runtime.LockOSThread()
			back, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
			if err != nil {
				runtime.UnlockOSThread()
				done <- err
				return
			}
			defer unix.Close(back)
			pidfd, err := unix.PidfdOpen(pid, 0)
			if err != nil {
				runtime.UnlockOSThread()
				done <- err
				return
			}
			defer unix.Close(pidfd)
			err = joinTreeNamespaces(pidfd, pid, unix.CLONE_NEWNET)
			if berr := unix.Setns(back, unix.CLONE_NEWNET); berr != nil {
				done <- errors.Join(err, berr) // stays locked: the thread ends
				return
			}
			runtime.UnlockOSThread()
			done <- err
		}()
		return <-done
	}
	if err := join(sleeper("sleep", "60")); err == nil || !strings.Contains(err.Error(), "net namespace: joined") ||
		!strings.Contains(err.Error(), "not the tree's own") {
		t.Errorf("joining a process of our net namespace: %v, want refused", err)
	}
	other := sleeper("unshare", "-n", "sleep", "60")
	self, _ := nsIno("/proc/self/ns/net")
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(time.Millisecond) {
		if ino, _ := nsIno(fmt.Sprintf("/proc/%d/ns/net", other)); ino != self && ino != 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("unshare -n made no net namespace in 5s")
		}
	}
	if err := join(other); err != nil {
		t.Errorf("joining a process of a new net namespace: %v", err)
	}

	r := &Restore{opts: Options{}}
	_, err := r.runNetTool(self+1, []byte("list ruleset\n"), "nft", "-f", "-")
	if err == nil || !strings.Contains(err.Error(), "killed before its input") {
		t.Errorf("a tool in our namespace where the tree's is wanted: %v, want it killed", err)
	}
	if _, err := r.runNetTool(self, []byte("list tables\n"), "nft", "-f", "-"); err != nil {
		t.Errorf("a tool where it is wanted: %v", err)
	}
}

// TestNftUnlockScript: CRIU's lock chains, as nft -a lists them after a
// restore of CRIU's nftables image, and what deletes them; other tables'
// chains named CRIU are left alone.
func TestNftUnlockScript(t *testing.T) {
	ruleset := `table ip filter { # handle 1
	chain INPUT { # handle 1
		type filter hook input priority filter; policy accept;
		counter packets 0 bytes 0 jump CRIU # handle 4
		udp dport 9977 counter packets 0 bytes 0 drop # handle 5
	}

	chain CRIU { # handle 2
		meta mark 0x0000c114 counter packets 0 bytes 0 accept # handle 6
		counter packets 0 bytes 0 drop # handle 7
	}

	chain OUTPUT { # handle 3
		type filter hook output priority filter; policy accept;
		counter packets 0 bytes 0 jump CRIU # handle 8
	}
}
table ip6 filter { # handle 2
	chain CRIU { # handle 1
		counter packets 0 bytes 0 drop # handle 4
	}

	chain INPUT { # handle 2
		counter packets 0 bytes 0 jump CRIU # handle 5
	}
}
table inet other { # handle 3
	chain CRIU { # handle 1
	}
	chain x { # handle 2
		jump CRIU # handle 3
	}
}
`
	want := "delete rule ip filter INPUT handle 4\ndelete rule ip filter OUTPUT handle 8\ndelete rule ip6 filter INPUT handle 5\n" +
		"delete chain ip filter CRIU\ndelete chain ip6 filter CRIU\n"
	if got := nftUnlockScript([]byte(ruleset)); got != want {
		t.Errorf("got:\n%s\nwant:\n%s", got, want)
	}
	if got := nftUnlockScript([]byte("table ip filter { # handle 1\n}\n")); got != "" {
		t.Errorf("no lock: %q", got)
	}
}
