package dump

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	"github.com/checkpoint-restore/go-criu/v8/crit/images/netdev"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/sysctl"

	"github.com/crest-restore/crest/images"
	"github.com/crest-restore/crest/internal/nlattr"
)

// The tree's own net namespace, dumped as CRIU 4.2 dumps it (criu/net.c
// dump_net_ns), from a thread that joined it (writeNamespaces):
//
//   - netns-ID.img: the sysctls of net/ipv4/conf/{all,default},
//     net/ipv6/conf/{all,default}, net/unix/max_dgram_qlen and
//     net/ipv4/ping_group_range (dump_netns_conf);
//   - netdev-ID.img: its devices, with their sysctls (dump_links): crest
//     dumps its loopback and veths whose peer is outside the tree
//     (netveth.go), and refuses any other device by name and kind, since
//     its restore makes none;
//   - ifaddr-, route-, route6-, rule-ID.img: what ip addr save, ip route
//     save, ip -6 route save and ip rule save print, run as CRIU runs them;
//   - iptables-, ip6tables-ID.img: iptables-save's text, of a legacy
//     iptables only (CRIU built with libnftables, as 4.2 here, picks
//     iptables-legacy-save when iptables is the nf_tables one, and writes
//     no image when there is none);
//   - nftables-ID.img: the ruleset as nft list ruleset prints it (CRIU asks
//     libnftables for "list ruleset").
//
// Conntrack entries (netns-ct-ID.img) are refused: crest does not restore
// them. crest takes no network lock of the namespace (inventory says
// SKIP): the tree is frozen while it is dumped, and every socket of a
// loopback-only namespace is the tree's.

// setNet notes whether the tree has a net namespace of its own (the
// root's, inode ino): its sockets are asked about there.
func (d *dumper) setNet(own bool, ino uint64) {
	d.ownNet = own
	if own {
		d.files.net = sockNet{ino: ino, pid: d.tree.root.pid, ids: d.ns}
	}
}

// writeNet writes the images of the net namespace the calling thread is
// in, the tree's.
func (d *dumper) writeNet() error {
	ino, err := nsInode(d.tree.root.pid, "net")
	if err != nil {
		return err
	}
	id := d.ns.id(ino)
	name := func(kind string) string { return fmt.Sprintf("%s-%d.img", kind, id) }
	if err := d.checkConntrack(name("netns-ct")); err != nil {
		return err
	}
	devs, err := d.netDevices(name("netdev"), id)
	if err != nil {
		return err
	}
	if err := d.write(name("netdev"), images.KindNetdev, devs...); err != nil {
		return err
	}
	conf, err := netnsConf()
	if err != nil {
		return fmt.Errorf("%s: %w", name("netns"), err)
	}
	d.userPingGroups(conf) // userns.go
	if err := d.write(name("netns"), images.KindNetNS, images.Entry{Message: conf}); err != nil {
		return err
	}
	ipv6 := true
	if _, err := os.Stat("/proc/sys/net/ipv6"); err != nil {
		ipv6 = false // then ip -6 route save would save every route
	}
	tools := []struct {
		file string
		args []string
		ok   bool // may fail: no image then (rule save, as CRIU)
	}{
		{name("ifaddr"), []string{"ip", "addr", "save"}, false},
		{name("route"), []string{"ip", "route", "save"}, false},
		{name("route6"), []string{"ip", "-6", "route", "save"}, false},
		{name("rule"), []string{"ip", "rule", "save"}, true},
	}
	if !ipv6 {
		tools = append(tools[:2], tools[3:]...)
	}
	for _, t := range tools {
		out, err := runSaveTool(ino, t.args[0], t.args[1:]...)
		if err != nil {
			if t.ok {
				d.log.Warn("no rules dumped: is ip rule save supported?", "image", t.file, "err", err)
				continue
			}
			return fmt.Errorf("%s: %w", t.file, err)
		}
		if err := os.WriteFile(d.path(t.file), out, 0o600); err != nil {
			return err
		}
	}
	for _, t := range []struct {
		file string
		v6   bool
	}{{name("iptables"), false}, {name("ip6tables"), true}} {
		if t.v6 && !ipv6 {
			continue
		}
		tool := legacyIptablesSave(t.v6)
		if tool == "" {
			d.log.Debug("no legacy iptables-save: no image, as CRIU", "image", t.file)
			continue
		}
		out, err := runSaveTool(ino, tool)
		if err != nil {
			return fmt.Errorf("%s: %w", t.file, err)
		}
		if err := os.WriteFile(d.path(t.file), out, 0o600); err != nil {
			return err
		}
	}
	out, err := runSaveTool(ino, "nft", "list", "ruleset")
	if err != nil {
		return fmt.Errorf("%s: %w", name("nftables"), err)
	}
	return os.WriteFile(d.path(name("nftables")), out, 0o600)
}

// netDevices reads the namespace's devices (RTM_GETLINK): its loopback
// and veths (netveth.go), with their sysctls, as dump_one_netdev writes
// them, in the kernel's order; any other device is refused.
func (d *dumper) netDevices(file string, id uint32) ([]images.Entry, error) {
	links, err := rtnlDump(unix.NETLINK_ROUTE, unix.RTM_GETLINK, []byte{unix.AF_PACKET})
	if err != nil {
		return nil, fmt.Errorf("%s: RTM_GETLINK: %w", file, err)
	}
	var lo *netdev.NetDeviceEntry
	var devs []images.Entry
	for _, m := range links {
		if len(m) < unix.SizeofIfInfomsg {
			return nil, fmt.Errorf("%s: RTM_GETLINK: an answer of %d bytes", file, len(m))
		}
		typ := binary.NativeEndian.Uint16(m[2:])
		index := binary.NativeEndian.Uint32(m[4:])
		flags := binary.NativeEndian.Uint32(m[8:])
		a := nlattr.Parse(m[unix.SizeofIfInfomsg:])
		devName := strings.TrimRight(string(a[unix.IFLA_IFNAME]), "\x00")
		if typ == unix.ARPHRD_ETHER && isVeth(a) {
			e, err := d.vethDevice(file, index, flags, a)
			if err != nil {
				return nil, err
			}
			devs = append(devs, images.Entry{Message: e})
			continue
		}
		if typ != unix.ARPHRD_LOOPBACK {
			kind := fmt.Sprintf("type %d", typ)
			if li, ok := a[unix.IFLA_LINKINFO]; ok {
				if k, ok := nlattr.Parse(li)[unix.IFLA_INFO_KIND]; ok {
					kind = strings.TrimRight(string(k), "\x00")
				}
			}
			return nil, &UnsupportedError{Task: int(d.tree.root.nsPid), Resource: "net device",
				Why: fmt.Sprintf("device %q (ifindex %d) of kind %s in the tree's net namespace: only its loopback and veths are dumped", devName, index, kind)}
		}
		if len(a[unix.IFLA_MTU]) < 4 || devName == "" {
			return nil, fmt.Errorf("%s: loopback %d: no name or mtu", file, index)
		}
		e := &netdev.NetDeviceEntry{Type: netdev.NdType_LOOPBACK.Enum(), Ifindex: proto.Uint32(index),
			Mtu: proto.Uint32(binary.NativeEndian.Uint32(a[unix.IFLA_MTU])), Flags: proto.Uint32(flags), Name: proto.String(devName)}
		// the peer is itself (no IFLA_LINK), in this namespace
		peer := index
		if l := a[unix.IFLA_LINK]; len(l) >= 4 {
			peer = binary.NativeEndian.Uint32(l)
		}
		e.PeerIfindex, e.PeerNsid = proto.Uint32(peer), proto.Uint32(id)
		if _, ok := a[unix.IFLA_LINK_NETNSID]; ok {
			return nil, fmt.Errorf("%s: loopback %q has a peer in another net namespace", file, devName)
		}
		if m := a[unix.IFLA_MASTER]; len(m) >= 4 {
			e.Master = proto.Uint32(binary.NativeEndian.Uint32(m))
		}
		if e.Conf4, err = readConf("ipv4", devName, images.NetConf4Names); err != nil {
			return nil, fmt.Errorf("%s: %w", file, err)
		}
		if e.Conf6, err = readConf("ipv6", devName, images.NetConf6Names); err != nil {
			return nil, fmt.Errorf("%s: %w", file, err)
		}
		if lo != nil {
			return nil, fmt.Errorf("%s: two loopbacks, %q and %q", file, lo.GetName(), devName)
		}
		lo = e
		devs = append(devs, images.Entry{Message: e})
	}
	if lo == nil {
		return nil, fmt.Errorf("%s: the tree's net namespace has no loopback", file)
	}
	return devs, nil
}

// netnsConf reads the namespace's sysctls, as dump_netns_conf does.
func netnsConf() (*netdev.NetnsEntry, error) {
	e := &netdev.NetnsEntry{}
	var err error
	for _, c := range []struct {
		to         *[]*sysctl.SysctlEntry
		proto, dev string
		names      []string
	}{
		{&e.DefConf4, "ipv4", "default", images.NetConf4Names},
		{&e.AllConf4, "ipv4", "all", images.NetConf4Names},
		{&e.DefConf6, "ipv6", "default", images.NetConf6Names},
		{&e.AllConf6, "ipv6", "all", images.NetConf6Names},
	} {
		if *c.to, err = readConf(c.proto, c.dev, c.names); err != nil {
			return nil, err
		}
	}
	// net/unix: the section goes when the kernel has none of it
	u, ok, err := readNetSysctl("net/unix/"+images.NetUnixConfNames[0], false)
	if err != nil {
		return nil, err
	}
	if ok {
		v, err := sysctlInt("net/unix/"+images.NetUnixConfNames[0], u)
		if err != nil {
			return nil, err
		}
		e.UnixConf = []*sysctl.SysctlEntry{{Type: sysctl.SysctlType_CTL_32.Enum(), Iarg: proto.Int32(v)}}
	}
	// net/ipv4/ping_group_range: left out (the entry kept, without a
	// value) at its default "1 0", which allows no group
	g, ok, err := readNetSysctl("net/ipv4/"+images.NetIPv4SysctlNames[0], false)
	if err != nil {
		return nil, err
	}
	if ok {
		ent := &sysctl.SysctlEntry{Type: sysctl.SysctlType_CTL_STR.Enum()}
		var lo, hi int
		if n, _ := fmt.Sscanf(g, "%d %d", &lo, &hi); n != 2 {
			return nil, fmt.Errorf("net/ipv4/ping_group_range: %q", g)
		}
		if lo != 1 || hi != 0 {
			ent.Sarg = proto.String(g)
		}
		e.Ipv4Sysctl = []*sysctl.SysctlEntry{ent}
	}
	return e, nil
}

// readConf reads the sysctls names of net/PROTO/conf/DEV: a value for
// each the kernel has, an entry without one for each it has not.
func readConf(proto_, dev string, names []string) ([]*sysctl.SysctlEntry, error) {
	out := make([]*sysctl.SysctlEntry, len(names))
	for i, n := range names {
		path := fmt.Sprintf("net/%s/conf/%s/%s", proto_, dev, n)
		str := n == "stable_secret"
		v, ok, err := readNetSysctl(path, str)
		if err != nil {
			return nil, err
		}
		if str {
			out[i] = &sysctl.SysctlEntry{Type: sysctl.SysctlType_CTL_STR.Enum()}
			if ok {
				out[i].Sarg = proto.String(v)
			}
			continue
		}
		out[i] = &sysctl.SysctlEntry{Type: sysctl.SysctlType_CTL_32.Enum()}
		if ok {
			iv, err := sysctlInt(path, v)
			if err != nil {
				return nil, err
			}
			out[i].Iarg = proto.Int32(iv)
		}
	}
	return out, nil
}

// readSysctl reads /proc/sys/path (of the calling thread's namespaces):
// ok false when the kernel has no such file, or, for eioSkip, gives EIO
// (stable_secret unset), as CRIU's optional reads.
func readNetSysctl(path string, eioSkip bool) (string, bool, error) {
	b, err := os.ReadFile("/proc/sys/" + path)
	if errors.Is(err, os.ErrNotExist) || (eioSkip && errors.Is(err, syscall.EIO)) {
		return "", false, nil
	}
	if err != nil {
		return "", false, err
	}
	return string(b), true, nil
}

func sysctlInt(path, v string) (int32, error) {
	n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 32)
	if err != nil {
		return 0, fmt.Errorf("/proc/sys/%s: %w", path, err)
	}
	return int32(n), nil
}

// checkConntrack refuses conntrack entries in the namespace (CRIU dumps
// them into netns-ct-ID.img; crest would not restore them).
func (d *dumper) checkConntrack(file string) error {
	const ctGet = 1<<8 | 1 // NFNL_SUBSYS_CTNETLINK, IPCTNL_MSG_CT_GET
	msgs, err := rtnlDump(unix.NETLINK_NETFILTER, ctGet, []byte{unix.AF_UNSPEC, 0, 0, 0})
	if errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENOENT) || errors.Is(err, unix.EPROTONOSUPPORT) {
		return nil // no conntrack in this kernel
	}
	if err != nil {
		return fmt.Errorf("%s: conntrack: %w", file, err)
	}
	if len(msgs) > 0 {
		return &UnsupportedError{Task: int(d.tree.root.nsPid), Resource: "conntrack",
			Why: fmt.Sprintf("%d conntrack entries in the tree's net namespace: not dumped (CRIU writes them into %s; crest does not restore them)", len(msgs), file)}
	}
	return nil
}

// rtnlDump asks the netlink family proto for a dump of typ with body, in
// the calling thread's net namespace, and returns each answer's payload.
func rtnlDump(family int, typ uint16, body []byte) ([][]byte, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, family)
	if err != nil {
		return nil, os.NewSyscallError("socket(AF_NETLINK)", err)
	}
	defer unix.Close(fd)
	req := make([]byte, unix.SizeofNlMsghdr+len(body))
	binary.NativeEndian.PutUint32(req[0:], uint32(len(req)))
	binary.NativeEndian.PutUint16(req[4:], typ)
	binary.NativeEndian.PutUint16(req[6:], unix.NLM_F_REQUEST|unix.NLM_F_DUMP)
	binary.NativeEndian.PutUint32(req[8:], 1)
	copy(req[unix.SizeofNlMsghdr:], body)
	if err := unix.Sendto(fd, req, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return nil, os.NewSyscallError("sendto(AF_NETLINK)", err)
	}
	var out [][]byte
	buf := make([]byte, 1<<16)
	for {
		n, _, err := unix.Recvfrom(fd, buf, 0)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return nil, os.NewSyscallError("recvfrom(AF_NETLINK)", err)
		}
		msgs, err := syscall.ParseNetlinkMessage(buf[:n])
		if err != nil {
			return nil, fmt.Errorf("netlink: %w", err)
		}
		for _, m := range msgs {
			switch m.Header.Type {
			case unix.NLMSG_DONE:
				return out, nil
			case unix.NLMSG_ERROR:
				if len(m.Data) >= 4 {
					if errno := -int32(binary.NativeEndian.Uint32(m.Data)); errno != 0 {
						return nil, syscall.Errno(errno)
					}
				}
				return out, nil
			}
			out = append(out, bytes.Clone(m.Data))
		}
	}
}

var legacyIptables struct {
	sync.Once
	save [2]string
}

// legacyIptablesSave is the iptables-save (ip6tables-save for v6) of a
// legacy iptables, as CRIU's get_legacy_iptables_bin picks it; "" when
// there is none.
func legacyIptablesSave(v6 bool) string {
	legacyIptables.Do(func() {
		for i, name := range []string{"iptables", "ip6tables"} {
			for _, tool := range []string{name + "-save", name + "-legacy-save"} {
				path, err := exec.LookPath(tool)
				if err != nil {
					continue
				}
				out, err := exec.Command(path, "--version").CombinedOutput()
				if err == nil && !bytes.Contains(out, []byte("nf_tables")) {
					legacyIptables.save[i] = path
					break
				}
			}
		}
	})
	if v6 {
		return legacyIptables.save[1]
	}
	return legacyIptables.save[0]
}

// runSaveTool runs tool, forked from the calling thread, which is in the
// tree's net namespace (inode want), and returns what it printed. The
// tools only read; the child is checked to be in that namespace while it
// runs (one gone already can not be, and has read only).
func runSaveTool(want uint64, tool string, args ...string) ([]byte, error) {
	path, err := exec.LookPath(tool)
	if err != nil {
		return nil, err
	}
	var out, errOut bytes.Buffer
	cmd := exec.Command(path, args...)
	cmd.Stdout, cmd.Stderr = &out, &errOut
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	if got, err := nsInode(cmd.Process.Pid, "net"); err == nil && got != want {
		cmd.Process.Kill()
		cmd.Wait()
		return nil, fmt.Errorf("%s ran in net namespace %d, not the tree's %d", path, got, want)
	}
	if err := cmd.Wait(); err != nil {
		return nil, fmt.Errorf("%s %s: %w: %s", path, strings.Join(args, " "), err, bytes.TrimSpace(errOut.Bytes()))
	}
	return out.Bytes(), nil
}
