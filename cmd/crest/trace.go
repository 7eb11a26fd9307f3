package main

import (
	"context"
	"time"

	"github.com/spf13/pflag"

	"github.com/crest-restore/crest/dump"
	"github.com/crest-restore/crest/restore"
	"github.com/crest-restore/crest/trace"
)

// traceFlags are the span flags of restore and dump.
type traceFlags struct {
	fs      *pflag.FlagSet
	targets *[]string
	timeout *time.Duration
}

func addTraceFlags(fs *pflag.FlagSet) traceFlags {
	return traceFlags{
		fs: fs,
		targets: fs.StringArray("trace", nil, "send the trace to `TARGET`: - (a waterfall on stdout), FILE.json (OTLP JSON), "+
			"grpc://HOST:PORT or HOST:4317 (OTLP gRPC), http(s)://HOST:PORT[/PATH] (OTLP HTTP), otlp (as OTEL_EXPORTER_OTLP_* say); repeatable"),
		timeout: fs.Duration("trace-timeout", 0, "give up exporting to a collector after `DURATION` "+
			"(default: OTEL_EXPORTER_OTLP_TIMEOUT in ms, else "+trace.DefaultTimeout.String()+")"),
	}
}

// exportTimeout is --trace-timeout when given, else 0: the exporter then
// takes OTEL_EXPORTER_OTLP_(TRACES_)TIMEOUT, or trace.DefaultTimeout.
func (f traceFlags) exportTimeout() time.Duration {
	if f.fs.Changed("trace-timeout") {
		return *f.timeout
	}
	return 0
}

// parse returns the targets; without --trace, OTEL_EXPORTER_OTLP_ENDPOINT
// asks for OTLP as the OpenTelemetry environment variables say.
func (f traceFlags) parse() ([]trace.Target, error) {
	if f.fs.Changed("trace-timeout") && *f.timeout <= 0 {
		return nil, usagef("--trace-timeout %v: want a positive duration", *f.timeout)
	}
	var out []trace.Target
	for _, s := range *f.targets {
		t, err := trace.ParseTarget(s)
		if err != nil {
			return nil, usagef("%v", err)
		}
		out = append(out, t)
	}
	if len(out) == 0 {
		if t, ok := trace.FromEnv(); ok {
			out = append(out, t)
		}
	}
	return out, nil
}

// emitTrace sends tr to every target. A target that fails costs one
// warning and at most the export timeout, never the command's success.
func emitTrace(ctx context.Context, env *env, tr *trace.Trace, targets []trace.Target, timeout time.Duration) {
	if _, _, err := tr.Spans(); err != nil {
		env.log.Warn("trace resource", "err", err)
	}
	for _, t := range targets {
		if err := trace.Emit(ctx, tr, t, trace.Options{Timeout: timeout, Out: env.stdout}); err != nil {
			env.log.Warn("trace not exported", "to", t.String(), "err", err)
			continue
		}
		if t.Sink == trace.SinkGRPC || t.Sink == trace.SinkHTTP {
			env.log.Info("trace exported", "to", t.String(), "trace_id", tr.ID().String())
		}
	}
}

// restoreRecorder feeds the engine's events to a trace.Recorder: trace
// does not import restore.
type restoreRecorder struct{ *trace.Recorder }

func (r restoreRecorder) StageSwitched(e restore.StageEvent) {
	r.Recorder.StageSwitched(trace.StageEvent{Stage: e.Stage.String(), Number: int(e.Stage), Participants: e.Participants, At: e.At})
}

func (r restoreRecorder) TaskArrived(e restore.ArrivalEvent) {
	r.Recorder.TaskArrived(trace.ArrivalEvent{Stage: e.Stage.String(), PID: e.PID, TID: e.TID, HostPID: e.HostPID, At: e.At})
}

func (r restoreRecorder) StepDone(e restore.StepEvent) {
	r.Recorder.StepDone(trace.StepEvent{PID: e.PID, TID: e.TID, Stage: e.Stage.String(), Step: e.Step,
		Begin: e.Begin, End: e.End, Errno: e.Errno, Engine: e.Engine})
}

// traceTasks describes the plan's tasks for the spans.
func traceTasks(p *restore.Plan, r *restore.Restore) []trace.Task {
	var out []trace.Task
	for _, t := range p.Tasks {
		tt := trace.Task{PID: t.PID, PPID: t.PPID, PGID: t.PGID, SID: t.SID, Comm: t.Comm}
		if r != nil {
			tt.HostPID = r.HostPID(t.PID)
		}
		for _, th := range t.Threads {
			tt.Threads = append(tt.Threads, th.TID)
		}
		out = append(out, tt)
	}
	return out
}

// traceCounts sizes the plan for the root span.
func traceCounts(p *restore.Plan) trace.Counts {
	c := trace.Counts{Tasks: len(p.Tasks), Threads: p.NrThreads}
	for _, t := range p.Tasks {
		for _, r := range t.Mem.Runs {
			c.Pages += int64(r.NrPages)
		}
	}
	c.Bytes = c.Pages * 4096
	return c
}

// dumpRecorder feeds a dump's events to a trace.Recorder: trace does not
// import dump either.
type dumpRecorder struct {
	rec   *trace.Recorder
	tasks []trace.Task
}

func newDumpRecorder(dir string) *dumpRecorder {
	return &dumpRecorder{rec: trace.NewRecorder(trace.OpDump, dir)}
}

func (r *dumpRecorder) StageStarted(e dump.StageEvent) {
	r.rec.StageSwitched(trace.StageEvent{Stage: e.Stage.String(), Number: int(e.Stage), At: e.At})
}

// TaskCollected comes from the dumping goroutine only, like every event
// of a dump: no lock.
func (r *dumpRecorder) TaskCollected(e dump.TaskEvent) {
	r.tasks = append(r.tasks, trace.Task{PID: e.PID, PPID: e.PPID, HostPID: e.HostPID, Threads: e.Threads})
}

func (r *dumpRecorder) StepDone(e dump.StepEvent) {
	r.rec.StepDone(trace.StepEvent{PID: e.PID, TID: e.PID, Stage: e.Stage.String(), Step: e.Step, Begin: e.Begin, End: e.End})
}

// build ends the recording of a dump that ended with (res, err).
func (r *dumpRecorder) build(res *dump.Result, err error) *trace.Trace {
	record := r.rec.Finish(err)
	record.Tasks = r.tasks
	if res != nil {
		record.Counts = trace.Counts{Tasks: res.Tasks, Threads: res.Threads, Pages: int64(res.Pages), Bytes: int64(res.Bytes)}
	}
	return trace.Build(record)
}
