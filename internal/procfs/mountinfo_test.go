package procfs

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func TestReadMountinfo(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good")
	text := "22 1 0:21 / /proc rw,nosuid shared:5 - proc proc rw\n" +
		"30 22 8:1 /sub\\040dir /mnt/my\\040disk rw - ext4 /dev/sda1 rw\n" +
		"31 22 0:12 / /sys/kernel/tracing rw shared:1 master:2 - tracefs nodev rw\n" +
		"32 22 0:30 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n"
	if err := os.WriteFile(good, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	got, err := ReadMountinfo(good)
	if err != nil {
		t.Fatal(err)
	}
	want := []Mount{
		{Major: 0, Minor: 21, Root: "/", Point: "/proc", FSType: "proc", SuperOptions: []string{"rw"}},
		{Major: 8, Minor: 1, Root: "/sub dir", Point: "/mnt/my disk", FSType: "ext4", SuperOptions: []string{"rw"}},
		{Major: 0, Minor: 12, Root: "/", Point: "/sys/kernel/tracing", FSType: "tracefs", SuperOptions: []string{"rw"}},
		{Major: 0, Minor: 30, Root: "/", Point: "/sys/fs/cgroup/cpu,cpuacct", FSType: "cgroup", SuperOptions: []string{"rw", "cpu", "cpuacct"}},
	}
	if len(got) != len(want) {
		t.Fatalf("got %d mounts %+v, want %d", len(got), got, len(want))
	}
	for i := range want {
		if !reflect.DeepEqual(got[i], want[i]) {
			t.Errorf("mount %d: %+v, want %+v", i, got[i], want[i])
		}
	}
	// This process's own mountinfo parses, and has its root.
	self, err := ReadMountinfo("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	root := false
	for _, m := range self {
		root = root || m.Point == "/"
	}
	if !root {
		t.Errorf("/proc/self/mountinfo: no mount at /: %+v", self)
	}
	for _, bad := range []string{
		"22 1 0:21 / /proc rw - \n",             // no fstype after the separator
		"22 1 0:21 / /proc rw proc proc rw\n",   // no separator
		"22 1 zero:21 / /proc rw - proc proc\n", // bad device
	} {
		path := filepath.Join(dir, "bad")
		if err := os.WriteFile(path, []byte(bad), 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := ReadMountinfo(path); err == nil || !strings.Contains(err.Error(), path) {
			t.Errorf("%q: error %v, want one naming %s", bad, err, path)
		}
	}
}

func TestUnescapeMountPath(t *testing.T) {
	for in, want := range map[string]string{
		"/sys/kernel/tracing":  "/sys/kernel/tracing",
		`/mnt/my\040tracing`:   "/mnt/my tracing",
		`/mnt/tab\011and\134x`: "/mnt/tab\tand\\x",
		`/mnt/trailing\04`:     `/mnt/trailing\04`,
	} {
		if got := UnescapeMountPath(in); got != want {
			t.Errorf("UnescapeMountPath(%q) = %q, want %q", in, got, want)
		}
	}
}
