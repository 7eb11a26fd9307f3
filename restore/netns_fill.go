package restore

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/crest-restore/crest/images"
	"github.com/crest-restore/crest/internal/nlattr"
)

// Filling the tree's net namespace (netns.go), on the engine's thread that
// joined it in PREPARE_NAMESPACES (fillNamespaces), in CRIU's order
// (prepare_net_ns_first_stage, restore_links, ..._second_stage):
//
//   - the sysctls of all and default, net/unix, net/ipv4;
//   - the loopback: RTM_SETLINK of its ifindex with the image's flags,
//     name and mtu (restore_link_parms), then its own sysctls;
//   - veths, each pair made with its outside end in crest's namespace,
//     and their sysctls (netveth.go);
//   - addresses, routes and rules: the messages ip ... save kept are sent
//     back over netlink as ip ... restore sends them (NLM_F_CREATE, an
//     EEXIST answer taken as done; routes in its three passes; the
//     namespace's rules flushed first, as CRIU runs ip rule flush and ip
//     rule delete table local). crest replays them itself rather than
//     running ip: no iproute2 needed at restore, no process to fork from a
//     thread in the tree's namespace, and each message that fails is
//     named by its image and entry;
//   - iptables, ip6tables (a legacy iptables-restore, as CRIU picks it)
//     and nftables (nft -f -): text only these tools read, so they run,
//     forked from this thread (which puts them in the tree's namespace),
//     and each is checked to be there before it is given its input;
//   - then the tree's sockets, which the engine makes (netSockets); but
//     its unix sockets with path names in its own mount namespace, which
//     are made once its mounts are (mntns_files.go).
//
// Nothing here touches the engine's own net namespace: the thread is in
// the tree's (joinTreeNamespaces checks it is a new one) and so are the
// sockets it opens and the tools it starts.

// Step names in the root's timeline, besides "net namespace".
const (
	stepNetfilter  = "netfilter"
	stepNetSockets = "sockets"
)

func (r *Restore) fillNet() (err error) {
	// the veth pairs made here go when the namespace is not filled
	defer func() {
		if err == nil {
			return
		}
		if rerr := r.removeVeths(); rerr != nil { // netveth.go
			err = errors.Join(err, rerr)
		}
	}()
	step := r.namespaceStep
	ns := r.plan.Net
	begin := boottime()
	if err := step("net namespace", begin, r.setupNet(ns)); err != nil {
		return err
	}
	if len(ns.Iptables)+len(ns.Ip6tables)+len(ns.Nftables) > 0 {
		begin = boottime()
		if err := step(stepNetfilter, begin, r.restoreNetfilter(ns)); err != nil {
			return err
		}
	}
	if r.files != nil && r.files.net != nil && len(r.files.net.files) > 0 {
		begin = boottime()
		if err := step(stepNetSockets, begin, r.makeNetSockets()); err != nil {
			return err
		}
	}
	return nil
}

// setupNet does the sysctls, the loopback, the addresses, routes and
// rules of ns.
func (r *Restore) setupNet(ns *NetNamespace) error {
	for _, s := range ns.Sysctls {
		if err := writeNetSysctl(s); err != nil {
			return err
		}
	}
	c, err := openRtnl()
	if err != nil {
		return err
	}
	defer c.close()
	if err := setLoopback(c, ns); err != nil {
		return err
	}
	for _, s := range ns.LinkSysctls {
		if err := writeNetSysctl(s); err != nil {
			return err
		}
	}
	if err := r.makeVeths(c, ns); err != nil { // netveth.go
		return err
	}
	id := ns.ID
	if err := replay(c, netImage("ifaddr", id), ns.Addrs, nil); err != nil {
		return err
	}
	for _, rt := range []struct {
		kind string
		msgs []images.NetlinkMessage
	}{{"route", ns.Routes}, {"route6", ns.Routes6}} {
		// ip route restore's passes: routes of local addresses, then
		// of local networks, then through gateways
		for pass := 0; pass < 3; pass++ {
			if err := replay(c, netImage(rt.kind, id), rt.msgs, func(m images.NetlinkMessage) bool { return routePass(m) == pass }); err != nil {
				return err
			}
		}
	}
	if ns.HasRules {
		if err := flushRules(c); err != nil {
			return fmt.Errorf("%s: flushing the namespace's rules: %w", netImage("rule", id), err)
		}
		if err := replay(c, netImage("rule", id), ns.Rules, nil); err != nil {
			return err
		}
	}
	return nil
}

func writeNetSysctl(s NetSysctl) error {
	path := "/proc/sys/" + s.Path
	fd, err := unix.Open(path, unix.O_WRONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("%s: %w", s.From, &os.PathError{Op: "open", Path: path, Err: err})
	}
	defer unix.Close(fd)
	if _, err := unix.Write(fd, []byte(s.Value)); err != nil {
		return fmt.Errorf("%s: %w", s.From, &os.PathError{Op: fmt.Sprintf("write %q to", strings.TrimSuffix(s.Value, "\n")), Path: path, Err: err})
	}
	return nil
}

// setLoopback sets the loopback up as the image says, as CRIU's
// restore_link_parms does: RTM_SETLINK of its ifindex with its flags (no
// change mask: all of them), name, mtu and link-layer address if any.
func setLoopback(c *rtnl, ns *NetNamespace) error {
	d := ns.Loopback
	body := make([]byte, unix.SizeofIfInfomsg)
	body[0] = unix.AF_PACKET
	binary.NativeEndian.PutUint32(body[4:], d.GetIfindex())
	binary.NativeEndian.PutUint32(body[8:], d.GetFlags())
	m := nlMessage(unix.RTM_SETLINK, unix.NLM_F_CREATE, body)
	m = addAttr(m, unix.IFLA_IFNAME, []byte(d.GetName()))
	m = addAttr(m, unix.IFLA_MTU, binary.NativeEndian.AppendUint32(nil, d.GetMtu()))
	if d.Address != nil {
		m = addAttr(m, unix.IFLA_ADDRESS, d.GetAddress())
	}
	if err := c.talk(m, 0); err != nil {
		return fmt.Errorf("%s: loopback %q (ifindex %d, flags %#x, mtu %d): RTM_SETLINK: %w",
			netImage("netdev", ns.ID), d.GetName(), d.GetIfindex(), d.GetFlags(), d.GetMtu(), err)
	}
	return nil
}

// replay sends the messages of image file that pick takes (all when nil)
// back to the kernel, as ip ... restore does.
func replay(c *rtnl, file string, msgs []images.NetlinkMessage, pick func(images.NetlinkMessage) bool) error {
	for i, m := range msgs {
		if pick != nil && !pick(m) {
			continue
		}
		req := bytes.Clone(m.Raw)
		if err := c.talk(req, unix.NLM_F_CREATE); err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("%s: entry %d (offset %d, %s): %w", file, i, m.Offset, describeNetMsg(m), err)
		}
	}
	return nil
}

// routePass is the pass of ip route restore that sends route m: 0 for a
// route without gateway whose preferred source is its destination (or
// has none), 1 for one with another preferred source, 2 for one through a
// gateway; -1 for none (a multipath route with a preferred source).
func routePass(m images.NetlinkMessage) int {
	if len(m.Raw) < unix.SizeofNlMsghdr+unix.SizeofRtMsg {
		return -1
	}
	a := nlattr.Parse(m.Raw[unix.SizeofNlMsghdr+unix.SizeofRtMsg:])
	_, hasGW := a[unix.RTA_GATEWAY]
	src, hasSrc := a[unix.RTA_PREFSRC]
	dst, hasDst := a[unix.RTA_DST]
	same := hasSrc && hasDst && bytes.Equal(src, dst)
	switch {
	case hasGW:
		return 2
	case !hasSrc || same:
		return 0
	default:
		return 1
	}
}

// flushRules deletes every IPv4 rule of the namespace: ip rule flush,
// then ip rule delete table local (its rule has no priority for flush to
// match), as CRIU does before ip rule restore: the image has them all.
func flushRules(c *rtnl) error {
	var rules [][]byte
	body := make([]byte, 12) // struct fib_rule_hdr
	body[0] = unix.AF_INET
	if err := c.dump(unix.RTM_GETRULE, body, func(m []byte) error { rules = append(rules, m); return nil }); err != nil {
		return fmt.Errorf("RTM_GETRULE: %w", err)
	}
	for _, m := range rules {
		binary.NativeEndian.PutUint16(m[4:], unix.RTM_DELRULE)
		binary.NativeEndian.PutUint16(m[6:], 0)
		if err := c.talk(m, 0); err != nil && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("RTM_DELRULE: %w", err)
		}
	}
	return nil
}

// describeNetMsg names what an ip save message is, for errors.
func describeNetMsg(m images.NetlinkMessage) string {
	names := map[uint16]string{unix.RTM_NEWADDR: "RTM_NEWADDR", unix.RTM_NEWROUTE: "RTM_NEWROUTE", unix.RTM_NEWRULE: "RTM_NEWRULE"}
	s := names[m.Type]
	if s == "" {
		s = fmt.Sprintf("type %d", m.Type)
	}
	if p := m.Payload(); len(p) > 0 {
		s += fmt.Sprintf(" family %d", p[0])
	}
	return s
}

// restoreNetfilter restores the iptables, ip6tables and nftables rules of
// ns (restore_iptables, restore_nftables).
func (r *Restore) restoreNetfilter(ns *NetNamespace) error {
	want, err := nsIno("/proc/thread-self/ns/net")
	if err != nil {
		return err
	}
	for _, t := range []struct {
		kind string
		text []byte
		v6   bool
	}{{"iptables", ns.Iptables, false}, {"ip6tables", ns.Ip6tables, true}} {
		if len(t.text) == 0 {
			continue
		}
		file := netImage(t.kind, ns.ID)
		tool, err := legacyIptablesRestore(t.v6)
		if err != nil {
			return fmt.Errorf("%s: %w", file, err)
		}
		if _, err := r.runNetTool(want, t.text, tool, "-w"); err != nil {
			return fmt.Errorf("%s: %w", file, err)
		}
	}
	if len(ns.Nftables) > 0 {
		if _, err := r.runNetTool(want, ns.Nftables, "nft", "-f", "-"); err != nil {
			return fmt.Errorf("%s: %w", netImage("nftables", ns.ID), err)
		}
	}
	return nil
}

var legacyIptables struct {
	sync.Mutex
	tool [2]string
}

// legacyIptablesRestore is the iptables-restore (or ip6tables-restore)
// that restores legacy tables, as CRIU's get_legacy_iptables_bin picks
// it: the plain one unless it is iptables on nftables, else the
// -legacy- one; an error when there is none.
func legacyIptablesRestore(v6 bool) (string, error) {
	legacyIptables.Lock()
	defer legacyIptables.Unlock()
	i, name := 0, "iptables"
	if v6 {
		i, name = 1, "ip6tables"
	}
	if t := legacyIptables.tool[i]; t != "" {
		return t, nil
	}
	for _, tool := range []string{name + "-restore", name + "-legacy-restore"} {
		path, err := exec.LookPath(tool)
		if err != nil {
			continue
		}
		out, err := exec.Command(path, "--version").CombinedOutput()
		if err != nil || bytes.Contains(out, []byte("nf_tables")) {
			continue
		}
		legacyIptables.tool[i] = path
		return path, nil
	}
	return "", fmt.Errorf("legacy %s rules, and neither %s-restore nor %s-legacy-restore is a legacy one", name, name, name)
}

// runNetTool runs tool with args, forked from the calling thread, which
// is in the net namespace of inode want; it checks the tool is there too
// before it writes input to its standard input (the tools here read all
// of it before they change anything). It returns what the tool wrote.
func (r *Restore) runNetTool(want uint64, input []byte, tool string, args ...string) ([]byte, error) {
	path, err := exec.LookPath(tool)
	if err != nil {
		return nil, err // names the tool and $PATH
	}
	timeout := r.opts.StageTimeout
	if timeout == 0 {
		timeout = 10 * time.Second
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	in, feed, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	defer feed.Close()
	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, path, args...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = in, &out, &out
	cmd.WaitDelay = time.Second
	err = cmd.Start()
	in.Close()
	if err != nil {
		return nil, err
	}
	if got, err := nsIno(fmt.Sprintf("/proc/%d/ns/net", cmd.Process.Pid)); err != nil || got != want {
		cmd.Process.Kill()
		cmd.Wait()
		return nil, fmt.Errorf("%s (pid %d) started in net namespace %d, not the tree's %d (%v): killed before its input", path, cmd.Process.Pid, got, want, err)
	}
	_, werr := feed.Write(input)
	feed.Close()
	err = cmd.Wait()
	if err == nil && werr != nil {
		err = werr
	}
	if err != nil {
		if ctx.Err() != nil {
			err = fmt.Errorf("%w after %v", ctx.Err(), timeout)
		}
		return out.Bytes(), fmt.Errorf("%s %s: %w: %s", path, strings.Join(args, " "), err, bytes.TrimSpace(out.Bytes()))
	}
	return out.Bytes(), nil
}

// netSockets are the tree's sockets when it has a net namespace of its
// own. crest makes a tree's sockets in the engine, before the root is
// born (prepareFiles), but these must be made in the tree's namespace,
// which exists only from the root's birth on: prepareFiles keeps an fd
// number for each (a placeholder, /dev/null), which the plan hands the
// tasks, and PREPARE_NAMESPACES makes the sockets in the namespace and
// puts each onto its number (makeNetSockets), before any task takes one.
type netSockets struct {
	files []*File // in the order prepareFiles met them
}

// reserve returns the placeholder of socket f.
func (s *netSockets) reserve(f *File) (int, error) {
	fd, err := unix.Open("/dev/null", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, &os.PathError{Op: "open", Path: "/dev/null", Err: err}
	}
	s.files = append(s.files, f)
	return fd, nil
}

// makeNetSockets makes the sockets the plan's tasks hold, in the calling
// thread's net namespace (the tree's), then brings the half-closed TCP
// connections to their states (tcpFinish), which waits for every socket
// of the tree.
func (r *Restore) makeNetSockets() error {
	p, pr := r.plan, r.files
	put := func(k, fd int) error {
		defer unix.Close(fd)
		if err := unix.Dup3(fd, pr.fds[k], unix.O_CLOEXEC); err != nil {
			return os.NewSyscallError("dup3", err)
		}
		return nil
	}
	unixMade := false
	for _, f := range pr.net.files {
		k := pr.index[fileKey(f)]
		switch f.Kind {
		case FileInetSocket:
			fd, err := openInetSocket(f)
			if err != nil {
				return fmt.Errorf("%s: file %d (%s): %w", p.holder(f), f.ID, f.Inet, err)
			}
			if err := put(k, fd); err != nil {
				return err
			}
		case FileNetlinkSocket: // socknetlink.go
			fd, moved, err := openNetlinkSocket(f)
			if err != nil {
				return fmt.Errorf("%s: file %d: %w", p.holder(f), f.ID, err)
			}
			if moved {
				r.log.Warn("netlink socket bound to another port: its port was taken", "file", f.ID, "socket", f.Netlink.String())
			}
			if err := put(k, fd); err != nil {
				return err
			}
		case FilePacketSocket: // sockpacket.go
			fd, err := openPacketSocket(f)
			if err != nil {
				return fmt.Errorf("%s: file %d: %w", p.holder(f), f.ID, err)
			}
			if err := put(k, fd); err != nil {
				return err
			}
		case FileUnixSocket:
			if unixMade || f.Unix != nil && f.Unix.set != nil && f.Unix.set.inMnt {
				// the set with path names is made with the mounts,
				// in this namespace too (openMntFiles)
				continue
			}
			unixMade = true
			// every unix socket of the plan at once, as prepareFiles
			// makes them; each then goes onto its own number
			tmp := &prepared{index: map[string]int{}, fdBase: pr.fdBase, pipes: map[uint32]*pipeEnds{}}
			fd, err := tmp.openUnixSocket(f)
			if err != nil {
				tmp.close()
				return fmt.Errorf("%s: file %d: %w", p.holder(f), f.ID, err)
			}
			made := map[int]int{k: fd}
			for key, i := range tmp.index {
				if j, ok := pr.index[key]; ok {
					made[j] = tmp.fds[i]
				} else {
					pr.add(key, tmp.fds[i]) // held by no task: closed with the rest
				}
			}
			tmp.fds = nil
			var errs []error
			for j, fd := range made {
				if err := put(j, fd); err != nil {
					errs = append(errs, err)
				}
			}
			if err := errors.Join(errs...); err != nil {
				return err
			}
		}
	}
	return p.tcpFinish(pr)
}

// inTreeNet runs fn on a locked OS thread that joined the net namespace
// of the restored root (checked to be the tree's own, not the engine's)
// and goes back to the engine's after; fn gets the namespace's inode.
func (r *Restore) inTreeNet(fn func(want uint64) error) error {
	return onReturningThread(func() (error, error) {
		back, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			return &os.PathError{Op: "open", Path: "/proc/thread-self/ns/net", Err: err}, nil
		}
		defer unix.Close(back)
		err = joinTreeNamespaces(r.rootPidfd, r.rootPID, unix.CLONE_NEWNET)
		if err == nil {
			var want uint64
			if want, err = nsIno("/proc/thread-self/ns/net"); err == nil {
				err = fn(want)
			}
		}
		if berr := unix.Setns(back, unix.CLONE_NEWNET); berr != nil {
			return err, fmt.Errorf("back to the engine's net namespace: %w", os.NewSyscallError("setns", berr))
		}
		return err, nil
	})
}

// unlockNftChains deletes the jumps to chain CRIU of tables ip filter and
// ip6 filter, then the chains, as nft -a lists them in the calling
// thread's net namespace (inode want).
func (r *Restore) unlockNftChains(want uint64) error {
	out, err := r.runNetTool(want, []byte("list ruleset\n"), "nft", "-a", "-f", "-")
	if err != nil {
		return err
	}
	script := nftUnlockScript(out)
	if script == "" {
		return nil // gone already
	}
	_, err = r.runNetTool(want, []byte(script), "nft", "-f", "-")
	return err
}

// nftUnlockScript is what deletes CRIU's lock chains from ruleset (as nft
// -a list ruleset prints it, with handles): each rule that jumps to
// chain CRIU of table ip filter or ip6 filter, then those chains.
func nftUnlockScript(ruleset []byte) string {
	var rules, chains []string
	table, chain := "", ""
	sc := bufio.NewScanner(bytes.NewReader(ruleset))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		head, handle, _ := strings.Cut(line, " # handle ")
		switch {
		case strings.HasPrefix(line, "table "):
			table = strings.TrimSuffix(strings.TrimPrefix(head, "table "), " {")
			if table != "ip filter" && table != "ip6 filter" {
				table = ""
			}
		case table == "":
		case strings.HasPrefix(line, "chain "):
			chain = strings.TrimSuffix(strings.TrimPrefix(head, "chain "), " {")
			if chain == "CRIU" {
				chains = append(chains, "delete chain "+table+" CRIU\n")
			}
		case handle != "" && strings.HasSuffix(head, "jump CRIU"):
			rules = append(rules, fmt.Sprintf("delete rule %s %s handle %s\n", table, chain, handle))
		}
	}
	return strings.Join(append(rules, chains...), "")
}

// unlockNetNS takes CRIU's network lock off the tree's net namespace, as
// criu restore's network_unlock does for a tree with one of its own: CRIU
// locked the whole namespace at the dump, not each connection, and the
// lock came back with the namespace's rules (netLockOf). It runs where
// unlockNetwork runs (netlock.go): after RESTORE_SIGCHLD, before the
// connections leave repair mode. As there, a failure is a warning.
func (r *Restore) unlockNetNS() {
	l := r.plan.Net.Lock
	if !l.any() {
		return
	}
	begin := boottime()
	var done []string
	err := r.inTreeNet(func(want uint64) error {
		var errs []error
		if l.Table != "" {
			if _, err := r.runNetTool(want, []byte("delete table "+l.Table+"\n"), "nft", "-f", "-"); err != nil {
				errs = append(errs, err)
			} else {
				done = append(done, "table "+l.Table)
			}
		}
		// iptables_network_unlock_internal: the jumps to CRIU, then the
		// chain. In nftables (iptables on nf_tables), nft takes them
		// off by their handles, in one transaction: two short runs of
		// nft, where iptables-restore takes some 15 ms each family.
		// In the legacy tables, a legacy iptables-restore does, one
		// transaction each family.
		if (l.IPv4 || l.IPv6) && l.InNftables {
			if err := r.unlockNftChains(want); err != nil {
				errs = append(errs, err)
			} else {
				done = append(done, "chain CRIU of nftables")
			}
		}
		for _, f := range []struct {
			on bool
			v6 bool
		}{{l.IPv4 && !l.InNftables, false}, {l.IPv6 && !l.InNftables, true}} {
			if !f.on {
				continue
			}
			tool, err := legacyIptablesRestore(f.v6)
			if err == nil {
				script := "*filter\n:CRIU - [0:0]\n-D INPUT -j CRIU\n-D OUTPUT -j CRIU\n-X CRIU\nCOMMIT\n"
				_, err = r.runNetTool(want, []byte(script), tool, "-w", "--noflush")
			}
			if err != nil {
				errs = append(errs, err)
			} else {
				done = append(done, tool+" chain CRIU")
			}
		}
		return errors.Join(errs...)
	})
	root := r.plan.Root()
	if err != nil {
		r.log.Warn("CRIU's network lock of the tree's net namespace not removed: its traffic may stay blocked",
			"net namespace", r.plan.Net.ID, "removed", strings.Join(done, ", "), "err", err)
	} else {
		r.log.Debug("network unlock: the tree's net namespace", "removed", strings.Join(done, ", "))
	}
	e := StepEvent{PID: root.PID, TID: root.PID, Step: stepNetworkUnlock, Stage: StageRestoreSigchld, Begin: begin, Engine: true}
	if err == nil {
		e.End, e.Succeeded = boottime(), true
	} else {
		var errno syscall.Errno
		if errors.As(err, &errno) {
			e.Errno = int(errno)
		}
	}
	r.obs.StepDone(e)
}
