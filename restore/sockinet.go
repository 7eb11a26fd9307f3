package restore

import (
	"fmt"

	"github.com/checkpoint-restore/go-criu/v8/crit/images/sk-inet"
)

// InetSocket is an AF_INET or AF_INET6 socket of files.img. (Stub: to be
// written.)
type InetSocket struct{}

func (p *Plan) inetSocketFile(t *Task, id uint32, e *sk_inet.InetSkEntry) (*File, error) {
	return nil, &PlanError{PID: t.PID, File: "files.img", Msg: fmt.Sprintf("file %d: inet sockets are not supported yet", id)}
}

func openInetSocket(f *File) (int, error) {
	return -1, fmt.Errorf("inet sockets are not supported yet")
}
