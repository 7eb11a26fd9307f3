package dump_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	criu_core "github.com/checkpoint-restore/go-criu/v8/crit/images/criu-core"
	fdinfo "github.com/checkpoint-restore/go-criu/v8/crit/images/fdinfo"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/inventory"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/netdev"
	"golang.org/x/sys/unix"

	"github.com/crest-restore/crest/dump"
	"github.com/crest-restore/crest/images"
	"github.com/crest-restore/crest/test/check"
	"github.com/crest-restore/crest/test/workloads"
)

// netnsState is what the netns workload's net namespace holds, read from
// outside (through nsenter): the loopback, addresses, routes, rules,
// rules of nftables (their counters left out: they move) and the sysctls
// it set.
func netnsState(t *testing.T, tree map[int]*check.Task) []string {
	t.Helper()
	script := "ip -o link show lo; ip -o addr | sed 's/ *valid_lft.*//'; ip route; ip -6 route; ip rule; " +
		"nft list ruleset | sed 's/counter packets [0-9]* bytes [0-9]*/counter/'; " +
		"cat /proc/sys/net/unix/max_dgram_qlen /proc/sys/net/ipv4/ping_group_range /proc/sys/net/ipv4/conf/all/log_martians " +
		"/proc/sys/net/ipv4/conf/default/arp_ignore /proc/sys/net/ipv4/conf/lo/route_localnet " +
		"/proc/sys/net/ipv6/conf/default/hop_limit /proc/sys/net/ipv6/conf/lo/hop_limit"
	out, err := exec.Command("nsenter", "-t", strconv.Itoa(tree[1].Host), "-n", "sh", "-c", script).CombinedOutput()
	if err != nil {
		t.Fatalf("nsenter %d: %v\n%s", tree[1].Host, err, out)
	}
	return strings.Split(strings.TrimSpace(string(out)), "\n")
}

func netnsRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("a net namespace of its own needs root (and so does ptrace)")
	}
}

// ipDump returns the messages of an ip save image of dir.
func ipDump(t *testing.T, dir, file string, magic uint32) []images.NetlinkMessage {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, file))
	if err != nil {
		t.Fatal(err)
	}
	msgs, err := images.ParseIPDump(file, b, magic)
	if err != nil {
		t.Fatal(err)
	}
	return msgs
}

// TestDumpNetNS dumps the netns workload, in a net namespace of its own,
// and checks the images as CRIU 4.2 writes them for it: ids and inventory
// (crest's namespaces 1-8, the tree's pid namespace 9, its net namespace
// 10), the sysctls and the loopback, the ip save dumps, the rules, and
// the sockets named in net namespace 10.
func TestDumpNetNS(t *testing.T) {
	netnsRoot(t)
	p := workloads.Start(t, "netns")
	waitLines(t, p, "out-netns.log", 3)
	dir := filepath.Join(t.TempDir(), "images")
	if _, err := dump.Dump(context.Background(), dump.Options{Pid: p.Pid, Dir: dir, TCPEstablished: true}); err != nil {
		t.Fatal(err)
	}
	read := func(name string) *images.Image {
		img, err := images.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		return img
	}
	inv := read("inventory.img").Entries[0].Message.(*inventory.InventoryEntry)
	ids := read("ids-1.img").Entries[0].Message.(*criu_core.TaskKobjIdsEntry)
	if inv.GetRootIds().GetNetNsId() != 2 || ids.GetNetNsId() != 10 || ids.GetPidNsId() != 9 || inv.GetNetworkLockMethod() != 2 {
		t.Errorf("root_ids net %d, the root's net %d and pid %d, lock method %d; want 2, 10, 9, SKIP (2)",
			inv.GetRootIds().GetNetNsId(), ids.GetNetNsId(), ids.GetPidNsId(), inv.GetNetworkLockMethod())
	}
	ns := read("netns-10.img").Entries[0].Message.(*netdev.NetnsEntry)
	at := func(names []string, name string) int { return slices.Index(names, name) }
	if len(ns.DefConf4) != 30 || len(ns.AllConf4) != 30 || len(ns.DefConf6) != 42 || len(ns.AllConf6) != 42 ||
		ns.UnixConf[0].GetIarg() != 77 || ns.Ipv4Sysctl[0].GetSarg() != "100\t200\n" ||
		ns.AllConf4[at(images.NetConf4Names, "log_martians")].GetIarg() != 1 ||
		ns.DefConf4[at(images.NetConf4Names, "arp_ignore")].GetIarg() != 2 ||
		ns.DefConf6[at(images.NetConf6Names, "hop_limit")].GetIarg() != 44 ||
		ns.DefConf6[at(images.NetConf6Names, "stable_secret")].Sarg != nil || ns.Nsids != nil {
		t.Errorf("netns-10.img: %v", ns)
	}
	devs := read("netdev-10.img").Entries
	lo := devs[0].Message.(*netdev.NetDeviceEntry)
	if len(devs) != 1 || lo.GetType() != netdev.NdType_LOOPBACK || lo.GetName() != "lo" || lo.GetIfindex() != 1 ||
		lo.GetMtu() != 61000 || lo.GetFlags() != unix.IFF_UP|unix.IFF_LOOPBACK|unix.IFF_RUNNING|unix.IFF_LOWER_UP ||
		lo.GetPeerIfindex() != 1 || lo.GetPeerNsid() != 10 || lo.Address != nil ||
		lo.Conf4[at(images.NetConf4Names, "route_localnet")].GetIarg() != 1 ||
		lo.Conf6[at(images.NetConf6Names, "hop_limit")].GetIarg() != 33 ||
		lo.Conf6[at(images.NetConf6Names, "mtu")].GetIarg() != 61000 {
		t.Errorf("netdev-10.img: %v", devs)
	}
	addrs := ipDump(t, dir, "ifaddr-10.img", images.IPDumpAddrMagic)
	var got []string
	for _, m := range addrs {
		pl := m.Payload()
		n := 4
		if pl[0] == unix.AF_INET6 {
			n = 16
		}
		// IFA_ADDRESS, the first attribute after the ifaddrmsg
		got = append(got, fmt.Sprintf("%x/%d", pl[unix.SizeofIfAddrmsg+4:unix.SizeofIfAddrmsg+4+n], pl[1]))
	}
	if want := []string{"7f000001/8", "0a350001/24", "fd530000000000000000000000000001/64", "00000000000000000000000000000001/128"}; !slices.Equal(got, want) {
		t.Errorf("ifaddr-10.img: %v, want %v", got, want)
	}
	if r := ipDump(t, dir, "route-10.img", images.IPDumpRouteMagic); len(r) != 1 || !bytes.Contains(r[0].Raw, []byte{10, 54, 0, 0}) {
		t.Errorf("route-10.img: %v", r)
	}
	if r := ipDump(t, dir, "route6-10.img", images.IPDumpRouteMagic); len(r) != 2 {
		t.Errorf("route6-10.img: %d routes, want fd53::/64 and fd54::/64", len(r))
	}
	rules := ipDump(t, dir, "rule-10.img", images.IPDumpRuleMagic)
	// local, to 10.55.0.0/16 prohibit (FR_ACT_PROHIBIT 8), main, default
	if len(rules) != 4 || rules[1].Payload()[7] != 8 || rules[1].Payload()[1] != 16 {
		t.Errorf("rule-10.img: %d rules, the second's action %d to /%d; want 4, prohibit (8) to /16", len(rules), rules[1].Payload()[7], rules[1].Payload()[1])
	}
	nft, err := os.ReadFile(filepath.Join(dir, "nftables-10.img"))
	if err != nil || !bytes.Contains(nft, []byte("udp dport 9977 counter packets")) || bytes.Contains(nft, []byte("CRIU")) {
		t.Errorf("nftables-10.img (%v):\n%s", err, nft)
	}
	// the sockets are the namespace's: id 10
	for _, e := range read("files.img").Entries {
		f := e.Message.(*fdinfo.FileEntry)
		if s := f.GetIsk(); s != nil && s.NsId != nil && s.GetNsId() != 10 {
			t.Errorf("inet socket %d in net namespace %d, want 10", f.GetId(), s.GetNsId())
		}
		if s := f.GetUsk(); s != nil && s.GetNsId() != 10 {
			t.Errorf("unix socket %d in net namespace %d, want 10", f.GetId(), s.GetNsId())
		}
	}
}

// TestDumpNetNSRefused: a device other than the loopback (a veth pair,
// both ends in the tree's namespace), conntrack entries, and a task in a
// net namespace of its own under the root are refused, naming what, and
// the tree runs on.
func TestDumpNetNSRefused(t *testing.T) {
	netnsRoot(t)
	nsexec := func(t *testing.T, pid int, args ...string) {
		t.Helper()
		if out, err := exec.Command("nsenter", append([]string{"-t", strconv.Itoa(pid), "-n"}, args...)...).CombinedOutput(); err != nil {
			t.Fatalf("%v: %v\n%s", args, err, out)
		}
	}
	t.Run("veth", func(t *testing.T) {
		p := workloads.Start(t, "netns")
		waitLines(t, p, "out-netns.log", 3)
		nsexec(t, p.Pid, "ip", "link", "add", "crest0", "type", "veth", "peer", "name", "crest1")
		parent := t.TempDir()
		_, err := dump.Dump(context.Background(), dump.Options{Pid: p.Pid, Dir: filepath.Join(parent, "images"), TCPEstablished: true})
		refusedCleanly(t, err, p, parent, "out-netns.log", "net device", "device \"crest", "of kind veth", "is there too: only veths with their peer outside the tree are dumped")
	})
	t.Run("conntrack", func(t *testing.T) {
		p := workloads.Start(t, "netns")
		waitLines(t, p, "out-netns.log", 3)
		// a rule that needs conntrack: the datagrams of every tick make
		// entries
		nsexec(t, p.Pid, "nft", "add table ip crest; add chain ip crest in { type filter hook input priority 10; }; add rule ip crest in ct state new accept")
		n := len(waitLines(t, p, "out-netns.log", 1))
		waitLines(t, p, "out-netns.log", n+3)
		parent := t.TempDir()
		_, err := dump.Dump(context.Background(), dump.Options{Pid: p.Pid, Dir: filepath.Join(parent, "images"), TCPEstablished: true})
		refusedCleanly(t, err, p, parent, "out-netns.log", "conntrack entries in the tree's net namespace", "netns-ct-10.img")
	})
	t.Run("a task in another", func(t *testing.T) {
		dir := t.TempDir()
		launch := workloads.Build(t, "launch")
		out, err := exec.Command(launch, "-N", dir, "/bin/sh", "-c", "unshare -n sleep 1000 & while :; do echo x >> out.log; sleep 0.01; done").Output()
		if err != nil {
			t.Fatal(err)
		}
		pid, _ := strconv.Atoi(strings.TrimSpace(string(out)))
		p := workloads.Adopt(pid, dir)
		t.Cleanup(func() { p.Kill(t) })
		waitLines(t, p, "out.log", 3)
		// unshare -n has made its namespace once it runs sleep
		deadline := time.Now().Add(5 * time.Second)
		for {
			b, _ := exec.Command("pgrep", "-P", strconv.Itoa(pid), "sleep").Output()
			if len(b) > 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("no sleep under the shell after 5s")
			}
			time.Sleep(10 * time.Millisecond)
		}
		parent := t.TempDir()
		_, err = dump.Dump(context.Background(), dump.Options{Pid: p.Pid, Dir: filepath.Join(parent, "images")})
		refusedCleanly(t, err, p, parent, "out.log", "net namespace", "a task in a net namespace other than the root's is not supported")
	})
}
