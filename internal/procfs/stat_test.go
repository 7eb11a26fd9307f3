package procfs

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"syscall"
	"testing"
)

func TestParseStat(t *testing.T) {
	for _, tc := range []struct {
		in         string
		comm       string
		state      byte
		ppid, nice int64
		err        bool
	}{
		{in: "42 (sleep) S 1 42 42 0 -1 4194560 100 0 0 0 0 0 0 0 20 -5 1", comm: "sleep", state: 'S', ppid: 1, nice: -5},
		{in: "7 (a) (b) c) Z 3 7 7", comm: "a) (b) c", state: 'Z', ppid: 3},
		{in: "7 ( ) R 0", comm: " ", state: 'R', ppid: 0},
		{in: "7 sleep S 1", err: true},
		{in: "7 (sleep)", err: true},
		{in: "7 (sleep) SS 1", err: true},
		{in: "7 (sleep) S", err: true},
	} {
		s, err := ParseStat([]byte(tc.in))
		if tc.err {
			if err == nil {
				t.Errorf("%q: parsed, want an error", tc.in)
			}
			continue
		}
		if err != nil {
			t.Errorf("%q: %v", tc.in, err)
			continue
		}
		if s.Comm != tc.comm || s.State != tc.state || int64(s.Field(4)) != tc.ppid || s.SignedField(19) != tc.nice {
			t.Errorf("%q: comm %q state %c ppid %d nice %d, want %q %c %d %d", tc.in, s.Comm, s.State, s.Field(4), s.SignedField(19), tc.comm, tc.state, tc.ppid, tc.nice)
		}
		if s.Field(1000) != 0 || s.Field(2) != 0 {
			t.Errorf("%q: fields out of range not 0", tc.in)
		}
	}
}

func TestReadStat(t *testing.T) {
	s, err := ReadStat(fmt.Sprintf("/proc/%d/stat", os.Getpid()))
	if err != nil {
		t.Fatal(err)
	}
	if s.State != 'R' || int(s.Field(4)) != os.Getppid() || !strings.HasPrefix("procfs.test", s.Comm) {
		t.Errorf("own stat: state %c ppid %d comm %q", s.State, s.Field(4), s.Comm)
	}
	if _, err := ReadStat("/proc/0/stat"); !errors.Is(err, syscall.ENOENT) {
		t.Errorf("missing process: %v, want ENOENT", err)
	}
}
