package bpf

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strconv"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// Pinning keeps a monitor's loaded programs and maps in a BPF file system
// between runs, so that the next Open skips the kernel's BTF and the
// verifier: it opens the pins and attaches.
//
// Programs and maps are one unit (the programs hold the maps), and two
// monitors must not share a ring buffer or a tracked map: a pinned unit is
// a slot, a directory under <PinDir>/<object hash>-<ring size>/ that an
// open Monitor holds with an exclusive flock until Close. A monitor that
// finds every slot busy loads into a new one. The hash names the build of
// the programs, so a new crest never runs an old crest's pins.
//
// A slot reused is reset before its programs are attached: the tracked
// map is emptied, the counters zeroed, the config rewritten, and records
// an owner that died left in the ring buffer are read and discarded.

// maxPinSlots bounds the slots (concurrent pinned monitors) of one build.
const maxPinSlots = 64

// bpffsMagic is BPF_FS_MAGIC.
const bpffsMagic = 0xcafe4a11

// OnBPFFS returns nil when dir is on a BPF file system, where pins can
// be kept, else an error saying why not.
func OnBPFFS(dir string) error {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return fmt.Errorf("bpf: pin directory %s: %w", dir, err)
	}
	if uint32(st.Type) != bpffsMagic {
		return fmt.Errorf("bpf: pin directory %s: not on a BPF file system (mount -t bpf bpf %s)", dir, dir)
	}
	return nil
}

// pinSlot is a claimed slot: its directory and the locked handle of it.
type pinSlot struct {
	dir  string
	lock *os.File
}

func (s *pinSlot) release() {
	if s != nil {
		s.lock.Close()
	}
}

// pinKey names this build of the programs with this ring buffer size.
func pinKey(ringSize int) string {
	sum := sha256.Sum256(_MonitorBytes)
	return fmt.Sprintf("%x-%d", sum[:8], ringSize)
}

// claimSlot locks the first free slot under dir for this build and ring
// size, making it if needed.
func claimSlot(dir string, ringSize int) (*pinSlot, error) {
	if err := OnBPFFS(dir); err != nil {
		return nil, err
	}
	base := filepath.Join(dir, pinKey(ringSize))
	if err := os.Mkdir(base, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
		return nil, fmt.Errorf("bpf: pin directory: %w", err)
	}
	for i := range maxPinSlots {
		d := filepath.Join(base, strconv.Itoa(i))
		if err := os.Mkdir(d, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
			return nil, fmt.Errorf("bpf: pin slot: %w", err)
		}
		f, err := os.Open(d)
		if err != nil {
			return nil, fmt.Errorf("bpf: pin slot: %w", err)
		}
		switch err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); {
		case err == nil:
			return &pinSlot{dir: d, lock: f}, nil
		case errors.Is(err, unix.EWOULDBLOCK):
			f.Close()
		default:
			f.Close()
			return nil, fmt.Errorf("bpf: lock pin slot %s: %w", d, err)
		}
	}
	return nil, fmt.Errorf("bpf: all %d pin slots under %s are in use", maxPinSlots, base)
}

// pinned lists the objects of o by their pin names.
func (o *objects) pinned() (map[string]**ebpf.Program, map[string]**ebpf.Map) {
	return map[string]**ebpf.Program{
			"crest_sys_enter": &o.CrestSysEnter, "crest_sys_exit": &o.CrestSysExit,
			"crest_fork": &o.CrestFork, "crest_exit": &o.CrestExit,
		}, map[string]**ebpf.Map{
			"tracked": &o.Tracked, "events": &o.Events, "counters": &o.Counters, "config": &o.Config,
		}
}

// load opens the slot's pins into o; false (and o empty) when the slot
// lacks any of them or one does not open, e.g. a slot left half made.
func (s *pinSlot) load(o *objects) bool {
	progs, maps := o.pinned()
	ok := true
	for name, p := range progs {
		if *p, _ = ebpf.LoadPinnedProgram(filepath.Join(s.dir, name), nil); *p == nil {
			ok = false
		}
	}
	for name, m := range maps {
		if *m, _ = ebpf.LoadPinnedMap(filepath.Join(s.dir, name), nil); *m == nil {
			ok = false
		}
	}
	if !ok {
		o.Close()
		*o = objects{}
	}
	return ok
}

// pin pins freshly loaded objects into the slot, replacing what was there.
func (s *pinSlot) pin(o *objects) error {
	progs, maps := o.pinned()
	pin := func(name string, do func(string) error) error {
		path := filepath.Join(s.dir, name)
		if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("bpf: pin %s: %w", path, err)
		}
		if err := do(path); err != nil {
			return fmt.Errorf("bpf: pin %s: %w", path, err)
		}
		return nil
	}
	for name, p := range progs {
		if err := pin(name, (*p).Pin); err != nil {
			return err
		}
	}
	for name, m := range maps {
		if err := pin(name, (*m).Pin); err != nil {
			return err
		}
	}
	return nil
}

// reset clears what a previous owner of the slot left in the maps.
func (o *objects) reset() error {
	var k, v uint32
	var keys []uint32
	it := o.Tracked.Iterate()
	for it.Next(&k, &v) {
		keys = append(keys, k)
	}
	for _, k := range keys {
		if err := o.Tracked.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("bpf: reset the pinned tracked map: %w", err)
		}
	}
	cpus, err := ebpf.PossibleCPU()
	if err != nil {
		return fmt.Errorf("bpf: reset the pinned counters: %w", err)
	}
	if err := o.Counters.Put(uint32(0), make([]uint64, cpus)); err != nil {
		return fmt.Errorf("bpf: reset the pinned counters: %w", err)
	}
	return nil
}

// pinKeyRE matches what pinKey makes.
var pinKeyRE = regexp.MustCompile(`^[0-9a-f]{16}-[0-9]+$`)

// Unpin removes the monitor's pins, of every build, under dir (nothing
// else there); monitors open now keep running, but the next Open loads
// afresh.
func Unpin(dir string) error {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("bpf: unpin: %w", err)
	}
	for _, e := range ents {
		if !e.IsDir() || !pinKeyRE.MatchString(e.Name()) {
			continue
		}
		if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
			return fmt.Errorf("bpf: unpin: %w", err)
		}
	}
	return nil
}
