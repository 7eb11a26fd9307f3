package restore

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"golang.org/x/sys/unix"

	remap_file_path "github.com/checkpoint-restore/go-criu/v8/crit/images/remap-file-path"

	"github.com/crest-restore/crest/images"
)

// Remapped files. A file that had no name at the dump (deleted while
// open or mapped, or made with O_TMPFILE) keeps its path in files.img,
// and remap-fpath.img says how it is found again:
//
//   - GHOST: ghost-file-ID.img holds the file itself (mode, owner,
//     times, contents with its holes). The restore makes it again at a
//     name of its own, PATH.cr.ID.ghost beside the first file that names
//     it (CRIU's choice, a parent missing being skipped as CRIU does).
//   - LINKED: CRIU's dump (--link-remap) made a hard link to a file that
//     was deleted but still linked elsewhere; files.img's REG entry
//     remap_id is that link.
//
// Either way every open of such a file, by an fd or for a mapping, links
// that name to the file's own path (PATH.cr_link when the path is taken),
// opens it there and unlinks it again, as CRIU's open_path does: every
// open file description is of the one inode, which shows as "PATH
// (deleted)" in /proc as at the dump, and the processes sharing a
// MAP_SHARED mapping of it (a POSIX semaphore) share one object again.
//
// The engine opens every file of the tree before the first task is
// forked (prepareFiles), so the ghosts are removed as soon as that is
// done, whether it worked or not: from then on nothing needs their
// names, and no later failure, not even crest killed, can leave one
// behind. CRIU's links are kept until the restore completed, as CRIU
// does: a failed restore needs them again.
//
// In a tree with a mount namespace of its own the paths are the
// namespace's: the ghosts are made there, on the mount files.img names
// for the file of each (its mnt_id), once PREPARE_NAMESPACES made the
// mounts, and removed once the tree's files are open there, as CRIU's
// create_ghost makes them (planMntGhosts, mntns_files.go); CRIU's links
// are refused there.

// Remap says how a regular file that had no name at the dump is opened.
type Remap struct {
	// Ghost is the file made again from its image (GHOST).
	Ghost *Ghost
	// Link is the hard link CRIU's dump made (LINKED).
	Link string
}

// Ghost is a file kept in the images (ghost-file-ID.img), made again by
// the engine for the restore.
type Ghost struct {
	ID uint32 // remap id: ghost-file-ID.img
	// Path is where the restore makes it: the path of the file of its
	// first remap-fpath.img entry with ".cr.ID.ghost" added.
	Path           string
	Mode, UID, GID uint32
	// Atime and Mtime, when the image has them.
	Atime, Mtime *unix.Timeval
	Size         uint64
	// Chunks are the contents: one piece at 0, or the pieces between
	// holes, in order and apart.
	Chunks []images.GhostChunk
	// Owner is the first task that needs it (the timeline's step).
	Owner *Task
	// Files are the files.img entries it stands for.
	Files []*File
}

// remapEntry is one entry of remap-fpath.img, by the file it remaps.
type remapEntry struct {
	index   int // in remap-fpath.img
	kind    remap_file_path.RemapType
	remapID uint32
}

// remapTable is remap-fpath.img and what planning made of it.
type remapTable struct {
	byFile    map[uint32]remapEntry
	ghostPath map[uint32]string // remap id -> where its ghost is made
	ghosts    map[uint32]*Ghost
	order     []*Ghost // as planned
	links     []string // CRIU's links, removed when the restore completes
}

// remapGhostBit marks a ghost in the remap id of images older than
// remap_type (CRIU's REMAP_GHOST).
const remapGhostBit = 1 << 31

// remapsOf reads remap-fpath.img on first use. Every entry must remap a
// regular file of files.img, once.
func (p *Plan) remapsOf() (*remapTable, error) {
	if p.remaps != nil {
		return p.remaps, nil
	}
	ents, err := p.Dir.RemapFpath()
	if err != nil {
		return nil, &PlanError{Err: err}
	}
	rt := &remapTable{byFile: map[uint32]remapEntry{}, ghostPath: map[uint32]string{}, ghosts: map[uint32]*Ghost{}}
	for i, e := range ents {
		where := fmt.Sprintf("entry %d (file %d)", i, e.GetOrigId())
		re := remapEntry{index: i, kind: e.GetRemapType(), remapID: e.GetRemapId()}
		if e.RemapType == nil {
			// before remap_type, a flag in the id told ghosts from links
			re.kind = remap_file_path.RemapType_LINKED
			if re.remapID&remapGhostBit != 0 {
				re.kind, re.remapID = remap_file_path.RemapType_GHOST, re.remapID&^remapGhostBit
			}
		}
		if _, dup := rt.byFile[e.GetOrigId()]; dup {
			return nil, &PlanError{File: "remap-fpath.img", Msg: where + ": the file is remapped twice"}
		}
		fe, err := p.Dir.File(e.GetOrigId())
		if err != nil {
			return nil, &PlanError{File: "remap-fpath.img", Msg: where, Err: err}
		}
		if fe.GetReg() == nil {
			return nil, &PlanError{File: "remap-fpath.img", Msg: fmt.Sprintf("%s: a %s file, only regular files are remapped", where, fe.GetType())}
		}
		rt.byFile[e.GetOrigId()] = re
		if _, ok := rt.ghostPath[re.remapID]; !ok && re.kind == remap_file_path.RemapType_GHOST {
			rt.ghostPath[re.remapID] = fmt.Sprintf("%s.cr.%x.ghost", fe.GetReg().GetName(), re.remapID)
		}
	}
	p.remaps = rt
	return rt, nil
}

// planRemap gives the regular file f its remap, if remap-fpath.img has
// one; t is the task that names it first.
func (p *Plan) planRemap(t *Task, f *File) error {
	rt, err := p.remapsOf()
	if err != nil {
		return err
	}
	e, ok := rt.byFile[f.ID]
	if !ok {
		return nil
	}
	where := fmt.Sprintf("entry %d (file %d, %s)", e.index, f.ID, f.Path)
	switch e.kind {
	case remap_file_path.RemapType_GHOST:
		g, err := p.ghost(t, rt, e.remapID, where)
		if err != nil {
			return err
		}
		name := ghostImage(g.ID)
		if f.Mode != 0 && f.Mode != g.Mode {
			return &PlanError{PID: t.PID, File: name, Msg: fmt.Sprintf("mode %#o, but files.img has %#o for file %d (%s)", g.Mode, f.Mode, f.ID, f.Path)}
		}
		if f.Size != 0 && f.Size != g.Size {
			return &PlanError{PID: t.PID, File: name, Msg: fmt.Sprintf("%d bytes, but files.img has %d for file %d (%s)", g.Size, f.Size, f.ID, f.Path)}
		}
		g.Files = append(g.Files, f)
		f.Remap = &Remap{Ghost: g}
	case remap_file_path.RemapType_LINKED:
		le, err := p.Dir.File(e.remapID)
		if err != nil {
			return &PlanError{PID: t.PID, File: "remap-fpath.img", Msg: where + ": its link", Err: err}
		}
		if le.GetReg() == nil {
			return &PlanError{PID: t.PID, File: "remap-fpath.img", Msg: fmt.Sprintf("%s: its link, file %d, is a %s file", where, e.remapID, le.GetType())}
		}
		link := le.GetReg().GetName()
		f.Remap = &Remap{Link: link}
		if !slices.Contains(rt.links, link) {
			rt.links = append(rt.links, link)
		}
	case remap_file_path.RemapType_PROCFS:
		return &PlanError{PID: t.PID, File: "remap-fpath.img", Msg: fmt.Sprintf("%s: in /proc of process %d, which was dead at the dump: not supported", where, e.remapID)}
	default:
		return &PlanError{PID: t.PID, File: "remap-fpath.img", Msg: fmt.Sprintf("%s: remap type %d is not known", where, e.kind)}
	}
	return nil
}

func ghostImage(id uint32) string { return fmt.Sprintf("ghost-file-%x.img", id) }

// ghost reads and checks ghost-file-ID.img once; where names the remap
// entry that first needs it.
func (p *Plan) ghost(t *Task, rt *remapTable, id uint32, where string) (*Ghost, error) {
	if g := rt.ghosts[id]; g != nil {
		return g, nil
	}
	name := ghostImage(id)
	img, err := p.Dir.GhostFile(id)
	if err != nil {
		return nil, &PlanError{PID: t.PID, Err: err}
	}
	if img == nil {
		return nil, &PlanError{PID: t.PID, File: name, Msg: "missing: remap-fpath.img " + where + " names it"}
	}
	e := img.Entry
	g := &Ghost{ID: id, Path: rt.ghostPath[id], Mode: e.GetMode(), UID: e.GetUid(), GID: e.GetGid(), Owner: t}
	if e.GetMode()&unix.S_IFMT != unix.S_IFREG {
		return nil, &PlanError{PID: t.PID, File: name, Msg: fmt.Sprintf("entry 0: a file of mode %#o (for remap-fpath.img %s): only deleted regular files are restored", e.GetMode(), where)}
	}
	if e.Atim != nil {
		g.Atime = &unix.Timeval{Sec: int64(e.Atim.GetTvSec()), Usec: int64(e.Atim.GetTvUsec())}
		g.Mtime = &unix.Timeval{Sec: int64(e.GetMtim().GetTvSec()), Usec: int64(e.GetMtim().GetTvUsec())}
	}
	if !e.GetChunks() {
		g.Size = uint64(len(img.Chunks[0].Data))
		g.Chunks = img.Chunks
	} else {
		if e.Size == nil {
			return nil, &PlanError{PID: t.PID, File: name, Msg: "entry 0: chunks without the file's size"}
		}
		g.Size = e.GetSize()
		var end uint64
		for i, c := range img.Chunks {
			cend := c.Off + uint64(len(c.Data))
			what := fmt.Sprintf("entry %d (chunk at %d, %d bytes)", i+1, c.Off, len(c.Data))
			switch {
			case i > 0 && c.Off < end:
				return nil, &PlanError{PID: t.PID, File: name, Msg: fmt.Sprintf("%s: before the end of entry %d at %d: chunks out of order", what, i, end)}
			case cend > g.Size || cend < c.Off:
				return nil, &PlanError{PID: t.PID, File: name, Msg: fmt.Sprintf("%s: past the file's size, %d", what, g.Size)}
			}
			end = cend
		}
		g.Chunks = img.Chunks
	}
	rt.ghosts[id] = g
	rt.order = append(rt.order, g)
	return g, nil
}

// makeGhosts makes every ghost of the plan, each in its owner's step.
// The paths made are in pr.ghosts, for removeGhosts. A tree with a mount
// namespace of its own gets its ghosts there, on their mounts, once they
// are made (makeMntGhosts, mntns_files.go).
func (pr *prepared) makeGhosts(p *Plan) error {
	if p.remaps == nil || len(p.remaps.order) == 0 || p.Mnt != nil {
		return nil
	}
	pr.ghostPaths = map[*Ghost]string{}
	for _, t := range p.Tasks {
		begin := boottime()
		made := 0
		for _, g := range p.remaps.order {
			if g.Owner != t {
				continue
			}
			path, err := pr.makeGhost(g)
			if err != nil {
				return fmt.Errorf("task %d: %s (%s): %w", t.PID, ghostImage(g.ID), g.Files[0].Path, err)
			}
			pr.ghostPaths[g] = path
			made++
		}
		if made > 0 {
			pr.step(t, "make ghost files", begin)
		}
	}
	return nil
}

// makeGhost makes g at its path, kept in pr.ghosts for removeGhosts.
func (pr *prepared) makeGhost(g *Ghost) (string, error) {
	path, err := makeGhostAt(unix.AT_FDCWD, g.Path, g, 0)
	if path != "" {
		pr.ghosts = append(pr.ghosts, path)
	}
	if err != nil {
		return "", err
	}
	return path, nil
}

// makeGhostAt creates g as CRIU's create_ghost does: at path (under
// dirfd, resolved with resolve, openat2's RESOLVE_* flags), or with a
// parent left out of it for each that is missing, with its mode, owner,
// contents (holes staying holes) and times. It returns the path it
// created, also when it failed after creating it: the caller removes it.
func makeGhostAt(dirfd int, path string, g *Ghost, resolve uint64) (string, error) {
	var fd int
	for {
		var err error
		fd, err = unix.Openat2(dirfd, path, &unix.OpenHow{Flags: unix.O_WRONLY | unix.O_CREAT | unix.O_EXCL | unix.O_CLOEXEC,
			Mode: uint64(g.Mode & 0o7777), Resolve: resolve})
		if err == nil {
			break
		}
		if errors.Is(err, unix.ENOENT) {
			if p, ok := trimLastParent(path); ok {
				path = p
				continue
			}
		}
		if errors.Is(err, unix.EEXIST) {
			return "", fmt.Errorf("%w (left by another restore of these images?)", &os.PathError{Op: "create", Path: path, Err: err})
		}
		return "", &os.PathError{Op: "create", Path: path, Err: err}
	}
	err := fillGhost(fd, path, g)
	// the mode after the owner (chown takes set-id bits), and both after
	// the open, which the engine's umask narrowed
	if err == nil {
		if cerr := unix.Fchown(fd, int(g.UID), int(g.GID)); cerr != nil {
			err = &os.PathError{Op: "chown", Path: path, Err: cerr}
		}
	}
	if err == nil {
		if cerr := unix.Fchmod(fd, g.Mode&0o7777); cerr != nil {
			err = &os.PathError{Op: "chmod", Path: path, Err: cerr}
		}
	}
	if cerr := unix.Close(fd); err == nil && cerr != nil {
		err = &os.PathError{Op: "close", Path: path, Err: cerr}
	}
	if err != nil {
		return path, err
	}
	if g.Atime != nil {
		ts := []unix.Timespec{unix.NsecToTimespec(unix.TimevalToNsec(*g.Atime)), unix.NsecToTimespec(unix.TimevalToNsec(*g.Mtime))}
		if err := unix.UtimesNanoAt(dirfd, path, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return path, &os.PathError{Op: "utimensat", Path: path, Err: err}
		}
	}
	return path, nil
}

// fillGhost writes g's contents: its size first, so that what no chunk
// covers stays a hole.
func fillGhost(fd int, path string, g *Ghost) error {
	if err := unix.Ftruncate(fd, int64(g.Size)); err != nil {
		return &os.PathError{Op: "ftruncate", Path: path, Err: err}
	}
	for _, c := range g.Chunks {
		for off, b := int64(c.Off), c.Data; len(b) > 0; {
			n, err := unix.Pwrite(fd, b, off)
			if err == unix.EINTR {
				continue
			}
			if err != nil {
				return &os.PathError{Op: "write", Path: path, Err: err}
			}
			b, off = b[n:], off+int64(n)
		}
	}
	return nil
}

// trimLastParent turns "/a/b/c/d" into "/a/b/d" (CRIU's trim_last_parent):
// where a ghost goes when its directory is gone.
func trimLastParent(path string) (string, bool) {
	dir, file := filepath.Split(path)
	dir = strings.TrimRight(dir, "/")
	if dir == "" || file == "" {
		return "", false
	}
	return filepath.Join(filepath.Dir(dir), file), true
}

// removeGhosts removes the ghosts made; the files live on in the fds
// opened on them. Failures are logged: the restore does not need the
// names.
func (pr *prepared) removeGhosts() error {
	var errs []error
	for _, path := range pr.ghosts {
		if err := unix.Unlink(path); err != nil && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, &os.PathError{Op: "unlink", Path: path, Err: err})
		}
	}
	pr.ghosts = nil
	return errors.Join(errs...)
}

// openPath opens the regular file f with flags: by its path, or by a
// remap's file linked there for the time of the open.
func (pr *prepared) openPath(f *File, flags int) (int, error) {
	if f.Remap == nil {
		return openRegularAs(f, flags)
	}
	src := f.Remap.Link
	if g := f.Remap.Ghost; g != nil {
		src = pr.ghostPaths[g]
		if src == "" {
			return -1, fmt.Errorf("%s: %s was not made", f.Path, ghostImage(g.ID))
		}
	}
	return openRemapped(f, src, flags)
}

// openRemapped opens f through src, linked at f's path (or at PATH.cr_link
// when something else took the path) and unlinked again once open, as
// CRIU's open_path; parents missing are made for the link and removed.
func openRemapped(f *File, src string, flags int) (int, error) {
	link := f.Path
	made, err := makeParents(filepath.Dir(link))
	defer removeParents(made)
	if err != nil {
		return -1, err
	}
	err = unix.Linkat(unix.AT_FDCWD, src, unix.AT_FDCWD, link, 0)
	if errors.Is(err, unix.EEXIST) {
		link = f.Path + ".cr_link"
		err = unix.Linkat(unix.AT_FDCWD, src, unix.AT_FDCWD, link, 0)
	}
	if err != nil {
		return -1, &os.LinkError{Op: "link", Old: src, New: link, Err: err}
	}
	fd, err := openRegularPath(f, link, flags)
	if uerr := unix.Unlink(link); uerr != nil && err == nil {
		unix.Close(fd)
		return -1, &os.PathError{Op: "unlink", Path: link, Err: uerr}
	}
	return fd, err
}

// makeParents makes the missing directories of dir, outermost first, and
// returns those it made.
func makeParents(dir string) ([]string, error) {
	var missing []string
	for d := dir; ; d = filepath.Dir(d) {
		if _, err := os.Lstat(d); err == nil || !errors.Is(err, os.ErrNotExist) || d == "/" || d == "." {
			break
		}
		missing = append(missing, d)
	}
	var made []string
	for i := len(missing) - 1; i >= 0; i-- {
		if err := unix.Mkdir(missing[i], 0o755); err != nil {
			return made, &os.PathError{Op: "mkdir", Path: missing[i], Err: err}
		}
		made = append(made, missing[i])
	}
	return made, nil
}

// removeParents removes what makeParents made, innermost first.
func removeParents(made []string) {
	for i := len(made) - 1; i >= 0; i-- {
		unix.Rmdir(made[i])
	}
}

// removeLinkRemaps removes the links CRIU's dump made, once the restore
// completed (CRIU's try_clean_remaps): the images need them no more.
func (r *Restore) removeLinkRemaps() {
	if r.plan.remaps == nil {
		return
	}
	for _, l := range r.plan.remaps.links {
		if err := unix.Unlink(l); err != nil && !errors.Is(err, unix.ENOENT) {
			r.log.Warn("link remap not removed", "path", l, "err", err)
		}
	}
}
