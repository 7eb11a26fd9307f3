package restore

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/checkpoint-restore/go-criu/v8/crit/images/netdev"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	"github.com/crest-restore/crest/dump"
	"github.com/crest-restore/crest/images"
	"github.com/crest-restore/crest/test/cli"
	"github.com/crest-restore/crest/test/fixture"
	"github.com/crest-restore/crest/test/workloads"
)

// vethNet is a veth made from outside a netveth workload
// (test/workloads/src/netveth.c): In moved into its net namespace with
// Subnet.2/24, MTU and MAC, a route to 10.59.0.0/16 through Subnet.1 and
// rp_filter 2 (off its default); Out in ours with Subnet.1/24, or on
// Bridge, which has it. Each test has its own names and subnet: the
// dump package's tests make veths at the same time (10.57.7x).
type vethNet struct {
	In, Out, Bridge, Subnet, MAC string
	MTU                          int
}

func (v vethNet) peer() string { return v.Subnet + ".1" }

// vethCmd runs a command of the test's set-up, failing the test on error.
func vethCmd(t *testing.T, args ...string) {
	t.Helper()
	if b, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, b)
	}
}

// hostLink says whether our net namespace has a device named name.
func hostLink(name string) bool {
	_, err := net.InterfaceByName(name)
	return err == nil
}

// waitNoLink waits until our namespace has no device name (a pair goes
// with the last namespace holding one end, asynchronously).
func waitNoLink(t *testing.T, name string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for hostLink(name) {
		if time.Now().After(deadline) {
			t.Fatalf("device %s still in our net namespace after 10s", name)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// startVeth starts netveth, makes v for it, answers its pings from
// Subnet.1:9981 (until the test ends) and waits for three answers. What
// it made goes when the test ends.
func startVeth(t *testing.T, v vethNet) *workloads.Process {
	t.Helper()
	needRoot(t)
	cli.Subreaper(t)
	for _, n := range []string{v.Out, v.Bridge} {
		if n != "" && hostLink(n) {
			t.Fatalf("device %s is in our net namespace already", n)
		}
	}
	p := workloads.Start(t, "netveth")
	t.Cleanup(func() {
		for _, n := range []string{v.Out, v.Bridge} {
			if n != "" && hostLink(n) {
				exec.Command("ip", "link", "del", n).Run()
			}
		}
	})
	addr := v.peer() + "/24"
	if v.Bridge != "" {
		vethCmd(t, "ip", "link", "add", v.Bridge, "type", "bridge")
		vethCmd(t, "ip", "addr", "add", addr, "dev", v.Bridge)
		vethCmd(t, "ip", "link", "set", v.Bridge, "up")
	}
	vethCmd(t, "ip", "link", "add", v.Out, "type", "veth", "peer", "name", v.In, "netns", fmt.Sprintf("/proc/%d/ns/net", p.Pid))
	if v.Bridge != "" {
		vethCmd(t, "ip", "link", "set", v.Out, "master", v.Bridge, "up")
	} else {
		vethCmd(t, "ip", "addr", "add", addr, "dev", v.Out)
		vethCmd(t, "ip", "link", "set", v.Out, "up")
	}
	in := []string{"nsenter", fmt.Sprintf("--net=/proc/%d/ns/net", p.Pid)}
	vethCmd(t, append(in, "ip", "link", "set", v.In, "mtu", fmt.Sprint(v.MTU), "address", v.MAC)...)
	vethCmd(t, append(in, "ip", "addr", "add", v.Subnet+".2/24", "dev", v.In)...)
	vethCmd(t, append(in, "ip", "link", "set", v.In, "up")...)
	vethCmd(t, append(in, "ip", "link", "set", "lo", "up")...)
	vethCmd(t, append(in, "ip", "route", "add", "10.59.0.0/16", "via", v.peer())...)
	vethCmd(t, append(in, "sysctl", "-qw", "net.ipv4.conf."+v.In+".rp_filter=2")...)
	echoPings(t, v.peer())
	if err := os.WriteFile(filepath.Join(p.Dir, "veth"), []byte(v.In+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	waitLogLines(t, p, "out-pong.log", 3)
	return p
}

// echoPings answers "ping N" with "pong N" on addr:9981 until the test
// ends. The socket stays bound when the address goes with its device,
// and hears again once the address is back.
func echoPings(t *testing.T, addr string) {
	t.Helper()
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.ParseIP(addr), Port: 9981})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		buf := make([]byte, 100)
		for {
			n, from, err := c.ReadFromUDP(buf)
			if err != nil {
				return
			}
			if s, ok := bytes.CutPrefix(buf[:n], []byte("ping ")); ok {
				c.WriteToUDP(append([]byte("pong "), s...), from)
			}
		}
	}()
	t.Cleanup(func() { c.Close(); wg.Wait() })
}

// ipJSON runs ip -j ARGS in the net namespace of pid (ours for 0).
func ipJSON(t *testing.T, pid int, args ...string) []map[string]any {
	t.Helper()
	cmd := append([]string{"ip", "-j"}, args...)
	if pid != 0 {
		cmd = append([]string{"nsenter", fmt.Sprintf("--net=/proc/%d/ns/net", pid)}, cmd...)
	}
	b, err := exec.Command(cmd[0], cmd[1:]...).Output()
	if err != nil {
		t.Fatalf("%s: %v", strings.Join(cmd, " "), err)
	}
	var out []map[string]any
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatalf("%s: %v: %s", strings.Join(cmd, " "), err, b)
	}
	return out
}

// insideEnd is what of the inside end a restore must give back: its
// ifindex, name, mtu, mac, flags, IPv4 addresses, routes and rp_filter.
func insideEnd(t *testing.T, pid int, in string) string {
	t.Helper()
	l := ipJSON(t, pid, "addr", "show", "dev", in)
	if len(l) != 1 {
		t.Fatalf("ip addr show dev %s: %v", in, l)
	}
	d := l[0]
	var addrs []string
	for _, a := range d["addr_info"].([]any) {
		a := a.(map[string]any)
		if a["family"] == "inet" {
			addrs = append(addrs, fmt.Sprintf("%v/%v scope %v", a["local"], a["prefixlen"], a["scope"]))
		}
	}
	var routes []string
	for _, r := range ipJSON(t, pid, "route", "show", "dev", in) {
		routes = append(routes, fmt.Sprintf("%v via %v proto %v", r["dst"], r["gateway"], r["protocol"]))
	}
	slices.Sort(routes)
	b, err := exec.Command("nsenter", fmt.Sprintf("--net=/proc/%d/ns/net", pid), "cat", "/proc/sys/net/ipv4/conf/"+in+"/rp_filter").Output()
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("ifindex %v name %v mtu %v mac %v flags %v addrs %v routes %v rp_filter %s",
		d["ifindex"], d["ifname"], d["mtu"], d["address"], d["flags"], addrs, routes, bytes.TrimSpace(b))
}

// vethImages starts netveth with v, notes its inside end and dumps it
// (which kills it, and so the pair); it returns the images, the
// workload's directory and the inside end as it was.
func vethImages(t *testing.T, v vethNet) (imgs, wdir, was string) {
	t.Helper()
	p := startVeth(t, v)
	was = insideEnd(t, p.Pid, v.In)
	imgs = dumpReaped(t, p, dump.Options{})
	waitNoLink(t, v.Out)
	return imgs, p.Dir, was
}

// restoreVeth restores dir with opts and returns the restore; it is
// aborted when the test ends.
func restoreVeth(t *testing.T, dir string, opts Options) *Restore {
	t.Helper()
	p := planDir(t, dir)
	r, err := Start(context.Background(), p, opts)
	if err != nil {
		t.Fatal(err)
	}
	abortAtCleanup(t, r, p)
	return r
}

// talksAgain waits for pongs past from and ticks without CORRUPT.
func talksAgain(t *testing.T, wdir string, pongFrom, tickFrom int) {
	t.Helper()
	if out := waitLog(t, wdir, "out-netveth.log", tickFrom, lines(20)); strings.Contains(out, "CORRUPT") {
		t.Fatalf("the restored netveth wrote:\n%s", out)
	}
	waitLog(t, wdir, "out-pong.log", pongFrom, lines(3))
}

func TestParseVethPair(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want VethPair
		err  string
	}{
		{"eth0=veth1", VethPair{In: "eth0", Out: "veth1"}, ""},
		{"eth0=veth1@br0", VethPair{In: "eth0", Out: "veth1", Bridge: "br0"}, ""},
		{"eth0", VethPair{}, "want IN=OUT[@BRIDGE]"},
		{"=veth1", VethPair{}, `IN "" is not a device name`},
		{"eth0=", VethPair{}, `OUT "" is not a device name`},
		{"eth0=veth1@", VethPair{}, `BRIDGE "" is not a device name`},
		{"eth0=a/b", VethPair{}, `OUT "a/b" is not a device name`},
		{"eth0=0123456789abcdef", VethPair{}, `OUT "0123456789abcdef" is not a device name`},
	} {
		got, err := ParseVethPair(tc.in)
		if tc.err == "" && (err != nil || got != tc.want) {
			t.Errorf("%q: %+v, %v; want %+v", tc.in, got, err, tc.want)
		}
		if tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)) {
			t.Errorf("%q: error %v, want one saying %q", tc.in, err, tc.err)
		}
		if err == nil && got.String() != tc.in {
			t.Errorf("%q: String() %q", tc.in, got.String())
		}
	}
}

// TestPlanVeth: a veth whose peer was outside the tree (crest dump's
// images of netveth) is planned with the sysctls that differ from the
// namespace's defaults and its mtu; what is not restored is refused,
// naming the image file, entry and device.
func TestPlanVeth(t *testing.T) {
	v := vethNet{In: "ceth0", Out: "crv61", Subnet: "10.57.61", MAC: "02:00:00:57:61:02", MTU: 1400}
	imgs, _, _ := vethImages(t, v)
	p := planDir(t, imgs)
	if len(p.Net.Veths) != 1 {
		t.Fatalf("veths %v", p.Net.Veths)
	}
	vd := p.Net.Veths[0]
	d := vd.Device
	if d.GetName() != "ceth0" || d.GetIfindex() != 2 || d.GetMtu() != 1400 || d.GetFlags()&unix.IFF_UP == 0 ||
		!bytes.Equal(d.GetAddress(), []byte{2, 0, 0, 0x57, 0x61, 2}) || d.PeerNsid != nil || d.GetPeerIfindex() == 0 {
		t.Errorf("veth %v", d)
	}
	want := fmt.Sprintf("netdev-%d.img entry 1", netnsID)
	if vd.From != want {
		t.Errorf("from %q, want %q", vd.From, want)
	}
	writes := map[string]string{}
	for _, s := range vd.Sysctls {
		writes[s.Path] = s.Value
	}
	if writes["net/ipv4/conf/ceth0/rp_filter"] != "2\n" || writes["net/ipv6/conf/ceth0/mtu"] != "1400\n" {
		t.Errorf("sysctls %v: want rp_filter 2 and the ipv6 mtu 1400", writes)
	}
	if _, ok := writes["net/ipv4/conf/ceth0/forwarding"]; ok {
		t.Errorf("forwarding written, as the namespace's default has it: %v", writes)
	}

	veth := func(edit func(d *netdev.NetDeviceEntry)) func(img *images.Image) {
		return func(img *images.Image) { edit(img.Entries[1].Message.(*netdev.NetDeviceEntry)) }
	}
	for _, tc := range []struct {
		name string
		edit func(img *images.Image)
		err  string
	}{
		{"peer inside", veth(func(d *netdev.NetDeviceEntry) { d.PeerNsid = proto.Uint32(netnsID) }),
			`entry 1: veth "ceth0": its peer (ifindex 6) is in the same net namespace: veths with both ends in the tree are not restored`},
		{"peer in another namespace", veth(func(d *netdev.NetDeviceEntry) { d.PeerNsid = proto.Uint32(12) }),
			`entry 1: veth "ceth0": its peer (ifindex 6) is in net namespace 12 of the images`},
		{"master", veth(func(d *netdev.NetDeviceEntry) { d.Master = proto.Uint32(3) }), `entry 1: veth "ceth0": enslaved to device 3`},
		{"ifindex 1", veth(func(d *netdev.NetDeviceEntry) { d.Ifindex = proto.Uint32(1) }), `entry 1: veth "ceth0": ifindex 1`},
		{"name", veth(func(d *netdev.NetDeviceEntry) { d.Name = proto.String("a/b") }), `entry 1: veth "a/b": not a device name`},
		{"address", veth(func(d *netdev.NetDeviceEntry) { d.Address = make([]byte, 33) }), `entry 1: veth "ceth0": a link-layer address of 33 bytes`},
		{"two with one ifindex", func(img *images.Image) {
			second := proto.Clone(img.Entries[1].Message).(*netdev.NetDeviceEntry)
			second.Name = proto.String("ceth1")
			img.Entries = append(img.Entries, images.Entry{Message: second})
		}, fmt.Sprintf(`entry 2: veth "ceth1": ifindex 2, like netdev-%d.img entry 1's "ceth0"`, netnsID)},
		{"a tun", veth(func(d *netdev.NetDeviceEntry) { d.Type = netdev.NdType_TUN.Enum() }),
			`entry 1: device "ceth0" of kind tun: only the loopback and veths of a net namespace are restored`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := fixture.CopyDir(t, imgs)
			editNetdev(t, dir, tc.edit)
			// the peer's ifindex is the one the dump saw
			tc.err = strings.Replace(tc.err, "(ifindex 6)", fmt.Sprintf("(ifindex %d)", d.GetPeerIfindex()), 1)
			_, err := openNetPlan(t, dir)
			var pe *PlanError
			if !errors.As(err, &pe) || !strings.Contains(err.Error(), netImage("netdev", netnsID)+": "+tc.err) {
				t.Errorf("error %v, want a PlanError with %q", err, tc.err)
			}
		})
	}
}

// TestRestoreVeth: netveth, dumped by crest with its veth, comes back
// with the pair made again, the outside end named by --veth-pair: with
// the address given back to the outside end by hand, or on the bridge
// that has it; its traffic goes on, and the inside end has its ifindex,
// name, mtu, mac, flags, addresses, routes and sysctls back. Our own
// namespace keeps all it had but the outside end.
func TestRestoreVeth(t *testing.T) {
	for _, tc := range []struct {
		name string
		v    vethNet
	}{
		{"outside end", vethNet{In: "ceth0", Out: "crv62", Subnet: "10.57.62", MAC: "02:00:00:57:62:02", MTU: 1400}},
		{"on a bridge", vethNet{In: "eth0", Out: "crv63", Bridge: "crvbr63", Subnet: "10.57.63", MAC: "02:00:00:57:63:02", MTU: 9000}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v := tc.v
			imgs, wdir, was := vethImages(t, v)
			pongs, ticks := logSize(wdir, "out-pong.log"), logSize(wdir, "out-netveth.log")
			r := restoreVeth(t, imgs, Options{VethPairs: []VethPair{{In: v.In, Out: v.Out, Bridge: v.Bridge}}})
			out := ipJSON(t, 0, "-d", "link", "show", "dev", v.Out)
			if len(out) != 1 || out[0]["link_netnsid"] == nil {
				t.Fatalf("outside end %s: %v", v.Out, out)
			}
			if v.Bridge == "" {
				if fmt.Sprint(out[0]["flags"]) != "[BROADCAST MULTICAST]" {
					t.Errorf("outside end's flags %v: want it down, as CRIU leaves it", out[0]["flags"])
				}
				vethCmd(t, "ip", "addr", "add", v.peer()+"/24", "dev", v.Out)
				vethCmd(t, "ip", "link", "set", v.Out, "up")
			} else if out[0]["master"] != v.Bridge || !slices.Contains(out[0]["flags"].([]any), "UP") {
				t.Errorf("outside end: master %v, flags %v; want on %s and up", out[0]["master"], out[0]["flags"], v.Bridge)
			}
			talksAgain(t, wdir, pongs, ticks)
			if now := insideEnd(t, r.RootPID(), v.In); now != was {
				t.Errorf("inside end:\n%s\nwas:\n%s", now, was)
			}
		})
	}
}

// TestRestoreVethCRIU restores CRIU 4.2's images of the namespace
// (images/testdata/criu-4.2-veth: netveth with ceth0, 10.57.58.2/24, mtu
// 1400, 02:00:00:57:58:02, rp_filter 2 and ipv6 hop_limit 42 on it) in
// place of crest's of the same workload: the pair is made from CRIU's
// VETH entry, its sysctls are CRIU's, and the traffic goes on (CRIU's
// network lock in its nftables-10.img taken off).
func TestRestoreVethCRIU(t *testing.T) {
	v := vethNet{In: "ceth0", Out: "crv58", Subnet: "10.57.58", MAC: "02:00:00:57:58:02", MTU: 1400}
	imgs, wdir, was := vethImages(t, v)
	dir := fixture.CopyDir(t, imgs)
	criu := filepath.Join("..", "images", "testdata", "criu-4.2-veth")
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
	pongs, ticks := logSize(wdir, "out-pong.log"), logSize(wdir, "out-netveth.log")
	r := restoreVeth(t, dir, Options{VethPairs: []VethPair{{In: v.In, Out: v.Out}}})
	vethCmd(t, "ip", "addr", "add", v.peer()+"/24", "dev", v.Out)
	vethCmd(t, "ip", "link", "set", v.Out, "up")
	talksAgain(t, wdir, pongs, ticks)
	if now := insideEnd(t, r.RootPID(), v.In); now != was {
		t.Errorf("inside end:\n%s\nwas:\n%s", now, was)
	}
	b, err := exec.Command("nsenter", fmt.Sprintf("--net=/proc/%d/ns/net", r.RootPID()), "cat", "/proc/sys/net/ipv6/conf/ceth0/hop_limit").Output()
	if err != nil || string(b) != "42\n" {
		t.Errorf("ipv6 hop_limit of ceth0: %q (%v), want CRIU's image's 42", b, err)
	}
}

// TestRestoreVethNoPair: without --veth-pair the outside end gets the
// kernel's name (vethN) in our namespace, and a warning names it.
func TestRestoreVethNoPair(t *testing.T) {
	v := vethNet{In: "ceth0", Out: "crv64", Subnet: "10.57.64", MAC: "02:00:00:57:64:02", MTU: 1500}
	imgs, _, _ := vethImages(t, v)
	var logs bytes.Buffer
	var mu sync.Mutex
	log := slog.New(slog.NewTextHandler(lockedWriter{&mu, &logs}, nil))
	r := restoreVeth(t, imgs, Options{Log: log})
	mu.Lock()
	text := logs.String()
	mu.Unlock()
	_, after, ok := strings.Cut(text, "veth made with its outside end named by the kernel")
	if !ok {
		t.Fatalf("no warning naming the outside end:\n%s", text)
	}
	_, name, _ := strings.Cut(after, "outside=")
	name, _, _ = strings.Cut(name, " ")
	t.Cleanup(func() {
		if hostLink(name) {
			exec.Command("ip", "link", "del", name).Run()
		}
	})
	if !strings.HasPrefix(name, "veth") {
		t.Fatalf("outside end %q, want a kernel-made vethN:\n%s", name, text)
	}
	l := ipJSON(t, 0, "link", "show", "dev", name)
	in := ipJSON(t, r.RootPID(), "link", "show", "dev", v.In)
	if len(l) != 1 || len(in) != 1 || fmt.Sprint(l[0]["link_index"]) != fmt.Sprint(in[0]["ifindex"]) {
		t.Errorf("outside end %v is not the peer of the inside end %v", l, in)
	}
}

type lockedWriter struct {
	mu *sync.Mutex
	w  *bytes.Buffer
}

func (l lockedWriter) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(b)
}

// TestRestoreVethFails: a restore that can not make the pair, or fails
// once it did, fails naming the image, entry, device and why, and leaves
// no pair behind: none of the outside end's name, and a device that had
// the name is left alone.
func TestRestoreVethFails(t *testing.T) {
	v := vethNet{In: "ceth0", Out: "crv65", Subnet: "10.57.65", MAC: "02:00:00:57:65:02", MTU: 1500}
	imgs, _, _ := vethImages(t, v)
	file := netImage("netdev", netnsID) + " entry 1"
	for _, tc := range []struct {
		name  string
		pairs []VethPair
		setup func(t *testing.T, dir string)
		err   string
	}{
		{"no bridge", []VethPair{{In: "ceth0", Out: v.Out, Bridge: "crvnobr65"}}, nil,
			file + `: veth "ceth0" (ifindex 2): --veth-pair ceth0=crv65@crvnobr65: no device "crvnobr65" in crest's net namespace`},
		{"not a bridge", []VethPair{{In: "ceth0", Out: v.Out, Bridge: "lo"}}, nil,
			`--veth-pair ceth0=crv65@lo: device "lo" (ifindex 1) is a device of no kind, not a bridge`},
		{"no such veth", []VethPair{{In: "ceth9", Out: v.Out}}, nil,
			fmt.Sprintf(`--veth-pair ceth9=crv65: netdev-%d.img has no veth "ceth9" (veths: ["ceth0"])`, netnsID)},
		{"two for one veth", []VethPair{{In: "ceth0", Out: v.Out}, {In: "ceth0", Out: v.Out + "x"}}, nil, `--veth-pair ceth0=crv65 and ceth0=crv65x: two outside ends for "ceth0"`},
		{"outside name taken", []VethPair{{In: "ceth0", Out: v.Out}}, func(t *testing.T, dir string) {
			vethCmd(t, "ip", "link", "add", v.Out, "type", "bridge")
		}, file + `: veth "ceth0" (ifindex 2), flags 0x11043, mtu 1500, its outside end "crv65" in crest's net namespace: RTM_NEWLINK: file exists`},
		{"an address fails once the pair is made", []VethPair{{In: "ceth0", Out: v.Out}}, func(t *testing.T, dir string) {
			// the address of ceth0 names ifindex 99, which is none
			editIPDump(t, dir, netImage("ifaddr", netnsID), images.IPDumpAddrMagic, func(i int, m []byte) bool {
				if binary.NativeEndian.Uint32(m[unix.SizeofNlMsghdr+4:]) == 2 {
					binary.NativeEndian.PutUint32(m[unix.SizeofNlMsghdr+4:], 99)
				}
				return true
			})
		}, fmt.Sprintf("ifaddr-%d.img: entry", netnsID)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := fixture.CopyDir(t, imgs)
			before := ipJSON(t, 0, "link", "show")
			if tc.setup != nil {
				tc.setup(t, dir)
			}
			taken := hostLink(v.Out)
			p := planDir(t, dir)
			_, err := Start(context.Background(), p, Options{VethPairs: tc.pairs})
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Fatalf("error %v, want one saying %q", err, tc.err)
			}
			if taken {
				if !hostLink(v.Out) {
					t.Errorf("%s, a bridge that had the name, was deleted", v.Out)
				}
				vethCmd(t, "ip", "link", "del", v.Out)
			} else if hostLink(v.Out) {
				t.Errorf("%s left behind by the failed restore", v.Out)
			}
			if after := ipJSON(t, 0, "link", "show"); len(after) != len(before) {
				t.Errorf("our namespace had %d devices, has %d after the failed restore", len(before), len(after))
			}
		})
	}
	// a restore aborted once the pair is made: it goes with the tree
	t.Run("aborted", func(t *testing.T) {
		p := planDir(t, fixture.CopyDir(t, imgs))
		r, err := Start(context.Background(), p, Options{VethPairs: []VethPair{{In: "ceth0", Out: v.Out}}, Until: StageForking})
		if err != nil {
			t.Fatal(err)
		}
		if !hostLink(v.Out) {
			t.Fatalf("no %s once the tree's namespace is filled", v.Out)
		}
		if err := r.Abort(); err != nil {
			t.Fatal(err)
		}
		waitNoLink(t, v.Out)
	})
}
