package restore

import (
	"errors"
	"fmt"
	"path/filepath"

	sk_unix "github.com/checkpoint-restore/go-criu/v8/crit/images/sk-unix"
	"github.com/crest-restore/crest/images"
	"golang.org/x/sys/unix"
)

// External unix sockets (criu dump --ext-unix-sk, and crest dump's): a
// datagram socket of the tree connected to a socket outside it, whose
// entry in files.img no fd table holds and carries CRIU's USK_EXTERN, its
// name and nothing else that a restore uses (CRIU writes it as a
// listening datagram socket). As CRIU's open_unixsk_standalone and
// post_open_standalone do, the socket is made as any other (bound to its
// own name if it had one, its queue written through an engine end
// first) and connected to the peer's name, after every socket of the
// tree connected to it, since none could connect to it afterwards.
//
// The connect is the engine's, in the net namespace the tree's sockets
// are made in (the tree's, when it has one of its own: an abstract name
// is looked for there, a path from any namespace) and from the engine's
// root. A name that leads nowhere fails the restore, as it fails CRIU's
// ("Can't connect ... socket"): no socket is bound there, or its file
// is gone (ENOENT), or nobody holds the socket bound there any more
// (ECONNREFUSED). A peer whose path is in a mount namespace of the tree's
// own is refused at planning: crest makes sockets from its own.
//
// CRIU's restore asks for --ext-unix-sk too, but 4.2 checks it only on a
// path datagram sockets never take (they always get a queuer), so it
// restores them without; crest asks for nothing: the dump's option was
// the consent, and the socket connects to nothing but the name the
// images give. Stream and seqpacket sockets with an external peer (what
// criu dump --ext-unix-sk=INO writes, which criu restore connects anew
// or takes from --inherit-fd) are refused.

// uskExtern is CRIU's USK_EXTERN (criu/sk-unix.c), in unix_sk_entry.uflags.
const uskExtern = 1

// UnixExternal is the peer of a unix socket outside the image set.
type UnixExternal struct {
	Ino uint32
	// Name is as the kernel keeps it (a path and its NUL, or NUL and an
	// abstract name); Dir is the directory of a relative path.
	Name []byte
	Dir  string

	plan *Plan // to name the socket's holder in errors
}

// externalUnixPeer plans the unix socket f, connected to pe, the entry of
// a socket outside the image set; bad makes the refusals.
func (p *Plan) externalUnixPeer(f *File, pe *sk_unix.UnixSkEntry, bad func(string, ...any) error) (*File, error) {
	u := f.Unix
	peer := fmt.Sprintf("its peer socket:[%d] (file %d)", pe.GetIno(), pe.GetId())
	if pe.GetUflags() != uskExtern {
		return nil, bad("%s: special unix socket (uflags %#x: criu service, plugin or inherited) is not supported", peer, pe.GetUflags())
	}
	if u.set.held[pe.GetId()] {
		return nil, bad("%s is external (USK_EXTERN) but a task of the image set holds it", peer)
	}
	if u.Type != unix.SOCK_DGRAM {
		return nil, bad("%s is external: one end of a %s connection can not be restored (CRIU dumps only datagram sockets so)", peer, images.SockTypeName(uint32(u.Type)))
	}
	name := pe.GetName()
	if len(name) == 0 {
		return nil, bad("%s is external and has no name to connect to", peer)
	}
	if len(name) > len(unix.RawSockaddrUnix{}.Path) {
		return nil, bad("%s is external, with a name of %d bytes", peer, len(name))
	}
	x := &UnixExternal{Ino: pe.GetIno(), Name: name, Dir: pe.GetNameDir(), plan: p}
	if name[0] != 0 {
		path := unixPath(name)
		if !filepath.IsAbs(path) && !filepath.IsAbs(x.Dir) {
			return nil, bad("%s is external, bound to the relative name %s without its directory", peer, path)
		}
		if p.ownMountNS() {
			return nil, bad("%s is external, at %s in a tree with a mount namespace of its own: not restored yet", peer, path)
		}
	}
	u.External = x
	if len(u.Queue) > 0 {
		u.Make = UnixFilled
	}
	return f, nil
}

// ownMountNS reports whether the tree has a mount namespace of its own
// (the root's, as loadNamespaces decides it); the tasks' ids are read
// before their files are planned.
func (p *Plan) ownMountNS() bool {
	root, ids := p.Root(), p.Dir.Inventory.GetRootIds()
	return root.IDs != nil && ids != nil && root.IDs.GetMntNsId() != ids.GetMntNsId()
}

// connectExternal connects socket f to its peer outside the image set.
func (b *unixBuild) connectExternal(f *File) error {
	u := f.Unix
	x := u.External
	err := connectUnix(b.fds[f], &UnixSocket{Name: x.Name, NameDir: x.Dir}, b.here)
	if err == nil {
		return nil
	}
	why := ""
	switch {
	case errors.Is(err, unix.ENOENT):
		why = ": nothing is bound there any more (criu restore fails too)"
	case errors.Is(err, unix.ECONNREFUSED):
		why = ": nobody holds the socket bound there any more (criu restore fails too)"
	case errors.Is(err, unix.EPERM):
		why = ": it is connected to another socket"
	}
	return sockErr(f, fmt.Errorf("%s: connect to its peer outside the tree, socket:[%d] at %s: %w%s",
		x.plan.holder(f), x.Ino, unixNameString(x.Name), err, why))
}
