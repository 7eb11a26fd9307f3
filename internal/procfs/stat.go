// Package procfs reads the /proc files that the engine, the dumper and
// the tests all need, once.
package procfs

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// Stat is /proc/PID/stat (or /proc/PID/task/TID/stat) split into fields.
type Stat struct {
	Comm   string
	State  byte     // field 3: R, S, D, T, t, Z, X ...
	fields []string // fields 3 and on
}

// ReadStat reads and parses the stat file at path. An error reading it is
// returned as os.ReadFile gives it (a process gone between the open and
// the read gives ESRCH).
func ReadStat(path string) (*Stat, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	s, err := ParseStat(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return s, nil
}

// ParseStat parses the text of a stat file: "PID (COMM) S PPID ...",
// where COMM may hold spaces and parentheses.
func ParseStat(b []byte) (*Stat, error) {
	open, closing := bytes.IndexByte(b, '('), bytes.LastIndexByte(b, ')')
	if open < 0 || closing < open {
		return nil, fmt.Errorf("malformed: %q", b)
	}
	f := strings.Fields(string(b[closing+1:]))
	if len(f) < 2 || len(f[0]) != 1 {
		return nil, fmt.Errorf("malformed: %q", b)
	}
	return &Stat{Comm: string(b[open+1 : closing]), State: f[0][0], fields: f}, nil
}

// Field returns field n as proc(5) numbers them (1 pid, 2 comm, 3 state,
// 4 ppid ...), 0 for fields the file does not have. A negative field
// comes back as its two's complement: see SignedField.
func (s *Stat) Field(n int) uint64 {
	i := n - 3
	if i < 0 || i >= len(s.fields) {
		return 0
	}
	v, err := strconv.ParseUint(s.fields[i], 10, 64)
	if err != nil {
		iv, _ := strconv.ParseInt(s.fields[i], 10, 64)
		return uint64(iv)
	}
	return v
}

// SignedField returns field n as a signed number (nice, priority).
func (s *Stat) SignedField(n int) int64 {
	i := n - 3
	if i < 0 || i >= len(s.fields) {
		return 0
	}
	v, _ := strconv.ParseInt(s.fields[i], 10, 64)
	return v
}
