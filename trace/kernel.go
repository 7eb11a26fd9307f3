package trace

import (
	"fmt"

	"go.opentelemetry.io/otel/attribute"
)

// Attributes of kernel events, so that the monitor's events read the same
// in every trace.
const (
	AttrCloneChild  = attribute.Key("crest.clone.child_pid") // the pid clone3 returned, in the caller's namespace
	AttrCloneSetTID = attribute.Key("crest.clone.set_tid")   // the pids asked for, outermost namespace first
	AttrCloneFlags  = attribute.Key("crest.clone.flags")     // clone_args.flags, hex
	AttrForkPIDs    = attribute.Key("crest.fork.child_pids") // the child's pid at every namespace level, the kernel's first
	AttrSetnsInode  = attribute.Key("crest.setns.ns_inode")  // the namespace joined
	AttrSetnsType   = attribute.Key("crest.setns.ns_type")   // the nstype argument, hex
	AttrFutexAddr   = attribute.Key("crest.futex.uaddr")     // hex
	AttrFutexOp     = attribute.Key("crest.futex.op")        // the op argument
	AttrFutexVal    = attribute.Key("crest.futex.val")       // the expected value or the number to wake
	AttrExitCode    = attribute.Key("crest.exit.code")
	AttrResult      = attribute.Key("crest.syscall.result") // the return value; -errno on failure
)

// The constructors below take what the kernel monitor reports: the
// caller's global pid and tid, the boot times of the syscall's entry and
// return (end 0 when no return was seen; an event with a return becomes a
// short span), and its arguments and result.

// Clone3 is a clone3(2); ret is the child's pid in the caller's pid
// namespace, or -errno.
func Clone3(pid, tid int, at, end uint64, flags uint64, setTID []int, ret int64) KernelEvent {
	attrs := []attribute.KeyValue{AttrCloneFlags.String(fmt.Sprintf("%#x", flags)), AttrResult.Int64(ret)}
	if len(setTID) > 0 {
		attrs = append(attrs, AttrCloneSetTID.IntSlice(setTID))
	}
	if ret > 0 {
		attrs = append(attrs, AttrCloneChild.Int64(ret))
	}
	return KernelEvent{Kind: "clone3", HostPID: pid, HostTID: tid, At: at, End: end, Attrs: attrs}
}

// Setns is a setns(2) into the namespace with inode ns (0 when the fd
// could not be resolved).
func Setns(pid, tid int, at, end uint64, nstype int, ns uint64, ret int64) KernelEvent {
	attrs := []attribute.KeyValue{AttrSetnsType.String(fmt.Sprintf("%#x", nstype)), AttrResult.Int64(ret)}
	if ns != 0 {
		attrs = append(attrs, AttrSetnsInode.Int64(int64(ns)))
	}
	return KernelEvent{Kind: "setns", HostPID: pid, HostTID: tid, At: at, End: end, Attrs: attrs}
}

// Futex is a futex(2) call: a wait from its entry to its return, or a
// wake.
func Futex(pid, tid int, at, end uint64, op uint32, uaddr uint64, val uint32, ret int64) KernelEvent {
	kind := "futex"
	switch op & 0x7f { // without FUTEX_PRIVATE_FLAG and FUTEX_CLOCK_REALTIME
	case 0, 9: // FUTEX_WAIT, FUTEX_WAIT_BITSET
		kind = "futex_wait"
	case 1, 10: // FUTEX_WAKE, FUTEX_WAKE_BITSET
		kind = "futex_wake"
	}
	return KernelEvent{Kind: kind, HostPID: pid, HostTID: tid, At: at, End: end, Attrs: []attribute.KeyValue{
		AttrFutexOp.Int64(int64(op)), AttrFutexAddr.String(fmt.Sprintf("%#x", uaddr)),
		AttrFutexVal.Int64(int64(val)), AttrResult.Int64(ret),
	}}
}

// Fork is the scheduler's fork of a task or thread (thread true) by
// pid/tid; childPIDs are the child's pids (or tids) by namespace level.
func Fork(pid, tid int, at uint64, childPIDs []int, thread bool) KernelEvent {
	kind := "fork"
	if thread {
		kind = "thread created"
	}
	return KernelEvent{Kind: kind, HostPID: pid, HostTID: tid, At: at,
		Attrs: []attribute.KeyValue{AttrForkPIDs.IntSlice(childPIDs)}}
}

// Exit is a task's or thread's exit.
func Exit(pid, tid int, at uint64, code int) KernelEvent {
	return KernelEvent{Kind: "exit", HostPID: pid, HostTID: tid, At: at,
		Attrs: []attribute.KeyValue{AttrExitCode.Int(code)}}
}
