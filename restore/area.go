package restore

import (
	"fmt"
	"sort"
)

// The crest area is the one address range that every task keeps for crest
// from its birth to its sigreturn: the shared task_entries and slots, the
// plan, and (once memory restore exists) the restorer code and its stack.
// It must be free in every task's target layout, so that unmapping
// everything else leaves it in place, and in the agent's own layout, which
// the kernel lays out near the top of the address space (stack and the
// static PIE's mmap base) and around 0x5555... for executables. Searching
// upwards from 1 TiB avoids both.
const (
	areaSearchFrom = 1 << 40
	areaSearchTo   = 0x7f0000000000
	areaAlign      = 2 << 20 // 2 MiB
)

// area is the crest area and its parts, all page aligned: the shared
// task_entries and slots, the plan, the restorer (the agent's image, copied
// there by each task) and the restorer's stack.
type area struct {
	Start, Size  uint64
	SharedAddr   uint64
	SharedSize   uint64
	PlanAddr     uint64
	PlanSize     uint64
	RestorerAddr uint64
	RestorerSize uint64
	StackAddr    uint64
	StackSize    uint64 // of one stack
	NrStacks     uint64 // one per thread of the task with the most
}

// restorerStack is the size of one thread's restorer stack; its
// rt_sigframe is built at its bottom.
const restorerStack = 64 << 10

func pageAlign(n uint64) uint64 { return (n + pageSize - 1) &^ (pageSize - 1) }

const pageSize = 4096

// chooseArea finds the lowest hole of size bytes (aligned to areaAlign) above
// areaSearchFrom that no task of p maps, for the shared area and the plan.
func chooseArea(p *Plan, sharedSize, planSize, restorerSize uint64) (area, error) {
	nrStacks := uint64(1)
	for _, t := range p.Tasks {
		nrStacks = max(nrStacks, uint64(len(t.Threads)))
	}
	size := pageAlign(sharedSize) + pageAlign(planSize) + pageAlign(restorerSize) + nrStacks*restorerStack
	type rng struct{ start, end uint64 }
	var used []rng
	for _, t := range p.Tasks {
		for _, v := range t.Mem.VMAs {
			used = append(used, rng{v.Start, v.End})
		}
	}
	sort.Slice(used, func(i, j int) bool { return used[i].start < used[j].start })
	cand := uint64(areaSearchFrom)
	for _, u := range used {
		if u.end <= cand {
			continue
		}
		if u.start >= cand+size {
			break
		}
		cand = (u.end + areaAlign - 1) &^ (areaAlign - 1)
	}
	if cand+size > areaSearchTo {
		return area{}, fmt.Errorf("no free range of %d bytes for the crest area in the tasks' layouts", size)
	}
	a := area{
		Start: cand, Size: size,
		SharedAddr: cand, SharedSize: pageAlign(sharedSize),
		PlanSize: pageAlign(planSize), RestorerSize: pageAlign(restorerSize),
		StackSize: restorerStack, NrStacks: nrStacks,
	}
	a.PlanAddr = a.SharedAddr + a.SharedSize
	a.RestorerAddr = a.PlanAddr + a.PlanSize
	a.StackAddr = a.RestorerAddr + a.RestorerSize
	return a, nil
}
