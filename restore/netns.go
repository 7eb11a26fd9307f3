package restore

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"strings"

	"github.com/checkpoint-restore/go-criu/v8/crit/images/netdev"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/sysctl"
	"golang.org/x/sys/unix"

	"github.com/crest-restore/crest/images"
)

// The tree's own net namespace, as CRIU 4.2 dumps it (criu/net.c
// dump_net_ns) and restores it (prepare_net_namespaces): the root is born
// in a new one (CLONE_NEWNET, plan flag agent.PlanNewNet), which the
// engine fills in PREPARE_NAMESPACES, before any task forks, in CRIU's
// order: the namespace's sysctls (netns-ID.img), its devices
// (netdev-ID.img: its loopback, and veths whose peer was outside the
// tree: netveth.go), the addresses, routes
// and rules that ip ... save wrote (ifaddr-, route-, route6-, rule-ID.img),
// then the netfilter rules (iptables-, ip6tables-, nftables-ID.img). The
// tree's sockets are made in it next (netns_fill.go): crest makes them in
// the engine, not in the tasks as CRIU does, so they wait for the
// namespace. Everything else is refused by name: devices but the
// loopback and veths, ids of other net namespaces, conntrack entries, a namespace
// given from outside (--external net[...]), tasks in other net
// namespaces.

// NetNamespace is the tree's own net namespace as the images have it.
type NetNamespace struct {
	ID uint32
	// Sysctls are the namespace's (all, default, unix, ipv4), written
	// first, in CRIU's order; LinkSysctls the loopback's, written once
	// the device is set up.
	Sysctls     []NetSysctl
	LinkSysctls []NetSysctl
	// Loopback is the namespace's loopback (netdev-ID.img), set up as
	// the image says: flags (up), mtu, name.
	Loopback *netdev.NetDeviceEntry
	// Veths are its veths whose peer was outside the tree, made after
	// the loopback, with their sysctls (netveth.go).
	Veths []*Veth
	// Addrs, Routes (IPv4, then IPv6) and Rules are ip ... save's
	// messages; nil without their image, which CRIU takes as nothing to
	// do (HasRules: rule-ID.img exists, even with no rule in it: the
	// namespace's own rules are flushed then, as CRIU's ip rule flush).
	Addrs, Routes, Routes6, Rules []images.NetlinkMessage
	HasRules                      bool
	// Iptables and Ip6tables are iptables-legacy-save's text, restored
	// with a legacy iptables-restore; Nftables the ruleset, restored with
	// nft. Empty: nothing.
	Iptables, Ip6tables, Nftables []byte
	// Lock is CRIU's network lock of the namespace, which its dump put
	// into these rules and its restore takes away at the end (netlock.go).
	Lock NetLock
}

// NetSysctl is one sysctl write: the file under /proc/sys, the value as
// CRIU writes it, and where in the images it comes from.
type NetSysctl struct {
	Path  string // "net/ipv4/conf/all/forwarding"
	Value string // "1\n"
	From  string // "netns-10.img entry 0 all_conf4[12]"
}

// NetLock is what of CRIU's network lock the restored rules hold.
type NetLock struct {
	// IPv4 and IPv6: the chain CRIU of table filter, jumped to from
	// INPUT and OUTPUT (--network-lock iptables, the default), in the
	// legacy tables (iptables-ID.img) or, InNftables, in nftables-ID.img
	// (CRIU's iptables-restore was the one on nf_tables).
	IPv4, IPv6 bool
	InNftables bool
	// Table: the table of --network-lock nftables ("inet CRIU-<run id>").
	Table string
}

func (l NetLock) any() bool { return l.IPv4 || l.IPv6 || l.Table != "" }

// netImage names the image kind of net namespace id.
func netImage(kind string, id uint32) string { return fmt.Sprintf("%s-%d.img", kind, id) }

// loadNet reads the images of the tree's own net namespace id.
func (p *Plan) loadNet(id uint32) (*NetNamespace, error) {
	ns := &NetNamespace{ID: id}
	if err := p.loadNetns(ns); err != nil {
		return nil, err
	}
	if err := p.loadNetdev(ns); err != nil {
		return nil, err
	}
	for _, d := range []struct {
		kind  string
		magic uint32
		typ   uint16
		to    *[]images.NetlinkMessage
	}{
		{"ifaddr", images.IPDumpAddrMagic, unix.RTM_NEWADDR, &ns.Addrs},
		{"route", images.IPDumpRouteMagic, unix.RTM_NEWROUTE, &ns.Routes},
		{"route6", images.IPDumpRouteMagic, unix.RTM_NEWROUTE, &ns.Routes6},
		{"rule", images.IPDumpRuleMagic, unix.RTM_NEWRULE, &ns.Rules},
	} {
		name := netImage(d.kind, id)
		b, ok, err := images.ReadRaw(p.Dir.FilePath(name))
		if err != nil {
			return nil, &PlanError{File: name, Err: err}
		}
		if !ok {
			continue
		}
		msgs, err := images.ParseIPDump(name, b, d.magic)
		if err != nil {
			return nil, &PlanError{Err: err}
		}
		for i, m := range msgs {
			// ip ... restore sends whatever it finds back; a dump of
			// one kind holds only the kernel's answers of that kind
			if m.Type != d.typ {
				return nil, &PlanError{File: name, Msg: fmt.Sprintf("entry %d (offset %d): netlink message of type %d, want %d", i, m.Offset, m.Type, d.typ)}
			}
		}
		*d.to = msgs
		if d.kind == "rule" {
			ns.HasRules = true
		}
	}
	for _, t := range []struct {
		kind string
		to   *[]byte
	}{{"iptables", &ns.Iptables}, {"ip6tables", &ns.Ip6tables}, {"nftables", &ns.Nftables}} {
		name := netImage(t.kind, id)
		b, _, err := images.ReadRaw(p.Dir.FilePath(name))
		if err != nil {
			return nil, &PlanError{File: name, Err: err}
		}
		if i := bytes.IndexByte(b, 0); i >= 0 {
			return nil, &PlanError{File: name, Msg: fmt.Sprintf("a NUL byte at offset %d: not the text %s writes", i, t.kind)}
		}
		*t.to = b
	}
	for _, kind := range []string{"netns-ct", "netns-exp"} {
		name := netImage(kind, id)
		b, _, err := images.ReadRaw(p.Dir.FilePath(name))
		if err != nil {
			return nil, &PlanError{File: name, Err: err}
		}
		msgs, err := images.ParseNetlinkDump(name, b)
		if err != nil {
			return nil, &PlanError{Err: err}
		}
		if len(msgs) > 0 {
			return nil, &PlanError{File: name, Msg: fmt.Sprintf("%d conntrack entries: conntrack state is not restored", len(msgs))}
		}
	}
	ns.Lock = netLockOf(ns, p.Dir.Inventory.NetworkLockMethod, p.Dir.Inventory.DumpCriuRunId, p.Root().PID)
	return ns, nil
}

// loadNetns reads netns-ID.img: the namespace's sysctls.
func (p *Plan) loadNetns(ns *NetNamespace) error {
	name := netImage("netns", ns.ID)
	img, err := images.ReadKindFile(p.Dir.FilePath(name), images.KindNetNS)
	if errors.Is(err, fs.ErrNotExist) {
		return &PlanError{File: name, Msg: fmt.Sprintf("the tree's own net namespace %d has no image", ns.ID)}
	}
	if err != nil {
		return &PlanError{File: name, Err: err}
	}
	if len(img.Entries) != 1 {
		return &PlanError{File: name, Msg: fmt.Sprintf("%d entries, want one", len(img.Entries))}
	}
	e := img.Entries[0].Message.(*netdev.NetnsEntry)
	if e.ExtKey != nil {
		return &PlanError{File: name, Msg: fmt.Sprintf("entry 0: an external net namespace (ext_key %q): not restored", e.GetExtKey())}
	}
	for i, id := range e.GetNsids() {
		return &PlanError{File: name, Msg: fmt.Sprintf("entry 0: nsids[%d]: id %d of net namespace %d: ids of other net namespaces are not restored",
			i, id.GetNetnsidValue(), id.GetTargetNsId())}
	}
	if e.DefConf4 == nil && (e.DefConf != nil || e.AllConf != nil) {
		return &PlanError{File: name, Msg: "entry 0: sysctls in the layout before CRIU 3.x (def_conf, all_conf): not restored"}
	}
	from := name + " entry 0 "
	var out []NetSysctl
	for _, c := range []struct {
		field, proto, dev string
		entries           []*sysctl.SysctlEntry
		names             []string
	}{
		{"all_conf4", "ipv4", "all", e.GetAllConf4(), images.NetConf4Names},
		{"def_conf4", "ipv4", "default", e.GetDefConf4(), images.NetConf4Names},
		{"all_conf6", "ipv6", "all", e.GetAllConf6(), images.NetConf6Names},
		{"def_conf6", "ipv6", "default", e.GetDefConf6(), images.NetConf6Names},
	} {
		out = append(out, devConf(from+c.field, c.proto, c.dev, c.entries, c.names)...)
	}
	// net/unix and net/ipv4: one entry each, or none (CRIU refuses any
	// other count)
	if u := e.GetUnixConf(); u != nil {
		if len(u) != len(images.NetUnixConfNames) || u[0].GetType() != sysctl.SysctlType_CTL_32 {
			return &PlanError{File: name, Msg: fmt.Sprintf("entry 0: unix_conf of %d entries (%v), want one CTL_32", len(u), u)}
		}
		out = append(out, NetSysctl{Path: "net/unix/" + images.NetUnixConfNames[0], Value: fmt.Sprintf("%d\n", u[0].GetIarg()), From: from + "unix_conf[0]"})
	}
	if v := e.GetIpv4Sysctl(); v != nil {
		if len(v) != len(images.NetIPv4SysctlNames) || v[0].GetType() != sysctl.SysctlType_CTL_STR {
			return &PlanError{File: name, Msg: fmt.Sprintf("entry 0: ipv4_sysctl of %d entries (%v), want one CTL_STR", len(v), v)}
		}
		if v[0].Sarg != nil {
			out = append(out, NetSysctl{Path: "net/ipv4/" + images.NetIPv4SysctlNames[0], Value: v[0].GetSarg() + "\n", From: from + "ipv4_sysctl[0]"})
		}
	}
	ns.Sysctls = out
	return nil
}

// devConf lists the writes of one conf directory (net/PROTO/conf/DEV) as
// CRIU's net_conf_op does: in names' order but for accept_redirects,
// last (it must follow forwarding); values the image does not have are
// not written, and entries past the names CRIU 4.2 knows are passed over.
func devConf(from, proto, dev string, entries []*sysctl.SysctlEntry, names []string) []NetSysctl {
	var out []NetSysctl
	var last *NetSysctl
	for i, e := range entries {
		if i >= len(names) {
			break
		}
		w := NetSysctl{Path: fmt.Sprintf("net/%s/conf/%s/%s", proto, dev, names[i]), From: fmt.Sprintf("%s[%d]", from, i)}
		switch e.GetType() {
		case sysctl.SysctlType_CTL_32:
			if e.Iarg == nil {
				continue
			}
			w.Value = fmt.Sprintf("%d\n", e.GetIarg())
		case sysctl.SysctlType_CTL_STR:
			if e.Sarg == nil {
				continue
			}
			w.Value = e.GetSarg() + "\n"
		default:
			continue
		}
		if names[i] == "accept_redirects" {
			last = &w
			continue
		}
		out = append(out, w)
	}
	if last != nil {
		out = append(out, *last)
	}
	return out
}

// loadNetdev reads netdev-ID.img: the namespace's loopback and veths,
// the devices crest restores.
func (p *Plan) loadNetdev(ns *NetNamespace) error {
	name := netImage("netdev", ns.ID)
	img, err := images.ReadKindFile(p.Dir.FilePath(name), images.KindNetdev)
	if errors.Is(err, fs.ErrNotExist) {
		return &PlanError{File: name, Msg: fmt.Sprintf("the tree's own net namespace %d has no devices image", ns.ID)}
	}
	if err != nil {
		return &PlanError{File: name, Err: err}
	}
	for i, ent := range img.Entries {
		d := ent.Message.(*netdev.NetDeviceEntry)
		if d.GetType() == netdev.NdType_VETH {
			v, err := p.loadVeth(ns, name, i, d) // netveth.go
			if err != nil {
				return err
			}
			ns.Veths = append(ns.Veths, v)
			continue
		}
		if d.GetType() != netdev.NdType_LOOPBACK {
			return &PlanError{File: name, Msg: fmt.Sprintf("entry %d: device %q of kind %s: only the loopback and veths of a net namespace are restored",
				i, d.GetName(), strings.ToLower(d.GetType().String()))}
		}
		if ns.Loopback != nil {
			return &PlanError{File: name, Msg: fmt.Sprintf("entry %d: a second loopback %q (the first is %q)", i, d.GetName(), ns.Loopback.GetName())}
		}
		// a new namespace's loopback, the only device there, is
		// always ifindex 1 (LOOPBACK_IFINDEX): CRIU sets it up by its
		// ifindex, which must be that one
		if d.GetIfindex() != 1 {
			return &PlanError{File: name, Msg: fmt.Sprintf("entry %d: loopback %q has ifindex %d; a new net namespace's is 1", i, d.GetName(), d.GetIfindex())}
		}
		if n := d.GetName(); n == "" || len(n) >= unix.IFNAMSIZ || strings.ContainsAny(n, "/: \t\n") || n == "." || n == ".." {
			return &PlanError{File: name, Msg: fmt.Sprintf("entry %d: loopback name %q is not a device name", i, n)}
		}
		if d.Master != nil {
			return &PlanError{File: name, Msg: fmt.Sprintf("entry %d: loopback %q has master %d", i, d.GetName(), d.GetMaster())}
		}
		if d.Conf4 == nil && d.Conf != nil {
			return &PlanError{File: name, Msg: fmt.Sprintf("entry %d: sysctls in the layout before CRIU 3.x (conf): not restored", i)}
		}
		ns.Loopback = d
		from := fmt.Sprintf("%s entry %d ", name, i)
		// the loopback's values are all written: it is made with the
		// namespace, before its defaults are set (CRIU's restore_link)
		ns.LinkSysctls = append(devConf(from+"conf4", "ipv4", d.GetName(), d.GetConf4(), images.NetConf4Names),
			devConf(from+"conf6", "ipv6", d.GetName(), d.GetConf6(), images.NetConf6Names)...)
	}
	if ns.Loopback == nil {
		return &PlanError{File: name, Msg: "no loopback"}
	}
	return nil
}

// netLockOf finds CRIU's network lock in the rules ns restores, as the
// inventory's method says it was taken (netlock.go): the chain CRIU of
// table filter, which CRIU's iptables-restore put into the legacy tables
// or, with an iptables on nftables, into nftables-ID.img; or the table
// "inet CRIU-<run id>".
func netLockOf(ns *NetNamespace, method *uint32, runID *string, rootPID int) NetLock {
	var l NetLock
	m := uint32(networkLockIptables)
	if method != nil {
		m = *method
	}
	switch m {
	case networkLockIptables:
		nft4, nft6 := nftChain(ns.Nftables, "ip filter", "CRIU"), nftChain(ns.Nftables, "ip6 filter", "CRIU")
		l.IPv4 = bytes.Contains(ns.Iptables, []byte("\n:CRIU ")) || nft4
		l.IPv6 = bytes.Contains(ns.Ip6tables, []byte("\n:CRIU ")) || nft6
		l.InNftables = nft4 || nft6
	case networkLockNftables:
		table := nftablesTable(runID, rootPID)
		if bytes.Contains(ns.Nftables, []byte("table "+table+" {")) {
			l.Table = table
		}
	}
	return l
}

// nftChain says whether ruleset (as nft list ruleset prints it) has chain
// in table.
func nftChain(ruleset []byte, table, chain string) bool {
	in := false
	sc := bufio.NewScanner(bytes.NewReader(ruleset))
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "table ") {
			in = line == "table "+table+" {"
			continue
		}
		if in && strings.TrimSpace(line) == "chain "+chain+" {" {
			return true
		}
	}
	return false
}
