package images_test

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	ghost_file "github.com/checkpoint-restore/go-criu/v8/crit/images/ghost-file"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/pagemap"
	pipe_data "github.com/checkpoint-restore/go-criu/v8/crit/images/pipe-data"
	sk_packet "github.com/checkpoint-restore/go-criu/v8/crit/images/sk-packet"

	"github.com/crest-restore/crest/images"
	"github.com/crest-restore/crest/test/fixture"
)

// fuzzFixtureFiles returns the bytes of every fixture file whose name
// matches keep.
func fuzzFixtureFiles(f *testing.F, keep func(name string) bool) [][]byte {
	var out [][]byte
	for _, name := range fixture.Names(f) {
		dir := fixture.Images(f, name)
		ents, err := os.ReadDir(dir)
		if err != nil {
			f.Fatal(err)
		}
		for _, e := range ents {
			if !keep(e.Name()) {
				continue
			}
			b, err := os.ReadFile(filepath.Join(dir, e.Name()))
			if err != nil {
				f.Fatal(err)
			}
			out = append(out, b)
		}
	}
	return out
}

// fuzzEncode encodes an image, for seeds.
func fuzzEncode(f *testing.F, k *images.Kind, ents ...images.Entry) []byte {
	var b bytes.Buffer
	if _, err := (&images.Image{Kind: k, Entries: ents}).WriteTo(&b); err != nil {
		f.Fatal(err)
	}
	return b.Bytes()
}

// fuzzPayloadSeeds are well-formed images of every payload kind.
func fuzzPayloadSeeds(f *testing.F) [][]byte {
	head := func(chunks bool) *ghost_file.GhostFileEntry {
		return &ghost_file.GhostFileEntry{Uid: proto.Uint32(0), Gid: proto.Uint32(0), Mode: proto.Uint32(0o100644), Chunks: proto.Bool(chunks)}
	}
	return [][]byte{
		fuzzEncode(f, images.KindPipesData,
			images.Entry{Message: &pipe_data.PipeDataEntry{PipeId: proto.Uint32(1), Bytes: proto.Uint32(3)}, Payload: []byte("abc")},
			images.Entry{Message: &pipe_data.PipeDataEntry{PipeId: proto.Uint32(2), Bytes: proto.Uint32(0)}}),
		fuzzEncode(f, images.KindFifoData,
			images.Entry{Message: &pipe_data.PipeDataEntry{PipeId: proto.Uint32(1), Bytes: proto.Uint32(2), Size: proto.Uint32(4096)}, Payload: []byte("ab")}),
		fuzzEncode(f, images.KindSkQueues,
			images.Entry{Message: &sk_packet.SkPacketEntry{IdFor: proto.Uint32(3), Length: proto.Uint32(4)}, Payload: []byte("pkt!")}),
		fuzzEncode(f, images.KindTCPStream,
			images.Entry{Message: plTCP(3, 2), Payload: []byte("inqou")}),
		fuzzEncode(f, images.KindGhostFile,
			images.Entry{Message: head(false), Payload: []byte("the whole file")}),
		fuzzEncode(f, images.KindGhostFile,
			images.Entry{Message: head(true)},
			images.Entry{Message: &ghost_file.GhostChunkEntry{Len: proto.Uint64(2), Off: proto.Uint64(0)}, Payload: []byte("ab")},
			images.Entry{Message: &ghost_file.GhostChunkEntry{Len: proto.Uint64(1), Off: proto.Uint64(8192)}, Payload: []byte("c")}),
	}
}

// FuzzReadImage decodes any bytes as an image file, with the size known and
// unknown: the two must agree, and what decodes must encode and decode back
// to the same entries.
func FuzzReadImage(f *testing.F) {
	for _, b := range fuzzFixtureFiles(f, func(n string) bool { return !images.IsRawFile(n) }) {
		f.Add(b)
	}
	for _, b := range fuzzPayloadSeeds(f) {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		sized, err1 := images.ReadImage(bytes.NewReader(b), "fuzz.img", int64(len(b)))
		unsized, err2 := images.ReadImage(bytes.NewReader(b), "fuzz.img", -1)
		for _, err := range []error{err1, err2} {
			if err != nil && !images.IsFormat(err) {
				t.Fatalf("error is not a FormatError: %v", err)
			}
		}
		if (err1 == nil) != (err2 == nil) {
			t.Fatalf("size known: %v; size unknown: %v", err1, err2)
		}
		if err1 != nil {
			return
		}
		fuzzSameEntries(t, "size unknown", sized, unsized)
		var out bytes.Buffer
		if _, err := sized.WriteTo(&out); err != nil {
			t.Fatalf("re-encoding a decoded image: %v", err)
		}
		again, err := images.ReadImage(bytes.NewReader(out.Bytes()), "again.img", int64(out.Len()))
		if err != nil {
			t.Fatalf("decoding the re-encoded image: %v", err)
		}
		fuzzSameEntries(t, "re-encoded", sized, again)
	})
}

func fuzzSameEntries(t *testing.T, what string, a, b *images.Image) {
	t.Helper()
	if a.Kind != b.Kind || len(a.Entries) != len(b.Entries) {
		t.Fatalf("%s: %s with %d entries, want %s with %d", what, b.Kind.Name, len(b.Entries), a.Kind.Name, len(a.Entries))
	}
	for i := range a.Entries {
		if !proto.Equal(a.Entries[i].Message, b.Entries[i].Message) || !bytes.Equal(a.Entries[i].Payload, b.Entries[i].Payload) {
			t.Fatalf("%s: entry %d differs", what, i)
		}
	}
}

// fuzzMaxPages bounds the pages files of FuzzPagemap (sparse files, so
// large ones cost nothing to make).
const fuzzMaxPages = 1 << 12

// FuzzPagemap walks any bytes as the pagemap of task 1 of an image set
// whose parent set has another pagemap, each with a pages file of a given
// number of pages. What resolves must be runs that are sorted, inside their
// pages files, and readable.
func FuzzPagemap(f *testing.F) {
	const P, X, L = images.PEPresent, images.PEParent, images.PELazy
	pm := func(ents ...pgEntry) []byte {
		msgs := []images.Entry{{Message: &pagemap.PagemapHead{PagesId: proto.Uint32(1)}}}
		for _, e := range ents {
			msgs = append(msgs, images.Entry{Message: e.message()})
		}
		return fuzzEncode(f, images.KindPagemap, msgs...)
	}
	parent := pm(pgEntry{vaddr: 0x10000, nr: 8, flags: P}, pgEntry{vaddr: 0x20000, nr: 2, flags: L}, pgEntry{vaddr: 0x30000, nr: 1, compat: true})
	f.Add(pm(pgEntry{vaddr: 0x10000, nr: 4, flags: X}, pgEntry{vaddr: 0x14000, nr: 2, flags: P | L}, pgEntry{vaddr: 0x20000, nr: 2, flags: X}), parent, uint16(8), uint16(9))
	f.Add(pm(pgEntry{vaddr: 0x1000, nr: 2, compat: true}, pgEntry{vaddr: 0x30000, nr: 1, compat: true, parent: true}), parent, uint16(2), uint16(9))
	f.Add(pm(pgEntry{vaddr: 0x1000, nr: 2, flags: L}, pgEntry{vaddr: 0x5000, nr: 1, flags: P}), []byte{}, uint16(1), uint16(0))
	f.Add(pm(pgEntry{vaddr: 0x10000, nr: 9, flags: X}), parent, uint16(0), uint16(9))
	for _, b := range fuzzFixtureFiles(f, func(n string) bool { return strings.HasPrefix(n, "pagemap-") }) {
		f.Add(b, parent, uint16(600), uint16(9))
	}
	// Reused: the fuzz function runs one input at a time.
	dir := f.TempDir()
	pdir := filepath.Join(dir, "parent")
	pgWriteSet(f, dir, 0, nil, -1)
	pgWriteSet(f, pdir, 0, nil, -1)
	f.Fuzz(func(t *testing.T, child, parent []byte, childPages, parentPages uint16) {
		for _, s := range []struct {
			dir   string
			pm    []byte
			pages uint16
		}{{dir, child, childPages}, {pdir, parent, parentPages}} {
			if err := os.WriteFile(filepath.Join(s.dir, "pagemap-1.img"), s.pm, 0o600); err != nil {
				t.Fatal(err)
			}
			fuzzSparse(t, filepath.Join(s.dir, "pages-1.img"), int64(s.pages%fuzzMaxPages)*images.PageSize)
		}
		d, err := images.Open(dir)
		if err != nil {
			t.Fatal(err)
		}
		runs, err := d.PageRuns(1)
		if err != nil {
			var me *images.MissingError
			if !images.IsFormat(err) && !errors.As(err, &me) {
				t.Fatalf("error is not a FormatError: %v", err)
			}
			return
		}
		p, err := images.OpenPages(runs)
		if err != nil {
			t.Fatalf("OpenPages of resolved runs: %v", err)
		}
		defer p.Close()
		buf := make([]byte, 2*images.PageSize)
		for i, r := range runs {
			if r.NrPages == 0 || r.Vaddr%images.PageSize != 0 || (i > 0 && r.Vaddr < runs[i-1].End()) {
				t.Fatalf("run %d: %+v after %+v", i, r, runs[max(i-1, 0)])
			}
			if r.Lazy() != (r.Flags&images.PEPresent == 0) {
				t.Fatalf("run %d: %+v: lazy and present disagree", i, r)
			}
			if !r.Lazy() {
				st, err := os.Stat(r.Pages)
				if err != nil {
					t.Fatal(err)
				}
				if r.Offset < 0 || r.Offset%images.PageSize != 0 || r.NrPages > uint64(st.Size()-r.Offset)/images.PageSize {
					t.Fatalf("run %d: %+v outside %s (%d bytes)", i, r, r.Pages, st.Size())
				}
			}
			// The first pages and the last one.
			first := buf[:min(uint64(len(buf)), r.NrPages*images.PageSize)]
			for _, at := range []uint64{r.Vaddr, r.End() - images.PageSize} {
				n, err := p.ReadAt(first[:images.PageSize], at)
				if r.Lazy() {
					if n != 0 || !errors.Is(err, images.ErrLazyPages) {
						t.Fatalf("run %d: ReadAt(0x%x) of a lazy run = %d, %v", i, at, n, err)
					}
				} else if err != nil {
					t.Fatalf("run %d: ReadAt(0x%x) = %d, %v", i, at, n, err)
				}
			}
			if n, err := p.ReadAt(first, r.Vaddr); !r.Lazy() && (err != nil || n != len(first)) {
				t.Fatalf("run %d: ReadAt(0x%x, %d) = %d, %v", i, r.Vaddr, len(first), n, err)
			}
		}
	})
}

// fuzzSparse makes path a file of size bytes of zeros without writing them.
func fuzzSparse(t *testing.T, path string, size int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

// fuzzPayloadFiles are the image files of payload kinds and how to read
// them through the Dir, checking what comes back against its entries.
var fuzzPayloadFiles = []struct {
	file string
	read func(t *testing.T, d *images.Dir) error
}{
	{"pipes-data.img", func(t *testing.T, d *images.Dir) error {
		v, err := d.PipesData()
		for _, p := range v {
			if uint32(len(p.Data)) != p.Entry.GetBytes() {
				t.Fatalf("pipe data: %d bytes, entry says %d", len(p.Data), p.Entry.GetBytes())
			}
		}
		return err
	}},
	{"fifo-data.img", func(t *testing.T, d *images.Dir) error {
		v, err := d.FifoData()
		for _, p := range v {
			if uint32(len(p.Data)) != p.Entry.GetBytes() {
				t.Fatalf("fifo data: %d bytes, entry says %d", len(p.Data), p.Entry.GetBytes())
			}
		}
		return err
	}},
	{"sk-queues.img", func(t *testing.T, d *images.Dir) error {
		v, err := d.SkQueues()
		for _, p := range v {
			if uint32(len(p.Data)) != p.Entry.GetLength() {
				t.Fatalf("packet: %d bytes, entry says %d", len(p.Data), p.Entry.GetLength())
			}
		}
		return err
	}},
	{"tcp-stream-1.img", func(t *testing.T, d *images.Dir) error {
		s, err := d.TCPStream(1)
		if s != nil && (uint32(len(s.Inq)) != s.Entry.GetInqLen() || uint32(len(s.Outq)) != s.Entry.GetOutqLen()) {
			t.Fatalf("tcp: queues of %d and %d bytes, entry says %d and %d", len(s.Inq), len(s.Outq), s.Entry.GetInqLen(), s.Entry.GetOutqLen())
		}
		return err
	}},
	{"ghost-file-1.img", func(t *testing.T, d *images.Dir) error {
		g, err := d.GhostFile(1)
		if g != nil && !g.Entry.GetChunks() && len(g.Chunks) != 1 {
			t.Fatalf("ghost file without chunks has %d pieces", len(g.Chunks))
		}
		return err
	}},
}

// FuzzPayload reads any bytes as each payload image of an image set.
func FuzzPayload(f *testing.F) {
	for _, b := range fuzzPayloadSeeds(f) {
		f.Add(b)
	}
	for _, b := range fuzzFixtureFiles(f, func(n string) bool { return n == "pipes-data.img" }) {
		f.Add(b)
	}
	dir := f.TempDir()
	pgWriteSet(f, dir, 0, nil, -1)
	f.Fuzz(func(t *testing.T, b []byte) {
		for _, pf := range fuzzPayloadFiles {
			path := filepath.Join(dir, pf.file)
			if err := os.WriteFile(path, b, 0o600); err != nil {
				t.Fatal(err)
			}
			d, err := images.Open(dir)
			if err != nil {
				t.Fatal(err)
			}
			err = pf.read(t, d)
			if err != nil && !images.IsFormat(err) {
				t.Fatalf("%s: error is not a FormatError: %v", pf.file, err)
			}
			if err := os.Remove(path); err != nil {
				t.Fatal(err)
			}
		}
	})
}
