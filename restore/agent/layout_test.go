package agent

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
)

// cStructs maps each Go mirror to its C structure in plan.h.
var cStructs = []struct {
	c string
	v any
}{
	{"crest_plan", Plan{}},
	{"crest_task", Task{}},
	{"crest_take", Take{}},
	{"crest_fd", FD{}},
	{"crest_vma", VMA{}},
	{"crest_run", Run{}},
	{"crest_creds", Creds{}},
	{"crest_mm", MM{}},
	{"crest_regs", Regs{}},
	{"crest_xstate", XState{}},
	{"crest_seccomp_filter", SeccompFilter{}},
	{"crest_epoll_add", EpollAdd{}},
	{"crest_thread", Thread{}},
	{"crest_sigaction", Sigaction{}},
	{"crest_itimer", Itimer{}},
	{"crest_posix_timer", PosixTimer{}},
	{"crest_siginfo", Siginfo{}},
	{"crest_failure", Failure{}},
	{"crest_task_entries", TaskEntries{}},
	{"crest_slot", Slot{}},
}

// cConsts maps plan.h's macros to their Go values.
var cConsts = map[string]int64{
	"CREST_PLAN_MAGIC": PlanMagic, "CREST_PLAN_VERSION": PlanVersion,
	"CREST_LAUNCH_READY": LaunchReady, "CREST_LAUNCH_GO": LaunchGo,
	"CREST_PLAN_FD": PlanFD, "CREST_SHARED_FD": SharedFD, "CREST_ENGINE_PIDFD": EnginePidfdFD,
	"CREST_PLAN_NEWPID": PlanNewPID, "CREST_PLAN_FINISHED_BY_ENGINE": PlanFinishedByEngine,
	"CREST_PLAN_NEWTIME": PlanNewTime, "CREST_PLAN_NEWUTS": PlanNewUTS, "CREST_PLAN_NEWIPC": PlanNewIPC, "CREST_PLAN_NEWNET": PlanNewNet, "CREST_PLAN_NEWNS": PlanNewNS, "CREST_PLAN_NEWUSER": PlanNewUser, "CREST_PLAN_ROOT_TIMENS": PlanRootTimeNS, "CREST_CGROUP_UNSHARE_NS": CgroupUnshareNS,
	"CREST_XSAVE_COMPONENTS": XSaveComponents, "CREST_TIME_OFFSETS_LEN": TimeOffsetsLen, "CREST_STAGE_FAIL": StageFail, "CREST_STAGE_ROOT_TASK": StageRootTask,
	"CREST_STAGE_PREPARE_NAMESPACES": StagePrepareNamespaces, "CREST_STAGE_FORKING": StageForking,
	"CREST_STAGE_RESTORE": StageRestore, "CREST_STAGE_RESTORE_SIGCHLD": StageRestoreSigchld,
	"CREST_STAGE_RESTORE_CREDS": StageRestoreCreds, "CREST_STAGE_COMPLETE": StageComplete,
	"CREST_NR_STAGES": NrStages,
	"CREST_STEP_NONE": StepNone, "CREST_STEP_LAUNCH": StepLaunch, "CREST_STEP_CHECK_PID": StepCheckPID,
	"CREST_STEP_SETSID": StepSetsid, "CREST_STEP_SETPGID": StepSetpgid, "CREST_STEP_FORK": StepFork,
	"CREST_STEP_BARRIER": StepBarrier, "CREST_STEP_JOIN_PGID": StepJoinPgid, "CREST_STEP_FILES": StepFiles,
	"CREST_STEP_MEMORY": StepMemory, "CREST_STEP_THREADS": StepThreads, "CREST_STEP_CREDS": StepCreds,
	"CREST_STEP_SIGRETURN": StepSigreturn, "CREST_STEP_FS": StepFS, "CREST_STEP_SIGACTIONS": StepSigacts,
	"CREST_STEP_SIGNALS": StepSignals, "CREST_STEP_TIMERS": StepTimers, "CREST_STEP_SECCOMP": StepSeccomp, "CREST_STEP_SCHED": StepSched, "CREST_STEP_CGROUPS": StepCgroups, "CREST_STEP_TIMENS": StepTimeNS,
	"CREST_SECCOMP_DISABLED": SeccompModeDisabled, "CREST_SECCOMP_STRICT": SeccompModeStrict, "CREST_SECCOMP_FILTER": SeccompModeFilter,
	"CREST_NR_STEPS": NrSteps, "CREST_NR_SIGNALS": NrSignals, "CREST_XSTATE_KNOWN": XStateKnown,
	"CREST_FAULT_NO_SET_TID": FaultNoSetTID, "CREST_FAULT_NO_WAIT": FaultNoWait,
	"CREST_FAULT_EARLY_SWITCH": FaultEarlySwitch, "CREST_FAULT_DROP_THREAD": FaultDropThread,
	"CREST_SESSION_INHERIT": SessionInherit, "CREST_SESSION_LEAD": SessionLead,
	"CREST_GROUP_INHERIT": GroupInherit, "CREST_GROUP_LEAD": GroupLead, "CREST_GROUP_JOIN": GroupJoin,
	"CREST_VMA_ANON_PRIVATE": VMAAnonPrivate, "CREST_VMA_FILE_PRIVATE": VMAFilePrivate,
	"CREST_VMA_FILE_SHARED": VMAFileShared, "CREST_VMA_VDSO": VMAVDSO, "CREST_VMA_VVAR": VMAVVAR,
	"CREST_VMA_VSYSCALL": VMAVsyscall, "CREST_VMA_SYSV_SHM": VMASysVShm,
}

// readSources opens every C source, so that go test's cache, which
// tracks the files a test opens but not those gcc and make open, reruns
// these tests when the C changes.
func readSources(t *testing.T) {
	t.Helper()
	files, err := filepath.Glob("c/*")
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		if _, err := os.ReadFile(f); err != nil {
			t.Fatal(err)
		}
	}
}

func needGCC(t *testing.T) string {
	t.Helper()
	readSources(t)
	gcc, err := exec.LookPath("gcc")
	if err != nil {
		t.Skip("gcc is not installed: the layout can only be checked against a C compiler")
	}
	return gcc
}

// TestLayout compiles a probe against plan.h and compares the size of every
// structure and the offset and size of every field with the Go mirror, and
// every constant.
func TestLayout(t *testing.T) {
	gcc := needGCC(t)
	var src strings.Builder
	src.WriteString("#include <stdio.h>\n#include <stddef.h>\n#include \"plan.h\"\nint main(void)\n{\n")
	for _, s := range cStructs {
		fmt.Fprintf(&src, "\tprintf(\"%s %%zu %%zu\\n\", sizeof(struct %s), _Alignof(struct %s));\n", s.c, s.c, s.c)
		rt := reflect.TypeOf(s.v)
		for i := 0; i < rt.NumField(); i++ {
			f := rt.Field(i).Tag.Get("c")
			fmt.Fprintf(&src, "\tprintf(\"%s.%s %%zu %%zu\\n\", offsetof(struct %s, %s), sizeof(((struct %s *)0)->%s));\n",
				s.c, f, s.c, f, s.c, f)
		}
	}
	for name := range cConsts {
		fmt.Fprintf(&src, "\tprintf(\"%s %%lld\\n\", (long long)(%s));\n", name, name)
	}
	src.WriteString("\treturn 0;\n}\n")

	dir := t.TempDir()
	probe := filepath.Join(dir, "probe.c")
	if err := os.WriteFile(probe, []byte(src.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	cdir, err := filepath.Abs("c")
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "probe")
	if out, err := exec.Command(gcc, "-Wall", "-Werror", "-I", cdir, "-o", bin, probe).CombinedOutput(); err != nil {
		t.Fatalf("compiling the probe: %v\n%s", err, out)
	}
	out, err := exec.Command(bin).Output()
	if err != nil {
		t.Fatal(err)
	}
	c := map[string][]int64{}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		fields := strings.Fields(line)
		for _, v := range fields[1:] {
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				t.Fatalf("probe line %q: %v", line, err)
			}
			c[fields[0]] = append(c[fields[0]], n)
		}
	}

	for _, s := range cStructs {
		rt := reflect.TypeOf(s.v)
		// The engine writes the plan with encoding/binary, which skips
		// Go's implicit padding: there must be none.
		if n := binary.Size(s.v); n != int(rt.Size()) {
			t.Errorf("%s: encoding/binary writes %d bytes, the struct has %d: add explicit padding", rt.Name(), n, rt.Size())
		}
		want := c[s.c]
		if len(want) != 2 || int64(rt.Size()) != want[0] || int64(rt.Align()) != want[1] {
			t.Errorf("struct %s: C size, align %v; Go %s %d, %d", s.c, want, rt.Name(), rt.Size(), rt.Align())
		}
		for i := 0; i < rt.NumField(); i++ {
			f := rt.Field(i)
			key := s.c + "." + f.Tag.Get("c")
			got := []int64{int64(f.Offset), int64(f.Type.Size())}
			if w := c[key]; len(w) != 2 || w[0] != got[0] || w[1] != got[1] {
				t.Errorf("%s: C offset, size %v; Go %s.%s %v", key, w, rt.Name(), f.Name, got)
			}
		}
	}
	for name, v := range cConsts {
		if w := c[name]; len(w) != 1 || w[0] != v {
			t.Errorf("%s: C %v, Go %d", name, w, v)
		}
	}
}

// TestBinaryUpToDate rebuilds the agent and compares it with the embedded,
// committed binary: a C change without `go generate` fails here.
func TestBinaryUpToDate(t *testing.T) {
	needGCC(t)
	if _, err := exec.LookPath("make"); err != nil {
		t.Skip("make is not installed")
	}
	out := filepath.Join(t.TempDir(), "crest-agent")
	if msg, err := exec.Command("make", "-s", "-B", "-C", "c", "OUT="+out).CombinedOutput(); err != nil {
		t.Fatalf("make: %v\n%s", err, msg)
	}
	// Only the compiler that built the committed binary makes the same bytes.
	want, err := os.ReadFile("crest-agent.compiler")
	if err != nil {
		t.Fatal(err)
	}
	have, err := os.ReadFile(out + ".compiler")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(want, have) {
		t.Skipf("the committed agent was built by %q, this machine's compiler is %q", bytes.TrimSpace(want), bytes.TrimSpace(have))
	}
	built, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(built, Binary) {
		t.Errorf("the embedded crest-agent (%d bytes) differs from a fresh build (%d bytes): run go generate ./restore/agent", len(Binary), len(built))
	}
}
