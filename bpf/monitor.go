package bpf

import (
	"errors"
	"fmt"
	"os"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/ringbuf"
)

// ErrNotSupported: this kernel or this process can not run the monitor
// (no BTF, no permission to load BPF, a program the verifier refuses).
// Open's error wraps it; a plain restore does not need the monitor.
var ErrNotSupported = errors.New("bpf monitor not supported")

// kernelTypes is the kernel's BTF, decoded once per process (about 10-20
// ms, half of a cold Open) and shared by every Open.
var kernelTypes = btf.NewCache()

// Options tune a Monitor. The zero value is a good default.
type Options struct {
	// RingSize is the ring buffer's size in bytes: a power of two and a
	// multiple of the page size (default 4 MiB).
	RingSize int
	// WakeupBytes wakes the reader once that many bytes of events wait
	// unread (default a quarter of RingSize; 1 wakes it for every event),
	// so that during a restore it does not compete with the tasks for the
	// CPUs. Sync and Close read what is pending anyway.
	WakeupBytes int
	// AllFutexes also reports FUTEX_PRIVATE_FLAG operations. crest's
	// stage barrier uses shared futexes; the Go runtime's are private,
	// so by default the engine's own locking stays out of the log.
	AllFutexes bool
	// PinDir, a directory on a BPF file system (e.g. /sys/fs/bpf/crest),
	// keeps the loaded programs and maps pinned there after Close, and
	// Open reuses them: no kernel BTF to decode, no verifier (see pin.go).
	// Empty: load afresh and leave nothing behind.
	PinDir string
}

// Timing is what the monitor cost to set up and tear down.
type Timing struct {
	Load   time.Duration `json:"load"`   // BTF, maps, programs through the verifier
	Attach time.Duration `json:"attach"` // the four tp_btf links
	Detach time.Duration `json:"detach"` // closing the links (0 until Close)
	// Reused: Load opened programs pinned by an earlier monitor.
	Reused bool `json:"reused,omitempty"`
}

// Range is an address range [Lo, Hi).
type Range struct{ Lo, Hi uint64 }

// objects are the loaded programs and maps (bpf2go's monitorObjects
// without the type anchors).
type objects struct {
	monitorPrograms
	monitorMaps
}

func (o *objects) Close() error {
	return errors.Join(o.monitorPrograms.Close(), o.monitorMaps.Close())
}

// Monitor watches the tracked processes: their clone, clone3, setns and
// futex calls, forks and exits.
type Monitor struct {
	objs   objects
	links  []link.Link
	reader *ringbuf.Reader
	slot   *pinSlot // nil unless pinned
	opts   Options
	timing Timing
	cfg    monitorCrestConfig

	mu      sync.Mutex // guards log, join, readErr
	log     []Event
	join    joiner
	readErr error

	syncMu  sync.Mutex // one Sync at a time
	flushed chan struct{}
	done    chan struct{}
	closed  bool

	droppedAtClose uint64
}

// Open loads the monitor's programs, attaches them and starts reading
// events. Nothing is tracked until Track.
func Open(opts Options) (*Monitor, error) {
	if opts.RingSize == 0 {
		opts.RingSize = 4 << 20
	}
	if opts.WakeupBytes == 0 {
		opts.WakeupBytes = opts.RingSize / 4
	}
	page := os.Getpagesize()
	if opts.RingSize < page || opts.RingSize&(opts.RingSize-1) != 0 {
		return nil, fmt.Errorf("bpf: ring buffer size %d: not a power of two of at least a page (%d)", opts.RingSize, page)
	}
	m := &Monitor{opts: opts, flushed: make(chan struct{}, 1), done: make(chan struct{})}

	begin := time.Now()
	if opts.PinDir != "" {
		slot, err := claimSlot(opts.PinDir, opts.RingSize)
		if err != nil {
			return nil, err
		}
		m.slot = slot
		m.timing.Reused = slot.load(&m.objs)
	}
	if !m.timing.Reused {
		if err := m.load(); err != nil {
			m.slot.release()
			return nil, err
		}
	}
	fail := func(err error) (*Monitor, error) {
		m.detach()
		if m.reader != nil {
			m.reader.Close()
		}
		m.objs.Close()
		m.slot.release()
		return nil, err
	}
	if m.timing.Reused {
		if err := m.objs.reset(); err != nil {
			return fail(err)
		}
	}
	m.cfg = monitorCrestConfig{WakeupBytes: uint32(opts.WakeupBytes)}
	if opts.AllFutexes {
		m.cfg.AllFutexes = 1
	}
	if err := m.objs.Config.Put(uint32(0), &m.cfg); err != nil {
		return fail(fmt.Errorf("bpf: write the monitor's config: %w", err))
	}
	var err error
	m.reader, err = ringbuf.NewReader(m.objs.Events)
	if err != nil {
		return fail(fmt.Errorf("bpf: ring buffer reader: %w", err))
	}
	if m.timing.Reused {
		// What an owner that died left unread, before anything of ours.
		m.reader.SetDeadline(time.Now())
		var rec ringbuf.Record
		for m.reader.ReadInto(&rec) == nil {
		}
		m.reader.SetDeadline(time.Time{})
	}
	m.timing.Load = time.Since(begin)

	begin = time.Now()
	for _, p := range []struct {
		name string
		prog *ebpf.Program
	}{
		{"sys_enter", m.objs.CrestSysEnter}, {"sys_exit", m.objs.CrestSysExit},
		{"sched_process_fork", m.objs.CrestFork}, {"sched_process_exit", m.objs.CrestExit},
	} {
		l, err := link.AttachTracing(link.TracingOptions{Program: p.prog})
		if err != nil {
			return fail(fmt.Errorf("%w: attach tp_btf/%s: %w", ErrNotSupported, p.name, err))
		}
		m.links = append(m.links, l)
	}
	m.timing.Attach = time.Since(begin)
	go m.read()
	return m, nil
}

// load loads the programs and maps afresh (kernel BTF, verifier), and
// pins them in the monitor's slot if it has one.
func (m *Monitor) load() error {
	if _, err := kernelTypes.Kernel(); err != nil {
		return fmt.Errorf("%w: no kernel BTF (%s): %w", ErrNotSupported, vmlinuxBTF, err)
	}
	spec, err := loadMonitor()
	if err != nil {
		return fmt.Errorf("bpf: the embedded monitor object: %w", err)
	}
	// The .bss only holds the type anchors for bpf2go; no program uses it.
	for name := range spec.Maps {
		if name == ".bss" {
			delete(spec.Maps, name)
		}
	}
	for name := range spec.Variables {
		delete(spec.Variables, name)
	}
	spec.Maps[monitorMapEvents].MaxEntries = uint32(m.opts.RingSize)
	if err := spec.LoadAndAssign(&m.objs, &ebpf.CollectionOptions{Cache: kernelTypes}); err != nil {
		return loadError(err)
	}
	if m.slot != nil {
		if err := m.slot.pin(&m.objs); err != nil {
			m.objs.Close()
			return err
		}
	}
	return nil
}

// loadError says why the programs did not load, wrapping ErrNotSupported
// when the cause is the kernel or the permissions rather than crest.
func loadError(err error) error {
	var verr *ebpf.VerifierError
	switch {
	case errors.Is(err, syscall.EPERM), errors.Is(err, syscall.EACCES):
		return fmt.Errorf("%w: loading BPF programs needs root or CAP_BPF and CAP_PERFMON: %w", ErrNotSupported, err)
	case errors.Is(err, ebpf.ErrNotSupported):
		return fmt.Errorf("%w: %w", ErrNotSupported, err)
	case errors.As(err, &verr):
		return fmt.Errorf("%w: the verifier refused a monitor program: %+v", ErrNotSupported, verr)
	}
	return fmt.Errorf("%w: load the monitor's programs: %w", ErrNotSupported, err)
}

// Timing returns how long loading, attaching and (after Close) detaching
// took.
func (m *Monitor) Timing() Timing { return m.timing }

// Track makes the monitor watch process pid (a tgid, in the monitor's
// pid namespace) and, from now on, every process it forks.
func (m *Monitor) Track(pid int) error {
	if err := m.objs.Tracked.Put(uint32(pid), uint32(0)); err != nil {
		return fmt.Errorf("bpf: track pid %d: %w", pid, err)
	}
	return nil
}

// Untrack stops watching process pid (its children stay tracked).
func (m *Monitor) Untrack(pid int) error {
	if err := m.objs.Tracked.Delete(uint32(pid)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("bpf: untrack pid %d: %w", pid, err)
	}
	return nil
}

// Tracked lists the tgids being watched.
func (m *Monitor) Tracked() []int {
	var pids []int
	var k, v uint32
	it := m.objs.Tracked.Iterate()
	for it.Next(&k, &v) {
		pids = append(pids, int(k))
	}
	slices.Sort(pids)
	return pids
}

// WatchFutexes limits futex events to addresses in the given ranges (at
// most 4, e.g. task_entries as the engine and as the tasks map it); no
// range watches every futex of the tracked processes.
func (m *Monitor) WatchFutexes(ranges ...Range) error {
	if len(ranges) > len(m.cfg.FutexLo) {
		return fmt.Errorf("bpf: %d futex ranges, at most %d", len(ranges), len(m.cfg.FutexLo))
	}
	cfg := m.cfg
	cfg.FutexLo, cfg.FutexHi = [4]uint64{}, [4]uint64{}
	for i, r := range ranges {
		cfg.FutexLo[i], cfg.FutexHi[i] = r.Lo, r.Hi
	}
	if err := m.objs.Config.Put(uint32(0), &cfg); err != nil {
		return fmt.Errorf("bpf: set futex ranges: %w", err)
	}
	m.cfg = cfg
	return nil
}

// Dropped returns how many events the programs could not write because
// the ring buffer was full.
func (m *Monitor) Dropped() uint64 {
	if m.closed {
		return m.droppedAtClose
	}
	var perCPU []uint64
	if err := m.objs.Counters.Lookup(uint32(0), &perCPU); err != nil {
		return 0
	}
	var n uint64
	for _, c := range perCPU {
		n += c
	}
	return n
}

// Sync returns once every event the programs wrote before the call is
// decoded and in Events, even if no wake-up was due.
func (m *Monitor) Sync() error {
	m.syncMu.Lock()
	defer m.syncMu.Unlock()
	if m.closed {
		return nil
	}
	return m.sync()
}

func (m *Monitor) sync() error {
	if err := m.reader.Flush(); err != nil {
		return fmt.Errorf("bpf: flush ring buffer: %w", err)
	}
	select {
	case <-m.flushed:
	case <-m.done:
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.readErr
}

// Events returns copies of the events decoded so far, in order of their
// (entry) times. Call Sync first to include the latest.
func (m *Monitor) Events() []Event {
	m.mu.Lock()
	out := make([]Event, len(m.log))
	for i, e := range m.log {
		out[i] = e.clone()
	}
	m.mu.Unlock()
	slices.SortStableFunc(out, func(a, b Event) int {
		return compareUint(a.Head().Time, b.Head().Time)
	})
	return out
}

func compareUint(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// read decodes records until the reader is closed.
func (m *Monitor) read() {
	defer close(m.done)
	var rec ringbuf.Record
	for {
		err := m.reader.ReadInto(&rec)
		switch {
		case errors.Is(err, ringbuf.ErrFlushed):
			select {
			case m.flushed <- struct{}{}:
			default:
			}
			continue
		case errors.Is(err, ringbuf.ErrClosed):
			return
		case err != nil:
			m.mu.Lock()
			m.readErr = fmt.Errorf("bpf: read ring buffer: %w", err)
			m.mu.Unlock()
			return
		}
		ev, err := decodeRecord(rec.RawSample)
		m.mu.Lock()
		if err != nil {
			if m.readErr == nil {
				m.readErr = err
			}
		} else if e := m.join.add(ev); e != nil {
			m.log = append(m.log, e)
		}
		m.mu.Unlock()
	}
}

func (m *Monitor) detach() {
	for _, l := range m.links {
		l.Close()
	}
	m.links = nil
}

// Close detaches the programs, reads what they wrote up to then, and
// frees everything; Events and Dropped keep their last values.
func (m *Monitor) Close() error {
	m.syncMu.Lock()
	defer m.syncMu.Unlock()
	if m.closed {
		return nil
	}
	begin := time.Now()
	m.detach()
	m.timing.Detach = time.Since(begin)
	err := m.sync()
	dropped := m.Dropped()
	m.closed = true
	m.reader.Close()
	<-m.done
	m.cfg = monitorCrestConfig{}
	m.droppedAtClose = dropped
	err = errors.Join(err, m.objs.Close())
	m.slot.release()
	return err
}
