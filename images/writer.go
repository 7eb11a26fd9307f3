package images

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"path/filepath"

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

// Writer writes entries of one image file in CRIU's framing.
type Writer struct {
	w     io.Writer
	kind  *Kind
	index int
	buf   []byte
}

// NewWriter writes the magic of kind k to w and returns a Writer for its
// entries.
func NewWriter(w io.Writer, k *Kind) (*Writer, error) {
	var hdr []byte
	if k.Prefix != 0 {
		hdr = binary.LittleEndian.AppendUint32(hdr, uint32(k.Prefix))
	}
	hdr = binary.LittleEndian.AppendUint32(hdr, uint32(k.Magic))
	if _, err := w.Write(hdr); err != nil {
		return nil, err
	}
	return &Writer{w: w, kind: k}, nil
}

// Write appends one entry. Every required field must be set, as CRIU
// (protobuf-c) refuses partial messages, and the payload must have the length
// that the message announces.
func (wr *Writer) Write(e Entry) error {
	want := wr.kind.NewMessage(wr.index)
	if e.Message.ProtoReflect().Descriptor() != want.ProtoReflect().Descriptor() {
		return fmt.Errorf("%s entry %d: message is %s, want %s", wr.kind.Name, wr.index,
			e.Message.ProtoReflect().Descriptor().FullName(), want.ProtoReflect().Descriptor().FullName())
	}
	n, err := payloadLen(wr.kind, e.Message, e.Payload)
	if err != nil {
		return fmt.Errorf("%s entry %d: %w", wr.kind.Name, wr.index, err)
	}
	if n >= 0 && int64(len(e.Payload)) != n {
		return fmt.Errorf("%s entry %d: payload has %d bytes, the entry says %d", wr.kind.Name, wr.index, len(e.Payload), n)
	}
	if n < 0 && len(e.Payload) > 0 && wr.kind.Payload != GhostPayload {
		return fmt.Errorf("%s entry %d: this kind carries no payload", wr.kind.Name, wr.index)
	}
	body, err := proto.MarshalOptions{}.MarshalAppend(wr.buf[:0], e.Message)
	if err != nil {
		return fmt.Errorf("%s entry %d: %w", wr.kind.Name, wr.index, err)
	}
	wr.buf = body
	var lb [4]byte
	binary.LittleEndian.PutUint32(lb[:], uint32(len(body)))
	if _, err := wr.w.Write(lb[:]); err != nil {
		return err
	}
	if _, err := wr.w.Write(body); err != nil {
		return err
	}
	if len(e.Payload) > 0 {
		if _, err := wr.w.Write(e.Payload); err != nil {
			return err
		}
	}
	wr.index++
	return nil
}

// payloadLen returns how many payload bytes msg announces, or -1 when its
// kind has no payload of fixed length (none at all, or a ghost file's tail).
// A message queue's payload is checked to hold its qnum messages.
func payloadLen(k *Kind, msg proto.Message, payload []byte) (int64, error) {
	switch k.Payload {
	case PipeDataPayload:
		return int64(msg.(*pipe_data.PipeDataEntry).GetBytes()), nil
	case SkQueuePayload:
		return int64(msg.(*sk_packet.SkPacketEntry).GetLength()), nil
	case TCPStreamPayload:
		t := msg.(*tcp_stream.TcpStreamEntry)
		return int64(t.GetInqLen()) + int64(t.GetOutqLen()), nil
	case BpfmapPayload:
		b := msg.(*bpfmap_data.BpfmapDataEntry)
		return int64(b.GetKeysBytes()) + int64(b.GetValuesBytes()), nil
	case GhostPayload:
		switch m := msg.(type) {
		case *ghost_file.GhostFileEntry:
			if m.GetChunks() {
				return 0, nil
			}
			return -1, nil
		case *ghost_file.GhostChunkEntry:
			return int64(m.GetLen()), nil
		}
	case IPCShmPayload:
		return int64(ipcShmLen(msg.(*ipc_shm.IpcShmEntry))), nil
	case IPCSemPayload:
		return int64(ipcSemLen(msg.(*ipc_sem.IpcSemEntry))), nil
	case IPCMsgPayload:
		msgs, err := IPCMessages(payload)
		if err != nil {
			return 0, err
		}
		if q := msg.(*ipc_msg.IpcMsgEntry).GetQnum(); uint32(len(msgs)) != q {
			return 0, fmt.Errorf("payload has %d messages, the entry says %d", len(msgs), q)
		}
		return int64(len(payload)), nil
	}
	return -1, nil
}

// WriteTo encodes the whole image to w.
func (img *Image) WriteTo(w io.Writer) (int64, error) {
	cw := &countWriter{w: w}
	wr, err := NewWriter(cw, img.Kind)
	if err != nil {
		return cw.n, err
	}
	for _, e := range img.Entries {
		if err := wr.Write(e); err != nil {
			return cw.n, err
		}
	}
	return cw.n, nil
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// WriteFile writes img to path, atomically: into a temporary file in the same
// directory that is renamed over path once complete.
func WriteFile(path string, img *Image) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	bw := bufio.NewWriterSize(f, 64<<10)
	_, err = img.WriteTo(bw)
	if err == nil {
		err = bw.Flush()
	}
	if err == nil {
		err = f.Chmod(0o600)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return nil
}
