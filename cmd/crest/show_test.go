package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/crest-restore/crest/images"
	"github.com/crest-restore/crest/test/fixture"
)

// runShow runs `crest show ARGS...` as main would.
func runShow(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	code = run(append([]string{"show"}, args...), &out, &errb)
	return code, out.String(), errb.String()
}

func TestShowFile(t *testing.T) {
	for _, tc := range []struct {
		fixture, file, magic string
		args                 []string
	}{
		{"pipe", "pipes-data.img", "PIPES_DATA", nil},
		{"tree", "pstree.img", "PSTREE", nil},
		{"threads", "core-2.img", "CORE", nil},
		{"shmem", "mm-2.img", "MM", []string{"--pretty=false"}},
		{"files", "pagemap-1.img", "PAGEMAP", nil},
		{"files", "inventory.img", "INVENTORY", []string{"--nopl"}},
		{"counter", "stats-dump", "STATS", nil},
	} {
		t.Run(tc.fixture+"/"+tc.file, func(t *testing.T) {
			path := fixture.Path(t, tc.fixture, "images", tc.file)
			code, out, errOut := runShow(t, append(tc.args, path)...)
			if code != 0 {
				t.Fatalf("exit %d: %s", code, errOut)
			}
			var got struct {
				Magic   string            `json:"magic"`
				Entries []json.RawMessage `json:"entries"`
			}
			if err := json.Unmarshal([]byte(out), &got); err != nil {
				t.Fatalf("output is not JSON: %v\n%s", err, out)
			}
			img, err := images.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if got.Magic != tc.magic || len(got.Entries) != len(img.Entries) {
				t.Errorf("magic %s with %d entries, want %s with %d", got.Magic, len(got.Entries), tc.magic, len(img.Entries))
			}
			pretty := !strings.Contains(strings.Join(tc.args, " "), "--pretty=false")
			if lines := strings.Count(out, "\n"); pretty != (lines > 1) {
				t.Errorf("pretty %v but %d lines", pretty, lines)
			}
		})
	}

	// The payload: the 16 bytes in the pipe, as crit shows them.
	_, out, _ := runShow(t, fixture.Path(t, "pipe", "images", "pipes-data.img"))
	if !strings.Contains(out, `"extra": "bXNnIDE1Mwptc2cgMTU0Cg==\n"`) {
		t.Errorf("pipes-data.img without its payload:\n%s", out)
	}
	// Hex as crit --pretty: the parasite's page in the static binary.
	_, out, _ = runShow(t, fixture.Path(t, "counter", "images", "pagemap-1.img"))
	if !strings.Contains(out, `"vaddr": "0x401000"`) || !strings.Contains(out, `"flags": "PE_PRESENT"`) {
		t.Errorf("pagemap-1.img not shown with hex addresses and flag names:\n%s", out)
	}
}

func TestShowRawPages(t *testing.T) {
	path := fixture.Path(t, "shmem", "images", "pages-1.img")
	code, out, errOut := runShow(t, path)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	for _, want := range []string{path, "raw image", "1048576 bytes", "256 pages", "pagemap-shmem-300.img"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
}

func TestShowDir(t *testing.T) {
	for _, tc := range []struct {
		fixture string
		want    []string // in the text
	}{
		{"tree", []string{"4 tasks, 4 threads", "own pid namespace"}},
		{"threads", []string{"threads:    1 2 3"}},
		{"files", []string{"memfd:crest-memfd", "/opt/crest-fixtures/files/data.bin", "O_WRONLY|O_APPEND|O_LARGEFILE"}},
		{"pipe", []string{"pipe:[", "1:fd4(w) 2:fd3(r)"}},
		{"shmem", []string{"memfd:/dev/zero", "VMA_AREA_REGULAR|VMA_FILE_SHARED|VMA_AREA_MEMFD"}},
	} {
		t.Run(tc.fixture, func(t *testing.T) {
			dir := fixture.Images(t, tc.fixture)
			d, err := images.Open(dir)
			if err != nil {
				t.Fatal(err)
			}
			want, err := images.Summarize(d)
			if err != nil {
				t.Fatal(err)
			}

			code, text, errOut := runShow(t, "-D", dir)
			if code != 0 {
				t.Fatalf("exit %d: %s", code, errOut)
			}
			for _, s := range tc.want {
				if !strings.Contains(text, s) {
					t.Errorf("text lacks %q", s)
				}
			}
			for _, task := range want.Tasks {
				if !strings.Contains(text, fmt.Sprintf("\ntask %d (%s)", task.PID, task.Comm)) {
					t.Errorf("text lacks task %d", task.PID)
				}
				for _, fd := range task.FDs {
					if !strings.Contains(text, fmt.Sprintf("\n    %d  ", fd.FD)) || !strings.Contains(text, fd.Name) {
						t.Errorf("text lacks task %d's fd %d on %s", task.PID, fd.FD, fd.Name)
					}
				}
			}
			if t.Failed() {
				t.Logf("text:\n%s", text)
			}

			for _, flags := range [][]string{{"--json"}, {"--json", "--pretty=false"}, {"--images-dir=" + dir, "--json"}} {
				args := flags
				if !strings.HasPrefix(flags[0], "--images-dir") {
					args = append([]string{"-D", dir}, flags...)
				}
				code, out, errOut := runShow(t, args...)
				if code != 0 {
					t.Fatalf("%v: exit %d: %s", args, code, errOut)
				}
				var got images.Summary
				if err := json.Unmarshal([]byte(out), &got); err != nil {
					t.Fatalf("%v: not a Summary: %v", args, err)
				}
				if got.Totals != want.Totals || len(got.Tasks) != len(want.Tasks) || got.OwnPidNS != want.OwnPidNS {
					t.Errorf("%v: totals %+v, %d tasks; want %+v, %d", args, got.Totals, len(got.Tasks), want.Totals, len(want.Tasks))
				}
				for i := range got.Tasks {
					g, w := got.Tasks[i], want.Tasks[i]
					if g.PID != w.PID || g.PGID != w.PGID || len(g.FDs) != len(w.FDs) || len(g.Memory.VMAs) != len(w.Memory.VMAs) ||
						g.Memory.Pages != w.Memory.Pages {
						t.Errorf("%v: task %d differs from Summarize", args, g.PID)
					}
				}
			}
		})
	}
}

func TestShowBadInput(t *testing.T) {
	tmp := t.TempDir()
	notImage := filepath.Join(tmp, "notes.img")
	if err := os.WriteFile(notImage, []byte("this is not a CRIU image\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	full, err := os.ReadFile(fixture.Path(t, "signals", "images", "core-1.img"))
	if err != nil {
		t.Fatal(err)
	}
	truncated := filepath.Join(tmp, "core-1.img")
	if err := os.WriteFile(truncated, full[:len(full)/2], 0o644); err != nil {
		t.Fatal(err)
	}
	// An image directory with one image cut short.
	cutDir := fixture.CopyImages(t, "pipe")
	mm2 := filepath.Join(cutDir, "mm-2.img")
	b, err := os.ReadFile(mm2)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(mm2, b[:len(b)-7], 0o644); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(tmp, "no-such-dir")

	for _, tc := range []struct {
		name string
		args []string
		code int
		msg  string // the message must name this
	}{
		{"missing directory", []string{"-D", missing}, 1, missing},
		{"directory without images", []string{"-D", tmp}, 1, filepath.Join(tmp, "inventory.img")},
		{"missing file", []string{filepath.Join(tmp, "nope.img")}, 1, filepath.Join(tmp, "nope.img")},
		{"not an image", []string{notImage}, 1, notImage},
		{"log file", []string{fixture.Path(t, "pipe", "images", "dump.log")}, 1, "dump.log"},
		{"truncated image", []string{truncated}, 1, truncated},
		{"truncated image in a directory", []string{"-D", cutDir}, 1, filepath.Join(cutDir, "mm-2.img")},
		{"directory given as a file", []string{tmp}, 2, "use -D " + tmp},
		{"no arguments", nil, 2, "usage"},
		{"file and directory", []string{"-D", tmp, notImage}, 2, "usage"},
		{"two files", []string{notImage, truncated}, 2, "usage"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, out, errOut := runShow(t, tc.args...)
			if code != tc.code {
				t.Errorf("exit %d, want %d (stdout %q)", code, tc.code, out)
			}
			if !strings.Contains(errOut, tc.msg) {
				t.Errorf("message %q does not name %q", errOut, tc.msg)
			}
		})
	}
}
