package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"runtime"
	"strings"
	"time"

	"github.com/spf13/pflag"
	"golang.org/x/sys/unix"

	"github.com/crest-restore/crest/bpf"
	"github.com/crest-restore/crest/restore"
	"github.com/crest-restore/crest/trace"
)

// verifyFlags are restore's flags for the kernel-side verification, and
// the hidden ones its tests use to break a restore on purpose.
type verifyFlags struct {
	mode         *verifyMode
	json         *bool
	faults       *string
	stageTimeout *time.Duration
	pinDir       *string
}

func addVerifyFlags(fs *pflag.FlagSet) verifyFlags {
	f := verifyFlags{mode: new(verifyMode)}
	fs.Var(f.mode, "verify", "watch the restore from the kernel (eBPF) and check it against the plan: pids, threads, "+
		"stages, namespaces; --verify=strict fails and rolls back a restore with any finding")
	fs.Lookup("verify").NoOptDefVal = "on"
	f.json = fs.Bool("json", false, "print the verification report as JSON on stdout (with --verify)")
	f.pinDir = fs.String("verify-pins", "", "keep the monitor's programs loaded between restores under `DIR`, on a BPF file system "+
		"(e.g. /sys/fs/bpf/crest): the next --verify skips loading them (about 2 ms instead of 25); crest check --unpin DIR removes them")
	f.faults = fs.String("fault", "", "break the restore on purpose (`NAME`[,NAME]: no-set-tid, no-wait, early-switch, drop-thread, wrong-ns, timens-by-launcher, no-cgroupns); for tests")
	f.stageTimeout = fs.Duration("stage-timeout", 0, "give up a stage after `DURATION` (default 10s); for tests")
	fs.MarkHidden("fault")
	fs.MarkHidden("stage-timeout")
	return f
}

// verifyOptions are the parsed verifyFlags.
type verifyOptions struct {
	mode         string // "", "on" or "strict"
	json         bool
	faults       restore.Fault
	stageTimeout time.Duration
	pinDir       string
}

// verifyMode is --verify's value: "" (off), "on" or "strict".
type verifyMode string

func (m *verifyMode) String() string { return string(*m) }

// Type is empty so that the help shows --verify[=on], not a type.
func (m *verifyMode) Type() string { return "" }

func (m *verifyMode) Set(s string) error {
	switch s {
	case "", "off", "false":
		*m = ""
	case "on", "true":
		*m = "on"
	case "strict":
		*m = "strict"
	default:
		return fmt.Errorf("%q: want --verify or --verify=strict", s)
	}
	return nil
}

func (f verifyFlags) parse() (verifyOptions, error) {
	o := verifyOptions{mode: string(*f.mode), json: *f.json, stageTimeout: *f.stageTimeout, pinDir: *f.pinDir}
	if o.json && o.mode == "" {
		return o, usagef("--json reports a verification: give --verify too")
	}
	if o.pinDir != "" && o.mode == "" {
		return o, usagef("--verify-pins keeps the monitor of --verify: give --verify too")
	}
	if *f.faults != "" {
		for _, name := range strings.Split(*f.faults, ",") {
			flt, err := restore.ParseFault(strings.TrimSpace(name))
			if err != nil {
				return o, usagef("--fault: %v", err)
			}
			o.faults |= flt
		}
	}
	return o, nil
}

// kernelCheck is the eBPF monitor watching one restore: opened while the
// plan is made (loading takes longer than planning a small tree), told by
// the engine where the stage futexes are, and asked for a verdict once the
// restore reached COMPLETE or FAIL.
//
// It is a restore.PrepareObserver for the Prepared event only; the stage
// events come from the kernel instead.
type kernelCheck struct {
	opts   verifyOptions
	opened chan struct{}
	mon    *bpf.Monitor
	err    error // from Open, Track or WatchFutexes

	prepared restore.PreparedEvent
	begin    uint64 // boot time the check started: evidence times are relative to it

	report  bpf.Report
	events  []bpf.Event
	checked bool
	level   int       // the restored pid namespace's level
	verifyT [2]uint64 // boot times of the verification, for the trace
}

// startKernelCheck opens the monitor in the background.
func startKernelCheck(opts verifyOptions) *kernelCheck {
	k := &kernelCheck{opts: opts, opened: make(chan struct{}), begin: trace.Boottime()}
	go func() {
		defer close(k.opened)
		k.mon, k.err = bpf.Open(bpf.Options{PinDir: opts.pinDir})
	}()
	return k
}

// ready waits for the monitor and has it watch this process (the engine)
// and, from then on, everything it forks.
func (k *kernelCheck) ready() error {
	<-k.opened
	if k.err != nil {
		if errors.Is(k.err, bpf.ErrNotSupported) {
			return fmt.Errorf("--verify: the kernel-side monitor can not run here (a restore without --verify does not need it): %w", k.err)
		}
		return fmt.Errorf("--verify: %w", k.err)
	}
	if err := k.mon.Track(os.Getpid()); err != nil {
		return fmt.Errorf("--verify: %w", err)
	}
	return nil
}

// Prepared learns where task_entries' futexes are, in the tasks and in the
// engine, and limits the monitor's futex events to them.
func (k *kernelCheck) Prepared(e restore.PreparedEvent) {
	k.prepared = e
	word := func(a uint64) bpf.Range { return bpf.Range{Lo: a, Hi: a + 4} }
	if err := k.mon.WatchFutexes(word(e.StartAddr), word(e.InProgressAddr),
		word(e.EngineStartAddr), word(e.EngineInProgressAddr)); err != nil && k.err == nil {
		k.err = err
	}
}

func (k *kernelCheck) StageSwitched(restore.StageEvent) {}
func (k *kernelCheck) TaskArrived(restore.ArrivalEvent) {}
func (k *kernelCheck) StepDone(restore.StepEvent)       {}

// close detaches the monitor; the events stay readable.
func (k *kernelCheck) close() {
	<-k.opened
	if k.mon != nil {
		k.mon.Close()
	}
}

// expect is the plan as the kernel should see it.
func (k *kernelCheck) expect(p *restore.Plan) (bpf.Expect, error) {
	level, err := pidNSLevel()
	if err != nil {
		return bpf.Expect{}, err
	}
	if p.NewPIDNS {
		level++
	}
	k.level = level
	var exp bpf.Expect
	for _, t := range p.Tasks {
		et := bpf.ExpectTask{PID: t.PID, NSLevel: level}
		if t.Parent != nil {
			et.ParentPID = t.Parent.PID
		}
		for _, th := range t.Threads {
			et.Threads = append(et.Threads, th.TID)
		}
		exp.Tasks = append(exp.Tasks, et)
	}
	for st := restore.StageRootTask; st <= restore.StageComplete; st++ {
		exp.Stages = append(exp.Stages, bpf.ExpectStage{Stage: int(st), Name: st.String(),
			Participants: k.prepared.Participants[st], TIDs: k.prepared.TIDs[st]})
	}
	exp.Barrier = bpf.Barrier{
		Start:      []uint64{k.prepared.StartAddr, k.prepared.EngineStartAddr},
		InProgress: []uint64{k.prepared.InProgressAddr, k.prepared.EngineInProgressAddr},
	}
	// No task calls setns but the root into a namespace it made itself
	// (exp.TreeNS.Made): the root is born in the tree's other namespaces
	// (clone3), which its tasks inherit, and exp.Namespaces stays empty
	// (another setns of a task is then a finding). The engine's visit to
	// them is exp.TreeNS.
	tree, err := treeNamespaces(p)
	if err != nil {
		return bpf.Expect{}, err
	}
	exp.TreeNS = tree
	return exp, nil
}

// rootNamespaces are the namespaces a plan may give the root besides the
// engine's, as the launcher clones it (restore/agent/c/main.c) from the
// plan's flags (restore/nsuts.go namespaceFlags, planfile.go): has says
// whether the plan does, and filled that the engine then joins it through
// the root's pidfd to fill it in PREPARE_NAMESPACES (restore/nsuts.go
// fillNamespaces) and goes back to its own. byRoot, when set, says that
// the root is born in the engine's namespace of the type instead and makes
// and enters a new one itself. A namespace type the engine learns to
// restore is one more line.
var rootNamespaces = []struct {
	flag   int
	has    func(p *restore.Plan) bool
	filled bool
	byRoot func(p *restore.Plan) bool
}{
	{unix.CLONE_NEWPID, func(p *restore.Plan) bool { return p.NewPIDNS }, false, nil},
	// restore/timens.go timeNamespace: clocks to go on from, on a kernel
	// with time namespaces; in a user namespace of the tree's own, the
	// root makes it there (timeOffsets.byRoot, agent fork.c root_time_ns)
	{unix.CLONE_NEWTIME, func(p *restore.Plan) bool { return p.Clocks != nil && haveTimeNS() }, false,
		func(p *restore.Plan) bool { return p.User != nil }},
	{unix.CLONE_NEWUTS, func(p *restore.Plan) bool { return p.UTS != nil }, true, nil},
	{unix.CLONE_NEWIPC, func(p *restore.Plan) bool { return p.IPC != nil }, true, nil},
	{unix.CLONE_NEWNET, func(p *restore.Plan) bool { return p.Net != nil }, true, nil},
	{unix.CLONE_NEWNS, func(p *restore.Plan) bool { return p.Mnt != nil }, true, nil},
	// restore/userns.go: its maps are written from outside, and the
	// tasks take their files from a holder process, not the engine
	{unix.CLONE_NEWUSER, func(p *restore.Plan) bool { return p.User != nil }, false, nil},
}

func haveTimeNS() bool {
	_, err := os.Stat("/proc/self/ns/time")
	return err == nil
}

// treeNamespaces is what plan p means for the namespaces the tree is born
// in, against the engine's own (read on one thread: a thread that could
// not go back to them has ended).
func treeNamespaces(p *restore.Plan) (*bpf.ExpectTreeNS, error) {
	runtime.LockOSThread()
	own, err := bpf.ReadNamespaces("/proc/thread-self")
	runtime.UnlockOSThread()
	if err != nil {
		return nil, fmt.Errorf("the engine's namespaces: %w", err)
	}
	tree := &bpf.ExpectTreeNS{EnginePID: os.Getpid(), Engine: own, Stage: int(restore.StagePrepareNamespaces)}
	for _, ns := range rootNamespaces {
		if ns.has(p) && ns.byRoot != nil && ns.byRoot(p) {
			tree.Made |= ns.flag
		} else if ns.has(p) {
			tree.New |= ns.flag
			if ns.filled {
				tree.Joined |= ns.flag
			}
		}
	}
	// restore/cgroupns.go: the root, born in the engine's cgroup
	// namespace, unshares the tree's own in its cgroups step (FORKING)
	// before it forks anything
	if p.Cgroups != nil && p.Cgroups.NS != nil {
		tree.Unshared |= unix.CLONE_NEWCGROUP
	}
	return tree, nil
}

// pidNSLevel is the level of crest's own pid namespace (0 for the
// initial one), from the NSpid line of /proc/self/status.
func pidNSLevel() (int, error) {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0, err
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) > 1 && f[0] == "NSpid:" {
			return len(f) - 2, nil
		}
	}
	return 0, errors.New("/proc/self/status has no NSpid line")
}

// conclude verifies the restore that Start ended with (r, restoreErr),
// prints the verdict and the findings, and detaches the monitor. Under
// --verify=strict a finding rolls the restore back: the tree is killed
// and gone before conclude returns, and the error says why.
func (k *kernelCheck) conclude(env *env, p *restore.Plan, r *restore.Restore, restoreErr error) (*restore.Restore, error) {
	k.verifyT[0] = trace.Boottime()
	err := k.verify(p)
	k.close()
	k.verifyT[1] = trace.Boottime()
	if k.mon != nil {
		t := k.mon.Timing()
		env.log.Info("monitor", "load", t.Load, "attach", t.Attach, "detach", t.Detach)
	}
	if err != nil {
		// No verdict: under strict the restore can not stand; else it
		// goes on, unverified, and says so.
		err = fmt.Errorf("--verify: no verdict: %w", err)
		if k.opts.mode != "strict" {
			fmt.Fprintf(env.stderr, "crest restore: %v\n", err)
			return r, restoreErr
		}
		if r != nil {
			if aerr := r.Abort(); aerr != nil {
				err = errors.Join(err, fmt.Errorf("rolling back: %w", aerr))
			}
			r = nil
		}
		return nil, errors.Join(restoreErr, err)
	}
	if perr := k.print(env, restoreErr); perr != nil {
		env.log.Warn("verification report not printed", "err", perr)
	}
	if k.opts.mode == "strict" && !k.report.OK {
		serr := fmt.Errorf("verification failed (--verify=strict): %s", k.report.Verdict)
		if r != nil {
			if aerr := r.Abort(); aerr != nil {
				serr = errors.Join(serr, fmt.Errorf("rolling back: %w", aerr))
			} else {
				serr = fmt.Errorf("%w; the restored tree was killed", serr)
			}
			r = nil
		}
		return nil, errors.Join(restoreErr, serr)
	}
	return r, restoreErr
}

func (k *kernelCheck) verify(p *restore.Plan) error {
	if k.err != nil {
		return k.err
	}
	exp, err := k.expect(p)
	if err != nil {
		return err
	}
	rep, err := k.mon.Verify(exp)
	if err != nil {
		return err
	}
	k.report, k.events, k.checked = rep, k.mon.Events(), true
	return nil
}

// verifyJSON is --json's output: the report, what the monitor cost, and
// how the restore itself ended.
type verifyJSON struct {
	bpf.Report
	Findings     []jsonFinding `json:"findings"` // the report's, with During
	Strict       bool          `json:"strict"`
	Monitor      bpf.Timing    `json:"monitor"`
	RestoreError string        `json:"restore_error,omitempty"`
}

// jsonFinding is a finding with the stage that was open when its last
// evidence happened, for the findings that do not name a stage (pids and
// threads are made in FORKING and RESTORE).
type jsonFinding struct {
	bpf.Finding
	During string `json:"during,omitempty"`
}

// print writes the verdict and each finding with its evidence, or the
// report as JSON.
func (k *kernelCheck) print(env *env, restoreErr error) error {
	if k.opts.json {
		out := verifyJSON{Report: k.report, Findings: []jsonFinding{}, Strict: k.opts.mode == "strict", Monitor: k.mon.Timing()}
		for _, f := range k.report.Findings {
			out.Findings = append(out.Findings, jsonFinding{f, k.during(f)})
		}
		if restoreErr != nil {
			out.RestoreError = restoreErr.Error()
		}
		b, err := json.Marshal(out)
		if err != nil {
			return err
		}
		_, err = env.stdout.Write(append(b, '\n'))
		return err
	}
	var b bytes.Buffer
	verdict := "ok"
	if !k.report.OK {
		verdict = "FAILED"
	}
	fmt.Fprintf(&b, "verify: %s: %s\n", verdict, k.report.Verdict)
	for _, f := range k.report.Findings {
		fmt.Fprintf(&b, "verify: %s\n", describeFinding(f, k.during(f)))
		for _, e := range f.Evidence {
			fmt.Fprintf(&b, "    %s\n", describeEvent(e, k.begin, f.Check == "namespace"))
		}
	}
	_, err := env.stdout.Write(b.Bytes())
	return err
}

// during names the stage that was open when the last evidence of f
// happened, for a finding that names no stage itself.
func (k *kernelCheck) during(f bpf.Finding) string {
	if f.Stage != "" || len(f.Evidence) == 0 {
		return ""
	}
	var last uint64
	for _, e := range f.Evidence {
		last = max(last, e.Head().Time)
	}
	return k.stageAt(last)
}

// stageAt names the stage the engine had opened at boot time t: the last
// store of start (FUTEX_WAKE_OP SET on it) the monitor saw before t.
func (k *kernelCheck) stageAt(t uint64) string {
	name := ""
	for _, e := range k.events {
		f, ok := e.(*bpf.FutexEvent)
		if !ok || f.Time > t {
			continue
		}
		if f.Cmd() != bpf.FutexWakeOp || (f.Addr2 != k.prepared.StartAddr && f.Addr2 != k.prepared.EngineStartAddr) || f.Val3>>28&7 != 0 {
			continue
		}
		name = restore.Stage(int32(f.Val3>>12&0xfff) << 20 >> 20).String()
	}
	return name
}

// describeFinding says what check failed, for whom and in which stage.
func describeFinding(f bpf.Finding, during string) string {
	var who []string
	if f.PID != 0 {
		who = append(who, fmt.Sprintf("task %d", f.PID))
	}
	if f.TID != 0 && f.TID != f.PID {
		who = append(who, fmt.Sprintf("thread %d", f.TID))
	}
	if f.Stage != "" {
		who = append(who, "stage "+f.Stage)
	} else if during != "" {
		who = append(who, "during "+during)
	}
	s := f.Check + " finding: " + f.Message
	if len(who) > 0 {
		s += " [" + strings.Join(who, ", ") + "]"
	}
	return s
}

// describeEvent is one line of evidence: when (since the check began),
// who (global pid/tid) and what the kernel saw; with ns, a fork's child's
// namespaces too.
func describeEvent(e bpf.Event, begin uint64, ns bool) string {
	h := e.Head()
	at := fmt.Sprintf("%+9.3fms", float64(int64(h.Time-begin))/1e6)
	who := fmt.Sprintf("pid %d tid %d", h.PID, h.TID)
	ret := func(r bpf.Return) string {
		if !r.Returned {
			return " (no return seen)"
		}
		return fmt.Sprintf(" = %d (%.3fms)", r.Ret, float64(r.Exit-h.Time)/1e6)
	}
	switch e := e.(type) {
	case *bpf.Clone3Event:
		return fmt.Sprintf("%s %s: clone3(flags %#x, set_tid %v)%s", at, who, e.Flags, e.SetTID, ret(e.Return))
	case *bpf.CloneEvent:
		return fmt.Sprintf("%s %s: clone(flags %#x)%s", at, who, e.Flags, ret(e.Return))
	case *bpf.ForkEvent:
		what := "fork"
		if e.Thread() {
			what = "new thread"
		}
		s := fmt.Sprintf("%s %s: %s: child pid by level %v tid by level %v, parent by level %v",
			at, who, what, e.ChildPIDs, e.ChildTIDs, e.RealParentPIDs)
		if ns {
			s += ", in namespaces " + e.ChildNS.String()
		}
		return s
	case *bpf.FutexEvent:
		word := ""
		if e.WordOK {
			word = fmt.Sprintf(", word %d", int32(e.Word))
		}
		if e.WordAtExitOK {
			word += fmt.Sprintf(" -> %d", int32(e.WordAtExit))
		}
		return fmt.Sprintf("%s %s: futex(%#x, %s%s)%s", at, who, e.Addr, futexOpString(e), word, ret(e.Return))
	case *bpf.SetnsEvent:
		target := fmt.Sprintf("into inode %d", e.Inode)
		switch {
		case !e.Resolved:
			target = "(fd not open)"
		case e.FSMagic == unix.PID_FS_MAGIC:
			target = "on a pidfd"
		case e.FSMagic != unix.NSFS_MAGIC:
			target = fmt.Sprintf("on inode %d of fs magic %#x", e.Inode, e.FSMagic)
		}
		s := fmt.Sprintf("%s %s: setns(fd %d, nstype %#x) %s%s", at, who, e.FD, e.NSType, target, ret(e.Return))
		if e.Returned {
			s += ", then in namespaces " + e.After.String()
		}
		return s
	case *bpf.ExitEvent:
		what := "thread exit"
		if e.GroupDead {
			what = "process exit"
		}
		return fmt.Sprintf("%s %s: %s, code %#x", at, who, what, e.ExitCode)
	}
	return fmt.Sprintf("%s %s: %s", at, who, h.Kind)
}

func futexOpString(e *bpf.FutexEvent) string {
	switch e.Cmd() {
	case bpf.FutexWait:
		return fmt.Sprintf("WAIT, %d", int32(e.Val))
	case bpf.FutexWake:
		return fmt.Sprintf("WAKE, %d", int32(e.Val))
	case bpf.FutexWakeOp:
		// val3 = op<<28 | cmp<<24 | oparg<<12 | cmparg (futex(2))
		op := [...]string{"SET", "ADD", "OR", "ANDN", "XOR", "op5", "op6", "op7"}[e.Val3>>28&7]
		oparg := int32(e.Val3>>12&0xfff) << 20 >> 20
		return fmt.Sprintf("WAKE_OP %#x %s %d", e.Addr2, op, oparg)
	}
	return fmt.Sprintf("op %d", e.Op)
}

// annotate puts the verdict on the trace's root span, the monitor's events
// on the tasks' spans, and the verification as a phase.
func (k *kernelCheck) annotate(rec *trace.Record) {
	if k == nil || !k.checked {
		return
	}
	detail := k.report.Verdict
	if len(k.report.Findings) > 0 {
		detail = describeFinding(k.report.Findings[0], k.during(k.report.Findings[0]))
	}
	rec.Verdict = trace.Verdict{Checked: true, OK: k.report.OK, Detail: detail}
	rec.Phases = append(rec.Phases, trace.Phase{Name: "verify", Begin: k.verifyT[0], End: k.verifyT[1]})

	// Image ids of the threads the restore created, by global tid.
	level := k.level
	type ids struct{ pid, tid int }
	image := map[int]ids{}
	for _, e := range k.events {
		if f, ok := e.(*bpf.ForkEvent); ok && level >= 0 && len(f.ChildTIDs) > level {
			image[f.ChildTID] = ids{f.ChildPIDs[level], f.ChildTIDs[level]}
		}
	}
	for _, e := range k.events {
		h := e.Head()
		var ke trace.KernelEvent
		switch e := e.(type) {
		case *bpf.Clone3Event:
			set := make([]int, len(e.SetTID))
			for i, v := range e.SetTID {
				set[i] = int(v)
			}
			ke = trace.Clone3(h.PID, h.TID, h.Time, e.Exit, e.Flags, set, e.Ret)
		case *bpf.SetnsEvent:
			ke = trace.Setns(h.PID, h.TID, h.Time, e.Exit, e.NSType, e.Inode, e.Ret)
		case *bpf.FutexEvent:
			ke = trace.Futex(h.PID, h.TID, h.Time, e.Exit, e.Op, e.Addr, e.Val, e.Ret)
		case *bpf.ForkEvent:
			ke = trace.Fork(h.PID, h.TID, h.Time, e.ChildTIDs, e.Thread())
		case *bpf.ExitEvent:
			ke = trace.Exit(h.PID, h.TID, h.Time, e.ExitCode)
		default:
			continue
		}
		if id, ok := image[h.TID]; ok {
			ke.PID, ke.TID = id.pid, id.tid
		}
		rec.Kernel = append(rec.Kernel, ke)
	}
}

// observerList fans the engine's events out to several observers (the
// engine takes one), including Prepared for those that want it.
type observerList []restore.Observer

func (o observerList) StageSwitched(e restore.StageEvent) {
	for _, x := range o {
		x.StageSwitched(e)
	}
}

func (o observerList) TaskArrived(e restore.ArrivalEvent) {
	for _, x := range o {
		x.TaskArrived(e)
	}
}

func (o observerList) StepDone(e restore.StepEvent) {
	for _, x := range o {
		x.StepDone(e)
	}
}

func (o observerList) Prepared(e restore.PreparedEvent) {
	for _, x := range o {
		if p, ok := x.(restore.PrepareObserver); ok {
			p.Prepared(e)
		}
	}
}

// observer returns what to give restore.Options.Observer: nil for none.
func (o observerList) observer() restore.Observer {
	if len(o) == 0 {
		return nil
	}
	return o
}
