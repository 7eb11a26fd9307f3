package dump

import (
	"fmt"
	"os"
	"strconv"
	"strings"
)

// This file reads the /proc files the dumper needs.

func procPath(pid int, elem ...string) string {
	return "/proc/" + strconv.Itoa(pid) + "/" + strings.Join(elem, "/")
}

// procStatus is /proc/PID/status (or /proc/PID/task/TID/status) as
// key -> value, values trimmed.
type procStatus map[string]string

func readStatus(path string) (procStatus, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	st := procStatus{}
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if ok {
			st[k] = strings.TrimSpace(v)
		}
	}
	return st, nil
}

// uints returns the whitespace-separated numbers of key in base.
func (s procStatus) uints(key string, base int) ([]uint64, error) {
	v, ok := s[key]
	if !ok {
		return nil, fmt.Errorf("no %q line", key)
	}
	var out []uint64
	for _, f := range strings.Fields(v) {
		n, err := strconv.ParseUint(f, base, 64)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", key, err)
		}
		out = append(out, n)
	}
	return out, nil
}

// last returns the last number of key: the value in the innermost pid
// namespace for NSpid, NSpgid, NSsid.
func (s procStatus) last(key string) (uint64, error) {
	v, err := s.uints(key, 10)
	if err != nil {
		return 0, err
	}
	if len(v) == 0 {
		return 0, fmt.Errorf("%s: empty", key)
	}
	return v[len(v)-1], nil
}

// listTids returns the tids of process pid, the leader first, the others
// in the kernel's order (the order they were made in), as CRIU lists
// them: not os.ReadDir's, which sorts the names as strings (host tid
// 10001 before 9998).
func listTids(pid int) ([]int, error) {
	dir, err := os.Open(procPath(pid, "task"))
	if err != nil {
		return nil, err
	}
	names, err := dir.Readdirnames(-1)
	dir.Close()
	if err != nil {
		return nil, err
	}
	tids := []int{pid}
	for _, name := range names {
		tid, err := strconv.Atoi(name)
		if err == nil && tid != pid {
			tids = append(tids, tid)
		}
	}
	return tids, nil
}

// readChildren returns the children of thread tid of process pid.
func readChildren(pid, tid int) ([]int, error) {
	b, err := os.ReadFile(procPath(pid, "task", strconv.Itoa(tid), "children"))
	if err != nil {
		return nil, err
	}
	var out []int
	for _, f := range strings.Fields(string(b)) {
		n, err := strconv.Atoi(f)
		if err != nil {
			return nil, fmt.Errorf("children of %d: %w", tid, err)
		}
		out = append(out, n)
	}
	return out, nil
}

// readUintFile reads a file holding one number in base.
func readUintFile(path string, base int) (uint64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	return strconv.ParseUint(strings.TrimSpace(string(b)), base, 64)
}

func readIntFile(path string) (int64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	return strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
}

// fdInfo is /proc/PID/fdinfo/FD.
type fdInfo struct {
	pos   uint64
	flags uint32 // open flags, octal in the file
	mntID int
	ino   uint64
	tfds  []string // the "tfd:" lines of an epoll, one per target
	rest  map[string]string
}

func readFdinfo(pid, fd int) (*fdInfo, error) {
	b, err := os.ReadFile(procPath(pid, "fdinfo", strconv.Itoa(fd)))
	if err != nil {
		return nil, err
	}
	fi := &fdInfo{rest: map[string]string{}}
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		v = strings.TrimSpace(v)
		switch k {
		case "pos":
			fi.pos, _ = strconv.ParseUint(v, 10, 64)
		case "flags":
			f, _ := strconv.ParseUint(v, 8, 32)
			fi.flags = uint32(f)
		case "mnt_id":
			fi.mntID, _ = strconv.Atoi(v)
		case "ino":
			fi.ino, _ = strconv.ParseUint(v, 10, 64)
		case "tfd":
			fi.tfds = append(fi.tfds, line)
		default:
			fi.rest[k] = v
		}
	}
	return fi, nil
}

// number returns the number on line key of the fdinfo in base.
func (fi *fdInfo) number(key string, base int) (uint64, error) {
	v, ok := fi.rest[key]
	if !ok {
		return 0, fmt.Errorf("no %q line", key)
	}
	n, err := strconv.ParseUint(v, base, 64)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", key, err)
	}
	return n, nil
}

// timespec returns the "(sec, nsec)" on line key of the fdinfo.
func (fi *fdInfo) timespec(key string) (sec, nsec uint64, err error) {
	v, ok := fi.rest[key]
	if !ok {
		return 0, 0, fmt.Errorf("no %q line", key)
	}
	inner, ok := strings.CutPrefix(v, "(")
	if ok {
		inner, ok = strings.CutSuffix(inner, ")")
	}
	s, ns, comma := strings.Cut(inner, ",")
	if !ok || !comma {
		return 0, 0, fmt.Errorf("%s: %q is not (sec, nsec)", key, v)
	}
	if sec, err = strconv.ParseUint(strings.TrimSpace(s), 10, 64); err != nil {
		return 0, 0, fmt.Errorf("%s: %w", key, err)
	}
	if nsec, err = strconv.ParseUint(strings.TrimSpace(ns), 10, 64); err != nil {
		return 0, 0, fmt.Errorf("%s: %w", key, err)
	}
	return sec, nsec, nil
}
