package dump_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/checkpoint-restore/go-criu/v8/crit/images/sk-inet"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/sk-opts"

	"github.com/crest-restore/crest/dump"
	"github.com/crest-restore/crest/images"
	"github.com/crest-restore/crest/test/workloads"
)

// tcphalfStates are the states of the tcphalf workload's ten ends (see
// test/workloads/src/tcphalf.c), by TCP state number, with the shutdown
// bits the kernel has for each.
var tcphalfStates = []struct {
	state, n int
	shutdown sk_opts.SkShutdown
}{
	{1, 1, sk_opts.SkShutdown_NONE},  // ESTABLISHED (b's reader)
	{4, 1, sk_opts.SkShutdown_WRITE}, // FIN_WAIT1
	{5, 4, sk_opts.SkShutdown_WRITE}, // FIN_WAIT2
	{8, 2, sk_opts.SkShutdown_READ},  // CLOSE_WAIT
	{9, 1, sk_opts.SkShutdown_BOTH},  // LAST_ACK
	{11, 1, sk_opts.SkShutdown_BOTH}, // CLOSING
}

// TestDumpTCPHalfClosed dumps the tcphalf workload (connections in
// FIN_WAIT1, FIN_WAIT2, CLOSE_WAIT, LAST_ACK and CLOSING, v4 and v6,
// between its init and its child): refused without TCPEstablished,
// naming a half-closed state; with it and the tree left running, repair
// mode is switched off again and every end stays in its state (the
// workload checks that every tick). The images hold each end with its
// state and shutdown bits, the FINs counted as CRIU counts them: in the
// sequence numbers, not in the queue lengths. Whatever the FIN_WAIT2 end
// sent, its FIN included, its peer received: one's outq_seq is the
// other's inq_seq.
func TestDumpTCPHalfClosed(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("the dump needs root (ptrace, TCP_REPAIR)")
	}
	logs := []string{"out-init.log", "out-child.log"}
	t.Run("refused", func(t *testing.T) {
		p := workloads.Start(t, "tcphalf")
		waitLines(t, p, logs[0], 3)
		parent := t.TempDir()
		_, err := dump.Dump(context.Background(), dump.Options{Pid: p.Pid, Dir: filepath.Join(parent, "images")})
		refusedCleanly(t, err, p, parent, logs[0], "task 1", "fd ", "--tcp-established", "_WAIT")
	})
	t.Run("leave running", func(t *testing.T) {
		p := workloads.Start(t, "tcphalf")
		for _, l := range logs {
			waitLines(t, p, l, 3)
		}
		opts := dump.Options{Pid: p.Pid, Dir: filepath.Join(t.TempDir(), "images"), TCPEstablished: true, LeaveRunning: true}
		if _, err := dump.Dump(context.Background(), opts); err != nil {
			t.Fatal(err)
		}
		for _, l := range logs {
			n := len(waitLines(t, p, l, 1))
			lines := waitLines(t, p, l, n+100)
			if last := lines[len(lines)-1]; strings.Contains(last, "CORRUPT") {
				t.Errorf("%s: %s", l, last)
			}
		}
		checkHalfClosedImages(t, opts.Dir)
	})
}

func checkHalfClosedImages(t *testing.T, dir string) {
	t.Helper()
	d, err := images.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	files, err := d.Files()
	if err != nil {
		t.Fatal(err)
	}
	type end struct {
		isk              *sk_inet.InetSkEntry
		inqSeq, outqSeq  uint32
		outqLen, unsqLen uint32
	}
	byTuple := map[string]end{}
	count := map[int]int{}
	tuple := func(isk *sk_inet.InetSkEntry, rev bool) string {
		a, b := fmt.Sprint(isk.GetSrcAddr(), isk.GetSrcPort()), fmt.Sprint(isk.GetDstAddr(), isk.GetDstPort())
		if rev {
			a, b = b, a
		}
		return a + " " + b
	}
	for _, f := range files {
		isk := f.GetIsk()
		if isk == nil || isk.GetDstPort() == 0 || isk.GetProto() != syscall.IPPROTO_TCP {
			continue
		}
		st, err := d.TCPStream(isk.GetIno())
		if err != nil || st == nil {
			t.Fatalf("socket %d: tcp-stream-%x.img: %v (nil: %v)", isk.GetIno(), isk.GetIno(), err, st == nil)
		}
		e := st.Entry
		count[int(isk.GetState())]++
		for _, s := range tcphalfStates {
			if int(isk.GetState()) == s.state && isk.GetShutdown() != s.shutdown {
				t.Errorf("socket %d in state %d: shutdown %v, want %v", isk.GetIno(), s.state, isk.GetShutdown(), s.shutdown)
			}
		}
		if e.GetUnsqLen() > e.GetOutqLen() {
			t.Errorf("socket %d in state %d: unsq_len %d > outq_len %d", isk.GetIno(), isk.GetState(), e.GetUnsqLen(), e.GetOutqLen())
		}
		// a FIN stuck behind a closed window: the data before it is
		// all unsent, the FIN itself counted in neither length
		if s := isk.GetState(); (s == 4 || s == 9 || s == 11) && (e.GetOutqLen() == 0 || e.GetUnsqLen() != e.GetOutqLen()) {
			t.Errorf("socket %d in state %d: outq_len %d, unsq_len %d: want the whole send queue unsent", isk.GetIno(), s, e.GetOutqLen(), e.GetUnsqLen())
		}
		byTuple[tuple(isk, false)] = end{isk, e.GetInqSeq(), e.GetOutqSeq(), e.GetOutqLen(), e.GetUnsqLen()}
	}
	for _, s := range tcphalfStates {
		if count[s.state] != s.n {
			t.Errorf("%d connection ends in state %d, want %d (all: %v)", count[s.state], s.state, s.n, count)
		}
	}
	for _, x := range byTuple {
		if x.isk.GetState() != 5 {
			continue
		}
		y, ok := byTuple[tuple(x.isk, true)]
		if !ok {
			t.Errorf("socket %d (FIN_WAIT2): its peer is not in the images", x.isk.GetIno())
			continue
		}
		if x.outqSeq != y.inqSeq {
			t.Errorf("socket %d (FIN_WAIT2): outq_seq %d, its peer %d (state %d) has inq_seq %d: the FIN is counted differently", x.isk.GetIno(), x.outqSeq, y.isk.GetIno(), y.isk.GetState(), y.inqSeq)
		}
	}
}
