package images

import (
	"errors"
	"fmt"
	"io/fs"
)

// FormatError reports an image file that does not follow the CRIU format:
// which file, where in it, and which entry.
type FormatError struct {
	File   string // path of the image file
	Offset int64  // byte offset where the problem starts
	Entry  int    // index of the entry (0 is the first after the magic), -1 for the header
	Msg    string
	Err    error // underlying error, if any (io.ErrUnexpectedEOF, a protobuf error)
}

func (e *FormatError) Error() string {
	where := "header"
	if e.Entry >= 0 {
		where = fmt.Sprintf("entry %d", e.Entry)
	}
	s := fmt.Sprintf("%s: %s at offset %d: %s", e.File, where, e.Offset, e.Msg)
	if e.Err != nil {
		s += ": " + e.Err.Error()
	}
	return s
}

func (e *FormatError) Unwrap() error { return e.Err }

// MissingError reports a required image file that is absent.
type MissingError struct {
	File string // path of the missing file
	What string // what needed it, e.g. "task 3"
}

func (e *MissingError) Error() string {
	if e.What == "" {
		return fmt.Sprintf("%s: required image is missing", e.File)
	}
	return fmt.Sprintf("%s: required image is missing (needed for %s)", e.File, e.What)
}

// Is makes errors.Is(err, fs.ErrNotExist) true for a missing image.
func (e *MissingError) Is(target error) bool { return target == fs.ErrNotExist }

// IsFormat reports whether err is (or wraps) a FormatError.
func IsFormat(err error) bool {
	var fe *FormatError
	return errors.As(err, &fe)
}
