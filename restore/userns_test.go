package restore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	criu_core "github.com/checkpoint-restore/go-criu/v8/crit/images/criu-core"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/fown"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/tty"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/userns"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	"github.com/crest-restore/crest/dump"
	"github.com/crest-restore/crest/images"
	"github.com/crest-restore/crest/restore/agent"
	"github.com/crest-restore/crest/test/check"
	"github.com/crest-restore/crest/test/cli"
	"github.com/crest-restore/crest/test/fixture"
	"github.com/crest-restore/crest/test/workloads"
)

// The userns workload (test/workloads/src/userns.c) in user, UTS, IPC,
// net and mount namespaces of its own, as launch -U writes its maps (root
// inside not host root); the maps of CRIU's image set of a tree that an
// older launch started (host root root inside).
var (
	usernsLogs = map[string]check.Next{"out-userns.log": check.Counter, "out-child.log": check.Counter}
	launchUIDs = []IDExtent{{0, 100000, 1}, {1, 100001, 999}, {1000, 301000, 10}, {2000, 402000, 5}}
	launchGIDs = []IDExtent{{0, 200000, 1}, {1, 200001, 499}, {500, 250500, 100}}
	criuUIDs   = []IDExtent{{0, 0, 1}, {1, 100001, 999}, {1000, 301000, 10}, {2000, 402000, 5}}
	criuGIDs   = []IDExtent{{0, 0, 1}, {1, 200001, 499}, {500, 250500, 100}}
)

// usernsImages starts the userns workload, dumps it with crest's dump
// (which kills it) and returns the images, the workload and the id of its
// user namespace.
func usernsImages(t *testing.T) (string, *workloads.Process, uint32) {
	t.Helper()
	p, imgs := dumpedWorkload(t, "userns", usernsLogs, 3, dump.Options{})
	d, err := images.Open(imgs)
	if err != nil {
		t.Fatal(err)
	}
	ids, err := d.IDs(1)
	if err != nil {
		t.Fatal(err)
	}
	return imgs, p, ids.GetUserNsId()
}

// TestPlanUserNS: the workload's images plan a user namespace of the
// tree's own with the maps launch wrote, and the root is cloned with
// CLONE_NEWUSER; a tree without one plans none and pays nothing.
func TestPlanUserNS(t *testing.T) {
	imgs, _, id := usernsImages(t)
	p := planDir(t, imgs)
	if p.User == nil {
		t.Fatal("no user namespace planned")
	}
	if p.User.ID != id || p.User.File != fmt.Sprintf("userns-%d.img", id) ||
		!slices.Equal(p.User.UIDMap, launchUIDs) || !slices.Equal(p.User.GIDMap, launchGIDs) {
		t.Errorf("user namespace %+v, want %d with uid_map %v and gid_map %v", p.User, id, launchUIDs, launchGIDs)
	}
	if p.namespaceFlags()&agent.PlanNewUser == 0 {
		t.Errorf("plan flags %#x: no PlanNewUser", p.namespaceFlags())
	}
	if root := p.Root(); root.Creds.UID != 1000 || root.Creds.EUID != 0 || !slices.Equal(root.Creds.Groups, []uint32{3, 501, 550}) {
		t.Errorf("the root's credentials %+v, want the ids inside (uid 1000, euid 0, groups 3 501 550)", root.Creds)
	}
	plain := loadPlan(t, "counter")
	if plain.User != nil || plain.namespaceFlags()&agent.PlanNewUser != 0 {
		t.Errorf("counter (no user namespace of its own): %+v, flags %#x", plain.User, plain.namespaceFlags())
	}
}

// TestPlanUserNSRefused damages the workload's images in every way the
// plan refuses and checks that the message names the file, entry or task
// and what is wrong.
func TestPlanUserNSRefused(t *testing.T) {
	imgs, _, id := usernsImages(t)
	uimg := fmt.Sprintf("userns-%d.img", id)
	editMaps := func(edit func(e *userns.UsernsEntry)) func(t *testing.T, dir string) {
		return func(t *testing.T, dir string) {
			editImage(t, dir, uimg, func(img *images.Image) { edit(img.Entries[0].Message.(*userns.UsernsEntry)) })
		}
	}
	ext := func(first, lower, count uint32) *userns.UidGidExtent {
		return &userns.UidGidExtent{First: proto.Uint32(first), LowerFirst: proto.Uint32(lower), Count: proto.Uint32(count)}
	}
	editCreds := func(pid int, edit func(c *criu_core.CoreEntry)) func(t *testing.T, dir string) {
		return func(t *testing.T, dir string) {
			editImage(t, dir, fmt.Sprintf("core-%d.img", pid), func(img *images.Image) { edit(img.Entries[0].Message.(*criu_core.CoreEntry)) })
		}
	}
	for _, tc := range []struct {
		name   string
		damage func(t *testing.T, dir string)
		want   string
	}{
		{"no image", func(t *testing.T, dir string) { os.Remove(filepath.Join(dir, uimg)) },
			fmt.Sprintf("plan: %s: the tree's own user namespace %d has no image", uimg, id)},
		{"truncated", func(t *testing.T, dir string) {
			if err := os.Truncate(filepath.Join(dir, uimg), 20); err != nil {
				t.Fatal(err)
			}
		}, fmt.Sprintf("plan: %s: %s", uimg, filepath.Join("DIR", uimg))},
		{"two entries", func(t *testing.T, dir string) {
			editImage(t, dir, uimg, func(img *images.Image) { img.Entries = append(img.Entries, img.Entries[0]) })
		}, fmt.Sprintf("plan: %s: 2 entries, want one", uimg)},
		{"no uid extent", editMaps(func(e *userns.UsernsEntry) { e.UidMap = nil }),
			fmt.Sprintf("plan: %s: entry 0: uid_map: no extent", uimg)},
		{"empty extent", editMaps(func(e *userns.UsernsEntry) { e.GidMap[1].Count = proto.Uint32(0) }),
			fmt.Sprintf("plan: %s: entry 0: gid_map: extent 1 (1 200001 0): count 0", uimg)},
		{"past the last id", editMaps(func(e *userns.UsernsEntry) { e.UidMap = append(e.UidMap, ext(4294967000, 500000, 296)) }),
			fmt.Sprintf("plan: %s: entry 0: uid_map: extent 4 (4294967000 500000 296): runs past the last id", uimg)},
		{"overlap inside", editMaps(func(e *userns.UsernsEntry) { e.UidMap = append(e.UidMap, ext(1005, 600000, 10)) }),
			fmt.Sprintf("plan: %s: entry 0: uid_map: extent 4 (1005 600000 10) overlaps extent 2 (1000 301000 10)", uimg)},
		{"overlap outside", editMaps(func(e *userns.UsernsEntry) { e.GidMap = append(e.GidMap, ext(9000, 200400, 200)) }),
			fmt.Sprintf("plan: %s: entry 0: gid_map: extent 3 (9000 200400 200) overlaps extent 1 (1 200001 499)", uimg)},
		{"too many extents", editMaps(func(e *userns.UsernsEntry) {
			for i := uint32(0); len(e.UidMap) <= maxIDExtents; i++ {
				e.UidMap = append(e.UidMap, ext(10000+i, 700000+i, 1))
			}
		}), fmt.Sprintf("plan: %s: entry 0: uid_map: 341 extents, the kernel takes at most 340", uimg)},
		{"uid not mapped", editCreds(2, func(c *criu_core.CoreEntry) { c.ThreadCore.Creds.Suid = proto.Uint32(7777) }),
			fmt.Sprintf("plan: task 2: core-2.img: suid 7777 is not in the uid_map of %s", uimg)},
		{"root not mapped, with sockets", editMaps(func(e *userns.UsernsEntry) { e.GidMap[0].First = proto.Uint32(700) }),
			fmt.Sprintf("plan: %s: the namespace's root (uid 0, gid 0) is not in its maps, and the tree's sockets", uimg)},
		{"group not mapped", editCreds(1, func(c *criu_core.CoreEntry) { c.ThreadCore.Creds.Groups = []uint32{3, 600} }),
			fmt.Sprintf("plan: task 1: core-1.img: group 600 is not in the gid_map of %s", uimg)},
		{"task in another", func(t *testing.T, dir string) {
			editImage(t, dir, "ids-2.img", func(img *images.Image) {
				img.Entries[0].Message.(*criu_core.TaskKobjIdsEntry).UserNsId = proto.Uint32(99)
			})
		}, fmt.Sprintf("plan: task 2: ids-2.img: user namespace 99, not the root's %d: tasks in user namespaces of their own (nested or not) are not restored", id)},
		{"task in another, the root in ours", func(t *testing.T, dir string) {
			editImage(t, dir, "ids-1.img", func(img *images.Image) {
				img.Entries[0].Message.(*criu_core.TaskKobjIdsEntry).UserNsId = proto.Uint32(7)
			})
		}, fmt.Sprintf("plan: task 2: ids-2.img: user namespace %d, not the root's 7", id)},
		{"image of no one's", func(t *testing.T, dir string) {
			b, err := os.ReadFile(filepath.Join(dir, uimg))
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dir, "userns-99.img"), b, 0o600); err != nil {
				t.Fatal(err)
			}
		}, "plan: userns-99.img: a user namespace that is not the root's own"},
		{"no pid namespace of its own", func(t *testing.T, dir string) {
			for _, f := range []string{"ids-1.img", "ids-2.img"} {
				editImage(t, dir, f, func(img *images.Image) {
					img.Entries[0].Message.(*criu_core.TaskKobjIdsEntry).PidNsId = proto.Uint32(1)
				})
			}
		}, fmt.Sprintf("plan: task 1: %s: 2 tasks in a user namespace of their own but in the dumper's pid namespace", uimg)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := fixture.CopyDir(t, imgs)
			tc.damage(t, dir)
			_, err := openPlan(t, dir)
			var pe *PlanError
			if !errors.As(err, &pe) || !strings.HasPrefix(err.Error(), strings.ReplaceAll(tc.want, "DIR", dir)) {
				t.Fatalf("plan: %v\nwant a PlanError %q...", err, tc.want)
			}
		})
	}
}

// TestHostIDs: what the engine makes from outside the namespace takes the
// images' ids through the maps (SysV objects, memfds, ghost files, the
// files of unix sockets, ptys, mount options, ping_group_range), an
// owner CRIU found not mapped ((uid_t)-1) is left to the engine, and an
// id the maps do not have is refused, naming where it is.
func TestHostIDs(t *testing.T) {
	u := &UserNamespace{ID: 13, File: "userns-13.img", UIDMap: launchUIDs, GIDMap: launchGIDs}
	info := &tty.TtyInfoEntry{Id: proto.Uint32(3), Uid: proto.Uint32(2001), Gid: proto.Uint32(5)}
	plan := func() *Plan {
		p := &Plan{IPC: &IPCNamespace{}, Memfds: map[uint32]*Memfd{}}
		p.IPC.Shm = []SysVShm{{SysVObject: SysVObject{File: "ipcns-shm-11.img", Entry: 0, ID: 7, UID: 1000, GID: 501}},
			{SysVObject: SysVObject{File: "ipcns-shm-11.img", Entry: 1, ID: 8, UID: invalidID, GID: invalidID}}}
		p.IPC.Sem = []SysVSem{{SysVObject: SysVObject{File: "ipcns-sem-11.img", Entry: 0, ID: 3, UID: 2002, GID: 0}}}
		p.IPC.Msg = []SysVMsgQueue{{SysVObject: SysVObject{File: "ipcns-msg-11.img", Entry: 1, ID: 5, UID: 5, GID: 599}}}
		p.Memfds[4] = &Memfd{InodeID: 4, Name: "m", UID: 1009, GID: 1}
		p.Memfds[5] = &Memfd{InodeID: 5, Name: "n", UID: invalidID, GID: 550}
		p.remaps = &remapTable{order: []*Ghost{{ID: 0x20, UID: 0, GID: 550}}}
		tf := &File{ID: 10, Kind: FileTTY, TTY: &TTY{Index: 1, Info: info}}
		p.Files = map[uint32]*File{
			9:  {ID: 9, Kind: FileUnixSocket, Unix: &UnixSocket{Ino: 77, Perms: &FilePerms{Mode: 0o140755, UID: 2001, GID: 511}}},
			10: tf,
		}
		p.ttys = map[uint32]*tty.TtyInfoEntry{3: info}
		p.PTYs = map[int]*PTYPair{1: {Index: 1, Slaves: []*File{tf}, SlaveInfo: info}}
		p.Mnt = &MntNamespace{File: "mountpoints-12.img", Mounts: []*Mount{{ID: 50, Entry: 3, Mountpoint: "/scratch", FSType: "tmpfs",
			Options: "size=64k,uid=1001,gid=500,mode=750"}, {ID: 51, Entry: 4, Mountpoint: "/other", FSType: "tmpfs",
			Options: "uid=-1,gid=500"}}}
		p.Net = &NetNamespace{Sysctls: []NetSysctl{{Path: "net/ipv4/conf/all/forwarding", Value: "1\n"},
			{Path: "net/ipv4/ping_group_range", Value: "100\t510\n", From: "netns-10.img entry 0 ipv4_sysctl[0]"}}}
		return p
	}
	p := plan()
	if err := p.hostIDs(u); err != nil {
		t.Fatal(err)
	}
	got := fmt.Sprintf("shm %d:%d %d:%d sem %d:%d msg %d:%d memfd %d:%d %d:%d ghost %d:%d unix %d:%d mounts %q %q sysctls %q",
		p.IPC.Shm[0].UID, p.IPC.Shm[0].GID, p.IPC.Shm[1].UID, p.IPC.Shm[1].GID, p.IPC.Sem[0].UID, p.IPC.Sem[0].GID,
		p.IPC.Msg[0].UID, p.IPC.Msg[0].GID, p.Memfds[4].UID, p.Memfds[4].GID, p.Memfds[5].UID, p.Memfds[5].GID,
		p.remaps.order[0].UID, p.remaps.order[0].GID, p.Files[9].Unix.Perms.UID, p.Files[9].Unix.Perms.GID,
		p.Mnt.Mounts[0].Options, p.Mnt.Mounts[1].Options, []string{p.Net.Sysctls[0].Value, p.Net.Sysctls[1].Value})
	// the engine's ids for a SysV object CRIU found unmapped (an
	// IPC_SET takes no -1), -1 (a chown's "leave it") for the others
	want := fmt.Sprintf(`shm 301000:250501 %d:%d sem 402002:200000 msg 100005:250599 memfd 301009:200001 4294967295:250550 `+
		`ghost 100000:250550 unix 402001:250511 mounts "size=64k,uid=301001,gid=250500,mode=750" "gid=250500" sysctls ["1\n" "200100\t250510\n"]`,
		os.Geteuid(), os.Getegid())
	if got != want {
		t.Errorf("host ids:\n%s\nwant\n%s", got, want)
	}
	// The pty's tty-info entry: one copy with the host ids wherever the
	// plan has it; the image set's entry unchanged.
	h := p.ttys[3]
	if h == info || h.GetUid() != 402001 || h.GetGid() != 200005 || p.Files[10].TTY.Info != h || p.PTYs[1].SlaveInfo != h ||
		info.GetUid() != 2001 || info.GetGid() != 5 {
		t.Errorf("tty-info 3: plan's %v (file %p, pair %p, ttys %p), image's %v", h, p.Files[10].TTY.Info, p.PTYs[1].SlaveInfo, h, info)
	}
	for _, tc := range []struct {
		name   string
		damage func(p *Plan)
		want   string
	}{
		{"shm", func(p *Plan) { p.IPC.Shm[0].UID = 3000 }, "plan: ipcns-shm-11.img: entry 0 (id 7): owner uid 3000 is not in the uid_map of userns-13.img"},
		{"msg", func(p *Plan) { p.IPC.Msg[0].GID = 600 }, "plan: ipcns-msg-11.img: entry 1 (id 5): owner gid 600 is not in the gid_map of userns-13.img"},
		{"memfd", func(p *Plan) { p.Memfds[4].UID = 1010 }, "plan: memfd.img: inode 4 (m): owner uid 1010 is not in the uid_map of userns-13.img"},
		{"ghost", func(p *Plan) { p.remaps.order[0].GID = 1000 }, "plan: ghost-file-20.img: ghost file: owner gid 1000 is not in the gid_map of userns-13.img"},
		{"unix socket", func(p *Plan) { p.Files[9].Unix.Perms.UID = 402001 },
			"plan: files.img: file 9 (unix socket 77): owner uid 402001 is not in the uid_map of userns-13.img"},
		{"tty", func(p *Plan) {
			p.ttys[3] = &tty.TtyInfoEntry{Id: proto.Uint32(3), Uid: proto.Uint32(0), Gid: proto.Uint32(600)}
		},
			"plan: tty-info.img: entry 3: owner gid 600 is not in the gid_map of userns-13.img"},
		{"ping_group_range", func(p *Plan) { p.Net.Sysctls[1].Value = "100\t1000\n" },
			"plan: netns-10.img entry 0 ipv4_sysctl[0]: net/ipv4/ping_group_range: 100 1000 is not in the gid_map of userns-13.img"},
		{"ping_group_range unmapped", func(p *Plan) { p.Net.Sysctls[1].Value = "-1\t510\n" },
			"plan: netns-10.img entry 0 ipv4_sysctl[0]: net/ipv4/ping_group_range: -1 510 is not in the gid_map of userns-13.img"},
		{"ping_group_range not a range", func(p *Plan) { p.Net.Sysctls[1].Value = "all\n" },
			`plan: netns-10.img entry 0 ipv4_sysctl[0]: net/ipv4/ping_group_range: "all\n" is not a range of gids`},
		{"mount option not a number", func(p *Plan) { p.Mnt.Mounts[0].Options = "gid=x" },
			`plan: mountpoints-12.img: entry 3: mount 50 (tmpfs at /scratch): option "gid=x": strconv.ParseUint: parsing "x": invalid syntax`},
		{"mount", func(p *Plan) { p.Mnt.Mounts[0].Options = "uid=2005" },
			`plan: mountpoints-12.img: entry 3: mount 50 (tmpfs at /scratch): option "uid=2005": 2005 is not in the uid_map`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := plan()
			tc.damage(p)
			err := p.hostIDs(u)
			var pe *PlanError
			if !errors.As(err, &pe) || err.Error() != tc.want {
				t.Errorf("error %v, want a PlanError %q", err, tc.want)
			}
		})
	}
}

// TestOwnerUIDs: the uid and euid of an owner for SIGIO are ids inside
// the tree's user namespace, which the engine sets through the uid_map
// (CRIU's restore sets them in the task); -1 (CRIU's unmapped) keeps the
// engine's own, as CRIU's setresuid(-1) keeps the task's; no owner, no
// change; an unmapped one is refused; without a user namespace they are
// the images'.
func TestOwnerUIDs(t *testing.T) {
	u := &UserNamespace{ID: 13, File: "userns-13.img", UIDMap: launchUIDs, GIDMap: launchGIDs}
	fo := func(pid, uid, euid uint32) *fown.FownEntry {
		return &fown.FownEntry{Pid: proto.Uint32(pid), PidType: proto.Uint32(fOwnerPID), Uid: proto.Uint32(uid), Euid: proto.Uint32(euid)}
	}
	for _, tc := range []struct {
		name      string
		user      *UserNamespace
		o         *fown.FownEntry
		uid, euid uint32
		err       string
	}{
		{"mapped", u, fo(1, 1000, 0), 301000, 100000, ""},
		{"unmapped at the dump", u, fo(1, invalidID, 2001), uint32(os.Getuid()), 402001, ""},
		{"no owner", u, fo(0, 0, 0), 0, 0, ""},
		{"not in the map", u, fo(2, 2000, 3000), 0, 0, "the owner for SIGIO was set by uid 2000 euid 3000, not both in the uid_map of userns-13.img"},
		{"no user namespace", nil, fo(1, 1000, 0), 1000, 0, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := &Plan{User: tc.user}
			uid, euid, err := p.ownerUIDs(tc.o)
			if tc.err != "" {
				if err == nil || err.Error() != tc.err {
					t.Errorf("error %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil || uid != tc.uid || euid != tc.euid {
				t.Errorf("uid %d euid %d (%v), want %d %d", uid, euid, err, tc.uid, tc.euid)
			}
		})
	}
}

// TestRestoreUserNS restores the workload through the engine: the root is
// born in a user namespace of its own, not ours, that owns its pid, UTS,
// IPC, net and mount namespaces, with the images' maps; every task is in
// it; its mounts are the images' (/, /proc, a proc over it, a tmpfs); the
// maps were written as a step of the root at ROOT_TASK; the file holder
// is gone once the engine lets the tree go; every socket of the tree (the
// child's unix pair, TCP listener, UDP and netlink sockets) belongs to the
// namespace's root, as CRIU's restore makes them (0:0 inside, its maps'
// 100000:200000 to us: the engine's own 0:0 would read as the overflow id
// inside); and the tree runs on (the workload checks its maps, ids,
// capabilities and its sockets' owners itself).
func TestRestoreUserNS(t *testing.T) {
	imgs, wl, _ := usernsImages(t)
	before := check.Snapshot(t, wl.Dir, usernsLogs)
	p := planDir(t, imgs)
	obs := &Timeline{}
	r, err := Start(context.Background(), p, Options{Observer: obs})
	if err != nil {
		t.Fatal(err)
	}
	root := r.RootPID()
	defer killTree(t, root)
	i := slices.IndexFunc(obs.Steps, func(e StepEvent) bool { return e.Step == stepUserNS })
	if i < 0 {
		t.Fatalf("no step %q in the timeline", stepUserNS)
	}
	if s := obs.Steps[i]; s.PID != 1 || s.Stage != StageRootTask || !s.Engine || !s.Succeeded || s.End < s.Begin {
		t.Errorf("step %+v, want the engine's for task 1 at ROOT_TASK, done", s)
	}
	for _, f := range []struct {
		file string
		m    []IDExtent
	}{{"uid_map", launchUIDs}, {"gid_map", launchGIDs}} {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/%s", root, f.file))
		if err != nil {
			t.Fatal(err)
		}
		if string(b) != mapText(f.m) {
			t.Errorf("the root's %s:\n%s\nwant\n%s", f.file, b, mapText(f.m))
		}
	}
	ours, _ := nsIno("/proc/self/ns/user")
	userNS, _ := nsIno(fmt.Sprintf("/proc/%d/ns/user", root))
	if userNS == ours {
		t.Fatal("the root is in our user namespace")
	}
	for _, kind := range []string{"pid", "uts", "ipc", "net", "mnt"} {
		if owner, err := nsOwnerIno(fmt.Sprintf("/proc/%d/ns/%s", root, kind)); err != nil || owner != userNS {
			t.Errorf("the root's %s namespace is owned by %d (%v), want its user namespace %d", kind, owner, err, userNS)
		}
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/mountinfo", root))
	if err != nil {
		t.Fatal(err)
	}
	var mounts []string
	for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		f := strings.Fields(l)
		mounts = append(mounts, f[4]+" "+f[len(f)-3])
	}
	tmpfs := filepath.Join(wl.Dir, "tmpfs") + " tmpfs" // userns.c's
	if want := []string{"/ ext4", "/proc proc", "/proc proc", tmpfs}; !slices.Equal(mounts, want) && !slices.Equal(mounts, []string{"/ " + mounts[0][2:], "/proc proc", "/proc proc", tmpfs}) {
		t.Errorf("the root's mounts %q, want %q", mounts, want)
	}
	found, err := walkTree(root)
	if err != nil {
		t.Fatal(err)
	}
	for h := range found {
		if ns, _ := nsIno(fmt.Sprintf("/proc/%d/ns/user", h)); ns != userNS {
			t.Errorf("task %d in user namespace %d, not the root's %d", h, ns, userNS)
		}
	}
	uid, _ := hostID(launchUIDs, 0)
	gid, _ := hostID(launchGIDs, 0)
	socks := checkSocketOwners(t, found, uid, gid)
	if want := []string{"netlink", "tcp", "udp", "unix", "unix"}; !slices.Equal(socks, want) {
		t.Errorf("the tree's sockets: %q, want %q (userns.c's child's)", socks, want)
	}
	// the uid column (the sockets' sk_uid, taken from the inode when it
	// is made), through the eyes of us, the reader
	for _, table := range []string{"tcp", "udp"} {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/net/%s", root, table))
		if err != nil {
			t.Fatal(err)
		}
		lines := strings.Split(strings.TrimSpace(string(b)), "\n")[1:]
		if len(lines) != 1 {
			t.Errorf("/proc/%d/net/%s: %d sockets, want userns.c's one:\n%s", root, table, len(lines), b)
			continue
		}
		if f := strings.Fields(lines[0]); len(f) < 8 || f[7] != fmt.Sprint(uid) {
			t.Errorf("/proc/%d/net/%s: %q, want uid %d (the namespace's root)", root, table, lines[0], uid)
		}
	}
	if d, err := unix.PrctlRetInt(unix.PR_GET_DUMPABLE, 0, 0, 0, 0); err != nil || d != suidDumpUser {
		t.Errorf("the engine's dumpable %d (%v) after making sockets as another fsuid, want 1", d, err)
	}
	r.Detach()
	if kids := ourChildren(t); !slices.Equal(kids, []int{root}) {
		t.Errorf("our children after the restore: %v, want only the root %d (no file holder)", kids, root)
	}
	check.Logs(t, wl.Dir, before, usernsLogs, time.Second)
}

// checkSocketOwners checks that every socket the tasks (host pids) hold
// belongs to uid:gid (host ids), and returns their kinds, sorted.
func checkSocketOwners(t *testing.T, tasks map[int]int, uid, gid uint32) []string {
	t.Helper()
	var kinds []string
	for h := range tasks {
		fds, err := filepath.Glob(fmt.Sprintf("/proc/%d/fd/*", h))
		if err != nil {
			t.Fatal(err)
		}
		for _, fd := range fds {
			var st unix.Stat_t
			if err := unix.Stat(fd, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFSOCK {
				continue
			}
			kind := socketKind(t, fd)
			kinds = append(kinds, kind)
			if st.Uid != uid || st.Gid != gid {
				t.Errorf("%s (%s socket): owner %d:%d, want the namespace's root %d:%d", fd, kind, st.Uid, st.Gid, uid, gid)
			}
		}
	}
	slices.Sort(kinds)
	return kinds
}

// socketKind is the family of the socket at path (/proc/PID/fd/N), as
// its fdinfo does not say it: SO_DOMAIN and SO_PROTOCOL of a copy taken
// with pidfd_getfd (a socket is not opened through /proc).
func socketKind(t *testing.T, path string) string {
	t.Helper()
	var pid, n int
	if _, err := fmt.Sscanf(path, "/proc/%d/fd/%d", &pid, &n); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	pidfd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		t.Fatalf("%s: pidfd_open: %v", path, err)
	}
	defer unix.Close(pidfd)
	fd, err := unix.PidfdGetfd(pidfd, n, 0)
	if err != nil {
		t.Fatalf("%s: pidfd_getfd: %v", path, err)
	}
	defer unix.Close(fd)
	domain, _ := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_DOMAIN)
	proto, _ := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_PROTOCOL)
	switch {
	case domain == unix.AF_UNIX:
		return "unix"
	case domain == unix.AF_NETLINK:
		return "netlink"
	case proto == unix.IPPROTO_TCP:
		return "tcp"
	case proto == unix.IPPROTO_UDP:
		return "udp"
	}
	return fmt.Sprintf("family %d protocol %d", domain, proto)
}

// TestMakeSocketAs: a socket pair made as an owner belongs to its ids (a
// nil owner: ours), and after it the thread has its fsuid and fsgid and
// the file system capabilities back (it makes a file in a directory only
// root may write to), and the process is still dumpable.
func TestMakeSocketAs(t *testing.T) {
	needRoot(t)
	dir := filepath.Join(t.TempDir(), "d")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(dir, 4242, 4242); err != nil {
		t.Fatal(err)
	}
	for i, tc := range []struct {
		owner    *sockOwner
		uid, gid uint32
	}{
		{nil, uint32(os.Geteuid()), uint32(os.Getegid())},
		{&sockOwner{uid: 100000, gid: 200000}, 100000, 200000},
		{&sockOwner{uid: 0, gid: 0}, 0, 0},
	} {
		runtime.LockOSThread() // the same thread for the checks after
		var fds [2]int
		err := tc.owner.makeSocket(func() (err error) {
			fds, err = unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
			return err
		})
		uid, _ := unix.SetfsuidRetUid(-1)
		gid, _ := unix.SetfsgidRetGid(-1)
		f, ferr := os.Create(filepath.Join(dir, fmt.Sprint(i)))
		runtime.UnlockOSThread()
		if err != nil {
			t.Fatalf("owner %+v: %v", tc.owner, err)
		}
		for _, fd := range fds {
			var st unix.Stat_t
			if err := unix.Fstat(fd, &st); err != nil || st.Uid != tc.uid || st.Gid != tc.gid {
				t.Errorf("owner %+v: socket owned by %d:%d (%v), want %d:%d", tc.owner, st.Uid, st.Gid, err, tc.uid, tc.gid)
			}
			unix.Close(fd)
		}
		if uid != os.Geteuid() || gid != os.Getegid() {
			t.Errorf("owner %+v: fsuid %d fsgid %d after, want %d %d", tc.owner, uid, gid, os.Geteuid(), os.Getegid())
		}
		if ferr != nil {
			t.Errorf("owner %+v: no file system capabilities after: %v", tc.owner, ferr)
		} else {
			f.Close()
		}
		if d, err := unix.PrctlRetInt(unix.PR_GET_DUMPABLE, 0, 0, 0, 0); err != nil || d != suidDumpUser {
			t.Errorf("owner %+v: dumpable %d (%v) after, want 1", tc.owner, d, err)
		}
	}
}

// ourChildren are the processes whose parent is this test process.
func ourChildren(t *testing.T) []int {
	t.Helper()
	var out []int
	tasks, _ := filepath.Glob("/proc/self/task/*/children")
	for _, f := range tasks {
		b, _ := os.ReadFile(f)
		for _, s := range strings.Fields(string(b)) {
			var pid int
			fmt.Sscan(s, &pid)
			out = append(out, pid)
		}
	}
	slices.Sort(out)
	return out
}

// ourThreadsElsewhere names our threads that are not in our namespaces.
func ourThreadsElsewhere(t *testing.T) []string {
	t.Helper()
	var out []string
	for _, kind := range []string{"user", "uts", "ipc", "net", "mnt", "pid", "time"} {
		own, err := nsIno("/proc/self/ns/" + kind)
		if err != nil {
			t.Fatal(err)
		}
		tasks, _ := filepath.Glob("/proc/self/task/*/ns/" + kind)
		for _, p := range tasks {
			if ino, err := nsIno(p); err == nil && ino != own {
				out = append(out, p)
			}
		}
	}
	return out
}

// TestRestoreUserNSFailures: the engine's checks of the user namespace
// fire, and a restore that fails there, or later, or is aborted, leaves
// nothing: no task, no file holder, nothing in the tree's user namespace,
// no thread of ours in another namespace.
func TestRestoreUserNSFailures(t *testing.T) {
	imgs, _, id := usernsImages(t)
	uimg := fmt.Sprintf("userns-%d.img", id)
	// the root's user namespace, seen when its maps are written
	var userNS uint64
	maps := func(change func(file, text string) string) {
		testMapWrite = func(pid int, file, text string) string {
			userNS, _ = nsIno(fmt.Sprintf("/proc/%d/ns/user", pid))
			return change(file, text)
		}
	}
	for _, tc := range []struct {
		name  string
		setup func(t *testing.T) // arms a fault
		until Stage
		want  string // "" : Start succeeds, then is aborted
	}{
		{"wrong extent written", func(t *testing.T) {
			maps(func(file, text string) string {
				if file == "gid_map" {
					return strings.Replace(text, "500 250500 100", "500 250500 99", 1)
				}
				return text
			})
		}, 0, fmt.Sprintf("restore: stage ROOT_TASK: task 1: user namespace: gid_map of %s: the root's reads", uimg)},
		{"map refused", func(t *testing.T) {
			maps(func(file, text string) string { return text + "0 0 1\n" }) // overlaps
		}, 0, fmt.Sprintf("restore: stage ROOT_TASK: task 1: user namespace: uid_map of %s: write /proc/", uimg)},
		{"file holder gone", func(t *testing.T) {
			maps(func(file, text string) string { return text })
			testBeforeGo = func(launcher int) {
				for _, kid := range ourChildren(t) {
					if kid != launcher {
						syscall.Kill(kid, syscall.SIGKILL)
					}
				}
			}
			t.Cleanup(func() { testBeforeGo = nil })
		}, 0, "restore: stage ROOT_TASK: task 1: user namespace: file holder "},
		{"aborted in FORKING", nil, StageForking, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			userNS = 0
			maps(func(file, text string) string { return text })
			t.Cleanup(func() { testMapWrite = nil })
			if tc.setup != nil {
				tc.setup(t)
			}
			r, err := Start(context.Background(), planDir(t, imgs), Options{Until: tc.until})
			if tc.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				if err := r.Abort(); err != nil {
					t.Fatal(err)
				}
			} else {
				if err == nil {
					r.Abort()
					t.Fatalf("the restore succeeded, want a StageError %q...", tc.want)
				}
				var se *StageError
				if !errors.As(err, &se) || !strings.HasPrefix(err.Error(), tc.want) {
					t.Fatalf("error %v\nwant a StageError %q...", err, tc.want)
				}
				t.Logf("restore: %v", err)
			}
			if userNS == 0 {
				t.Fatal("the root's user namespace was not seen")
			}
			if h := holders("user", userNS); len(h) > 0 {
				t.Errorf("the tree's user namespace is still held by %q", h)
			}
			if kids := ourChildren(t); len(kids) > 0 {
				t.Errorf("processes of ours left: %v", kids)
			}
			if el := ourThreadsElsewhere(t); len(el) > 0 {
				t.Errorf("threads of ours in other namespaces: %q", el)
			}
		})
	}
}

// nsOwnerIno is the inode of the user namespace owning the namespace file
// path (NS_GET_USERNS).
func nsOwnerIno(path string) (uint64, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return 0, err
	}
	defer unix.Close(fd)
	owner, err := unix.IoctlRetInt(fd, unix.NS_GET_USERNS)
	if err != nil {
		return 0, err
	}
	defer unix.Close(owner)
	var st unix.Stat_t
	if err := unix.Fstat(owner, &st); err != nil {
		return 0, err
	}
	return st.Ino, nil
}

// criuUserNS is CRIU 4.2's image set of a tree in a user namespace of its
// own (images/testdata/criu-4.2-userns/README.md), made with its program
// at criuUserNSDir.
var (
	criuUserNS    = filepath.Join("..", "images", "testdata", "criu-4.2-userns")
	criuUserNSDir = "/tmp/crest-criu-userns"
)

// TestRestoreCRIUUserNS restores CRIU 4.2's images of its tree in user,
// pid, UTS, IPC and mount namespaces of their own: the program and its
// directory are installed where they were at the dump, and the tree must
// come back with the images' maps and ids and run on from its dumped
// tick (it checks its ids and maps every tick).
func TestRestoreCRIUUserNS(t *testing.T) {
	needRoot(t)
	// one test binary at a time installs at criuUserNSDir
	lock, err := os.OpenFile(criuUserNSDir+".lock", os.O_RDWR|os.O_CREATE|unix.O_CLOEXEC, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Close()
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(criuUserNSDir); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(criuUserNSDir) })
	w := filepath.Join(criuUserNSDir, "w")
	if err := os.MkdirAll(w, 0o755); err != nil {
		t.Fatal(err)
	}
	prog, err := os.ReadFile(filepath.Join(criuUserNS, "prog"))
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []struct {
		name string
		data []byte
		mode os.FileMode
	}{{"prog", prog, 0o755}, {"w/.null", nil, 0o644}, {"w/out.log", []byte("55\n"), 0o644}} {
		if err := os.WriteFile(filepath.Join(criuUserNSDir, f.name), f.data, f.mode); err != nil {
			t.Fatal(err)
		}
	}
	logs := map[string]check.Next{"out.log": check.Counter}
	before := check.Snapshot(t, w, logs)
	p := planDir(t, filepath.Join(criuUserNS, "images"))
	if p.User == nil || p.User.ID != 13 || !slices.Equal(p.User.UIDMap, criuUIDs) || !slices.Equal(p.User.GIDMap, criuGIDs) {
		t.Fatalf("planned user namespace %+v, want 13 with the maps of its launch", p.User)
	}
	r, err := Start(context.Background(), p, Options{})
	if err != nil {
		t.Fatal(err)
	}
	root := r.RootPID()
	r.Detach()
	defer killTree(t, root)
	for _, f := range []struct {
		file string
		m    []IDExtent
	}{{"uid_map", criuUIDs}, {"gid_map", criuGIDs}} {
		if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/%s", root, f.file)); err != nil || string(b) != mapText(f.m) {
			t.Errorf("the root's %s:\n%s (%v)\nwant\n%s", f.file, b, err, mapText(f.m))
		}
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", root))
	if err != nil {
		t.Fatal(err)
	}
	// the ids of the images (1000 0 1001 ...) as we see them through the maps
	for _, want := range []string{"Uid:\t301000\t0\t301001\t0\n", "Gid:\t250500\t250501\t250502\t250501\n", "Groups:\t200003 250501 \n"} {
		if !strings.Contains(string(b), want) {
			t.Errorf("the root's status has no %q:\n%s", want, b)
		}
	}
	check.Logs(t, w, before, logs, time.Second)
}

// TestRestoreUserNSCreds: credentials equal to the engine's own ids are
// set all the same inside a user namespace where they map elsewhere: the
// workload's images with root's uid and gid 0 mapped to 600000 outside,
// and its init given uid and gid 0 and no groups, come back with 600000
// (had the tasks skipped what equals the launcher's ids, they would keep
// the engine's 0). Restored stopped: the workload itself would find its
// ids changed.
func TestRestoreUserNSCreds(t *testing.T) {
	imgs, _, id := usernsImages(t)
	dir := fixture.CopyDir(t, imgs)
	editImage(t, dir, fmt.Sprintf("userns-%d.img", id), func(img *images.Image) {
		e := img.Entries[0].Message.(*userns.UsernsEntry)
		e.UidMap[0].LowerFirst = proto.Uint32(600000)
		e.GidMap[0].LowerFirst = proto.Uint32(600000)
	})
	editImage(t, dir, "core-1.img", func(img *images.Image) {
		c := img.Entries[0].Message.(*criu_core.CoreEntry).ThreadCore.Creds
		for _, v := range []*uint32{c.Uid, c.Euid, c.Suid, c.Fsuid, c.Gid, c.Egid, c.Sgid, c.Fsgid} {
			*v = 0
		}
		c.Groups = nil
	})
	r, err := Start(context.Background(), planDir(t, dir), Options{LeaveStopped: true})
	if err != nil {
		t.Fatal(err)
	}
	root := r.RootPID()
	r.Detach()
	defer killTree(t, root)
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", root))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"Uid:\t600000\t600000\t600000\t600000\n", "Gid:\t600000\t600000\t600000\t600000\n", "Groups:\t \n"} {
		if !strings.Contains(string(b), want) {
			t.Errorf("the root's status has no %q:\n%s", want, b)
		}
	}
}

// TestRestoreUserNSVerify: `crest restore --verify=strict` of the workload
// watched by the eBPF monitor finds nothing wrong: the file holder the
// engine forks and its setns into the tree's user namespace are no task's,
// and the root's namespaces (the monitor reads the nsproxy ones, not the
// user namespace) are the new ones the plan gives it.
func TestRestoreUserNSVerify(t *testing.T) {
	imgs, _, _ := usernsImages(t)
	bin := cli.Binary(t)
	pidfile := filepath.Join(t.TempDir(), "pid")
	res := cli.Run(t, bin, "restore", "-D", imgs, "-d", "--pidfile", pidfile, "--verify=strict", "--json")
	if res.Code != 0 {
		t.Fatalf("crest restore --verify=strict: exit %d: %s%s", res.Code, res.Stdout, res.Stderr)
	}
	b, err := os.ReadFile(pidfile)
	if err != nil {
		t.Fatal(err)
	}
	var root int
	fmt.Sscan(string(b), &root)
	defer killTree(t, root)
	var rep struct {
		OK       bool              `json:"ok"`
		Verdict  string            `json:"verdict"`
		Findings []json.RawMessage `json:"findings"`
	}
	if err := json.Unmarshal([]byte(res.Stdout), &rep); err != nil {
		t.Fatalf("report %q: %v", res.Stdout, err)
	}
	if !rep.OK || len(rep.Findings) != 0 || !strings.Contains(rep.Verdict, "namespaces ok") {
		t.Errorf("verification: %s", res.Stdout)
	}
}

// TestFileHolder: the holder shares our fd table (a file opened after it
// was forked is in its table at the same number), refuses to join a user
// namespace it can not (ours: setns into one's own user namespace is
// EINVAL), naming the call, and is gone after close.
func TestFileHolder(t *testing.T) {
	needRoot(t)
	h, err := startFileHolder()
	if err != nil {
		t.Fatal(err)
	}
	defer h.close()
	f, err := os.Open("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	link, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%d", h.pid, f.Fd()))
	if err != nil || link != "/proc/"+fmt.Sprint(os.Getpid())+"/status" {
		t.Errorf("the holder's fd %d: %q (%v), want our /proc/%d/status", f.Fd(), link, err, os.Getpid())
	}
	err = h.join(os.Getpid())
	if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("joining the user namespace of the root %d: setns: invalid argument", os.Getpid())) {
		t.Errorf("joining our own user namespace: %v, want setns: invalid argument", err)
	}
	pid := h.pid
	h.close()
	if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("holder %d still exists after close (%v)", pid, err)
	}
}

// TestShiftOwners: the files of a tmpfs filled by a tar outside the
// namespace get their owners through the maps, their set-user-ID and
// set-group-ID bits kept; an owner the maps do not have is refused,
// naming the file.
func TestShiftOwners(t *testing.T) {
	needRoot(t)
	u := &UserNamespace{File: "userns-13.img", UIDMap: launchUIDs, GIDMap: launchGIDs}
	dir := filepath.Join(t.TempDir(), "tmpfs")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	sub := filepath.Join(dir, "sub")
	if err := os.Mkdir(sub, 0o750); err != nil {
		t.Fatal(err)
	}
	for _, f := range []struct {
		path     string
		uid, gid int
		mode     os.FileMode
	}{{dir, 0, 0, 0}, {sub, 1000, 500, 0}, {filepath.Join(sub, "tool"), 2001, 510, 0o755 | os.ModeSetuid | os.ModeSetgid}, {filepath.Join(dir, "data"), 5, 1, 0o640}} {
		if f.mode != 0 {
			if err := os.WriteFile(f.path, []byte("x"), 0o600); err != nil {
				t.Fatal(err)
			}
		}
		if err := os.Lchown(f.path, f.uid, f.gid); err != nil {
			t.Fatal(err)
		}
		if f.mode != 0 {
			if err := os.Chmod(f.path, f.mode); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := os.Symlink("data", filepath.Join(dir, "link")); err != nil {
		t.Fatal(err)
	}
	if err := os.Lchown(filepath.Join(dir, "link"), 1001, 501); err != nil {
		t.Fatal(err)
	}
	if err := shiftOwners(dir, u); err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, name := range []string{"", "sub", "sub/tool", "data", "link"} {
		var st unix.Stat_t
		if err := unix.Lstat(filepath.Join(dir, name), &st); err != nil {
			t.Fatal(err)
		}
		got = append(got, fmt.Sprintf("%s %d:%d %o", name, st.Uid, st.Gid, st.Mode&07777))
	}
	want := []string{" 100000:200000 700", "sub 301000:250500 750", "sub/tool 402001:250510 6755", "data 100005:200001 640", "link 301001:250501 777"}
	if !slices.Equal(got, want) {
		t.Errorf("owners and modes %q, want %q", got, want)
	}
	// inside ids again, for a second pass
	if err := os.Lchown(dir, 0, 0); err != nil {
		t.Fatal(err)
	}
	if err := os.Lchown(filepath.Join(dir, "data"), 7777, 0); err != nil {
		t.Fatal(err)
	}
	err := shiftOwners(dir, u)
	if want := filepath.Join(dir, "data") + ": owner uid 7777 is not in the uid_map of userns-13.img"; err == nil || err.Error() != want {
		t.Errorf("shiftOwners: %v, want %q", err, want)
	}
}
