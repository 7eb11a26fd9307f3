package images

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"sort"

	"github.com/checkpoint-restore/go-criu/v8/crit/images/pagemap"
)

// PageSize is the page size of the images: pagemap entries count pages of
// this size and pages-N.img stores them back to back.
const PageSize = 4096

// Pagemap entry flags (CRIU's criu/include/pagemap.h).
const (
	// PEParent: the pages are in the parent image set, at the same
	// addresses of the same task's (or shared memory object's) pagemap.
	PEParent uint32 = 1 << 0
	// PELazy: the pages may be restored lazily (userfaultfd). Without
	// PEPresent they are not in pages-N.img: a lazy-pages server has them.
	PELazy uint32 = 1 << 1
	// PEPresent: the pages are in pages-N.img.
	PEPresent uint32 = 1 << 2

	peKnown = PEParent | PELazy | PEPresent
)

// maxParentDepth bounds how many parent image sets a pagemap lookup follows.
// Iterative pre-dumps make long chains, but not this long; the bound keeps a
// broken "parent" link from recursing without end.
const maxParentDepth = 128

// PageRun is a run of consecutive virtual pages and where their content is.
type PageRun struct {
	Vaddr   uint64 // first address (for shared memory: offset in the object)
	NrPages uint64
	// Flags are the PE* flags of the pagemap entry that holds the pages,
	// with PEParent added when that entry is in a parent image set.
	Flags uint32
	// Pages is the path of the pages file holding the run, "" when its
	// pages are not in any file (PELazy without PEPresent).
	Pages  string
	Offset int64 // byte offset of Vaddr's page in Pages
}

// End returns the address just past the run.
func (r PageRun) End() uint64 { return r.Vaddr + r.NrPages*PageSize }

// Lazy reports whether the run's pages are not in any pages file.
func (r PageRun) Lazy() bool { return r.Pages == "" }

// PageRuns returns where the memory pages of task pid are: its pagemap with
// every PE_PARENT run resolved through the parent image sets, sorted by
// address. A task without a pagemap (zombie, helper) has no runs (nil).
func (d *Dir) PageRuns(pid uint32) ([]PageRun, error) {
	return d.pageRuns(fmt.Sprintf("pagemap-%d.img", pid))
}

// ShmemPageRuns is PageRuns for the shared memory object shmid
// (pagemap-shmem-ID.img); addresses are offsets in the object.
func (d *Dir) ShmemPageRuns(shmid uint64) ([]PageRun, error) {
	return d.pageRuns(fmt.Sprintf("pagemap-shmem-%d.img", shmid))
}

// pmRun is a run of one pagemap file as written, PE_PARENT unresolved.
type pmRun struct {
	PageRun
	entry int   // index of the entry in the pagemap file
	off   int64 // byte offset of the entry
}

// pmFile is one decoded and validated pagemap file.
type pmFile struct {
	path string
	runs []pmRun
}

// pageLevel is one image set of a parent chain and its pagemap of the name
// being resolved (pm nil when it has none).
type pageLevel struct {
	dir *Dir
	pm  *pmFile
}

// pageResolver resolves the pagemap of one name through a parent chain,
// loading parents only when a PE_PARENT run needs them.
type pageResolver struct {
	name   string
	levels []*pageLevel
	seen   []fs.FileInfo // the directories of levels, to catch loops
}

// EntryPages returns a pagemap entry's flags and page count, reading older
// images as CRIU does: without flags an entry is PE_PRESENT, or PE_PARENT
// when in_parent is set; without nr_pages (before CRIU 3.x, and CRIU 4.2
// writes compat_nr_pages as 0 beside it) the count is compat_nr_pages.
func EntryPages(pe *pagemap.PagemapEntry) (flags uint32, pages uint64) {
	flags = pe.GetFlags()
	if pe.GetInParent() {
		flags |= PEParent
	} else if pe.Flags == nil {
		flags = PEPresent
	}
	pages = pe.GetNrPages()
	if pages == 0 {
		pages = uint64(pe.GetCompatNrPages())
	}
	return flags, pages
}

func (d *Dir) pageRuns(name string) ([]PageRun, error) {
	pm, err := readPMFile(d.file(name), d.Path)
	if err != nil || pm == nil {
		return nil, err
	}
	pr := &pageResolver{name: name, levels: []*pageLevel{{dir: d, pm: pm}}}
	if st, err := os.Stat(d.Path); err == nil {
		pr.seen = append(pr.seen, st)
	}
	out := make([]PageRun, 0, len(pm.runs))
	for _, r := range pm.runs {
		if r.Flags&PEParent == 0 {
			out = append(out, r.PageRun)
			continue
		}
		if out, err = pr.fromParent(out, 1, pm.path, r, r.Vaddr, r.End()); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// level returns the image set at depth k of the chain (0 is the set asked),
// loading it on first use; nil when the chain is shorter.
func (pr *pageResolver) level(k int, from string, r pmRun) (*pageLevel, error) {
	if k < len(pr.levels) {
		return pr.levels[k], nil
	}
	if k > maxParentDepth {
		return nil, &FormatError{File: from, Offset: r.off, Entry: r.entry,
			Msg: fmt.Sprintf("parent image sets nest deeper than %d", maxParentDepth)}
	}
	prev := pr.levels[k-1].dir
	parent, err := prev.Parent()
	if err != nil {
		return nil, fmt.Errorf("%s: entry %d: opening the parent image set: %w", from, r.entry, err)
	}
	if parent == nil {
		return nil, nil
	}
	if st, err := os.Stat(parent.Path); err == nil {
		for _, s := range pr.seen {
			if os.SameFile(s, st) {
				return nil, &FormatError{File: from, Offset: r.off, Entry: r.entry,
					Msg: fmt.Sprintf("the parent link %s loops back to an image set of the chain", parent.Path)}
			}
		}
		pr.seen = append(pr.seen, st)
	}
	pm, err := readPMFile(parent.file(pr.name), parent.Path)
	if err != nil {
		return nil, err
	}
	lv := &pageLevel{dir: parent, pm: pm}
	pr.levels = append(pr.levels, lv)
	return lv, nil
}

// fromParent appends the runs that cover [start, end) at depth k of the
// chain. from and r are the pagemap file and entry that said PE_PARENT.
func (pr *pageResolver) fromParent(out []PageRun, k int, from string, r pmRun, start, end uint64) ([]PageRun, error) {
	lv, err := pr.level(k, from, r)
	if err != nil {
		return nil, err
	}
	missing := func(addr uint64, where string) error {
		return &FormatError{File: from, Offset: r.off, Entry: r.entry,
			Msg: fmt.Sprintf("page 0x%x is in the parent image set, but %s", addr, where)}
	}
	if lv == nil {
		return nil, missing(start, fmt.Sprintf("%s has no parent link", pr.levels[k-1].dir.file("parent")))
	}
	if lv.pm == nil {
		return nil, missing(start, fmt.Sprintf("%s does not exist", lv.dir.file(pr.name)))
	}
	runs := lv.pm.runs
	i := sort.Search(len(runs), func(i int) bool { return runs[i].End() > start })
	for cur := start; cur < end; i++ {
		if i >= len(runs) || runs[i].Vaddr > cur {
			return nil, missing(cur, "it is not in "+lv.pm.path)
		}
		p := runs[i]
		stop := min(end, p.End())
		if p.Flags&PEParent != 0 {
			if out, err = pr.fromParent(out, k+1, lv.pm.path, p, cur, stop); err != nil {
				return nil, err
			}
		} else {
			piece := p.PageRun
			piece.Vaddr = cur
			piece.NrPages = (stop - cur) / PageSize
			piece.Flags |= PEParent
			if piece.Pages != "" {
				piece.Offset += int64(cur - p.Vaddr)
			}
			out = append(out, piece)
		}
		cur = stop
	}
	return out, nil
}

// readPMFile reads and validates the pagemap file at path of the image set
// in dir. A missing file gives nil.
func readPMFile(path, dir string) (*pmFile, error) {
	f, err := os.Open(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, nil
		}
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	// Most pagemaps are a few hundred bytes: a buffer of their size is
	// enough, and one of 64 KiB serves the big ones.
	buf := int(min(max(st.Size(), 16), 64<<10))
	return walkPagemap(bufio.NewReaderSize(f, buf), path, st.Size(), func(id uint32) string {
		return filepath.Join(dir, fmt.Sprintf("pages-%d.img", id))
	})
}

// walkPagemap decodes a pagemap image from r and lays its runs out in the
// pages file that pagesPath names for the head's pages_id.
func walkPagemap(r io.Reader, path string, size int64, pagesPath func(id uint32) string) (*pmFile, error) {
	rd, err := NewKindReader(r, path, size, KindPagemap)
	if err != nil {
		return nil, err
	}
	headOff := rd.Offset()
	e, err := rd.Next()
	if err == io.EOF {
		return nil, &FormatError{File: path, Offset: headOff, Entry: 0, Msg: "no pagemap_head"}
	}
	if err != nil {
		return nil, err
	}
	pages := pagesPath(e.Message.(*pagemap.PagemapHead).GetPagesId())
	pagesSize := int64(-1) // stat'ed at the first PE_PRESENT entry
	pm := &pmFile{path: path}
	var pos int64 // offset in the pages file
	for i := 1; ; i++ {
		off := rd.Offset()
		e, err := rd.Next()
		if err == io.EOF {
			return pm, nil
		}
		if err != nil {
			return nil, err
		}
		bad := func(format string, args ...any) error {
			return &FormatError{File: path, Offset: off, Entry: i, Msg: fmt.Sprintf(format, args...)}
		}
		pe := e.Message.(*pagemap.PagemapEntry)
		run := pmRun{entry: i, off: off}
		run.Vaddr = pe.GetVaddr()
		run.Flags, run.NrPages = EntryPages(pe)
		switch {
		case run.Flags&^peKnown != 0:
			return nil, bad("unknown pagemap flags 0x%x", run.Flags&^peKnown)
		case run.Flags&(PEParent|PEPresent) == PEParent|PEPresent:
			return nil, bad("flags 0x%x say both PE_PARENT and PE_PRESENT", run.Flags)
		case run.Flags == 0:
			return nil, bad("no PE_PRESENT, PE_PARENT or PE_LAZY flag: the pages are nowhere")
		case run.NrPages == 0:
			return nil, bad("zero-length entry at 0x%x", run.Vaddr)
		case run.Vaddr%PageSize != 0:
			return nil, bad("vaddr 0x%x is not page aligned", run.Vaddr)
		case run.NrPages > (math.MaxUint64-run.Vaddr)/PageSize:
			return nil, bad("%d pages at 0x%x run past the end of the address space", run.NrPages, run.Vaddr)
		}
		if n := len(pm.runs); n > 0 {
			prev := pm.runs[n-1]
			if run.Vaddr < prev.Vaddr {
				return nil, bad("entries not sorted: vaddr 0x%x after 0x%x (entry %d)", run.Vaddr, prev.Vaddr, prev.entry)
			}
			if run.Vaddr < prev.End() {
				return nil, bad("vaddr 0x%x overlaps entry %d (0x%x-0x%x)", run.Vaddr, prev.entry, prev.Vaddr, prev.End())
			}
		}
		if run.Flags&PEPresent != 0 {
			if pagesSize < 0 {
				st, err := os.Stat(pages)
				if errors.Is(err, fs.ErrNotExist) {
					return nil, &MissingError{File: pages, What: path}
				}
				if err != nil {
					return nil, err
				}
				pagesSize = st.Size()
			}
			if run.NrPages > uint64(pagesSize-pos)/PageSize {
				return nil, bad("%d pages at 0x%x run past the end of %s (%d bytes, the run starts at %d)",
					run.NrPages, run.Vaddr, pages, pagesSize, pos)
			}
			run.Pages, run.Offset = pages, pos
			pos += int64(run.NrPages) * PageSize
		}
		pm.runs = append(pm.runs, run)
	}
}

// ErrNoPages is wrapped by Pages.ReadAt errors for addresses in no run.
var ErrNoPages = errors.New("no page run holds this address")

// ErrLazyPages is wrapped by Pages.ReadAt errors for addresses whose pages
// are lazy: not in any pages file, only a lazy-pages server has them.
var ErrLazyPages = errors.New("the page is lazy, not in the images")

// Pages copies memory content out of the pages files of a set of runs.
// It keeps the files open until Close. It is safe for concurrent use.
type Pages struct {
	ext   []pageExtent
	files []*os.File
}

// pageExtent is a range of consecutive runs that one pread serves.
type pageExtent struct {
	start, end uint64
	f          *os.File // nil for lazy runs
	off        int64
}

// OpenPages opens the pages files of runs (as PageRuns returns them: sorted
// and not overlapping) for reading.
func OpenPages(runs []PageRun) (*Pages, error) {
	p := &Pages{}
	open := make(map[string]*os.File)
	for i, r := range runs {
		if r.NrPages == 0 || r.NrPages > (math.MaxUint64-r.Vaddr)/PageSize {
			p.Close()
			return nil, fmt.Errorf("page run %d: %d pages at 0x%x: bad length", i, r.NrPages, r.Vaddr)
		}
		if i > 0 && r.Vaddr < runs[i-1].End() {
			p.Close()
			return nil, fmt.Errorf("page run %d at 0x%x: not sorted or overlapping run %d (0x%x-0x%x)",
				i, r.Vaddr, i-1, runs[i-1].Vaddr, runs[i-1].End())
		}
		var f *os.File
		if r.Pages != "" {
			if f = open[r.Pages]; f == nil {
				var err error
				if f, err = os.Open(r.Pages); err != nil {
					p.Close()
					return nil, err
				}
				open[r.Pages] = f
				p.files = append(p.files, f)
			}
		}
		x := pageExtent{start: r.Vaddr, end: r.End(), f: f, off: r.Offset}
		// Neighbours in memory that are neighbours in the same file (or
		// both lazy) are served by a single pread.
		if n := len(p.ext); n > 0 {
			last := &p.ext[n-1]
			if last.end == x.start && last.f == x.f &&
				(f == nil || last.off+int64(last.end-last.start) == x.off) {
				last.end = x.end
				continue
			}
		}
		p.ext = append(p.ext, x)
	}
	return p, nil
}

// ReadAt copies len(b) bytes of memory starting at vaddr into b. It returns
// the number of bytes copied and, when that is short of len(b), why: the
// address is in no run (ErrNoPages), its page is lazy (ErrLazyPages), or
// reading the pages file failed.
func (p *Pages) ReadAt(b []byte, vaddr uint64) (int, error) {
	if uint64(len(b)) > math.MaxUint64-vaddr {
		return 0, fmt.Errorf("read of %d bytes at 0x%x: past the end of the address space: %w", len(b), vaddr, ErrNoPages)
	}
	i := sort.Search(len(p.ext), func(i int) bool { return p.ext[i].end > vaddr })
	n := 0
	for n < len(b) {
		addr := vaddr + uint64(n)
		if i >= len(p.ext) || p.ext[i].start > addr {
			return n, fmt.Errorf("address 0x%x: %w", addr, ErrNoPages)
		}
		x := &p.ext[i]
		if x.f == nil {
			return n, fmt.Errorf("address 0x%x: %w", addr, ErrLazyPages)
		}
		chunk := len(b) - n
		if left := x.end - addr; uint64(chunk) > left {
			chunk = int(left)
		}
		off := x.off + int64(addr-x.start)
		m, err := x.f.ReadAt(b[n:n+chunk], off)
		n += m
		if err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return n, fmt.Errorf("address 0x%x: reading %s at %d: %w", addr+uint64(m), x.f.Name(), off+int64(m), err)
		}
		i++
	}
	return n, nil
}

// Close closes the pages files.
func (p *Pages) Close() error {
	var first error
	for _, f := range p.files {
		if err := f.Close(); err != nil && first == nil {
			first = err
		}
	}
	p.files = nil
	return first
}
