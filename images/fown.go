package images

import (
	"github.com/checkpoint-restore/go-criu/v8/crit/images/fdinfo"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/fown"
)

// FileFown returns where the entry of fe's kind keeps its fown_entry (the
// owner for SIGIO), to read or to set, and that entry's open flags; nil
// for kinds crest does not handle.
func FileFown(fe *fdinfo.FileEntry) (o **fown.FownEntry, flags uint32) {
	switch {
	case fe.Reg != nil:
		return &fe.Reg.Fown, fe.Reg.GetFlags()
	case fe.Pipe != nil:
		return &fe.Pipe.Fown, fe.Pipe.GetFlags()
	case fe.Memfd != nil:
		return &fe.Memfd.Fown, fe.Memfd.GetFlags()
	case fe.Efd != nil:
		return &fe.Efd.Fown, fe.Efd.GetFlags()
	case fe.Sgfd != nil:
		return &fe.Sgfd.Fown, fe.Sgfd.GetFlags()
	case fe.Tfd != nil:
		return &fe.Tfd.Fown, fe.Tfd.GetFlags()
	case fe.Epfd != nil:
		return &fe.Epfd.Fown, fe.Epfd.GetFlags()
	case fe.Usk != nil:
		return &fe.Usk.Fown, fe.Usk.GetFlags()
	case fe.Isk != nil:
		return &fe.Isk.Fown, fe.Isk.GetFlags()
	case fe.Ify != nil:
		return &fe.Ify.Fown, fe.Ify.GetFlags()
	case fe.Tty != nil:
		return &fe.Tty.Fown, fe.Tty.GetFlags()
	case fe.Nlsk != nil:
		return &fe.Nlsk.Fown, fe.Nlsk.GetFlags()
	case fe.Psk != nil:
		return &fe.Psk.Fown, fe.Psk.GetFlags()
	}
	return nil, 0
}
