package restore

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	criu_core "github.com/checkpoint-restore/go-criu/v8/crit/images/criu-core"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/inventory"
	ipc_desc "github.com/checkpoint-restore/go-criu/v8/crit/images/ipc-desc"
	ipc_msg "github.com/checkpoint-restore/go-criu/v8/crit/images/ipc-msg"
	ipc_sem "github.com/checkpoint-restore/go-criu/v8/crit/images/ipc-sem"
	ipc_shm "github.com/checkpoint-restore/go-criu/v8/crit/images/ipc-shm"
	ipc_var "github.com/checkpoint-restore/go-criu/v8/crit/images/ipc-var"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/utsns"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/vma"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	"github.com/crest-restore/crest/dump"
	"github.com/crest-restore/crest/images"
	"github.com/crest-restore/crest/test/fixture"
	"github.com/crest-restore/crest/test/workloads"
)

// The nsuts workload (test/workloads/src/nsuts.c) as crest dump writes
// it: UTS namespace 11, IPC namespace 10 (crest's own take ids 1-8, the
// root's pid namespace 9).
const (
	nsutsUTS = 11
	nsutsIPC = 10
)

// nsutsImages starts the nsuts workload in UTS and IPC namespaces of its
// own, dumps it with crest's dump (which kills it) and returns the image
// directory and the workload's directory, where its logs are.
func nsutsImages(t *testing.T) (imgs, wdir string) {
	t.Helper()
	needRoot(t)
	p := workloads.Start(t, "nsuts")
	deadline := time.Now().Add(10 * time.Second)
	for strings.Count(logAfter(t, p.Dir, "out-nsuts.log", 0), "\n") < 3 {
		if time.Now().After(deadline) {
			t.Fatalf("nsuts wrote %q", logAfter(t, p.Dir, "out-nsuts.log", 0))
		}
		time.Sleep(10 * time.Millisecond)
	}
	imgs = filepath.Join(t.TempDir(), "images")
	if _, err := dump.Dump(context.Background(), dump.Options{Pid: p.Pid, Dir: imgs}); err != nil {
		t.Fatal(err)
	}
	if !workloads.WaitGone(p.Pid, 10*time.Second) {
		t.Fatalf("the dumped nsuts %d is still there", p.Pid)
	}
	return imgs, p.Dir
}

// writeIPC writes ns's ipcns-shm, -msg and -sem images into dir, as CRIU
// frames them (the segments' contents stay in their pagemaps).
func writeIPC(t *testing.T, dir string, ns *IPCNamespace) {
	t.Helper()
	desc := func(o SysVObject) *ipc_desc.IpcDescEntry {
		return &ipc_desc.IpcDescEntry{Key: proto.Uint32(uint32(o.Key)), Uid: proto.Uint32(o.UID), Gid: proto.Uint32(o.GID),
			Cuid: proto.Uint32(0), Cgid: proto.Uint32(0), Mode: proto.Uint32(o.Mode), Id: proto.Uint32(uint32(o.ID))}
	}
	file := func(k *images.Kind, name string, add func(put func(m proto.Message, payload []byte))) {
		var b bytes.Buffer
		binary.Write(&b, binary.LittleEndian, [2]uint32{uint32(k.Prefix), uint32(k.Magic)})
		add(func(m proto.Message, payload []byte) {
			raw, err := proto.Marshal(m)
			if err != nil {
				t.Fatal(err)
			}
			binary.Write(&b, binary.LittleEndian, uint32(len(raw)))
			b.Write(raw)
			b.Write(payload)
			b.Write(make([]byte, (8-len(payload)%8)%8))
		})
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf(name, ns.ID)), b.Bytes(), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	file(images.KindIPCNSShm, "ipcns-shm-%d.img", func(put func(proto.Message, []byte)) {
		for _, s := range ns.Shm {
			put(&ipc_shm.IpcShmEntry{Desc: desc(s.SysVObject), Size: proto.Uint64(s.Size), InPagemaps: proto.Bool(true)}, nil)
		}
	})
	file(images.KindIPCNSMsg, "ipcns-msg-%d.img", func(put func(proto.Message, []byte)) {
		for _, q := range ns.Msg {
			put(&ipc_msg.IpcMsgEntry{Desc: desc(q.SysVObject), Qbytes: proto.Uint32(0), Qnum: proto.Uint32(uint32(len(q.Messages)))}, nil)
			for _, m := range q.Messages {
				put(&ipc_msg.IpcMsg{Mtype: proto.Uint64(uint64(m.Type)), Msize: proto.Uint32(uint32(len(m.Text)))}, m.Text)
			}
		}
	})
	file(images.KindIPCNSSem, "ipcns-sem-%d.img", func(put func(proto.Message, []byte)) {
		for _, s := range ns.Sem {
			raw := make([]byte, 2*len(s.Values))
			for i, v := range s.Values {
				binary.LittleEndian.PutUint16(raw[2*i:], v)
			}
			put(&ipc_sem.IpcSemEntry{Desc: desc(s.SysVObject), Nsems: proto.Uint32(uint32(len(s.Values)))}, raw)
		}
	})
}

// editIPC rewrites the SysV objects of the images in dir.
func editIPC(t *testing.T, dir string, edit func(ns *IPCNamespace)) {
	t.Helper()
	p := planDir(t, dir)
	edit(p.IPC)
	writeIPC(t, dir, p.IPC)
}

func wantPlanError(t *testing.T, dir, want string) {
	t.Helper()
	_, err := openPlan(t, dir)
	var pe *PlanError
	if !errors.As(err, &pe) || !strings.Contains(err.Error(), want) {
		t.Errorf("error %v, want a PlanError with %q", err, want)
	}
}

// TestPlanNamespaces: what the plan takes from the images of a tree with
// UTS and IPC namespaces of its own (crest dump's of nsuts), and what it
// refuses, naming the image file and entry.
func TestPlanNamespaces(t *testing.T) {
	imgs, _ := nsutsImages(t)
	p := planDir(t, imgs)
	if p.UTS == nil || p.UTS.ID != nsutsUTS || p.UTS.Hostname != "crest-nsuts" || p.UTS.Domainname != "nsuts.crest" {
		t.Errorf("UTS namespace %+v", p.UTS)
	}
	ipc := p.IPC
	if ipc == nil || ipc.ID != nsutsIPC {
		t.Fatalf("IPC namespace %+v", ipc)
	}
	if v := ipc.Var; v.GetMsgCtlmax() != 4000 || v.GetMsgCtlmnb() != 20000 || v.GetShmCtlmni() != 2048 || v.GetMqQueuesMax() != 77 ||
		fmt.Sprint(v.GetSemCtls()) != "[300 40000 64 200]" || v.MsgNextId != nil {
		t.Errorf("sysctls %v", v)
	}
	var got []string
	for _, s := range ipc.Shm {
		got = append(got, fmt.Sprintf("shm %d key %#x %d:%d %o size %d runs %d", s.ID, uint32(s.Key), s.UID, s.GID, s.Mode&0o777, s.Size, len(s.Runs)))
	}
	for _, s := range ipc.Sem {
		got = append(got, fmt.Sprintf("sem %d key %#x %d:%d %o %v", s.ID, uint32(s.Key), s.UID, s.GID, s.Mode&0o777, s.Values))
	}
	for _, q := range ipc.Msg {
		got = append(got, fmt.Sprintf("msg %d key %#x %d:%d %o", q.ID, uint32(q.Key), q.UID, q.GID, q.Mode&0o777))
		for _, m := range q.Messages {
			got = append(got, fmt.Sprintf("  %d %d %.7s", m.Type, len(m.Text), m.Text))
		}
	}
	want := []string{
		"shm 0 key 0x0 0:0 600 size 8192 runs 1",
		"shm 7 key 0x4e535531 1000:1001 640 size 12388 runs 2",
		"sem 3 key 0x4e535532 1002:1003 660 [1 2 3 40 500]",
		"msg 5 key 0x4e535533 1004:1005 620",
		"  1 5 alpha", "  2 5 bravo", "  1 7 charlie", "  3 300 " + string([]byte{5, 18, 31, 44, 57, 70, 83}), "  4 0 ",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("SysV objects:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if f := p.namespaceFlags(); f != 0x30 {
		t.Errorf("plan flags %#x, want new UTS and IPC namespaces", f)
	}

	for _, tc := range []struct {
		name string
		edit func(t *testing.T, dir string)
		err  string // "": plans, in the engine's namespaces
	}{
		{"the dumper's namespaces", func(t *testing.T, dir string) {
			editImage(t, dir, "inventory.img", func(img *images.Image) {
				ids := img.Entries[0].Message.(*inventory.InventoryEntry).RootIds
				ids.UtsNsId, ids.IpcNsId = proto.Uint32(nsutsUTS), proto.Uint32(nsutsIPC)
			})
			// without the segments' mappings, which need the tree's
			// own IPC namespace (TestPlanSysVShm)
			dropSysVVMAs(t, dir)
		}, ""},
		{"no uts image", func(t *testing.T, dir string) { os.Remove(filepath.Join(dir, "utsns-11.img")) },
			"utsns-11.img: the tree's own UTS namespace 11 has no image"},
		{"uts name too long", func(t *testing.T, dir string) {
			editImage(t, dir, "utsns-11.img", func(img *images.Image) {
				img.Entries[0].Message.(*utsns.UtsnsEntry).Nodename = proto.String(strings.Repeat("x", 65))
			})
		}, "utsns-11.img: entry 0: nodename of 65 bytes, more than 64"},
		{"no ipc sysctls", func(t *testing.T, dir string) { os.Remove(filepath.Join(dir, "ipcns-var-10.img")) },
			"ipcns-var-10.img: the tree's own IPC namespace 10 has no sysctls image"},
		{"three sem sysctls", func(t *testing.T, dir string) {
			editImage(t, dir, "ipcns-var-10.img", func(img *images.Image) {
				v := img.Entries[0].Message.(*ipc_var.IpcVarEntry)
				v.SemCtls = v.SemCtls[:3]
			})
		}, "ipcns-var-10.img: entry 0: 3 sem_ctls, want 4"},
		{"no shm, msg, sem images", func(t *testing.T, dir string) {
			for _, k := range []string{"shm", "msg", "sem"} {
				os.Remove(filepath.Join(dir, fmt.Sprintf("ipcns-%s-10.img", k)))
			}
			dropSysVVMAs(t, dir) // no segment to attach
		}, ""},
		{"truncated semaphore values", func(t *testing.T, dir string) {
			path := filepath.Join(dir, "ipcns-sem-10.img")
			b, _ := os.ReadFile(path)
			os.WriteFile(path, b[:len(b)-3], 0o600)
		}, "ipcns-sem-10.img: entry 0 at offset"},
		{"a message missing", func(t *testing.T, dir string) {
			path := filepath.Join(dir, "ipcns-msg-10.img")
			b, _ := os.ReadFile(path)
			os.WriteFile(path, b[:len(b)-8], 0o600) // the empty last message
		}, "entry 0 at offset 402: message 4's length of 4 bytes runs past the end of the file"},
		{"message too long", func(t *testing.T, dir string) {
			editIPC(t, dir, func(ns *IPCNamespace) { ns.Msg[0].Messages[1].Text = make([]byte, 9000) })
		}, "ipcns-msg-10.img: entry 0: message 1 of queue 5 has 9000 bytes, more than 8192"},
		{"two sets with one id", func(t *testing.T, dir string) {
			editIPC(t, dir, func(ns *IPCNamespace) { ns.Sem = append(ns.Sem, ns.Sem[0]) })
		}, "ipcns-sem-10.img: entry 1: id 3 appears twice"},
		{"content past the segment", func(t *testing.T, dir string) {
			editIPC(t, dir, func(ns *IPCNamespace) { ns.Shm[1].Size = 4096 })
		}, "pagemap-shmem-7.img: shm ipcns-shm-10.img entry 1 (id 7, key 0x4e535531): run 0x2000-0x4000 is past the segment's 4096 bytes"},
		{"no content", func(t *testing.T, dir string) { os.Remove(filepath.Join(dir, "pagemap-shmem-7.img")) }, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := fixture.CopyDir(t, imgs)
			tc.edit(t, dir)
			if tc.err != "" {
				wantPlanError(t, dir, tc.err)
				return
			}
			p := planDir(t, dir)
			if tc.name == "the dumper's namespaces" && (p.UTS != nil || p.IPC != nil || p.namespaceFlags() != 0) {
				t.Errorf("namespaces %+v %+v, want the engine's", p.UTS, p.IPC)
			}
		})
	}

	// A task in a UTS or IPC namespace other than the root's: CRIU's
	// tree fixture with one child moved.
	for _, kind := range []string{"UTS", "IPC"} {
		dir := fixture.CopyImages(t, "tree")
		pid := planDir(t, dir).Tasks[1].PID
		editImage(t, dir, fmt.Sprintf("ids-%d.img", pid), func(img *images.Image) {
			ids := img.Entries[0].Message.(*criu_core.TaskKobjIdsEntry)
			if kind == "UTS" {
				ids.UtsNsId = proto.Uint32(99)
			} else {
				ids.IpcNsId = proto.Uint32(99)
			}
		})
		wantPlanError(t, dir, fmt.Sprintf("task %d: ids-%d.img: %s namespace 99, not the root's", pid, pid, kind))
	}
	// Namespaces crest does not restore yet are refused by their image.
	dir := fixture.CopyImages(t, "counter")
	if err := os.WriteFile(filepath.Join(dir, "netns-2.img"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	wantPlanError(t, dir, "netns-2.img: namespaces other than the root's are not restored yet")
}

// logAfter returns what log (in dir) holds past offset from.
func logAfter(t *testing.T, dir, log string, from int) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, log))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	if len(b) < from {
		return ""
	}
	return string(b[from:])
}

func logSize(dir, log string) int {
	st, err := os.Stat(filepath.Join(dir, log))
	if err != nil {
		return 0
	}
	return int(st.Size())
}

// waitLog waits until log has grown past from by a line matching done
// (or one saying CORRUPT) and returns what it grew by.
func waitLog(t *testing.T, dir, log string, from int, done func(string) bool) string {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		s := logAfter(t, dir, log, from)
		if strings.Contains(s, "CORRUPT") || done(s) {
			return s
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: after 10s: %q", log, s)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func lines(n int) func(string) bool {
	return func(s string) bool { return strings.Count(s, "\n") >= n }
}

// restoreNsuts restores the nsuts images in dir and returns the text its
// log and its shared memory check (asked for once the log shows it runs)
// added, and the restore.
func restoreNsuts(t *testing.T, dir, wdir string) (string, *Restore, *recorder) {
	t.Helper()
	p := planDir(t, dir)
	from, shmFrom := logSize(wdir, "out-nsuts.log"), logSize(wdir, "out-shm.log")
	rec := &recorder{}
	r, err := Start(context.Background(), p, Options{Observer: rec})
	if err != nil {
		t.Fatal(err)
	}
	abortAtCleanup(t, r, p)
	out := waitLog(t, wdir, "out-nsuts.log", from, lines(5))
	if strings.Contains(out, "CORRUPT") {
		return out, r, rec
	}
	if err := os.WriteFile(filepath.Join(wdir, "check-shm"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	return out + waitLog(t, wdir, "out-shm.log", shmFrom, func(s string) bool { return strings.Contains(s, "shm ok") }), r, rec
}

// TestRestoreNamespaces restores crest dump's images of nsuts: the root is
// born in new UTS and IPC namespaces, which the engine fills in
// PREPARE_NAMESPACES (a step each in the timeline), and the workload,
// which checks its names, sysctls and SysV objects every tick (and the
// segments' contents when asked), runs on without a CORRUPT line.
func TestRestoreNamespaces(t *testing.T) {
	imgs, wdir := nsutsImages(t)
	out, r, rec := restoreNsuts(t, imgs, wdir)
	if strings.Contains(out, "CORRUPT") || !strings.Contains(out, "shm ok") {
		t.Fatalf("the restored nsuts wrote:\n%s", out)
	}
	root := r.RootPID()
	for _, kind := range []string{"uts", "ipc"} {
		self, _ := nsIno("/proc/self/ns/" + kind)
		tree, err := nsIno(fmt.Sprintf("/proc/%d/ns/%s", root, kind))
		if err != nil || tree == self {
			t.Errorf("%s namespace of the restored root %d: %d (%v), ours %d", kind, root, tree, err, self)
		}
	}
	steps := map[string]StepEvent{}
	for _, s := range rec.Steps {
		if s.Stage == StagePrepareNamespaces {
			steps[s.Step] = s
		}
	}
	for _, name := range []string{"uts namespace", "ipc namespace"} {
		s, ok := steps[name]
		if !ok || !s.Succeeded || !s.Engine || s.PID != 1 || s.End < s.Begin {
			t.Errorf("step %q of PREPARE_NAMESPACES: %+v (%v)", name, s, ok)
		}
	}
}

// TestRestoreNamespacesBroken breaks each property the restore gives the
// namespaces, through the images, and checks that the workload sees it:
// what it checks is what proves the restore right.
func TestRestoreNamespacesBroken(t *testing.T) {
	imgs, wdir := nsutsImages(t)
	v := func(edit func(v *ipc_var.IpcVarEntry)) func(t *testing.T, dir string) {
		return func(t *testing.T, dir string) {
			editImage(t, dir, "ipcns-var-10.img", func(img *images.Image) { edit(img.Entries[0].Message.(*ipc_var.IpcVarEntry)) })
		}
	}
	uts := func(edit func(u *utsns.UtsnsEntry)) func(t *testing.T, dir string) {
		return func(t *testing.T, dir string) {
			editImage(t, dir, "utsns-11.img", func(img *images.Image) { edit(img.Entries[0].Message.(*utsns.UtsnsEntry)) })
		}
	}
	ipc := func(edit func(ns *IPCNamespace)) func(t *testing.T, dir string) {
		return func(t *testing.T, dir string) { editIPC(t, dir, edit) }
	}
	for _, tc := range []struct {
		name string
		edit func(t *testing.T, dir string)
		want string
	}{
		{"hostname", uts(func(u *utsns.UtsnsEntry) { u.Nodename = proto.String("other") }), "CORRUPT names"},
		{"domainname", uts(func(u *utsns.UtsnsEntry) { u.Domainname = proto.String("other") }), "CORRUPT names"},
		{"kernel/sem", v(func(v *ipc_var.IpcVarEntry) { v.SemCtls[2]++ }), "CORRUPT /proc/sys/kernel/sem"},
		{"kernel/msgmax", v(func(v *ipc_var.IpcVarEntry) { v.MsgCtlmax = proto.Uint32(4001) }), "CORRUPT /proc/sys/kernel/msgmax"},
		{"kernel/msgmnb", v(func(v *ipc_var.IpcVarEntry) { v.MsgCtlmnb = proto.Uint32(20001) }), "CORRUPT /proc/sys/kernel/msgmnb"},
		{"kernel/msgmni", v(func(v *ipc_var.IpcVarEntry) { v.MsgCtlmni = proto.Uint32(1001) }), "CORRUPT /proc/sys/kernel/msgmni"},
		{"kernel/shmmax", v(func(v *ipc_var.IpcVarEntry) { v.ShmCtlmax = proto.Uint64(1 << 29) }), "CORRUPT /proc/sys/kernel/shmmax"},
		{"kernel/shmall", v(func(v *ipc_var.IpcVarEntry) { v.ShmCtlall = proto.Uint64(1 << 20) }), "CORRUPT /proc/sys/kernel/shmall"},
		{"kernel/shmmni", v(func(v *ipc_var.IpcVarEntry) { v.ShmCtlmni = proto.Uint32(2047) }), "CORRUPT /proc/sys/kernel/shmmni"},
		{"fs/mqueue/queues_max", v(func(v *ipc_var.IpcVarEntry) { v.MqQueuesMax = proto.Uint32(78) }), "CORRUPT /proc/sys/fs/mqueue/queues_max"},
		{"fs/mqueue/msg_max", v(func(v *ipc_var.IpcVarEntry) { v.MqMsgMax = proto.Uint32(13) }), "CORRUPT /proc/sys/fs/mqueue/msg_max"},
		{"fs/mqueue/msgsize_max", v(func(v *ipc_var.IpcVarEntry) { v.MqMsgsizeMax = proto.Uint32(9001) }), "CORRUPT /proc/sys/fs/mqueue/msgsize_max"},
		{"fs/mqueue/msg_default", v(func(v *ipc_var.IpcVarEntry) { v.MqMsgDefault = proto.Uint32(8) }), "CORRUPT /proc/sys/fs/mqueue/msg_default"},
		{"fs/mqueue/msgsize_default", v(func(v *ipc_var.IpcVarEntry) { v.MqMsgsizeDefault = proto.Uint32(7001) }), "CORRUPT /proc/sys/fs/mqueue/msgsize_default"},
		{"shm content", func(t *testing.T, dir string) {
			// the first page of segment 7: pages-3.img (after the task's
			// and segment 0's)
			path := filepath.Join(dir, "pages-3.img")
			b, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			b[100]++
			os.WriteFile(path, b, 0o600)
		}, "CORRUPT shm 7 at 100"},
		{"shm key", ipc(func(ns *IPCNamespace) { ns.Shm[1].Key++ }), "CORRUPT ids of the keys"},
		{"shm id", func(t *testing.T, dir string) {
			editIPC(t, dir, func(ns *IPCNamespace) { ns.Shm[1].ID = 8 })
			editSysVVMAs(t, dir, func(vmas []*vma.VmaEntry, sysv []int) []*vma.VmaEntry {
				for _, i := range sysv {
					vmas[i].Shmid = proto.Uint64(8)
				}
				return vmas
			})
			os.Rename(filepath.Join(dir, "pagemap-shmem-7.img"), filepath.Join(dir, "pagemap-shmem-8.img"))
		}, "CORRUPT ids of the keys"},
		{"shm owner", ipc(func(ns *IPCNamespace) { ns.Shm[1].UID = 1002 }), "CORRUPT shm 7: key 0x4e535531 uid 1002"},
		{"shm group", ipc(func(ns *IPCNamespace) { ns.Shm[1].GID = 1002 }), "CORRUPT shm 7: key 0x4e535531 uid 1000 gid 1002"},
		{"shm mode", ipc(func(ns *IPCNamespace) { ns.Shm[0].Mode = 0o644 }), "CORRUPT shm 0: key 0 uid 0 gid 0 mode 644"},
		{"shm size", ipc(func(ns *IPCNamespace) { ns.Shm[0].Size = 3 * 4096 }), "CORRUPT shm sizes"},
		{"sem values", ipc(func(ns *IPCNamespace) { ns.Sem[0].Values[3] = 41 }), "CORRUPT semaphores 1 2 3 41 500"},
		{"sem id", ipc(func(ns *IPCNamespace) { ns.Sem[0].ID = 4 }), "CORRUPT ids of the keys"},
		{"sem owner", ipc(func(ns *IPCNamespace) { ns.Sem[0].UID = 0 }), "CORRUPT sem 3: key 0x4e535532 uid 0"},
		{"sem mode", ipc(func(ns *IPCNamespace) { ns.Sem[0].Mode = 0o600 }), "mode 600, want"},
		{"msg order", ipc(func(ns *IPCNamespace) { m := ns.Msg[0].Messages; m[0], m[1] = m[1], m[0] }), "CORRUPT message 0: type 2"},
		{"msg text", ipc(func(ns *IPCNamespace) { ns.Msg[0].Messages[3].Text = bytes.Repeat([]byte{1}, 300) }), "CORRUPT message 3: type 3, 300 bytes"},
		{"msg lost", ipc(func(ns *IPCNamespace) { ns.Msg[0].Messages = ns.Msg[0].Messages[:4] }), "CORRUPT message count"},
		{"msg id", ipc(func(ns *IPCNamespace) { ns.Msg[0].ID = 6 }), "CORRUPT ids of the keys"},
		{"msg group", ipc(func(ns *IPCNamespace) { ns.Msg[0].GID = 7 }), "CORRUPT msg 5: key 0x4e535533 uid 1004 gid 7"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := fixture.CopyDir(t, imgs)
			tc.edit(t, dir)
			out, _, _ := restoreNsuts(t, dir, wdir)
			if !strings.Contains(out, tc.want) {
				t.Errorf("the restored nsuts wrote:\n%s\nwant %q", out, tc.want)
			}
		})
	}
}

// sysvKeys returns the lines of /proc/sysvipc/{shm,sem,msg} (of the
// caller's IPC namespace) with the keys of nsuts's objects.
func sysvKeys(t *testing.T) []string {
	t.Helper()
	var out []string
	for _, k := range []string{"shm", "sem", "msg"} {
		b, err := os.ReadFile("/proc/sysvipc/" + k)
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range strings.Split(string(b), "\n") {
			f := strings.Fields(l)
			if len(f) == 0 {
				continue
			}
			if key, err := strconv.ParseInt(f[0], 10, 64); err == nil && key >= 0x4e535531 && key <= 0x4e535533 {
				out = append(out, k+": "+l)
			}
		}
	}
	return out
}

// holders returns the pids of the tasks (threads too) in namespace kind
// with inode ino.
func holders(kind string, ino uint64) []string {
	var out []string
	tasks, _ := filepath.Glob("/proc/[0-9]*/task/[0-9]*/ns/" + kind)
	for _, p := range tasks {
		var st unix.Stat_t
		if unix.Stat(p, &st) == nil && st.Ino == ino {
			out = append(out, p)
		}
	}
	return out
}

// rootArrival notes the namespaces of the restored root when it arrives
// at ROOT_TASK: a failing restore returns no Restore to ask.
type rootArrival struct {
	Timeline
	uts, ipc uint64
}

func (r *rootArrival) TaskArrived(e ArrivalEvent) {
	r.Timeline.TaskArrived(e)
	if e.Stage == StageRootTask && e.HostPID != 0 {
		r.uts, _ = nsIno(fmt.Sprintf("/proc/%d/ns/uts", e.HostPID))
		r.ipc, _ = nsIno(fmt.Sprintf("/proc/%d/ns/ipc", e.HostPID))
	}
}

// TestRestoreNamespacesRollback: a restore that fails while filling the
// IPC namespace (a message longer than the restored msgmax), or is aborted
// once the namespaces are filled, leaves nothing behind: no task or thread
// in the tree's namespaces (they are gone, with the objects in them), and
// no SysV object in ours.
func TestRestoreNamespacesRollback(t *testing.T) {
	imgs, _ := nsutsImages(t)
	before := sysvKeys(t)
	if len(before) != 0 {
		t.Fatalf("nsuts's objects in our IPC namespace before the restore: %q", before)
	}
	gone := func(t *testing.T, uts, ipc uint64) {
		t.Helper()
		if uts == 0 || ipc == 0 {
			t.Fatal("no namespaces of the root seen")
		}
		if h := append(holders("uts", uts), holders("ipc", ipc)...); len(h) > 0 {
			t.Errorf("the tree's namespaces are still held by %q", h)
		}
		if left := sysvKeys(t); len(left) > 0 {
			t.Errorf("SysV objects in our IPC namespace: %q", left)
		}
	}
	t.Run("fails", func(t *testing.T) {
		dir := fixture.CopyDir(t, imgs)
		editImage(t, dir, "ipcns-var-10.img", func(img *images.Image) {
			img.Entries[0].Message.(*ipc_var.IpcVarEntry).MsgCtlmax = proto.Uint32(100)
		})
		obs := &rootArrival{}
		_, err := Start(context.Background(), planDir(t, dir), Options{Observer: obs})
		var se *StageError
		want := "restore: stage PREPARE_NAMESPACES: task 1: ipc namespace: "
		if !errors.As(err, &se) || se.Stage != StagePrepareNamespaces || se.Step != "ipc namespace" || !strings.Contains(err.Error(), want) ||
			!strings.Contains(err.Error(), "message queue ipcns-msg-10.img entry 0 (id 5, key 0x4e535533): message 3 (type 3, 300 bytes): msgsnd: invalid argument") {
			t.Fatalf("error %v, want a StageError %q... naming the queue and message", err, want)
		}
		gone(t, obs.uts, obs.ipc)
	})
	t.Run("aborted", func(t *testing.T) {
		p := planDir(t, imgs)
		r, err := Start(context.Background(), p, Options{Until: StagePrepareNamespaces})
		if err != nil {
			t.Fatal(err)
		}
		uts, _ := nsIno(fmt.Sprintf("/proc/%d/ns/uts", r.RootPID()))
		ipc, _ := nsIno(fmt.Sprintf("/proc/%d/ns/ipc", r.RootPID()))
		if err := r.Abort(); err != nil {
			t.Fatal(err)
		}
		gone(t, uts, ipc)
	})
}
