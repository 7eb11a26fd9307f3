package images

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"slices"
	"sort"
	"strings"
	"syscall"
	"text/tabwriter"

	"golang.org/x/sys/unix"

	"google.golang.org/protobuf/reflect/protoreflect"

	criu_core "github.com/checkpoint-restore/go-criu/v8/crit/images/criu-core"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/fdinfo"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/memfd"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/utsns"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/vma"
)

// VMAStatus is the status word of a CRIU vma_entry: what kind of mapping
// it is and how CRIU handles it (criu/include/image.h, VMA_*). The values
// are part of the image format.
type VMAStatus uint32

// VMA status bits, as CRIU 4.2 defines them. Bit 4 is unused (it was
// VMA_FORCE_READ before CRIU 1.0). VMAClose, VMANoProtWrite and
// VMAPremmaped are set by CRIU while it restores and never appear in
// images written by a dump; VMAUnsupp never appears in an image either.
const (
	VMAAreaNone     VMAStatus = 0
	VMAAreaRegular  VMAStatus = 1 << 0 // memory to dump and restore (not vsyscall & co.)
	VMAAreaStack    VMAStatus = 1 << 1
	VMAAreaVsyscall VMAStatus = 1 << 2
	VMAAreaVDSO     VMAStatus = 1 << 3
	VMAAreaHeap     VMAStatus = 1 << 5
	VMAFilePrivate  VMAStatus = 1 << 6 // private file mapping; shmid is the file's id
	VMAFileShared   VMAStatus = 1 << 7 // shared file mapping; shmid is the file's id
	VMAAnonShared   VMAStatus = 1 << 8 // shared anonymous; shmid names pagemap-shmem-ID.img
	VMAAnonPrivate  VMAStatus = 1 << 9
	VMAAreaSysVIPC  VMAStatus = 1 << 10 // SysV shm segment; shmid is its IPC id
	VMAAreaSocket   VMAStatus = 1 << 11 // packet socket ring
	VMAAreaVVAR     VMAStatus = 1 << 12
	VMAAreaAIORing  VMAStatus = 1 << 13
	VMAAreaMemfd    VMAStatus = 1 << 14 // memfd (and, since 4.x, MAP_SHARED|MAP_ANON) mapping
	VMAAreaShstk    VMAStatus = 1 << 15 // x86 shadow stack
	VMAAreaGuard    VMAStatus = 1 << 16 // MADV_GUARD_INSTALL range, not a real VMA
	VMAAreaUprobes  VMAStatus = 1 << 17
	VMAExtPlugin    VMAStatus = 1 << 27 // contents handled by a CRIU plugin
	VMAClose        VMAStatus = 1 << 28
	VMANoProtWrite  VMAStatus = 1 << 29
	VMAPremmaped    VMAStatus = 1 << 30
	VMAUnsupp       VMAStatus = 1 << 31
)

var vmaStatusNames = []flagName{
	{"VMA_AREA_REGULAR", uint64(VMAAreaRegular)},
	{"VMA_AREA_STACK", uint64(VMAAreaStack)},
	{"VMA_AREA_VSYSCALL", uint64(VMAAreaVsyscall)},
	{"VMA_AREA_VDSO", uint64(VMAAreaVDSO)},
	{"VMA_AREA_HEAP", uint64(VMAAreaHeap)},
	{"VMA_FILE_PRIVATE", uint64(VMAFilePrivate)},
	{"VMA_FILE_SHARED", uint64(VMAFileShared)},
	{"VMA_ANON_SHARED", uint64(VMAAnonShared)},
	{"VMA_ANON_PRIVATE", uint64(VMAAnonPrivate)},
	{"VMA_AREA_SYSVIPC", uint64(VMAAreaSysVIPC)},
	{"VMA_AREA_SOCKET", uint64(VMAAreaSocket)},
	{"VMA_AREA_VVAR", uint64(VMAAreaVVAR)},
	{"VMA_AREA_AIORING", uint64(VMAAreaAIORing)},
	{"VMA_AREA_MEMFD", uint64(VMAAreaMemfd)},
	{"VMA_AREA_SHSTK", uint64(VMAAreaShstk)},
	{"VMA_AREA_GUARD", uint64(VMAAreaGuard)},
	{"VMA_AREA_UPROBES", uint64(VMAAreaUprobes)},
	{"VMA_EXT_PLUGIN", uint64(VMAExtPlugin)},
	{"VMA_CLOSE", uint64(VMAClose)},
	{"VMA_NO_PROT_WRITE", uint64(VMANoProtWrite)},
	{"VMA_PREMMAPED", uint64(VMAPremmaped)},
	{"VMA_UNSUPP", uint64(VMAUnsupp)},
}

// Has reports whether all bits of b are set in s.
func (s VMAStatus) Has(b VMAStatus) bool { return s&b == b }

// String names the bits, as "VMA_AREA_REGULAR|VMA_ANON_PRIVATE"; unknown
// bits are shown in hex, no bits as "VMA_AREA_NONE".
func (s VMAStatus) String() string {
	if s == 0 {
		return "VMA_AREA_NONE"
	}
	return formatFlags(uint64(s), vmaStatusNames, "|")
}

// Summary is what an image directory holds, in numbers a person or a tool
// can check: the process tree, each task's memory and fds, and the shared
// memory objects. crest show -D prints it; tests and tools use the same
// numbers.
type Summary struct {
	Dir        string `json:"dir"`
	ImgVersion uint32 `json:"img_version"`
	// Root is the pid of the tree's root task (the first pstree entry).
	Root uint32 `json:"root"`
	// OwnPidNS says the root has a pid namespace of its own (its pid_ns_id
	// differs from the dumping criu's), which a restore must create.
	OwnPidNS bool `json:"own_pid_ns"`
	// NewNamespaces lists the namespace kinds in which the root differs
	// from the dumping criu ("pid", "net" ...).
	NewNamespaces []string `json:"new_namespaces"`
	// Host holds the namespace ids of the criu that dumped the tree
	// (inventory root_ids), or nil when the inventory has none.
	Host *Namespaces `json:"host,omitempty"`
	// UTS and IPC are the root's own UTS and IPC namespaces, when the
	// images hold them (utsns-ID.img, ipcns-*-ID.img).
	UTS    *UTSNamespace  `json:"uts,omitempty"`
	IPC    *IPCNamespace  `json:"ipc,omitempty"`
	Tasks  []Task         `json:"tasks"`
	Shmem  []SharedMemory `json:"shmem,omitempty"`
	Pipes  []Pipe         `json:"pipes,omitempty"`
	Totals Totals         `json:"totals"`
}

// UTSNamespace is what utsns-ID.img holds.
type UTSNamespace struct {
	ID         uint32 `json:"id"`
	Hostname   string `json:"hostname"`
	Domainname string `json:"domainname"`
}

// IPCNamespace counts the SysV objects of ipcns-*-ID.img.
type IPCNamespace struct {
	ID           uint32 `json:"id"`
	Segments     int    `json:"segments"`
	SegmentBytes uint64 `json:"segment_bytes"`
	Queues       int    `json:"queues"`
	Messages     int    `json:"messages"`
	SemSets      int    `json:"sem_sets"`
	Semaphores   int    `json:"semaphores"`
}

// Namespaces are CRIU's ids of the namespaces of a task. Equal ids mean
// the same namespace; 0 means not recorded.
type Namespaces struct {
	PID    uint32 `json:"pid"`
	Net    uint32 `json:"net"`
	IPC    uint32 `json:"ipc"`
	UTS    uint32 `json:"uts"`
	Mnt    uint32 `json:"mnt"`
	User   uint32 `json:"user"`
	Cgroup uint32 `json:"cgroup"`
	Time   uint32 `json:"time"`
}

func namespacesOf(ids *criu_core.TaskKobjIdsEntry) Namespaces {
	return Namespaces{
		PID: ids.GetPidNsId(), Net: ids.GetNetNsId(), IPC: ids.GetIpcNsId(), UTS: ids.GetUtsNsId(),
		Mnt: ids.GetMntNsId(), User: ids.GetUserNsId(), Cgroup: ids.GetCgroupNsId(), Time: ids.GetTimeNsId(),
	}
}

// kinds pairs each namespace kind's name with its id, in a fixed order.
func (n Namespaces) kinds() []struct {
	name string
	id   uint32
} {
	return []struct {
		name string
		id   uint32
	}{{"pid", n.PID}, {"net", n.Net}, {"ipc", n.IPC}, {"uts", n.UTS},
		{"mnt", n.Mnt}, {"user", n.User}, {"cgroup", n.Cgroup}, {"time", n.Time}}
}

// Task is one process of the tree.
type Task struct {
	PID     uint32   `json:"pid"`
	PPID    uint32   `json:"ppid"`
	PGID    uint32   `json:"pgid"`
	SID     uint32   `json:"sid"`
	Threads []uint32 `json:"threads"`
	Comm    string   `json:"comm"`
	// State is the task's state at dump: Alive, Dead, Stopped or Zombie.
	State    string `json:"state"`
	ExitCode uint32 `json:"exit_code,omitempty"`
	// StopSigno is the signal that stopped a Stopped task (CRIU's
	// stop_signo; 0 in images from before CRIU wrote it).
	StopSigno uint32     `json:"stop_signo,omitempty"`
	NS        Namespaces `json:"ns"`
	// FilesID is the id of the fd table (fdinfo-ID.img); tasks that share
	// one (CLONE_FILES) have the same id.
	FilesID uint32  `json:"files_id"`
	Exe     string  `json:"exe,omitempty"`
	Cwd     string  `json:"cwd,omitempty"`
	Root    string  `json:"root,omitempty"`
	Umask   *uint32 `json:"umask,omitempty"`
	// Seccomp lists the threads in seccomp, with their mode.
	Seccomp []ThreadSeccomp `json:"seccomp,omitempty"`
	// Memory is nil for tasks that have none (zombies).
	Memory *Memory `json:"memory,omitempty"`
	FDs    []FD    `json:"fds"`
}

// Memory is a task's address space and where its pages are stored.
type Memory struct {
	VMAs []VMA `json:"vmas"`
	// PagesFile is the pages-N.img the task's pagemap points at, and
	// PagesFileSize its size on disk (-1 when it is missing).
	PagesFile     string `json:"pages_file,omitempty"`
	PagesFileSize int64  `json:"pages_file_size"`
	// Pages counts the pages present in PagesFile, Bytes their size.
	Pages uint64 `json:"pages"`
	Bytes uint64 `json:"bytes"`
	// ParentPages counts pages kept in the parent (pre-dump) image set.
	ParentPages uint64 `json:"parent_pages,omitempty"`
	// StrayPages counts present pages that lie in no VMA: a broken image.
	StrayPages uint64 `json:"stray_pages,omitempty"`
}

// VMA is one mapping of a task.
type VMA struct {
	Start      uint64    `json:"start"`
	End        uint64    `json:"end"`
	Prot       uint32    `json:"prot"`  // PROT_* bits
	Flags      uint32    `json:"flags"` // MAP_* bits
	Status     VMAStatus `json:"status"`
	StatusText string    `json:"status_text"`
	Pgoff      uint64    `json:"pgoff,omitempty"`
	// ShmID is the vma_entry's shmid: the file id for file and memfd
	// mappings, the shared memory object's id for anonymous shared ones.
	ShmID uint64 `json:"shmid,omitempty"`
	// Name is what /proc/PID/maps would show: the file's path, a memfd's
	// name, or [heap], [stack], [vdso], [vvar] ...
	Name string `json:"name,omitempty"`
	// Pages counts the pages of this VMA present in the task's pages
	// image, Bytes their size.
	Pages       uint64 `json:"pages"`
	Bytes       uint64 `json:"bytes"`
	ParentPages uint64 `json:"parent_pages,omitempty"`
}

// Shared reports a MAP_SHARED mapping.
func (v VMA) Shared() bool { return v.Flags&0x1 != 0 }

// ProtString is the protection as in /proc/PID/maps: "r-x".
func (v VMA) ProtString() string {
	b := []byte("---")
	for i, c := range "rwx" {
		if v.Prot&(1<<i) != 0 {
			b[i] = byte(c)
		}
	}
	return string(b)
}

// FD is one open file descriptor of a task.
type FD struct {
	FD     uint32 `json:"fd"`
	Type   string `json:"type"`    // CRIU's fd type: REG, PIPE, MEMFD, UNIXSK ...
	FileID uint32 `json:"file_id"` // the open file's id in files.img; dup()ed fds share it
	// Name is the path for files, "pipe:[ID]" for pipes, "memfd:NAME" for
	// memfds, "socket:[INO]" for sockets, as /proc/PID/fd links read.
	Name        string  `json:"name"`
	PipeID      uint32  `json:"pipe_id,omitempty"`
	Flags       uint32  `json:"flags"` // open file status flags (O_*)
	FlagsText   string  `json:"flags_text"`
	CloseOnExec bool    `json:"cloexec,omitempty"`
	Pos         *uint64 `json:"pos,omitempty"`
}

// SharedMemory is a shared memory object with contents of its own in the
// image set: a memfd (also how CRIU 4.2 dumps MAP_SHARED|MAP_ANONYMOUS
// memory) or an anonymous shared mapping.
type SharedMemory struct {
	Kind  string `json:"kind"` // "memfd" or "anon-shared"
	ShmID uint64 `json:"shmid"`
	Name  string `json:"name,omitempty"`
	Size  uint64 `json:"size,omitempty"`
	// Pages and Bytes count what pagemap-shmem-SHMID.img has present in
	// PagesFile.
	PagesFile string `json:"pages_file,omitempty"`
	Pages     uint64 `json:"pages"`
	Bytes     uint64 `json:"bytes"`
	// Users are the pids that map it or hold it open.
	Users []uint32 `json:"users"`
}

// Pipe is an anonymous pipe (or FIFO) of the tree: its ends and the bytes
// it held at dump time.
type Pipe struct {
	PipeID uint32    `json:"pipe_id"`
	FIFO   bool      `json:"fifo,omitempty"`
	Ends   []PipeEnd `json:"ends"`
	// Bytes is the amount of data in the pipe (pipes-data.img or
	// fifo-data.img).
	Bytes uint32 `json:"bytes"`
}

// PipeEnd is one fd on a pipe.
type PipeEnd struct {
	PID   uint32 `json:"pid"`
	FD    uint32 `json:"fd"`
	Write bool   `json:"write"`
}

// Totals sums the summary up.
type Totals struct {
	Tasks   int    `json:"tasks"`
	Threads int    `json:"threads"`
	VMAs    int    `json:"vmas"`
	FDs     int    `json:"fds"`
	Pages   uint64 `json:"pages"` // task pages and shared memory pages
	Bytes   uint64 `json:"bytes"`
}

// Summarize reads the process tree, each task's core, ids, mm, pagemap, fs
// and fd table, the files and the memfd inodes of d.
func Summarize(d *Dir) (*Summary, error) {
	s := &Summary{Dir: d.Path, ImgVersion: d.Inventory.GetImgVersion(), Root: d.Pstree[0].GetPid(),
		NewNamespaces: []string{}}
	if ids := d.Inventory.GetRootIds(); ids != nil {
		h := namespacesOf(ids)
		s.Host = &h
	}
	memfds, err := d.MemfdInodes()
	if err != nil {
		return nil, err
	}
	inodes := make(map[uint64]*memfd.MemfdInodeEntry, len(memfds))
	for _, m := range memfds {
		inodes[m.GetInodeId()] = m
	}
	sh := newShmemSet(d, inodes)

	for _, p := range d.Pstree {
		t, err := summarizeTask(d, p.GetPid(), Threads(p), inodes, sh)
		if err != nil {
			return nil, fmt.Errorf("task %d: %w", p.GetPid(), err)
		}
		t.PPID, t.PGID, t.SID = p.GetPpid(), p.GetPgid(), p.GetSid()
		t.Threads = Threads(p)
		s.Tasks = append(s.Tasks, *t)
	}

	root := s.Tasks[0].NS
	if s.Host != nil {
		for i, k := range root.kinds() {
			if host := s.Host.kinds()[i]; k.id != 0 && host.id != 0 && k.id != host.id {
				s.NewNamespaces = append(s.NewNamespaces, k.name)
			}
		}
	}
	s.OwnPidNS = root.PID != 0 && s.Host != nil && s.Host.PID != 0 && root.PID != s.Host.PID
	if slices.Contains(s.NewNamespaces, "uts") {
		if s.UTS, err = summarizeUTS(d, root.UTS); err != nil {
			return nil, err
		}
	}
	if slices.Contains(s.NewNamespaces, "ipc") {
		if s.IPC, err = summarizeIPC(d, root.IPC); err != nil {
			return nil, err
		}
	}

	if s.Shmem, err = sh.summarize(d); err != nil {
		return nil, err
	}
	if s.Pipes, err = summarizePipes(d, s.Tasks); err != nil {
		return nil, err
	}

	s.Totals.Tasks = len(s.Tasks)
	for _, t := range s.Tasks {
		s.Totals.Threads += len(t.Threads)
		s.Totals.FDs += len(t.FDs)
		if t.Memory != nil {
			s.Totals.VMAs += len(t.Memory.VMAs)
			s.Totals.Pages += t.Memory.Pages
		}
	}
	for _, m := range s.Shmem {
		s.Totals.Pages += m.Pages
	}
	s.Totals.Bytes = s.Totals.Pages * PageSize
	return s, nil
}

// summarizePipes gathers the ends of every pipe and FIFO from the fd
// tables, and the data each held from pipes-data.img and fifo-data.img.
func summarizePipes(d *Dir, tasks []Task) ([]Pipe, error) {
	byID := map[uint32]*Pipe{}
	var order []uint32
	for _, t := range tasks {
		for _, fd := range t.FDs {
			if fd.Type != "PIPE" && fd.Type != "FIFO" {
				continue
			}
			p := byID[fd.PipeID]
			if p == nil {
				p = &Pipe{PipeID: fd.PipeID, FIFO: fd.Type == "FIFO"}
				byID[fd.PipeID] = p
				order = append(order, fd.PipeID)
			}
			p.Ends = append(p.Ends, PipeEnd{PID: t.PID, FD: fd.FD, Write: fd.Flags&3 != 0})
		}
	}
	for _, read := range []func() ([]PipeData, error){d.PipesData, d.FifoData} {
		data, err := read()
		if err != nil {
			return nil, err
		}
		for _, pd := range data {
			if p := byID[pd.Entry.GetPipeId()]; p != nil {
				p.Bytes += pd.Entry.GetBytes()
			}
		}
	}
	out := make([]Pipe, 0, len(order))
	for _, id := range order {
		out = append(out, *byID[id])
	}
	if len(out) == 0 {
		return nil, nil
	}
	return out, nil
}

// taskStates are compel's TASK_* values (compel/include/uapi/task-state.h).
var taskStates = map[uint32]string{1: "Alive", 2: "Dead", 3: "Stopped", 6: "Zombie"}

func summarizeTask(d *Dir, pid uint32, tids []uint32, inodes map[uint64]*memfd.MemfdInodeEntry, sh *shmemSet) (*Task, error) {
	t := &Task{PID: pid, FDs: []FD{}}
	core, err := d.Core(pid)
	if err != nil {
		return nil, err
	}
	tc := core.GetTc()
	t.Comm = tc.GetComm()
	t.State = taskStates[tc.GetTaskState()]
	if t.State == "" {
		t.State = fmt.Sprintf("state %d", tc.GetTaskState())
	}
	t.ExitCode = tc.GetExitCode()
	if t.State == "Stopped" {
		t.StopSigno = tc.GetStopSigno()
	}
	if t.State == "Zombie" || t.State == "Dead" {
		// Zombies have a core and nothing else.
		return t, nil
	}

	ids, err := d.IDs(pid)
	if err != nil {
		return nil, err
	}
	t.NS = namespacesOf(ids)
	t.FilesID = ids.GetFilesId()

	mm, err := d.MM(pid)
	if err != nil {
		return nil, err
	}
	if id := mm.GetExeFileId(); id != 0 {
		t.Exe = fileName(d, id, inodes)
	}
	if t.Memory, err = summarizeMemory(d, pid, mm.GetVmas(), inodes); err != nil {
		return nil, err
	}
	for _, v := range t.Memory.VMAs {
		sh.noteVMA(pid, v)
	}

	if t.Seccomp, err = summarizeSeccomp(d, tids); err != nil {
		return nil, err
	}

	fsys, err := d.FS(pid)
	if err != nil {
		return nil, err
	}
	t.Cwd = fileName(d, fsys.GetCwdId(), inodes)
	t.Root = fileName(d, fsys.GetRootId(), inodes)
	if fsys.Umask != nil {
		u := fsys.GetUmask()
		t.Umask = &u
	}

	fds, err := d.Fdinfo(t.FilesID)
	if err != nil {
		return nil, err
	}
	for _, fe := range fds {
		fd := FD{FD: fe.GetFd(), Type: fe.GetType().String(), FileID: fe.GetId(),
			CloseOnExec: fe.GetFlags()&1 != 0} // FD_CLOEXEC
		f, err := d.File(fe.GetId())
		if err != nil {
			return nil, fmt.Errorf("fd %d: %w", fe.GetFd(), err)
		}
		describeFD(d, f, inodes, &fd)
		if fd.Type == "MEMFD" {
			sh.noteMemfdFD(pid, f.GetMemfd().GetInodeId())
		}
		t.FDs = append(t.FDs, fd)
	}
	sort.Slice(t.FDs, func(i, j int) bool { return t.FDs[i].FD < t.FDs[j].FD })
	return t, nil
}

// ThreadSeccomp is a thread's seccomp state: strict, or filter with the
// number of filters in its chain (seccomp.img, from the thread core's
// seccomp_filter along prev). A thread in filter mode without filters of
// its own gets the leader's with TSYNC.
type ThreadSeccomp struct {
	TID     uint32 `json:"tid"`
	Mode    string `json:"mode"`
	Filters int    `json:"filters,omitempty"`
}

func summarizeSeccomp(d *Dir, tids []uint32) ([]ThreadSeccomp, error) {
	var out []ThreadSeccomp
	for _, tid := range tids {
		core, err := d.Core(tid)
		if err != nil {
			return nil, err
		}
		tc := core.GetThreadCore()
		switch tc.GetSeccompMode() {
		case criu_core.SeccompMode_disabled:
			continue
		case criu_core.SeccompMode_strict:
			out = append(out, ThreadSeccomp{TID: tid, Mode: "strict"})
			continue
		}
		ts := ThreadSeccomp{TID: tid, Mode: strings.ToLower(tc.GetSeccompMode().String())}
		if tc.SeccompFilter != nil {
			se, err := d.Seccomp()
			if err != nil {
				return nil, err
			}
			all := se.GetSeccompFilters()
			for at, more := tc.GetSeccompFilter(), true; more && int(at) < len(all) && ts.Filters <= len(all); ts.Filters++ {
				at, more = all[at].GetPrev(), all[at].Prev != nil
			}
		}
		out = append(out, ts)
	}
	return out, nil
}

// summarizeMemory lays the task's pagemap over its VMAs.
func summarizeMemory(d *Dir, pid uint32, vmas []*vma.VmaEntry, inodes map[uint64]*memfd.MemfdInodeEntry) (*Memory, error) {
	m := &Memory{VMAs: make([]VMA, 0, len(vmas)), PagesFileSize: -1}
	for _, e := range vmas {
		v := VMA{Start: e.GetStart(), End: e.GetEnd(), Prot: e.GetProt(), Flags: e.GetFlags(),
			Status: VMAStatus(e.GetStatus()), Pgoff: e.GetPgoff(), ShmID: e.GetShmid()}
		v.StatusText = v.Status.String()
		v.Name = vmaName(d, v, inodes)
		m.VMAs = append(m.VMAs, v)
	}
	sort.Slice(m.VMAs, func(i, j int) bool { return m.VMAs[i].Start < m.VMAs[j].Start })

	pm, err := d.Pagemap(pid)
	if err != nil {
		return nil, err
	}
	if pm == nil {
		return m, nil
	}
	m.PagesFile = fmt.Sprintf("pages-%d.img", pm.PagesID)
	if st, err := os.Stat(d.FilePath(m.PagesFile)); err == nil {
		m.PagesFileSize = st.Size()
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	for i, pe := range pm.Entries {
		flags, n := EntryPages(pe)
		if n > (^uint64(0)-pe.GetVaddr())/PageSize {
			return nil, &FormatError{File: pm.File, Offset: -1, Entry: i + 1,
				Msg: fmt.Sprintf("%d pages at 0x%x run past the end of the address space", n, pe.GetVaddr())}
		}
		start, end := pe.GetVaddr(), pe.GetVaddr()+n*PageSize
		present := flags&PEPresent != 0
		parent := flags&PEParent != 0
		if present {
			m.Pages += n
		}
		if parent {
			m.ParentPages += n
		}
		// The first VMA that ends after start, then every one that
		// overlaps [start, end).
		inside := uint64(0)
		for k := sort.Search(len(m.VMAs), func(k int) bool { return m.VMAs[k].End > start }); k < len(m.VMAs) && m.VMAs[k].Start < end; k++ {
			v := &m.VMAs[k]
			pages := (min(end, v.End) - max(start, v.Start)) / PageSize
			inside += pages
			if present {
				v.Pages += pages
				v.Bytes = v.Pages * PageSize
			}
			if parent {
				v.ParentPages += pages
			}
		}
		if present && inside < n {
			m.StrayPages += n - inside
		}
	}
	m.Bytes = m.Pages * PageSize
	return m, nil
}

// vmaName names a mapping as /proc/PID/maps would.
func vmaName(d *Dir, v VMA, inodes map[uint64]*memfd.MemfdInodeEntry) string {
	s := v.Status
	switch {
	case s&(VMAFilePrivate|VMAFileShared|VMAAreaMemfd) != 0:
		return fileName(d, uint32(v.ShmID), inodes)
	case s&VMAAreaSysVIPC != 0: // VMA_ANON_SHARED too
		return fmt.Sprintf("SYSV shmid %d", v.ShmID)
	case s&VMAAnonShared != 0:
		return fmt.Sprintf("shmem:%d", v.ShmID)
	case s&VMAAreaSocket != 0:
		return "packet socket ring"
	case s&VMAAreaHeap != 0:
		return "[heap]"
	case s&VMAAreaVDSO != 0:
		return "[vdso]"
	case s&VMAAreaVVAR != 0:
		return "[vvar]"
	case s&VMAAreaVsyscall != 0:
		return "[vsyscall]"
	case s&VMAAreaUprobes != 0:
		return "[uprobes]"
	case s&VMAAreaShstk != 0:
		return "[shadow stack]"
	case s&VMAAreaAIORing != 0:
		return "[aio]"
	case s&VMAAreaStack != 0 || v.Flags&0x100 != 0: // MAP_GROWSDOWN
		return "[stack]"
	}
	return ""
}

// fileName names the open file with id, or says why it can not.
func fileName(d *Dir, id uint32, inodes map[uint64]*memfd.MemfdInodeEntry) string {
	f, err := d.File(id)
	if err != nil {
		return fmt.Sprintf("? (file %d not in files.img)", id)
	}
	var fd FD
	describeFD(d, f, inodes, &fd)
	return fd.Name
}

// describeFD fills in what a file entry says about an fd: its name, pipe
// id, flags and position.
func describeFD(d *Dir, f *fdinfo.FileEntry, inodes map[uint64]*memfd.MemfdInodeEntry, fd *FD) {
	if fd.Type == "" {
		fd.Type = f.GetType().String()
	}
	fd.FileID = f.GetId()
	// Every kind of file keeps its details in one sub-message; most have
	// flags and many a pos, under those names.
	sub := fileDetails(f)
	if sub != nil {
		fields := sub.Descriptor().Fields()
		if fl := fields.ByName("flags"); fl != nil && fl.Kind() == protoreflect.Uint32Kind {
			fd.Flags = uint32(sub.Get(fl).Uint())
		}
		if pos := fields.ByName("pos"); pos != nil && sub.Has(pos) {
			p := sub.Get(pos).Uint()
			fd.Pos = &p
		}
	}
	regName := func(id uint32) string {
		r, err := d.File(id)
		if err != nil || r.GetReg() == nil {
			return fmt.Sprintf("? (file %d)", id)
		}
		return r.GetReg().GetName()
	}
	switch f.GetType() {
	case fdinfo.FdTypes_REG:
		fd.Name = f.GetReg().GetName()
		if d.Deleted(f.GetId()) {
			fd.Name += " (deleted)" // a ghost file, or a link CRIU made
		}
	case fdinfo.FdTypes_PIPE:
		fd.PipeID = f.GetPipe().GetPipeId()
		fd.Name = fmt.Sprintf("pipe:[%d]", fd.PipeID)
	case fdinfo.FdTypes_FIFO:
		fd.PipeID = f.GetFifo().GetPipeId()
		fd.Name = regName(f.GetFifo().GetRegfId())
		if r, err := d.File(f.GetFifo().GetRegfId()); err == nil && r.GetReg() != nil {
			fd.Flags = r.GetReg().GetFlags()
		}
	case fdinfo.FdTypes_MEMFD:
		if ino := inodes[uint64(f.GetMemfd().GetInodeId())]; ino != nil {
			fd.Name = "memfd:" + ino.GetName()
		} else {
			fd.Name = fmt.Sprintf("memfd:? (inode %d not in memfd.img)", f.GetMemfd().GetInodeId())
		}
	case fdinfo.FdTypes_UNIXSK:
		fd.Name = fmt.Sprintf("socket:[%d]", f.GetUsk().GetIno())
		if n := f.GetUsk().GetName(); len(n) > 0 {
			if n[0] == 0 {
				fd.Name += " @" + string(n[1:])
			} else {
				fd.Name += " " + string(n)
			}
		}
	case fdinfo.FdTypes_INETSK:
		fd.Name = fmt.Sprintf("socket:[%d]", f.GetIsk().GetIno())
	case fdinfo.FdTypes_NETLINKSK:
		fd.Name = fmt.Sprintf("socket:[%d]", f.GetNlsk().GetIno())
	case fdinfo.FdTypes_PACKETSK:
		fd.Name = "packet socket" // packet_sock_entry has no inode number
	case fdinfo.FdTypes_TTY:
		fd.Name = "tty"
		if id := f.GetTty().GetRegfId(); id != 0 {
			fd.Name = regName(id)
		}
	case fdinfo.FdTypes_EVENTFD:
		fd.Name = "anon_inode:[eventfd]"
	case fdinfo.FdTypes_EVENTPOLL:
		fd.Name = "anon_inode:[eventpoll]"
	case fdinfo.FdTypes_SIGNALFD:
		fd.Name = "anon_inode:[signalfd]"
	case fdinfo.FdTypes_INOTIFY:
		fd.Name = "anon_inode:inotify"
	case fdinfo.FdTypes_FANOTIFY:
		fd.Name = "anon_inode:[fanotify]"
	case fdinfo.FdTypes_TIMERFD:
		fd.Name = "anon_inode:[timerfd]"
	case fdinfo.FdTypes_BPFMAP:
		fd.Name = "anon_inode:bpf-map"
	case fdinfo.FdTypes_PIDFD:
		fd.Name = "anon_inode:[pidfd]"
	case fdinfo.FdTypes_NS:
		fd.Name = fmt.Sprintf("ns:[id %d]", f.GetNsf().GetNsId())
	default:
		fd.Name = strings.ToLower(f.GetType().String())
	}
	fd.FlagsText = OpenFlagsString(fd.Flags)
}

// fileDetails returns the set sub-message of a file entry (reg, pipe,
// memfd ...), or nil.
func fileDetails(f *fdinfo.FileEntry) protoreflect.Message {
	m := f.ProtoReflect()
	var sub protoreflect.Message
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		if fd.Kind() == protoreflect.MessageKind && !fd.IsList() {
			sub = v.Message()
			return false
		}
		return true
	})
	return sub
}

// OpenFlagsString names open(2) status flags: "O_WRONLY|O_APPEND". The
// access mode is always named, O_RDONLY included.
func OpenFlagsString(flags uint32) string {
	s := formatFlags(uint64(flags), openFlagNames, "|")
	if flags&3 == 0 {
		if s == "" {
			return "O_RDONLY"
		}
		return "O_RDONLY|" + s
	}
	return s
}

// shmemSet collects the shared memory objects while the tasks are read.
type shmemSet struct {
	dir     *Dir
	objects map[string]*SharedMemory // by kind and id
}

func newShmemSet(d *Dir, inodes map[uint64]*memfd.MemfdInodeEntry) *shmemSet {
	s := &shmemSet{dir: d, objects: map[string]*SharedMemory{}}
	for id, ino := range inodes {
		s.objects[fmt.Sprintf("memfd %d", id)] = &SharedMemory{Kind: "memfd", ShmID: uint64(ino.GetShmid()),
			Name: ino.GetName(), Size: ino.GetSize(), Users: []uint32{}}
	}
	return s
}

func (s *shmemSet) use(key string, pid uint32) {
	o := s.objects[key]
	if o == nil {
		return
	}
	for _, u := range o.Users {
		if u == pid {
			return
		}
	}
	o.Users = append(o.Users, pid)
}

func (s *shmemSet) noteMemfdFD(pid uint32, inode uint32) {
	s.use(fmt.Sprintf("memfd %d", inode), pid)
}

// noteVMA records a task's use of a shared object through a mapping. A
// memfd mapping names the memfd's file entry, which names the inode.
func (s *shmemSet) noteVMA(pid uint32, v VMA) {
	switch {
	case v.Status&VMAAnonShared != 0:
		key := fmt.Sprintf("anon-shared %d", v.ShmID)
		if s.objects[key] == nil {
			s.objects[key] = &SharedMemory{Kind: "anon-shared", ShmID: v.ShmID, Users: []uint32{}}
		}
		if size := v.End - v.Start + v.Pgoff; size > s.objects[key].Size {
			s.objects[key].Size = size
		}
		s.use(key, pid)
	case v.Status&VMAAreaMemfd != 0:
		if f, err := s.dir.File(uint32(v.ShmID)); err == nil && f.GetMemfd() != nil {
			s.use(fmt.Sprintf("memfd %d", f.GetMemfd().GetInodeId()), pid)
		}
	}
}

// summarize counts each object's pages in its pagemap-shmem image.
func (s *shmemSet) summarize(d *Dir) ([]SharedMemory, error) {
	out := make([]SharedMemory, 0, len(s.objects))
	for _, o := range s.objects {
		pm, err := d.ShmemPagemap(o.ShmID)
		if err != nil {
			return nil, err
		}
		if pm != nil {
			o.PagesFile = fmt.Sprintf("pages-%d.img", pm.PagesID)
			for _, pe := range pm.Entries {
				if flags, n := EntryPages(pe); flags&PEPresent != 0 {
					o.Pages += n
				}
			}
			o.Bytes = o.Pages * PageSize
		}
		sort.Slice(o.Users, func(i, j int) bool { return o.Users[i] < o.Users[j] })
		out = append(out, *o)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Kind != out[j].Kind {
			return out[i].Kind < out[j].Kind
		}
		return out[i].ShmID < out[j].ShmID
	})
	if len(out) == 0 {
		return nil, nil
	}
	return out, nil
}

// WriteText prints the summary for a person: the tree, then per task its
// namespaces, files, memory map and fd table, then shared memory and
// totals.
func (s *Summary) WriteText(w io.Writer) error {
	ew := &errWriter{w: w}
	ew.printf("image directory %s (image version %d)\n", s.Dir, s.ImgVersion)
	switch {
	case s.OwnPidNS:
		ew.printf("root task %d has its own pid namespace (pid ns %d; the dumping criu's was %d)\n",
			s.Root, s.Tasks[0].NS.PID, s.Host.PID)
	case s.Host != nil:
		ew.printf("root task %d shares the dumping criu's pid namespace (pid ns %d)\n", s.Root, s.Host.PID)
	}
	if len(s.NewNamespaces) > 0 {
		ew.printf("namespaces of the root not shared with the dumping criu: %s\n", strings.Join(s.NewNamespaces, ", "))
	}
	if u := s.UTS; u != nil {
		ew.printf("uts namespace %d: hostname %q, domain name %q\n", u.ID, u.Hostname, u.Domainname)
	}
	if i := s.IPC; i != nil {
		ew.printf("ipc namespace %d: %d shared memory segments (%d bytes), %d message queues (%d messages), %d semaphore sets (%d semaphores)\n",
			i.ID, i.Segments, i.SegmentBytes, i.Queues, i.Messages, i.SemSets, i.Semaphores)
	}

	ew.printf("\nprocess tree: %d tasks, %d threads\n", s.Totals.Tasks, s.Totals.Threads)
	tw := tabwriter.NewWriter(ew, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "  PID\tPPID\tPGID\tSID\tTHREADS\tSTATE\tCOMM\n")
	depth := map[uint32]int{}
	for _, t := range s.Tasks {
		dep := 0
		if d, ok := depth[t.PPID]; ok {
			dep = d + 1
		}
		depth[t.PID] = dep
		fmt.Fprintf(tw, "  %s%d\t%d\t%d\t%d\t%s\t%s\t%s\n", strings.Repeat("  ", dep), t.PID, t.PPID, t.PGID, t.SID,
			joinUint32(t.Threads, ","), t.State, t.Comm)
	}
	tw.Flush()

	for _, t := range s.Tasks {
		ew.printf("\ntask %d (%s)", t.PID, t.Comm)
		if t.State != "Alive" {
			ew.printf(", %s", strings.ToLower(t.State))
			if t.State == "Zombie" {
				ew.printf(", exit code %d", t.ExitCode)
			}
			if t.StopSigno != 0 {
				name := unix.SignalName(syscall.Signal(t.StopSigno))
				if name == "" {
					name = fmt.Sprintf("signal %d", t.StopSigno)
				}
				ew.printf(" by %s", name)
			}
		}
		ew.printf("\n")
		if t.Memory == nil {
			continue
		}
		tw := tabwriter.NewWriter(ew, 0, 0, 1, ' ', 0)
		fmt.Fprintf(tw, "  threads:\t%s\n", joinUint32(t.Threads, " "))
		var ns []string
		for _, k := range t.NS.kinds() {
			ns = append(ns, fmt.Sprintf("%s %d", k.name, k.id))
		}
		fmt.Fprintf(tw, "  namespaces:\t%s\n", strings.Join(ns, ", "))
		fmt.Fprintf(tw, "  exe:\t%s\n", t.Exe)
		fmt.Fprintf(tw, "  cwd:\t%s\n", t.Cwd)
		fmt.Fprintf(tw, "  root:\t%s\n", t.Root)
		if t.Umask != nil {
			fmt.Fprintf(tw, "  umask:\t%04o\n", *t.Umask)
		}
		if len(t.Seccomp) > 0 {
			var sc []string
			for _, ts := range t.Seccomp {
				what := ts.Mode
				if ts.Mode == "filter" {
					what = fmt.Sprintf("%d filters", ts.Filters)
				}
				sc = append(sc, fmt.Sprintf("thread %d %s", ts.TID, what))
			}
			fmt.Fprintf(tw, "  seccomp:\t%s\n", strings.Join(sc, ", "))
		}
		tw.Flush()
		s.writeMemory(ew, t.Memory)
		s.writeFDs(ew, t)
	}

	if len(s.Shmem) > 0 {
		ew.printf("\nshared memory\n")
		tw := tabwriter.NewWriter(ew, 0, 0, 2, ' ', 0)
		fmt.Fprintf(tw, "  KIND\tSHMID\tSIZE\tPAGES\tBYTES\tIN\tUSERS\tNAME\n")
		for _, m := range s.Shmem {
			fmt.Fprintf(tw, "  %s\t%d\t%d\t%d\t%d\t%s\t%s\t%s\n", m.Kind, m.ShmID, m.Size, m.Pages, m.Bytes,
				orDash(m.PagesFile), joinUint32(m.Users, ","), m.Name)
		}
		tw.Flush()
	}

	if len(s.Pipes) > 0 {
		ew.printf("\npipes\n")
		tw := tabwriter.NewWriter(ew, 0, 0, 2, ' ', 0)
		fmt.Fprintf(tw, "  PIPE\tBYTES\tENDS\n")
		for _, p := range s.Pipes {
			var ends []string
			for _, e := range p.Ends {
				dir := "r"
				if e.Write {
					dir = "w"
				}
				ends = append(ends, fmt.Sprintf("%d:fd%d(%s)", e.PID, e.FD, dir))
			}
			name := fmt.Sprintf("pipe:[%d]", p.PipeID)
			if p.FIFO {
				name = fmt.Sprintf("fifo:[%d]", p.PipeID)
			}
			fmt.Fprintf(tw, "  %s\t%d\t%s\n", name, p.Bytes, strings.Join(ends, " "))
		}
		tw.Flush()
	}

	ew.printf("\ntotal: %d tasks, %d threads, %d VMAs, %d fds, %d pages (%s) of memory contents\n",
		s.Totals.Tasks, s.Totals.Threads, s.Totals.VMAs, s.Totals.FDs, s.Totals.Pages, sizeString(s.Totals.Bytes))
	return ew.err
}

func (s *Summary) writeMemory(ew *errWriter, m *Memory) {
	ew.printf("  memory: %d VMAs, %d pages (%s) present", len(m.VMAs), m.Pages, sizeString(m.Bytes))
	if m.PagesFile != "" {
		ew.printf(" in %s", m.PagesFile)
	}
	if m.ParentPages > 0 {
		ew.printf(", %d pages in the parent images", m.ParentPages)
	}
	ew.printf("\n")
	if m.PagesFile != "" && m.PagesFileSize != int64(m.Bytes) {
		if m.PagesFileSize < 0 {
			ew.printf("  warning: %s is missing\n", m.PagesFile)
		} else {
			ew.printf("  warning: %s holds %d bytes, the pagemap accounts for %d\n", m.PagesFile, m.PagesFileSize, m.Bytes)
		}
	}
	if m.StrayPages > 0 {
		ew.printf("  warning: %d present pages lie outside every VMA\n", m.StrayPages)
	}
	tw := tabwriter.NewWriter(ew, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "    START-END\tPROT\tMAP\tPAGES\tBYTES\tSTATUS\tNAME\n")
	for _, v := range m.VMAs {
		mp := "p"
		if v.Shared() {
			mp = "s"
		}
		name := v.Name
		if v.Pgoff != 0 && name != "" {
			name += fmt.Sprintf(" +0x%x", v.Pgoff)
		}
		fmt.Fprintf(tw, "    %08x-%08x\t%s\t%s\t%d\t%d\t%s\t%s\n", v.Start, v.End, v.ProtString(), mp,
			v.Pages, v.Bytes, v.StatusText, name)
	}
	tw.Flush()
}

func (s *Summary) writeFDs(ew *errWriter, t Task) {
	ew.printf("  fds: %d (table %d)\n", len(t.FDs), t.FilesID)
	if len(t.FDs) == 0 {
		return
	}
	tw := tabwriter.NewWriter(ew, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "    FD\tTYPE\tFILE\tFLAGS\tPOS\tNAME\n")
	for _, fd := range t.FDs {
		pos := "-"
		if fd.Pos != nil {
			pos = fmt.Sprint(*fd.Pos)
		}
		flags := fd.FlagsText
		if fd.CloseOnExec {
			flags += " cloexec"
		}
		fmt.Fprintf(tw, "    %d\t%s\t%d\t%s\t%s\t%s\n", fd.FD, fd.Type, fd.FileID, flags, pos, fd.Name)
	}
	tw.Flush()
}

func joinUint32(v []uint32, sep string) string {
	s := make([]string, len(v))
	for i, x := range v {
		s[i] = fmt.Sprint(x)
	}
	return strings.Join(s, sep)
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// sizeString gives a byte count in binary units: "60 KiB", "2.1 MiB".
func sizeString(n uint64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	v, i := float64(n), -1
	for v >= unit && i < 5 {
		v /= unit
		i++
	}
	s := fmt.Sprintf("%.1f", v)
	s = strings.TrimSuffix(s, ".0")
	return s + " " + string("KMGTPE"[i]) + "iB"
}

// errWriter keeps the first write error, so the text can be written
// without checking every line.
type errWriter struct {
	w   io.Writer
	err error
}

func (e *errWriter) Write(p []byte) (int, error) {
	if e.err != nil {
		return 0, e.err
	}
	n, err := e.w.Write(p)
	e.err = err
	return n, err
}

func (e *errWriter) printf(format string, args ...any) { fmt.Fprintf(e, format, args...) }

// summarizeUTS reads utsns-ID.img; nil when the images have none.
func summarizeUTS(d *Dir, id uint32) (*UTSNamespace, error) {
	name := fmt.Sprintf("utsns-%d.img", id)
	ents, err := d.readEntries(KindUTSNS, name, false, "")
	if err != nil || len(ents) == 0 {
		return nil, err
	}
	u := ents[0].Message.(*utsns.UtsnsEntry)
	return &UTSNamespace{ID: id, Hostname: u.GetNodename(), Domainname: u.GetDomainname()}, nil
}

// summarizeIPC counts the SysV objects of IPC namespace id; nil when the
// images have no ipcns-var-ID.img.
func summarizeIPC(d *Dir, id uint32) (*IPCNamespace, error) {
	if _, err := os.Stat(d.file(fmt.Sprintf("ipcns-var-%d.img", id))); err != nil {
		return nil, nil
	}
	n := &IPCNamespace{ID: id}
	segs, err := d.IPCShm(id)
	if err != nil {
		return nil, err
	}
	for _, s := range segs {
		n.Segments++
		n.SegmentBytes += s.Entry.GetSize()
	}
	queues, err := d.IPCMsg(id)
	if err != nil {
		return nil, err
	}
	for _, q := range queues {
		n.Queues++
		n.Messages += len(q.Messages)
	}
	sets, err := d.IPCSem(id)
	if err != nil {
		return nil, err
	}
	for _, s := range sets {
		n.SemSets++
		n.Semaphores += len(s.Values)
	}
	return n, nil
}
