package dump

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	core_x86 "github.com/checkpoint-restore/go-criu/v8/crit/images/core-x86"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/creds"
	criu_core "github.com/checkpoint-restore/go-criu/v8/crit/images/criu-core"
	criu_sa "github.com/checkpoint-restore/go-criu/v8/crit/images/criu-sa"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/rlimit"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/rseq"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/siginfo"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/timer"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	"github.com/crest-restore/crest/images"
	"github.com/crest-restore/crest/internal/procfs"
	"github.com/crest-restore/crest/kerndat"
)

// taskOnly is what only the task can say about itself, asked by remote
// syscalls.
type taskOnly struct {
	sigactions     []*criu_sa.SaEntry
	timers         *timer.TaskTimersEntry
	brk            uint64
	dumpable       int32
	thpDisabled    bool
	childSubreaper bool
	threads        map[int]*threadOnly
}

type threadOnly struct {
	sas       *criu_core.ThreadSasEntry
	tidAddr   uint64
	secbits   uint32
	pdeathSig uint32
}

const (
	prGetPdeathsig      = 2
	prGetDumpable       = 3
	prGetSecurebits     = 27
	prGetChildSubreaper = 37
	prGetTidAddress     = 40
	prGetTHPDisable     = 42
)

// askTask runs the remote syscalls of t: sigactions, itimers, brk, a few
// prctls, and per thread sigaltstack, tid address and securebits.
func askTask(t *task) (_ *taskOnly, err error) {
	r, err := newRemote(t)
	if err != nil {
		return nil, err
	}
	defer func() {
		if ferr := r.finish(); err == nil {
			err = ferr
		}
	}()
	if err := r.mapScratch(); err != nil {
		return nil, err
	}
	lead := t.threads[0]
	to := &taskOnly{threads: map[int]*threadOnly{}}
	for sig := 1; sig <= 64; sig++ {
		// CRIU's image has no entries for the two signals whose action
		// can not change.
		if sig == int(unix.SIGKILL) || sig == int(unix.SIGSTOP) {
			continue
		}
		if _, err := r.call(lead, unix.SYS_RT_SIGACTION, uint64(sig), 0, r.scratch, 8); err != nil {
			return nil, err
		}
		b, err := r.read(32) // struct kernel_sigaction: handler, flags, restorer, mask
		if err != nil {
			return nil, err
		}
		to.sigactions = append(to.sigactions, &criu_sa.SaEntry{
			Sigaction: proto.Uint64(le64(b[0:])), Flags: proto.Uint64(le64(b[8:])),
			Restorer: proto.Uint64(le64(b[16:])), Mask: proto.Uint64(le64(b[24:])),
			CompatSigaction: proto.Bool(false),
		})
	}
	var its [3]*timer.ItimerEntry
	for which := range its {
		if _, err := r.call(lead, unix.SYS_GETITIMER, uint64(which), r.scratch); err != nil {
			return nil, err
		}
		b, err := r.read(32) // struct itimerval: interval, value
		if err != nil {
			return nil, err
		}
		its[which] = &timer.ItimerEntry{Isec: proto.Uint64(le64(b[0:])), Iusec: proto.Uint64(le64(b[8:])),
			Vsec: proto.Uint64(le64(b[16:])), Vusec: proto.Uint64(le64(b[24:]))}
	}
	to.timers = &timer.TaskTimersEntry{Real: its[0], Virt: its[1], Prof: its[2]}
	if to.brk, err = r.call(lead, unix.SYS_BRK, 0); err != nil {
		return nil, err
	}
	v, err := r.call(lead, unix.SYS_PRCTL, prGetDumpable)
	if err != nil {
		return nil, err
	}
	to.dumpable = int32(v)
	if v, err = r.call(lead, unix.SYS_PRCTL, prGetTHPDisable); err != nil {
		return nil, err
	}
	to.thpDisabled = v != 0
	if _, err = r.call(lead, unix.SYS_PRCTL, prGetChildSubreaper, r.scratch); err != nil {
		return nil, err
	}
	b, err := r.read(4)
	if err != nil {
		return nil, err
	}
	to.childSubreaper = le32(b) != 0
	for _, th := range t.threads {
		o := &threadOnly{}
		if _, err := r.call(th, unix.SYS_SIGALTSTACK, 0, r.scratch); err != nil {
			return nil, err
		}
		b, err := r.read(24) // stack_t: ss_sp, ss_flags (+pad), ss_size
		if err != nil {
			return nil, err
		}
		o.sas = &criu_core.ThreadSasEntry{SsSp: proto.Uint64(le64(b[0:])), SsSize: proto.Uint64(le64(b[16:])),
			SsFlags: proto.Uint32(le32(b[8:]))}
		if _, err := r.call(th, unix.SYS_PRCTL, prGetTidAddress, r.scratch); err != nil {
			return nil, err
		}
		if b, err = r.read(8); err != nil {
			return nil, err
		}
		o.tidAddr = le64(b)
		v, err := r.call(th, unix.SYS_PRCTL, prGetSecurebits)
		if err != nil {
			return nil, err
		}
		o.secbits = uint32(v)
		if _, err := r.call(th, unix.SYS_PRCTL, prGetPdeathsig, r.scratch); err != nil {
			return nil, err
		}
		if b, err = r.read(4); err != nil {
			return nil, err
		}
		o.pdeathSig = le32(b)
		to.threads[th.tid] = o
	}
	return to, nil
}

// Errno values the kernel leaves in rax of a syscall interrupted by the
// freeze, and what the dump turns them into. As CRIU's dump (compel's
// get_task_regs), restartable calls are rewound to run again. A call
// that would go on through its restart block (ERESTART_RESTARTBLOCK: the
// time left of a poll, a futex wait or a sleep, which the kernel keeps
// and no image holds) becomes EINTR in CRIU's images, which a program
// whose call no signal handler interrupted does not expect: tail -f dies
// of it ("error waiting for inotify and output events: Interrupted
// system call", with CRIU as with crest before). crest rewinds those
// whose restart from the start keeps their meaning, with their argument
// registers untouched (restartBlocked); the others still get EINTR.
const (
	errRestartSys        = 512
	errRestartNoIntr     = 513
	errRestartNoHand     = 514
	errRestartRestartBlk = 516
)

func dumpedRegs(r unix.PtraceRegs) unix.PtraceRegs {
	if int32(r.Orig_rax) >= 0 {
		switch -int64(int32(r.Rax)) {
		case errRestartSys, errRestartNoIntr, errRestartNoHand:
			r.Rax = r.Orig_rax
			r.Rip -= 2
		case errRestartRestartBlk:
			if restartBlocked(r) {
				r.Rax = r.Orig_rax
				r.Rip -= 2
			} else {
				r.Rax = ^uint64(unix.EINTR) + 1 // -EINTR
			}
		}
	}
	return r
}

// restartBlocked reports whether a call that the freeze interrupted with
// ERESTART_RESTARTBLOCK is run again from the start after a restore,
// rather than failing with EINTR:
//   - poll, and futex waits with a timeout: a wait that starts again
//     waits at most its whole timeout again (a futex wait checks its word
//     again first), as if the task had been stopped that long, which it
//     was;
//   - nanosleep and relative clock_nanosleep without a remainder
//     pointer: the caller can not learn the time left (usleep), so
//     EINTR would cut the sleep short; it sleeps the whole time again.
//
// A sleep with a remainder pointer keeps CRIU's EINTR: the kernel wrote
// the time left there before the freeze, so a caller that sleeps on
// with it (sleep(1), nanosleep loops) sleeps exactly the rest. So does
// restart_syscall (which call it restarts is in the lost block) and any
// other call.
func restartBlocked(r unix.PtraceRegs) bool {
	switch r.Orig_rax {
	case unix.SYS_POLL, unix.SYS_FUTEX:
		return true
	case unix.SYS_NANOSLEEP:
		return r.Rsi == 0
	case unix.SYS_CLOCK_NANOSLEEP:
		return r.R10 == 0
	}
	return false
}

func gpregs(r unix.PtraceRegs) *core_x86.UserX86RegsEntry {
	return &core_x86.UserX86RegsEntry{
		R15: proto.Uint64(r.R15), R14: proto.Uint64(r.R14), R13: proto.Uint64(r.R13), R12: proto.Uint64(r.R12),
		Bp: proto.Uint64(r.Rbp), Bx: proto.Uint64(r.Rbx), R11: proto.Uint64(r.R11), R10: proto.Uint64(r.R10),
		R9: proto.Uint64(r.R9), R8: proto.Uint64(r.R8), Ax: proto.Uint64(r.Rax), Cx: proto.Uint64(r.Rcx),
		Dx: proto.Uint64(r.Rdx), Si: proto.Uint64(r.Rsi), Di: proto.Uint64(r.Rdi), OrigAx: proto.Uint64(r.Orig_rax),
		Ip: proto.Uint64(r.Rip), Cs: proto.Uint64(r.Cs), Flags: proto.Uint64(r.Eflags), Sp: proto.Uint64(r.Rsp),
		Ss: proto.Uint64(r.Ss), FsBase: proto.Uint64(r.Fs_base), GsBase: proto.Uint64(r.Gs_base),
		Ds: proto.Uint64(r.Ds), Es: proto.Uint64(r.Es), Fs: proto.Uint64(r.Fs), Gs: proto.Uint64(r.Gs),
		Mode: core_x86.UserX86RegsMode_NATIVE.Enum(),
	}
}

// xsaveComponents are the user state components CRIU stores beyond the
// fxsave area, by their bit in XCR0.
var xsaveComponents = []int{
	2, // AVX: upper halves of ymm0-15
	3, // MPX BNDREGS
	4, // MPX BNDCSR
	5, // AVX-512 opmask k0-7
	6, // AVX-512 ZMM_Hi256
	7, // AVX-512 Hi16_ZMM
	9, // PKRU
}

// carriedXState refuses a thread's xsave state (its xstate_bv) with
// components in use that CRIU's images (core-x86.proto) have no field
// for: AMX tiles (a restore would give the thread their initial state,
// and no permission to use them: SIGILL at its next tile instruction)
// and APX registers.
func carriedXState(bv uint64) error {
	carried := uint64(0x3) // x87, SSE: the fxsave part
	for _, bit := range xsaveComponents {
		carried |= 1 << bit
	}
	if extra := bv &^ carried; extra != 0 {
		return &xstateError{bv: bv, extra: extra}
	}
	return nil
}

// xstateError is a thread's xsave state that CRIU's images can not hold.
type xstateError struct{ bv, extra uint64 }

func (e *xstateError) Error() string {
	return fmt.Sprintf("xstate_bv %#x: state components %#x (%s) in use, which CRIU's images have no field for",
		e.bv, e.extra, kerndat.XFeatureNames(e.extra))
}

// fpregs reads the xsave area of tid and lays it out as CRIU does: the
// fxsave part always, and the extended components the machine enables
// (XCR0), whatever the thread's own xstate_bv says.
func fpregs(tid int) (*core_x86.UserX86FpregsEntry, error) {
	buf := make([]byte, 16<<10)
	n, err := getRegset(tid, unix.NT_X86_XSTATE, buf)
	if err != nil {
		return nil, err
	}
	if n < 576 {
		return nil, fmt.Errorf("xsave area of %d bytes, want at least 576", n)
	}
	buf = buf[:n]
	u32s := func(b []byte) []uint32 {
		out := make([]uint32, len(b)/4)
		for i := range out {
			out[i] = le32(b[4*i:])
		}
		return out
	}
	u64s := func(b []byte) []uint64 {
		out := make([]uint64, len(b)/8)
		for i := range out {
			out[i] = le64(b[8*i:])
		}
		return out
	}
	fp := &core_x86.UserX86FpregsEntry{
		Cwd: proto.Uint32(uint32(le16(buf[0:]))), Swd: proto.Uint32(uint32(le16(buf[2:]))),
		Twd: proto.Uint32(uint32(le16(buf[4:]))), Fop: proto.Uint32(uint32(le16(buf[6:]))),
		Rip: proto.Uint64(le64(buf[8:])), Rdp: proto.Uint64(le64(buf[16:])),
		Mxcsr: proto.Uint32(le32(buf[24:])), MxcsrMask: proto.Uint32(le32(buf[28:])),
		StSpace: u32s(buf[32:160]), XmmSpace: u32s(buf[160:416]),
	}
	if err := carriedXState(le64(buf[512:])); err != nil {
		return nil, err
	}
	xs := &core_x86.UserX86XsaveEntry{XstateBv: proto.Uint64(le64(buf[512:])),
		// No shadow stacks here (no user_shstk): CRIU 4.2 still writes
		// the cet entry, zeroed.
		Cet: &core_x86.UserX86CetEntry{Cet: proto.Uint64(0), Ssp: proto.Uint64(0)}}
	// the layout is read once per process: CPUID traps in a VM
	layout := kerndat.XSaveLayout()
	for _, bit := range xsaveComponents {
		if layout.XCR0&(1<<bit) == 0 {
			continue
		}
		off, size := layout.Off[bit], layout.Len[bit]
		if off < 576 || off+size > len(buf) {
			return nil, fmt.Errorf("xsave area of %d bytes lacks component %d at %d", len(buf), bit, off)
		}
		b := buf[off : off+size]
		switch bit {
		case 2:
			xs.YmmhSpace = u32s(b)
		case 3:
			xs.BndregState = u64s(b)
		case 4:
			xs.BndcsrState = u64s(b)
		case 5:
			xs.OpmaskReg = u64s(b)
		case 6:
			xs.ZmmUpper = u64s(b)
		case 7:
			xs.Hi16Zmm = u64s(b)
		case 9:
			xs.Pkru = u32s(b)
		}
	}
	fp.Xsave = xs
	return fp, nil
}

// tlsEntries reads the three GDT TLS slots (entries 12-14) of tid.
func tlsEntries(tid int) ([]*core_x86.UserDescT, error) {
	var out []*core_x86.UserDescT
	for e := uint32(12); e <= 14; e++ {
		d, err := getThreadArea(tid, e)
		if err != nil {
			return nil, err
		}
		f := d.Flags
		out = append(out, &core_x86.UserDescT{
			EntryNumber: proto.Uint32(e), BaseAddr: proto.Uint32(d.BaseAddr), Limit: proto.Uint32(d.Limit),
			Seg_32Bit: proto.Bool(f&1 != 0), ContentsH: proto.Bool(f&4 != 0), ContentsL: proto.Bool(f&2 != 0),
			ReadExecOnly: proto.Bool(f&8 != 0), LimitInPages: proto.Bool(f&16 != 0),
			SegNotPresent: proto.Bool(f&32 != 0), Usable: proto.Bool(f&64 != 0),
		})
	}
	return out, nil
}

// credsOf reads the credentials of thread tid from its status file.
func credsOf(pid, tid int, secbits uint32) (*creds.CredsEntry, error) {
	st, err := readStatus(procPath(pid, "task", strconv.Itoa(tid), "status"))
	if err != nil {
		return nil, err
	}
	uids, err := st.uints("Uid", 10)
	if err != nil || len(uids) != 4 {
		return nil, fmt.Errorf("thread %d status: Uid: %v", tid, err)
	}
	gids, err := st.uints("Gid", 10)
	if err != nil || len(gids) != 4 {
		return nil, fmt.Errorf("thread %d status: Gid: %v", tid, err)
	}
	groups, err := st.uints("Groups", 10)
	if err != nil {
		return nil, fmt.Errorf("thread %d status: %w", tid, err)
	}
	capOf := func(key string) ([]uint32, error) {
		v, err := st.uints(key, 16)
		if err != nil || len(v) != 1 {
			return nil, fmt.Errorf("thread %d status: %s: %v", tid, key, err)
		}
		return []uint32{uint32(v[0]), uint32(v[0] >> 32)}, nil
	}
	c := &creds.CredsEntry{
		Uid: proto.Uint32(uint32(uids[0])), Euid: proto.Uint32(uint32(uids[1])),
		Suid: proto.Uint32(uint32(uids[2])), Fsuid: proto.Uint32(uint32(uids[3])),
		Gid: proto.Uint32(uint32(gids[0])), Egid: proto.Uint32(uint32(gids[1])),
		Sgid: proto.Uint32(uint32(gids[2])), Fsgid: proto.Uint32(uint32(gids[3])),
		Secbits: proto.Uint32(secbits),
	}
	for _, g := range groups {
		c.Groups = append(c.Groups, uint32(g))
	}
	// Like CRIU, no_new_privs is written only when set.
	if nnp, err := st.uints("NoNewPrivs", 10); err == nil && len(nnp) == 1 && nnp[0] != 0 {
		c.NoNewPrivs = proto.Uint32(uint32(nnp[0]))
	}
	for _, f := range []struct {
		key string
		dst *[]uint32
	}{{"CapInh", &c.CapInh}, {"CapPrm", &c.CapPrm}, {"CapEff", &c.CapEff}, {"CapBnd", &c.CapBnd}, {"CapAmb", &c.CapAmb}} {
		if *f.dst, err = capOf(f.key); err != nil {
			return nil, err
		}
	}
	return c, nil
}

// signalQueue turns peeked siginfos into CRIU's signal_queue_entry.
func signalQueue(infos [][]byte) *siginfo.SignalQueueEntry {
	q := &siginfo.SignalQueueEntry{}
	for _, b := range infos {
		q.Signals = append(q.Signals, &siginfo.SiginfoEntry{Siginfo: b})
	}
	return q
}

// threadCore builds the core image of one thread; leader says whether it
// also carries the task's tc.
func threadCore(t *task, th *thread, to *taskOnly, leader bool) (*criu_core.CoreEntry, error) {
	errf := func(what string, err error) error {
		return fmt.Errorf("%s: thread %d: %s: %w", t, th.tid, what, err)
	}
	o := to.threads[th.tid]
	fp, err := fpregs(th.tid)
	if xe := (*xstateError)(nil); errors.As(err, &xe) {
		return nil, &UnsupportedError{Task: int(t.nsPid), Resource: fmt.Sprintf("thread %d", th.tid), What: "xsave state", Why: xe.Error()}
	}
	if err != nil {
		return nil, errf("xsave", err)
	}
	tls, err := tlsEntries(th.tid)
	if err != nil {
		return nil, errf("tls", err)
	}
	ti := &core_x86.ThreadInfoX86{ClearTidAddr: proto.Uint64(o.tidAddr), Gpregs: gpregs(dumpedRegs(th.regs)),
		Fpregs: fp, Tls: tls}
	tdir := procPath(t.pid, "task", strconv.Itoa(th.tid))
	st, err := procfs.ReadStat(tdir + "/stat")
	if err != nil {
		return nil, errf("stat", err)
	}
	head, size, err := getRobustList(th.tid)
	if err != nil {
		return nil, errf("robust list", err)
	}
	cr, err := credsOf(t.pid, th.tid, o.secbits)
	if err != nil {
		return nil, errf("creds", err)
	}
	pending, err := peekSiginfo(th.tid, false)
	if err != nil {
		return nil, errf("pending signals", err)
	}
	comm, err := os.ReadFile(tdir + "/comm")
	if err != nil {
		return nil, errf("comm", err)
	}
	tc := &criu_core.ThreadCoreEntry{
		FutexRla: proto.Uint64(head), FutexRlaLen: proto.Uint32(uint32(size)),
		SchedNice:   proto.Int32(int32(st.SignedField(19))),
		SchedPolicy: proto.Uint32(uint32(st.Field(41))),
		Sas:         o.sas,
		SignalsP:    signalQueue(pending),
		Creds:       cr,
		Comm:        proto.String(strings.TrimSuffix(string(comm), "\n")),
		// crest's own cgroup set (the inventory's root_cg_set); dumpTask
		// puts in the thread's own (cgroup.go)
		CgSet: proto.Uint32(1),
	}
	if policy := st.Field(41); policy == 1 || policy == 2 { // SCHED_FIFO, SCHED_RR
		tc.SchedPrio = proto.Uint32(uint32(st.Field(40)))
	}
	// CRIU leaves out the parent-death signal when none is set.
	if o.pdeathSig != 0 {
		tc.PdeathSig = proto.Uint32(o.pdeathSig)
	}
	setSeccomp(tc, th)
	if !leader {
		mask, err := getSigmask(th.tid)
		if err != nil {
			return nil, errf("sigmask", err)
		}
		tc.BlkSigset = proto.Uint64(mask)
	}
	rs, err := getRseq(th.tid)
	if err != nil {
		return nil, errf("rseq", err)
	}
	if rs.Size != 0 {
		tc.RseqEntry = &rseq.RseqEntry{RseqAbiPointer: proto.Uint64(rs.Pointer), RseqAbiSize: proto.Uint32(rs.Size),
			Signature: proto.Uint32(rs.Signature)}
	}
	core := &criu_core.CoreEntry{Mtype: criu_core.CoreEntry_X86_64.Enum(), ThreadInfo: ti, ThreadCore: tc}
	if leader {
		if core.Tc, err = taskCore(t, th, to); err != nil {
			return nil, err
		}
	}
	return core, nil
}

// taskCore is the leader's tc: what belongs to the whole process.
func taskCore(t *task, lead *thread, to *taskOnly) (*criu_core.TaskCoreEntry, error) {
	errf := func(what string, err error) error { return fmt.Errorf("%s: %s: %w", t, what, err) }
	st, err := procfs.ReadStat(procPath(t.pid, "stat"))
	if err != nil {
		return nil, errf("stat", err)
	}
	pers, err := readUintFile(procPath(t.pid, "personality"), 16)
	if err != nil {
		return nil, errf("personality", err)
	}
	persField, ok := images.EncodePersonality(uint32(pers))
	if !ok {
		return nil, &UnsupportedError{Task: int(t.nsPid), Resource: "personality",
			What: fmt.Sprintf("%#x", pers), Why: "a personality with a hex digit a-f can not be written as CRIU 4.2 writes the field (the decimal number its hex digits spell)"}
	}
	mask, err := getSigmask(lead.tid)
	if err != nil {
		return nil, errf("sigmask", err)
	}
	shared, err := peekSiginfo(lead.tid, true)
	if err != nil {
		return nil, errf("pending signals", err)
	}
	loginuid, err := readUintFile(procPath(t.pid, "loginuid"), 10)
	if err != nil {
		return nil, errf("loginuid", err)
	}
	oom, err := readIntFile(procPath(t.pid, "oom_score_adj"))
	if err != nil {
		return nil, errf("oom_score_adj", err)
	}
	rl := &criu_core.TaskRlimitsEntry{}
	for res := 0; res < 16; res++ { // RLIM_NLIMITS
		var r unix.Rlimit
		if err := unix.Prlimit(t.pid, res, nil, &r); err != nil {
			return nil, errf("prlimit", os.NewSyscallError("prlimit64", err))
		}
		rl.Rlimits = append(rl.Rlimits, &rlimit.RlimitEntry{Cur: proto.Uint64(r.Cur), Max: proto.Uint64(r.Max)})
	}
	tc := &criu_core.TaskCoreEntry{
		TaskState:      proto.Uint32(1), // TASK_ALIVE
		ExitCode:       proto.Uint32(0),
		Personality:    proto.Uint32(persField),
		Flags:          proto.Uint32(uint32(st.Field(9))),
		BlkSigset:      proto.Uint64(mask),
		Comm:           proto.String(st.Comm),
		Timers:         to.timers,
		Rlimits:        rl,
		SignalsS:       signalQueue(shared),
		Loginuid:       proto.Uint32(uint32(loginuid)),
		OomScoreAdj:    proto.Int32(int32(oom)),
		Sigactions:     to.sigactions,
		ChildSubreaper: proto.Bool(to.childSubreaper),
	}
	if t.stopSig != 0 {
		// CRIU's TASK_STOPPED, and the signal, which the restore sends
		// the task again (CRIU 4.2 writes both)
		tc.TaskState = proto.Uint32(3)
		tc.StopSigno = proto.Uint32(uint32(t.stopSig))
	}
	return tc, nil
}
