package restore

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/crest-restore/crest/test/cli"
	"github.com/crest-restore/crest/test/fixture"
	"github.com/crest-restore/crest/test/procscan"
)

// zombieGroup makes a pid held only by a zombie: a shell leads a session
// of its own, starts a short sleep in it and exits; the test reaps the
// shell, the sleep comes to the test (its subreaper) and dies. Its
// process group and session still name the shell's pid until the test
// reaps it. It returns the shell's pid and the sleep's.
func zombieGroup(t *testing.T) (leader, zombie int) {
	t.Helper()
	cmd := exec.Command("sh", "-c", "sleep 0.01 </dev/null >/dev/null 2>&1 & echo $!")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	out, err := cmd.Output()
	if err != nil {
		t.Fatal(err)
	}
	leader = cmd.Process.Pid
	if zombie, err = strconv.Atoi(strings.TrimSpace(string(out))); err != nil {
		t.Fatalf("%q: %v", out, err)
	}
	t.Cleanup(func() { syscall.Wait4(zombie, nil, syscall.WNOHANG, nil) })
	deadline := time.Now().Add(5 * time.Second)
	for {
		st, err := procscan.Read(zombie)
		if err != nil {
			t.Fatalf("the sleep %d: %v", zombie, err)
		}
		if st.State == 'Z' {
			return leader, zombie
		}
		if time.Now().After(deadline) {
			t.Fatalf("the sleep %d is still %c", zombie, st.State)
		}
		time.Sleep(time.Millisecond)
	}
}

// TestRestoreAwaitsReaping: a restore into crest's own pid namespace whose
// root pid only zombies hold (a tree just killed by a dump, its zombies
// not reaped yet) waits for them, saying so, and restores once they are
// reaped; it fails naming them when they are not reaped in time. Without
// the wait the first case fails with EEXIST at once.
func TestRestoreAwaitsReaping(t *testing.T) {
	needRoot(t)
	bin := cli.Binary(t)
	cli.Subreaper(t)

	t.Run("reaped", func(t *testing.T) {
		dir := fixture.Install(t, "counter")
		imgs := fixture.CopyImages(t, "counter")
		leader, zombie := zombieGroup(t)
		renumberRoot(t, imgs, leader)
		reaped := make(chan error, 1)
		go func() {
			time.Sleep(300 * time.Millisecond)
			_, err := unix.Wait4(zombie, nil, 0, nil)
			reaped <- err
		}()
		pidfile := filepath.Join(t.TempDir(), "pid")
		res := cli.Run(t, bin, "restore", "-D", imgs, "-d", "--pidfile", pidfile)
		if err := <-reaped; err != nil {
			t.Errorf("reaping the zombie %d: %v", zombie, err)
		}
		if res.Code != 0 {
			t.Fatalf("crest restore: exit %d: %s", res.Code, res.Stderr)
		}
		b, err := os.ReadFile(pidfile)
		if err != nil {
			t.Fatal(err)
		}
		root, _ := strconv.Atoi(strings.TrimSpace(string(b)))
		killTree(t, root)
		if root != leader {
			t.Errorf("restored root %d, want %d", root, leader)
		}
		for _, want := range []string{"waiting for zombies to be reaped", fmt.Sprintf("pids=[%d]", leader),
			fmt.Sprintf("the session and process group of %d (sleep, zombie,", zombie)} {
			if !strings.Contains(res.Stderr, want) {
				t.Errorf("the warning %q does not have %q", res.Stderr, want)
			}
		}
		cli.NothingLeft(t, dir)
	})

	t.Run("not reaped", func(t *testing.T) {
		dir := fixture.Install(t, "counter")
		imgs := fixture.CopyImages(t, "counter")
		leader, zombie := zombieGroup(t)
		renumberRoot(t, imgs, leader)
		res := cli.Run(t, bin, "restore", "-D", imgs, "-d")
		if _, err := unix.Wait4(zombie, nil, 0, nil); err != nil {
			t.Errorf("reaping the zombie %d: %v", zombie, err)
		}
		want := fmt.Sprintf("pid %d is in use (EEXIST): the session and process group of %d (sleep, zombie,", leader, zombie)
		if res.Code != 1 || !strings.Contains(res.Stderr, want) {
			t.Errorf("exit %d: %q; want 1 and %q", res.Code, res.Stderr, want)
		}
		cli.NothingLeft(t, dir)
	})
}
