package images

import (
	"encoding/binary"
	"fmt"

	ipc_msg "github.com/checkpoint-restore/go-criu/v8/crit/images/ipc-msg"
	ipc_sem "github.com/checkpoint-restore/go-criu/v8/crit/images/ipc-sem"
	ipc_shm "github.com/checkpoint-restore/go-criu/v8/crit/images/ipc-shm"
	"google.golang.org/protobuf/proto"
)

// The payloads of the SysV IPC images (ipc_ns.c in CRIU): what follows an
// entry, padded as CRIU pads it.

func roundUp(n, to uint64) uint64 { return (n + to - 1) / to * to }

// ipcShmLen is the content that follows a segment's entry: none when it
// is in pagemap-shmem-ID.img, else its size rounded up to 4.
func ipcShmLen(e *ipc_shm.IpcShmEntry) uint64 {
	if e.GetInPagemaps() {
		return 0
	}
	return roundUp(e.GetSize(), 4)
}

// ipcSemLen is the values of a semaphore set, u16 each, padded to 8.
func ipcSemLen(e *ipc_sem.IpcSemEntry) uint64 { return roundUp(2*uint64(e.GetNsems()), 8) }

// readIPCMessages reads the qnum messages that follow a queue's entry and
// returns their bytes as they were (IPCMessages decodes them).
func (rd *Reader) readIPCMessages(e *ipc_msg.IpcMsgEntry) ([]byte, error) {
	var out []byte
	for i := range e.GetQnum() {
		lb, err := rd.readN(4, fmt.Sprintf("message %d's length", i))
		if err != nil {
			return nil, err
		}
		raw, err := rd.readN(uint64(binary.LittleEndian.Uint32(lb)), fmt.Sprintf("message %d", i))
		if err != nil {
			return nil, err
		}
		m := &ipc_msg.IpcMsg{}
		if err := proto.Unmarshal(raw, m); err != nil {
			return nil, rd.errorf(len(raw), err, "bad ipc_msg of message %d", i)
		}
		text, err := rd.readN(roundUp(uint64(m.GetMsize()), 8), fmt.Sprintf("message %d's %d bytes of text", i, m.GetMsize()))
		if err != nil {
			return nil, err
		}
		out = append(append(append(out, lb...), raw...), text...)
	}
	return out, nil
}

// IPCMessage is one message of a SysV message queue.
type IPCMessage struct {
	Type int64
	Text []byte
}

// IPCMessages decodes the payload of an ipcns-msg entry: its messages in
// queue order.
func IPCMessages(payload []byte) ([]IPCMessage, error) {
	var out []IPCMessage
	for len(payload) > 0 {
		if len(payload) < 4 {
			return nil, fmt.Errorf("message %d: truncated length", len(out))
		}
		n := uint64(binary.LittleEndian.Uint32(payload))
		if n > uint64(len(payload)-4) {
			return nil, fmt.Errorf("message %d: %d bytes of ipc_msg run past the payload", len(out), n)
		}
		m := &ipc_msg.IpcMsg{}
		if err := proto.Unmarshal(payload[4:4+n], m); err != nil {
			return nil, fmt.Errorf("message %d: %w", len(out), err)
		}
		payload = payload[4+n:]
		size, padded := uint64(m.GetMsize()), roundUp(uint64(m.GetMsize()), 8)
		if padded > uint64(len(payload)) {
			return nil, fmt.Errorf("message %d: %d bytes of text run past the payload", len(out), size)
		}
		out = append(out, IPCMessage{Type: int64(m.GetMtype()), Text: payload[:size:size]})
		payload = payload[padded:]
	}
	return out, nil
}

// EncodeIPCMessages encodes msgs as the payload of an ipcns-msg entry
// whose qnum is len(msgs).
func EncodeIPCMessages(msgs []IPCMessage) ([]byte, error) {
	var out []byte
	for i, m := range msgs {
		raw, err := proto.Marshal(&ipc_msg.IpcMsg{Mtype: proto.Uint64(uint64(m.Type)), Msize: proto.Uint32(uint32(len(m.Text)))})
		if err != nil {
			return nil, fmt.Errorf("message %d: %w", i, err)
		}
		out = binary.LittleEndian.AppendUint32(out, uint32(len(raw)))
		out = append(append(out, raw...), m.Text...)
		out = append(out, make([]byte, roundUp(uint64(len(m.Text)), 8)-uint64(len(m.Text)))...)
	}
	return out, nil
}

// IPCSemValues decodes the payload of an ipcns-sem entry: its nsems
// values.
func IPCSemValues(e *ipc_sem.IpcSemEntry, payload []byte) []uint16 {
	v := make([]uint16, min(uint64(e.GetNsems()), uint64(len(payload)/2)))
	for i := range v {
		v[i] = binary.LittleEndian.Uint16(payload[2*i:])
	}
	return v
}

// EncodeIPCSemValues encodes values as the payload of an ipcns-sem entry.
func EncodeIPCSemValues(values []uint16) []byte {
	out := make([]byte, roundUp(2*uint64(len(values)), 8))
	for i, v := range values {
		binary.LittleEndian.PutUint16(out[2*i:], v)
	}
	return out
}

// EncodeIPCShmData pads a segment's content as the payload of an ipcns-shm
// entry without in_pagemaps.
func EncodeIPCShmData(data []byte) []byte {
	return append(data[:len(data):len(data)], make([]byte, roundUp(uint64(len(data)), 4)-uint64(len(data)))...)
}

// IPCShm is one SysV shared memory segment of ipcns-shm-ID.img. Data is
// its content when the image holds it inline (older images); with
// Entry.in_pagemaps it is in pagemap-shmem-SHMID.img (ShmemPageRuns).
type IPCShm struct {
	Entry *ipc_shm.IpcShmEntry
	Data  []byte
}

// IPCSem is one semaphore set of ipcns-sem-ID.img, with its values.
type IPCSem struct {
	Entry  *ipc_sem.IpcSemEntry
	Values []uint16
}

// IPCMsgQueue is one message queue of ipcns-msg-ID.img, with its
// messages in queue order.
type IPCMsgQueue struct {
	Entry    *ipc_msg.IpcMsgEntry
	Messages []IPCMessage
}

// IPCShm returns the segments of ipcns-shm-ID.img (none if it is
// missing, as CRIU reads it).
func (d *Dir) IPCShm(id uint32) ([]IPCShm, error) {
	ents, err := d.readEntries(KindIPCNSShm, fmt.Sprintf("ipcns-shm-%d.img", id), false, "")
	if err != nil {
		return nil, err
	}
	out := make([]IPCShm, len(ents))
	for i, e := range ents {
		m := e.Message.(*ipc_shm.IpcShmEntry)
		out[i] = IPCShm{Entry: m}
		if !m.GetInPagemaps() {
			out[i].Data = e.Payload[:m.GetSize()]
		}
	}
	return out, nil
}

// IPCSem returns the semaphore sets of ipcns-sem-ID.img (none if it is
// missing).
func (d *Dir) IPCSem(id uint32) ([]IPCSem, error) {
	ents, err := d.readEntries(KindIPCNSSem, fmt.Sprintf("ipcns-sem-%d.img", id), false, "")
	if err != nil {
		return nil, err
	}
	out := make([]IPCSem, len(ents))
	for i, e := range ents {
		m := e.Message.(*ipc_sem.IpcSemEntry)
		out[i] = IPCSem{Entry: m, Values: IPCSemValues(m, e.Payload)}
	}
	return out, nil
}

// IPCMsg returns the message queues of ipcns-msg-ID.img (none if it is
// missing).
func (d *Dir) IPCMsg(id uint32) ([]IPCMsgQueue, error) {
	name := fmt.Sprintf("ipcns-msg-%d.img", id)
	ents, err := d.readEntries(KindIPCNSMsg, name, false, "")
	if err != nil {
		return nil, err
	}
	out := make([]IPCMsgQueue, len(ents))
	for i, e := range ents {
		msgs, err := IPCMessages(e.Payload)
		if err != nil { // the reader checked them: not from a file
			return nil, &FormatError{File: d.file(name), Entry: i, Msg: "messages", Err: err}
		}
		out[i] = IPCMsgQueue{Entry: e.Message.(*ipc_msg.IpcMsgEntry), Messages: msgs}
	}
	return out, nil
}
