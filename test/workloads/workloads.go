// Package workloads builds the small C programs of test/workloads/src with
// gcc and starts them the way the CRIU 4.2 fixtures were started: as pid 1
// of a new pid namespace, session leader, in a directory of their own, with
// fds 0-2 on /dev/null and nothing else open.
//
// Programs are built once per source and flags into the user cache
// directory, so repeated test runs do not pay for gcc.
package workloads

import (
	"bytes"
	"crypto/sha256"
	"embed"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/crest-restore/crest/internal/procfs"
)

//go:embed src/*.c src/*.h src/*.go.txt
var sources embed.FS

// headers are src's headers (workload.h), by file name: every build has
// them beside its source, and they count in its hash.
func headers() (map[string][]byte, error) {
	ents, err := sources.ReadDir("src")
	if err != nil {
		return nil, err
	}
	out := map[string][]byte{}
	for _, e := range ents {
		if !strings.HasSuffix(e.Name(), ".h") {
			continue
		}
		b, err := sources.ReadFile("src/" + e.Name())
		if err != nil {
			return nil, err
		}
		out[e.Name()] = b
	}
	return out, nil
}

// Program is a workload: a C source in src/ and the gcc line that builds it.
type Program struct {
	Name  string   // the source, src/NAME.c
	Flags []string // gcc flags besides -o and the source
	// TimeNS starts it in a time namespace of its own too (launch -t:
	// monotonic 100000 s and boottime 200000 s ahead of the host's).
	TimeNS bool
	// UTSIPC starts it in UTS and IPC namespaces of its own too
	// (launch -n).
	UTSIPC bool
	// NetNS starts it in a net namespace of its own too (launch -N).
	NetNS bool
	// MntNS starts it in a mount namespace of its own too, every mount
	// private (launch -m).
	MntNS bool
	// UserNS starts it in a user namespace of its own too, which owns the
	// others, with maps of several extents (launch -U).
	UserNS bool
	// Go: the source is src/NAME.go.txt, a Go program built with the go
	// command (static, CGO_ENABLED=0); Flags are not used.
	Go bool
}

// Programs are the workloads crest's tests start, by name.
var Programs = map[string]Program{
	"launch":  {Name: "launch", Flags: []string{"-static", "-O2"}},
	"counter": {Name: "counter", Flags: []string{"-static", "-O2"}},
	"tree":    {Name: "tree", Flags: []string{"-static", "-O2"}},
	"threads": {Name: "threads", Flags: []string{"-static", "-O2", "-pthread"}},
	"pipe":    {Name: "pipe", Flags: []string{"-static", "-O2"}},
	"shmem":   {Name: "shmem", Flags: []string{"-static", "-O2"}},
	"files":   {Name: "files", Flags: []string{"-static", "-O2"}},
	"signals": {Name: "signals", Flags: []string{"-static", "-O2"}},
	// seccomp has children with seccomp filters (per thread, and with
	// TSYNC) and one in strict mode.
	"seccomp": {Name: "seccomp", Flags: []string{"-static", "-O2", "-pthread"}},
	// procattrs has personality, oom_score_adj, a parent-death signal,
	// per-thread nice and policy, and a child subreaper.
	"procattrs": {Name: "procattrs", Flags: []string{"-static", "-O2", "-pthread"}},
	// clocks runs in a time namespace of its own and checks that its
	// clocks go on.
	"clocks": {Name: "clocks", Flags: []string{"-static", "-O2"}, TimeNS: true},
	// nsuts runs in UTS and IPC namespaces of its own, with a hostname,
	// IPC sysctls and SysV shared memory, semaphores and messages that
	// it checks every tick (the segments' contents when asked).
	"nsuts": {Name: "nsuts", Flags: []string{"-static", "-O2"}, UTSIPC: true},
	// netns runs in a net namespace of its own: lo up with another mtu,
	// an address, routes, a rule, an iptables rule, sysctls, TCP, UDP
	// and unix sockets, checked every tick (a new connection and the
	// unix queue's length when asked).
	"netns": {Name: "netns", Flags: []string{"-static", "-O2"}, NetNS: true},
	// netlink runs in a net namespace of its own with netlink sockets
	// (route, generic, uevent, sock_diag): bound by the kernel and by
	// itself, listening to groups, connected, never bound; each is
	// checked (port, groups, options) every tick, and used every 25th,
	// when the route listener must hear of the address the tick adds to
	// lo and removes (socket diag checks the states then).
	"netlink": {Name: "netlink", Flags: []string{"-static", "-O2"}, NetNS: true},
	// packetsk runs in a net namespace of its own, lo up, with packet
	// sockets (raw and datagram, bound to lo or not, with options,
	// memberships and a fanout group): each is checked (binding,
	// options) every tick, and a frame sent on lo must reach them.
	"packetsk": {Name: "packetsk", Flags: []string{"-static", "-O2"}, NetNS: true},
	// netveth runs in a net namespace of its own and talks over UDP,
	// every tick, through a veth that the test makes from outside, to
	// its outside end; it checks the device (ifindex, mtu, mac, address,
	// route) every tick.
	"netveth": {Name: "netveth", Flags: []string{"-static", "-O2"}, NetNS: true},
	// mntns runs in a mount namespace of its own: its own proc, a
	// tmpfs with files and a tmpfs in it, a read-only bind mount of a
	// directory beside it, a bind mount of the tmpfs, files open on
	// them; it checks their shape in mountinfo and their files every
	// tick.
	"mntns": {Name: "mntns", Flags: []string{"-static", "-O2"}, MntNS: true},
	// mntghost runs in a mount namespace of its own with files deleted
	// while open (ghost files) on its tmpfs and on a bind mount of a
	// directory beside it, one of them O_TMPFILE; it checks them every
	// tick. No libc: CRIU's images of it are test data.
	"mntghost": {Name: "mntghost", Flags: []string{"-static", "-nostdlib", "-ffreestanding", "-O2", "-fno-stack-protector", "-fcf-protection=none"}, MntNS: true},
	// mntprop runs in a mount namespace of its own whose mounts
	// propagate: a peer group of a tmpfs and two binds of it (one of a
	// subdirectory), a slave of it and a shared slave, a tmpfs mounted
	// in the group (its copies peers and slaves) and an unbindable
	// tmpfs; it checks the shape of its mountinfo every tick, and that a
	// mount in the group reaches the peers and slaves and one in the
	// slave stays there. No libc: CRIU's images of it are test data.
	"mntprop": {Name: "mntprop", Flags: []string{"-static", "-nostdlib", "-ffreestanding", "-O2", "-fno-stack-protector", "-fcf-protection=none"}, MntNS: true},
	// mntfiles runs in a mount namespace of its own with a FIFO (data in
	// it), a unix stream listener with a client connected by its path and
	// a datagram socket bound by a relative name, all on its tmpfs, and a
	// pty of the devpts instance it mounts at /dev/pts; it checks them
	// (and the paths' types and modes) every tick. No libc: CRIU's images
	// of it are test data.
	"mntfiles": {Name: "mntfiles", Flags: []string{"-static", "-nostdlib", "-ffreestanding", "-O2", "-fno-stack-protector", "-fcf-protection=none"}, MntNS: true},
	// mntfilesnet is mntfiles in a net namespace of its own too: its
	// unix sockets are the net namespace's.
	"mntfilesnet": {Name: "mntfiles", Flags: []string{"-static", "-nostdlib", "-ffreestanding", "-O2", "-fno-stack-protector", "-fcf-protection=none"}, MntNS: true, NetNS: true},
	// stopped has two children stopped by SIGSTOP and SIGTSTP.
	"stopped": {Name: "stopped", Flags: []string{"-static", "-O2", "-pthread"}},
	// zombie has two zombie children (exit status 7, killed by SIGTERM)
	// that its init reaps once a file "reap" appears.
	"zombie": {Name: "zombie", Flags: []string{"-static", "-O2"}},
	// epoll waits on an epoll of a timerfd, an eventfd and a pipe.
	"epoll": {Name: "epoll", Flags: []string{"-static", "-O2"}},
	// fdkinds has an eventfd, a signalfd and a timerfd, in use.
	"fdkinds": {Name: "fdkinds", Flags: []string{"-static", "-O2"}},
	// inotify watches a directory and a file (wds 1 and 3, 2 removed)
	// and checks their events and wds every tick.
	"inotify": {Name: "inotify", Flags: []string{"-static", "-O2"}},
	// inetsk has TCP listeners (IPv4 and IPv6) and UDP sockets, bound
	// and connected, in use every tick.
	"inetsk": {Name: "inetsk", Flags: []string{"-static", "-O2"}},
	// tcpest has established TCP connections (IPv4 and IPv6, over
	// loopback) between its init and its child, with data queued both
	// ways, unsent data too, checked byte by byte every tick.
	"tcpest": {Name: "tcpest", Flags: []string{"-static", "-O2"}},
	// tcphalf has half-closed TCP connections over loopback between
	// its init and its child: FIN_WAIT1, FIN_WAIT2, CLOSE_WAIT,
	// LAST_ACK and CLOSING, each end checking its state every tick.
	"tcphalf": {Name: "tcphalf", Flags: []string{"-static", "-O2"}},
	// unixsk has unix stream, datagram and seqpacket sockets, paired,
	// listening, accepted, bound to paths and abstract names, with data
	// queued in each.
	"unixsk": {Name: "unixsk", Flags: []string{"-static", "-O2"}},
	// extunix sends to a listener outside its tree, as syslog(3) does (freestanding: a few pages).
	"extunix": {Name: "extunix", Flags: []string{"-static", "-nostdlib", "-ffreestanding", "-fno-stack-protector", "-fno-pie", "-no-pie", "-O2"}},
	// memfd has a memfd whose size is not a page multiple.
	"memfd": {Name: "memfd", Flags: []string{"-static", "-O2"}},
	// dynamic is counter linked dynamically (libc.so.6 and ld-linux mapped).
	"dynamic": {Name: "counter", Flags: []string{"-O2"}},
	// sleepers spend their time in poll, futex, nanosleep and absolute
	// clock_nanosleep calls with timeouts, which a dump interrupts: none
	// may fail with EINTR after a restore.
	"sleepers": {Name: "sleepers", Flags: []string{"-static", "-O2"}},
	// spin computes outside syscalls: the dumper must write its own syscall.
	"spin": {Name: "spin", Flags: []string{"-static", "-O2"}},
	// vecregs keeps patterns in its AVX-512 registers and checks them
	// every tick: built without AVX, so that the compiler's code leaves
	// all but the low 128 bits of xmm8-15 alone.
	"vecregs": {Name: "vecregs", Flags: []string{"-static", "-nostdlib", "-ffreestanding", "-O2", "-mno-avx", "-fno-stack-protector", "-fcf-protection=none"}},
	// amx holds a pattern in AMX tile tmm0 (crest dump refuses it:
	// CRIU's images have no field for tiles).
	"amx": {Name: "amx", Flags: []string{"-static", "-nostdlib", "-ffreestanding", "-O2", "-fno-stack-protector", "-fcf-protection=none"}},
	// big holds 1 GiB of memory, for dump benchmarks.
	"big": {Name: "big", Flags: []string{"-static", "-O2"}},
	// sock holds a netlink socket never bound, in crest's net namespace
	// (dump/socknetlink_test.go compares its images with CRIU's).
	"sock": {Name: "sock", Flags: []string{"-static", "-O2"}},
	// lock holds an flock()ed file: crest dump must refuse it.
	"lock": {Name: "lock", Flags: []string{"-static", "-O2"}},
	// gocounter is a Go program: threads, epoll, eventfd, timers.
	"gocounter": {Name: "gocounter", Go: true},
	// ttyjob is an interactive job on its terminal (fds 0-2), which it
	// checks every tick; ttyshell starts it on a pty as a shell with
	// job control does (dump/tty_test.go).
	"ttyjob":   {Name: "ttyjob", Flags: []string{"-static", "-O2"}},
	"ttyshell": {Name: "ttyshell", Flags: []string{"-static", "-O2"}},
	"cgroups":  {Name: "cgroups", Flags: []string{"-static", "-O2", "-pthread"}}, // tasks holding memory, one with 2 threads, for the cgroup tests
	// cgroupns reports, every tick, its tasks' and its thread's cgroups
	// as they see them (cg-ROLE.txt), for the cgroup namespace tests,
	// which start it in one (unshare -C); "nested": the child unshares
	// one of its own.
	"cgroupns": {Name: "cgroupns", Flags: []string{"-static", "-O2", "-pthread"}},
	// ptypair runs a child on a pty whose both ends are in the tree:
	// the child's controlling terminal, a foreground group, packet mode,
	// a locked pty, data queued both ways, all checked every tick.
	"ptypair": {Name: "ptypair", Flags: []string{"-static", "-O2"}},
	// ghost has files deleted while open or mapped (CRIU's ghost
	// files): a /dev/shm page its init and child share (a semaphore
	// and counters), a private mapping, a file with holes and an
	// O_TMPFILE file, checked every tick.
	"ghost": {Name: "ghost", Flags: []string{"-static", "-O2", "-pthread"}},
	// userns runs in user, UTS, IPC, net and mount namespaces of its own
	// (/, /proc and a proc of its own over it), its init and child with
	// ids of their own, checking the maps, ids, groups and capabilities
	// every tick, and objects owned by ids inside (a tmpfs's files, SysV
	// objects, ping_group_range, owners for SIGIO, a memfd).
	"userns": {Name: "userns", Flags: []string{"-static", "-O2"}, UserNS: true, UTSIPC: true, NetNS: true, MntNS: true},
	// userns2: ghost files made by ids inside a user namespace, in
	// crest's mount namespace.
	"userns2": {Name: "userns2", Flags: []string{"-static", "-O2"}, UserNS: true},
	// usernsclocks is clocks in a user namespace of its own, which owns
	// its time and mount namespaces (launch -U -t -m: CRIU dumps a tree
	// in a user namespace only with a mount namespace of its own).
	"usernsclocks": {Name: "clocks", Flags: []string{"-static", "-O2"}, UserNS: true, TimeNS: true, MntNS: true},
	// procfds: an init and its child holding files of the tree's own
	// /proc (it mounts one), checked every tick.
	"procfds": {Name: "procfds", Flags: []string{"-static", "-O2"}},
}

// Build compiles the workload name (or the C file src with flags, see
// BuildSource) and returns the path of the binary.
func Build(t testing.TB, name string) string {
	t.Helper()
	p, ok := Programs[name]
	if !ok {
		t.Fatalf("workloads: no program %q", name)
	}
	if p.Go {
		bin, err := buildGo(name, p.Name)
		if err != nil {
			t.Fatal(err)
		}
		return bin
	}
	src, err := sources.ReadFile("src/" + p.Name + ".c")
	if err != nil {
		t.Fatalf("workloads: %v", err)
	}
	bin, err := BuildSource(name, p.Name+".c", src, p.Flags)
	if err != nil {
		t.Fatal(err)
	}
	return bin
}

// BuildSource compiles the C source src, as a file named file (gcc puts the
// name into the binary's symbol table), with gcc and flags into the build
// cache and returns the binary's path. The binary is named name in a
// directory named for the hash of the source, its file name and flags.
func BuildSource(name, file string, src []byte, flags []string) (string, error) {
	hdrs, err := headers()
	if err != nil {
		return "", fmt.Errorf("workloads: %w", err)
	}
	hnames := make([]string, 0, len(hdrs))
	for n := range hdrs {
		hnames = append(hnames, n)
	}
	sort.Strings(hnames)
	h := sha256.New()
	h.Write(src)
	h.Write([]byte("\x00" + file + "\x00"))
	h.Write([]byte(strings.Join(flags, "\x00")))
	for _, n := range hnames {
		h.Write([]byte("\x00" + n + "\x00"))
		h.Write(hdrs[n])
	}
	sum := hex.EncodeToString(h.Sum(nil))[:16]
	dir := filepath.Join(cacheDir(), "crest", "workloads", name+"-"+sum)
	bin := filepath.Join(dir, name)
	if _, err := os.Stat(bin); err == nil {
		return bin, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("workloads: %w", err)
	}
	// Build in a private temporary directory and rename into place, so
	// that test binaries building the same program at once never see a
	// half-written file.
	tmp, err := os.MkdirTemp(dir, ".build-")
	if err != nil {
		return "", fmt.Errorf("workloads: %w", err)
	}
	defer os.RemoveAll(tmp)
	cfile := filepath.Join(tmp, file)
	if err := os.WriteFile(cfile, src, 0o644); err != nil {
		return "", fmt.Errorf("workloads: %w", err)
	}
	for n, b := range hdrs {
		if err := os.WriteFile(filepath.Join(tmp, n), b, 0o644); err != nil {
			return "", fmt.Errorf("workloads: %w", err)
		}
	}
	out := filepath.Join(tmp, name)
	args := append(append([]string{}, flags...), "-o", out, cfile)
	if msg, err := exec.Command("gcc", args...).CombinedOutput(); err != nil {
		return "", fmt.Errorf("workloads: gcc %s: %w\n%s", strings.Join(args, " "), err, msg)
	}
	if err := os.Rename(out, bin); err != nil {
		return "", fmt.Errorf("workloads: %w", err)
	}
	return bin, nil
}

// Process is a started workload: the init of its own pid namespace.
type Process struct {
	// Pid is the host pid of the namespace init.
	Pid int
	// Dir is the workload's working directory (its logs are there).
	Dir string
	// start is the init's start time (/proc/PID/stat field 22) when it
	// was started or adopted, 0 if unknown: Kill signals the pid only
	// while it is still that process. Pids are few here (pid_max
	// 32768) and many test binaries start processes at once: a pid
	// freed by a dump is soon another binary's process.
	start uint64
}

// Adopt is the workload whose init is pid, with working directory dir,
// as it is now (Kill ends it, and no process that takes its pid later).
func Adopt(pid int, dir string) *Process {
	return &Process{Pid: pid, Dir: dir, start: startTime(pid)}
}

// startTime is the start time of process pid, 0 when it is gone.
func startTime(pid int) uint64 {
	st, err := procfs.ReadStat(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	return st.Field(22)
}

// Start builds workload name and starts it in a new temporary directory.
// The tree is killed when the test ends.
func Start(t testing.TB, name string) *Process {
	t.Helper()
	var opts []string
	if Programs[name].TimeNS {
		opts = append(opts, "-t")
	}
	if Programs[name].UTSIPC {
		opts = append(opts, "-n")
	}
	if Programs[name].NetNS {
		opts = append(opts, "-N")
	}
	if Programs[name].MntNS {
		opts = append(opts, "-m")
	}
	if Programs[name].UserNS {
		opts = append(opts, "-U")
	}
	return startIn(t, Build(t, name), t.TempDir(), opts...)
}

// StartIn starts the binary prog with working directory dir as pid 1 of a
// new pid namespace (see launch.c), and kills the tree when the test ends:
// SIGKILL to the init ends the whole namespace. It waits until /proc has
// forgotten the pid, since the reaper of orphans here may be slow.
func StartIn(t testing.TB, prog, dir string) *Process {
	t.Helper()
	return startIn(t, prog, dir)
}

func startIn(t testing.TB, prog, dir string, opts ...string) *Process {
	t.Helper()
	launch := Build(t, "launch")
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(launch, append(opts, dir, prog)...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("launch %s in %s: %v\n%s", prog, dir, err, stderr.Bytes())
	}
	pid, err := strconv.Atoi(strings.TrimSpace(stdout.String()))
	if err != nil {
		t.Fatalf("launch %s: bad pid %q", prog, stdout.String())
	}
	p := Adopt(pid, dir)
	t.Cleanup(func() { p.Kill(t) })
	return p
}

// Kill ends the tree (if it still runs) and waits until it is gone. A
// process that took the pid since (its start time differs from the one
// Adopt saw) is not ours: left alone.
func (p *Process) Kill(t testing.TB) {
	t.Helper()
	fd, err := unix.PidfdOpen(p.Pid, 0)
	if errors.Is(err, unix.ESRCH) {
		return
	}
	if err != nil {
		t.Errorf("pidfd_open %d: %v", p.Pid, err)
		return
	}
	defer unix.Close(fd)
	// the pidfd holds the process the start time is read of
	if p.start != 0 && startTime(p.Pid) != p.start {
		return
	}
	if err := unix.PidfdSendSignal(fd, unix.SIGKILL, nil, 0); err != nil && !errors.Is(err, unix.ESRCH) {
		t.Errorf("kill %d: %v", p.Pid, err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		st := startTime(p.Pid)
		if st == 0 || p.start != 0 && st != p.start {
			return // reaped (and maybe taken by another process)
		}
		if p.start != 0 {
			// a test that is the tree's subreaper reaps it here
			unix.Wait4(p.Pid, nil, unix.WNOHANG|unix.WALL, nil)
		}
		if time.Now().After(deadline) {
			t.Errorf("workload %d still in /proc 20s after SIGKILL", p.Pid)
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// WaitGone waits until /proc/PID is gone (the process was reaped) and
// reports whether that happened within timeout.
func WaitGone(pid int, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for {
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); errors.Is(err, os.ErrNotExist) {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Alive reports whether pid exists and is not a zombie.
func Alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	i := bytes.LastIndexByte(b, ')')
	return i > 0 && len(b) > i+2 && b[i+2] != 'Z' && b[i+2] != 'X'
}

// WaitFile waits until the file name in the workload's directory exists
// and is not empty, and returns its content.
func (p *Process) WaitFile(t testing.TB, name string) []byte {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		b, err := os.ReadFile(filepath.Join(p.Dir, name))
		if err == nil && len(b) > 0 && b[len(b)-1] == '\n' {
			return b
		}
		if time.Now().After(deadline) {
			t.Fatalf("workload %d: %s not written within 10s", p.Pid, name)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Lines returns the lines of the workload's file name.
func (p *Process) Lines(t testing.TB, name string) []string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(p.Dir, name))
	if err != nil {
		t.Fatal(err)
	}
	return strings.Split(strings.TrimRight(string(b), "\n"), "\n")
}

// DenyFilter is the seccomp filter that seccomp.c's deny(nr, errno)
// installs: syscall nr fails with errno, every other call is allowed (and
// every call of another architecture). It is struct sock_filter[] as the
// kernel takes and PTRACE_SECCOMP_GET_FILTER returns it, for tests of the
// filters a dump or a restore carries.
func DenyFilter(nr, errno uint32) []byte {
	const (
		ldAbs      = 0x20 // BPF_LD | BPF_W | BPF_ABS
		jeq        = 0x15 // BPF_JMP | BPF_JEQ | BPF_K
		ret        = 0x06 // BPF_RET | BPF_K
		archX86_64 = 0xc000003e
		retAllow   = 0x7fff0000
		retErrno   = 0x00050000
		offArch    = 4 // offsetof(struct seccomp_data, arch)
		offNr      = 0
	)
	insns := [][4]uint32{
		{ldAbs, 0, 0, offArch},
		{jeq, 1, 0, archX86_64},
		{ret, 0, 0, retAllow},
		{ldAbs, 0, 0, offNr},
		{jeq, 0, 1, nr},
		{ret, 0, 0, retErrno | errno},
		{ret, 0, 0, retAllow},
	}
	var b []byte
	for _, in := range insns {
		b = binary.LittleEndian.AppendUint16(b, uint16(in[0]))
		b = append(b, byte(in[1]), byte(in[2]))
		b = binary.LittleEndian.AppendUint32(b, in[3])
	}
	return b
}

// buildGo builds the Go program src/NAME.go.txt as module NAME into the
// build cache, as BuildSource does for C, and returns the binary's path.
func buildGo(name, src string) (string, error) {
	code, err := sources.ReadFile("src/" + src + ".go.txt")
	if err != nil {
		return "", fmt.Errorf("workloads: %w", err)
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		goBin = "/usr/local/go/bin/go"
	}
	ver, err := exec.Command(goBin, "env", "GOVERSION").Output()
	if err != nil {
		return "", fmt.Errorf("workloads: %s env GOVERSION: %w", goBin, err)
	}
	h := sha256.New()
	h.Write(code)
	h.Write(ver)
	dir := filepath.Join(cacheDir(), "crest", "workloads", name+"-"+hex.EncodeToString(h.Sum(nil))[:16])
	bin := filepath.Join(dir, name)
	if _, err := os.Stat(bin); err == nil {
		return bin, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("workloads: %w", err)
	}
	tmp, err := os.MkdirTemp(dir, ".build-")
	if err != nil {
		return "", fmt.Errorf("workloads: %w", err)
	}
	defer os.RemoveAll(tmp)
	if err := os.WriteFile(filepath.Join(tmp, "main.go"), code, 0o644); err != nil {
		return "", fmt.Errorf("workloads: %w", err)
	}
	if err := os.WriteFile(filepath.Join(tmp, "go.mod"), []byte("module "+name+"\n\ngo 1.26\n"), 0o644); err != nil {
		return "", fmt.Errorf("workloads: %w", err)
	}
	cmd := exec.Command(goBin, "build", "-o", filepath.Join(tmp, name), ".")
	cmd.Dir = tmp
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOFLAGS=", "GOWORK=off")
	if msg, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("workloads: go build %s: %w\n%s", src, err, msg)
	}
	if err := os.Rename(filepath.Join(tmp, name), bin); err != nil {
		return "", fmt.Errorf("workloads: %w", err)
	}
	return bin, nil
}

// cacheDir is where built workloads are kept: the user cache directory,
// else the temporary one.
func cacheDir() string {
	if cache, err := os.UserCacheDir(); err == nil {
		return cache
	}
	return os.TempDir()
}
