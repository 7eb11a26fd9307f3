package restore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"time"
)

// CRIU's network lock, taken over on restore. criu dump --tcp-established
// keeps the peers of the connections it dumps from resetting them while
// their sockets are gone: with --network-lock iptables (the default) it
// inserts, per connection, an INPUT and an OUTPUT DROP rule of the
// connection's four-tuple for packets without SOCCR_MARK (criu/netfilter.c
// IPTABLES_CONN_CMD, through iptables or ip6tables); with nftables it
// makes a table "inet CRIU-<run id>" whose sets conns4 and conns6 hold
// both directions of every connection. The dump leaves the lock in place
// for the restore, and criu restore removes it once the tasks are restored
// and before the connections leave repair mode (cr-restore.c
// network_unlock: rst_unlock_tcp_connections deletes each restored
// connection's two rules, nftables_network_unlock deletes the table).
// crest does the same at the same point (after RESTORE_SIGCHLD, before
// tcpRepairOff), with the same commands, run without a shell; the
// inventory's network_lock_method says which lock (none when absent:
// iptables, as CRIU assumes for old images), dump_criu_run_id names the
// table. crest's own dumps set no lock and say SKIP (dump/tcpest.go).
//
// The tree is restored by then: nothing here fails the restore. A rule or
// table that is not there was removed already (by hand, or a restore that
// got this far before) and is logged at debug level; a tool that is
// missing or fails gets a warning naming the connections that may stay
// blocked and the command to run by hand.

// Inventory's network_lock_method values (CRIU's NETWORK_LOCK_*).
const (
	networkLockIptables = 0
	networkLockNftables = 1
	networkLockSkip     = 2
)

// soccrMark is SOCCR_MARK as CRIU's rules spell it: packets with it (the
// ones CRIU itself sends during a restore) pass the lock.
const soccrMark = "0xC114"

// stepNetworkUnlock names the engine's step in the timeline.
const stepNetworkUnlock = "network unlock"

// lockedConn is a restored connection and the fds that hold it.
type lockedConn struct {
	file    *File
	holders []string // "task 1 fd 3"
}

func (c lockedConn) String() string {
	return fmt.Sprintf("%s (file %d of files.img, %s)", c.file.Inet, c.file.ID, strings.Join(c.holders, ", "))
}

// lockedConns are the connections of the plan, by file id.
func (p *Plan) lockedConns() []lockedConn {
	byFile := map[*File]int{}
	var conns []lockedConn
	for _, t := range p.Tasks {
		for _, fd := range t.FDs {
			f := fd.File
			if f == nil || f.Kind != FileInetSocket || f.Inet.Conn == nil {
				continue
			}
			i, ok := byFile[f]
			if !ok {
				i = len(conns)
				byFile[f] = i
				conns = append(conns, lockedConn{file: f})
			}
			conns[i].holders = append(conns[i].holders, fmt.Sprintf("task %d fd %d", t.PID, fd.FD))
		}
	}
	sort.Slice(conns, func(i, j int) bool { return conns[i].file.ID < conns[j].file.ID })
	return conns
}

// lockRule is one iptables rule of CRIU's lock of a connection: DROP the
// packets from Src to Dst in Chain that do not carry SOCCR_MARK.
type lockRule struct {
	Tool     string // iptables or ip6tables
	Chain    string // INPUT or OUTPUT
	Src, Dst netip.AddrPort
}

// connLockRules are the rules criu dump inserts for the connection s
// (iptables_connection_switch): INPUT from the peer, OUTPUT to it. As in
// CRIU, a connection of an AF_INET6 socket between IPv4-mapped addresses
// is IPv4's, locked with iptables.
func connLockRules(s *InetSocket) []lockRule {
	rule := func(chain string, src, dst netip.AddrPort) lockRule {
		tool := "ip6tables"
		if dst.Addr().Is4In6() {
			src, dst = unmap(src), unmap(dst)
		}
		if dst.Addr().Is4() {
			tool = "iptables"
		}
		// the image's addresses carry no zone; iptables takes none
		src = netip.AddrPortFrom(src.Addr().WithZone(""), src.Port())
		dst = netip.AddrPortFrom(dst.Addr().WithZone(""), dst.Port())
		return lockRule{Tool: tool, Chain: chain, Src: src, Dst: dst}
	}
	return []lockRule{rule("INPUT", s.Dst, s.Src), rule("OUTPUT", s.Src, s.Dst)}
}

// args are the rule's command-line arguments with op (-I or -D), as
// IPTABLES_CONN_CMD writes them. -w waits for the xtables lock, which
// CRIU passes when iptables knows it (every iptables since 1.4.20).
func (r lockRule) args(op string) []string {
	return []string{"-w", "-t", "filter", op, r.Chain, "--protocol", "tcp", "-m", "mark", "!", "--mark", soccrMark,
		"--source", r.Src.Addr().String(), "--sport", strconv.Itoa(int(r.Src.Port())),
		"--destination", r.Dst.Addr().String(), "--dport", strconv.Itoa(int(r.Dst.Port())), "-j", "DROP"}
}

// command is the shell command that deletes the rule, for messages.
func (r lockRule) command() string {
	a := r.args("-D")
	for i, s := range a {
		if s == "!" {
			a[i] = "'!'"
		}
	}
	return r.Tool + " " + strings.Join(a, " ")
}

// nftablesTable is the table of CRIU's nftables lock of the dump
// (nftables_get_table): "inet CRIU-" and the dump's run id, cut as CRIU
// cuts it (snprintf into 32 bytes); images without a run id (CRIU before
// 3.17) named it after the root's pid, which CRIU takes from the restored
// root (the same pid unless the tree had its own pid namespace).
func nftablesTable(runID *string, rootPID int) string {
	name := "inet CRIU-" + strconv.Itoa(rootPID)
	if runID != nil {
		name = "inet CRIU-" + *runID
	}
	if len(name) > 31 {
		name = name[:31]
	}
	return name
}

// unlockNetwork removes CRIU's lock of the restored connections, as
// criu restore does (see above), and records the step for the root.
func (r *Restore) unlockNetwork(ctx context.Context) {
	if r.plan.Net != nil {
		// CRIU locked the tree's own net namespace as a whole
		r.unlockNetNS() // netns_fill.go
		return
	}
	inv := r.plan.Dir.Inventory
	conns := r.plan.lockedConns()
	if inv == nil || len(conns) == 0 {
		return
	}
	method := uint32(networkLockIptables)
	if inv.NetworkLockMethod != nil {
		method = *inv.NetworkLockMethod
	}
	if method == networkLockSkip {
		return
	}
	begin := boottime()
	switch method {
	case networkLockIptables:
		for _, c := range conns {
			for _, rule := range connLockRules(c.file.Inet) {
				r.deleteLockRule(ctx, c, rule)
			}
		}
	case networkLockNftables:
		r.deleteLockTable(ctx, conns, nftablesTable(inv.DumpCriuRunId, r.rootPID))
	default:
		r.log.Warn("CRIU's network lock not removed: inventory.img has an unknown network_lock_method; the connections may stay blocked",
			"network_lock_method", method, "connections", connList(conns))
	}
	root := r.plan.Root()
	r.obs.StepDone(StepEvent{PID: root.PID, TID: root.PID, Step: stepNetworkUnlock, Stage: StageRestoreSigchld,
		Begin: begin, End: boottime(), Succeeded: true, Engine: true})
}

// deleteLockRule deletes rule of connection c.
func (r *Restore) deleteLockRule(ctx context.Context, c lockedConn, rule lockRule) {
	out, err := r.runLockTool(ctx, rule.Tool, rule.args("-D")...)
	switch {
	case err == nil:
		r.log.Debug("network unlock: rule deleted", "connection", c.String(), "rule", rule.command())
	case errors.Is(err, errToolFailed) && bytes.Contains(out, []byte("does a matching rule exist")):
		r.log.Debug("network unlock: no such rule", "connection", c.String(), "rule", rule.command())
	default:
		r.log.Warn("CRIU's network lock of a connection not removed: it may stay blocked; delete the rule by hand",
			"connection", c.String(), "rule", rule.command(), "err", err)
	}
}

// deleteLockTable deletes table, CRIU's nftables lock of conns.
func (r *Restore) deleteLockTable(ctx context.Context, conns []lockedConn, table string) {
	cmd := "nft delete table " + table
	out, err := r.runLockTool(ctx, "nft", "delete", "table", table)
	switch {
	case err == nil:
		r.log.Debug("network unlock: table deleted", "table", table, "connections", connList(conns))
	case errors.Is(err, errToolFailed) && bytes.Contains(out, []byte("No such file or directory")):
		r.log.Debug("network unlock: no such table", "table", table, "connections", connList(conns))
	default:
		r.log.Warn("CRIU's network lock not removed: the connections may stay blocked; delete the table by hand",
			"table", table, "command", cmd, "connections", connList(conns), "err", err)
	}
}

// errToolFailed marks a lock tool that ran and exited with a failure.
var errToolFailed = errors.New("failed")

// runLockTool runs tool with args, bounded by the stage timeout, and
// returns what it wrote. Its error names the command and, when it ran,
// its exit status and its output.
func (r *Restore) runLockTool(ctx context.Context, tool string, args ...string) ([]byte, error) {
	path, err := exec.LookPath(tool)
	if err != nil {
		return nil, err // names the tool and $PATH
	}
	ctx, cancel := context.WithTimeout(ctx, r.opts.StageTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, path, args...)
	cmd.WaitDelay = time.Second
	out, err := cmd.CombinedOutput()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) && ctx.Err() == nil {
			return out, fmt.Errorf("%s %w (%v): %s", path, errToolFailed, ee.ProcessState, bytes.TrimSpace(out))
		}
		if ctx.Err() != nil {
			err = fmt.Errorf("%w after %v", ctx.Err(), r.opts.StageTimeout)
		}
		return out, fmt.Errorf("%s: %w", path, err)
	}
	return out, nil
}

// connList names conns for a log record.
func connList(conns []lockedConn) string {
	s := make([]string, len(conns))
	for i, c := range conns {
		s[i] = c.String()
	}
	return strings.Join(s, "; ")
}
