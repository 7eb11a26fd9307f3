package images_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/checkpoint-restore/go-criu/v8/crit/images/pstree"

	"github.com/crest-restore/crest/images"
	"github.com/crest-restore/crest/test/fixture"
)

// fmtLayout is where the pieces of a well-formed image file are.
type fmtLayout struct {
	header  int64   // bytes of magic
	starts  []int64 // offset of each entry's length word
	bodyEnd []int64 // offset just past each entry's message
	ends    []int64 // offset just past each entry's payload
}

// fmtLayoutOf walks an image file that is known to be good.
func fmtLayoutOf(t *testing.T, name string, b []byte) fmtLayout {
	t.Helper()
	rd, err := images.NewReader(bytes.NewReader(b), name, int64(len(b)))
	if err != nil {
		t.Fatal(err)
	}
	l := fmtLayout{header: rd.Offset()}
	for {
		start := rd.Offset()
		if _, err := rd.Next(); err == io.EOF {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		l.starts = append(l.starts, start)
		l.bodyEnd = append(l.bodyEnd, start+4+int64(binary.LittleEndian.Uint32(b[start:])))
		l.ends = append(l.ends, rd.Offset())
	}
	return l
}

// fmtWantCut returns how reading a copy of the file cut at c must end:
// with n entries (ok), or with a FormatError at entry and offset.
func (l fmtLayout) wantCut(c int64) (ok bool, n int, entry int, off int64) {
	if c < l.header {
		if c < 4 {
			return false, 0, -1, 0
		}
		return false, 0, -1, 4
	}
	if c == l.header {
		return true, 0, 0, 0
	}
	for i, s := range l.starts {
		switch {
		case c == l.ends[i]:
			return true, i + 1, 0, 0
		case c < s+4:
			return false, 0, i, s
		case c < l.bodyEnd[i]:
			return false, 0, i, s + 4
		case c < l.ends[i]:
			return false, 0, i, l.bodyEnd[i]
		}
	}
	panic("cut past the end")
}

// TestTruncatedFixtures cuts every image file of every fixture at every
// byte and reads what is left, with the size known and unknown.
func TestTruncatedFixtures(t *testing.T) {
	for _, name := range fixture.Names(t) {
		for _, path := range images.FixtureImageFiles(t, name) {
			orig, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			l := fmtLayoutOf(t, path, orig)
			for c := int64(0); c < int64(len(orig)); c++ {
				ok, n, entry, off := l.wantCut(c)
				for _, size := range []int64{c, -1} {
					img, err := images.ReadImage(bytes.NewReader(orig[:c]), path, size)
					if ok {
						if err != nil || len(img.Entries) != n {
							t.Fatalf("%s cut at %d (size %d): %v; want %d whole entries", path, c, size, err, n)
						}
						continue
					}
					var fe *images.FormatError
					if !errors.As(err, &fe) {
						t.Fatalf("%s cut at %d (size %d): err = %v, want a FormatError", path, c, size, err)
					}
					if fe.File != path || fe.Entry != entry || fe.Offset != off {
						t.Fatalf("%s cut at %d (size %d): FormatError at %s entry %d offset %d, want entry %d offset %d: %v",
							path, c, size, fe.File, fe.Entry, fe.Offset, entry, off, err)
					}
				}
			}
		}
	}
}

// TestTruncatedFiles reads cut copies through the file and Dir paths: the
// error names the copy.
func TestTruncatedFiles(t *testing.T) {
	src := fixture.Images(t, "pipe")
	for _, f := range []string{"core-1.img", "mm-2.img", "pagemap-1.img", "pipes-data.img", "files.img"} {
		orig, err := os.ReadFile(filepath.Join(src, f))
		if err != nil {
			t.Fatal(err)
		}
		l := fmtLayoutOf(t, f, orig)
		cut := l.starts[len(l.starts)-1] + 5 // inside the last entry
		dir := fixture.CopyDir(t, src)
		path := filepath.Join(dir, f)
		if err := os.WriteFile(path, orig[:cut], 0o600); err != nil {
			t.Fatal(err)
		}
		_, err = images.ReadFile(path)
		fmtWantFormat(t, f, err, path, len(l.starts)-1, l.starts[len(l.starts)-1]+4)

		d, err := images.Open(dir)
		if err != nil {
			t.Fatal(err)
		}
		switch f {
		case "core-1.img":
			_, err = d.Core(1)
		case "mm-2.img":
			_, err = d.MM(2)
		case "pagemap-1.img":
			_, err = d.PageRuns(1)
		case "pipes-data.img":
			_, err = d.PipesData()
		case "files.img":
			_, err = d.Files()
		}
		fmtWantFormat(t, f+" via Dir", err, path, len(l.starts)-1, l.starts[len(l.starts)-1]+4)
	}
}

func fmtWantFormat(t *testing.T, what string, err error, file string, entry int, off int64) {
	t.Helper()
	var fe *images.FormatError
	if !errors.As(err, &fe) {
		t.Errorf("%s: err = %v, want a FormatError", what, err)
		return
	}
	if fe.File != file || fe.Entry != entry || fe.Offset != off {
		t.Errorf("%s: FormatError at %s entry %d offset %d, want %s entry %d offset %d (%v)",
			what, fe.File, fe.Entry, fe.Offset, file, entry, off, err)
	}
}

// fmtFrame builds an image file from its magics and raw entry bodies.
func fmtFrame(magics []images.Magic, bodies ...[]byte) []byte {
	var b []byte
	for _, m := range magics {
		b = binary.LittleEndian.AppendUint32(b, uint32(m))
	}
	for _, body := range bodies {
		b = binary.LittleEndian.AppendUint32(b, uint32(len(body)))
		b = append(b, body...)
	}
	return b
}

func fmtMarshal(t *testing.T, m proto.Message, partial bool) []byte {
	t.Helper()
	b, err := proto.MarshalOptions{AllowPartial: partial}.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestBadFraming(t *testing.T) {
	task := fmtMarshal(t, &pstree.PstreeEntry{Pid: proto.Uint32(1), Ppid: proto.Uint32(0), Pgid: proto.Uint32(1), Sid: proto.Uint32(1)}, false)
	noPid := fmtMarshal(t, &pstree.PstreeEntry{Ppid: proto.Uint32(0), Pgid: proto.Uint32(1), Sid: proto.Uint32(1)}, true)
	common := []images.Magic{images.MagicImgCommon, images.MagicPstree}
	huge := binary.LittleEndian.AppendUint32(fmtFrame(common, task), 0xfffffff0)
	tests := []struct {
		name  string
		b     []byte
		entry int
		off   int64
		msg   string
	}{
		{"empty", nil, -1, 0, "truncated magic"},
		{"unknown magic", fmtFrame([]images.Magic{0xdeadbeef}, task), -1, 0, "unknown magic"},
		{"raw pages", make([]byte, 4096), -1, 0, "unknown magic"},
		{"kind without prefix", fmtFrame([]images.Magic{images.MagicPstree}, task), -1, 0, "without its"},
		{"wrong prefix", fmtFrame([]images.Magic{images.MagicImgService, images.MagicPstree}, task), -1, 4, "behind prefix"},
		{"unknown kind", fmtFrame([]images.Magic{images.MagicImgCommon, 0x12345678}, task), -1, 4, "unknown image magic"},
		{"prefix twice", fmtFrame([]images.Magic{images.MagicImgCommon, images.MagicImgCommon}, task), -1, 4, "unknown image magic"},
		{"length past the end", huge, 1, int64(len(huge)), "past the end"},
		{"length past the end first", fmtFrame(common, task)[:8+4], 0, 12, "past the end"},
		{"corrupt body", fmtFrame(common, task, bytes.Repeat([]byte{0xff}, 9)), 1, 8 + 4 + int64(len(task)), "bad PSTREE entry"},
		{"wrong wire type", fmtFrame(common, []byte{0x0a, 0x01, 0x01}), 0, 8, "bad PSTREE entry"},
		{"missing required field", fmtFrame(common, task, noPid), 1, 8 + 4 + int64(len(task)), "bad PSTREE entry"},
	}
	// "length past the end first" is a length word with no body: give it
	// a length of 100.
	binary.LittleEndian.PutUint32(tests[8].b[8:], 100)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, size := range []int64{int64(len(tt.b)), -1} {
				_, err := images.ReadImage(bytes.NewReader(tt.b), "x.img", size)
				var fe *images.FormatError
				if !errors.As(err, &fe) {
					t.Fatalf("size %d: err = %v, want a FormatError", size, err)
				}
				off := tt.off
				if fe.File != "x.img" || fe.Entry != tt.entry || fe.Offset != off {
					t.Errorf("size %d: FormatError at %s entry %d offset %d, want entry %d offset %d (%v)",
						size, fe.File, fe.Entry, fe.Offset, tt.entry, off, err)
				}
				if size >= 0 && !strings.Contains(fe.Msg, tt.msg) {
					t.Errorf("message %q does not say %q", fe.Msg, tt.msg)
				}
			}
		})
	}
}

// TestHugeLengthAllocates checks that a corrupt length word makes no large
// allocation, with the size known or not.
func TestHugeLengthAllocates(t *testing.T) {
	b := fmtFrame([]images.Magic{images.MagicImgCommon, images.MagicPstree})
	b = binary.LittleEndian.AppendUint32(b, 0xffffffff)
	b = append(b, 1, 2, 3)
	for _, size := range []int64{int64(len(b)), -1} {
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		_, err := images.ReadImage(bytes.NewReader(b), "x.img", size)
		runtime.ReadMemStats(&after)
		if !images.IsFormat(err) {
			t.Errorf("size %d: err = %v, want a FormatError", size, err)
		}
		if n := after.TotalAlloc - before.TotalAlloc; n > 1<<20 {
			t.Errorf("size %d: %d bytes allocated for a 4 GiB length word", size, n)
		}
	}
}

// TestWrongKind saves images of the wrong kind under the names of others:
// each accessor refuses them, naming the file.
func TestWrongKind(t *testing.T) {
	src := fixture.Images(t, "pipe")
	pstreeImg, err := os.ReadFile(filepath.Join(src, "pstree.img"))
	if err != nil {
		t.Fatal(err)
	}
	coreImg, err := os.ReadFile(filepath.Join(src, "core-1.img"))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		file string
		b    []byte
		get  func(d *images.Dir) error
	}{
		{"core-1.img", pstreeImg, func(d *images.Dir) error { _, err := d.Core(1); return err }},
		{"ids-1.img", pstreeImg, func(d *images.Dir) error { _, err := d.IDs(1); return err }},
		{"mm-1.img", pstreeImg, func(d *images.Dir) error { _, err := d.MM(1); return err }},
		{"fs-1.img", pstreeImg, func(d *images.Dir) error { _, err := d.FS(1); return err }},
		{"fdinfo-2.img", pstreeImg, func(d *images.Dir) error { _, err := d.Fdinfo(2); return err }},
		{"files.img", coreImg, func(d *images.Dir) error { _, err := d.Files(); return err }},
		{"pagemap-1.img", coreImg, func(d *images.Dir) error { _, err := d.PageRuns(1); return err }},
		{"pagemap-1.img", coreImg, func(d *images.Dir) error { _, err := d.Pagemap(1); return err }},
		{"pipes-data.img", pstreeImg, func(d *images.Dir) error { _, err := d.PipesData(); return err }},
		{"seccomp.img", pstreeImg, func(d *images.Dir) error { _, err := d.Seccomp(); return err }},
		{"timens-0.img", pstreeImg, func(d *images.Dir) error { _, err := d.Timens(); return err }},
		{"stats-dump", pstreeImg, func(d *images.Dir) error { _, err := d.Stats("dump"); return err }},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			dir := fixture.CopyDir(t, src)
			path := filepath.Join(dir, tt.file)
			if err := os.WriteFile(path, tt.b, 0o600); err != nil {
				t.Fatal(err)
			}
			d, err := images.Open(dir)
			if err != nil {
				t.Fatal(err)
			}
			err = tt.get(d)
			fmtWantFormat(t, tt.file, err, path, -1, 0)
			if err != nil && !strings.Contains(err.Error(), "want ") {
				t.Errorf("%v does not say which kind it wants", err)
			}
		})
	}

	// The same through NewKindReader, and for the two images Open reads.
	if _, err := images.NewKindReader(bytes.NewReader(pstreeImg), "core-1.img", int64(len(pstreeImg)), images.KindCore); !images.IsFormat(err) {
		t.Errorf("NewKindReader(pstree as CORE) = %v", err)
	}
	for _, f := range []string{"inventory.img", "pstree.img"} {
		dir := fixture.CopyDir(t, src)
		path := filepath.Join(dir, f)
		if err := os.WriteFile(path, coreImg, 0o600); err != nil {
			t.Fatal(err)
		}
		_, err := images.Open(dir)
		fmtWantFormat(t, "Open with core as "+f, err, path, -1, 0)
	}
}

func TestMissingImages(t *testing.T) {
	src := fixture.Images(t, "pipe")
	for _, f := range []string{"inventory.img", "pstree.img"} {
		dir := fixture.CopyDir(t, src)
		if err := os.Remove(filepath.Join(dir, f)); err != nil {
			t.Fatal(err)
		}
		_, err := images.Open(dir)
		var me *images.MissingError
		if !errors.As(err, &me) || me.File != filepath.Join(dir, f) || !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("Open without %s: %v, want a MissingError naming it", f, err)
		}
	}

	dir := fixture.CopyDir(t, src)
	for _, f := range []string{"core-2.img", "mm-2.img", "fs-2.img", "ids-2.img", "pipes-data.img", "seccomp.img",
		"timens-0.img", "files.img", "fdinfo-3.img", "pagemap-2.img", "stats-dump"} {
		if err := os.Remove(filepath.Join(dir, f)); err != nil {
			t.Fatal(err)
		}
	}
	d, err := images.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	required := []struct {
		file string
		get  func() error
	}{
		{"core-2.img", func() error { _, err := d.Core(2); return err }},
		{"mm-2.img", func() error { _, err := d.MM(2); return err }},
		{"fs-2.img", func() error { _, err := d.FS(2); return err }},
		// Without ids-2.img the ids come from core-2.img, gone as well.
		{"core-2.img", func() error { _, err := d.IDs(2); return err }},
	}
	for _, r := range required {
		err := r.get()
		var me *images.MissingError
		if !errors.As(err, &me) || me.File != filepath.Join(dir, r.file) {
			t.Errorf("%s: err = %v, want a MissingError naming it", r.file, err)
		}
	}
	optional := []struct {
		file string
		get  func() (int, error)
	}{
		{"pipes-data.img", func() (int, error) { v, err := d.PipesData(); return len(v), err }},
		{"fifo-data.img", func() (int, error) { v, err := d.FifoData(); return len(v), err }},
		{"sk-queues.img", func() (int, error) { v, err := d.SkQueues(); return len(v), err }},
		{"files.img", func() (int, error) { v, err := d.Files(); return len(v), err }},
		{"fdinfo-3.img", func() (int, error) { v, err := d.Fdinfo(3); return len(v), err }},
		{"memfd.img", func() (int, error) { v, err := d.MemfdInodes(); return len(v), err }},
		{"tty-info.img", func() (int, error) { v, err := d.TTYInfo(); return len(v), err }},
		{"pagemap-2.img", func() (int, error) { v, err := d.PageRuns(2); return len(v), err }},
		{"seccomp.img", func() (int, error) { v, err := d.Seccomp(); return fmtCount(v != nil), err }},
		{"timens-0.img", func() (int, error) { v, err := d.Timens(); return fmtCount(v != nil), err }},
		{"stats-dump", func() (int, error) { v, err := d.Stats("dump"); return fmtCount(v != nil), err }},
		{"pagemap-2.img (Pagemap)", func() (int, error) { v, err := d.Pagemap(2); return fmtCount(v != nil), err }},
		{"ghost-file-1.img", func() (int, error) { v, err := d.GhostFile(1); return fmtCount(v != nil), err }},
		{"tcp-stream-1.img", func() (int, error) { v, err := d.TCPStream(1); return fmtCount(v != nil), err }},
		{"parent", func() (int, error) { v, err := d.Parent(); return fmtCount(v != nil), err }},
	}
	for _, o := range optional {
		if n, err := o.get(); err != nil || n != 0 {
			t.Errorf("missing %s: %d entries, %v; want none and no error", o.file, n, err)
		}
	}
}

func fmtCount(b bool) int {
	if b {
		return 1
	}
	return 0
}
