package kerndat

import (
	"strings"
	"testing"
)

func TestTimeNamespace(t *testing.T) {
	tests := []struct {
		name     string
		nsPath   string
		offsets  string
		ok       bool
		contains string
	}{
		{"offsets", "/proc/self/ns/time", "boottime 1 500\n", true, "offsets set (boottime 1 500)"},
		{"no time namespaces", "/nonexistent/ns/time", "monotonic 1 0\n", false,
			"no time namespaces: readlink /nonexistent/ns/time: no such file or directory (ENOENT)"},
		{"realtime can not be offset", "/proc/self/ns/time", "realtime 1 0\n", false, "invalid argument (EINVAL)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := probeTimeNamespace(tt.nsPath, tt.offsets)
			t.Log(f)
			if f.OK != tt.ok || !strings.Contains(f.Reason, tt.contains) {
				t.Errorf("ok = %v, reason %q; want ok = %v and %q", f.OK, f.Reason, tt.ok, tt.contains)
			}
		})
	}
}
