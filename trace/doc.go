// Package trace turns one restore (or one dump) into one trace: a root
// span, a span per stage, inside each stage a span per task from the
// switch to its arrival at the barrier, the task's steps inside that, and
// the kernel's events (clone3, setns, futex) on the task they belong to.
//
// trace does not import restore or bpf: it has its own input events
// (StageEvent, ArrivalEvent, StepEvent, KernelEvent), and cmd feeds them
// from the engine's observer and the monitor into a Recorder. Build makes
// the model (Trace, Span) from the Record; Emit sends it to one Target:
// OTLP over gRPC or HTTP, an OTLP JSON file, or a waterfall in the
// terminal.
//
// All input times are CLOCK_BOOTTIME nanoseconds, the clock of the agent's
// readings and of bpf_ktime_get_boot_ns; a Clock sampled around the
// restore turns them into wall time.
package trace
