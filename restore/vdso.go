package restore

import (
	"fmt"

	"github.com/crest-restore/crest/kerndat"
)

// checkVDSO refuses tasks whose vvar and vDSO are not laid out as this
// kernel lays them out. The restorer maps a fresh vDSO where the image had
// one (mem.c), and the kernel puts its own number of vvar pages below the
// text: with another layout the task's calls into its vDSO (and the agent's
// clock) would read the wrong pages. CRIU bridges that with a vDSO proxy;
// crest has none.
func checkVDSO(p *Plan) error {
	var kernel *kerndat.VDSOLayout
	for _, t := range p.Tasks {
		if t.Kind != TaskAlive {
			continue
		}
		var img kerndat.VDSOLayout
		for _, v := range t.Mem.VMAs {
			switch v.Kind {
			case VMAVVAR:
				img.VVAR += v.End - v.Start
			case VMAVDSO:
				img.VDSO += v.End - v.Start
			}
		}
		if img.VDSO == 0 {
			continue // no vDSO: none is mapped
		}
		if kernel == nil {
			l, err := kerndat.VDSO()
			if err != nil {
				return &PlanError{PID: t.PID, Msg: "this kernel's vDSO layout", Err: err}
			}
			kernel = &l
		}
		if img != *kernel {
			return &PlanError{PID: t.PID, File: fmt.Sprintf("mm-%d.img", t.PID),
				Msg: fmt.Sprintf("vvar %#x and vdso %#x bytes, this kernel maps %#x and %#x: the task's vDSO would not work (images of another kernel need a vDSO proxy, which crest lacks)",
					img.VVAR, img.VDSO, kernel.VVAR, kernel.VDSO)}
		}
	}
	return nil
}
