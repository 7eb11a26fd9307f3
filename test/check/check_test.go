package check

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/crest-restore/crest/images"
)

// recorder is a testing.TB that keeps what would have failed the test.
type recorder struct {
	testing.TB
	failures []string
}

func (r *recorder) Helper() {}
func (r *recorder) Errorf(format string, args ...any) {
	r.failures = append(r.failures, fmt.Sprintf(format, args...))
}

// Fatalf records and ends the checked function's goroutine, as the real
// one does; run catches that.
func (r *recorder) Fatalf(format string, args ...any) {
	r.Errorf(format, args...)
	panic(r)
}

// run calls f with a recorder and returns its failures.
func run(t *testing.T, f func(tb testing.TB)) []string {
	r := &recorder{TB: t}
	func() {
		defer func() {
			if p := recover(); p != nil && p != r {
				panic(p)
			}
		}()
		f(r)
	}()
	return r.failures
}

func TestCounter(t *testing.T) {
	for _, tc := range []struct {
		prev, line string
		ok         bool
	}{
		{"7", "8", true},
		{"child1 159", "child1 160", true},
		{"child1 159", "child1 161", false}, // a gap
		{"child1 159", "child1 159", false}, // a repeat
		{"child1 159", "child2 160", false},
		{"wrote x", "wrote 1", false},
	} {
		if err := Counter(tc.prev, tc.line); (err == nil) != tc.ok {
			t.Errorf("Counter(%q, %q) = %v, want ok=%v", tc.prev, tc.line, err, tc.ok)
		}
	}
}

// TestLogs: a log that counts on passes, also with a pause longer than a
// look; a gap, a CORRUPT line, changed dumped content or a log that stops
// fail.
func TestLogs(t *testing.T) {
	before := []byte("1\n2\n3\n")
	for _, tc := range []struct {
		name   string
		writes []string // appended at the start, then a quarter into the watch and every half after
		fail   string
	}{
		{"counts on", []string{"4\n5\n", "6\n", "7\n"}, ""},
		{"half a line waits", []string{"4\n5", "\n6\n", "7\n"}, ""},
		{"a pause longer than a look", []string{"4\n", "", "5\n", "6\n"}, ""},
		{"gap", []string{"4\n6\n", "7\n", "8\n"}, `new line 1 after "4"`},
		{"corrupt", []string{"4\n", "CORRUPT page 3\n", "5\n"}, "CORRUPT"},
		{"stops", []string{"4\n", "5\n", ""}, "no new line"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "out.log")
			if err := os.WriteFile(path, append(before, tc.writes[0]...), 0o644); err != nil {
				t.Fatal(err)
			}
			const d = 400 * time.Millisecond
			done := make(chan struct{})
			go func() {
				defer close(done)
				for _, w := range tc.writes[1:] {
					time.Sleep(d / 4)
					f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
					if err == nil {
						f.WriteString(w)
						f.Close()
					}
					time.Sleep(d / 4)
				}
			}()
			got := run(t, func(tb testing.TB) {
				Logs(tb, dir, map[string][]byte{"out.log": before}, map[string]Next{"out.log": Counter}, d)
			})
			<-done
			switch {
			case tc.fail == "" && len(got) > 0:
				t.Errorf("failed: %q", got)
			case tc.fail != "" && (len(got) == 0 || !strings.Contains(got[0], tc.fail)):
				t.Errorf("failures %q, want one saying %q", got, tc.fail)
			}
		})
	}
	t.Run("dumped content changed", func(t *testing.T) {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, "out.log"), []byte("1\n2\nX\n4\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		got := run(t, func(tb testing.TB) {
			Logs(tb, dir, map[string][]byte{"out.log": before}, map[string]Next{"out.log": Counter}, 0)
		})
		if len(got) != 1 || !strings.Contains(got[0], "was changed") {
			t.Errorf("failures %q", got)
		}
	})
}

// TestMapsOwn compares the test process's own maps with a summary made
// from them, which must agree, and with altered ones, which must not.
func TestMapsOwn(t *testing.T) {
	lines, err := readMaps(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	summary := func(edit func(vs []images.VMA)) *images.Summary {
		var vs []images.VMA
		for _, l := range lines {
			var lo, hi uint64
			var perms, name string
			fmt.Sscanf(l, "%x-%x %s", &lo, &hi, &perms)
			if f := strings.SplitN(l, " ", 3); len(f) == 3 {
				name = f[2]
			}
			v := images.VMA{Start: lo, End: hi, Name: name}
			for i, c := range "rwx" {
				if perms[i] == byte(c) {
					v.Prot |= 1 << i
				}
			}
			if perms[3] == 's' {
				v.Flags = 1
			}
			vs = append(vs, v)
		}
		edit(vs)
		return &images.Summary{Tasks: []images.Task{{PID: 1, Memory: &images.Memory{VMAs: vs}}}}
	}
	// Go's own mappings change as it runs (heap growth); compare at
	// once and retry a few times before calling it a failure.
	same := func(edit func(vs []images.VMA)) []string {
		var got []string
		for try := 0; try < 5; try++ {
			if lines, err = readMaps(os.Getpid()); err != nil {
				t.Fatal(err)
			}
			s := summary(edit)
			if got = run(t, func(tb testing.TB) { Maps(tb, s, 1, os.Getpid()) }); len(got) == 0 {
				break
			}
		}
		return got
	}
	if got := same(func([]images.VMA) {}); len(got) > 0 {
		t.Fatalf("own maps against themselves: %q", got)
	}
	if got := same(func(vs []images.VMA) { vs[0].End += 4096 }); len(got) != 1 {
		t.Errorf("a VMA one page longer: %q", got)
	}
	if got := same(func(vs []images.VMA) { vs[0].Prot ^= 2 }); len(got) != 1 {
		t.Errorf("a VMA with other protection: %q", got)
	}
}
