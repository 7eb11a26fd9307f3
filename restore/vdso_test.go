package restore

import (
	"context"
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/crest-restore/crest/test/procscan"
)

// TestVDSOLayout: images whose vvar or vDSO size is not this kernel's are
// refused before anything is launched, naming the task's mm image; the
// fixtures' layout is this kernel's.
func TestVDSOLayout(t *testing.T) {
	needRoot(t)
	installFixture(t, "counter")
	if err := checkVDSO(loadPlan(t, "counter")); err != nil {
		t.Fatalf("the fixture's layout: %v", err)
	}
	tests := []struct {
		name string
		edit func(v *VMA)
	}{
		{"one more vvar page", func(v *VMA) {
			if v.Kind == VMAVVAR {
				v.Start -= pageSize
			}
		}},
		{"one more vdso page", func(v *VMA) {
			if v.Kind == VMAVDSO {
				v.End += pageSize
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := loadPlan(t, "counter")
			root := p.Root()
			for i := range root.Mem.VMAs {
				tt.edit(&root.Mem.VMAs[i])
			}
			rec := &recorder{}
			r, err := Start(context.Background(), p, Options{Observer: rec})
			if err == nil {
				r.Abort()
				t.Fatal("the restore succeeded")
			}
			t.Log(err)
			var se *StageError
			if !errors.As(err, &se) || se.Stage != StageRootTask || !strings.Contains(err.Error(), "mm-") ||
				!strings.Contains(err.Error(), "vDSO proxy") {
				t.Errorf("error %v, want ROOT_TASK naming the mm image and the missing vDSO proxy", err)
			}
			// refused before the launch: no stage, no child
			if len(rec.Stages) != 0 {
				t.Errorf("stages switched: %+v", rec.Stages)
			}
			if kids, err := procscan.Find(procscan.ChildOf(os.Getpid())); err != nil || len(kids) != 0 {
				t.Errorf("children %v (%v)", kids, err)
			}
		})
	}
}
