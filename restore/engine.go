package restore

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"syscall"
	"time"
	"unsafe"

	"github.com/crest-restore/crest/restore/agent"
)

// Options tune a restore.
type Options struct {
	// Until is the last stage to run: once all its participants have
	// arrived, Start returns with the tasks parked at its barrier. The
	// zero value runs to COMPLETE, so a restore can not be parked at
	// ROOT_TASK (CRIU's value 0): PREPARE_NAMESPACES is the first stop.
	// Tests use it to look at a tree half-way; Abort then removes it.
	Until Stage
	// StageTimeout bounds each stage (default 10s): a task that dies
	// without recording a failure is noticed this way.
	StageTimeout time.Duration
	// Observer, if set, receives the restore's events besides the
	// Timeline.
	Observer Observer
	// Log receives debug records; nil logs nothing.
	Log *slog.Logger
	// Faults break the restore on purpose (faults.go), for the
	// monitor's tests only.
	Faults Fault
	// KeepArea leaves the crest area mapped in the restored tasks
	// instead of removing it with ptrace (finish.go): for callers that
	// trace the tasks themselves. Finishing also stops the tasks that
	// were stopped at the dump (Task.StopSignal), or all with
	// LeaveStopped: with KeepArea that is the caller's to do.
	KeepArea bool
	// LeaveStopped leaves every task of the restored tree stopped by
	// SIGSTOP, as criu restore --leave-stopped does: to look at the tree
	// (attach a debugger, read /proc) before it runs on with a SIGCONT.
	LeaveStopped bool
	// TCPEstablished restores established TCP connections, as criu
	// restore --tcp-established (tcpest.go). Planning reads it
	// (NewPlan): without it an image set with one is refused.
	TCPEstablished bool
	// ShellJob restores a job dumped with --shell-job, as criu restore
	// --shell-job does: the session (and group) that were its shell's
	// become crest's, its files on the shell's terminal are on crest's
	// (its stdin), and the job is put in that terminal's foreground
	// (tty.go). Planning reads it (NewPlan): without it such an image
	// set is refused.
	ShellJob bool
	// VethPairs name the outside ends of the veths of the tree's net
	// namespace, as criu restore --veth-pair IN=OUT[@BRIDGE] does
	// (netveth.go); a veth without one gets a name the kernel makes.
	VethPairs []VethPair
}

// Restore is a restore in progress, or a restored tree.
type Restore struct {
	plan     *Plan
	opts     Options
	log      *slog.Logger
	shared   *sharedArea
	area     area
	files    *prepared
	obs      observers
	timeline Timeline
	stage    Stage // the last stage switched to

	rootPID   int // in the engine's pid namespace
	rootPidfd int
	hostPIDs  map[int]int     // image pid -> pid in the engine's namespace
	launched  []*os.File      // the engine's copies of the launcher's files (launch.go)
	threads   map[*Task][]int // host tids of every thread, for finishing (listThreads)

	launcher       *exec.Cmd // until reaped (reapLauncher)
	launcherPidfd  int
	launcherStderr *os.File
	stepsSeen      []uint32         // per slot, bit per step already published
	timeOffsets    *timeOffsets     // of the tree's time namespace, nil for none
	stopSent       map[*Task]uint64 // when finishing sent a stopped task its signal
	stopSteps      []StepEvent      // the "stop" step of each, for COMPLETE
	inherited      inheritedRlimits
	terminal       *shellTerminal // what a shell job changed on crest's terminal (tty.go)
	holder         *fileHolder    // shares the engine's files with a tree in a user namespace (userns.go)
	sight          *procSight     // a proc in sight for each proc the tree's mount namespace needs (userns.go)
	cgroups        *cgroupRun     // the cgroups the restore made (cgroup.go)
	veths          *vethRun       // the veth pairs the restore made (netveth.go)
	closed         bool
}

// Start restores the tree of p: it launches the agent, which forks the
// tasks, and drives the stages up to opts.Until (COMPLETE by default). On
// any failure it rolls back (FAIL, kill the tree, wait until every task is
// gone) and returns a *StageError.
func Start(ctx context.Context, p *Plan, opts Options) (*Restore, error) {
	if opts.Until == 0 {
		opts.Until = StageComplete
	}
	if opts.StageTimeout == 0 {
		opts.StageTimeout = 10 * time.Second
	}
	r := &Restore{plan: p, opts: opts, log: opts.Log, rootPidfd: -1, launcherPidfd: -1, hostPIDs: map[int]int{},
		stepsSeen: make([]uint32, p.nrSlots())}
	r.inherited = readInheritedRlimits(maxRlimits(p))
	calibrateBoottime() // anew: the machine may have slept since the last restore
	if r.log == nil {
		r.log = slog.New(slog.DiscardHandler)
	}
	r.obs = observers{&r.timeline}
	if opts.Observer != nil {
		r.obs = append(r.obs, opts.Observer)
	}
	if err := r.run(ctx); err != nil {
		if rerr := r.rollback(); rerr != nil {
			err = errors.Join(err, rerr)
		}
		r.giveBackTerminal()
		r.release()
		return nil, err
	}
	return r, nil
}

// maxRlimits is the most limits any task of p has.
func maxRlimits(p *Plan) int {
	n := 0
	for _, t := range p.Tasks {
		n = max(n, len(t.Rlimits))
	}
	return n
}

// Timeline returns what happened so far.
func (r *Restore) Timeline() *Timeline { return &r.timeline }

// RootPID returns the root task's pid in the engine's pid namespace.
func (r *Restore) RootPID() int { return r.rootPID }

// HostPID returns the pid, in the engine's pid namespace, of the task with
// image pid, or 0 when it is not known (the tree is learnt after FORKING)
// or gone (a helper, once RESTORE_SIGCHLD is over).
func (r *Restore) HostPID(pid int) int { return r.hostPIDs[pid] }

// Abort kills the tree of a restore, parked (Options.Until) or restored,
// and waits until every one of its tasks is gone.
func (r *Restore) Abort() error {
	if r.closed {
		return nil
	}
	err := r.rollback()
	r.release()
	return err
}

// Wait waits for the root task to exit, reaps it and returns its status;
// the tree is then gone (the root is its pid namespace's init). When ctx
// ends first, Wait returns its error and the tree runs on.
func (r *Restore) Wait(ctx context.Context) (syscall.WaitStatus, error) {
	if r.closed {
		return 0, errors.New("restore: Wait after Detach, Wait or Abort")
	}
	for {
		how, err := exited(r.rootPidfd)
		if err != nil {
			return 0, err
		}
		if how != "" {
			break
		}
		if err := pollReadable(ctx, r.rootPidfd); err != nil {
			return 0, err
		}
	}
	var ws syscall.WaitStatus
	for {
		_, err := syscall.Wait4(r.rootPID, &ws, syscall.WALL, nil)
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return 0, os.NewSyscallError("wait4", err)
		}
		r.rootPID = 0
		r.release()
		return ws, nil
	}
}

// Detach lets the restored tree run on without the engine.
func (r *Restore) Detach() { r.release() }

func (r *Restore) run(ctx context.Context) error {
	p := r.plan
	// the wait of the first cgroup move, begun early (cgroup.go)
	r.warmCgroupMoves()
	r.awaitReaped(ctx) // pidinuse.go
	if err := checkVDSO(p); err != nil {
		return &StageError{Stage: StageRootTask, Step: "check vdso", Err: err}
	}
	shared, err := newSharedArea(p)
	if err != nil {
		return &StageError{Stage: StageRootTask, Step: "shared area", Err: err}
	}
	r.shared = shared
	// root_prepare_shared: the files every task will take.
	r.files, err = prepareFiles(p)
	if err == nil {
		err = r.files.reserveCgroupFiles(p) // cgroup.go: opened in PREPARE_NAMESPACES
	}
	if err != nil {
		return &StageError{Stage: StageRootTask, Step: "prepare files", Err: err}
	}
	// half-closed connections get their FINs once every socket exists
	// (in PREPARE_NAMESPACES when they are made in the tree's net
	// namespace: netns_fill.go)
	if r.files.net == nil {
		if err := p.tcpFinish(r.files); err != nil { // tcphalf.go
			return &StageError{Stage: StageRootTask, Step: "tcp half-closed", Err: err}
		}
	}
	if err := r.takeTerminal(); err != nil { // tty.go
		return &StageError{Stage: StageRootTask, Step: "terminal", Err: err}
	}
	imageSize, err := agent.ImageSize()
	if err != nil {
		return &StageError{Stage: StageRootTask, Step: "plan", Err: err}
	}
	layout := layoutPlan(p, r.files, r.opts)
	a, err := chooseArea(p, shared.sizeBytes(), uint64(layout.size), imageSize)
	if err != nil {
		return &StageError{Stage: StageRootTask, Step: "crest area", Err: err}
	}
	r.area = a
	// What the launcher inherits ignored through execve: it resets
	// only these, not every signal.
	sigIgnored, err := ignoredSignals()
	if err != nil {
		return &StageError{Stage: StageRootTask, Step: "plan", Err: err}
	}
	r.timeOffsets, err = timeNamespace(p)
	if err == nil && r.timeOffsets != nil && r.opts.Faults&FaultTimeNSByLauncher != 0 {
		r.timeOffsets.byRoot = false // faults.go
	}
	if err != nil {
		return &StageError{Stage: StageRootTask, Step: "time namespace", Err: err}
	}
	planBytes, err := encodePlan(p, r.files, layout, a, r.opts, sigIgnored, r.timeOffsets)
	if pe := (*PlanError)(nil); errors.As(err, &pe) {
		return &StageError{Stage: StageRootTask, Err: err} // it says "plan: task N: FILE: ..."
	}
	if err != nil {
		return &StageError{Stage: StageRootTask, Step: "plan", Err: err}
	}
	r.log.Debug("crest area", "start", fmt.Sprintf("%#x", a.Start), "size", a.Size, "plan", len(planBytes))

	if po, ok := r.opts.Observer.(PrepareObserver); ok {
		ev := PreparedEvent{
			StartAddr:      a.SharedAddr + uint64(unsafe.Offsetof(agent.TaskEntries{}.Start)),
			InProgressAddr: a.SharedAddr + uint64(unsafe.Offsetof(agent.TaskEntries{}.NrInProgress)),
			Participants:   map[Stage]int{},
			TIDs:           map[Stage][]int{},
		}
		ev.EngineStartAddr, ev.EngineInProgressAddr = shared.addrs()
		for st := StageRootTask; st <= StageComplete; st++ {
			ev.Participants[st] = r.barrierParticipants(st)
			if ev.Participants[st] == 0 {
				continue
			}
			for _, pt := range p.participants(st) {
				ev.TIDs[st] = append(ev.TIDs[st], pt.tid)
			}
		}
		po.Prepared(ev)
	}

	if err := r.launch(planBytes); err != nil {
		return err
	}
	return r.runStages(ctx, StageRootTask, r.opts.Until)
}

// Continue drives a restore that Start left parked (Options.Until) on to
// stage until (COMPLETE when zero). On failure it rolls back as Start does.
func (r *Restore) Continue(ctx context.Context, until Stage) error {
	if until == 0 {
		until = StageComplete
	}
	if r.closed || r.stage >= until {
		return fmt.Errorf("restore: nothing to continue from stage %v to %v", r.stage, until)
	}
	err := r.advance()
	if err == nil {
		err = r.runStages(ctx, r.stage, until)
	}
	if err != nil {
		if rerr := r.rollback(); rerr != nil {
			err = errors.Join(err, rerr)
		}
		r.giveBackTerminal()
		r.release()
	}
	return err
}

// runStages waits for stage from (already switched to) and drives the
// following ones up to until.
func (r *Restore) runStages(ctx context.Context, from, until Stage) error {
	for st := from; ; st++ {
		if st == StageRestoreCreds && !r.opts.KeepArea {
			// finishing needs every thread's host tid: learnt while
			// the tasks restore their credentials
			threads, err := r.listThreads()
			if err != nil {
				if r.shared.stage() == StageFail {
					return r.failure()
				}
				return &StageError{Stage: st, Step: "list threads", Err: err}
			}
			r.threads = threads
		}
		if err := r.waitStage(ctx, st); err != nil {
			return err
		}
		switch st {
		case StageRootTask:
			if err := r.learnRoot(); err != nil {
				return &StageError{Stage: st, Err: err}
			}
			if r.rootPidfd < 0 {
				return &StageError{Stage: st, Err: errors.New("the root arrived, but task_entries has no pid of it")}
			}
			// the root waits in its new user namespace for its maps
			if err := r.prepareUserNS(); err != nil { // userns.go
				return err
			}
		case StagePrepareNamespaces:
			// the root waits at the barrier in its new UTS and IPC
			// namespaces, which the engine fills before it forks
			if err := r.prepareNamespaces(); err != nil {
				return err
			}
			if err := r.prepareCgroups(); err != nil { // cgroup.go: made, the root in its own
				return err
			}
		case StageForking:
			// every task exists, none has taken its files yet
			if err := r.openProcFiles(); err != nil { // procfiles.go
				return &StageError{Stage: st, Step: "proc files", Err: err}
			}
			// The tasks restore their memory while the engine learns
			// their host pids: nothing in RESTORE waits for those. What
			// FORKING did is taken before the switch and told after,
			// with the host pids, ahead of the switch itself, so that
			// observers see the usual order.
			if st != until {
				steps, arrivals := r.collect(st)
				ev, err := r.switchQuietly(st + 1)
				if err != nil {
					return &StageError{Stage: st + 1, Err: err}
				}
				treeErr := r.learnTree()
				// the launcher lingers after it forked the root:
				// ended here, not between two stages
				r.reapLauncher()
				r.emit(steps, arrivals)
				r.obs.StageSwitched(ev)
				if treeErr != nil {
					if r.shared.stage() == StageFail {
						// a task failed in RESTORE meanwhile, and
						// the tree is going: that is the error
						return r.failure()
					}
					return &StageError{Stage: st, Err: treeErr}
				}
				continue
			}
			if err := r.learnTree(); err != nil {
				return &StageError{Stage: st, Err: err}
			}
		case StageRestore:
			// threads into their cgroups, and the limits of the cgroups
			// made, now that memory and forks are done (cgroup.go)
			if err := r.cgroupsAfterRestore(); err != nil {
				return err
			}
			// every thread exists and has its files now (fown.go)
			if err := r.setOwners(); err != nil {
				return &StageError{Stage: st, Step: "file owners", Err: err}
			}
			if err := r.foregroundJob(); err != nil { // tty.go
				return &StageError{Stage: st, Step: "terminal", Err: err}
			}
			skipped, err := r.setRlimits()
			if err != nil {
				return &StageError{Stage: st, Step: "rlimits", Err: err}
			}
			for _, s := range skipped {
				r.log.Warn("rlimit not restored", "why", s)
			}
			skipped, err = r.setOOMScoreAdj()
			if err != nil {
				return &StageError{Stage: st, Step: "oom_score_adj", Err: err}
			}
			for _, s := range skipped {
				r.log.Warn("oom_score_adj not restored", "why", s)
			}
		case StageRestoreSigchld:
			// Every parent has reaped its helpers: their host pids are
			// free for any process of the host now.
			for _, t := range r.plan.Tasks {
				if t.Kind == TaskHelper {
					delete(r.hostPIDs, t.PID)
				}
			}
			// every task holds its sockets: CRIU's network lock
			// goes (netlock.go), then connections leave repair
			// mode before the tree runs (tcpest.go), as in CRIU
			r.unlockNetwork(ctx)
			if err := r.tcpRepairOff(); err != nil {
				return &StageError{Stage: st, Step: "tcp repair off", Err: err}
			}
		}
		r.publish(st)
		if st == until || st == StageComplete {
			if st == StageComplete {
				r.removeLinkRemaps() // ghost.go
			}
			if st >= StageRestore {
				// Every task has taken its files (in RESTORE): the
				// engine's copies go, out of the stages' way.
				r.files.close()
			}
			r.closeLaunched()
			return nil
		}
		if err := r.advance(); err != nil {
			return err
		}
	}
}

// advance switches to the stage after the current one; COMPLETE goes
// through finish, which switches with every thread seized, and then waits
// until the tasks stopped at the dump are stopped again.
func (r *Restore) advance() error {
	next := r.stage + 1
	if next == StageComplete && !r.opts.KeepArea {
		// finish waits for any child: the launcher must not be one
		r.reapLauncher()
		if err := r.finish(); err != nil {
			return &StageError{Stage: next, Step: "finish", Err: err}
		}
		return r.waitStopped()
	}
	if err := r.switchTo(next); err != nil {
		return &StageError{Stage: next, Err: err}
	}
	return nil
}

func (r *Restore) switchTo(st Stage) error {
	ev, err := r.switchQuietly(st)
	r.obs.StageSwitched(ev)
	return err
}

// barrierParticipants is how many count out of st at the barrier: the
// plan's, but none at COMPLETE when the engine finishes the restore, as
// in CRIU: it sees each thread's rt_sigreturn itself (finish.go).
func (r *Restore) barrierParticipants(st Stage) int {
	if st == StageComplete && !r.opts.KeepArea {
		return 0
	}
	return r.plan.Participants(st)
}

// switchQuietly switches to st and returns the event, for the caller to
// tell the observers.
func (r *Restore) switchQuietly(st Stage) (StageEvent, error) {
	n := r.barrierParticipants(st)
	r.stage = st
	ev := StageEvent{Stage: st, Participants: n, At: boottime()}
	r.log.Debug("stage", "stage", st, "participants", n)
	return ev, r.shared.switchTo(st, n)
}

// waitStage waits until every participant of st has arrived, a task
// switched to FAIL, the root died, ctx ended or the stage timed out.
func (r *Restore) waitStage(ctx context.Context, st Stage) error {
	deadline := time.Now().Add(r.opts.StageTimeout)
	for pass := 0; ; pass++ {
		if r.shared.stage() == StageFail {
			return r.failure()
		}
		n := r.shared.remaining()
		if n == 0 {
			return nil
		}
		if int32(n) < 0 {
			// more arrivals than participants: only a fault does that
			if r.opts.Faults != 0 {
				return nil
			}
			return &StageError{Stage: st, Err: fmt.Errorf("%d more arrivals than the %d participants", -int32(n), r.barrierParticipants(st))}
		}
		if n == 1 && st == StageRestoreSigchld && r.opts.Faults&FaultEarlySwitch != 0 {
			return nil // the fault: switch with one arrival missing
		}
		if err := ctx.Err(); err != nil {
			return &StageError{Stage: st, Err: err}
		}
		// Whether the root still lives is asked only once a wait ended
		// without the stage done: a stage's first wait is the common
		// case, and waitid is one more system call between stages.
		if pass > 0 {
			if err := r.rootAlive(st); err != nil {
				return err
			}
		}
		if time.Now().After(deadline) {
			return &StageError{Stage: st, Err: fmt.Errorf("timed out after %v with %d of %d participants missing",
				r.opts.StageTimeout, n, r.barrierParticipants(st))}
		}
		wait := 50 * time.Millisecond
		if st == StageRestoreSigchld && r.opts.Faults&FaultEarlySwitch != 0 {
			// The fault: the last thread arrives 20 ms late, and only
			// the last arrival wakes the engine; poll to catch it missing.
			wait = time.Millisecond
		}
		if err := futexWaitTimeout(r.shared.inProgress(), n, int64(wait)); err != nil {
			return &StageError{Stage: st, Err: err}
		}
	}
}

// rootAlive returns nil while the root task lives; once it ended, the
// failure the tasks recorded if they stored FAIL, else how it ended.
func (r *Restore) rootAlive(st Stage) error {
	if r.rootPidfd < 0 {
		if err := r.launcherAlive(st); err != nil {
			return err
		}
		if err := r.learnRoot(); err != nil || r.rootPidfd < 0 {
			return err
		}
	}
	how, err := exited(r.rootPidfd)
	if err == nil && how == "" {
		return nil
	}
	if r.shared.stage() == StageFail {
		return r.failure()
	}
	if err == nil {
		err = fmt.Errorf("the root task (pid %d) ended: %s", r.rootPID, how)
	}
	return &StageError{Stage: st, Err: err}
}

// failure returns the failure the tasks recorded, once FAIL is stored.
func (r *Restore) failure() error {
	// The first failing task claims the record, then fills it: give it a
	// moment if FAIL came first from another task.
	for i := 0; i < 100 && r.shared.failState() == 1; i++ {
		time.Sleep(time.Millisecond)
	}
	if r.shared.failState() != 2 {
		return &StageError{Stage: r.stage, Err: errors.New("a task stored FAIL without a failure record")}
	}
	f := r.shared.te.Fail
	e := &StageError{Stage: Stage(f.Stage), PID: int(f.PID), Step: StepName(int(f.Step))}
	if f.Err < 0 {
		e.Errno = syscall.Errno(-f.Err)
	}
	if f.Step == agent.StepCgroups {
		r.plan.Cgroups.explainEnter(e) // cgroup.go
	}
	if e.Stage == StageRootTask && f.Step == agent.StepFork && e.Errno == syscall.EEXIST {
		// The launcher's fork of the root found the root's pid taken in
		// crest's pid namespace; it records that as the root's failure
		// (main.c). A task's fork of its children fails in FORKING and
		// is the parent's failure.
		e.Err, e.Errno = &PIDInUseError{PID: int(f.PID), Holders: pidHolders(int(f.PID))}, 0
	}
	// The failing thread's id is in the record; report its task.
	for _, t := range r.plan.Tasks {
		for _, th := range t.Threads {
			if th.TID == e.PID {
				s := r.shared.slot(th.Slot)
				e.PID = t.PID
				if th.TID != t.PID {
					e.TID = th.TID
				}
				if int(f.Step) < agent.NrSteps {
					r.obs.StepDone(StepEvent{PID: t.PID, TID: th.TID, Step: e.Step, Stage: e.Stage,
						Begin: s.StepBeginNs[f.Step], Errno: int(e.Errno)})
				}
				return e
			}
		}
	}
	return e
}

// publish emits the arrivals at st and the steps done so far; with
// ROOT_TASK, what the engine prepared for each task (prepare.go).
func (r *Restore) publish(st Stage) {
	if st == StageRootTask && r.files != nil {
		for _, e := range r.files.steps {
			r.obs.StepDone(e)
		}
	}
	if st == StageComplete {
		for _, e := range r.stopSteps {
			r.obs.StepDone(e)
		}
	}
	r.emit(r.collect(st))
}

// collect takes the arrivals at st and the steps done so far from the
// slots, each step once.
func (r *Restore) collect(st Stage) (steps []StepEvent, arrivals []ArrivalEvent) {
	for _, pt := range r.plan.participants(st) {
		s := r.shared.slot(pt.slot)
		for step := 1; step < agent.NrSteps; step++ {
			bit := uint32(1) << step
			if s.StepEndNs[step] == 0 || r.stepsSeen[pt.slot]&bit != 0 {
				continue
			}
			r.stepsSeen[pt.slot] |= bit
			steps = append(steps, StepEvent{PID: pt.task.PID, TID: pt.tid, Step: StepName(step), Stage: st,
				Begin: s.StepBeginNs[step], End: s.StepEndNs[step], Succeeded: true})
		}
		arrivals = append(arrivals, ArrivalEvent{Stage: st, PID: pt.task.PID, TID: pt.tid, At: s.ArriveNs[st]})
	}
	return steps, arrivals
}

// emit tells the observers what collect took, each thread's steps before
// its arrival, with the host pids known by now.
func (r *Restore) emit(steps []StepEvent, arrivals []ArrivalEvent) {
	for _, a := range arrivals {
		for _, e := range steps {
			if e.PID == a.PID && e.TID == a.TID {
				r.obs.StepDone(e)
			}
		}
		a.HostPID = r.hostPIDs[a.PID]
		r.obs.TaskArrived(a)
	}
}
