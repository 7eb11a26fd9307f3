package workloads

import (
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestStartCounter(t *testing.T) {
	p := Start(t, "counter")
	info := p.WaitFile(t, "info.txt")
	if !strings.HasPrefix(string(info), "buf=0x") {
		t.Fatalf("info.txt: %q", info)
	}
	p.WaitFile(t, "out.log")
	st, err := os.ReadFile("/proc/" + itoa(p.Pid) + "/status")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(st), "\nNSpid:\t"+itoa(p.Pid)+"\t1\n") {
		t.Errorf("workload is not pid 1 of its own namespace:\n%s", st)
	}
	fds, err := os.ReadDir("/proc/" + itoa(p.Pid) + "/fd")
	if err != nil {
		t.Fatal(err)
	}
	if len(fds) != 4 { // 0-2 on /dev/null and out.log
		t.Errorf("workload has %d fds, want 4", len(fds))
	}
	p.Kill(t)
	if Alive(p.Pid) {
		t.Errorf("workload %d alive after Kill", p.Pid)
	}
}

func TestWaitGoneTimeout(t *testing.T) {
	if WaitGone(os.Getpid(), 20*time.Millisecond) {
		t.Fatal("WaitGone reported the test process gone")
	}
}

func itoa(n int) string { return strconv.Itoa(n) }
