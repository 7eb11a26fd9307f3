package restore

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	"github.com/checkpoint-restore/go-criu/v8/crit/images/inventory"

	"github.com/crest-restore/crest/images"
	"github.com/crest-restore/crest/test/check"
)

// criuRule is a rule of criu dump's iptables lock, spelt as CRIU spells
// it (criu/netfilter.c iptables_connection_switch_raw, IPTABLES_CONN_CMD),
// written here anew from CRIU's code rather than from netlock.go's.
type criuRule struct {
	tool string
	line string // the arguments after the tool, with %s for -I, -D or -C
}

func (r criuRule) args(op string) []string { return strings.Fields(fmt.Sprintf(r.line, op)) }

// criuIptablesRules are the two rules criu dump inserts for connection s
// (iptables_connection_switch): (src, dst) for INPUT, (dst, src) for
// OUTPUT, each written with the destination first.
func criuIptablesRules(s *InetSocket) []criuRule {
	sw := func(src, dst netip.AddrPort, input bool) criuRule {
		tool := "ip6tables"
		if s.Family == unix.AF_INET || dst.Addr().Is4In6() {
			tool = "iptables"
		}
		chain := "OUTPUT"
		if input {
			chain = "INPUT"
		}
		return criuRule{tool, fmt.Sprintf("-w -t filter %%s %s --protocol tcp -m mark ! --mark 0xC114 --source %s --sport %d --destination %s --dport %d -j DROP",
			chain, dst.Addr().Unmap(), dst.Port(), src.Addr().Unmap(), src.Port())}
	}
	return []criuRule{sw(s.Src, s.Dst, true), sw(s.Dst, s.Src, false)}
}

// criuNftTable is the table criu dump's nftables lock makes: "inet CRIU-"
// and its run id, in a char[32] (nftables_get_table).
func criuNftTable(runID string) string {
	name := "inet CRIU-" + runID
	return name[:min(len(name), 31)]
}

// criuNftScript makes the table as criu dump does
// (nftables_init_connection_lock) and adds both directions of every
// connection (nftables_lock_connection, NFTABLES_CONN_CMD).
func criuNftScript(table string, conns []*InetSocket) string {
	var b strings.Builder
	fmt.Fprintf(&b, "create table %s\n", table)
	for _, hook := range []string{"output", "input"} {
		fmt.Fprintf(&b, "add chain %s %s { type filter hook %s priority 0; }\n", table, hook, hook)
		fmt.Fprintf(&b, "add rule %s %s meta mark 0xC114 accept\n", table, hook)
	}
	fmt.Fprintf(&b, "add set %s conns4 { type ipv4_addr . inet_service . ipv4_addr . inet_service; }\n", table)
	for _, hook := range []string{"output", "input"} {
		fmt.Fprintf(&b, "add rule %s %s ip saddr . tcp sport . ip daddr . tcp dport @conns4 drop\n", table, hook)
	}
	fmt.Fprintf(&b, "add set %s conns6 { type ipv6_addr . inet_service . ipv6_addr . inet_service; }\n", table)
	for _, hook := range []string{"output", "input"} {
		fmt.Fprintf(&b, "add rule %s %s ip6 saddr . tcp sport . ip6 daddr . tcp dport @conns6 drop\n", table, hook)
	}
	for _, s := range conns {
		src, dst := unmap(s.Src), unmap(s.Dst)
		set := "conns6"
		if src.Addr().Is4() {
			set = "conns4"
		}
		for _, d := range [][2]netip.AddrPort{{src, dst}, {dst, src}} {
			fmt.Fprintf(&b, "add element %s %s { %s . %d . %s . %d }\n", table, set, d[1].Addr(), d[1].Port(), d[0].Addr(), d[0].Port())
		}
	}
	return b.String()
}

// run runs a firewall tool and returns its exit status (-1: it did not
// run) and output.
func runTool(t *testing.T, stdin string, tool string, args ...string) (int, string) {
	t.Helper()
	cmd := exec.Command(tool, args...)
	cmd.Stdin = strings.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	if err != nil {
		if ee, ok := err.(*exec.ExitError); ok {
			return ee.ExitCode(), string(out)
		}
		t.Fatalf("%s %s: %v", tool, strings.Join(args, " "), err)
	}
	return 0, string(out)
}

// needFirewallTools fails without the tools of CRIU's locks: CI installs
// them (apt-get install iptables nftables).
func needFirewallTools(t *testing.T) {
	t.Helper()
	for _, tool := range []string{"iptables", "ip6tables", "nft"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%v: the network lock tests need iptables and nftables (apt-get install iptables nftables)", err)
		}
	}
}

// keepFirewall makes sure the test leaves the firewall as it found it:
// its rules and table go, and so do the filter tables iptables-nft made
// for them when they were not there and hold nothing else.
func keepFirewall(t *testing.T, rules []criuRule, table string) {
	t.Helper()
	_, tablesBefore := runTool(t, "", "nft", "list", "tables")
	t.Cleanup(func() {
		for _, r := range rules {
			for i := 0; i < 10; i++ {
				if st, _ := runTool(t, "", r.tool, r.args("-D")...); st != 0 {
					break
				}
			}
		}
		if table != "" {
			runTool(t, "", "nft", "delete", "table", table)
		}
		for _, fam := range []struct{ table, save string }{{"ip filter", "iptables-save"}, {"ip6 filter", "ip6tables-save"}} {
			if strings.Contains(tablesBefore, "table "+fam.table+"\n") {
				continue
			}
			if st, _ := runTool(t, "", "nft", "list", "table", fam.table); st != 0 {
				continue
			}
			if _, saved := runTool(t, "", fam.save); strings.Contains(saved, "\n-A ") {
				continue // someone's rules: not ours to remove
			}
			runTool(t, "", "nft", "delete", "table", fam.table)
		}
	})
}

// TestRestoreNetworkLock restores images of crest's dump whose inventory
// says criu dump locked the connections, with the lock set up as criu
// dump sets it: the restore removes it as criu restore does, and the
// connections carry data. A lock not there is passed over; a tool not
// there gets a warning naming each connection, the task, the fd and the
// command to run by hand, and the restore goes through.
func TestRestoreNetworkLock(t *testing.T) {
	needRoot(t)
	needFirewallTools(t)
	empty := t.TempDir() // a $PATH without the tools
	for _, tc := range []struct {
		name   string
		method *uint32 // inventory's network_lock_method, nil: none
		lock   bool    // set the lock up before the restore
		path   string  // $PATH for the restore, "" unchanged
		// what the log says: at debug level per rule (or table), and
		// warnings
		debug, warn []string
		nWarn       int
		flows       bool // the connections carry data after the restore
	}{
		{name: "iptables", method: proto.Uint32(networkLockIptables), lock: true,
			debug: []string{"rule deleted"}, flows: true},
		{name: "no method: iptables", lock: true,
			debug: []string{"rule deleted"}, flows: true},
		{name: "nftables", method: proto.Uint32(networkLockNftables), lock: true,
			debug: []string{"table deleted"}, flows: true},
		{name: "iptables, rules not there", method: proto.Uint32(networkLockIptables),
			debug: []string{"no such rule"}, flows: true},
		{name: "nftables, table not there", method: proto.Uint32(networkLockNftables),
			debug: []string{"no such table"}, flows: true},
		{name: "skip", method: proto.Uint32(networkLockSkip), path: empty, flows: true},
		{name: "iptables missing", method: proto.Uint32(networkLockIptables), lock: true, path: empty, nWarn: 8,
			warn: []string{"may stay blocked", "task ", " fd ", " -> ", "ESTABLISHED", "tables -w -t filter -D ", "executable file not found"}},
		{name: "nft missing", method: proto.Uint32(networkLockNftables), lock: true, path: empty, nWarn: 1,
			warn: []string{"may stay blocked", "nft delete table inet CRIU-", "task 1 fd ", "task 2 fd ", " -> ", "executable file not found"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, imgs := tcpestImages(t)
			conns := connections(t, imgs)
			var runID string
			editImage(t, imgs, "inventory.img", func(img *images.Image) {
				inv := img.Entries[0].Message.(*inventory.InventoryEntry)
				inv.NetworkLockMethod = tc.method
				runID = inv.GetDumpCriuRunId()
			})
			if runID == "" {
				t.Fatal("crest's dump wrote no dump_criu_run_id")
			}
			var rules []criuRule
			for _, c := range conns {
				rules = append(rules, criuIptablesRules(c)...)
			}
			table := criuNftTable(runID)
			keepFirewall(t, rules, table)
			nftables := tc.method != nil && *tc.method == networkLockNftables
			if tc.lock && nftables {
				if st, out := runTool(t, criuNftScript(table, conns), "nft", "-f", "-"); st != 0 {
					t.Fatalf("nft -f: exit %d: %s", st, out)
				}
			} else if tc.lock {
				for _, r := range rules {
					if st, out := runTool(t, "", r.tool, r.args("-I")...); st != 0 {
						t.Fatalf("%s %s: exit %d: %s", r.tool, r.args("-I"), st, out)
					}
				}
			}
			before := check.Snapshot(t, p.Dir, tcpestLogs)

			var logBuf bytes.Buffer
			opts := Options{TCPEstablished: true, Log: slog.New(slog.NewTextHandler(&logBuf, &slog.HandlerOptions{Level: slog.LevelDebug}))}
			d, err := images.Open(imgs)
			if err != nil {
				t.Fatal(err)
			}
			plan, err := NewPlan(d, opts)
			if err != nil {
				t.Fatal(err)
			}
			path := os.Getenv("PATH")
			if tc.path != "" {
				t.Setenv("PATH", tc.path) // for the restore only
			}
			r, err := Start(context.Background(), plan, opts)
			os.Setenv("PATH", path)
			if err != nil {
				t.Fatal(err)
			}
			root := r.RootPID()
			tl := r.Timeline()
			r.Detach()
			t.Cleanup(func() { killTree(t, root) })
			log := logBuf.String()

			var warns []string
			for _, l := range strings.Split(log, "\n") {
				if strings.Contains(l, "level=WARN") {
					warns = append(warns, l)
				}
			}
			if len(warns) != tc.nWarn {
				t.Errorf("%d warnings, want %d:\n%s", len(warns), tc.nWarn, strings.Join(warns, "\n"))
			}
			for _, w := range warns {
				for _, want := range tc.warn {
					if !strings.Contains(w, want) {
						t.Errorf("warning %q does not say %q", w, want)
					}
				}
			}
			if tc.nWarn > 0 && !nftables {
				// each rule, as the command that deletes it
				for _, r := range rules {
					cmd := r.tool + " " + strings.Replace(fmt.Sprintf(r.line, "-D"), " ! ", " '!' ", 1)
					if !strings.Contains(strings.Join(warns, "\n"), cmd) {
						t.Errorf("no warning says %q", cmd)
					}
				}
			}
			if tc.nWarn == 0 {
				for _, want := range tc.debug {
					n := strings.Count(log, want)
					wantN := 1
					if !nftables {
						wantN = 2 * len(conns)
					}
					if n != wantN {
						t.Errorf("the log says %q %d times, want %d:\n%s", want, n, wantN, log)
					}
				}
			}
			steps := 0
			for _, s := range tl.Steps {
				if s.Step == stepNetworkUnlock {
					steps++
					if s.Stage != StageRestoreSigchld || !s.Succeeded || !s.Engine || s.End < s.Begin || s.PID != plan.Root().PID {
						t.Errorf("step %+v", s)
					}
				}
			}
			if wantSteps := map[bool]int{true: 0, false: 1}[tc.method != nil && *tc.method == networkLockSkip]; steps != wantSteps {
				t.Errorf("%d %q steps in the timeline, want %d", steps, stepNetworkUnlock, wantSteps)
			}

			// what is left of the lock
			for _, r := range rules {
				st, out := runTool(t, "", r.tool, r.args("-C")...)
				if left := st == 0; left != (tc.lock && !nftables && tc.nWarn > 0) {
					t.Errorf("%s %s: exit %d %s", r.tool, strings.Join(r.args("-C"), " "), st, out)
				}
			}
			st, _ := runTool(t, "", "nft", "list", "table", table)
			if left := st == 0; left != (tc.lock && nftables && tc.nWarn > 0) {
				t.Errorf("table %s there after the restore: %v", table, left)
			}
			if tc.flows {
				check.Logs(t, p.Dir, before, tcpestLogs, 2*time.Second)
			}
		})
	}
}
