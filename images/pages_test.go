package images_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/checkpoint-restore/go-criu/v8/crit/images/inventory"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/pagemap"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/pstree"

	"github.com/crest-restore/crest/images"
	"github.com/crest-restore/crest/test/fixture"
)

// pgEntry describes a pagemap entry of a synthetic image set. compat
// writes it the old way: compat_nr_pages and in_parent, no flags, no
// nr_pages.
type pgEntry struct {
	vaddr  uint64
	nr     uint64
	flags  uint32
	compat bool
	parent bool // with compat: in_parent
}

func (e pgEntry) message() *pagemap.PagemapEntry {
	if e.compat {
		m := &pagemap.PagemapEntry{Vaddr: proto.Uint64(e.vaddr), CompatNrPages: proto.Uint32(uint32(e.nr))}
		if e.parent {
			m.InParent = proto.Bool(true)
		}
		return m
	}
	return &pagemap.PagemapEntry{Vaddr: proto.Uint64(e.vaddr), CompatNrPages: proto.Uint32(0),
		Flags: proto.Uint32(e.flags), NrPages: proto.Uint64(e.nr)}
}

// pgWriteImage writes an image file of kind k into dir.
func pgWriteImage(t testing.TB, dir, name string, k *images.Kind, msgs ...proto.Message) {
	t.Helper()
	img := &images.Image{Kind: k}
	for _, m := range msgs {
		img.Entries = append(img.Entries, images.Entry{Message: m})
	}
	if err := images.WriteFile(filepath.Join(dir, name), img); err != nil {
		t.Fatal(err)
	}
}

// pgWriteSet makes an image set in dir with task 1 and, when ents is not
// nil, pagemap-1.img of pages id 1 with those entries; pages-1.img holds
// pages pages whose every byte tells (tag, page index).
func pgWriteSet(t testing.TB, dir string, tag byte, ents []pgEntry, pages int) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	pgWriteImage(t, dir, "inventory.img", images.KindInventory,
		&inventory.InventoryEntry{ImgVersion: proto.Uint32(2), FdinfoPerId: proto.Bool(true)})
	pgWriteImage(t, dir, "pstree.img", images.KindPstree,
		&pstree.PstreeEntry{Pid: proto.Uint32(1), Ppid: proto.Uint32(0), Pgid: proto.Uint32(1), Sid: proto.Uint32(1)})
	if ents != nil {
		msgs := []proto.Message{&pagemap.PagemapHead{PagesId: proto.Uint32(1)}}
		for _, e := range ents {
			msgs = append(msgs, e.message())
		}
		pgWriteImage(t, dir, "pagemap-1.img", images.KindPagemap, msgs...)
	}
	if pages >= 0 {
		if err := os.WriteFile(filepath.Join(dir, "pages-1.img"), pgPages(tag, pages), 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

// pgPages returns n pages; page i is filled with tag, i, tag, i ...
func pgPages(tag byte, n int) []byte {
	b := make([]byte, n*images.PageSize)
	for i := range n {
		p := b[i*images.PageSize : (i+1)*images.PageSize]
		for j := 0; j < len(p); j += 2 {
			p[j], p[j+1] = tag, byte(i)
		}
	}
	return b
}

// pgEntryOffset returns the byte offset of entry i (0 is the head) of a
// pagemap written by pgWriteSet.
func pgEntryOffset(ents []pgEntry, i int) int64 {
	off := int64(8) // IMG_COMMON + PAGEMAP
	msgs := []proto.Message{&pagemap.PagemapHead{PagesId: proto.Uint32(1)}}
	for _, e := range ents {
		msgs = append(msgs, e.message())
	}
	for _, m := range msgs[:i] {
		b, err := proto.Marshal(m)
		if err != nil {
			panic(err)
		}
		off += 4 + int64(len(b))
	}
	return off
}

func pgOpen(t testing.TB, dir string) *images.Dir {
	t.Helper()
	d, err := images.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// pgRead reads [vaddr, vaddr+n) through a Pages of runs.
func pgRead(t testing.TB, runs []images.PageRun, vaddr uint64, n int) []byte {
	t.Helper()
	p, err := images.OpenPages(runs)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	b := make([]byte, n)
	got, err := p.ReadAt(b, vaddr)
	if err != nil || got != n {
		t.Fatalf("ReadAt(%d bytes at 0x%x) = %d, %v", n, vaddr, got, err)
	}
	return b
}

func TestPageRunsParentChain(t *testing.T) {
	root := t.TempDir()
	gp, par, child := filepath.Join(root, "gp"), filepath.Join(root, "p"), filepath.Join(root, "c")
	const P, X, L = images.PEPresent, images.PEParent, images.PELazy
	// The grandparent has 8 pages at 0x10000 and 2 at 0x20000.
	pgWriteSet(t, gp, 'g', []pgEntry{
		{vaddr: 0x10000, nr: 8, flags: P},
		{vaddr: 0x20000, nr: 2, flags: P},
	}, 10)
	// The parent keeps 0x10000-0x12000 and 0x14000-0x18000 in the
	// grandparent, has 0x12000-0x14000 and 0x20000 itself.
	pgWriteSet(t, par, 'p', []pgEntry{
		{vaddr: 0x10000, nr: 2, flags: X},
		{vaddr: 0x12000, nr: 2, flags: P},
		{vaddr: 0x14000, nr: 4, flags: X},
		{vaddr: 0x20000, nr: 1, flags: P | L},
	}, 3)
	// The child's first run spans all three pieces of the parent's and
	// stops inside the last one.
	pgWriteSet(t, child, 'c', []pgEntry{
		{vaddr: 0x10000, nr: 6, flags: X},
		{vaddr: 0x16000, nr: 2, flags: P},
		{vaddr: 0x20000, nr: 1, flags: X},
	}, 2)
	for _, l := range [][2]string{{"../gp", par}, {"../p", child}} {
		if err := os.Symlink(l[0], filepath.Join(l[1], "parent")); err != nil {
			t.Fatal(err)
		}
	}
	runs, err := pgOpen(t, child).PageRuns(1)
	if err != nil {
		t.Fatal(err)
	}
	gpPages := filepath.Join(child, "parent", "parent", "pages-1.img")
	pPages := filepath.Join(child, "parent", "pages-1.img")
	want := []images.PageRun{
		{Vaddr: 0x10000, NrPages: 2, Flags: X | P, Pages: gpPages, Offset: 0},
		{Vaddr: 0x12000, NrPages: 2, Flags: X | P, Pages: pPages, Offset: 0},
		{Vaddr: 0x14000, NrPages: 2, Flags: X | P, Pages: gpPages, Offset: 4 * images.PageSize},
		{Vaddr: 0x16000, NrPages: 2, Flags: P, Pages: filepath.Join(child, "pages-1.img"), Offset: 0},
		{Vaddr: 0x20000, NrPages: 1, Flags: X | P | L, Pages: pPages, Offset: 2 * images.PageSize},
	}
	if fmt.Sprint(runs) != fmt.Sprint(want) {
		t.Fatalf("runs:\n got %v\nwant %v", runs, want)
	}

	// The bytes: page by page, who holds it.
	got := pgRead(t, runs, 0x10000, 8*images.PageSize)
	src := []struct {
		tag  byte
		page int
	}{{'g', 0}, {'g', 1}, {'p', 0}, {'p', 1}, {'g', 4}, {'g', 5}, {'c', 0}, {'c', 1}}
	for i, s := range src {
		wantPage := pgPages(s.tag, s.page+1)[s.page*images.PageSize:]
		if !bytes.Equal(got[i*images.PageSize:(i+1)*images.PageSize], wantPage) {
			t.Errorf("page 0x%x: want page %d of %c", 0x10000+i*images.PageSize, s.page, s.tag)
		}
	}
	if got := pgRead(t, runs, 0x20000, images.PageSize); !bytes.Equal(got, pgPages('p', 3)[2*images.PageSize:]) {
		t.Error("page 0x20000: want page 2 of the parent")
	}
}

func TestPageRunsParentMissing(t *testing.T) {
	const P, X = images.PEPresent, images.PEParent
	childEnts := []pgEntry{
		{vaddr: 0x1000, nr: 1, flags: P},
		{vaddr: 0x30000, nr: 2, flags: X},
	}
	tests := []struct {
		name   string
		parent []pgEntry // nil: no pagemap in the parent
		link   bool
		want   []string // in the message
	}{
		{"partial", []pgEntry{{vaddr: 0x30000, nr: 1, flags: P}}, true, []string{"0x31000", "parent/pagemap-1.img"}},
		{"hole", []pgEntry{{vaddr: 0x2f000, nr: 1, flags: P}, {vaddr: 0x31000, nr: 1, flags: P}}, true, []string{"0x30000", "parent/pagemap-1.img"}},
		{"no pagemap", nil, true, []string{"0x30000", "parent/pagemap-1.img does not exist"}},
		{"no parent", nil, false, []string{"0x30000", "no parent link"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := t.TempDir()
			child := filepath.Join(root, "c")
			pgWriteSet(t, child, 'c', childEnts, 1)
			if tt.link {
				pgWriteSet(t, filepath.Join(root, "p"), 'p', tt.parent, 2)
				if err := os.Symlink("../p", filepath.Join(child, "parent")); err != nil {
					t.Fatal(err)
				}
			}
			_, err := pgOpen(t, child).PageRuns(1)
			var fe *images.FormatError
			if !errors.As(err, &fe) {
				t.Fatalf("err = %v, want a FormatError", err)
			}
			if fe.File != filepath.Join(child, "pagemap-1.img") || fe.Entry != 2 || fe.Offset != pgEntryOffset(childEnts, 2) {
				t.Errorf("FormatError at %s entry %d offset %d, want %s entry 2 offset %d",
					fe.File, fe.Entry, fe.Offset, filepath.Join(child, "pagemap-1.img"), pgEntryOffset(childEnts, 2))
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not say %q", err, w)
				}
			}
		})
	}
}

func TestPageRunsParentLoop(t *testing.T) {
	dir := t.TempDir()
	pgWriteSet(t, dir, 'c', []pgEntry{{vaddr: 0x1000, nr: 1, flags: images.PEParent}}, 0)
	if err := os.Symlink(".", filepath.Join(dir, "parent")); err != nil {
		t.Fatal(err)
	}
	_, err := pgOpen(t, dir).PageRuns(1)
	if !images.IsFormat(err) || !strings.Contains(err.Error(), "loops") {
		t.Fatalf("err = %v, want a FormatError about a loop", err)
	}
}

func TestPageRunsLazy(t *testing.T) {
	dir := t.TempDir()
	const P, L = images.PEPresent, images.PELazy
	pgWriteSet(t, dir, 'l', []pgEntry{
		{vaddr: 0x1000, nr: 1, flags: P},
		{vaddr: 0x2000, nr: 2, flags: L},
		{vaddr: 0x4000, nr: 1, flags: P | L},
	}, 2)
	runs, err := pgOpen(t, dir).PageRuns(1)
	if err != nil {
		t.Fatal(err)
	}
	pages := filepath.Join(dir, "pages-1.img")
	want := []images.PageRun{
		{Vaddr: 0x1000, NrPages: 1, Flags: P, Pages: pages, Offset: 0},
		{Vaddr: 0x2000, NrPages: 2, Flags: L},
		{Vaddr: 0x4000, NrPages: 1, Flags: P | L, Pages: pages, Offset: images.PageSize},
	}
	if fmt.Sprint(runs) != fmt.Sprint(want) {
		t.Fatalf("runs:\n got %v\nwant %v", runs, want)
	}
	if !runs[1].Lazy() || runs[2].Lazy() {
		t.Error("Lazy() wrong")
	}
	p, err := images.OpenPages(runs)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	b := make([]byte, 3*images.PageSize)
	n, err := p.ReadAt(b, 0x1000)
	if !errors.Is(err, images.ErrLazyPages) || n != images.PageSize {
		t.Errorf("ReadAt across a lazy run = %d, %v; want %d, ErrLazyPages", n, err, images.PageSize)
	}
	if !bytes.Equal(b[:n], pgPages('l', 1)) {
		t.Error("bytes before the lazy run differ")
	}
	if n, err := p.ReadAt(b[:10], 0x4010); err != nil || !bytes.Equal(b[:10], pgPages('l', 2)[images.PageSize+16:images.PageSize+26]) {
		t.Errorf("ReadAt(0x4010) = %d, %v", n, err)
	}
	for _, addr := range []uint64{0, 0x5000, 0x4fff + 1, 1 << 40} {
		if n, err := p.ReadAt(b[:1], addr); !errors.Is(err, images.ErrNoPages) || n != 0 {
			t.Errorf("ReadAt(0x%x) = %d, %v; want ErrNoPages", addr, n, err)
		}
	}
	if n, err := p.ReadAt(b[:2], 0x4fff); !errors.Is(err, images.ErrNoPages) || n != 1 {
		t.Errorf("ReadAt over the end of the last run = %d, %v; want 1, ErrNoPages", n, err)
	}
}

func TestPageRunsCompat(t *testing.T) {
	root := t.TempDir()
	par, child := filepath.Join(root, "p"), filepath.Join(root, "c")
	pgWriteSet(t, par, 'p', []pgEntry{{vaddr: 0x8000, nr: 4, compat: true}}, 4)
	pgWriteSet(t, child, 'c', []pgEntry{
		{vaddr: 0x1000, nr: 2, compat: true},
		{vaddr: 0x9000, nr: 2, compat: true, parent: true},
		{vaddr: 0xb000, nr: 1, compat: true},
	}, 3)
	if err := os.Symlink("../p", filepath.Join(child, "parent")); err != nil {
		t.Fatal(err)
	}
	runs, err := pgOpen(t, child).PageRuns(1)
	if err != nil {
		t.Fatal(err)
	}
	const P, X = images.PEPresent, images.PEParent
	cp := filepath.Join(child, "pages-1.img")
	want := []images.PageRun{
		{Vaddr: 0x1000, NrPages: 2, Flags: P, Pages: cp, Offset: 0},
		{Vaddr: 0x9000, NrPages: 2, Flags: X | P, Pages: filepath.Join(child, "parent", "pages-1.img"), Offset: images.PageSize},
		{Vaddr: 0xb000, NrPages: 1, Flags: P, Pages: cp, Offset: 2 * images.PageSize},
	}
	if fmt.Sprint(runs) != fmt.Sprint(want) {
		t.Fatalf("runs:\n got %v\nwant %v", runs, want)
	}
	if got := pgRead(t, runs, 0x9000, 3*images.PageSize); !bytes.Equal(got,
		append(pgPages('p', 3)[images.PageSize:], pgPages('c', 3)[2*images.PageSize:]...)) {
		t.Error("bytes of 0x9000-0xc000 differ")
	}

	// nr_pages wins over compat_nr_pages when both are set; a zero
	// nr_pages falls back to compat_nr_pages.
	dir := filepath.Join(root, "both")
	pgWriteSet(t, dir, 'b', nil, 8)
	pgWriteImage(t, dir, "pagemap-1.img", images.KindPagemap,
		&pagemap.PagemapHead{PagesId: proto.Uint32(1)},
		&pagemap.PagemapEntry{Vaddr: proto.Uint64(0x1000), CompatNrPages: proto.Uint32(1), NrPages: proto.Uint64(3), Flags: proto.Uint32(P)},
		&pagemap.PagemapEntry{Vaddr: proto.Uint64(0x8000), CompatNrPages: proto.Uint32(2), NrPages: proto.Uint64(0), Flags: proto.Uint32(P)})
	runs, err = pgOpen(t, dir).PageRuns(1)
	if err != nil {
		t.Fatal(err)
	}
	if len(runs) != 2 || runs[0].NrPages != 3 || runs[1].NrPages != 2 || runs[1].Offset != 3*images.PageSize {
		t.Errorf("runs = %v", runs)
	}
}

func TestPageRunsValidation(t *testing.T) {
	const P, X, L = images.PEPresent, images.PEParent, images.PELazy
	tests := []struct {
		name  string
		ents  []pgEntry
		pages int
		entry int
		msg   string
	}{
		{"unsorted", []pgEntry{{vaddr: 0x5000, nr: 1, flags: P}, {vaddr: 0x2000, nr: 1, flags: P}}, 2, 2, "not sorted"},
		{"overlap", []pgEntry{{vaddr: 0x2000, nr: 2, flags: P}, {vaddr: 0x3000, nr: 1, flags: P}}, 3, 2, "overlaps entry 1"},
		{"same start", []pgEntry{{vaddr: 0x2000, nr: 1, flags: L}, {vaddr: 0x2000, nr: 1, flags: P}}, 1, 2, "overlaps"},
		{"zero length", []pgEntry{{vaddr: 0x2000, nr: 0, flags: P}}, 1, 1, "zero-length"},
		{"zero length compat", []pgEntry{{vaddr: 0x2000, nr: 0, compat: true}}, 1, 1, "zero-length"},
		{"unaligned", []pgEntry{{vaddr: 0x1000, nr: 1, flags: P}, {vaddr: 0x2010, nr: 1, flags: P}}, 2, 2, "not page aligned"},
		{"past pages end", []pgEntry{{vaddr: 0x2000, nr: 1, flags: P}, {vaddr: 0x4000, nr: 2, flags: P}}, 2, 2, "past the end of"},
		{"past pages end lazy present", []pgEntry{{vaddr: 0x2000, nr: 3, flags: L}, {vaddr: 0x8000, nr: 2, flags: P | L}}, 1, 2, "past the end of"},
		{"huge run", []pgEntry{{vaddr: 0x2000, nr: 1 << 50, flags: P}}, 1, 1, "past the end of"},
		{"wraps", []pgEntry{{vaddr: 0xfffffffffffff000, nr: 2, flags: L}}, 0, 1, "end of the address space"},
		{"unknown flag", []pgEntry{{vaddr: 0x2000, nr: 1, flags: P | 8}}, 1, 1, "unknown pagemap flags 0x8"},
		{"no flag", []pgEntry{{vaddr: 0x2000, nr: 1, flags: 0}}, 1, 1, "nowhere"},
		{"parent and present", []pgEntry{{vaddr: 0x2000, nr: 1, flags: P | X}}, 1, 1, "both PE_PARENT and PE_PRESENT"},
		{"no head", []pgEntry{}, 0, 0, "no pagemap_head"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			pgWriteSet(t, dir, 'v', tt.ents, tt.pages)
			if len(tt.ents) == 0 { // a pagemap with nothing after the magic
				pgWriteImage(t, dir, "pagemap-1.img", images.KindPagemap)
			}
			runs, err := pgOpen(t, dir).PageRuns(1)
			var fe *images.FormatError
			if !errors.As(err, &fe) {
				t.Fatalf("PageRuns = %v, %v; want a FormatError", runs, err)
			}
			file := filepath.Join(dir, "pagemap-1.img")
			if fe.File != file || fe.Entry != tt.entry || fe.Offset != pgEntryOffset(tt.ents, tt.entry) {
				t.Errorf("FormatError at %s entry %d offset %d, want %s entry %d offset %d",
					fe.File, fe.Entry, fe.Offset, file, tt.entry, pgEntryOffset(tt.ents, tt.entry))
			}
			if !strings.Contains(fe.Msg, tt.msg) {
				t.Errorf("message %q does not say %q", fe.Msg, tt.msg)
			}
		})
	}
}

func TestPageRunsMissingPages(t *testing.T) {
	dir := t.TempDir()
	pgWriteSet(t, dir, 'm', []pgEntry{{vaddr: 0x2000, nr: 1, flags: images.PEPresent}}, -1)
	_, err := pgOpen(t, dir).PageRuns(1)
	var me *images.MissingError
	if !errors.As(err, &me) || me.File != filepath.Join(dir, "pages-1.img") {
		t.Fatalf("err = %v, want a MissingError for pages-1.img", err)
	}

	// Without present pages the pages file is not needed, and a task
	// without a pagemap has no runs.
	pgWriteSet(t, dir, 'm', []pgEntry{{vaddr: 0x2000, nr: 1, flags: images.PELazy}}, -1)
	d := pgOpen(t, dir)
	if runs, err := d.PageRuns(1); err != nil || len(runs) != 1 {
		t.Errorf("lazy only: %v, %v", runs, err)
	}
	if runs, err := d.PageRuns(2); err != nil || runs != nil {
		t.Errorf("no pagemap: %v, %v", runs, err)
	}
}

func TestOpenPagesRefusesBadRuns(t *testing.T) {
	tests := []struct {
		name string
		runs []images.PageRun
	}{
		{"unsorted", []images.PageRun{{Vaddr: 0x5000, NrPages: 1}, {Vaddr: 0x1000, NrPages: 1}}},
		{"overlap", []images.PageRun{{Vaddr: 0x1000, NrPages: 2}, {Vaddr: 0x2000, NrPages: 1}}},
		{"empty", []images.PageRun{{Vaddr: 0x1000, NrPages: 0}}},
		{"wraps", []images.PageRun{{Vaddr: 0xfffffffffffff000, NrPages: 1}}},
		{"no file", []images.PageRun{{Vaddr: 0x1000, NrPages: 1, Pages: "/nonexistent/pages-1.img"}}},
	}
	for _, tt := range tests {
		if p, err := images.OpenPages(tt.runs); err == nil {
			p.Close()
			t.Errorf("%s: OpenPages accepted %v", tt.name, tt.runs)
		}
	}
}

// xorshift64 is the PRNG of the fixtures' prog.c.
func xorshift64(s *uint64) uint64 {
	x := *s
	x ^= x << 13
	x ^= x >> 7
	x ^= x << 17
	*s = x
	return x
}

// TestCounterBuffer reads the 2 MiB buffer of the counter fixture back
// through the pages reader and compares it with what prog.c computes.
func TestCounterBuffer(t *testing.T) {
	src, err := os.ReadFile(fixture.Path(t, "counter", "src", "prog.c"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`#define SEED (0x[0-9a-fA-F]+)ULL`).FindSubmatch(src)
	if m == nil {
		t.Fatal("no SEED in prog.c")
	}
	seed, err := strconv.ParseUint(string(m[1]), 0, 64)
	if err != nil {
		t.Fatal(err)
	}
	const bufSize = 2 << 20
	pattern := make([]byte, bufSize)
	s := seed
	for i := 0; i < bufSize; i += 8 {
		binary.LittleEndian.PutUint64(pattern[i:], xorshift64(&s))
	}

	d := pgOpen(t, fixture.Images(t, "counter"))
	mm, err := d.MM(1)
	if err != nil {
		t.Fatal(err)
	}
	runs, err := d.PageRuns(1)
	if err != nil {
		t.Fatal(err)
	}
	p, err := images.OpenPages(runs)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	found := 0
	for _, v := range mm.GetVmas() {
		size := v.GetEnd() - v.GetStart()
		// malloc gives a 2 MiB block its own mapping, a page bigger
		// than asked for its header.
		if size < bufSize || size > bufSize+1<<20 {
			continue
		}
		data := make([]byte, size)
		if n, err := p.ReadAt(data, v.GetStart()); err != nil {
			t.Fatalf("VMA 0x%x-0x%x: read %d bytes: %v", v.GetStart(), v.GetEnd(), n, err)
		}
		off := bytes.Index(data, pattern[:64])
		if off < 0 {
			continue
		}
		if off != 16 {
			t.Errorf("buffer at 0x%x+%d, want 16 bytes into the mapping (malloc's chunk header)", v.GetStart(), off)
		}
		if len(data)-off < bufSize || !bytes.Equal(data[off:off+bufSize], pattern) {
			t.Fatalf("buffer at 0x%x differs from the xorshift64 pattern", v.GetStart()+uint64(off))
		}
		found++
	}
	if found != 1 {
		t.Fatalf("found the buffer in %d VMAs, want 1", found)
	}
}

// TestFixturePageRuns checks every fixture's pagemaps against its VMAs and
// pages files, and reads every page through the pages reader.
func TestFixturePageRuns(t *testing.T) {
	for _, name := range fixture.Names(t) {
		t.Run(name, func(t *testing.T) {
			dir := fixture.Images(t, name)
			d := pgOpen(t, dir)
			present := map[string]uint64{} // pages file -> present pages
			check := func(what string, runs []images.PageRun, inside func(images.PageRun) bool) {
				t.Helper()
				if len(runs) == 0 {
					t.Errorf("%s: no page runs", what)
				}
				for i, r := range runs {
					if i > 0 && r.Vaddr < runs[i-1].End() {
						t.Errorf("%s: run %d at 0x%x overlaps the one before", what, i, r.Vaddr)
					}
					if !inside(r) {
						t.Errorf("%s: run 0x%x-0x%x is outside the mappings", what, r.Vaddr, r.End())
					}
					if r.Flags&images.PEParent != 0 || r.Lazy() {
						t.Errorf("%s: run at 0x%x has flags 0x%x: dumps without pre-dump hold every page", what, r.Vaddr, r.Flags)
					}
					present[r.Pages] += r.NrPages
				}
				total := uint64(0)
				for _, r := range runs {
					total += r.NrPages * images.PageSize
				}
				p, err := images.OpenPages(runs)
				if err != nil {
					t.Fatal(err)
				}
				defer p.Close()
				for _, r := range runs {
					b := make([]byte, r.NrPages*images.PageSize)
					if n, err := p.ReadAt(b, r.Vaddr); err != nil {
						t.Errorf("%s: reading run 0x%x: %d, %v", what, r.Vaddr, n, err)
					}
				}
			}
			for _, task := range d.Pstree {
				pid := task.GetPid()
				mm, err := d.MM(pid)
				if err != nil {
					t.Fatal(err)
				}
				vmas := mm.GetVmas()
				runs, err := d.PageRuns(pid)
				if err != nil {
					t.Fatal(err)
				}
				check(fmt.Sprintf("task %d", pid), runs, func(r images.PageRun) bool {
					// Every page of the run in some VMA (a run may span
					// adjacent VMAs).
					addr := r.Vaddr
					for _, v := range vmas {
						if v.GetStart() <= addr && addr < v.GetEnd() {
							addr = min(v.GetEnd(), r.End())
						}
					}
					return addr == r.End()
				})
			}
			shm, err := filepath.Glob(filepath.Join(dir, "pagemap-shmem-*.img"))
			if err != nil {
				t.Fatal(err)
			}
			memfds, err := d.MemfdInodes()
			if err != nil {
				t.Fatal(err)
			}
			if (name == "shmem" || name == "files") && len(shm) == 0 {
				t.Errorf("no pagemap-shmem image")
			}
			for _, f := range shm {
				id, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimPrefix(filepath.Base(f), "pagemap-shmem-"), ".img"), 10, 64)
				if err != nil {
					t.Fatal(err)
				}
				size := uint64(0)
				for _, m := range memfds {
					if uint64(m.GetShmid()) == id {
						size = m.GetSize()
					}
				}
				if size == 0 {
					t.Errorf("%s: no memfd inode with shmid %d", f, id)
				}
				runs, err := d.ShmemPageRuns(id)
				if err != nil {
					t.Fatal(err)
				}
				check(fmt.Sprintf("shmem %d", id), runs, func(r images.PageRun) bool { return r.End() <= size })
			}
			// Every pages file holds exactly the present pages.
			files, err := filepath.Glob(filepath.Join(dir, "pages-*.img"))
			if err != nil {
				t.Fatal(err)
			}
			sort.Strings(files)
			if len(files) != len(present) {
				t.Errorf("%d pages files, page runs use %d", len(files), len(present))
			}
			for _, f := range files {
				st, err := os.Stat(f)
				if err != nil {
					t.Fatal(err)
				}
				if uint64(st.Size()) != present[f]*images.PageSize {
					t.Errorf("%s: %d bytes, page runs use %d pages (%d bytes)", f, st.Size(), present[f], present[f]*images.PageSize)
				}
			}
		})
	}
}
