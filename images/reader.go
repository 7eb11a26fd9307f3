package images

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"

	"google.golang.org/protobuf/proto"

	bpfmap_data "github.com/checkpoint-restore/go-criu/v8/crit/images/bpfmap-data"
	ghost_file "github.com/checkpoint-restore/go-criu/v8/crit/images/ghost-file"
	ipc_msg "github.com/checkpoint-restore/go-criu/v8/crit/images/ipc-msg"
	ipc_sem "github.com/checkpoint-restore/go-criu/v8/crit/images/ipc-sem"
	ipc_shm "github.com/checkpoint-restore/go-criu/v8/crit/images/ipc-shm"
	pipe_data "github.com/checkpoint-restore/go-criu/v8/crit/images/pipe-data"
	sk_packet "github.com/checkpoint-restore/go-criu/v8/crit/images/sk-packet"
	tcp_stream "github.com/checkpoint-restore/go-criu/v8/crit/images/tcp-stream"
)

// Entry is one entry of an image file: its message and the raw bytes that
// follow it in the file, for kinds that carry payloads (pipe data, queued
// packets, TCP queues, ghost file contents).
type Entry struct {
	Message proto.Message
	Payload []byte
}

// Image is a whole decoded image file.
type Image struct {
	Kind    *Kind
	Entries []Entry
}

// Reader reads the entries of one image file in order.
type Reader struct {
	r      io.Reader
	name   string
	kind   *Kind
	off    int64
	index  int
	remain int64 // bytes left in the input, -1 if unknown

	ghostChunks bool // the ghost head said chunks: entries follow
	ghostTail   bool // the ghost head took the rest of the file
}

// NewReader reads the magic at the start of r and returns a Reader for the
// entries that follow. name is the file's path, used in errors. size is the
// input's length in bytes, or -1 if unknown; when known, entry lengths that
// run past it are refused before anything is allocated.
func NewReader(r io.Reader, name string, size int64) (*Reader, error) {
	rd := &Reader{r: r, name: name, remain: size, index: -1}
	m, err := rd.magic()
	if err != nil {
		return nil, err
	}
	switch m {
	case MagicImgCommon, MagicImgService:
		m2, err := rd.magic()
		if err != nil {
			return nil, err
		}
		k := KindOf(m2)
		if k == nil {
			return nil, rd.errorf(4, nil, "unknown image magic %s after %s", m2, m)
		}
		if k.Prefix != m {
			return nil, rd.errorf(4, nil, "%s image behind prefix %s, want %s", k.Name, m, k.Prefix)
		}
		rd.kind = k
	case MagicInventory:
		rd.kind = KindInventory
	default:
		if k := KindOf(m); k != nil {
			return nil, rd.errorf(4, nil, "%s image without its %s prefix", k.Name, k.Prefix)
		}
		return nil, rd.errorf(4, nil, "unknown magic %s (not a CRIU image, or a raw one)", m)
	}
	rd.index = 0
	return rd, nil
}

// NewKindReader is NewReader that also checks that the file is of kind want.
func NewKindReader(r io.Reader, name string, size int64, want *Kind) (*Reader, error) {
	rd, err := NewReader(r, name, size)
	if err != nil {
		return nil, err
	}
	if rd.kind != want {
		return nil, &FormatError{File: name, Offset: 0, Entry: -1,
			Msg: fmt.Sprintf("image is %s, want %s", rd.kind.Name, want.Name)}
	}
	return rd, nil
}

// Kind returns the kind of the image being read.
func (rd *Reader) Kind() *Kind { return rd.kind }

// Offset returns the byte offset of the next entry.
func (rd *Reader) Offset() int64 { return rd.off }

func (rd *Reader) magic() (Magic, error) {
	var b [4]byte
	if _, err := io.ReadFull(rd.r, b[:]); err != nil {
		return 0, rd.errorf(0, err, "truncated magic")
	}
	rd.advance(4)
	return Magic(binary.LittleEndian.Uint32(b[:])), nil
}

func (rd *Reader) advance(n int64) {
	rd.off += n
	if rd.remain >= 0 {
		rd.remain -= n
	}
}

// errorf makes a FormatError at the current offset minus back bytes.
func (rd *Reader) errorf(back int, err error, format string, args ...any) error {
	if errors.Is(err, io.EOF) {
		err = io.ErrUnexpectedEOF
	}
	return &FormatError{File: rd.name, Offset: rd.off - int64(back), Entry: rd.index,
		Msg: fmt.Sprintf(format, args...), Err: err}
}

// readN reads exactly n bytes. With a known size, n is checked against it
// first; without, the buffer grows only as data arrives, so a corrupt length
// can never make a large allocation on its own.
func (rd *Reader) readN(n uint64, what string) ([]byte, error) {
	if rd.remain >= 0 && n > uint64(rd.remain) {
		return nil, rd.errorf(0, nil, "%s of %d bytes runs past the end of the file (%d bytes left)", what, n, rd.remain)
	}
	var buf []byte
	if rd.remain >= 0 {
		buf = make([]byte, n)
		got, err := io.ReadFull(rd.r, buf)
		if err != nil {
			rd.advance(int64(got))
			return nil, rd.errorf(got, err, "truncated %s: want %d bytes, have %d", what, n, got)
		}
	} else {
		var b bytes.Buffer
		got, err := io.CopyN(&b, rd.r, int64(n))
		if err != nil || uint64(got) != n {
			rd.advance(got)
			if err == nil {
				err = io.ErrUnexpectedEOF
			}
			return nil, rd.errorf(int(got), err, "truncated %s: want %d bytes, have %d", what, n, got)
		}
		buf = b.Bytes()
	}
	rd.advance(int64(n))
	return buf, nil
}

// Next returns the next entry, or io.EOF after the last one.
func (rd *Reader) Next() (Entry, error) {
	if rd.ghostTail {
		return Entry{}, io.EOF
	}
	start := rd.off
	var lb [4]byte
	n, err := io.ReadFull(rd.r, lb[:])
	if err == io.EOF {
		return Entry{}, io.EOF
	}
	if err != nil {
		rd.advance(int64(n))
		return Entry{}, rd.errorf(n, err, "truncated entry length")
	}
	rd.advance(4)
	size := binary.LittleEndian.Uint32(lb[:])
	raw, err := rd.readN(uint64(size), "entry")
	if err != nil {
		return Entry{}, err
	}
	msg := rd.kind.NewMessage(rd.index)
	if err := unmarshal(raw, msg); err != nil {
		return Entry{}, &FormatError{File: rd.name, Offset: start, Entry: rd.index,
			Msg: fmt.Sprintf("bad %s entry", rd.kind.Name), Err: err}
	}
	e := Entry{Message: msg}
	if e.Payload, err = rd.payload(msg); err != nil {
		return Entry{}, err
	}
	rd.index++
	return e, nil
}

// payload reads the raw bytes that follow msg, as its kind says.
func (rd *Reader) payload(msg proto.Message) ([]byte, error) {
	switch rd.kind.Payload {
	case PipeDataPayload:
		return rd.readN(uint64(msg.(*pipe_data.PipeDataEntry).GetBytes()), "pipe data")
	case SkQueuePayload:
		return rd.readN(uint64(msg.(*sk_packet.SkPacketEntry).GetLength()), "queued packet")
	case TCPStreamPayload:
		t := msg.(*tcp_stream.TcpStreamEntry)
		return rd.readN(uint64(t.GetInqLen())+uint64(t.GetOutqLen()), "tcp queues")
	case BpfmapPayload:
		b := msg.(*bpfmap_data.BpfmapDataEntry)
		return rd.readN(uint64(b.GetKeysBytes())+uint64(b.GetValuesBytes()), "bpf map data")
	case GhostPayload:
		switch m := msg.(type) {
		case *ghost_file.GhostFileEntry:
			if m.GetChunks() {
				rd.ghostChunks = true
				return nil, nil
			}
			// The older layout: the file's content is the rest of the image.
			rd.ghostTail = true
			return rd.readRest("ghost file content")
		case *ghost_file.GhostChunkEntry:
			return rd.readN(m.GetLen(), "ghost chunk")
		}
	case IPCShmPayload:
		return rd.readN(ipcShmLen(msg.(*ipc_shm.IpcShmEntry)), "segment content")
	case IPCSemPayload:
		return rd.readN(ipcSemLen(msg.(*ipc_sem.IpcSemEntry)), "semaphore values")
	case IPCMsgPayload:
		return rd.readIPCMessages(msg.(*ipc_msg.IpcMsgEntry))
	}
	return nil, nil
}

func (rd *Reader) readRest(what string) ([]byte, error) {
	if rd.remain >= 0 {
		return rd.readN(uint64(rd.remain), what)
	}
	b, err := io.ReadAll(rd.r)
	rd.advance(int64(len(b)))
	if err != nil {
		return nil, rd.errorf(0, err, "reading %s", what)
	}
	return b, nil
}

// ReadImage decodes a whole image from r (see NewReader for name and size).
func ReadImage(r io.Reader, name string, size int64) (*Image, error) {
	rd, err := NewReader(r, name, size)
	if err != nil {
		return nil, err
	}
	return rd.readAll()
}

func (rd *Reader) readAll() (*Image, error) {
	img := &Image{Kind: rd.kind}
	for {
		e, err := rd.Next()
		if err == io.EOF {
			return img, nil
		}
		if err != nil {
			return nil, err
		}
		img.Entries = append(img.Entries, e)
	}
}

// ReadFile decodes the image file at path, whatever its kind.
func ReadFile(path string) (*Image, error) {
	return readFile(path, nil)
}

// ReadKindFile decodes the image file at path and checks it is of kind k.
func ReadKindFile(path string, k *Kind) (*Image, error) {
	return readFile(path, k)
}

func readFile(path string, k *Kind) (*Image, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	// Most images are tens of bytes: size the buffer to the file.
	br := bufio.NewReaderSize(f, int(min(max(st.Size(), 16), 64<<10)))
	var rd *Reader
	if k == nil {
		rd, err = NewReader(br, path, st.Size())
	} else {
		rd, err = NewKindReader(br, path, st.Size(), k)
	}
	if err != nil {
		return nil, err
	}
	return rd.readAll()
}
