package restore

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/checkpoint-restore/go-criu/v8/crit/images/fdinfo"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/fifo"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/fown"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/mm"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/regfile"
	"google.golang.org/protobuf/proto"

	"github.com/crest-restore/crest/images"
	"github.com/crest-restore/crest/test/fixture"
)

// TestRestoreResources restores the fixtures with shared resources (pipe,
// shmem, files, signals), checks the structure of every task as for the
// others (checkTask), and then what each fixture's README says a good
// restore shows.
func TestRestoreResources(t *testing.T) {
	needRoot(t)
	tests := []struct {
		name  string
		check func(t *testing.T, p *Plan, r *Restore, dir string)
	}{
		{"pipe", checkPipe},
		{"shmem", checkShmem},
		{"files", checkFiles},
		{"signals", checkSignals},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := installFixture(t, tt.name)
			p := loadPlan(t, tt.name)
			r, _ := startChecked(t, p)
			tt.check(t, p, r, dir)
		})
	}
}

// hasStep reports whether the timeline has a successful step of task pid.
func hasStep(r *Restore, pid int, step string) bool {
	for _, s := range r.Timeline().Steps {
		if s.PID == pid && s.Step == step && s.Succeeded && s.End >= s.Begin && s.Begin != 0 {
			return true
		}
	}
	return false
}

// checkPipe: out.log continues with the bytes that were in the pipe, then
// every later message exactly once, in order.
func checkPipe(t *testing.T, p *Plan, r *Restore, dir string) {
	lastLine, added := logLines(t, "pipe", dir, "out.log", 20)
	_, last := splitCounter(t, lastLine)
	for i, l := range added {
		if want := fmt.Sprintf("msg %d", last+1+i); l != want {
			t.Fatalf("out.log: new line %d is %q, want %q", i, l, want)
		}
	}
	// the first two were the pipe's content at the dump
	if string(p.Pipes[97264].Data) != "msg 153\nmsg 154\n" || added[0] != "msg 153" {
		t.Errorf("pipe data %q, first new line %q", p.Pipes[97264].Data, added[0])
	}
	checkLogContinues(t, "pipe", dir, "out-parent.log", 10)
	// Both tasks hold ends of one pipe: the same inode.
	w, _ := os.Readlink(fmt.Sprintf("/proc/%d/fd/4", r.HostPID(1)))
	rd, _ := os.Readlink(fmt.Sprintf("/proc/%d/fd/3", r.HostPID(2)))
	if w != rd || !strings.HasPrefix(w, "pipe:[") {
		t.Errorf("write end %q, read end %q: want one pipe", w, rd)
	}
	if got := fdinfoField(t, r.HostPID(1), 4, "flags"); got&syscall.O_ACCMODE != syscall.O_WRONLY {
		t.Errorf("parent fd 4: flags %#o, want the write end", got)
	}
	if size := pipeSize(t, r.HostPID(2), 3); size != int(p.Pipes[97264].BufSize) {
		t.Errorf("pipe buffer of %d bytes, want %d", size, p.Pipes[97264].BufSize)
	}
	if !hasStep(r, 1, "prepare pipes") {
		t.Errorf("no prepare pipes step for task 1 in %+v", r.Timeline().Steps)
	}
}

// checkShmem: the child keeps reporting the parent's counter, from the
// dump value on, through one memfd mapped by both.
func checkShmem(t *testing.T, p *Plan, r *Restore, dir string) {
	checkSharedCounter(t, p, r, dir, "/memfd:/dev/zero (deleted)")
}

// checkSharedCounter is checkShmem for a shared object whose mappings
// show as name.
func checkSharedCounter(t *testing.T, p *Plan, r *Restore, dir, name string) {
	checkLogContinues(t, "shmem", dir, "out-parent.log", 10)
	line := regexp.MustCompile(`^seen (\d+) tick=(\d+)$`)
	lastLine, added := logLines(t, "shmem", dir, "out.log", 30)
	m := line.FindStringSubmatch(lastLine)
	seen, _ := strconv.Atoi(m[1])
	tick, _ := strconv.Atoi(m[2])
	for i, l := range added {
		m := line.FindStringSubmatch(l)
		if m == nil {
			t.Fatalf("out.log: new line %d is %q", i, l)
		}
		s, _ := strconv.Atoi(m[1])
		k, _ := strconv.Atoi(m[2])
		if k != tick+1+i || s < seen {
			t.Fatalf("out.log: new line %d is %q after seen %d tick=%d", i, l, seen, tick+i)
		}
		seen = s
	}
	if last, _ := strconv.Atoi(line.FindStringSubmatch(added[len(added)-1])[1]); last < 153+20 {
		t.Errorf("the child saw %d last: the parent's counter does not reach it", last)
	}
	// one memfd, the same inode in both tasks, "/memfd:/dev/zero (deleted)"
	var inodes []string
	for _, task := range p.Tasks {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/maps", r.HostPID(task.PID)))
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(l, "7f01a94d6000-7f01a95d6000 rw-s ") {
				f := strings.Fields(l)
				if strings.Join(f[5:], " ") != name {
					t.Errorf("task %d: %q", task.PID, l)
				}
				inodes = append(inodes, f[4])
			}
		}
	}
	if len(inodes) != 2 || inodes[0] != inodes[1] {
		t.Errorf("shared mappings of inodes %v, want one inode in both tasks", inodes)
	}
	if !hasStep(r, 1, "prepare memfds") {
		t.Errorf("no prepare memfds step for task 1")
	}
}

// checkFiles: the records and offsets continue exactly, fds 4 and 5 share
// one offset, fd 7 is /dev/null, the memfd holds its content.
func checkFiles(t *testing.T, p *Plan, r *Restore, dir string) {
	host := r.HostPID(1)
	line := regexp.MustCompile(`^(\d+) fd=([45]) off=(\d+) hex=([0-9a-f]{32})$`)
	lastLine, added := logLines(t, "files", dir, "out.log", 20)
	m := line.FindStringSubmatch(lastLine)
	n, _ := strconv.Atoi(m[1])
	off, _ := strconv.Atoi(m[3])
	for i, l := range added {
		m := line.FindStringSubmatch(l)
		if m == nil {
			t.Fatalf("out.log: new line %d is %q", i, l)
		}
		wantOff := (off+16*(i+1)-16)%65536 + 16
		rec := fmt.Sprintf("off=%08x ok\n", wantOff-16)
		if m[1] != strconv.Itoa(n+1+i) || m[3] != strconv.Itoa(wantOff) || m[4] != fmt.Sprintf("%x", rec) {
			t.Fatalf("out.log: new line %d is %q, want %d ... off=%d hex=%x", i, l, n+1+i, wantOff, rec)
		}
	}
	// fds 4 and 5: one open file description. Advancing one moves the
	// other (the task does it every 10 ms: they read equal whenever read
	// between two ticks).
	for try := 0; ; try++ {
		a, b := fdinfoField(t, host, 4, "pos"), fdinfoField(t, host, 5, "pos")
		if a == b {
			break
		}
		if try == 100 {
			t.Fatalf("fd 4 at %d, fd 5 at %d: not one offset", a, b)
		}
	}
	if l, _ := os.Readlink(fmt.Sprintf("/proc/%d/fd/7", host)); l != "/dev/null" {
		t.Errorf("fd 7 is %q", l)
	}
	if fl := fdinfoField(t, host, 7, "flags"); fl&syscall.O_ACCMODE != syscall.O_WRONLY {
		t.Errorf("fd 7 flags %#o, want O_WRONLY", fl)
	}
	if fl := fdinfoField(t, host, 4, "flags"); fl&syscall.O_ACCMODE != syscall.O_RDONLY {
		t.Errorf("fd 4 flags %#o, want O_RDONLY", fl)
	}
	// the memfd: 8 KiB of its text, offset 8192
	content, err := os.ReadFile(fmt.Sprintf("/proc/%d/fd/6", host))
	if err != nil {
		t.Fatal(err)
	}
	want := bytes.Repeat([]byte("crest memfd contents 0123456789\n"), 8192/32)
	if !bytes.Equal(content, want) {
		t.Errorf("memfd holds %d bytes %.40q..., want its 8 KiB of text", len(content), content)
	}
	if pos := fdinfoField(t, host, 6, "pos"); pos != 8192 {
		t.Errorf("memfd offset %d, want 8192", pos)
	}
	// the seals are F_SEAL_SEAL, as memfd_create without
	// MFD_ALLOW_SEALING leaves them
	fd, err := syscall.Open(fmt.Sprintf("/proc/%d/fd/6", host), syscall.O_RDONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(fd)
	if seals, err := fcntl(fd, 1034, 0); err != nil || seals != 1 { // F_GET_SEALS
		t.Errorf("memfd seals %#x (%v), want F_SEAL_SEAL", seals, err)
	}
	if !hasStep(r, 1, "prepare memfds") || !hasStep(r, 1, "open files") {
		t.Errorf("no prepare memfds / open files steps for task 1")
	}
}

// checkSignals: ticks and alarms go on, SIGUSR1 is handled, SIGUSR2 is
// still pending and blocked, handlers and the alternate stack are the
// image's.
func checkSignals(t *testing.T, p *Plan, r *Restore, dir string) {
	host := r.HostPID(1)
	task := p.Tasks[0]
	st := procStatus(t, host)
	for k, want := range map[string]string{"SigPnd": "0000000000000800", "ShdPnd": "0000000000000000",
		"SigBlk": "0000000000000800", "SigCgt": "0000000000002a00"} {
		if got := st[k][0]; got != want {
			t.Errorf("%s %s, want %s", k, got, want)
		}
	}
	// what the images say, too
	var cgt uint64
	for _, sa := range task.Sigactions {
		if sa.Handler > 1 {
			cgt |= 1 << (sa.Signal - 1)
			if sa.Flags&0x08000000 == 0 { // SA_ONSTACK
				t.Errorf("signal %d: flags %#x without SA_ONSTACK", sa.Signal, sa.Flags)
			}
		}
	}
	if fmt.Sprintf("%016x", cgt) != st["SigCgt"][0] || task.Threads[0].Core.GetTc().GetBlkSigset() != 0x800 {
		t.Errorf("images: SigCgt %x, blocked %#x", cgt, task.Threads[0].Core.GetTc().GetBlkSigset())
	}
	if sigs := task.Threads[0].Signals; len(sigs) != 1 || sigs[0].Signo() != int(syscall.SIGUSR2) {
		t.Errorf("images: pending %v", sigs)
	}

	line := regexp.MustCompile(`^tick=(\d+) alarms=(\d+) usr1=(\d+) usr2=(\d+) alt=(\d+)$`)
	parse := func(l string) [5]int {
		m := line.FindStringSubmatch(l)
		if m == nil {
			t.Fatalf("out.log: line %q", l)
		}
		var v [5]int
		for i := range v {
			v[i], _ = strconv.Atoi(m[i+1])
		}
		return v
	}
	lastLine, added := logLines(t, "signals", dir, "out.log", 30)
	last := parse(lastLine)
	for i, l := range added {
		v := parse(l)
		if v[0] != last[0]+1+i || v[1] < last[1] || v[3] != 0 || v[4] != v[1]+v[2] {
			t.Fatalf("out.log: new line %d is %q after %v", i, l, last)
		}
	}
	if v := parse(added[len(added)-1]); v[1] < last[1]+5 {
		t.Errorf("alarms %d after 30 ticks from %d: the interval timer does not run", v[1], last[1])
	}
	// SIGUSR1 is handled, on the alternate stack
	if err := syscall.Kill(host, syscall.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	now, _ := os.ReadFile(filepath.Join(dir, "out.log"))
	var got [5]int
	for try := 0; try < 200; try++ {
		time.Sleep(10 * time.Millisecond)
		b, _ := os.ReadFile(filepath.Join(dir, "out.log"))
		ls := strings.Split(strings.TrimSpace(string(b[len(now)-1:])), "\n")
		if got = parse(ls[len(ls)-1]); got[2] == 1 {
			break
		}
	}
	if got[2] != 1 || got[3] != 0 || got[4] != got[1]+got[2] {
		t.Errorf("after kill -USR1: %v, want usr1=1 usr2=0 alt=alarms+usr1", got)
	}
	st = procStatus(t, host)
	if st["SigPnd"][0] != "0000000000000800" || st["SigBlk"][0] != "0000000000000800" {
		t.Errorf("after kill -USR1: SigPnd %s SigBlk %s", st["SigPnd"][0], st["SigBlk"][0])
	}
	// the alternate stack: the handlers ran on it (alt=), and it is
	// the image's (ss_sp, ss_size)
	sas := task.Threads[0].Core.GetThreadCore().GetSas()
	if sas.GetSsSize() != 65536 || sas.GetSsSp() == 0 {
		t.Errorf("images: sigaltstack %+v", sas)
	}
	if !hasStep(r, 1, "pending signals") || !hasStep(r, 1, "timers") {
		t.Errorf("no pending signals / timers steps for task 1")
	}
}

// fdinfoField reads a numeric field of /proc/PID/fdinfo/FD (pos in
// decimal, flags in octal).
func fdinfoField(t *testing.T, pid, fd int, field string) int64 {
	t.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/fdinfo/%d", pid, fd))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), field+":"); ok {
			base := 10
			if field == "flags" {
				base = 8
			}
			n, err := strconv.ParseInt(strings.TrimSpace(v), base, 64)
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
	}
	t.Fatalf("/proc/%d/fdinfo/%d: no %s", pid, fd, field)
	return 0
}

// editImage rewrites image file of dir through edit.
func editImage(t *testing.T, dir, file string, edit func(img *images.Image)) {
	t.Helper()
	path := filepath.Join(dir, file)
	img, err := images.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	edit(img)
	if err := images.WriteFile(path, img); err != nil {
		t.Fatal(err)
	}
}

// fixtureProcs returns the processes running fixture name's program.
func fixtureProcs(t *testing.T, name string) []int {
	t.Helper()
	ents, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	var out []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid)); strings.HasPrefix(exe, filepath.Join(fixture.OptDir, name)+"/") {
			out = append(out, pid)
		}
	}
	return out
}

// TestResourceFailures damages the images or the plan of the pipe and
// shmem fixtures: each restore fails with an error naming the cause, and
// nothing of it is left running.
func TestResourceFailures(t *testing.T) {
	needRoot(t)
	tests := []struct {
		name, fixture string
		damage        func(t *testing.T, dir string) // the image directory
		tamper        func(p *Plan)
		want          string
	}{
		{name: "pipe data shorter than its entry", fixture: "pipe",
			damage: func(t *testing.T, dir string) {
				path := filepath.Join(dir, "pipes-data.img")
				b, err := os.ReadFile(path)
				if err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(path, b[:len(b)-6], 0o644); err != nil {
					t.Fatal(err)
				}
			},
			want: "pipes-data.img"},
		{name: "pipe data larger than its buffer", fixture: "pipe",
			tamper: func(p *Plan) {
				pp := p.Pipes[97264]
				pp.BufSize, pp.Data = 4096, bytes.Repeat([]byte("x"), 8192)
			},
			want: "restore: stage ROOT_TASK: prepare files: task 1: pipe 97264: refilling 8192 bytes: 4096 do not fit"},
		{name: "shared memory without its pages image", fixture: "shmem",
			damage: func(t *testing.T, dir string) {
				if err := os.Remove(filepath.Join(dir, "pagemap-shmem-300.img")); err != nil {
					t.Fatal(err)
				}
			},
			want: `plan: task 1: pagemap-shmem-300.img: memfd "/dev/zero" (inode 1, 1048576 bytes): the image is missing`},
		{name: "shared memory pages file too short", fixture: "shmem",
			damage: func(t *testing.T, dir string) {
				if err := os.Truncate(filepath.Join(dir, "pages-1.img"), 4096); err != nil {
					t.Fatal(err)
				}
			},
			want: "plan: task 1: pagemap-shmem-300.img: %s/pagemap-shmem-300.img: entry 1 at offset 14: 256 pages at 0x0 run past the end of %[1]s/pages-1.img"},
		{name: "POSIX timer on a clock that does not exist", fixture: "signals",
			tamper: func(p *Plan) {
				p.Tasks[0].PosixTimers = []PosixTimer{{ID: 0, ClockID: 99, Signo: 14, Notify: sigevSignal, ValueSec: 1}}
			},
			want: "restore: stage RESTORE_CREDS: task 1: timers: invalid argument (errno 22)"},
		{name: "memfd content past its size", fixture: "files",
			tamper: func(p *Plan) { p.Memfds[1].Size = 4096 },
			want:   "restore: stage ROOT_TASK: prepare files: task 1: memfd \"crest-memfd\" (inode 1): pagemap-shmem-1444.img: run 0x0-0x2000 is past the end of its 4096 bytes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			installFixture(t, tt.fixture)
			dir := fixture.Images(t, tt.fixture)
			if tt.damage != nil {
				dir = fixture.CopyImages(t, tt.fixture)
				tt.damage(t, dir)
			}
			want := tt.want
			if strings.Contains(want, "%") {
				want = fmt.Sprintf(want, dir)
			}
			p, err := openPlan(t, dir)
			if err == nil {
				if tt.tamper != nil {
					tt.tamper(p)
				}
				var r *Restore
				r, err = Start(context.Background(), p, Options{StageTimeout: 5 * time.Second})
				if err == nil {
					r.Abort()
					t.Fatal("the restore succeeded")
				}
			}
			if !strings.Contains(err.Error(), want) {
				t.Errorf("error %q, want it to contain %q", err, want)
			}
			if left := fixtureProcs(t, tt.fixture); len(left) > 0 {
				t.Errorf("processes of the attempt still run: %v", left)
			}
		})
	}
}

// TestRestoreFIFO restores the pipe fixture turned into a FIFO: its images
// rewritten so that the two ends are FIFO files of a path (REG entries
// with S_IFIFO), the data in fifo-data.img. The child must read the two
// messages that were in it, then the new ones, as through the pipe.
func TestRestoreFIFO(t *testing.T) {
	needRoot(t)
	dir := installFixture(t, "pipe")
	imgs := fixture.CopyImages(t, "pipe")
	path := filepath.Join(t.TempDir(), "fifo")
	if err := syscall.Mkfifo(path, 0o600); err != nil {
		t.Fatal(err)
	}
	editImage(t, imgs, "files.img", func(img *images.Image) {
		var fown *fown.FownEntry
		for _, e := range img.Entries {
			fe := e.Message.(*fdinfo.FileEntry)
			if fe.GetType() != fdinfo.FdTypes_PIPE {
				continue
			}
			fown = fe.Pipe.Fown
			regf := fe.GetId() + 100
			fe.Type, fe.Pipe = fdinfo.FdTypes_FIFO.Enum(), nil
			fe.Fifo = &fifo.FifoEntry{Id: proto.Uint32(fe.GetId()), PipeId: proto.Uint32(97264), RegfId: proto.Uint32(regf)}
			flags := uint32(syscall.O_RDONLY)
			if fe.GetId() == 4 {
				flags = syscall.O_WRONLY
			}
			img.Entries = append(img.Entries, images.Entry{Message: &fdinfo.FileEntry{Type: fdinfo.FdTypes_REG.Enum(), Id: proto.Uint32(regf),
				Reg: &regfile.RegFileEntry{Id: proto.Uint32(regf), Flags: proto.Uint32(flags), Pos: proto.Uint64(0), Fown: fown,
					Name: proto.String(path), Mode: proto.Uint32(syscall.S_IFIFO | 0o600)}}})
		}
	})
	for _, name := range []string{"fdinfo-2.img", "fdinfo-3.img"} {
		editImage(t, imgs, name, func(img *images.Image) {
			for _, e := range img.Entries {
				if fi := e.Message.(*fdinfo.FdinfoEntry); fi.GetType() == fdinfo.FdTypes_PIPE {
					fi.Type = fdinfo.FdTypes_FIFO.Enum()
				}
			}
		})
	}
	data, err := images.ReadFile(filepath.Join(imgs, "pipes-data.img"))
	if err != nil {
		t.Fatal(err)
	}
	data.Kind = images.KindFifoData
	if err := images.WriteFile(filepath.Join(imgs, "fifo-data.img"), data); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(imgs, "pipes-data.img")); err != nil {
		t.Fatal(err)
	}

	p := planDir(t, imgs)
	if ff := p.Fifos[97264]; len(p.Pipes) != 0 || ff == nil || ff.Path != path || string(ff.Data) != "msg 153\nmsg 154\n" {
		t.Fatalf("pipes %v, FIFOs %v", p.Pipes, p.Fifos)
	}
	_, hosts := startChecked(t, p)
	checkLogContinues(t, "pipe", dir, "out.log", 20)
	checkLogContinues(t, "pipe", dir, "out-parent.log", 10)
	if fl := fdinfoField(t, hosts[0], 4, "flags"); fl&syscall.O_ACCMODE != syscall.O_WRONLY || fl&syscall.O_NONBLOCK != 0 {
		t.Errorf("parent fd 4: flags %#o, want O_WRONLY, blocking", fl)
	}
}

// TestRestoreFileSharedMapping gives the counter fixture two MAP_SHARED
// mappings of a file of its own (no fixture has one): one read-write of an
// O_RDWR open, one read-only of an O_RDONLY open, and checks that both map
// the file itself: a write through the file is seen in the task's memory.
func TestRestoreFileSharedMapping(t *testing.T) {
	needRoot(t)
	installFixture(t, "counter")
	p := loadPlan(t, "counter")
	path := filepath.Join(t.TempDir(), "shared.bin")
	if err := os.WriteFile(path, bytes.Repeat([]byte("0123456789abcdef"), 2*4096/16), 0o600); err != nil {
		t.Fatal(err)
	}
	task := p.Tasks[0]
	const base = 0x300000000000
	for i, fl := range []uint32{syscall.O_RDWR, syscall.O_RDONLY} {
		f := &File{ID: 1000 + uint32(i), Kind: FileRegular, Path: path, Flags: fl, Size: 8192, Mode: syscall.S_IFREG | 0o600, Users: []*Task{task}}
		p.Files[f.ID] = f
		prot := uint32(syscall.PROT_READ)
		if fl == syscall.O_RDWR {
			prot |= syscall.PROT_WRITE
		}
		v := VMA{Start: base + uint64(i)*0x10000, End: base + uint64(i)*0x10000 + 0x2000, Prot: prot, Flags: syscall.MAP_SHARED,
			Status: vmaAreaRegular | vmaFileShared, Pgoff: 0, Kind: VMAFileShared, File: f, FDFlags: fl}
		// keep the VMAs sorted: these go before the stack and vdso
		k := 0
		for k < len(task.Mem.VMAs) && task.Mem.VMAs[k].Start < v.Start {
			k++
		}
		task.Mem.VMAs = append(task.Mem.VMAs[:k], append([]VMA{v}, task.Mem.VMAs[k:]...)...)
	}
	r, err := Start(context.Background(), p, Options{})
	if err != nil {
		t.Fatal(err)
	}
	host := abortAtCleanup(t, r, p)[0]
	checkTask(t, task, host)
	maps, err := os.ReadFile(fmt.Sprintf("/proc/%d/maps", host))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"300000000000-300000002000 rw-s 00000000", "300000010000-300000012000 r--s 00000000"} {
		if !strings.Contains(string(maps), want+" ") || !strings.Contains(string(maps), path) {
			t.Errorf("no %q of %s in\n%s", want, path, maps)
		}
	}
	// a write to the file shows in both mappings: they are the file's pages
	if err := os.WriteFile(path, bytes.Repeat([]byte("changed!"), 8192/8), 0o600); err != nil {
		t.Fatal(err)
	}
	mem, err := os.Open(fmt.Sprintf("/proc/%d/mem", host))
	if err != nil {
		t.Fatal(err)
	}
	defer mem.Close()
	for _, addr := range []int64{base, base + 0x10000 + 4096} {
		b := make([]byte, 8)
		if _, err := mem.ReadAt(b, addr); err != nil || string(b) != "changed!" {
			t.Errorf("task memory at %#x: %q (%v), want the file's new content", addr, b, err)
		}
	}
}

// TestRestoreVariants restores fixtures with state none of them has, put
// into their plans: a shared pending signal, a one-shot interval timer,
// and an fd at a high number with FD_CLOEXEC.
func TestRestoreVariants(t *testing.T) {
	needRoot(t)
	tests := []struct {
		name, fixture string
		tamper        func(p *Plan)
		check         func(t *testing.T, p *Plan, r *Restore)
	}{
		{"shared pending signal", "signals", func(p *Plan) {
			task := p.Tasks[0]
			task.SharedSignals, task.Threads[0].Signals = task.Threads[0].Signals, nil
		}, func(t *testing.T, p *Plan, r *Restore) {
			st := procStatus(t, r.HostPID(1))
			if st["SigPnd"][0] != "0000000000000000" || st["ShdPnd"][0] != "0000000000000800" || st["SigBlk"][0] != "0000000000000800" {
				t.Errorf("SigPnd %s ShdPnd %s SigBlk %s, want SIGUSR2 pending for the task, blocked", st["SigPnd"][0], st["ShdPnd"][0], st["SigBlk"][0])
			}
		}},
		// a one-shot timer (which CRIU drops) instead of the periodic
		// one: one more alarm, 300 ms after the restore, then no more
		{"one-shot real timer", "signals", func(p *Plan) {
			p.Tasks[0].Itimers[ItimerReal] = Itimer{ValueUsec: 300000}
		}, func(t *testing.T, p *Plan, r *Restore) {
			before, err := os.ReadFile(fixture.Path(t, "signals", "files", "out.log"))
			if err != nil {
				t.Fatal(err)
			}
			added := waitLines(t, "/opt/crest-fixtures/signals/out.log", before, 80)
			alarms := func(l string) string { return strings.Fields(l)[1] }
			if a := alarms(added[5]); a != "alarms=78" {
				t.Errorf("50 ms after the restore: %s, want alarms=78 (the dump's)", a)
			}
			if a := alarms(added[79]); a != "alarms=79" {
				t.Errorf("800 ms after the restore: %s, want alarms=79: one alarm", a)
			}
		}},
		// the periodic alarm from a POSIX timer with id 5 instead
		{"POSIX timer", "signals", func(p *Plan) {
			task := p.Tasks[0]
			task.Itimers = [3]Itimer{}
			task.PosixTimers = []PosixTimer{{ID: 5, ClockID: 1, Signo: uint32(syscall.SIGALRM), Notify: sigevSignal,
				IntervalNsec: 20e6, ValueNsec: 20e6}}
		}, func(t *testing.T, p *Plan, r *Restore) {
			before, err := os.ReadFile(fixture.Path(t, "signals", "files", "out.log"))
			if err != nil {
				t.Fatal(err)
			}
			added := waitLines(t, "/opt/crest-fixtures/signals/out.log", before, 30)
			a, _ := strconv.Atoi(strings.TrimPrefix(strings.Fields(added[29])[1], "alarms="))
			if a < 85 {
				t.Errorf("30 ticks after the restore: alarms=%d, want the alarms to go on from 78", a)
			}
			b, err := os.ReadFile(fmt.Sprintf("/proc/%d/timers", r.HostPID(1)))
			if err != nil {
				t.Fatal(err)
			}
			for _, want := range []string{"ID: 5\n", "signal: 14/", "notify: signal/", "ClockID: 1\n"} {
				if !strings.Contains(string(b), want) {
					t.Errorf("/proc/PID/timers lacks %q:\n%s", want, b)
				}
			}
		}},
		{"pipe with a 1 MiB buffer", "pipe", func(p *Plan) { p.Pipes[97264].BufSize = 1 << 20 },
			func(t *testing.T, p *Plan, r *Restore) {
				if size := pipeSize(t, r.HostPID(2), 3); size != 1<<20 {
					t.Errorf("pipe buffer of %d bytes, want 1 MiB", size)
				}
				checkLogContinues(t, "pipe", "/opt/crest-fixtures/pipe", "out.log", 10)
			}},
		// a second open file of the write end (as reopening
		// /proc/PID/fd/N makes one), non-blocking: its own description
		{"second description of a pipe end", "pipe", func(p *Plan) {
			parent, w := p.Tasks[0], p.Tasks[0].FDs[4].File
			f := &File{ID: 1000, Kind: FilePipe, Path: w.Path, Flags: syscall.O_WRONLY | syscall.O_NONBLOCK, Pipe: w.Pipe, Users: []*Task{parent}}
			p.Files[f.ID] = f
			parent.FDs = append(parent.FDs, FD{FD: 9, File: f})
		}, func(t *testing.T, p *Plan, r *Restore) {
			host := r.HostPID(1)
			a, _ := os.Readlink(fmt.Sprintf("/proc/%d/fd/4", host))
			b, _ := os.Readlink(fmt.Sprintf("/proc/%d/fd/9", host))
			if a != b || !strings.HasPrefix(a, "pipe:[") {
				t.Errorf("fd 4 %q, fd 9 %q: want one pipe", a, b)
			}
			f4, f9 := fdinfoField(t, host, 4, "flags"), fdinfoField(t, host, 9, "flags")
			if f4&syscall.O_NONBLOCK != 0 || f9&syscall.O_NONBLOCK == 0 || f9&syscall.O_ACCMODE != syscall.O_WRONLY {
				t.Errorf("fd 4 flags %#o, fd 9 flags %#o: want one blocking, one non-blocking write end", f4, f9)
			}
			checkLogContinues(t, "pipe", "/opt/crest-fixtures/pipe", "out.log", 10)
		}},
		// seals beyond F_SEAL_SEAL, and a read-only second open file
		// of the memfd at its own offset
		{"memfd seals and a read-only description", "files", func(p *Plan) {
			task, m := p.Tasks[0], p.Memfds[1]
			m.Seals = 1 | 2 | 4 // F_SEAL_SEAL|F_SEAL_SHRINK|F_SEAL_GROW
			f := &File{ID: 1000, Kind: FileMemfd, Path: task.FDs[6].File.Path, Flags: syscall.O_RDONLY, Pos: 100, Memfd: m, Users: []*Task{task}}
			p.Files[f.ID] = f
			task.FDs = append(task.FDs, FD{FD: 8, File: f})
		}, func(t *testing.T, p *Plan, r *Restore) {
			host := r.HostPID(1)
			fd, err := syscall.Open(fmt.Sprintf("/proc/%d/fd/8", host), syscall.O_RDONLY, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer syscall.Close(fd)
			if seals, err := fcntl(fd, 1034, 0); err != nil || seals != 7 { // F_GET_SEALS
				t.Errorf("seals %#x (%v), want 0x7", seals, err)
			}
			if pos, fl := fdinfoField(t, host, 8, "pos"), fdinfoField(t, host, 8, "flags"); pos != 100 || fl&syscall.O_ACCMODE != syscall.O_RDONLY {
				t.Errorf("fd 8 at %d flags %#o, want 100, O_RDONLY", pos, fl)
			}
			if pos := fdinfoField(t, host, 6, "pos"); pos != 8192 {
				t.Errorf("fd 6 at %d, want 8192: its own description", pos)
			}
			var st1, st2 syscall.Stat_t
			syscall.Stat(fmt.Sprintf("/proc/%d/fd/6", host), &st1)
			syscall.Stat(fmt.Sprintf("/proc/%d/fd/8", host), &st2)
			if st1.Ino != st2.Ino || st1.Size != 8192 || st1.Mode != syscall.S_IFREG|0o777 {
				t.Errorf("fd 6 inode %d size %d mode %#o, fd 8 inode %d: want one memfd of 8192 bytes, mode 0777", st1.Ino, st1.Size, st1.Mode, st2.Ino)
			}
		}},
		{"fd 500 with FD_CLOEXEC", "counter", func(p *Plan) {
			task := p.Tasks[0]
			task.FDs = append(task.FDs, FD{FD: 500, CloExec: true, File: task.FDs[3].File})
		}, func(t *testing.T, p *Plan, r *Restore) {
			host := r.HostPID(1)
			if l, _ := os.Readlink(fmt.Sprintf("/proc/%d/fd/500", host)); l != p.Tasks[0].FDs[3].File.Path {
				t.Errorf("fd 500 is %q", l)
			}
			if fl := fdinfoField(t, host, 500, "flags"); fl&syscall.O_CLOEXEC == 0 || fl&syscall.O_APPEND == 0 {
				t.Errorf("fd 500 flags %#o, want O_CLOEXEC and out.log's O_APPEND", fl)
			}
			if fl := fdinfoField(t, host, 3, "flags"); fl&syscall.O_CLOEXEC != 0 {
				t.Errorf("fd 3 flags %#o: FD_CLOEXEC is per fd", fl)
			}
			// one description: the same offset, moving together
			for try := 0; ; try++ {
				a, b := fdinfoField(t, host, 3, "pos"), fdinfoField(t, host, 500, "pos")
				if a == b && a > int64(p.Tasks[0].FDs[3].File.Pos) {
					break
				}
				if try == 200 {
					t.Fatalf("fd 3 at %d, fd 500 at %d", a, b)
				}
				time.Sleep(5 * time.Millisecond)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			installFixture(t, tt.fixture)
			p := loadPlan(t, tt.fixture)
			tt.tamper(p)
			r, err := Start(context.Background(), p, Options{})
			if err != nil {
				t.Fatal(err)
			}
			host := abortAtCleanup(t, r, p)[0]
			checkTask(t, p.Tasks[0], host)
			tt.check(t, p, r)
		})
	}
}

// TestFileChecks changes the files a restore reopens after installing the
// counter fixture: the size or mode of the binary is refused with an error
// naming the file (a *FileChangedError), a grown O_WRONLY|O_APPEND log is
// not (logs keep growing, CRIU does not check them either).
func TestFileChecks(t *testing.T) {
	needRoot(t)
	const prog = "/opt/crest-fixtures/counter/prog"
	tests := []struct {
		name   string
		change func(t *testing.T)
		want   string // "" for a restore that succeeds
	}{
		{"binary grown", func(t *testing.T) { appendTo(t, prog, "x") }, prog + ": %d bytes, the image has %d"},
		{"binary setuid", func(t *testing.T) {
			if err := syscall.Chmod(prog, 0o4755); err != nil {
				t.Fatal(err)
			}
		}, prog + ": mode 0104755, the image has 0100755"},
		{"log grown", func(t *testing.T) { appendTo(t, "/opt/crest-fixtures/counter/out.log", "999999\n") }, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			installFixture(t, "counter")
			p := loadPlan(t, "counter")
			tt.change(t)
			r, err := Start(context.Background(), p, Options{})
			if tt.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				if err := r.Abort(); err != nil {
					t.Error(err)
				}
				return
			}
			if err == nil {
				r.Abort()
				t.Fatal("the restore succeeded")
			}
			want := tt.want
			if strings.Contains(want, "%d") {
				size := p.Tasks[0].Mem.Exe.Size
				want = fmt.Sprintf(want, size+1, size)
			}
			var fc *FileChangedError
			if !errors.As(err, &fc) || fc.Path != prog || !strings.Contains(err.Error(), want) {
				t.Errorf("error %q, want a FileChangedError with %q", err, want)
			}
			if left := fixtureProcs(t, "counter"); len(left) > 0 {
				t.Errorf("processes of the attempt still run: %v", left)
			}
		})
	}
}

func appendTo(t *testing.T, path, s string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString(s); err != nil {
		t.Fatal(err)
	}
}

// pipeSize returns the buffer size of the pipe at fd of pid (F_GETPIPE_SZ
// on a new read end of it, which reads nothing).
func pipeSize(t *testing.T, pid, fd int) int {
	t.Helper()
	f, err := syscall.Open(fmt.Sprintf("/proc/%d/fd/%d", pid, fd), syscall.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(f)
	size, err := fcntl(f, fGetpipeSz, 0)
	if err != nil {
		t.Fatal(err)
	}
	return size
}

// TestRestoreAnonShared restores the shmem fixture with its shared memory
// dumped the older way, as VMA_ANON_SHARED (its images rewritten: the
// mappings anonymous and shared, shmid 300, the content in
// pagemap-shmem-300.img as before): one shared anonymous object in both
// tasks, "/dev/zero (deleted)" in their maps as in the original.
func TestRestoreAnonShared(t *testing.T) {
	needRoot(t)
	dir := installFixture(t, "shmem")
	imgs := fixture.CopyImages(t, "shmem")
	for _, name := range []string{"mm-1.img", "mm-2.img"} {
		editImage(t, imgs, name, func(img *images.Image) {
			v := img.Entries[0].Message.(*mm.MmEntry).Vmas[7]
			v.Status = proto.Uint32(vmaAreaRegular | vmaAnonShared)
			v.Shmid = proto.Uint64(300)
			v.Flags = proto.Uint32(syscall.MAP_SHARED | syscall.MAP_ANONYMOUS)
		})
	}
	p := planDir(t, imgs)
	if m := p.Shmems[300]; len(p.Shmems) != 1 || len(p.Memfds) != 0 || m == nil || m.Size != 1<<20 || !m.Anon {
		t.Fatalf("shmems %v, memfds %v", p.Shmems, p.Memfds)
	}
	r, _ := startChecked(t, p)
	checkSharedCounter(t, p, r, dir, "/dev/zero (deleted)")
}
