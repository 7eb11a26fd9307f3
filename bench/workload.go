package bench

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/crest-restore/crest/dump"
)

// The workload's program, built from workload/workload.c by its Makefile
// and committed, so that building crest needs no gcc.
//
//go:generate make -s -B -C workload
//go:embed crest-bench-workload
var workloadBinary []byte

// Workload is a process tree bench makes to restore: Tasks processes (init
// and its children, in a new pid namespace), each with Threads threads,
// MemKiB KiB of its own memory filled with data, FDs open files, and both
// ends of Pipes pipes that all tasks share, a byte in each; and ShmKiB
// KiB of shared anonymous memory (MAP_SHARED), filled with data, that all
// tasks share.
type Workload struct {
	Tasks, Threads int
	MemKiB         int64
	FDs, Pipes     int
	ShmKiB         int64
}

// ParseWorkload reads a workload such as
// "tasks=4,threads=2,mem=16M,fds=8,pipes=2,shm=4M" (mem and shm in K, M or
// G, KiB without a unit); what is not given is 1 task, 1 thread, 1 MiB,
// no extra fds, no pipes and no shared memory.
func ParseWorkload(spec string) (Workload, error) {
	w := Workload{Tasks: 1, Threads: 1, MemKiB: 1024}
	for _, kv := range strings.Split(spec, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(kv), "=")
		if !ok {
			return w, fmt.Errorf("workload %q: %q is not KEY=VALUE", spec, kv)
		}
		var err error
		switch k {
		case "tasks":
			w.Tasks, err = positive(v, 1, 1000)
		case "threads":
			w.Threads, err = positive(v, 1, 100)
		case "fds":
			w.FDs, err = positive(v, 0, 1000)
		case "pipes":
			w.Pipes, err = positive(v, 0, 500)
		case "mem":
			w.MemKiB, err = kibibytes(v)
		case "shm":
			w.ShmKiB, err = kibibytes(v)
		default:
			err = errors.New("not tasks, threads, mem, fds, pipes or shm")
		}
		if err != nil {
			return w, fmt.Errorf("workload %q: %s: %w", spec, k, err)
		}
	}
	return w, nil
}

func positive(v string, lo, hi int) (int, error) {
	n, err := strconv.Atoi(v)
	if err != nil || n < lo || n > hi {
		return 0, fmt.Errorf("%q: want a number from %d to %d", v, lo, hi)
	}
	return n, nil
}

// kibibytes reads 512, 512K, 16M or 1G as KiB, up to 64 GiB.
func kibibytes(v string) (int64, error) {
	mult := int64(1)
	switch {
	case strings.HasSuffix(v, "K"):
		v = strings.TrimSuffix(v, "K")
	case strings.HasSuffix(v, "M"):
		v, mult = strings.TrimSuffix(v, "M"), 1024
	case strings.HasSuffix(v, "G"):
		v, mult = strings.TrimSuffix(v, "G"), 1024*1024
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n < 0 || n*mult > 64<<20 {
		return 0, fmt.Errorf("%q: want a size up to 64G (K, M or G; KiB without a unit)", v)
	}
	return n * mult, nil
}

// String is the spec of w, as ParseWorkload reads it; shm only when w has
// shared memory.
func (w Workload) String() string {
	s := fmt.Sprintf("tasks=%d,threads=%d,mem=%s,fds=%d,pipes=%d", w.Tasks, w.Threads, size(w.MemKiB), w.FDs, w.Pipes)
	if w.ShmKiB > 0 {
		s += ",shm=" + size(w.ShmKiB)
	}
	return s
}

// size writes KiB as ParseWorkload reads it, in the largest unit that
// divides it.
func size(kib int64) string {
	switch {
	case kib > 0 && kib%(1<<20) == 0:
		return fmt.Sprintf("%dG", kib>>20)
	case kib > 0 && kib%(1<<10) == 0:
		return fmt.Sprintf("%dM", kib>>10)
	}
	return fmt.Sprintf("%dK", kib)
}

// DumpReport is what the dump of a workload took and wrote.
type DumpReport struct {
	Wall     time.Duration `json:"wall_ns"`      // dump.Dump, from the call to its return
	Freezing time.Duration `json:"freezing_ns"`  // stopping the tree
	Frozen   time.Duration `json:"frozen_ns"`    // how long the tree was stopped
	Pages    uint64        `json:"pages"`        // the tasks' own memory pages written
	Bytes    uint64        `json:"bytes"`        // their size
	Shared   uint64        `json:"shared_pages"` // shared memory's pages written
}

// Prepare starts the workload in a directory of its own, waits until every
// task is ready, dumps it with crest dump into an image directory there
// (which kills it) and returns that directory and what the dump took.
// cleanup removes it all; it must run after the last restore, which maps
// the workload's program from there.
func (w Workload) Prepare(ctx context.Context, log *slog.Logger) (images string, dumped DumpReport, cleanup func(), err error) {
	if w.Tasks < 1 || w.Threads < 1 || w.MemKiB < 0 || w.FDs < 0 || w.Pipes < 0 || w.ShmKiB < 0 {
		return "", dumped, nil, fmt.Errorf("workload %s: at least one task and one thread, and no negative size", w)
	}
	top, err := os.MkdirTemp("", "crest-bench-")
	if err != nil {
		return "", dumped, nil, err
	}
	remove := func() { os.RemoveAll(top) }
	defer func() {
		if err != nil {
			remove()
		}
	}()
	run := filepath.Join(top, "run")
	prog := filepath.Join(run, "workload")
	if err := os.Mkdir(run, 0o755); err != nil {
		return "", dumped, nil, err
	}
	if err := os.WriteFile(prog, workloadBinary, 0o755); err != nil {
		return "", dumped, nil, err
	}
	cmd := exec.Command(prog, strconv.Itoa(w.Tasks), strconv.Itoa(w.Threads), strconv.FormatInt(w.MemKiB, 10),
		strconv.Itoa(w.FDs), strconv.Itoa(w.Pipes), strconv.FormatInt(w.ShmKiB, 10))
	cmd.Dir = run
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWPID, Setsid: true}
	if err := cmd.Start(); err != nil {
		return "", dumped, nil, fmt.Errorf("workload %s: %w", w, err)
	}
	// The root is pid 1 of its namespace: killing it ends the tree. It
	// is reaped only after the dump: a wait for it meanwhile would take
	// the ptrace stops the dumper waits for (parent and tracer are one
	// process), so its end is watched through a pidfd.
	defer func() {
		cmd.Process.Kill()
		cmd.Wait()
	}()
	pidfd, err := unix.PidfdOpen(cmd.Process.Pid, 0)
	if err != nil {
		return "", dumped, nil, fmt.Errorf("workload %s: %w", w, os.NewSyscallError("pidfd_open", err))
	}
	defer unix.Close(pidfd)
	if err := w.waitReady(ctx, run, pidfd); err != nil {
		return "", dumped, nil, err
	}
	images = filepath.Join(top, "images")
	begin := time.Now()
	res, err := dump.Dump(ctx, dump.Options{Pid: cmd.Process.Pid, Dir: images, Log: log})
	if err != nil {
		return "", dumped, nil, fmt.Errorf("workload %s: dump: %w", w, err)
	}
	dumped = DumpReport{Wall: time.Since(begin), Freezing: res.Freezing, Frozen: res.Frozen, Pages: res.Pages, Bytes: res.Bytes,
		Shared: res.SharedPages}
	return images, dumped, remove, nil
}

// waitReady waits for every task's ready file, for 10 s at most.
func (w Workload) waitReady(ctx context.Context, run string, pidfd int) error {
	deadline := time.Now().Add(10 * time.Second)
	for i := 0; i < w.Tasks; {
		if _, err := os.Stat(filepath.Join(run, fmt.Sprintf("ready.%d", i))); err == nil {
			i++
			continue
		}
		fds := []unix.PollFd{{Fd: int32(pidfd), Events: unix.POLLIN}}
		if n, _ := unix.Poll(fds, 0); n > 0 {
			return fmt.Errorf("workload %s: it ended before task %d was ready", w, i)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("workload %s: task %d not ready after 10s", w, i)
		}
		if err := sleep(ctx, 5*time.Millisecond); err != nil {
			return fmt.Errorf("workload %s: waiting for task %d: %w", w, i, err)
		}
	}
	return nil
}
