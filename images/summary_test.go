package images_test

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	criu_core "github.com/checkpoint-restore/go-criu/v8/crit/images/criu-core"
	ipc_var "github.com/checkpoint-restore/go-criu/v8/crit/images/ipc-var"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/pagemap"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/seccomp"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/utsns"

	"github.com/crest-restore/crest/images"
	"github.com/crest-restore/crest/test/fixture"
)

// wantTask is what a fixture's README says about one of its tasks; vmas is
// the count of its mm-PID.img.
type wantTask struct {
	pid, ppid, pgid, sid uint32
	threads              []uint32
	vmas                 int
	fds                  []uint32
}

var fds0to3 = []uint32{0, 1, 2, 3}

// summaryFixtures lists every CRIU 4.2 fixture with what its README.md
// describes, and a check of the facts particular to it.
var summaryFixtures = []struct {
	name  string
	tasks []wantTask
	check func(t *testing.T, s *images.Summary)
}{
	{name: "counter", tasks: []wantTask{{1, 0, 1, 1, []uint32{1}, 12, fds0to3}},
		check: func(t *testing.T, s *images.Summary) {
			// The 2 MiB xorshift buffer: its own anonymous VMA, all pages dumped.
			for _, v := range s.Tasks[0].Memory.VMAs {
				if v.Status == images.VMAAreaRegular|images.VMAAnonPrivate && v.End-v.Start >= 2<<20 {
					if v.Pages < 512 {
						t.Errorf("buffer VMA %x-%x has %d present pages, want at least 512", v.Start, v.End, v.Pages)
					}
					return
				}
			}
			t.Errorf("no anonymous VMA of 2 MiB or more")
		}},
	{name: "dynamic", tasks: []wantTask{{1, 0, 1, 1, []uint32{1}, 24, fds0to3}},
		check: func(t *testing.T, s *images.Summary) {
			// prog (PIE), libc.so.6 and ld-linux: five private file VMAs each.
			count := map[string]int{}
			for _, v := range s.Tasks[0].Memory.VMAs {
				if v.Status.Has(images.VMAFilePrivate) {
					count[filepath.Base(v.Name)]++
				}
			}
			for _, f := range []string{"prog", "libc.so.6", "ld-linux-x86-64.so.2"} {
				if count[f] != 5 {
					t.Errorf("%s: %d file-backed VMAs, want 5 (all: %v)", f, count[f], count)
				}
			}
		}},
	{name: "files", tasks: []wantTask{{1, 0, 1, 1, []uint32{1}, 11, []uint32{0, 1, 2, 3, 4, 5, 6, 7}}},
		check: func(t *testing.T, s *images.Summary) {
			fds := s.Tasks[0].FDs
			for i := 0; i < 3; i++ {
				checkFD(t, fds[i], "REG", "/dev/null", 2 /* O_RDWR */, nil)
				if fds[i].FileID != fds[0].FileID {
					t.Errorf("fd %d: file %d, want fds 0-2 on one open file (%d)", i, fds[i].FileID, fds[0].FileID)
				}
			}
			checkFD(t, fds[3], "REG", "/opt/crest-fixtures/files/out.log", 1|0o2000 /* O_WRONLY|O_APPEND */, ptr(8527))
			checkFD(t, fds[4], "REG", "/opt/crest-fixtures/files/data.bin", 0, ptr(6608))
			checkFD(t, fds[5], "REG", "/opt/crest-fixtures/files/data.bin", 0, ptr(6608))
			if fds[4].FileID != fds[5].FileID {
				t.Errorf("fds 4 and 5 on files %d and %d, want one shared open file", fds[4].FileID, fds[5].FileID)
			}
			checkFD(t, fds[6], "MEMFD", "memfd:crest-memfd", 2, ptr(8192))
			checkFD(t, fds[7], "REG", "/dev/null", 1, nil)
			if fds[7].FileID == fds[0].FileID {
				t.Errorf("fd 7 shares the O_RDWR /dev/null of fd 0, want its own O_WRONLY file")
			}
			want := []images.SharedMemory{{Kind: "memfd", ShmID: 1444, Name: "crest-memfd", Size: 8192,
				PagesFile: "pages-1.img", Pages: 2, Bytes: 8192, Users: []uint32{1}}}
			checkShmem(t, s.Shmem, want)
		}},
	{name: "pipe", tasks: []wantTask{
		{1, 0, 1, 1, []uint32{1}, 11, []uint32{0, 1, 2, 3, 4}},
		{2, 1, 1, 1, []uint32{2}, 11, []uint32{0, 1, 2, 3, 4}}},
		check: func(t *testing.T, s *images.Summary) {
			// The parent writes into fd 4, the child reads from fd 3.
			w, r := s.Tasks[0].FDs[4], s.Tasks[1].FDs[3]
			if w.Type != "PIPE" || r.Type != "PIPE" || w.PipeID != r.PipeID || w.PipeID == 0 {
				t.Fatalf("pipe ends: parent fd 4 %s %d, child fd 3 %s %d; want one pipe", w.Type, w.PipeID, r.Type, r.PipeID)
			}
			if w.Flags&3 != 1 || r.Flags&3 != 0 {
				t.Errorf("pipe flags: write end %#x, read end %#x", w.Flags, r.Flags)
			}
			if len(s.Pipes) != 1 {
				t.Fatalf("%d pipes, want 1: %+v", len(s.Pipes), s.Pipes)
			}
			p := s.Pipes[0]
			wantEnds := []images.PipeEnd{{PID: 1, FD: 4, Write: true}, {PID: 2, FD: 3, Write: false}}
			if p.PipeID != w.PipeID || p.Bytes != uint32(len("msg 153\nmsg 154\n")) || !slices.Equal(p.Ends, wantEnds) {
				t.Errorf("pipe %+v, want id %d with 16 bytes and ends %+v", p, w.PipeID, wantEnds)
			}
		}},
	{name: "shmem", tasks: []wantTask{
		{1, 0, 1, 1, []uint32{1}, 12, fds0to3},
		{2, 1, 1, 1, []uint32{2}, 12, fds0to3}},
		check: func(t *testing.T, s *images.Summary) {
			// CRIU 4.2 dumps the MAP_SHARED|MAP_ANONYMOUS region as a memfd
			// named /dev/zero, mapped at one address in both tasks.
			var starts []uint64
			for _, task := range s.Tasks {
				for _, v := range task.Memory.VMAs {
					if v.Status == images.VMAAreaRegular|images.VMAFileShared|images.VMAAreaMemfd {
						if !v.Shared() || v.Name != "memfd:/dev/zero" || v.End-v.Start != 1<<20 || v.Pages != 0 {
							t.Errorf("task %d: memfd VMA %+v", task.PID, v)
						}
						starts = append(starts, v.Start)
					}
				}
			}
			if len(starts) != 2 || starts[0] != starts[1] {
				t.Errorf("memfd VMAs at %x, want one in each task at the same address", starts)
			}
			want := []images.SharedMemory{{Kind: "memfd", ShmID: 300, Name: "/dev/zero", Size: 1 << 20,
				PagesFile: "pages-1.img", Pages: 256, Bytes: 1 << 20, Users: []uint32{1, 2}}}
			checkShmem(t, s.Shmem, want)
		}},
	{name: "signals", tasks: []wantTask{{1, 0, 1, 1, []uint32{1}, 11, fds0to3}}},
	{name: "threads", tasks: []wantTask{{1, 0, 1, 1, []uint32{1, 2, 3}, 15, []uint32{0, 1, 2, 3, 4, 5}}},
		check: func(t *testing.T, s *images.Summary) {
			if s.Totals.Threads != 3 {
				t.Errorf("%d threads in total, want 3", s.Totals.Threads)
			}
		}},
	{name: "tree", tasks: []wantTask{
		{1, 0, 1, 1, []uint32{1}, 11, fds0to3},
		{2, 1, 1, 1, []uint32{2}, 11, fds0to3},
		{3, 1, 3, 1, []uint32{3}, 11, fds0to3},
		{4, 1, 1, 1, []uint32{4}, 11, fds0to3}},
		check: func(t *testing.T, s *images.Summary) {
			groups, sessions := map[uint32]bool{}, map[uint32]bool{}
			for _, task := range s.Tasks {
				groups[task.PGID], sessions[task.SID] = true, true
			}
			if len(groups) != 2 || len(sessions) != 1 {
				t.Errorf("%d process groups in %d sessions, want 2 in 1", len(groups), len(sessions))
			}
		}},
}

func ptr(v uint64) *uint64 { return &v }

func checkFD(t *testing.T, fd images.FD, typ, name string, flags uint32, pos *uint64) {
	t.Helper()
	// O_LARGEFILE is set by the kernel on every 64-bit open.
	if fd.Type != typ || fd.Name != name || fd.Flags&^0o100000 != flags {
		t.Errorf("fd %d: %s %q flags %#o, want %s %q flags %#o", fd.FD, fd.Type, fd.Name, fd.Flags, typ, name, flags)
	}
	if pos != nil && (fd.Pos == nil || *fd.Pos != *pos) {
		t.Errorf("fd %d: pos %v, want %d", fd.FD, fd.Pos, *pos)
	}
}

func checkShmem(t *testing.T, got, want []images.SharedMemory) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("shared memory %+v, want %+v", got, want)
	}
	for i := range got {
		g, w := got[i], want[i]
		if g.Kind != w.Kind || g.ShmID != w.ShmID || g.Name != w.Name || g.Size != w.Size ||
			g.PagesFile != w.PagesFile || g.Pages != w.Pages || g.Bytes != w.Bytes || !slices.Equal(g.Users, w.Users) {
			t.Errorf("shared memory %+v, want %+v", g, w)
		}
	}
}

func TestSummarizeFixtures(t *testing.T) {
	names := fixture.Names(t)
	covered := map[string]bool{}
	for _, fx := range summaryFixtures {
		covered[fx.name] = true
		t.Run(fx.name, func(t *testing.T) {
			d, err := images.Open(fixture.Images(t, fx.name))
			if err != nil {
				t.Fatal(err)
			}
			s, err := images.Summarize(d)
			if err != nil {
				t.Fatal(err)
			}
			// Every fixture runs as pid 1 of a new pid namespace, and no
			// other namespace is new.
			if s.Root != 1 || !s.OwnPidNS || !slices.Equal(s.NewNamespaces, []string{"pid"}) {
				t.Errorf("root %d, own pid ns %v, new namespaces %v; want 1, true, [pid]", s.Root, s.OwnPidNS, s.NewNamespaces)
			}
			if len(s.Tasks) != len(fx.tasks) {
				t.Fatalf("%d tasks, want %d", len(s.Tasks), len(fx.tasks))
			}
			for i, w := range fx.tasks {
				checkTask(t, &s.Tasks[i], w)
			}
			checkAgainstImages(t, d, s)
			if fx.check != nil {
				fx.check(t, s)
			}
		})
	}
	for _, n := range names {
		if !covered[n] {
			t.Errorf("fixture %s has no expectations in summaryFixtures", n)
		}
	}
}

func checkTask(t *testing.T, got *images.Task, w wantTask) {
	t.Helper()
	if got.PID != w.pid || got.PPID != w.ppid || got.PGID != w.pgid || got.SID != w.sid || !slices.Equal(got.Threads, w.threads) {
		t.Errorf("task pid %d ppid %d pgid %d sid %d threads %v, want %d %d %d %d %v",
			got.PID, got.PPID, got.PGID, got.SID, got.Threads, w.pid, w.ppid, w.pgid, w.sid, w.threads)
	}
	if got.State != "Alive" || got.Comm != "prog" {
		t.Errorf("task %d: state %q comm %q, want Alive prog", got.PID, got.State, got.Comm)
	}
	if got.Memory == nil {
		t.Fatalf("task %d: no memory", got.PID)
	}
	if len(got.Memory.VMAs) != w.vmas {
		t.Errorf("task %d: %d VMAs, want %d", got.PID, len(got.Memory.VMAs), w.vmas)
	}
	var fds []uint32
	for _, fd := range got.FDs {
		fds = append(fds, fd.FD)
	}
	if !slices.Equal(fds, w.fds) {
		t.Errorf("task %d: fds %v, want %v", got.PID, fds, w.fds)
	}
	// fds 0-2 on /dev/null from the launcher, cwd its own directory.
	for _, fd := range got.FDs[:3] {
		if fd.Name != "/dev/null" {
			t.Errorf("task %d: fd %d on %q, want /dev/null", got.PID, fd.FD, fd.Name)
		}
	}
	if !strings.HasPrefix(got.Cwd, "/opt/crest-fixtures/") || got.Root != "/" || got.Exe != got.Cwd+"/prog" {
		t.Errorf("task %d: cwd %q root %q exe %q", got.PID, got.Cwd, got.Root, got.Exe)
	}
}

// checkAgainstImages compares the summary with the images themselves, read
// without Summarize: the pstree, the mm and fdinfo images, the sizes of the
// pages files; and the facts every CRIU 4.2 dump on kernel 6.18 shows.
func checkAgainstImages(t *testing.T, d *images.Dir, s *images.Summary) {
	t.Helper()
	var totalPages uint64
	for i, p := range d.Pstree {
		task := &s.Tasks[i]
		if task.PID != p.GetPid() || task.PPID != p.GetPpid() || task.PGID != p.GetPgid() ||
			task.SID != p.GetSid() || !slices.Equal(task.Threads, p.GetThreads()) {
			t.Errorf("task %d differs from pstree.img entry %v", task.PID, p)
		}
		mm, err := d.MM(task.PID)
		if err != nil {
			t.Fatal(err)
		}
		if len(mm.GetVmas()) != len(task.Memory.VMAs) {
			t.Errorf("task %d: %d VMAs, mm-%d.img has %d", task.PID, len(task.Memory.VMAs), task.PID, len(mm.GetVmas()))
		}
		ids, err := d.IDs(task.PID)
		if err != nil {
			t.Fatal(err)
		}
		fdinfo, err := d.Fdinfo(ids.GetFilesId())
		if err != nil {
			t.Fatal(err)
		}
		var want, got []uint32
		for _, fe := range fdinfo {
			want = append(want, fe.GetFd())
		}
		sort.Slice(want, func(i, j int) bool { return want[i] < want[j] })
		for _, fd := range task.FDs {
			got = append(got, fd.FD)
		}
		if !slices.Equal(got, want) {
			t.Errorf("task %d: fds %v, fdinfo-%d.img has %v", task.PID, got, ids.GetFilesId(), want)
		}

		m := task.Memory
		st, err := os.Stat(d.FilePath(m.PagesFile))
		if err != nil {
			t.Fatal(err)
		}
		if m.Bytes != uint64(st.Size()) || m.PagesFileSize != st.Size() || m.Bytes != m.Pages*4096 {
			t.Errorf("task %d: %d pages, %d bytes; %s holds %d bytes", task.PID, m.Pages, m.Bytes, m.PagesFile, st.Size())
		}
		var inVMAs uint64
		for _, v := range m.VMAs {
			inVMAs += v.Pages
			if v.Bytes != v.Pages*4096 || v.Pages*4096 > v.End-v.Start {
				t.Errorf("task %d: VMA %x-%x: %d pages, %d bytes", task.PID, v.Start, v.End, v.Pages, v.Bytes)
			}
		}
		if inVMAs != m.Pages || m.StrayPages != 0 {
			t.Errorf("task %d: %d pages in VMAs, %d stray, %d in all", task.PID, inVMAs, m.StrayPages, m.Pages)
		}
		totalPages += m.Pages

		// [vvar]+[vvar_vclock] as one 24 KiB VVAR entry, the 8 KiB vdso
		// dumped, and the parasite's page in the binary's r-x VMA.
		for _, v := range m.VMAs {
			switch {
			case v.Status.Has(images.VMAAreaVVAR):
				if v.End-v.Start != 24<<10 || v.Pages != 0 || v.Name != "[vvar]" {
					t.Errorf("task %d: vvar %+v, want 24 KiB, no pages", task.PID, v)
				}
			case v.Status.Has(images.VMAAreaVDSO):
				if v.End-v.Start != 8<<10 || v.Pages != 2 || v.Name != "[vdso]" {
					t.Errorf("task %d: vdso %+v, want 8 KiB, 2 pages", task.PID, v)
				}
			case v.Name == task.Exe && v.ProtString() == "r-x":
				if v.Pages != 1 {
					t.Errorf("task %d: %d pages present in the r-x VMA of %s, want the parasite's 1", task.PID, v.Pages, v.Name)
				}
			}
		}
	}
	for _, sh := range s.Shmem {
		totalPages += sh.Pages
	}
	if s.Totals.Pages != totalPages || s.Totals.Bytes != totalPages*4096 || s.Totals.Tasks != len(d.Pstree) {
		t.Errorf("totals %+v, want %d pages of %d tasks", s.Totals, totalPages, len(d.Pstree))
	}
}

// TestSummarizeCompatPagemap rewrites a task's pagemap the way CRIU before
// 3.x wrote it (only compat_nr_pages, no flags) and checks the page counts
// do not change.
func TestSummarizeCompatPagemap(t *testing.T) {
	src := fixture.Images(t, "tree")
	dir := fixture.CopyDir(t, src)
	orig, err := images.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	want, err := images.Summarize(orig)
	if err != nil {
		t.Fatal(err)
	}

	path := filepath.Join(dir, "pagemap-2.img")
	img, err := images.ReadKindFile(path, images.KindPagemap)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range img.Entries[1:] {
		pe := e.Message.(*pagemap.PagemapEntry)
		if pe.GetFlags()&^(1<<1) != 1<<2 { // PE_PRESENT, maybe PE_LAZY
			t.Fatalf("fixture entry at %#x has flags %#x", pe.GetVaddr(), pe.GetFlags())
		}
		pe.CompatNrPages = proto.Uint32(uint32(pe.GetNrPages()))
		pe.NrPages, pe.Flags = nil, nil
	}
	if err := images.WriteFile(path, img); err != nil {
		t.Fatal(err)
	}

	got := summarize(t, dir)
	g, w := got.Tasks[1].Memory, want.Tasks[1].Memory
	if g.Pages != w.Pages || g.Pages == 0 {
		t.Fatalf("old-style pagemap: %d pages, want %d", g.Pages, w.Pages)
	}
	for i := range g.VMAs {
		if g.VMAs[i].Pages != w.VMAs[i].Pages {
			t.Errorf("VMA %x: %d pages, want %d", g.VMAs[i].Start, g.VMAs[i].Pages, w.VMAs[i].Pages)
		}
	}
}

func TestVMAStatusString(t *testing.T) {
	for _, tc := range []struct {
		s    images.VMAStatus
		want string
	}{
		{0, "VMA_AREA_NONE"},
		{0x201, "VMA_AREA_REGULAR|VMA_ANON_PRIVATE"},
		{images.VMAAreaRegular | images.VMAFileShared | images.VMAAreaMemfd, "VMA_AREA_REGULAR|VMA_FILE_SHARED|VMA_AREA_MEMFD"},
		{images.VMAAreaVsyscall | images.VMAAnonPrivate, "VMA_AREA_VSYSCALL|VMA_ANON_PRIVATE"},
		{images.VMAAreaRegular | 1<<4 | 1<<20, "VMA_AREA_REGULAR|0x100010"},
		{images.VMAUnsupp, "VMA_UNSUPP"},
	} {
		if got := tc.s.String(); got != tc.want {
			t.Errorf("VMAStatus(%#x) = %q, want %q", uint32(tc.s), got, tc.want)
		}
	}
}

func TestSummaryText(t *testing.T) {
	s := summarize(t, fixture.Images(t, "files"))
	var b strings.Builder
	if err := s.WriteText(&b); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"root task 1 has its own pid namespace",
		"memfd:crest-memfd",
		"O_WRONLY|O_APPEND|O_LARGEFILE",
		"[vdso]",
		"VMA_AREA_REGULAR|VMA_AREA_HEAP|VMA_ANON_PRIVATE",
		"15 pages (60 KiB) present in pages-2.img",
	} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("text summary lacks %q:\n%s", want, b.String())
		}
	}
	if strings.Contains(b.String(), "warning") {
		t.Errorf("text summary warns:\n%s", b.String())
	}
}

// TestSummaryStopped: a stopped task's state and stop signal (CRIU's
// TASK_STOPPED and stop_signo), in the summary and its text.
func TestSummaryStopped(t *testing.T) {
	dir := fixture.CopyImages(t, "tree")
	for pid, signo := range map[int]uint32{2: 20, 4: 0} {
		editImage(t, filepath.Join(dir, fmt.Sprintf("core-%d.img", pid)), func(img *images.Image) {
			tc := img.Entries[0].Message.(*criu_core.CoreEntry).Tc
			tc.TaskState = proto.Uint32(3)
			if signo != 0 {
				tc.StopSigno = proto.Uint32(signo)
			}
		})
	}
	s := summarize(t, dir)
	for _, task := range s.Tasks {
		want, signo := "Alive", uint32(0)
		switch task.PID {
		case 2:
			want, signo = "Stopped", 20
		case 4:
			want = "Stopped"
		}
		if task.State != want || task.StopSigno != signo || task.Memory == nil {
			t.Errorf("task %d: %s, stop_signo %d, memory %v; want %s, %d and its memory", task.PID, task.State, task.StopSigno, task.Memory != nil, want, signo)
		}
	}
	var b strings.Builder
	if err := s.WriteText(&b); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"\ntask 2 (prog), stopped by SIGTSTP\n", "\ntask 4 (prog), stopped\n", "\ntask 3 (prog)\n"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("text summary lacks %q:\n%s", want, b.String())
		}
	}
}

// TestSummarySeccomp: each thread's seccomp mode and the length of its
// filter chain (seccomp.img, from the core's seccomp_filter along prev).
func TestSummarySeccomp(t *testing.T) {
	dir := fixture.CopyImages(t, "threads")
	prog := make([]byte, 8)
	editImage(t, filepath.Join(dir, "seccomp.img"), func(img *images.Image) {
		img.Entries[0].Message.(*seccomp.SeccompEntry).SeccompFilters = []*seccomp.SeccompFilter{
			{Filter: prog}, {Filter: prog, Prev: proto.Uint32(0)},
		}
	})
	for tid, mode := range map[int]criu_core.SeccompMode{1: criu_core.SeccompMode_filter, 2: criu_core.SeccompMode_strict} {
		editImage(t, filepath.Join(dir, fmt.Sprintf("core-%d.img", tid)), func(img *images.Image) {
			tc := img.Entries[0].Message.(*criu_core.CoreEntry).ThreadCore
			tc.SeccompMode = mode.Enum()
			if mode == criu_core.SeccompMode_filter {
				tc.SeccompFilter = proto.Uint32(1)
			}
		})
	}
	s := summarize(t, dir)
	want := []images.ThreadSeccomp{{TID: 1, Mode: "filter", Filters: 2}, {TID: 2, Mode: "strict"}}
	if got := s.Tasks[0].Seccomp; !slices.Equal(got, want) {
		t.Errorf("seccomp %+v, want %+v", got, want)
	}
	var b strings.Builder
	if err := s.WriteText(&b); err != nil {
		t.Fatal(err)
	}
	if want := "seccomp:    thread 1 2 filters, thread 2 strict\n"; !strings.Contains(b.String(), want) {
		t.Errorf("text summary lacks %q:\n%s", want, b.String())
	}
}

// editImage rewrites the image file at path after edit changed it.
func editImage(t *testing.T, path string, edit func(*images.Image)) {
	t.Helper()
	img, err := images.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	edit(img)
	if err := images.WriteFile(path, img); err != nil {
		t.Fatal(err)
	}
}

// summarize opens the image directory dir and summarizes it.
func summarize(t *testing.T, dir string) *images.Summary {
	t.Helper()
	d, err := images.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	s, err := images.Summarize(d)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestSummaryUTSIPC: a root with UTS and IPC namespaces of its own has
// them in the summary: the names of utsns-ID.img and the objects of the
// ipcns images (here those a real CRIU 4.2 wrote for nsuts).
func TestSummaryUTSIPC(t *testing.T) {
	dir := fixture.CopyImages(t, "counter")
	editImage(t, filepath.Join(dir, "ids-1.img"), func(img *images.Image) {
		ids := img.Entries[0].Message.(*criu_core.TaskKobjIdsEntry)
		ids.UtsNsId, ids.IpcNsId = proto.Uint32(11), proto.Uint32(10)
	})
	if err := images.WriteFile(filepath.Join(dir, "utsns-11.img"), &images.Image{Kind: images.KindUTSNS, Entries: []images.Entry{
		{Message: &utsns.UtsnsEntry{Nodename: proto.String("crest-nsuts"), Domainname: proto.String("nsuts.crest")}}}}); err != nil {
		t.Fatal(err)
	}
	if err := images.WriteFile(filepath.Join(dir, "ipcns-var-10.img"), &images.Image{Kind: images.KindIPCVar, Entries: []images.Entry{
		{Message: &ipc_var.IpcVarEntry{SemCtls: []uint32{1, 2, 3, 4}, MsgCtlmax: proto.Uint32(1), MsgCtlmnb: proto.Uint32(1),
			MsgCtlmni: proto.Uint32(1), AutoMsgmni: proto.Uint32(0), ShmCtlmax: proto.Uint64(1), ShmCtlall: proto.Uint64(1),
			ShmCtlmni: proto.Uint32(1), ShmRmidForced: proto.Uint32(0), MqQueuesMax: proto.Uint32(1), MqMsgMax: proto.Uint32(1),
			MqMsgsizeMax: proto.Uint32(1)}}}}); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"ipcns-msg-10.img", "ipcns-sem-10.img", "ipcns-shm-10.img"} {
		b, err := os.ReadFile(filepath.Join("testdata", "criu-4.2-ipc", name))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	s := summarize(t, dir)
	if u := s.UTS; u == nil || *u != (images.UTSNamespace{ID: 11, Hostname: "crest-nsuts", Domainname: "nsuts.crest"}) {
		t.Errorf("uts %+v", u)
	}
	if i := s.IPC; i == nil || *i != (images.IPCNamespace{ID: 10, Segments: 2, SegmentBytes: 8192 + 12388, Queues: 1, Messages: 5, SemSets: 1, Semaphores: 5}) {
		t.Errorf("ipc %+v", i)
	}
	var b strings.Builder
	if err := s.WriteText(&b); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"namespaces of the root not shared with the dumping criu: pid, ipc, uts\n",
		`uts namespace 11: hostname "crest-nsuts", domain name "nsuts.crest"` + "\n",
		"ipc namespace 10: 2 shared memory segments (20580 bytes), 1 message queues (5 messages), 1 semaphore sets (5 semaphores)\n",
	} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("text summary lacks %q:\n%s", want, b.String())
		}
	}
	if s := summarize(t, fixture.Images(t, "counter")); s.UTS != nil || s.IPC != nil {
		t.Errorf("counter: uts %+v, ipc %+v; want none", s.UTS, s.IPC)
	}
}
