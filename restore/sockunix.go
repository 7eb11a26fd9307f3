package restore

import (
	"fmt"

	"github.com/checkpoint-restore/go-criu/v8/crit/images/sk-unix"
)

// UnixSocket is an AF_UNIX socket of files.img. (Stub: to be written.)
type UnixSocket struct{}

func (p *Plan) unixSocketFile(t *Task, id uint32, e *sk_unix.UnixSkEntry) (*File, error) {
	return nil, &PlanError{PID: t.PID, File: "files.img", Msg: fmt.Sprintf("file %d: unix sockets are not supported yet", id)}
}

func (pr *prepared) openUnixSocket(f *File) (int, error) {
	return -1, fmt.Errorf("unix sockets are not supported yet")
}
