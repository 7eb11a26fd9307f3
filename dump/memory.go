package dump

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"sync"

	"github.com/checkpoint-restore/go-criu/v8/crit/images/mm"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/pagemap"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/vma"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	"github.com/crest-restore/crest/images"
	"github.com/crest-restore/crest/internal/procfs"
)

// mapping is one line of /proc/PID/smaps with its VmFlags.
type mapping struct {
	start, end uint64
	perms      string // "rw-p"
	pgoff      uint64
	ino        uint64
	name       string
	vmflags    map[string]bool
}

func readSmaps(pid int) ([]*mapping, error) {
	f, err := os.Open(procPath(pid, "smaps"))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []*mapping
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if rest, ok := strings.CutPrefix(line, "VmFlags:"); ok && len(out) > 0 {
			for _, fl := range strings.Fields(rest) {
				out[len(out)-1].vmflags[fl] = true
			}
			continue
		}
		fields := strings.Fields(line)
		if len(fields) < 5 || !strings.Contains(fields[0], "-") || strings.HasSuffix(fields[0], ":") {
			continue
		}
		lo, hi, _ := strings.Cut(fields[0], "-")
		m := &mapping{perms: fields[1], vmflags: map[string]bool{}}
		var e1, e2, e3, e4 error
		m.start, e1 = strconv.ParseUint(lo, 16, 64)
		m.end, e2 = strconv.ParseUint(hi, 16, 64)
		m.pgoff, e3 = strconv.ParseUint(fields[2], 16, 64)
		m.ino, e4 = strconv.ParseUint(fields[4], 10, 64)
		if e1 != nil || e2 != nil || e3 != nil || e4 != nil {
			return nil, fmt.Errorf("smaps of %d: bad line %q", pid, line)
		}
		if len(fields) > 5 {
			// The path is the rest of the line, spaces included.
			idx := strings.Index(line, fields[5])
			m.name = line[idx:]
		}
		out = append(out, m)
	}
	return out, sc.Err()
}

// vmaKind is how the dumper treats a mapping's pages.
type vmaArea struct {
	entry *vma.VmaEntry
	dump  bool // its pages go into the image (not vvar, vsyscall)
	lazy  bool // PE_LAZY: anonymous private memory (as CRIU marks it)
}

// madvise advice bits CRIU keeps in vma_entry.madv, from VmFlags.
var madvFlags = map[string]uint{
	"dc": 10, // MADV_DONTFORK
	"mg": 12, // MADV_MERGEABLE
	"hg": 14, // MADV_HUGEPAGE
	"nh": 15, // MADV_NOHUGEPAGE
	"dd": 16, // MADV_DONTDUMP
	"wf": 18, // MADV_WIPEONFORK
}

func protOf(perms string) uint32 {
	var p uint32
	if perms[0] == 'r' {
		p |= unix.PROT_READ
	}
	if perms[1] == 'w' {
		p |= unix.PROT_WRITE
	}
	if perms[2] == 'x' {
		p |= unix.PROT_EXEC
	}
	return p
}

// vmas turns t's mappings into CRIU's vma entries. File mappings get the
// id of their file from ft.
func (d *dumper) vmas(t *task, maps []*mapping) ([]*vmaArea, error) {
	var out []*vmaArea
	for _, m := range maps {
		unsupported := func(why string) error {
			return &UnsupportedError{Task: int(t.nsPid), Resource: fmt.Sprintf("mapping %x-%x", m.start, m.end), What: m.name, Why: why}
		}
		shared := m.perms[3] == 's'
		e := &vma.VmaEntry{Start: proto.Uint64(m.start), End: proto.Uint64(m.end), Pgoff: proto.Uint64(0),
			Shmid: proto.Uint64(0), Prot: proto.Uint32(protOf(m.perms)), Fd: proto.Int64(-1)}
		flags := uint32(unix.MAP_PRIVATE)
		if shared {
			flags = unix.MAP_SHARED
		}
		if m.vmflags["gd"] {
			flags |= unix.MAP_GROWSDOWN
		}
		if m.vmflags["lo"] {
			flags |= unix.MAP_LOCKED
		}
		if m.vmflags["nr"] {
			flags |= unix.MAP_NORESERVE
		}
		if m.vmflags["ht"] {
			return nil, unsupported("hugetlb mappings are not supported")
		}
		if m.vmflags["ss"] {
			return nil, unsupported("shadow stacks are not supported")
		}
		var madv uint64
		for fl, bit := range madvFlags {
			if m.vmflags[fl] {
				madv |= 1 << bit
			}
		}
		if madv != 0 {
			e.Madv = proto.Uint64(madv)
		}
		a := &vmaArea{entry: e, dump: true}
		status := images.VMAAreaRegular
		anon := m.ino == 0
		switch {
		case m.name == "[vsyscall]":
			status = images.VMAAreaVsyscall | images.VMAAnonPrivate
			a.dump = false
		case m.name == "[vdso]":
			status |= images.VMAAreaVDSO | images.VMAAnonPrivate
		case m.name == "[vvar]" || m.name == "[vvar_vclock]":
			// Kernel 6.18 shows [vvar] and [vvar_vclock] as two
			// mappings; CRIU 4.2 records them as one VVAR entry.
			if n := len(out); n > 0 && images.VMAStatus(out[n-1].entry.GetStatus()).Has(images.VMAAreaVVAR) &&
				out[n-1].entry.GetEnd() == m.start {
				out[n-1].entry.End = proto.Uint64(m.end)
				continue
			}
			status |= images.VMAAnonPrivate | images.VMAAreaVVAR
			a.dump = false
		case m.name == "[heap]":
			status |= images.VMAAreaHeap | images.VMAAnonPrivate
		case shared && isMemfd(m.name):
			// A memfd, or MAP_SHARED|MAP_ANONYMOUS memory, which CRIU
			// 4.2 dumps as a memfd named "/dev/zero"; the contents go
			// with the memfd (pagemap-shmem), not with the task.
			id, err := d.files.mappedMemfd(t, procPath(t.pid, "map_files", fmt.Sprintf("%x-%x", m.start, m.end)), m.name)
			if err != nil {
				return nil, err
			}
			e.Shmid = proto.Uint64(uint64(id))
			e.Pgoff = proto.Uint64(m.pgoff)
			fdflags, err := mapFDFlags(t, m)
			if err != nil {
				return nil, err
			}
			e.Fdflags = proto.Uint32(fdflags)
			status |= images.VMAFileShared | images.VMAAreaMemfd
			a.dump = false
			anon = false
		case isSysVShm(m): // sysvshm.go
			st, err := d.sysvShmVMA(t, m, e)
			if err != nil {
				return nil, err
			}
			status |= st
			a.dump = false // the segment's, in pagemap-shmem
			anon = true
		case anon && shared, strings.HasPrefix(m.name, "/SYSV"):
			return nil, unsupported("shared anonymous memory of this kind is not supported")
		case anon && (m.name == "" || m.name == "[stack]" || strings.HasPrefix(m.name, "[anon:")):
			status |= images.VMAAnonPrivate
		case anon:
			return nil, unsupported("special mappings of this kind are not supported")
		case strings.HasPrefix(m.name, "/memfd:"):
			return nil, unsupported("private memfd mappings are not supported")
		case strings.HasPrefix(m.name, "socket:["):
			// a packet socket's ring (PACKET_RX_RING, PACKET_TX_RING):
			// sockpacket.go
			return nil, unsupported("packet socket ring mappings (PACKET_RX_RING, PACKET_TX_RING) are not supported")
		default:
			id, err := d.files.mappedFile(t, procPath(t.pid, "map_files", fmt.Sprintf("%x-%x", m.start, m.end)), m.name)
			if err != nil {
				return nil, err
			}
			e.Shmid = proto.Uint64(uint64(id))
			e.Pgoff = proto.Uint64(m.pgoff)
			if shared {
				// the pages are the file's: the restore maps it
				// again, as CRIU dumps only private memory
				status |= images.VMAFileShared
				a.dump = false
				fdflags, err := mapFDFlags(t, m)
				if err != nil {
					return nil, err
				}
				e.Fdflags = proto.Uint32(fdflags)
			} else {
				status |= images.VMAFilePrivate
				e.Fdflags = proto.Uint32(unix.O_RDONLY)
			}
		}
		if anon {
			flags |= unix.MAP_ANONYMOUS
		}
		e.Flags = proto.Uint32(flags)
		e.Status = proto.Uint32(uint32(status))
		a.lazy = anon && !shared && flags&unix.MAP_LOCKED == 0 && !status.Has(images.VMAAreaVDSO) && !status.Has(images.VMAAreaVsyscall)
		out = append(out, a)
	}
	return out, nil
}

// /proc/PID/pagemap bits.
const (
	pmPresent = 1 << 63
	pmSwap    = 1 << 62
	pmFile    = 1 << 61
	pmPFNMask = 1<<55 - 1
)

var zeroSink byte

// zeroPFN is the page frame of the kernel's zero page, which CRIU never
// dumps: a page that reads as zeros because nothing wrote it.
var zeroPFN = sync.OnceValues(func() (uint64, error) {
	b, err := unix.Mmap(-1, 0, 4096, unix.PROT_READ, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return 0, os.NewSyscallError("mmap", err)
	}
	defer unix.Munmap(b)
	zeroSink = b[0] // a read faults in the zero page
	f, err := os.Open("/proc/self/pagemap")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	var pme [8]byte
	addr := uint64(uintptrOf(b))
	if _, err := f.ReadAt(pme[:], int64(addr/4096*8)); err != nil {
		return 0, fmt.Errorf("/proc/self/pagemap: %w", err)
	}
	v := le64(pme[:])
	if v&pmPresent == 0 || v&pmPFNMask == 0 {
		return 0, fmt.Errorf("/proc/self/pagemap shows no zero page frame (%#x): need CAP_SYS_ADMIN", v)
	}
	return v & pmPFNMask, nil
})

// mapFDFlags is the open mode of the file behind shared mapping m, which a
// restore opens to map it, as CRIU reads it (vma_get_mapfile_flags): from
// the mode of its map_files link, which shows the mapped file's f_mode,
// not the mapping's protection (a read-only mapping of a file opened
// read-write may be made writable later).
func mapFDFlags(t *task, m *mapping) (uint32, error) {
	link := procPath(t.pid, "map_files", fmt.Sprintf("%x-%x", m.start, m.end))
	var st unix.Stat_t
	if err := unix.Lstat(link, &st); err != nil {
		return 0, fmt.Errorf("%s: mapping %x-%x (%s): %w", t, m.start, m.end, m.name, &os.PathError{Op: "lstat", Path: link, Err: err})
	}
	switch st.Mode & 0o600 {
	case 0o600:
		return unix.O_RDWR, nil
	case 0o200:
		return unix.O_WRONLY, nil
	}
	return unix.O_RDONLY, nil
}

// memStats counts what the memory dump did (stats-dump).
type memStats struct {
	scanned, written, lazy, runs uint64
	shWritten                    uint64
}

// dumpPages writes the pages of t worth keeping into pages-ID.img and
// returns the pagemap entries: present or swapped pages that are not the
// zero page, and in private file mappings only the pages the task wrote
// (its own copies; the rest comes back from the file).
func (d *dumper) dumpPages(t *task, areas []*vmaArea, pagesID uint32) ([]images.Entry, error) {
	zpfn, err := zeroPFN()
	if err != nil {
		return nil, err
	}
	pm, err := os.Open(procPath(t.pid, "pagemap"))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", t, err)
	}
	defer pm.Close()
	mem, err := os.Open(procPath(t.pid, "mem"))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", t, err)
	}
	defer mem.Close()
	pf, err := os.OpenFile(d.path(fmt.Sprintf("pages-%d.img", pagesID)), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, err
	}
	defer pf.Close()
	w := bufio.NewWriterSize(pf, 1<<20)
	entries := []images.Entry{{Message: &pagemap.PagemapHead{PagesId: proto.Uint32(pagesID)}}}
	buf := make([]byte, 1<<20)
	var pmes []byte
	for _, a := range areas {
		if !a.dump {
			continue
		}
		start, end := a.entry.GetStart(), a.entry.GetEnd()
		n := (end - start) / 4096
		if cap(pmes) < int(n*8) {
			pmes = make([]byte, n*8)
		}
		pmes = pmes[:n*8]
		if _, err := pm.ReadAt(pmes, int64(start/4096*8)); err != nil && err != io.EOF {
			return nil, fmt.Errorf("%s: pagemap %x-%x: %w", t, start, end, err)
		}
		d.stats.scanned += n
		status := images.VMAStatus(a.entry.GetStatus())
		filePrivate := status.Has(images.VMAFilePrivate)
		// The vdso is kept whole, present or not (a forked child has
		// none of its pages mapped yet): CRIU's restore reads it as an
		// ELF image to compare it with the kernel's, and builds a
		// proxy from its code when they differ.
		whole := status.Has(images.VMAAreaVDSO) || status.Has(images.VMAAreaAIORing)
		keep := func(i uint64) bool {
			if whole {
				return true
			}
			v := le64(pmes[i*8:])
			if filePrivate && v&pmFile != 0 {
				return false
			}
			if v&pmPresent != 0 && v&pmPFNMask == zpfn {
				return false
			}
			return v&(pmPresent|pmSwap) != 0
		}
		readable := a.entry.GetProt()&unix.PROT_READ != 0
		for i := uint64(0); i < n; {
			if !keep(i) {
				i++
				continue
			}
			j := i + 1
			for j < n && keep(j) {
				j++
			}
			flags := images.PEPresent
			if a.lazy {
				flags |= images.PELazy
				d.stats.lazy += j - i
			}
			entries = append(entries, images.Entry{Message: &pagemap.PagemapEntry{
				Vaddr: proto.Uint64(start + i*4096), CompatNrPages: proto.Uint32(0),
				NrPages: proto.Uint64(j - i), Flags: proto.Uint32(flags)}})
			for addr, stop := start+i*4096, start+j*4096; addr < stop; {
				chunk := min(uint64(len(buf)), stop-addr)
				b := buf[:chunk]
				if readable {
					err = readRemote(t.pid, addr, b)
				} else {
					// process_vm_readv honours PROT_*; /proc/PID/mem
					// reads what the task itself could not.
					_, err = mem.ReadAt(b, int64(addr))
				}
				if err != nil {
					return nil, fmt.Errorf("%s: reading memory at %#x: %w", t, addr, err)
				}
				if _, err := w.Write(b); err != nil {
					return nil, err
				}
				addr += chunk
			}
			d.stats.written += j - i
			d.stats.runs++
			i = j
		}
	}
	if err := w.Flush(); err != nil {
		return nil, err
	}
	return entries, pf.Close()
}

// mmEntry builds mm-PID.img's entry.
func (d *dumper) mmEntry(t *task, to *taskOnly, areas []*vmaArea) (*mm.MmEntry, error) {
	st, err := procfs.ReadStat(procPath(t.pid, "stat"))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", t, err)
	}
	exeID, err := d.files.mappedFile(t, procPath(t.pid, "exe"), "")
	if err != nil {
		return nil, err
	}
	auxv, err := os.ReadFile(procPath(t.pid, "auxv"))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", t, err)
	}
	e := &mm.MmEntry{
		MmStartCode: proto.Uint64(st.Field(26)), MmEndCode: proto.Uint64(st.Field(27)),
		MmStartData: proto.Uint64(st.Field(45)), MmEndData: proto.Uint64(st.Field(46)),
		MmStartStack: proto.Uint64(st.Field(28)), MmStartBrk: proto.Uint64(st.Field(47)),
		MmBrk: proto.Uint64(to.brk), MmArgStart: proto.Uint64(st.Field(48)), MmArgEnd: proto.Uint64(st.Field(49)),
		MmEnvStart: proto.Uint64(st.Field(50)), MmEnvEnd: proto.Uint64(st.Field(51)),
		ExeFileId: proto.Uint32(exeID), Dumpable: proto.Int32(to.dumpable), ThpDisabled: proto.Bool(to.thpDisabled),
	}
	// CRIU keeps the (type, value) pairs without the AT_NULL pair that
	// ends the vector.
	for i := 0; i+16 <= len(auxv); i += 16 {
		if le64(auxv[i:]) == 0 {
			break
		}
		e.MmSavedAuxv = append(e.MmSavedAuxv, le64(auxv[i:]), le64(auxv[i+8:]))
	}
	for _, a := range areas {
		e.Vmas = append(e.Vmas, a.entry)
	}
	return e, nil
}
