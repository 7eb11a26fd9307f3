package dump

import (
	"errors"
	"fmt"
	"os"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	"github.com/checkpoint-restore/go-criu/v8/crit/images/timens"

	"github.com/crest-restore/crest/images"
	"github.com/crest-restore/crest/kerndat"
)

// writeClocks writes the monotonic and boot-time clocks of the tree's
// time namespace, as CRIU does: for a tree in crest's, timens-0.img with
// the host's clocks (the restore gives the tree a new namespace whose
// clocks go on from them); for a tree with a namespace of its own,
// timens-ID.img, ID the namespace's, with the clocks it shows: the host's
// plus its offsets.
func (d *dumper) writeClocks() error {
	var mono, boot unix.Timespec
	if err := errors.Join(unix.ClockGettime(unix.CLOCK_MONOTONIC, &mono), unix.ClockGettime(unix.CLOCK_BOOTTIME, &boot)); err != nil {
		return os.NewSyscallError("clock_gettime", err)
	}
	m, b := time.Duration(mono.Nano()), time.Duration(boot.Nano())
	name := "timens-0.img"
	if d.ownTime {
		root := d.tree.root
		path := procPath(root.pid, "timens_offsets")
		raw, err := os.ReadFile(path)
		if err != nil {
			return fmt.Errorf("%s: %w", root, err)
		}
		om, ob, err := kerndat.ParseTimensOffsets(string(raw))
		if err != nil {
			return fmt.Errorf("%s: %s: %w", root, path, err)
		}
		m, b = m+om, b+ob
		ino, err := nsInode(root.pid, "time")
		if err != nil {
			return err
		}
		name = fmt.Sprintf("timens-%d.img", d.ns.id(ino))
	}
	ts := func(v time.Duration) *timens.Timespec {
		return &timens.Timespec{TvSec: proto.Uint64(uint64(v / time.Second)), TvNsec: proto.Uint64(uint64(v % time.Second))}
	}
	return d.write(name, images.KindTimeNS, images.Entry{Message: &timens.TimensEntry{Monotonic: ts(m), Boottime: ts(b)}})
}
