package dump_test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/checkpoint-restore/go-criu/v8/crit/images/fdinfo"

	"github.com/crest-restore/crest/dump"
	"github.com/crest-restore/crest/images"
	"github.com/crest-restore/crest/test/cli"
	"github.com/crest-restore/crest/test/workloads"
)

// criuGhosts holds CRIU 4.2's images of the ghost workload's deleted
// files (README.md there).
var criuGhosts = filepath.Join("..", "images", "testdata", "criu-4.2-ghost")

// liveDeleted reads the dev and inode of every deleted file the tree of
// root holds, by path as files.img names it (" (deleted)" cut off).
func liveDeleted(t *testing.T, pids ...int) map[string]unix.Stat_t {
	t.Helper()
	out := map[string]unix.Stat_t{}
	add := func(link, name string) {
		path, ok := strings.CutSuffix(name, " (deleted)")
		if !ok {
			return
		}
		var st unix.Stat_t
		if err := unix.Stat(link, &st); err != nil {
			t.Fatal(err)
		}
		out[path] = st
	}
	for _, pid := range pids {
		fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
		if err != nil {
			t.Fatal(err)
		}
		for _, fd := range fds {
			link := fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name())
			if name, err := os.Readlink(link); err == nil {
				add(link, name)
			}
		}
		f, err := os.Open(fmt.Sprintf("/proc/%d/maps", pid))
		if err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			fields := strings.Fields(sc.Text())
			if len(fields) >= 6 {
				add(fmt.Sprintf("/proc/%d/map_files/%s", pid, fields[0]), strings.Join(fields[5:], " "))
			}
		}
		f.Close()
	}
	return out
}

type remapRow struct {
	orig, remap uint32
	kind        string
}

func remapRows(t *testing.T, d *images.Dir) []remapRow {
	t.Helper()
	es, err := d.RemapFpath()
	if err != nil {
		t.Fatal(err)
	}
	var out []remapRow
	for _, e := range es {
		out = append(out, remapRow{e.GetOrigId(), e.GetRemapId(), e.GetRemapType().String()})
	}
	return out
}

// ghostShape is what a ghost image says about its file, apart from the
// file's own identity and times: what CRIU's and crest's images of the
// same workload must share.
func ghostShape(t *testing.T, d *images.Dir, id uint32) string {
	t.Helper()
	g, err := d.GhostFile(id)
	if err != nil || g == nil {
		t.Fatalf("ghost-file-%x.img: %v (%v)", id, err, g)
	}
	e := g.Entry
	s := fmt.Sprintf("mode %#o owner %d:%d chunks %v size %d", e.GetMode(), e.GetUid(), e.GetGid(), e.GetChunks(), e.GetSize())
	for _, c := range g.Chunks {
		s += fmt.Sprintf(" [%d +%d]", c.Off, len(c.Data))
	}
	if e.Atim == nil || e.Mtim == nil || e.Rdev != nil || e.SymlnkTarget != nil {
		s += fmt.Sprintf(" atim %v mtim %v rdev %v symlink %v", e.Atim, e.Mtim, e.Rdev, e.SymlnkTarget)
	}
	return s
}

// TestDumpGhost dumps the ghost workload and compares its deleted files'
// images with CRIU 4.2's of the same workload: the same file ids, remaps
// and ghost ids (file 8, the init's fd on the page both tasks map, shares
// ghost 2 with the mapping), the paths files.img keeps, the inode each
// ghost was taken from, its contents with the holes left out.
func TestDumpGhost(t *testing.T) {
	cli.Subreaper(t) // the init comes to us: reaped at once, not late by pid 1
	p := workloads.Start(t, "ghost")
	t.Cleanup(func() {
		syscall.Kill(p.Pid, syscall.SIGKILL)
		syscall.Wait4(p.Pid, nil, syscall.WALL, nil)
	})
	waitLines(t, p, "out-parent.log", 3)
	waitLines(t, p, "out-child.log", 3)
	kids, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", p.Pid, p.Pid))
	if err != nil {
		t.Fatal(err)
	}
	var child int
	fmt.Sscan(string(kids), &child)
	live := liveDeleted(t, p.Pid, child)
	dir := filepath.Join(t.TempDir(), "images")
	if _, err := dump.Dump(context.Background(), dump.Options{Pid: p.Pid, Dir: dir}); err != nil {
		t.Fatal(err)
	}
	d, err := images.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	criu, err := images.Open(criuGhosts)
	if err != nil {
		t.Fatal(err)
	}
	rows, criuRows := remapRows(t, d), remapRows(t, criu)
	if fmt.Sprint(rows) != fmt.Sprint(criuRows) {
		t.Fatalf("remap-fpath.img: %v, CRIU 4.2 wrote %v", rows, criuRows)
	}
	// one ghost per inode, in the order first met
	seen := map[uint32]bool{}
	for _, r := range rows {
		f, err := d.File(r.orig)
		if err != nil {
			t.Fatal(err)
		}
		cf, err := criu.File(r.orig)
		if err != nil {
			t.Fatal(err)
		}
		reg, creg := f.GetReg(), cf.GetReg()
		st, ok := live[reg.GetName()]
		if !ok {
			t.Errorf("file %d: %q, which is none of the deleted files %v", r.orig, reg.GetName(), slices.Collect(maps.Keys(live)))
			continue
		}
		got := fmt.Sprintf("flags %#o mode %#o size %d", reg.GetFlags(), reg.GetMode(), reg.GetSize())
		want := fmt.Sprintf("flags %#o mode %#o size %d", creg.GetFlags(), creg.GetMode(), creg.GetSize())
		if got != want || filepath.Base(reg.GetName())[0] == '#' != (filepath.Base(creg.GetName())[0] == '#') {
			t.Errorf("file %d (%s): %s, CRIU 4.2 wrote %s (%s)", r.orig, reg.GetName(), got, want, creg.GetName())
		}
		g, err := d.GhostFile(r.remap)
		if err != nil {
			t.Fatal(err)
		}
		kdev := unix.Major(st.Dev)<<20 | unix.Minor(st.Dev)
		if g.Entry.GetDev() != kdev || g.Entry.GetIno() != st.Ino {
			t.Errorf("ghost %d: dev %#x ino %d, the file was %#x %d", r.remap, g.Entry.GetDev(), g.Entry.GetIno(), kdev, st.Ino)
		}
		if seen[r.remap] {
			continue
		}
		seen[r.remap] = true
		if got, want := ghostShape(t, d, r.remap), ghostShape(t, criu, r.remap); got != want {
			t.Errorf("ghost-file-%x.img (%s):\n%s, CRIU 4.2 wrote\n%s", r.remap, reg.GetName(), got, want)
		}
		checkGhostData(t, reg.GetName(), g)
	}
}

// checkGhostData checks the contents the workload gave its files
// (ghost.c), but for the page the tasks keep changing.
func checkGhostData(t *testing.T, name string, g *images.Ghost) {
	t.Helper()
	var want []byte
	switch base := filepath.Base(name); {
	case base == "private.bin":
		for p := 0; p < 2; p++ {
			for i := 0; i < 4096; i++ {
				want = append(want, byte(i*13+p))
			}
		}
	case base == "scratch.bin":
		// the records of the two data blocks; the tick counter at
		// 4088 is the task's
		for _, c := range g.Chunks {
			for off := c.Off; off < c.Off+uint64(len(c.Data)); off += 16 {
				rec := fmt.Sprintf("rec=%08x ..\n", off)
				got := c.Data[off-c.Off : off-c.Off+16]
				if off == 4080 {
					rec, got = rec[:8], got[:8]
				}
				if string(got) != rec {
					t.Errorf("%s: at %d %q, want %q", name, off, got, rec)
					return
				}
			}
		}
		return
	case strings.HasPrefix(base, "#"):
		for i := 0; i < 100; i++ {
			want = append(want, "ghost tmpfile of crest, never named\n"[i%36])
		}
	default:
		return
	}
	if len(g.Chunks) != 1 || !bytes.Equal(g.Chunks[0].Data, want) {
		t.Errorf("%s: the ghost holds %d chunks, not the file's %d bytes", name, len(g.Chunks), len(want))
	}
}

// ghostCase is a workload of one deleted file: it writes "tick N" to
// out.log (fd 3) every 10 ms, holding fd 4 or a mapping as its case says.
const ghostCase = `#define _GNU_SOURCE
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include "workload.h"

static int scratch(const char *name, off_t at, size_t n)
{
	static char block[1 << 21];
	int fd = open(name, O_RDWR | O_CREAT | O_EXCL, 0600);
	memset(block, 'x', sizeof block);
	if (fd != 4 || pwrite(fd, block, n, at) != (ssize_t)n || fsync(fd))
		exit(2);
	return fd;
}

int main(void)
{
	int log = open_log("ghost");
	struct timespec ts = { 0, 10 * 1000 * 1000 };
	char line[32];

	if (log != 3)
		return 2;
#if defined(CASE_BIG)
	scratch("big", 0, 2 << 20);
	unlink("big");
#elif defined(CASE_SPARSE)
	scratch("sparse", 32 << 20, 4096);
	if (ftruncate(4, 64 << 20))
		return 2;
	unlink("sparse");
#elif defined(CASE_LINKED)
	scratch("a", 0, 100);
	if (link("a", "b") || unlink("a"))
		return 2;
#elif defined(CASE_DIR)
	if (mkdir("d", 0700) || open("d", O_RDONLY | O_DIRECTORY) != 4 || rmdir("d"))
		return 2;
#elif defined(CASE_MAPPED)
	scratch("mapped", 0, 2 << 20);
	if (mmap(NULL, 2 << 20, PROT_READ, MAP_SHARED, 4, 0) == MAP_FAILED || close(4) || unlink("mapped"))
		return 2;
#endif
	for (unsigned long n = 1;; n++) {
		snprintf(line, sizeof line, "tick %lu\n", n);
		say(log, line);
		nanosleep(&ts, NULL);
	}
}
`

// TestDumpGhostRefused: deleted files that CRIU 4.2 does not dump by
// default are refused by name, and the tree runs on; a file with more on
// disk than the ghost limit dumps under a higher limit, and a sparse one
// counts only its data, as in CRIU.
func TestDumpGhostRefused(t *testing.T) {
	for _, tc := range []struct {
		name  string
		limit int64
		want  []string // nil: dumps
		check func(t *testing.T, g *images.Ghost)
	}{
		{"big", 0, []string{"task 1", "fd 4", "/big (deleted)", "2097152 bytes on disk are above the ghost limit of 1048576 bytes"}, nil},
		{"big", 4 << 20, nil, func(t *testing.T, g *images.Ghost) {
			if len(g.Chunks) != 1 || len(g.Chunks[0].Data) != 2<<20 || g.Chunks[0].Data[1<<20] != 'x' {
				t.Errorf("%d chunks, want one of 2 MiB of x", len(g.Chunks))
			}
		}},
		{"sparse", 0, nil, func(t *testing.T, g *images.Ghost) {
			if g.Entry.GetSize() != 64<<20 || len(g.Chunks) != 1 || g.Chunks[0].Off != 32<<20 || len(g.Chunks[0].Data) != 4096 {
				t.Errorf("size %d, chunks %d, want 64 MiB with 4 KiB at 32 MiB", g.Entry.GetSize(), len(g.Chunks))
			}
		}},
		{"linked", 0, []string{"task 1", "fd 4", "/a (deleted)", "still linked elsewhere (1 links)", "--link-remap"}, nil},
		{"dir", 0, []string{"task 1", "fd 4", "/d (deleted)", "a deleted file of mode 040700", "only deleted regular files"}, nil},
		{"mapped", 0, []string{"task 1", "mapped file", "/mapped (deleted)", "above the ghost limit"}, nil},
	} {
		t.Run(fmt.Sprintf("%s-%d", tc.name, tc.limit), func(t *testing.T) {
			bin, err := workloads.BuildSource("ghost-"+tc.name, "ghostcase.c", []byte(ghostCase), []string{"-static", "-O2", "-DCASE_" + strings.ToUpper(tc.name)})
			if err != nil {
				t.Fatal(err)
			}
			// the init comes to us: reaped at once, not late by pid 1
			cli.Subreaper(t)
			p := workloads.StartIn(t, bin, t.TempDir())
			t.Cleanup(func() {
				syscall.Kill(p.Pid, syscall.SIGKILL)
				syscall.Wait4(p.Pid, nil, syscall.WALL, nil)
			})
			waitLines(t, p, "out-ghost.log", 3)
			parent := t.TempDir()
			dir := filepath.Join(parent, "images")
			_, err = dump.Dump(context.Background(), dump.Options{Pid: p.Pid, Dir: dir, GhostLimit: tc.limit})
			if tc.want != nil {
				refusedCleanly(t, err, p, parent, "out-ghost.log", tc.want...)
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			d, err := images.Open(dir)
			if err != nil {
				t.Fatal(err)
			}
			rows := remapRows(t, d)
			if len(rows) != 1 || rows[0].remap != 1 || rows[0].kind != "GHOST" {
				t.Fatalf("remap-fpath.img: %v, want one ghost", rows)
			}
			f, err := d.File(rows[0].orig)
			if err != nil || f.GetType() != fdinfo.FdTypes_REG {
				t.Fatalf("file %d: %v %v", rows[0].orig, f, err)
			}
			g, err := d.GhostFile(1)
			if err != nil {
				t.Fatal(err)
			}
			if !g.Entry.GetChunks() {
				t.Errorf("ghost of %s not in chunks", f.GetReg().GetName())
			}
			tc.check(t, g)
		})
	}
}
