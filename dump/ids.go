package dump

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	criu_core "github.com/checkpoint-restore/go-criu/v8/crit/images/criu-core"
)

// Ids of kernel objects, as CRIU gives them: crest's own objects (the
// inventory's root_ids) are 1; every object of the tree not seen before
// gets the next id of its kind. vm, files, fs and sighand have a counter
// each; all namespaces share one, handed out in CRIU's order for crest's
// own (pid, net, ipc, uts, time, mnt, user, cgroup), then to new ones as
// the tasks show them.

// nsKinds are the namespaces in the order CRIU numbers them.
var nsKinds = []string{"pid", "net", "ipc", "uts", "time", "mnt", "user", "cgroup"}

type nsIDs struct {
	own  map[string]uint64 // crest's namespace inodes
	ids  map[uint64]uint32 // inode -> id
	last uint32
}

func nsInode(pid int, kind string) (uint64, error) {
	var st unix.Stat_t
	p := procPath(pid, "ns", kind)
	if err := unix.Stat(p, &st); err != nil {
		return 0, &os.PathError{Op: "stat", Path: p, Err: err}
	}
	return st.Ino, nil
}

func ownNamespaces() (*nsIDs, error) {
	n := &nsIDs{own: map[string]uint64{}, ids: map[uint64]uint32{}}
	for _, kind := range nsKinds {
		var st unix.Stat_t
		p := "/proc/thread-self/ns/" + kind
		if err := unix.Stat(p, &st); err != nil {
			return nil, fmt.Errorf("dump: %w", &os.PathError{Op: "stat", Path: p, Err: err})
		}
		n.own[kind] = st.Ino
		n.id(st.Ino)
	}
	return n, nil
}

func (n *nsIDs) id(ino uint64) uint32 {
	if id, ok := n.ids[ino]; ok {
		return id
	}
	n.last++
	n.ids[ino] = n.last
	return n.last
}

// kobjIDs are the ids of the objects a task may share with others.
type kobjIDs struct {
	vm, files, fs, sighand uint32
}

func (d *dumper) rootIDs() *criu_core.TaskKobjIdsEntry {
	e := &criu_core.TaskKobjIdsEntry{VmId: proto.Uint32(1), FilesId: proto.Uint32(1), FsId: proto.Uint32(1),
		SighandId: proto.Uint32(1)}
	d.setNS(e, d.ns.own)
	return e
}

func (d *dumper) setNS(e *criu_core.TaskKobjIdsEntry, inos map[string]uint64) {
	id := func(k string) *uint32 { return proto.Uint32(d.ns.id(inos[k])) }
	e.PidNsId, e.NetNsId, e.IpcNsId, e.UtsNsId = id("pid"), id("net"), id("ipc"), id("uts")
	e.TimeNsId, e.MntNsId, e.UserNsId, e.CgroupNsId = id("time"), id("mnt"), id("user"), id("cgroup")
}

// kobjIDs gives t its ids, comparing its objects with those of the tasks
// dumped before it (kcmp). newFiles is false when t shares its fd table
// with an earlier task, whose fdinfo image then serves both.
func (d *dumper) kobjIDs(t *task) (*criu_core.TaskKobjIdsEntry, bool, error) {
	types := []int{kcmpVM, kcmpFiles, kcmpFS, kcmpSighand}
	var got [4]uint32
	newFiles := true
	for i, typ := range types {
		for _, o := range d.tree.tasks {
			k, ok := d.kobj[o.pid]
			if !ok {
				continue
			}
			same, err := kcmpEqual(t.pid, o.pid, typ, 0, 0)
			if err != nil {
				return nil, false, fmt.Errorf("%s: %w", t, err)
			}
			if same {
				got[i] = [4]uint32{k.vm, k.files, k.fs, k.sighand}[i]
				break
			}
		}
		if got[i] == 0 {
			if d.lastK[i] == 0 {
				d.lastK[i] = 1 // crest's own
			}
			d.lastK[i]++
			got[i] = d.lastK[i]
		} else if typ == kcmpFiles {
			newFiles = false
		}
	}
	d.kobj[t.pid] = &kobjIDs{vm: got[0], files: got[1], fs: got[2], sighand: got[3]}
	e := &criu_core.TaskKobjIdsEntry{VmId: proto.Uint32(got[0]), FilesId: proto.Uint32(got[1]),
		FsId: proto.Uint32(got[2]), SighandId: proto.Uint32(got[3])}
	inos := map[string]uint64{}
	for _, kind := range nsKinds {
		ino, err := nsInode(t.pid, kind)
		if err != nil {
			return nil, false, fmt.Errorf("%s: %w", t, err)
		}
		inos[kind] = ino
	}
	d.setNS(e, inos)
	return e, newFiles, nil
}
