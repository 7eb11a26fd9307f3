package dump

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/checkpoint-restore/go-criu/v8/crit/images/inventory"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/pstree"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/seccomp"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/stats"

	"github.com/crest-restore/crest/images"
)

// Options say what to dump and where.
type Options struct {
	// Pid is the host pid of the tree's root.
	Pid int
	// Dir is the image directory to create. It may exist if it holds no
	// images (a log file, say); it is replaced as a whole.
	Dir string
	// LeaveRunning lets the tree run on after the dump; by default it is
	// killed, as CRIU does.
	LeaveRunning bool
	// LeaveStopped leaves the tree alive but stopped by SIGSTOP, every
	// task, as criu dump --leave-stopped does; a SIGCONT lets it run on.
	// It wins over LeaveRunning.
	LeaveStopped bool
	// ShellJob dumps a job started from an interactive shell, as criu
	// dump --shell-job does: the root's session and process group may
	// have their leader (the shell) outside the tree, and fds may be on
	// the shell's terminal, a pty slave whose master is outside it
	// (tty.go). A restore with --shell-job puts them on its own.
	ShellJob bool
	// TCPEstablished dumps established TCP connections, as criu dump
	// --tcp-established (tcpest.go); without it they are refused.
	TCPEstablished bool
	// ExtUnixSk dumps unix sockets connected to a socket outside the
	// tree, as criu dump --ext-unix-sk does (sockunix_ext.go): datagram
	// sockets whose peer has a name, which a restore connects to that
	// name again; without it they are refused.
	ExtUnixSk bool
	// GhostLimit is the most a file deleted while open or mapped may
	// have on disk for its contents to be dumped (ghost.go), as criu
	// dump --ghost-limit; 0 is CRIU's default, DefaultGhostLimit.
	GhostLimit int64
	Log        *slog.Logger
	// Observer, if set, receives the dump's stages and steps.
	Observer Observer
}

// Result tells what was dumped.
type Result struct {
	// Tasks counts the tasks of pstree.img, zombies included; Threads
	// their threads, one for each zombie (its pid, the one thread
	// pstree.img lists for it, as a restore counts it too).
	Tasks, Threads int
	// Zombies counts the tasks that were dumped dead (TASK_DEAD).
	Zombies int
	// Pages counts the tasks' own memory pages written; Bytes their size.
	Pages, Bytes uint64
	// SharedPages counts the pages of shared memory and memfds written
	// (pagemap-shmem-*.img), once each however many tasks map them.
	SharedPages uint64
	// Frozen is how long the tree was stopped, Freezing how long freezing
	// it took.
	Freezing, Frozen time.Duration
}

// dumper is the state of one dump.
type dumper struct {
	opts  Options
	log   *slog.Logger
	obs   observe
	tmp   string // the directory being written
	tree  *tree
	files *fileTable
	stats memStats
	ns    *nsIDs
	kobj  map[int]*kobjIDs // by host pid
	lastK [4]uint32        // last vm, files, fs, sighand ids given
	pages uint32
	// seccomp is seccomp.img's entry: the filters of every thread
	seccomp *seccomp.SeccompEntry
	// ownTime: the tree has a time namespace of its own (the root's)
	ownTime bool
	// ownUTS, ownIPC, ownNet: the tree has UTS, IPC, net namespaces of
	// its own (the root's, every task in it: uts.go, netns.go)
	ownUTS, ownIPC, ownNet bool
	// ownMnt: the tree has a mount namespace of its own (the root's,
	// every task in it: mntns.go)
	ownMnt bool
	// userNS is the tree's own user namespace (the root's, every task in
	// it: userns.go), nil when it is crest's
	userNS *userNS
	// cgroups are the cgroup sets of the tree's threads (cgroup.go)
	cgroups *cgroups
}

func (d *dumper) path(name string) string { return filepath.Join(d.tmp, name) }

// Dump checkpoints the tree rooted at opts.Pid into opts.Dir.
func Dump(ctx context.Context, opts Options) (*Result, error) {
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	if opts.Pid <= 0 {
		return nil, fmt.Errorf("dump: bad pid %d", opts.Pid)
	}
	if opts.Pid == os.Getpid() {
		return nil, fmt.Errorf("dump: pid %d is crest itself", opts.Pid)
	}
	st, err := readStatus(procPath(opts.Pid, "status"))
	if err != nil {
		return nil, fmt.Errorf("dump: no process %d: %w", opts.Pid, err)
	}
	if st["Tgid"] != fmt.Sprint(opts.Pid) {
		return nil, fmt.Errorf("dump: %d is a thread of process %s, not a process", opts.Pid, st["Tgid"])
	}
	if err := checkTarget(opts.Dir); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	d := &dumper{opts: opts, log: opts.Log, obs: observe{opts.Observer}, files: newFileTable(), kobj: map[int]*kobjIDs{}}
	if opts.TCPEstablished {
		d.files.tcp = &tcpConns{}
	}
	ns, err := ownNamespaces()
	if err != nil {
		return nil, err
	}
	d.ns = ns
	if _, err := zeroPFN(); err != nil {
		return nil, fmt.Errorf("dump: %w", err)
	}

	// ptrace requests must come from the thread that attached.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()

	t0 := time.Now()
	d.obs.stage(StageFreeze)
	tr, err := freeze(opts.Pid)
	if err != nil {
		return nil, fmt.Errorf("dump: freezing %d: %w", opts.Pid, err)
	}
	d.tree = tr
	t1 := time.Now()
	d.log.Info("frozen", "pid", opts.Pid, "tasks", len(tr.tasks), "took", t1.Sub(t0))

	res, err := d.run(ctx)
	if err != nil {
		// connections in repair mode go on first (tcpest.go)
		if rerr := d.files.tcp.release(true); rerr != nil {
			err = errors.Join(err, rerr)
		}
		d.files.closePTYs() // pty.go
		tr.thaw()
		if d.tmp != "" {
			os.RemoveAll(d.tmp)
		}
		return nil, fmt.Errorf("dump %d: %w", opts.Pid, err)
	}
	d.obs.stage(StageRelease)
	release := boottime()
	// Connections in repair mode go on with a tree that stays, and are
	// closed silently with one that is killed (tcpest.go).
	relErr := d.files.tcp.release(opts.LeaveStopped || opts.LeaveRunning)
	switch {
	case opts.LeaveStopped:
		tr.stop()
		d.obs.step(tr.root, StageRelease, "stop", release)
	case opts.LeaveRunning:
		tr.thaw()
		d.obs.step(tr.root, StageRelease, "thaw", release)
	default:
		tr.kill()
		d.obs.step(tr.root, StageRelease, "kill", release)
	}
	if relErr != nil {
		return nil, fmt.Errorf("dump %d: the images are written, but: %w", opts.Pid, relErr)
	}
	res.Freezing, res.Frozen = t1.Sub(t0), time.Since(t1)
	d.log.Info("dumped", "dir", opts.Dir, "tasks", res.Tasks, "threads", res.Threads, "pages", res.Pages,
		"frozen", res.Frozen, "leave_running", opts.LeaveRunning, "leave_stopped", opts.LeaveStopped)
	return res, nil
}

// checkTarget refuses an images directory that already holds images.
func checkTarget(dir string) error {
	if dir == "" {
		return errors.New("dump: no images directory")
	}
	ents, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("dump: %w", err)
	}
	for _, e := range ents {
		if n := e.Name(); strings.HasSuffix(n, ".img") || strings.HasPrefix(n, "stats-") || e.IsDir() {
			return fmt.Errorf("dump: %s already holds images (%s)", dir, n)
		}
	}
	return nil
}

// run writes the images of the frozen tree and moves them into place.
func (d *dumper) run(ctx context.Context) (*Result, error) {
	parent := filepath.Dir(filepath.Clean(d.opts.Dir))
	tmp, err := os.MkdirTemp(parent, "."+filepath.Base(filepath.Clean(d.opts.Dir))+".crest-")
	if err != nil {
		return nil, err
	}
	d.tmp = tmp
	d.files.ghosts.dir, d.files.ghosts.limit = tmp, d.opts.GhostLimit // ghost.go
	res := &Result{Tasks: len(d.tree.tasks)}
	d.obs.stage(StageCollect)
	if err := d.pidsAndNamespaces(); err != nil {
		return nil, err
	}
	if err := d.collectCgroups(); err != nil { // cgroup.go
		return nil, err
	}
	// before the cores: they hold the index of each thread's filters
	if d.seccomp, err = dumpSeccomp(d.tree); err != nil {
		return nil, err
	}
	d.obs.collected(d.tree)
	d.obs.stage(StageDumpTasks)
	tm := time.Now()
	for _, t := range d.tree.tasks {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		if t.dead != nil {
			if err := d.dumpZombie(t); err != nil {
				return nil, err
			}
			res.Zombies++
		} else if err := d.dumpTask(t); err != nil {
			return nil, err
		}
		res.Threads += len(t.threads)
	}
	d.userOwners() // userns.go: before memfd.img is written
	d.obs.stage(StageMemfds)
	if err := d.dumpMemfds(); err != nil {
		return nil, err
	}
	memdump := time.Since(tm)
	d.obs.stage(StageWriteImages)
	if err := d.writeShared(memdump); err != nil {
		return nil, err
	}
	if err := d.userReadable(); err != nil { // userns.go
		return nil, err
	}
	if err := d.moveIntoPlace(); err != nil {
		return nil, err
	}
	d.tmp = ""
	res.Pages, res.Bytes = d.stats.written, d.stats.written*images.PageSize
	res.SharedPages = d.stats.shWritten
	return res, nil
}

// moveIntoPlace renames the finished directory to the target. A target
// that exists holds no images (checkTarget): its files (a log) move into
// the new directory first.
func (d *dumper) moveIntoPlace() error {
	dir := d.opts.Dir
	ents, err := os.ReadDir(dir)
	switch {
	case errors.Is(err, os.ErrNotExist):
	case err != nil:
		return err
	default:
		for _, e := range ents {
			if err := os.Rename(filepath.Join(dir, e.Name()), d.path(e.Name())); err != nil {
				return err
			}
		}
		if err := os.Remove(dir); err != nil {
			return err
		}
	}
	if err := os.Chmod(d.tmp, 0o755); err != nil {
		return err
	}
	return os.Rename(d.tmp, dir)
}

func (d *dumper) write(name string, k *images.Kind, entries ...images.Entry) error {
	return images.WriteFile(d.path(name), &images.Image{Kind: k, Entries: entries})
}

// pidsAndNamespaces reads every task's pids in the root's pid namespace
// and refuses namespaces crest cannot restore.
func (d *dumper) pidsAndNamespaces() error {
	rootNS, err := nsInode(d.tree.root.pid, "pid")
	if err != nil {
		return err
	}
	// A time namespace of the tree's own, as its pid namespace: the
	// root's, every task in it.
	rootTime, err := nsInode(d.tree.root.pid, "time")
	if err != nil {
		return err
	}
	for _, t := range d.tree.tasks {
		if t.dead != nil {
			// A zombie has left its namespaces, but for its pid's.
			if err := d.zombiePids(t, rootNS); err != nil {
				return err
			}
			continue
		}
		for _, kind := range nsKinds {
			ino, err := nsInode(t.pid, kind)
			if err != nil {
				return fmt.Errorf("%s: %w", t, err)
			}
			if kind == "pid" {
				if ino != rootNS {
					return &UnsupportedError{Task: t.pid, Resource: "pid namespace",
						Why: "nested pid namespaces are not supported (only the root's)"}
				}
				continue
			}
			if kind == "time" && ino == rootTime && rootTime != d.ns.own["time"] {
				d.ownTime = true
				continue
			}
			if kind == "uts" || kind == "ipc" || kind == "net" || kind == "mnt" {
				continue // checkUTSIPC
			}
			if kind == "user" {
				continue // checkUserNS
			}
			if kind == "cgroup" {
				continue // checkCgroupNS (cgroupns.go)
			}
			if ino != d.ns.own[kind] {
				return &UnsupportedError{Task: t.pid, Resource: kind + " namespace",
					Why: "namespaces other than the root's pid namespace are not supported"}
			}
		}
		// the leader's tid in the root's namespace, read at the freeze
		// (suspendSeccomp)
		t.nsPid = t.threads[0].nsTid
	}
	if err := d.checkUserNS(); err != nil { // userns.go
		return err
	}
	return d.checkUTSIPC()
}

// dumpTask writes core, ids, mm, pagemap, pages, fs and fdinfo of t.
func (d *dumper) dumpTask(t *task) error {
	begin := boottime()
	to, err := askTask(t)
	if err != nil {
		return err
	}
	for i, th := range t.threads {
		core, err := threadCore(t, th, to, i == 0)
		if err != nil {
			return err
		}
		// the ids as the tree's user namespace sees them (userns.go)
		d.userCreds(core)
		core.ThreadCore.CgSet = proto.Uint32(d.cgSetOf(th.tid)) // cgroup.go
		if err := d.write(fmt.Sprintf("core-%d.img", th.nsTid), images.KindCore, images.Entry{Message: core}); err != nil {
			return err
		}
	}
	d.obs.step(t, StageDumpTasks, "core", begin)
	begin = boottime()
	ids, newFiles, err := d.kobjIDs(t)
	if err != nil {
		return err
	}
	if err := d.write(fmt.Sprintf("ids-%d.img", t.nsPid), images.KindIDs, images.Entry{Message: ids}); err != nil {
		return err
	}
	d.obs.step(t, StageDumpTasks, "ids", begin)
	begin = boottime()
	// Memory: the exe and mapped files get their ids first, as in CRIU.
	maps, err := readSmaps(t.pid)
	if err != nil {
		return fmt.Errorf("%s: %w", t, err)
	}
	if _, err := d.files.mappedFile(t, procPath(t.pid, "exe"), ""); err != nil {
		return err
	}
	areas, err := d.vmas(t, maps)
	if err != nil {
		return err
	}
	mme, err := d.mmEntry(t, to, areas)
	if err != nil {
		return err
	}
	if err := d.write(fmt.Sprintf("mm-%d.img", t.nsPid), images.KindMM, images.Entry{Message: mme}); err != nil {
		return err
	}
	d.obs.step(t, StageDumpTasks, "memory map", begin)
	begin = boottime()
	d.pages++
	pm, err := d.dumpPages(t, areas, d.pages)
	if err != nil {
		return err
	}
	if err := d.write(fmt.Sprintf("pagemap-%d.img", t.nsPid), images.KindPagemap, pm...); err != nil {
		return err
	}
	d.obs.step(t, StageDumpTasks, "pages", begin)
	begin = boottime()
	if newFiles {
		fds, err := d.files.fdTable(t)
		if err != nil {
			return err
		}
		if err := d.write(fmt.Sprintf("fdinfo-%d.img", ids.GetFilesId()), images.KindFdinfo, fds...); err != nil {
			return err
		}
	}
	fse, err := d.files.fsEntry(t)
	if err != nil {
		return err
	}
	if err := d.write(fmt.Sprintf("fs-%d.img", t.nsPid), images.KindFS, images.Entry{Message: fse}); err != nil {
		return err
	}
	d.obs.step(t, StageDumpTasks, "files", begin)
	return nil
}

// writeShared writes the images of the whole tree.
func (d *dumper) writeShared(memdump time.Duration) error {
	var ps []images.Entry
	for _, t := range d.tree.tasks {
		st, err := readStatus(procPath(t.pid, "status"))
		if err != nil {
			return fmt.Errorf("%s: %w", t, err)
		}
		pgid, err1 := st.last("NSpgid")
		sid, err2 := st.last("NSsid")
		if err := errors.Join(err1, err2); err != nil {
			return fmt.Errorf("%s: status: %w", t, err)
		}
		if t.dead != nil && sid == 0 {
			// as CRIU's dump_zombies says
			return &UnsupportedError{Task: int(t.nsPid), Resource: "session",
				Why: "the session leader of this zombie is outside its pid namespace"}
		}
		if err := d.checkLeaders(t, uint32(pgid), uint32(sid)); err != nil { // tty.go
			return err
		}
		e := &pstree.PstreeEntry{Pid: proto.Uint32(t.nsPid), Ppid: proto.Uint32(0), Pgid: proto.Uint32(uint32(pgid)),
			Sid: proto.Uint32(uint32(sid))}
		if t.parent != nil {
			e.Ppid = proto.Uint32(t.parent.nsPid)
		}
		for _, th := range t.threads {
			e.Threads = append(e.Threads, th.nsTid)
		}
		ps = append(ps, images.Entry{Message: e})
	}
	if err := d.write("pstree.img", images.KindPstree, ps...); err != nil {
		return err
	}
	if err := d.mntFileMounts(); err != nil { // mntns.go
		return err
	}
	if err := d.externalUnixSockets(); err != nil { // sockunix_ext.go
		return err
	}
	if err := d.orderUnixSockets(); err != nil { // sockunix_order.go
		return err
	}
	var files []images.Entry
	for _, f := range d.files.entries {
		files = append(files, images.Entry{Message: f})
	}
	if err := d.write("files.img", images.KindFiles, files...); err != nil {
		return err
	}
	if err := d.files.ghosts.writeRemaps(d); err != nil { // ghost.go
		return err
	}
	if err := d.checkTTYs(); err != nil { // tty.go
		return err
	}
	if err := d.writeTTYs(); err != nil {
		return err
	}
	if len(d.files.data) > 0 {
		if err := d.write("pipes-data.img", images.KindPipesData, d.files.data...); err != nil {
			return err
		}
	}
	if len(d.files.fifos) > 0 {
		if err := d.write("fifo-data.img", images.KindFifoData, d.files.fifos...); err != nil {
			return err
		}
	}
	if len(d.files.queues) > 0 {
		if err := d.write("sk-queues.img", images.KindSkQueues, d.files.queues...); err != nil {
			return err
		}
	}
	if err := d.files.tcp.finish(d); err != nil { // tcp-stream-INO.img
		return err
	}
	for _, t := range d.tree.tasks {
		if t.dead != nil {
			continue
		}
		if b, err := os.ReadFile(procPath(t.pid, "timers")); err == nil && len(b) > 0 {
			return &UnsupportedError{Task: int(t.nsPid), Resource: "posix timers", Why: "posix timers are not supported"}
		}
	}
	if err := d.write("seccomp.img", images.KindSeccomp, images.Entry{Message: d.seccomp}); err != nil {
		return err
	}
	if err := d.writeClocks(); err != nil {
		return err
	}
	if err := d.writeNamespaces(); err != nil {
		return err
	}
	if err := d.writeMnt(); err != nil { // mntns.go
		return err
	}
	if err := d.writeCgroups(); err != nil { // cgroup.go
		return err
	}
	inv := &inventory.InventoryEntry{
		ImgVersion:        proto.Uint32(2),
		FdinfoPerId:       proto.Bool(true),
		RootIds:           d.rootIDs(),
		NsPerId:           proto.Bool(true),
		RootCgSet:         proto.Uint32(1),
		Lsmtype:           inventory.Lsmtype_NO_LSM.Enum(),
		NetworkLockMethod: proto.Uint32(d.files.tcp.networkLockMethod()),
		PluginsEntry:      &inventory.PluginsEntry{},
		DumpCriuRunId:     proto.String(runID()),
	}
	if err := d.write("inventory.img", images.KindInventory, images.Entry{Message: inv}); err != nil {
		return err
	}
	st := &stats.StatsEntry{Dump: &stats.DumpStatsEntry{
		FreezingTime: proto.Uint32(0), FrozenTime: proto.Uint32(0),
		MemdumpTime: proto.Uint32(uint32(memdump.Microseconds())), MemwriteTime: proto.Uint32(0),
		PagesScanned: proto.Uint64(d.stats.scanned), PagesSkippedParent: proto.Uint64(0),
		PagesWritten: proto.Uint64(d.stats.written), PagesLazy: proto.Uint64(d.stats.lazy),
		// CRIU's page pipes are its way of moving pages; crest counts
		// its runs as buffers of one pipe.
		IrmapResolve: proto.Uint32(0), PagePipes: proto.Uint64(1), PagePipeBufs: proto.Uint64(d.stats.runs),
		ShpagesScanned: proto.Uint64(d.stats.shWritten), ShpagesSkippedParent: proto.Uint64(0),
		ShpagesWritten: proto.Uint64(d.stats.shWritten),
	}}
	return d.write("stats-dump", images.KindStats, images.Entry{Message: st})
}

// inTree reports whether pid (in the root's pid namespace) is a task of
// the dumped tree.
func (d *dumper) inTree(pid uint32) bool {
	for _, t := range d.tree.tasks {
		if t.nsPid == pid {
			return true
		}
	}
	return false
}

// runID is a random UUID, as CRIU's dump_criu_run_id.
func runID() string {
	var b [16]byte
	rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}
