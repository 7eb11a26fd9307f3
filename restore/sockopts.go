package restore

import (
	"fmt"

	"github.com/checkpoint-restore/go-criu/v8/crit/images/sk-opts"
)

// applySockOpts sets the options of sk_opts_entry on socket fd. (Stub: to
// be written.)
func applySockOpts(fd int, o *sk_opts.SkOptsEntry) error {
	return fmt.Errorf("socket options are not supported yet")
}
