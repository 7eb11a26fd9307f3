package bpf

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"runtime"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/ringbuf"
	"golang.org/x/sys/unix"

	"github.com/crest-restore/crest/kerndat"
)

// Names of the monitor's features in a kerndat.Report.
const (
	BTFName     = "btf_vmlinux"
	TpBTFName   = "bpf_tp_btf"
	RingbufName = "bpf_ringbuf"
)

// rdonlyCast is the kfunc the fork program reads the tasks through
// (monitor.bpf.c).
const rdonlyCast = "bpf_rdonly_cast"

// vmlinuxBTF is where the kernel exposes its own BTF.
const vmlinuxBTF = "/sys/kernel/btf/vmlinux"

// probeProgramName names the probes' programs in bpftool's listing. It is a
// variable so that tests can tell their own programs from those of other
// crest processes.
var probeProgramName = "crest_probe"

// tpBTFTarget is the raw tracepoint the probes attach to, the one the
// monitor watches syscalls on.
const tpBTFTarget = "sys_enter"

// Features runs (once per process) and returns the monitor's probes.
func Features() []kerndat.Feature {
	return []kerndat.Feature{KernelBTF(), TpBTF(), Ringbuf()}
}

// KernelBTF reports whether the kernel's BTF loads and describes what the
// monitor needs: task_struct, the sys_enter tracepoint and the kfunc
// bpf_rdonly_cast (Linux 6.2), through which the fork program reads.
var KernelBTF = kerndat.NewProbe(BTFName, kerndat.Monitor, func() kerndat.Feature {
	return probeBTF(vmlinuxBTF)
})

// TpBTF reports whether a tp_btf program loads and attaches (to sys_enter)
// and detaches again.
var TpBTF = kerndat.NewProbe(TpBTFName, kerndat.Monitor, func() kerndat.Feature {
	return probeTpBTF(tpBTFTarget)
})

// Ringbuf reports whether events reach Go through a BPF ring buffer: a
// tp_btf program on sys_enter writes one for a getppid() of ours, and the
// probe reads it back.
var Ringbuf = kerndat.NewProbe(RingbufName, kerndat.Monitor, func() kerndat.Feature {
	return probeRingbuf(uint32(os.Getpagesize()))
})

func probeBTF(path string) kerndat.Feature {
	fi, err := os.Stat(path)
	if err != nil {
		return kerndat.Missing("no kernel BTF: %s", kerndat.ErrText(err))
	}
	spec, err := btf.LoadSpec(path)
	if err != nil {
		return kerndat.Missing("%s (%d bytes) does not load as BTF: %s", path, fi.Size(), kerndat.ErrText(err))
	}
	var task *btf.Struct
	if err := spec.TypeByName("task_struct", &task); err != nil {
		return kerndat.Missing("%s loads, but struct task_struct: %s", path, kerndat.ErrText(err))
	}
	var tp *btf.Typedef
	if err := spec.TypeByName("btf_trace_"+tpBTFTarget, &tp); err != nil {
		return kerndat.Missing("%s loads, but typedef btf_trace_%s: %s", path, tpBTFTarget, kerndat.ErrText(err))
	}
	var cast *btf.Func
	if err := spec.TypeByName(rdonlyCast, &cast); err != nil {
		return kerndat.Missing("%s loads, but the kfunc %s (Linux 6.2), which the monitor's fork program calls: %s",
			path, rdonlyCast, kerndat.ErrText(err))
	}
	return kerndat.OK("%s (%d bytes) loads: task_struct (%d bytes), btf_trace_%s and the kfunc %s found",
		path, fi.Size(), task.Size, tpBTFTarget, rdonlyCast)
}

func probeTpBTF(target string) kerndat.Feature {
	prog, err := loadTpBTF(target, asm.Instructions{
		asm.Mov.Imm(asm.R0, 0),
		asm.Return(),
	})
	if err != nil {
		return kerndat.Missing("%s", kerndat.ErrText(err))
	}
	defer prog.Close()
	l, err := link.AttachTracing(link.TracingOptions{Program: prog})
	if err != nil {
		return kerndat.Missing("tp_btf/%s loaded, but attach: %s", target, kerndat.ErrText(err))
	}
	if err := l.Close(); err != nil {
		return kerndat.Missing("tp_btf/%s attached, but detach: %s", target, kerndat.ErrText(err))
	}
	return kerndat.OK("tp_btf/%s: a program loaded (BPF_PROG_LOAD), attached (BPF_LINK_CREATE) and detached", target)
}

func loadTpBTF(target string, insns asm.Instructions) (*ebpf.Program, error) {
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name:         probeProgramName,
		Type:         ebpf.Tracing,
		AttachType:   ebpf.AttachTraceRawTp,
		AttachTo:     target,
		Instructions: insns,
		License:      "GPL",
	})
	if err != nil {
		return nil, fmt.Errorf("load tp_btf/%s: %w", target, err)
	}
	return prog, nil
}

// probeRingbuf makes a ring buffer of size bytes and checks, end to end,
// that an event written by a tp_btf program arrives in Go.
func probeRingbuf(size uint32) kerndat.Feature {
	m, err := ebpf.NewMap(&ebpf.MapSpec{Name: "crest_probe_rb", Type: ebpf.RingBuf, MaxEntries: size})
	if err != nil {
		return kerndat.Missing("create a %d-byte ring buffer: %s", size, kerndat.ErrText(err))
	}
	defer m.Close()
	rd, err := ringbuf.NewReader(m)
	if err != nil {
		return kerndat.Missing("%d-byte ring buffer made, but its reader: %s", size, kerndat.ErrText(err))
	}
	defer rd.Close()

	prog, err := loadTpBTF(tpBTFTarget, getppidEvent(m, os.Getpid()))
	if err != nil {
		return kerndat.Missing("%d-byte ring buffer made, but no program to write to it: %s", size, kerndat.ErrText(err))
	}
	defer prog.Close()
	l, err := link.AttachTracing(link.TracingOptions{Program: prog})
	if err != nil {
		return kerndat.Missing("%d-byte ring buffer made, but attaching its writer tp_btf/%s: %s",
			size, tpBTFTarget, kerndat.ErrText(err))
	}
	defer l.Close()

	runtime.LockOSThread()
	tid := unix.Gettid()
	unix.Getppid()
	runtime.UnlockOSThread()

	deadline := time.Now().Add(time.Second)
	rd.SetDeadline(deadline)
	for {
		rec, err := rd.Read()
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return kerndat.Missing("%d-byte ring buffer: no event for getppid() on thread %d within 1s", size, tid)
		}
		if err != nil {
			return kerndat.Missing("%d-byte ring buffer: read: %s", size, kerndat.ErrText(err))
		}
		if len(rec.RawSample) != 8 {
			return kerndat.Missing("%d-byte ring buffer: event of %d bytes, want 8", size, len(rec.RawSample))
		}
		pidTgid := binary.NativeEndian.Uint64(rec.RawSample)
		if int(uint32(pidTgid)) == tid {
			return kerndat.OK("%d-byte ring buffer: tp_btf/%s wrote an event for getppid() on thread %d, read back in Go",
				size, tpBTFTarget, tid)
		}
		// Another of our threads called getppid: wait for ours.
	}
}

// getppidEvent is a tp_btf/sys_enter program that, for a getppid() of
// process tgid, writes bpf_get_current_pid_tgid() (8 bytes) to ring.
func getppidEvent(ring *ebpf.Map, tgid int) asm.Instructions {
	return asm.Instructions{
		// tp_btf context: the tracepoint's arguments as u64s,
		// (struct pt_regs *regs, long id) for sys_enter.
		asm.Mov.Reg(asm.R6, asm.R1),
		asm.FnGetCurrentPidTgid.Call(),
		asm.Mov.Reg(asm.R7, asm.R0),
		asm.RSh.Imm(asm.R0, 32),
		asm.JNE.Imm(asm.R0, int32(tgid), "out"),
		asm.LoadMem(asm.R1, asm.R6, 8, asm.DWord),
		asm.JNE.Imm(asm.R1, unix.SYS_GETPPID, "out"),
		asm.StoreMem(asm.RFP, -8, asm.R7, asm.DWord),
		asm.LoadMapPtr(asm.R1, ring.FD()),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, -8),
		asm.Mov.Imm(asm.R3, 8),
		asm.Mov.Imm(asm.R4, 0),
		asm.FnRingbufOutput.Call(),
		asm.Mov.Imm(asm.R0, 0).WithSymbol("out"),
		asm.Return(),
	}
}
