package bpf

import (
	"encoding/binary"
	"testing"
)

// FuzzDecodeRecord: ring-buffer records are bytes from the kernel; a
// record of the wrong size or kind must give an error, never a panic.
func FuzzDecodeRecord(f *testing.F) {
	for _, kind := range []uint32{kindFutex, kindClone, kindClone3, kindSetns, kindSysExit, kindFork, kindExit, 99} {
		rec := make([]byte, 256)
		binary.NativeEndian.PutUint32(rec[16:], kind)
		f.Add(rec)
		f.Add(rec[:24])
	}
	clone3 := make([]byte, 256)
	binary.NativeEndian.PutUint32(clone3[16:], kindClone3)
	binary.NativeEndian.PutUint64(clone3[40:], 1<<40) // set_tid_size
	binary.NativeEndian.PutUint32(clone3[56:], flagArgsOK|flagSetTIDOK)
	f.Add(clone3)
	fork := make([]byte, 256)
	binary.NativeEndian.PutUint32(fork[16:], kindFork)
	binary.NativeEndian.PutUint32(fork[32:], 1<<31) // parent_level
	binary.NativeEndian.PutUint32(fork[36:], 40)    // child_level
	f.Add(fork)
	f.Fuzz(func(t *testing.T, rec []byte) {
		var j joiner
		ev, err := decodeRecord(rec)
		if err != nil {
			if ev != nil {
				t.Fatalf("error %v with an event", err)
			}
			return
		}
		if e := j.add(ev); e != nil {
			e.clone()
			if f, ok := e.(*ForkEvent); ok {
				_ = f.ChildLevel()
				if len(f.ChildTIDs) > maxLevels || len(f.ParentTIDs) > maxLevels || len(f.RealParentPIDs) > maxLevels {
					t.Fatalf("fork with %d/%d levels", len(f.ChildTIDs), len(f.ParentTIDs))
				}
			}
			if c, ok := e.(*Clone3Event); ok && len(c.SetTID) > maxSetTID {
				t.Fatalf("set_tid of %d", len(c.SetTID))
			}
		}
	})
}
