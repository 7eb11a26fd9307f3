package restore

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/checkpoint-restore/go-criu/v8/crit/images/netdev"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/sysctl"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	"github.com/crest-restore/crest/images"
	"github.com/crest-restore/crest/internal/nlattr"
)

// Veths of the tree's net namespace, whose peer was outside the tree (a
// container's link to its host), as CRIU 4.2 restores them (criu/net.c
// restore_one_link with veth_link_info): in PREPARE_NAMESPACES, after the
// loopback and before the addresses and routes that name them by their
// ifindex, each pair is made by one RTM_NEWLINK sent in the tree's
// namespace: the inside end with the ifindex, name, mtu, link-layer
// address and flags (up or down) of the image, the outside end
// (VETH_INFO_PEER) in crest's own net namespace (IFLA_NET_NS_FD), named as
// criu restore --veth-pair IN=OUT[@BRIDGE] names it, or, without one, by
// the kernel (vethN: CRIU 4.2 fails then, "Unknown peer net namespace").
// The inside end's sysctls that differ from the namespace's defaults
// follow (restore_link). With @BRIDGE the outside end is put on that
// bridge, which must exist in crest's namespace, and set up
// (move_veth_to_bridge, which CRIU does once the tree is restored; crest
// does it when it makes the pair, so that the step has one place to fail
// and to undo). Otherwise the outside end is left down, without address,
// as CRIU leaves it: the one who made it gives it what it had.
//
// A restore that fails while it fills the namespace deletes the pairs it
// made (removeVeths: deleting the outside end deletes both); one that
// fails later kills the tree, and the pairs go with its namespace, once
// the kernel has let it go (or at once, when rollback calls removeVeths).
// crest works on crest's own namespace from a goroutine
// that is not locked to a thread: the thread that fills the tree's
// namespace is in that one, and every other thread is in crest's.

// VethPair names the outside end of a veth of the images: criu restore
// --veth-pair IN=OUT[@BRIDGE].
type VethPair struct {
	In     string // the inside end, as the images name it
	Out    string // the outside end, made in crest's net namespace
	Bridge string // a bridge there to put the outside end on, or ""
}

func (v VethPair) String() string {
	s := v.In + "=" + v.Out
	if v.Bridge != "" {
		s += "@" + v.Bridge
	}
	return s
}

// ParseVethPair reads IN=OUT[@BRIDGE], as criu restore --veth-pair takes it.
func ParseVethPair(s string) (VethPair, error) {
	in, rest, ok := strings.Cut(s, "=")
	if !ok {
		return VethPair{}, fmt.Errorf("veth pair %q: want IN=OUT[@BRIDGE]", s)
	}
	out, br, withBridge := strings.Cut(rest, "@")
	v := VethPair{In: in, Out: out, Bridge: br}
	for _, n := range []struct{ what, name string }{{"IN", in}, {"OUT", out}, {"BRIDGE", br}} {
		if n.what == "BRIDGE" && !withBridge {
			continue
		}
		if !devName(n.name) {
			return VethPair{}, fmt.Errorf("veth pair %q: %s %q is not a device name", s, n.what, n.name)
		}
	}
	return v, nil
}

// devName says whether name may name a net device.
func devName(n string) bool {
	return n != "" && len(n) < unix.IFNAMSIZ && !strings.ContainsAny(n, "/: \t\n") && n != "." && n != ".."
}

// Veth is a veth end of the tree's net namespace whose peer was outside
// the tree.
type Veth struct {
	Device *netdev.NetDeviceEntry
	From   string // "netdev-10.img entry 1"
	// Sysctls are its own, written once it is made: those that differ
	// from the namespace's defaults (a new device has those), and its
	// mtu (disable_ipv6 may have changed it), as CRIU's net_conf_op.
	Sysctls []NetSysctl
}

// loadVeth checks the veth d, entry i of netdev-ID.img (file), of ns.
func (p *Plan) loadVeth(ns *NetNamespace, file string, i int, d *netdev.NetDeviceEntry) (*Veth, error) {
	from := fmt.Sprintf("%s entry %d", file, i)
	bad := func(format string, args ...any) error {
		return &PlanError{File: file, Msg: fmt.Sprintf("entry %d: veth %q: ", i, d.GetName()) + fmt.Sprintf(format, args...)}
	}
	if !devName(d.GetName()) {
		return nil, bad("not a device name")
	}
	// the loopback is 1: ip's dumps name devices by ifindex, so each
	// gets its own back
	if d.GetIfindex() < 2 {
		return nil, bad("ifindex %d: a new net namespace's loopback has 1, others more", d.GetIfindex())
	}
	for _, o := range ns.Veths {
		if o.Device.GetIfindex() == d.GetIfindex() || o.Device.GetName() == d.GetName() {
			return nil, bad("ifindex %d, like %s's %q", d.GetIfindex(), o.From, o.Device.GetName())
		}
	}
	if d.PeerNsid != nil {
		if d.GetPeerNsid() == ns.ID {
			return nil, bad("its peer (ifindex %d) is in the same net namespace: veths with both ends in the tree are not restored", d.GetPeerIfindex())
		}
		return nil, bad("its peer (ifindex %d) is in net namespace %d of the images: only the root's net namespace is restored", d.GetPeerIfindex(), d.GetPeerNsid())
	}
	if d.Master != nil {
		return nil, bad("enslaved to device %d: masters are not restored", d.GetMaster())
	}
	if d.Conf4 == nil && d.Conf != nil {
		return nil, bad("sysctls in the layout before CRIU 3.x (conf): not restored")
	}
	if n := len(d.GetAddress()); n > 32 { // MAX_ADDR_LEN
		return nil, bad("a link-layer address of %d bytes", n)
	}
	def4, def6, err := p.netDefaults(ns)
	if err != nil {
		return nil, err
	}
	v := &Veth{Device: d, From: from}
	for _, c := range []struct {
		field, proto string
		entries, def []*sysctl.SysctlEntry
		names        []string
	}{
		{"conf4", "ipv4", d.GetConf4(), def4, images.NetConf4Names},
		{"conf6", "ipv6", d.GetConf6(), def6, images.NetConf6Names},
	} {
		own := make([]*sysctl.SysctlEntry, len(c.entries))
		for k, e := range c.entries {
			own[k] = e
			if k < len(c.def) && k < len(c.names) && c.names[k] != "mtu" && proto.Equal(e, c.def[k]) {
				own[k] = &sysctl.SysctlEntry{} // no value: devConf passes it over
			}
		}
		v.Sysctls = append(v.Sysctls, devConf(from+" "+c.field, c.proto, d.GetName(), own, c.names)...)
	}
	return v, nil
}

// netDefaults reads def_conf4 and def_conf6 of netns-ID.img, which
// loadNetns checked.
func (p *Plan) netDefaults(ns *NetNamespace) (def4, def6 []*sysctl.SysctlEntry, err error) {
	name := netImage("netns", ns.ID)
	img, err := images.ReadKindFile(p.Dir.FilePath(name), images.KindNetNS)
	if err != nil {
		return nil, nil, &PlanError{File: name, Err: err}
	}
	e := img.Entries[0].Message.(*netdev.NetnsEntry)
	return e.GetDefConf4(), e.GetDefConf6(), nil
}

// vethRun is what the restore made of the veths: the outside ends, to
// delete when it fails.
type vethRun struct {
	made []madeVeth
}

type madeVeth struct {
	in, out  string // names
	outIndex int32  // in crest's net namespace
}

// makeVeths makes the veth pairs of ns (see above), from the thread that
// joined the tree's namespace, with c a NETLINK_ROUTE socket there.
func (r *Restore) makeVeths(c *rtnl, ns *NetNamespace) error {
	pairs := map[string]VethPair{}
	for _, v := range r.opts.VethPairs {
		if o, ok := pairs[v.In]; ok {
			return fmt.Errorf("--veth-pair %s and %s: two outside ends for %q", o, v, v.In)
		}
		pairs[v.In] = v
	}
	var names []string
	for _, v := range ns.Veths {
		names = append(names, v.Device.GetName())
		delete(pairs, v.Device.GetName())
	}
	for _, v := range pairs {
		return fmt.Errorf("--veth-pair %s: %s has no veth %q (veths: %q)", v, netImage("netdev", ns.ID), v.In, names)
	}
	if len(ns.Veths) == 0 {
		return nil
	}
	tree, err := nsIno("/proc/thread-self/ns/net")
	if err != nil {
		return err
	}
	// crest's namespace: opened from a thread that is in it, and
	// checked not to be the tree's
	var nsFd int
	err = inEngineNet(func() error {
		fd, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			return &os.PathError{Op: "open", Path: "/proc/thread-self/ns/net", Err: err}
		}
		var st unix.Stat_t
		if err := unix.Fstat(fd, &st); err != nil || st.Ino == tree {
			unix.Close(fd)
			return fmt.Errorf("crest's net namespace (inode %d) is the tree's (%d) (%v)", st.Ino, tree, err)
		}
		nsFd = fd
		return nil
	})
	if err != nil {
		return err
	}
	defer unix.Close(nsFd)
	for _, v := range ns.Veths {
		if err := r.makeVeth(c, ns, v, r.opts.vethPair(v.Device.GetName()), nsFd); err != nil {
			return err
		}
	}
	return nil
}

// vethPair is the --veth-pair of the veth named in, if any.
func (o Options) vethPair(in string) VethPair {
	for _, v := range o.VethPairs {
		if v.In == in {
			return v
		}
	}
	return VethPair{In: in}
}

func (r *Restore) makeVeth(c *rtnl, ns *NetNamespace, v *Veth, pair VethPair, nsFd int) error {
	d := v.Device
	what := fmt.Sprintf("%s: veth %q (ifindex %d)", v.From, d.GetName(), d.GetIfindex())
	var bridge int32
	if pair.Bridge != "" {
		err := inEngineNet(func() error {
			l, err := findLink(func(l link) bool { return l.name == pair.Bridge })
			switch {
			case err != nil:
				return err
			case l == nil:
				return fmt.Errorf("no device %q in crest's net namespace", pair.Bridge)
			case l.kind != "bridge":
				return fmt.Errorf("device %q (ifindex %d) is a %s, not a bridge", pair.Bridge, l.index, kindOr(l.kind))
			}
			bridge = l.index
			return nil
		})
		if err != nil {
			return fmt.Errorf("%s: --veth-pair %s: %w", what, pair, err)
		}
	}
	// the peer: no ifindex (crest's namespace has its own), its name,
	// in crest's namespace
	peer := make([]byte, unix.SizeofIfInfomsg)
	if pair.Out != "" {
		peer = append(peer, rtAttr(unix.IFLA_IFNAME, []byte(pair.Out))...)
	}
	peer = append(peer, rtAttr(unix.IFLA_NET_NS_FD, binary.NativeEndian.AppendUint32(nil, uint32(nsFd)))...)
	const vethInfoPeer = 1 // VETH_INFO_PEER
	info := append(rtAttr(unix.IFLA_INFO_KIND, []byte("veth")), rtAttr(unix.IFLA_INFO_DATA, rtAttr(vethInfoPeer, peer))...)

	body := make([]byte, unix.SizeofIfInfomsg)
	body[0] = unix.AF_UNSPEC
	binary.NativeEndian.PutUint32(body[4:], d.GetIfindex())
	binary.NativeEndian.PutUint32(body[8:], d.GetFlags()) // no change mask: all of them, as CRIU
	m := nlMessage(unix.RTM_NEWLINK, unix.NLM_F_CREATE|unix.NLM_F_EXCL, body)
	m = addAttr(m, unix.IFLA_IFNAME, []byte(d.GetName()))
	m = addAttr(m, unix.IFLA_MTU, binary.NativeEndian.AppendUint32(nil, d.GetMtu()))
	if d.Address != nil {
		m = addAttr(m, unix.IFLA_ADDRESS, d.GetAddress())
	}
	m = addAttr(m, unix.IFLA_LINKINFO, info)
	out := pair.Out
	if out == "" {
		out = "a name the kernel gives"
	}
	if err := c.talk(m, 0); err != nil {
		return fmt.Errorf("%s, flags %#x, mtu %d, its outside end %q in crest's net namespace: RTM_NEWLINK: %w",
			what, d.GetFlags(), d.GetMtu(), out, err)
	}
	// which the outside end is: the inside end's link, in crest's
	// namespace
	var in *link
	err := c.links(func(l link) bool {
		if l.index == int32(d.GetIfindex()) {
			in = &l
		}
		return in == nil
	})
	if err == nil && in == nil {
		err = errors.New("not there")
	}
	if err != nil {
		return fmt.Errorf("%s: made, then RTM_GETLINK: %w", what, err)
	}
	var outside *link
	err = inEngineNet(func() error {
		l, err := findLink(func(l link) bool { return l.index == in.peer && l.peer == int32(d.GetIfindex()) && l.kind == "veth" })
		outside = l
		return err
	})
	if err == nil && outside == nil {
		err = fmt.Errorf("no veth of ifindex %d with peer %d there", in.peer, d.GetIfindex())
	}
	if err != nil {
		// the inside end goes with the tree's namespace; its peer,
		// wherever it is, with it
		return fmt.Errorf("%s: made, but its outside end is not found in crest's net namespace: %w", what, err)
	}
	if r.veths == nil {
		r.veths = &vethRun{}
	}
	r.veths.made = append(r.veths.made, madeVeth{in: d.GetName(), out: outside.name, outIndex: outside.index})
	if pair.Out == "" {
		r.log.Warn("veth made with its outside end named by the kernel: name it with --veth-pair IN=OUT",
			"inside", d.GetName(), "outside", outside.name, "ifindex", outside.index)
	} else {
		r.log.Debug("veth made", "inside", d.GetName(), "outside", outside.name, "ifindex", outside.index, "bridge", pair.Bridge)
	}
	for _, s := range v.Sysctls {
		if err := writeNetSysctl(s); err != nil {
			return err
		}
	}
	if bridge == 0 {
		return nil
	}
	// on the bridge, and up (SIOCBRADDIF then SIOCSIFFLAGS, as CRIU)
	err = inEngineNet(func() error {
		ec, err := openRtnl()
		if err != nil {
			return err
		}
		defer ec.close()
		body := make([]byte, unix.SizeofIfInfomsg)
		binary.NativeEndian.PutUint32(body[4:], uint32(outside.index))
		binary.NativeEndian.PutUint32(body[8:], unix.IFF_UP)
		binary.NativeEndian.PutUint32(body[12:], unix.IFF_UP)
		m := addAttr(nlMessage(unix.RTM_SETLINK, 0, body), unix.IFLA_MASTER, binary.NativeEndian.AppendUint32(nil, uint32(bridge)))
		return ec.talk(m, 0)
	})
	if err != nil {
		return fmt.Errorf("%s: its outside end %q onto bridge %q (ifindex %d), up: RTM_SETLINK: %w", what, outside.name, pair.Bridge, bridge, err)
	}
	return nil
}

// removeVeths deletes the outside ends of the pairs the restore made, and
// so the pairs, each if it is still the one made (its name at its
// ifindex). A pair already gone (with the tree's namespace) is passed
// over.
func (r *Restore) removeVeths() error {
	if r.veths == nil || len(r.veths.made) == 0 {
		return nil
	}
	made := r.veths.made
	r.veths.made = nil
	return inEngineNet(func() error {
		c, err := openRtnl()
		if err != nil {
			return err
		}
		defer c.close()
		var errs []error
		for _, v := range made {
			l, err := findLink(func(l link) bool { return l.index == v.outIndex && l.name == v.out })
			if err != nil {
				errs = append(errs, fmt.Errorf("veth %q of the tree: its outside end %q: %w", v.in, v.out, err))
				continue
			}
			if l == nil {
				continue
			}
			body := make([]byte, unix.SizeofIfInfomsg)
			binary.NativeEndian.PutUint32(body[4:], uint32(v.outIndex))
			if err := c.talk(nlMessage(unix.RTM_DELLINK, 0, body), 0); err != nil && !errors.Is(err, unix.ENODEV) {
				errs = append(errs, fmt.Errorf("veth %q of the tree: deleting its outside end %q (ifindex %d): RTM_DELLINK: %w", v.in, v.out, v.outIndex, err))
			}
		}
		return errors.Join(errs...)
	})
}

// inEngineNet runs fn on a goroutine of its own, not locked to a thread:
// one in crest's net namespace (only locked threads leave it).
func inEngineNet(fn func() error) error {
	done := make(chan error, 1)
	go func() { done <- fn() }()
	return <-done
}

// link is what crest asks of a net device.
type link struct {
	index, peer int32 // peer: IFLA_LINK, 0 for none
	name, kind  string
}

func kindOr(k string) string {
	if k == "" {
		return "device of no kind"
	}
	return k
}

// links calls keep with each device of c's namespace until it returns
// false.
func (c *rtnl) links(keep func(link) bool) error {
	body := make([]byte, unix.SizeofIfInfomsg)
	more := true
	return c.dump(unix.RTM_GETLINK, body, func(m []byte) error {
		if !more || len(m) < unix.SizeofNlMsghdr+unix.SizeofIfInfomsg {
			return nil
		}
		p := m[unix.SizeofNlMsghdr:]
		a := nlattr.Parse(p[unix.SizeofIfInfomsg:])
		l := link{index: int32(binary.NativeEndian.Uint32(p[4:])), name: string(bytes.TrimRight(a[unix.IFLA_IFNAME], "\x00"))}
		if v := a[unix.IFLA_LINK]; len(v) >= 4 {
			l.peer = int32(binary.NativeEndian.Uint32(v))
		}
		if li, ok := a[unix.IFLA_LINKINFO]; ok {
			l.kind = string(bytes.TrimRight(nlattr.Parse(li)[unix.IFLA_INFO_KIND], "\x00"))
		}
		more = keep(l)
		return nil
	})
}

// findLink is the first device of the calling thread's net namespace
// that match takes, nil for none.
func findLink(match func(link) bool) (*link, error) {
	c, err := openRtnl()
	if err != nil {
		return nil, err
	}
	defer c.close()
	var found *link
	err = c.links(func(l link) bool {
		if match(l) {
			found = &l
		}
		return found == nil
	})
	if err != nil {
		return nil, fmt.Errorf("RTM_GETLINK: %w", err)
	}
	return found, nil
}

// rtAttr is the route attribute typ with data, padded.
func rtAttr(typ uint16, data []byte) []byte {
	l := unix.SizeofRtAttr + len(data)
	a := make([]byte, (l+3)&^3)
	binary.NativeEndian.PutUint16(a[0:], uint16(l))
	binary.NativeEndian.PutUint16(a[2:], typ)
	copy(a[unix.SizeofRtAttr:], data)
	return a
}
