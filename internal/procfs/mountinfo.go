package procfs

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// Mount is a line of a mountinfo file (proc(5)): the device of the mount,
// its root in that file system, where it is mounted and the file system
// type.
type Mount struct {
	Major, Minor uint32
	Root         string
	Point        string
	FSType       string
	// SuperOptions are the file system's options (the last field),
	// split at the commas: a cgroup v1 mount's controllers are there.
	SuperOptions []string
}

// ReadMountinfo reads a mountinfo file, e.g. /proc/self/mountinfo:
// "id parent major:minor root mount-point options [optional...] - fstype
// source super-options", paths unescaped.
func ReadMountinfo(path string) ([]Mount, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []Mount
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		m, err := parseMountinfoLine(sc.Text())
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		out = append(out, m)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return out, nil
}

func parseMountinfoLine(line string) (Mount, error) {
	fields := strings.Fields(line)
	sep := -1
	for i := 6; i < len(fields); i++ {
		if fields[i] == "-" {
			sep = i
			break
		}
	}
	if len(fields) < 5 || sep < 0 || sep+1 >= len(fields) {
		return Mount{}, fmt.Errorf("%q: too few fields", line)
	}
	maj, min, ok := strings.Cut(fields[2], ":")
	ma, err1 := strconv.ParseUint(maj, 10, 32)
	mi, err2 := strconv.ParseUint(min, 10, 32)
	if !ok || err1 != nil || err2 != nil {
		return Mount{}, fmt.Errorf("%q: bad device %q", line, fields[2])
	}
	m := Mount{Major: uint32(ma), Minor: uint32(mi), Root: UnescapeMountPath(fields[3]),
		Point: UnescapeMountPath(fields[4]), FSType: fields[sep+1]}
	if sep+3 < len(fields) {
		m.SuperOptions = strings.Split(fields[sep+3], ",")
	}
	return m, nil
}

// UnescapeMountPath undoes the octal escapes (\040 for a space ...) the
// kernel writes in mountinfo paths.
func UnescapeMountPath(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
