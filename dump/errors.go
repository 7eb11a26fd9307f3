package dump

import "fmt"

// UnsupportedError is state of the tree that crest cannot restore: the
// dump fails rather than write images that would not come back.
type UnsupportedError struct {
	Task     int    // pid of the task (host pid when not yet known in the namespace)
	Resource string // "fd 3", "net namespace", "state" ...
	What     string // what the resource is: "socket:[1234]"
	Why      string
}

func (e *UnsupportedError) Error() string {
	what := ""
	if e.What != "" {
		what = " (" + e.What + ")"
	}
	return fmt.Sprintf("task %d: %s%s: %s", e.Task, e.Resource, what, e.Why)
}
