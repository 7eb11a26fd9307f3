package restore

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"sort"
	"syscall"

	"github.com/crest-restore/crest/kerndat"
	"github.com/crest-restore/crest/restore/agent"
)

// The plan file is what the agent reads (plan.h): struct crest_plan, the
// tasks, then per task its children's indices, threads (registers), the
// files it takes from the engine, its fd table, VMAs, page runs, mm fields
// with the saved auxv, supplementary groups, sigactions, timers, pending
// signals, and its threads' seccomp filters with their programs.

// planLayout is where each part of the plan file starts.
type planLayout struct {
	tasks      []agent.Task
	threadSigs []uint32 // per task: where its threads' pending signals start
	filters    []uint32 // per task: where its threads' seccomp filters start
	progs      []uint32 // per task: where the filters' programs start
	size       uint32
}

func layoutPlan(p *Plan, pr *prepared, opts Options) planLayout {
	var l planLayout
	off := uint32(binary.Size(agent.Plan{})) + uint32(len(p.Tasks)*binary.Size(agent.Task{}))
	take := func(n, size int) uint32 {
		o := off
		off += uint32(n * size)
		off = (off + 7) &^ 7
		return o
	}
	for _, t := range p.Tasks {
		runs := restoredRuns(t)
		at := agent.Task{
			PID: int32(t.PID), PPID: int32(t.PPID), PGID: int32(t.PGID), SID: int32(t.SID),
			Index: int32(t.Index), Parent: -1, Session: uint32(t.Session), Group: uint32(t.Group),
			NrChildren: uint32(len(t.Children)), NrThreads: uint32(len(t.Threads)),
			NrTakes: uint32(len(takes(t, pr))), NrFDs: uint32(len(t.FDs)),
			NrVMAs: uint32(len(t.Mem.VMAs)), NrRuns: uint32(len(runs)),
			NrGroups: uint32(len(t.Creds.Groups)),
			Kind:     uint32(t.Kind), ExitCode: int32(t.ExitCode),
			Personality: t.Personality, NrEpollAdds: uint32(len(t.EpollAdds)),
		}
		if t.ChildSubreaper {
			at.Subreaper = 1
		}
		cttyPlan(t, pr, &at) // pty.go
		for _, c := range t.Children {
			switch c.Kind {
			case TaskHelper:
				at.NrHelpers++
			case TaskZombie:
				at.NrZombies++
			}
		}
		if t.Parent != nil {
			at.Parent = int32(t.Parent.Index)
		}
		copy(at.Comm[:len(at.Comm)-1], t.Comm)
		at.ChildrenOff = take(len(t.Children), 4)
		at.ThreadsOff = take(len(t.Threads), binary.Size(agent.Thread{}))
		at.TakesOff = take(int(at.NrTakes), binary.Size(agent.Take{}))
		at.FDsOff = take(len(t.FDs), binary.Size(agent.FD{}))
		at.VMAsOff = take(len(t.Mem.VMAs), binary.Size(agent.VMA{}))
		at.RunsOff = take(len(runs), binary.Size(agent.Run{}))
		at.CredsOff = take(1, binary.Size(agent.Creds{}))
		at.MMOff = take(1, binary.Size(agent.MM{}))
		take(len(t.Mem.MM.GetMmSavedAuxv()), 8)
		at.GroupsOff = take(len(t.Creds.Groups), 4)
		at.SigactsOff = take(agent.NrSignals, binary.Size(agent.Sigaction{}))
		at.NrTimers = uint32(len(t.PosixTimers))
		at.TimersOff = take(len(t.PosixTimers), binary.Size(agent.PosixTimer{}))
		at.NrShared = uint32(len(t.SharedSignals))
		at.SharedOff = take(len(t.SharedSignals), binary.Size(agent.Siginfo{}))
		nsigs := 0
		for _, th := range t.Threads {
			nsigs += len(th.Signals)
		}
		l.threadSigs = append(l.threadSigs, take(nsigs, binary.Size(agent.Siginfo{})))
		nfilters, progBytes := 0, 0
		for _, th := range t.Threads {
			for _, f := range th.Seccomp.Filters {
				nfilters++
				progBytes += len(f.Prog)
			}
		}
		at.EpollAddsOff = take(len(t.EpollAdds), binary.Size(agent.EpollAdd{}))
		l.filters = append(l.filters, take(nfilters, binary.Size(agent.SeccompFilter{})))
		l.progs = append(l.progs, take(progBytes, 1))
		// the cgroups it enters before it forks (cgroup.go)
		at.NrCgroupFDs = uint32(len(p.Cgroups.enterFDs(t, pr, opts.Faults)))
		at.CgroupFDsOff = take(int(at.NrCgroupFDs), 4)
		for i, it := range t.Itimers {
			at.Itimers[i] = agent.Itimer{IntervalSec: it.IntervalSec, IntervalUsec: it.IntervalUsec, ValueSec: it.ValueSec, ValueUsec: it.ValueUsec}
		}
		l.tasks = append(l.tasks, at)
	}
	l.size = off
	return l
}

// restoredRuns are the page runs a task writes: not those of the vdso and
// vvar, which the kernel maps fresh.
func restoredRuns(t *Task) []runRef {
	var out []runRef
	for _, r := range t.Mem.Runs {
		i := sort.Search(len(t.Mem.VMAs), func(i int) bool { return t.Mem.VMAs[i].End > r.Vaddr })
		if i < len(t.Mem.VMAs) {
			if k := t.Mem.VMAs[i].Kind; k == VMAVDSO || k == VMAVVAR {
				continue
			}
		}
		out = append(out, runRef{vaddr: r.Vaddr, nrPages: r.NrPages, offset: uint64(r.Offset), pages: r.Pages})
	}
	return out
}

type runRef struct {
	vaddr, nrPages, offset uint64
	pages                  string
}

// takes returns the positions in pr.files of the files t takes, sorted.
func takes(t *Task, pr *prepared) []int {
	set := map[int]bool{}
	for _, fd := range t.FDs {
		set[pr.index[fileKey(fd.File)]] = true
	}
	for _, v := range t.Mem.VMAs {
		if v.File != nil {
			set[pr.index[mapKey(&v)]] = true
		}
		if v.Shmem != nil {
			set[pr.index[memfdKey(v.Shmem)]] = true
		}
	}
	for _, f := range []*File{t.Mem.Exe, t.FS.CwdFile, rootFile(t)} {
		if f != nil {
			set[pr.index[fileKey(f)]] = true
		}
	}
	for _, r := range t.Mem.Runs {
		set[pr.index["pages:"+r.Pages]] = true
	}
	ks := make([]int, 0, len(set))
	for k := range set {
		ks = append(ks, k)
	}
	sort.Ints(ks)
	return ks
}

// rootFile is the root a task must chroot to, nil when it is "/" (the
// engine's and so the agent's root).
func rootFile(t *Task) *File {
	if t.FS.RootFile == nil || t.FS.Root == "/" {
		return nil
	}
	return t.FS.RootFile
}

// The plan's enums are the agent's; these keep the Go names honest.
var vmaKinds = map[VMAKind]uint32{
	VMAAnonPrivate: agent.VMAAnonPrivate, VMAFilePrivate: agent.VMAFilePrivate, VMAFileShared: agent.VMAFileShared,
	VMAVDSO: agent.VMAVDSO, VMAVVAR: agent.VMAVVAR, VMAVsyscall: agent.VMAVsyscall,
	VMAAnonShared: agent.VMAFileShared,
}

// encodePlan writes the plan file for p, to be mapped at a.PlanAddr.
func encodePlan(p *Plan, pr *prepared, l planLayout, a area, opts Options, sigIgnored uint64, tns *timeOffsets) ([]byte, error) {
	var b bytes.Buffer
	b.Grow(int(l.size))
	head := agent.Plan{
		Magic: agent.PlanMagic, Version: agent.PlanVersion, Size: l.size,
		AreaStart: a.Start, AreaSize: a.Size, PlanAddr: a.PlanAddr,
		SharedAddr: a.SharedAddr, SharedSize: a.SharedSize,
		NrTasks: uint32(len(p.Tasks)), NrThreads: uint32(p.NrThreads), NrHelpers: uint32(p.NrHelpers),
		TasksOff: uint32(binary.Size(agent.Plan{})), SlotsOff: slotsOff,
		RestorerAddr: a.RestorerAddr, RestorerSize: a.RestorerSize,
		StackAddr: a.StackAddr, StackSize: a.StackSize, NrStacks: uint32(a.NrStacks),
		EnginePidfd: int32(pr.fdBase), FDBase: int32(pr.fdBase),
		Faults: uint32(opts.Faults), SigIgnored: sigIgnored,
	}
	if p.NewPIDNS {
		head.Flags |= agent.PlanNewPID
	}
	if !opts.KeepArea {
		head.Flags |= agent.PlanFinishedByEngine
	}
	head.Flags |= p.namespaceFlags()
	if tns != nil {
		head.Flags |= agent.PlanNewTime
		head.BootOffsetNs = (tns.Boottime - tns.engineBoottime).Nanoseconds()
		if tns.byRoot {
			head.Flags |= agent.PlanRootTimeNS
			var err error
			if head.TimeOffsets, err = tns.planText(); err != nil { // timens.go
				return nil, err
			}
		}
	}
	xs := kerndat.XSaveLayout()
	head.XCR0, head.XSaveSize = xs.XCR0, uint32(xs.Size)
	for i := range head.XSaveOff {
		head.XSaveOff[i], head.XSaveLen[i] = uint32(xs.Off[i]), uint32(xs.Len[i])
	}
	put := func(v any) {
		// bytes.Buffer never fails; binary.Write fails only on types
		// without a fixed size, which the layout test rules out.
		if err := binary.Write(&b, binary.LittleEndian, v); err != nil {
			panic(err)
		}
	}
	pad := func(off uint32) {
		if uint32(b.Len()) > off {
			panic(fmt.Sprintf("plan file: at %d, past %d", b.Len(), off))
		}
		b.Write(make([]byte, int(off)-b.Len()))
	}
	put(head)
	for i, t := range p.Tasks {
		l.tasks[i].Umask = t.FS.Umask
		l.tasks[i].CwdFD, l.tasks[i].RootFD = -1, -1
		if t.FS.CwdFile != nil {
			l.tasks[i].CwdFD = pr.localFD(pr.index[fileKey(t.FS.CwdFile)])
		}
		if f := rootFile(t); f != nil {
			l.tasks[i].RootFD = pr.localFD(pr.index[fileKey(f)])
		}
	}
	put(l.tasks)
	for i, t := range p.Tasks {
		at := l.tasks[i]
		pad(at.ChildrenOff)
		for _, c := range t.Children {
			put(int32(c.Index))
		}
		pad(at.ThreadsOff)
		sigsOff := l.threadSigs[i]
		filtersOff := l.filters[i]
		for k, th := range t.Threads {
			// zombies and helpers never return into registers
			ath := agent.Thread{TID: int32(th.TID), Slot: uint32(th.Slot)}
			if t.Kind == TaskAlive {
				var err error
				if ath, err = threadState(t, k, th); err != nil {
					return nil, err
				}
			}
			ath.NrSigs, ath.SigsOff = uint32(len(th.Signals)), sigsOff
			sigsOff += uint32(len(th.Signals) * binary.Size(agent.Siginfo{}))
			ath.PdeathSig = int32(th.PdeathSig)
			ath.SchedPolicy, ath.SchedPrio, ath.SchedNice = th.Sched.Policy, th.Sched.Prio, th.Sched.Nice
			if th.Sched.Early {
				ath.SchedEarly = 1
			}
			ath.SeccompMode, ath.NrFilters, ath.FiltersOff = th.Seccomp.Mode, uint32(len(th.Seccomp.Filters)), filtersOff
			filtersOff += uint32(len(th.Seccomp.Filters) * binary.Size(agent.SeccompFilter{}))
			put(ath)
		}
		pad(at.TakesOff)
		for _, k := range takes(t, pr) {
			put(agent.Take{EngineFD: int32(pr.fds[k]), LocalFD: pr.localFD(k)})
		}
		pad(at.FDsOff)
		for _, fd := range t.FDs {
			afd := agent.FD{FD: int32(fd.FD), SrcFD: pr.localFD(pr.index[fileKey(fd.File)])}
			if fd.CloExec {
				afd.Cloexec = 1
			}
			if p.sigio[fd.File.ID] {
				afd.Async = 1
			}
			put(afd)
		}
		pad(at.VMAsOff)
		for _, v := range t.Mem.VMAs {
			av := agent.VMA{Start: v.Start, End: v.End, Pgoff: v.Pgoff, Madv: v.Madv,
				Prot: v.Prot, Flags: v.Flags, Kind: vmaKinds[v.Kind], SrcFD: -1}
			if v.File != nil {
				av.SrcFD = pr.localFD(pr.index[mapKey(&v)])
			}
			if v.Shmem != nil {
				// the object's file, mapped as a file: not a new
				// anonymous region
				av.SrcFD = pr.localFD(pr.index[memfdKey(v.Shmem)])
				av.Flags &^= syscall.MAP_ANONYMOUS
				av.Kind = agent.VMAFileShared
			}
			if v.SysV != nil {
				agentSysVShm(&v, &av) // sysvshm.go
			}
			put(av)
		}
		pad(at.RunsOff)
		for _, r := range restoredRuns(t) {
			put(agent.Run{Vaddr: r.vaddr, NrPages: r.nrPages, Offset: r.offset, SrcFD: pr.localFD(pr.index["pages:"+r.pages])})
		}
		pad(at.CredsOff)
		c := t.Creds
		ac := agent.Creds{UID: c.UID, EUID: c.EUID, SUID: c.SUID, FSUID: c.FSUID,
			GID: c.GID, EGID: c.EGID, SGID: c.SGID, FSGID: c.FSGID, Secbits: c.Secbits,
			CapInh: c.CapInh, CapPrm: c.CapPrm, CapEff: c.CapEff, CapBnd: c.CapBnd, CapAmb: c.CapAmb, Dumpable: -1}
		if c.NoNewPrivs {
			ac.NoNewPrivs = 1
		}
		if t.Mem.MM != nil && t.Mem.MM.Dumpable != nil {
			ac.Dumpable = t.Mem.MM.GetDumpable()
		}
		put(ac)
		pad(at.MMOff)
		m := t.Mem.MM
		auxv := m.GetMmSavedAuxv()
		amm := agent.MM{
			StartCode: m.GetMmStartCode(), EndCode: m.GetMmEndCode(), StartData: m.GetMmStartData(), EndData: m.GetMmEndData(),
			StartBrk: m.GetMmStartBrk(), Brk: m.GetMmBrk(), StartStack: m.GetMmStartStack(),
			ArgStart: m.GetMmArgStart(), ArgEnd: m.GetMmArgEnd(), EnvStart: m.GetMmEnvStart(), EnvEnd: m.GetMmEnvEnd(),
			AuxvOff: at.MMOff + uint32(binary.Size(agent.MM{})), NrAuxv: uint32(len(auxv)), ExeFD: -1,
		}
		if t.Mem.Exe != nil {
			amm.ExeFD = pr.localFD(pr.index[fileKey(t.Mem.Exe)])
		}
		put(amm)
		put(auxv)
		pad(at.GroupsOff)
		put(t.Creds.Groups)
		pad(at.SigactsOff)
		var sas [agent.NrSignals]agent.Sigaction
		for _, sa := range t.Sigactions {
			sas[sa.Signal-1] = agent.Sigaction{Handler: sa.Handler, Flags: sa.Flags, Restorer: sa.Restorer, Mask: sa.Mask}
		}
		put(sas)
		pad(at.TimersOff)
		for _, pt := range t.PosixTimers {
			put(agent.PosixTimer{ID: pt.ID, ClockID: pt.ClockID, Signo: pt.Signo, Notify: pt.Notify, SivalPtr: pt.SivalPtr,
				NotifyTID: pt.NotifyTID, IntervalSec: pt.IntervalSec, IntervalNsec: pt.IntervalNsec, ValueSec: pt.ValueSec, ValueNsec: pt.ValueNsec})
		}
		pad(at.SharedOff)
		for _, si := range t.SharedSignals {
			put(si)
		}
		pad(l.threadSigs[i])
		for _, th := range t.Threads {
			for _, si := range th.Signals {
				put(si)
			}
		}
		pad(at.EpollAddsOff)
		for _, a := range t.EpollAdds {
			put(agent.EpollAdd{EpFD: int32(a.EpFD), TFD: int32(a.TFD), Events: a.Events, Data: a.Data})
		}
		pad(l.filters[i])
		progOff := l.progs[i]
		for _, th := range t.Threads {
			for _, f := range th.Seccomp.Filters {
				put(agent.SeccompFilter{Flags: f.Flags, Len: uint32(len(f.Prog) / 8), ProgOff: progOff})
				progOff += uint32(len(f.Prog))
			}
		}
		pad(l.progs[i])
		for _, th := range t.Threads {
			for _, f := range th.Seccomp.Filters {
				b.Write(f.Prog)
			}
		}
		pad(at.CgroupFDsOff)
		put(p.Cgroups.enterFDs(t, pr, opts.Faults))
	}
	pad(l.size)
	if uint64(b.Len()) > a.PlanSize {
		return nil, fmt.Errorf("plan file of %d bytes does not fit its %d bytes", b.Len(), a.PlanSize)
	}
	return b.Bytes(), nil
}

const ssDisable = 2 // SS_DISABLE: no alternate signal stack

// threadState is what the agent needs to return into a thread: registers,
// legacy FPU state, signal mask, clear_tid address.
func threadState(t *Task, index int, th Thread) (agent.Thread, error) {
	ti := th.Core.GetThreadInfo()
	if ti == nil || ti.GetGpregs() == nil {
		return agent.Thread{}, &PlanError{PID: t.PID, File: fmt.Sprintf("core-%d.img", th.TID), Msg: "no x86-64 thread_info"}
	}
	g := ti.GetGpregs()
	if g.GetMode() != 1 { // NATIVE
		return agent.Thread{}, &PlanError{PID: t.PID, File: fmt.Sprintf("core-%d.img", th.TID), Msg: "32-bit (compat) tasks are not supported"}
	}
	tc := th.Core.GetThreadCore()
	at := agent.Thread{
		TID: int32(th.TID), Index: uint32(index), Slot: uint32(th.Slot), ClearTIDAddr: ti.GetClearTidAddr(),
		RobustList: tc.GetFutexRla(), RobustLen: uint64(tc.GetFutexRlaLen()),
		Regs: agent.Regs{
			R15: g.GetR15(), R14: g.GetR14(), R13: g.GetR13(), R12: g.GetR12(), BP: g.GetBp(), BX: g.GetBx(),
			R11: g.GetR11(), R10: g.GetR10(), R9: g.GetR9(), R8: g.GetR8(), AX: g.GetAx(), CX: g.GetCx(),
			DX: g.GetDx(), SI: g.GetSi(), DI: g.GetDi(), OrigAX: g.GetOrigAx(), IP: g.GetIp(), CS: g.GetCs(),
			Flags: g.GetFlags(), SP: g.GetSp(), SS: g.GetSs(), FSBase: g.GetFsBase(), GSBase: g.GetGsBase(),
			DS: g.GetDs(), ES: g.GetEs(), FS: g.GetFs(), GS: g.GetGs(),
		},
	}
	at.Sigmask = threadSigmask(t, th)
	if sas := tc.GetSas(); sas != nil {
		at.SasSP, at.SasSize, at.SasFlags = sas.GetSsSp(), sas.GetSsSize(), sas.GetSsFlags()
	} else {
		at.SasFlags = ssDisable
	}
	if rs := tc.GetRseqEntry(); rs != nil && rs.GetRseqAbiPointer() != 0 {
		at.RseqAddr, at.RseqSize, at.RseqSig = rs.GetRseqAbiPointer(), rs.GetRseqAbiSize(), rs.GetSignature()
	}
	// The FXSAVE image: CRIU's user_x86_fpregs_entry is the
	// user_fpregs_struct of ptrace, i.e. the FXSAVE layout field by field.
	if fp := ti.GetFpregs(); fp != nil {
		x := at.FXSave[:]
		le := binary.LittleEndian
		le.PutUint16(x[0:], uint16(fp.GetCwd()))
		le.PutUint16(x[2:], uint16(fp.GetSwd()))
		le.PutUint16(x[4:], uint16(fp.GetTwd()))
		le.PutUint16(x[6:], uint16(fp.GetFop()))
		le.PutUint64(x[8:], fp.GetRip())
		le.PutUint64(x[16:], fp.GetRdp())
		le.PutUint32(x[24:], fp.GetMxcsr())
		le.PutUint32(x[28:], fp.GetMxcsrMask())
		st, xmm := fp.GetStSpace(), fp.GetXmmSpace()
		if len(st) > 32 || len(xmm) > 64 {
			return agent.Thread{}, &PlanError{PID: t.PID, File: fmt.Sprintf("core-%d.img", th.TID), Msg: "oversized x87/SSE state"}
		}
		for i, w := range st {
			le.PutUint32(x[32+4*i:], w)
		}
		for i, w := range xmm {
			le.PutUint32(x[160+4*i:], w)
		}
		if xs := fp.GetXsave(); xs != nil {
			if err := fillXState(&at.XState, xs.GetXstateBv(), xs.GetYmmhSpace(), xs.GetBndregState(), xs.GetBndcsrState(),
				xs.GetOpmaskReg(), xs.GetZmmUpper(), xs.GetHi16Zmm(), xs.GetPkru()); err != nil {
				return agent.Thread{}, &PlanError{PID: t.PID, File: fmt.Sprintf("core-%d.img", th.TID), Msg: "xsave", Err: err}
			}
		}
	}
	return at, nil
}

// knownXState refuses an xstate_bv with components the agent does not
// load (AMX tiles, APX: CRIU's images have no field for them).
func knownXState(bv uint64) error {
	if bv&^agent.XStateKnown != 0 {
		return fmt.Errorf("xstate_bv %#x has components crest does not know (%#x)", bv, bv&^agent.XStateKnown)
	}
	return nil
}

// fillXState lays CRIU's user_x86_xsave_entry out component by component.
func fillXState(x *agent.XState, bv uint64, ymmh []uint32, bndreg, bndcsr, opmask, zmmUpper, hi16 []uint64, pkru []uint32) error {
	if err := knownXState(bv); err != nil {
		return err
	}
	x.XStateBV = bv
	le := binary.LittleEndian
	put32 := func(dst []byte, src []uint32, what string) error {
		if len(src)*4 > len(dst) {
			return fmt.Errorf("%s: %d words, room for %d", what, len(src), len(dst)/4)
		}
		for i, w := range src {
			le.PutUint32(dst[4*i:], w)
		}
		return nil
	}
	put64 := func(dst []byte, src []uint64, what string) error {
		if len(src)*8 > len(dst) {
			return fmt.Errorf("%s: %d words, room for %d", what, len(src), len(dst)/8)
		}
		for i, w := range src {
			le.PutUint64(dst[8*i:], w)
		}
		return nil
	}
	var pk [4]byte
	for _, err := range []error{
		put32(x.YMMH[:], ymmh, "ymmh_space"),
		put64(x.BndRegs[:], bndreg, "bndreg_state"),
		put64(x.BndCSR[:], bndcsr, "bndcsr_state"),
		put64(x.Opmask[:], opmask, "opmask_reg"),
		put64(x.ZMMHi256[:], zmmUpper, "zmm_upper"),
		put64(x.Hi16ZMM[:], hi16, "hi16_zmm"),
		put32(pk[:], pkru, "pkru"),
	} {
		if err != nil {
			return err
		}
	}
	x.PKRU = le.Uint32(pk[:])
	return nil
}

// threadSigmask is the signal mask th of t had at the dump: the leader's
// is in the task's core, another thread's in its thread core.
func threadSigmask(t *Task, th Thread) uint64 {
	if th.TID == t.PID {
		return th.Core.GetTc().GetBlkSigset()
	}
	return th.Core.GetThreadCore().GetBlkSigset()
}
