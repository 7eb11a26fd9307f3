package bench

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/crest-restore/crest/test/cli"
	"github.com/crest-restore/crest/test/fixture"
)

// standIn writes a program that takes criu restore's arguments as Compare
// passes them, logs them to calls and runs script with them (crest
// restore's, for a criu this machine does not have).
func standIn(t *testing.T, script string) (path, calls string) {
	t.Helper()
	dir := t.TempDir()
	path, calls = filepath.Join(dir, "criu"), filepath.Join(dir, "calls")
	src := `#!/bin/sh
echo "$@" >> ` + calls + `
[ "$1" = restore ] || exit 2
shift
while [ $# -gt 0 ]; do
	case $1 in
	-D) dir=$2; shift ;;
	--pidfile) pidfile=$2; shift ;;
	-o) log=$2; shift ;;
	esac
	shift
done
echo "stand-in log" > "$log"
` + script + "\n"
	if err := os.WriteFile(path, []byte(src), 0o755); err != nil {
		t.Fatal(err)
	}
	return path, calls
}

// crestFile is crest's binary at a path the stand-in's shell can run
// too (cli.Binary's is one of this process's fds).
func crestFile(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(cli.Binary(t))
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "crest")
	if err := os.WriteFile(path, b, 0o755); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestCompare runs crest against a stand-in criu that restores with crest
// too: both take turns, every restored tree is killed and gone before the
// next restore (else the next one could not have the same pids), and the
// report has a time for each.
func TestCompare(t *testing.T) {
	bin := crestFile(t)
	opt := fixture.Install(t, "counter")
	imgs := fixture.Images(t, "counter")
	criu, calls := standIn(t, `exec `+bin+` restore -D "$dir" -d --pidfile "$pidfile"`)
	reset := func() error { fixture.Install(t, "counter"); return nil }
	const runs = 3
	rep, err := Compare(context.Background(), CompareConfig{Dir: imgs, Runs: runs, Crest: bin, CRIU: criu, Reset: reset})
	if err != nil {
		t.Fatal(err)
	}
	cli.NothingLeft(t, opt)
	if rep.Crest.N != runs || rep.CRIU.N != runs || len(rep.Times) != runs || rep.Crest.Min <= 0 || rep.CRIU.Min <= 0 {
		t.Errorf("report %+v", rep)
	}
	b, err := os.ReadFile(calls)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) != runs || !strings.HasPrefix(lines[0], "restore -D ") || !strings.Contains(lines[0], " -d --pidfile ") || !strings.Contains(lines[0], " -o ") {
		t.Errorf("criu ran %q", lines)
	}
	// a copy of the images, which CRIU may write into
	if dir := strings.Fields(lines[0])[2]; dir == imgs {
		t.Errorf("criu restored %s itself, not a copy", imgs)
	}
	var md strings.Builder
	if err := rep.Markdown(&md); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"| crest | ", "| criu | ", "criu's median is "} {
		if !strings.Contains(md.String(), want) {
			t.Errorf("report without %q:\n%s", want, md.String())
		}
	}
}

// TestCompareFails: a criu that fails, or restores nothing, ends the
// comparison with an error naming it, its output and its log, and leaves
// no tree behind.
func TestCompareFails(t *testing.T) {
	bin := crestFile(t)
	opt := fixture.Install(t, "counter")
	imgs := fixture.Images(t, "counter")
	reset := func() error { fixture.Install(t, "counter"); return nil }
	for _, tc := range []struct {
		name, script string
		want         []string
	}{
		{"exit", `echo "Error (criu/cr-restore.c:1): no" >&2; exit 1`, []string{"round 1", "restore -D", "exit status 1", "Error (criu/cr-restore.c:1): no", "stand-in log"}},
		{"no pidfile", `exit 0`, []string{"round 1", "criu", "no such file"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			criu, _ := standIn(t, tc.script)
			_, err := Compare(context.Background(), CompareConfig{Dir: imgs, Runs: 2, Crest: bin, CRIU: criu, Reset: reset})
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q, want %q in it", err, w)
				}
			}
			cli.NothingLeft(t, opt)
		})
	}
}
