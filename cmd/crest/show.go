package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"

	"github.com/spf13/pflag"

	"github.com/crest-restore/crest/images"
)

func init() {
	register(&verb{
		name:  "show",
		usage: "FILE.img | -D DIR [--json]",
		short: "print an image file as crit does, or summarize an image directory",
		long: `
With a file, show prints its entries as JSON in the form of CRIU's crit show:
{"magic": "CORE", "entries": [...]}, fields named as in CRIU's .proto files,
enums by name, payloads (pipe data, socket queues, ghost file contents) as
base64 under "extra". Like crit --pretty, numbers the .proto files mark as
hex, flags or devices are shown as "0x401000", "PROT_READ | PROT_EXEC",
"8:1"; --pretty=false prints crit decode's plain one-line form instead.
Raw images (pages-N.img and the like) have no entries: show tells their size.

With -D, show summarizes the directory: the process tree with namespaces,
each task's VMAs (with the pages stored for each), fds, cwd and root, the
shared memory objects and totals. --json prints the same summary as JSON.`,
		setup: func(fs *pflag.FlagSet) runFunc {
			dir := fs.StringP("images-dir", "D", "", "summarize the image directory `DIR`")
			asJSON := fs.Bool("json", false, "with -D: print the summary as JSON")
			pretty := fs.Bool("pretty", true, "indent, and show numbers as crit --pretty does (--pretty=false: plain)")
			nopl := fs.Bool("nopl", false, "show payloads by their size only (as crit --nopl)")
			return func(ctx context.Context, env *env, args []string) error {
				switch {
				case *dir != "" && len(args) > 0:
					return usagef("give either an image file or -D DIR, not both")
				case *dir != "":
					return showDir(env, *dir, *asJSON, *pretty)
				case len(args) == 1:
					return showFile(env, args[0], images.JSONOptions{Pretty: *pretty, NoPayload: *nopl})
				case len(args) == 0:
					return usagef("nothing to show: give an image file or -D DIR")
				default:
					return usagef("one image file at a time (got %d)", len(args))
				}
			}
		},
	})
}

func showFile(env *env, path string, o images.JSONOptions) error {
	if st, err := os.Stat(path); err == nil && st.IsDir() {
		return usagef("%s is a directory: use -D %s to summarize an image directory", path, path)
	}
	if kind := rawImageKind(filepath.Base(path)); kind != "" {
		return showRaw(env, path, kind)
	}
	img, err := images.ReadFile(path)
	if err != nil {
		return err
	}
	out, err := img.JSON(o)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	_, err = fmt.Fprintf(env.stdout, "%s\n", out)
	return err
}

// pagesImage is pages-N.img: the page contents that pagemaps with
// pages_id N address.
var pagesImage = regexp.MustCompile(`^pages-(\d+)\.img$`)

// rawImages are the files of an image directory that CRIU writes without
// magic or entries (criu/image-desc.c: the *_MAGIC = RAW_IMAGE_MAGIC ones).
var rawImages = []struct {
	re   *regexp.Regexp
	kind string
}{
	{pagesImage, "page data"},
	{regexp.MustCompile(`^pages-shmem-\d+\.img$`), "shared memory page data (pre-pagemap layout)"},
	{regexp.MustCompile(`^tmpfs(-dev)?-\d+\.tar\.gz\.img$`), "a tmpfs tarball"},
	{regexp.MustCompile(`^(ifaddr|route6?|rule)-\d+\.img$`), "iproute2 netlink dump"},
	{regexp.MustCompile(`^(ip6?tables|nftables)-\d+\.img$`), "firewall rules dump"},
}

func rawImageKind(name string) string {
	for _, r := range rawImages {
		if r.re.MatchString(name) {
			return r.kind
		}
	}
	return ""
}

// showRaw says what a raw image is; for pages-N.img also how many pages it
// holds and which pagemaps address it.
func showRaw(env *env, path, kind string) error {
	st, err := os.Stat(path)
	if err != nil {
		return err
	}
	fmt.Fprintf(env.stdout, "%s: raw image, %s: %d bytes, no entries to show\n", path, kind, st.Size())
	m := pagesImage.FindStringSubmatch(filepath.Base(path))
	if m == nil {
		return nil
	}
	fmt.Fprintf(env.stdout, "%d pages of 4096 bytes, addressed by the PE_PRESENT entries of pagemaps with pages_id %s",
		st.Size()/4096, m[1])
	users := pagemapsUsing(filepath.Dir(path), m[1])
	if len(users) > 0 {
		fmt.Fprintf(env.stdout, ": %s", users[0])
		for _, u := range users[1:] {
			fmt.Fprintf(env.stdout, ", %s", u)
		}
	}
	_, err = fmt.Fprintln(env.stdout)
	return err
}

// pagemapsUsing lists the pagemap images of dir whose head names pagesID.
func pagemapsUsing(dir, pagesID string) []string {
	id, err := strconv.ParseUint(pagesID, 10, 32)
	if err != nil {
		return nil
	}
	names, _ := filepath.Glob(filepath.Join(dir, "pagemap-*.img"))
	var out []string
	for _, n := range names {
		img, err := images.ReadKindFile(n, images.KindPagemap)
		if err != nil || len(img.Entries) == 0 {
			continue
		}
		if h, ok := img.Entries[0].Message.(interface{ GetPagesId() uint32 }); ok && uint64(h.GetPagesId()) == id {
			out = append(out, filepath.Base(n))
		}
	}
	sort.Strings(out)
	return out
}

func showDir(env *env, dir string, asJSON, pretty bool) error {
	d, err := images.Open(dir)
	if err != nil {
		return err
	}
	s, err := images.Summarize(d)
	if err != nil {
		return err // names the task and the image file already
	}
	if !asJSON {
		return s.WriteText(env.stdout)
	}
	var out []byte
	if pretty {
		out, err = json.MarshalIndent(s, "", "    ")
	} else {
		out, err = json.Marshal(s)
	}
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(env.stdout, "%s\n", out)
	return err
}
