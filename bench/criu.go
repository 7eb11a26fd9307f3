package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// CompareConfig is a side-by-side run of `crest restore -d` and `criu
// restore -d` on one image directory, each as a user runs it: a process
// started, the tree restored, the process gone.
type CompareConfig struct {
	Dir   string // the image directory
	Runs  int    // restores of each
	Crest string // the crest binary
	CRIU  string // the criu binary
	// Reset, when set, runs before every restore (see Config.Reset).
	Reset  func() error
	Settle time.Duration // pause before every restore
}

// CompareReport is what a side-by-side run measured: the wall time of
// each command, its process start included, in the order they ran
// (crest first in odd rounds, criu first in even ones).
type CompareReport struct {
	Dir   string             `json:"dir"`
	Runs  int                `json:"runs"`
	Crest Summary            `json:"crest"`
	CRIU  Summary            `json:"criu"`
	Times [][2]time.Duration `json:"times_ns"` // per round: crest, criu
	// KdatCached says whether CRIU can keep its kernel checks between
	// runs: its cache (/run/criu.kdat) is written only on a tmpfs.
	KdatCached bool `json:"kdat_cached"`
}

// Compare restores cfg.Dir cfg.Runs times with each binary, taking turns,
// and kills each restored tree (and waits until it is gone) before the
// next restore. The calling process becomes a child subreaper meanwhile,
// so that it can reap the restored roots both commands leave behind.
func Compare(ctx context.Context, cfg CompareConfig) (*CompareReport, error) {
	if cfg.Runs < 1 {
		return nil, fmt.Errorf("bench: %d runs", cfg.Runs)
	}
	for _, bin := range []string{cfg.Crest, cfg.CRIU} {
		if _, err := exec.LookPath(bin); err != nil {
			return nil, fmt.Errorf("bench: %w", err)
		}
	}
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		return nil, fmt.Errorf("bench: PR_SET_CHILD_SUBREAPER: %w", err)
	}
	defer unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)
	tmp, err := os.MkdirTemp("", "crest-compare-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)

	// CRIU writes stats-restore into the directory it restores: both
	// restore a copy, which leaves the user's images as they were.
	imgs := filepath.Join(tmp, "images")
	if err := copyImages(cfg.Dir, imgs); err != nil {
		return nil, fmt.Errorf("bench: %w", err)
	}
	rep := &CompareReport{Dir: cfg.Dir, Runs: cfg.Runs, KdatCached: onTmpfs("/run")}
	var crest, criu []time.Duration
	for i := range cfg.Runs {
		var round [2]time.Duration
		order := []int{0, 1}
		if i%2 == 1 {
			order = []int{1, 0}
		}
		for _, k := range order {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
			if cfg.Reset != nil {
				if err := cfg.Reset(); err != nil {
					return nil, fmt.Errorf("bench: reset: %w", err)
				}
			}
			time.Sleep(cfg.Settle)
			pidfile := filepath.Join(tmp, "pid")
			os.Remove(pidfile)
			var cmd *exec.Cmd
			if k == 0 {
				cmd = exec.CommandContext(ctx, cfg.Crest, "restore", "-D", imgs, "-d", "--pidfile", pidfile)
			} else {
				cmd = exec.CommandContext(ctx, cfg.CRIU, "restore", "-D", imgs, "-d", "--pidfile", pidfile,
					"-o", filepath.Join(tmp, "restore.log"))
			}
			var out strings.Builder
			cmd.Stdout, cmd.Stderr = io.Discard, &out
			begin := time.Now()
			err := cmd.Run()
			round[k] = time.Since(begin)
			if err != nil {
				return nil, fmt.Errorf("bench: round %d: %s: %w: %s%s", i+1, cmd, err, out.String(), criuLog(k, tmp))
			}
			if err := killRestored(pidfile); err != nil {
				return nil, fmt.Errorf("bench: round %d: %s: %w", i+1, filepath.Base(cmd.Path), err)
			}
		}
		crest, criu = append(crest, round[0]), append(criu, round[1])
		rep.Times = append(rep.Times, round)
	}
	rep.Crest, rep.CRIU = Summarize(crest), Summarize(criu)
	return rep, nil
}

// copyImages copies the regular files of image directory src into dst.
func copyImages(src, dst string) error {
	ents, err := os.ReadDir(src)
	if err != nil {
		return err
	}
	if err := os.Mkdir(dst, 0o700); err != nil {
		return err
	}
	for _, e := range ents {
		if !e.Type().IsRegular() {
			continue
		}
		if err := copyFile(filepath.Join(src, e.Name()), filepath.Join(dst, e.Name())); err != nil {
			return err
		}
	}
	return nil
}

// copyFile copies src to a new file dst, streaming: pages images may be
// larger than the memory bench should take.
func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// criuLog is the end of CRIU's log after a failed criu restore (k 1).
func criuLog(k int, tmp string) string {
	if k != 1 {
		return ""
	}
	b, err := os.ReadFile(filepath.Join(tmp, "restore.log"))
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	return "\n" + strings.Join(lines[max(0, len(lines)-10):], "\n")
}

// killRestored kills the tree whose root's pid is in pidfile, reaps the
// root (this process is the subreaper of the orphaned root) and waits
// until it is gone: it is the init of its pid namespace, so the tree
// goes with it.
func killRestored(pidfile string) error {
	b, err := os.ReadFile(pidfile)
	if err != nil {
		return err
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return fmt.Errorf("pidfile %q: no pid", b)
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		return fmt.Errorf("kill %d: %w", pid, err)
	}
	for {
		_, err := syscall.Wait4(pid, nil, syscall.WALL, nil)
		if err == nil || errors.Is(err, syscall.ECHILD) {
			break
		}
		if !errors.Is(err, syscall.EINTR) {
			return fmt.Errorf("wait4 %d: %w", pid, err)
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); errors.Is(err, os.ErrNotExist) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("restored root %d still there 10s after SIGKILL", pid)
		}
		time.Sleep(time.Millisecond)
	}
}

// onTmpfs says whether dir is on a tmpfs.
func onTmpfs(dir string) bool {
	var st unix.Statfs_t
	return unix.Statfs(dir, &st) == nil && st.Type == unix.TMPFS_MAGIC
}

// Markdown writes the side-by-side report.
func (r *CompareReport) Markdown(w io.Writer) error {
	var b strings.Builder
	fmt.Fprintf(&b, "# crest restore -d and criu restore -d: %s\n\n", r.Dir)
	fmt.Fprintf(&b, "%d restores each, taking turns; wall time of the command, its process start included.\n\n", r.Runs)
	fmt.Fprintf(&b, "| | median | p10 | p90 | min | max |\n| --- | --- | --- | --- | --- | --- |\n")
	for _, row := range []struct {
		name string
		s    Summary
	}{{"crest", r.Crest}, {"criu", r.CRIU}} {
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s |\n", row.name, millis(row.s.Median), millis(row.s.P10), millis(row.s.P90), millis(row.s.Min), millis(row.s.Max))
	}
	if r.Crest.Median > 0 {
		fmt.Fprintf(&b, "\ncriu's median is %.2f times crest's.\n", float64(r.CRIU.Median)/float64(r.Crest.Median))
	}
	if !r.KdatCached {
		b.WriteString("\n/run is not a tmpfs here: CRIU can not keep its kernel checks (/run/criu.kdat) between runs, and every criu restore makes them anew.\n")
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func millis(d time.Duration) string { return fmt.Sprintf("%.2f ms", float64(d)/1e6) }
