package images

import (
	"testing"

	"github.com/checkpoint-restore/go-criu/v8/crit/images/eventfd"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/eventpoll"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/fdinfo"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/fown"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/fsnotify"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/memfd"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/pipe"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/regfile"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/signalfd"
	sk_inet "github.com/checkpoint-restore/go-criu/v8/crit/images/sk-inet"
	sk_unix "github.com/checkpoint-restore/go-criu/v8/crit/images/sk-unix"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/timerfd"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/tty"
	"google.golang.org/protobuf/proto"
)

// TestFileFown: every kind of file entry with a fown_entry gives it, and
// its flags, so that an owner is neither lost at dump nor at restore; a
// kind without one gives nil.
func TestFileFown(t *testing.T) {
	o := &fown.FownEntry{Uid: proto.Uint32(0), Euid: proto.Uint32(0), Signum: proto.Uint32(36), PidType: proto.Uint32(1), Pid: proto.Uint32(7)}
	f := proto.Uint32(04002)
	for _, c := range []struct {
		name string
		fe   *fdinfo.FileEntry
	}{
		{"reg", &fdinfo.FileEntry{Reg: &regfile.RegFileEntry{Fown: o, Flags: f}}},
		{"pipe", &fdinfo.FileEntry{Pipe: &pipe.PipeEntry{Fown: o, Flags: f}}},
		{"memfd", &fdinfo.FileEntry{Memfd: &memfd.MemfdFileEntry{Fown: o, Flags: f}}},
		{"eventfd", &fdinfo.FileEntry{Efd: &eventfd.EventfdFileEntry{Fown: o, Flags: f}}},
		{"signalfd", &fdinfo.FileEntry{Sgfd: &signalfd.SignalfdEntry{Fown: o, Flags: f}}},
		{"timerfd", &fdinfo.FileEntry{Tfd: &timerfd.TimerfdEntry{Fown: o, Flags: f}}},
		{"eventpoll", &fdinfo.FileEntry{Epfd: &eventpoll.EventpollFileEntry{Fown: o, Flags: f}}},
		{"unix socket", &fdinfo.FileEntry{Usk: &sk_unix.UnixSkEntry{Fown: o, Flags: f}}},
		{"inet socket", &fdinfo.FileEntry{Isk: &sk_inet.InetSkEntry{Fown: o, Flags: f}}},
		{"inotify", &fdinfo.FileEntry{Ify: &fsnotify.InotifyFileEntry{Fown: o, Flags: f}}},
		{"tty", &fdinfo.FileEntry{Tty: &tty.TtyFileEntry{Fown: o, Flags: f}}},
	} {
		p, flags := FileFown(c.fe)
		if p == nil || *p != o || flags != 04002 {
			t.Errorf("%s: %v, flags %#o; want its fown_entry and flags 04002", c.name, p, flags)
		}
	}
	if p, _ := FileFown(&fdinfo.FileEntry{Ext: nil}); p != nil {
		t.Errorf("a kind without a fown_entry: %v", p)
	}
}
