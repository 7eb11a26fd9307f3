package dump

import (
	"errors"
	"fmt"

	criu_core "github.com/checkpoint-restore/go-criu/v8/crit/images/criu-core"
	"google.golang.org/protobuf/proto"

	"github.com/crest-restore/crest/images"
	"github.com/crest-restore/crest/internal/procfs"
)

// Zombies, dumped as CRIU 4.2 does (criu/cr-dump.c, dump_zombies): a
// child that ended and that its parent has not waited for yet is found in
// its parent's children, like any task, but it can not be seized, and it
// has no memory, files, namespaces (but for its pid's) or threads left.
// pstree.img has it like any task, its pid its one thread; its core holds
// task_core only: comm, TASK_DEAD and the wait status its parent will
// read. No other image is written for it. While its parent is frozen
// nobody can reap it; the dump leaves it alone, and a tree let run on
// still has it as a zombie of its parent.

// taskDead is CRIU's TASK_DEAD, task_core's task_state of a zombie.
const taskDead = 2

// deadTask is what is left of a zombie: its /proc/PID/stat.
type deadTask struct {
	comm string
	// exitCode is the wait status its parent will read (exit status << 8,
	// or the signal that killed it, | 0x80 if it dumped core).
	exitCode uint32
}

// zombie makes t, whose leader could not be seized because it is dead,
// a zombie of the tree, from its stat (tids are its threads as listed).
// A zombie has no children: the kernel gave them to a reaper when it
// died.
func (t *task) zombie(parent *task, tids []int) error {
	if parent == nil {
		return &UnsupportedError{Task: t.pid, Resource: "state",
			Why: "the root of the tree is a zombie: there is nothing to dump"}
	}
	if len(tids) > 1 {
		// The leader ended (pthread_exit) and other threads run on:
		// CRIU refuses it too.
		return &UnsupportedError{Task: t.pid, Resource: "state",
			Why: fmt.Sprintf("a dead thread group leader with %d threads left is not supported", len(tids)-1)}
	}
	st, err := procfs.ReadStat(procPath(t.pid, "stat"))
	if err != nil {
		return fmt.Errorf("%s: zombie: %w", t, err)
	}
	t.dead = &deadTask{comm: st.Comm, exitCode: uint32(st.Field(statExitCode))}
	t.threads = []*thread{{tid: t.pid}}
	return nil
}

// statExitCode is the field of /proc/PID/stat holding a task's wait
// status once it ended (exit_code, proc(5)).
const statExitCode = 52

// errZombie is seize's answer for a task that ended and was not waited
// for yet.
var errZombie = errors.New("the task is a zombie")

// zombiePids reads the pid of the zombie t in the root's pid namespace,
// rootNS; it has no other threads.
func (d *dumper) zombiePids(t *task, rootNS uint64) error {
	ino, err := nsInode(t.pid, "pid")
	if err != nil {
		return fmt.Errorf("%s: zombie: %w", t, err)
	}
	if ino != rootNS {
		return &UnsupportedError{Task: t.pid, Resource: "pid namespace",
			Why: "nested pid namespaces are not supported (only the root's)"}
	}
	st, err := readStatus(procPath(t.pid, "status"))
	if err != nil {
		return fmt.Errorf("%s: zombie: %w", t, err)
	}
	pid, err := st.last("NSpid")
	if err != nil {
		return fmt.Errorf("%s: zombie: status: %w", t, err)
	}
	t.nsPid = uint32(pid)
	t.threads[0].nsTid = t.nsPid
	return nil
}

// dumpZombie writes the one image of the zombie t, its core, as CRIU's
// dump_one_zombie does: task_core with its comm, TASK_DEAD and its wait
// status, the other fields that must be there zero, and nothing else.
func (d *dumper) dumpZombie(t *task) error {
	begin := boottime()
	core := &criu_core.CoreEntry{
		Mtype: criu_core.CoreEntry_X86_64.Enum(),
		Tc: &criu_core.TaskCoreEntry{
			TaskState:   proto.Uint32(taskDead),
			ExitCode:    proto.Uint32(t.dead.exitCode),
			Personality: proto.Uint32(0),
			Flags:       proto.Uint32(0),
			BlkSigset:   proto.Uint64(0),
			Comm:        proto.String(t.dead.comm),
		},
	}
	if err := d.write(fmt.Sprintf("core-%d.img", t.nsPid), images.KindCore, images.Entry{Message: core}); err != nil {
		return err
	}
	d.obs.step(t, StageDumpTasks, "core", begin)
	return nil
}
