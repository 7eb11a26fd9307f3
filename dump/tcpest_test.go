package dump_test

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/crest-restore/crest/dump"
	"github.com/crest-restore/crest/images"
	"github.com/crest-restore/crest/test/check"
	"github.com/crest-restore/crest/test/workloads"
)

// TestDumpTCPEstablished dumps the tcpest workload's connections (v4 and
// v6, between its init and its child, their queues full): refused without
// TCPEstablished, naming the option, the task, the fd and the connection;
// with it and a tree left running or stopped, repair mode is switched off
// again and the connections go on (the workload checks every byte, and
// a socket left in repair mode fails its writes); the images hold a
// tcp-stream image for each end whose queues are the sizes files.img's
// entry says.
func TestDumpTCPEstablished(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("the dump needs root (ptrace, TCP_REPAIR)")
	}
	logs := []string{"out-init.log", "out-child.log"}
	t.Run("refused", func(t *testing.T) {
		p := workloads.Start(t, "tcpest")
		waitLines(t, p, logs[0], 3)
		parent := t.TempDir()
		_, err := dump.Dump(context.Background(), dump.Options{Pid: p.Pid, Dir: filepath.Join(parent, "images")})
		refusedCleanly(t, err, p, parent, logs[0], "task 1", "fd ", "socket:[", "--tcp-established", "ESTABLISHED", "127.0.0.1:", " -> ")
	})
	for _, tc := range []struct {
		name string
		opts dump.Options
	}{
		{"leave running", dump.Options{LeaveRunning: true}},
		{"leave stopped", dump.Options{LeaveStopped: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := workloads.Start(t, "tcpest")
			for _, l := range logs {
				waitLines(t, p, l, 3)
			}
			live, err := check.Live(p.Pid)
			if err != nil {
				t.Fatal(err)
			}
			opts := tc.opts
			opts.Pid, opts.Dir, opts.TCPEstablished = p.Pid, filepath.Join(t.TempDir(), "images"), true
			if _, err := dump.Dump(context.Background(), opts); err != nil {
				t.Fatal(err)
			}
			checkStreams(t, opts.Dir, 4)
			if opts.LeaveStopped {
				for _, lt := range live {
					if err := syscall.Kill(lt.Host, syscall.SIGCONT); err != nil {
						t.Fatal(err)
					}
				}
			}
			for _, l := range logs {
				n := len(waitLines(t, p, l, 1))
				lines := waitLines(t, p, l, n+100)
				if last := lines[len(lines)-1]; strings.Contains(last, "CORRUPT") {
					t.Errorf("%s: %s", l, last)
				}
			}
			if !workloads.Alive(p.Pid) {
				t.Errorf("tree %d died after the dump", p.Pid)
			}
		})
	}
}

// checkStreams checks that dir holds n connections, each with its
// tcp-stream image, whose queues are as long as the entry says (the
// images reader checks that), and that the inventory says no network lock
// holds them.
func checkStreams(t *testing.T, dir string, n int) {
	t.Helper()
	d, err := images.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	files, err := d.Files()
	if err != nil {
		t.Fatal(err)
	}
	conns := 0
	for _, f := range files {
		isk := f.GetIsk()
		if isk == nil || isk.GetDstPort() == 0 || isk.GetProto() != syscall.IPPROTO_TCP {
			continue
		}
		conns++
		if isk.GetState() != 1 {
			t.Errorf("socket %d: state %d, want ESTABLISHED", isk.GetIno(), isk.GetState())
		}
		st, err := d.TCPStream(isk.GetIno())
		if err != nil || st == nil {
			t.Errorf("socket %d: tcp-stream-%x.img: %v (nil: %v)", isk.GetIno(), isk.GetIno(), err, st == nil)
			continue
		}
		if e := st.Entry; e.GetMssClamp() != 1000 || e.GetOptMask()&7 != 7 || e.UnsqLen == nil || e.SndWnd == nil {
			t.Errorf("socket %d: mss_clamp %d, opt_mask %#x, unsq_len %v, snd_wnd %v: want 1000, timestamps, SACK and window scaling, both set",
				isk.GetIno(), e.GetMssClamp(), e.GetOptMask(), e.UnsqLen, e.SndWnd)
		}
		if len(st.Inq) == 0 {
			t.Errorf("socket %d: nothing in the receive queue", isk.GetIno())
		}
	}
	if conns != n {
		t.Errorf("%d connections in files.img, want %d", conns, n)
	}
	if lock := d.Inventory.GetNetworkLockMethod(); lock != 2 {
		t.Errorf("inventory: network_lock_method %d, want 2 (SKIP)", lock)
	}
}

// peerSource connects to the port in the file "port" and reads and writes
// a byte every tick, logging "peer N".
const peerSource = `#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <time.h>
#include "workload.h"

int main(void)
{
	struct sockaddr_in a = { .sin_family = AF_INET };
	struct timespec tick = { 0, 10 * 1000 * 1000 };
	char buf[16] = { 0 }, line[64];
	int s = socket(AF_INET, SOCK_STREAM, 0), fd = open("port", O_RDONLY), log = open_log("peer");

	if (fd < 0 || read(fd, buf, sizeof buf - 1) <= 0)
		return 2;
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	a.sin_port = htons(atoi(buf));
	if (connect(s, (struct sockaddr *)&a, sizeof a))
		return 2;
	for (unsigned long n = 1;; n++) {
		char c = (char)n;

		if (write(s, &c, 1) != 1 || read(s, &c, 1) != 1 || c != (char)n) {
			say(log, "CORRUPT peer\n");
			return 3;
		}
		snprintf(line, sizeof line, "peer %lu\n", n);
		say(log, line);
		nanosleep(&tick, NULL);
	}
}
`

// TestDumpTCPPeerOutside: a connection whose peer is not in the tree is
// refused when the tree is to be killed (no network lock keeps the peer
// from being reset), and the failed dump switches repair mode off again:
// the connection goes on.
func TestDumpTCPPeerOutside(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("the dump needs root (ptrace, TCP_REPAIR)")
	}
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "port"), []byte(fmt.Sprint(l.Addr().(*net.TCPAddr).Port)), 0o644); err != nil {
		t.Fatal(err)
	}
	hdr, err := os.ReadFile("../test/workloads/src/workload.h")
	if err != nil {
		t.Fatal(err)
	}
	bin, err := workloads.BuildSource("tcppeer", "tcppeer.c", []byte(strings.Replace(peerSource, `#include "workload.h"`, string(hdr), 1)), []string{"-static", "-O2"})
	if err != nil {
		t.Fatal(err)
	}
	p := workloads.StartIn(t, bin, dir)
	c, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	done := make(chan struct{})
	go func() { // the peer: echoes every byte
		defer close(done)
		b := make([]byte, 1)
		for {
			if _, err := c.Read(b); err != nil {
				return
			}
			if _, err := c.Write(b); err != nil {
				return
			}
		}
	}()
	waitLines(t, p, "out-peer.log", 3)
	parent := t.TempDir()
	_, err = dump.Dump(context.Background(), dump.Options{Pid: p.Pid, Dir: filepath.Join(parent, "images"), TCPEstablished: true})
	refusedCleanly(t, err, p, parent, "out-peer.log", "task 1", "fd 3", "its peer is not in the dumped tree", "network lock")
	lines := waitLines(t, p, "out-peer.log", 1)
	if last := lines[len(lines)-1]; strings.Contains(last, "CORRUPT") {
		t.Errorf("after the failed dump: %s", last)
	}
	c.SetDeadline(time.Now())
	p.Kill(t)
	<-done
}
