package dump

import (
	"fmt"

	"github.com/checkpoint-restore/go-criu/v8/crit/images/sk-opts"
)

// sockOpts reads the options sk_opts_entry keeps from socket fd (a copy in
// this process). (Stub: to be written.)
func sockOpts(fd int) (*sk_opts.SkOptsEntry, error) {
	return nil, fmt.Errorf("socket options are not supported yet")
}
