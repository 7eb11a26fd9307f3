package images

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	ipc_desc "github.com/checkpoint-restore/go-criu/v8/crit/images/ipc-desc"
	ipc_msg "github.com/checkpoint-restore/go-criu/v8/crit/images/ipc-msg"
	ipc_sem "github.com/checkpoint-restore/go-criu/v8/crit/images/ipc-sem"
	ipc_shm "github.com/checkpoint-restore/go-criu/v8/crit/images/ipc-shm"
	"google.golang.org/protobuf/proto"
)

// TestIPCImagesOfCRIU reads the SysV IPC images CRIU 4.2 wrote for the
// nsuts workload (testdata/criu-4.2-ipc): the messages and semaphore
// values the workload made, and the same bytes when written back.
func TestIPCImagesOfCRIU(t *testing.T) {
	dir := filepath.Join("testdata", "criu-4.2-ipc")
	d := &Dir{Path: dir}
	queues, err := d.IPCMsg(10)
	if err != nil {
		t.Fatal(err)
	}
	if len(queues) != 1 || queues[0].Entry.GetDesc().GetId() != 5 {
		t.Fatalf("queues %+v", queues)
	}
	var types []int64
	var texts []string
	for _, m := range queues[0].Messages {
		types = append(types, m.Type)
		texts = append(texts, string(m.Text))
	}
	long := make([]byte, 300)
	for i := range long {
		long[i] = byte(i*13 + 5) // nsuts.c fills the long message so
	}
	if !slices.Equal(types, []int64{1, 2, 1, 3, 4}) || !slices.Equal(texts, []string{"alpha", "bravo", "charlie", string(long), ""}) {
		t.Errorf("messages: types %v, texts %q", types, texts)
	}
	sets, err := d.IPCSem(10)
	if err != nil {
		t.Fatal(err)
	}
	if len(sets) != 1 || !slices.Equal(sets[0].Values, []uint16{1, 2, 3, 40, 500}) {
		t.Errorf("semaphore sets %+v", sets)
	}
	segs, err := d.IPCShm(10)
	if err != nil {
		t.Fatal(err)
	}
	if len(segs) != 2 || segs[1].Entry.GetSize() != 12388 || segs[1].Data != nil {
		t.Errorf("segments %+v", segs)
	}
	for _, name := range []string{"ipcns-msg-10.img", "ipcns-sem-10.img", "ipcns-shm-10.img"} {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		img, err := ReadImage(bytes.NewReader(b), name, int64(len(b)))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		var out bytes.Buffer
		if _, err := img.WriteTo(&out); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if !bytes.Equal(out.Bytes(), b) {
			t.Errorf("%s: written back as %d bytes that differ from CRIU's %d", name, out.Len(), len(b))
		}
	}
}

// TestIPCPayloads writes each IPC kind with a payload (a segment held
// inline, as older CRIUs wrote it, too), reads it back, renders it as crit
// does, and refuses what does not fit its entry.
func TestIPCPayloads(t *testing.T) {
	desc := func(id uint32) *ipc_desc.IpcDescEntry {
		return &ipc_desc.IpcDescEntry{Key: proto.Uint32(7), Uid: proto.Uint32(1), Gid: proto.Uint32(2), Cuid: proto.Uint32(0),
			Cgid: proto.Uint32(0), Mode: proto.Uint32(0o600), Id: proto.Uint32(id)}
	}
	msgs := []IPCMessage{{Type: 3, Text: []byte("hello")}, {Type: 1, Text: nil}, {Type: 9, Text: []byte("12345678")}}
	mp, err := EncodeIPCMessages(msgs)
	if err != nil {
		t.Fatal(err)
	}
	shmData := []byte("abcdefghij") // 10 bytes, padded to 12
	imgs := []*Image{
		{Kind: KindIPCNSMsg, Entries: []Entry{
			{Message: &ipc_msg.IpcMsgEntry{Desc: desc(1), Qbytes: proto.Uint32(100), Qnum: proto.Uint32(3)}, Payload: mp},
			{Message: &ipc_msg.IpcMsgEntry{Desc: desc(2), Qbytes: proto.Uint32(100), Qnum: proto.Uint32(0)}},
		}},
		{Kind: KindIPCNSSem, Entries: []Entry{
			{Message: &ipc_sem.IpcSemEntry{Desc: desc(3), Nsems: proto.Uint32(5)}, Payload: EncodeIPCSemValues([]uint16{1, 2, 3, 4, 65535})},
		}},
		{Kind: KindIPCNSShm, Entries: []Entry{
			{Message: &ipc_shm.IpcShmEntry{Desc: desc(4), Size: proto.Uint64(10)}, Payload: EncodeIPCShmData(shmData)},
			{Message: &ipc_shm.IpcShmEntry{Desc: desc(5), Size: proto.Uint64(4096), InPagemaps: proto.Bool(true)}},
		}},
	}
	dir := t.TempDir()
	for _, img := range imgs {
		if err := WriteFile(filepath.Join(dir, strings.Replace(img.Kind.File, "%d", "1", 1)), img); err != nil {
			t.Fatalf("%s: %v", img.Kind.Name, err)
		}
	}
	if n := len(imgs[1].Entries[0].Payload); n != 16 {
		t.Errorf("5 semaphore values take %d bytes, want 16 (padded to 8)", n)
	}
	d := &Dir{Path: dir}
	queues, err := d.IPCMsg(1)
	if err != nil {
		t.Fatal(err)
	}
	if len(queues) != 2 || len(queues[0].Messages) != 3 || len(queues[1].Messages) != 0 {
		t.Fatalf("queues %+v", queues)
	}
	for i, m := range queues[0].Messages {
		if m.Type != msgs[i].Type || !bytes.Equal(m.Text, msgs[i].Text) {
			t.Errorf("message %d: %+v, want %+v", i, m, msgs[i])
		}
	}
	sets, err := d.IPCSem(1)
	if err != nil || len(sets) != 1 || !slices.Equal(sets[0].Values, []uint16{1, 2, 3, 4, 65535}) {
		t.Errorf("semaphore sets %+v, %v", sets, err)
	}
	segs, err := d.IPCShm(1)
	if err != nil || len(segs) != 2 || !bytes.Equal(segs[0].Data, shmData) || segs[1].Data != nil {
		t.Errorf("segments %+v, %v", segs, err)
	}
	if none, err := d.IPCSem(2); err != nil || len(none) != 0 {
		t.Errorf("a missing image: %v, %v; want none, as CRIU reads it", none, err)
	}

	// crit's extras: the messages as ipc_msg then text, the values, the content
	for _, c := range []struct {
		img  *Image
		want string
	}{
		{imgs[0], `"extra": [{"mtype": 3, "msize": 5}, "aGVsbG8=\n", {"mtype": 1, "msize": 0}, "", {"mtype": 9, "msize": 8}, "MTIzNDU2Nzg=\n"]`},
		{imgs[1], `"extra": [1, 2, 3, 4, 65535]`},
		{imgs[2], `"extra": "YWJjZGVmZ2hpag==\n"`},
	} {
		out, err := c.img.JSON(JSONOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(out), c.want) {
			t.Errorf("%s JSON %s: want %s", c.img.Kind.Name, out, c.want)
		}
		if !json.Valid(out) {
			t.Errorf("%s JSON is not valid: %s", c.img.Kind.Name, out)
		}
	}
	if out, _ := imgs[2].JSON(JSONOptions{}); strings.Count(string(out), `"extra"`) != 1 {
		t.Errorf("a segment in pagemaps has no extra: %s", out)
	}

	// what does not fit its entry
	for _, c := range []struct {
		name string
		kind *Kind
		e    Entry
		want string
	}{
		{"messages short of qnum", KindIPCNSMsg, Entry{Message: &ipc_msg.IpcMsgEntry{Desc: desc(1), Qbytes: proto.Uint32(1), Qnum: proto.Uint32(4)}, Payload: mp},
			"payload has 3 messages, the entry says 4"},
		{"a text cut", KindIPCNSMsg, Entry{Message: &ipc_msg.IpcMsgEntry{Desc: desc(1), Qbytes: proto.Uint32(1), Qnum: proto.Uint32(3)}, Payload: mp[:len(mp)-1]},
			"message 2: 8 bytes of text run past the payload"},
		{"values short", KindIPCNSSem, Entry{Message: &ipc_sem.IpcSemEntry{Desc: desc(3), Nsems: proto.Uint32(5)}, Payload: EncodeIPCSemValues([]uint16{1})},
			"payload has 8 bytes, the entry says 16"},
		{"content with a pagemap", KindIPCNSShm, Entry{Message: &ipc_shm.IpcShmEntry{Desc: desc(4), Size: proto.Uint64(10), InPagemaps: proto.Bool(true)}, Payload: EncodeIPCShmData(shmData)},
			"payload has 12 bytes, the entry says 0"},
	} {
		var out bytes.Buffer
		_, err := (&Image{Kind: c.kind, Entries: []Entry{c.e}}).WriteTo(&out)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want an error with %q", c.name, err, c.want)
		}
	}

	// a file cut anywhere in an entry or its messages is a FormatError
	var one bytes.Buffer
	if _, err := (&Image{Kind: KindIPCNSMsg, Entries: imgs[0].Entries[:1]}).WriteTo(&one); err != nil {
		t.Fatal(err)
	}
	b := one.Bytes()
	for cut := 9; cut < len(b); cut++ {
		_, err := ReadImage(bytes.NewReader(b[:cut]), "ipcns-msg-1.img", int64(cut))
		var fe *FormatError
		if !errors.As(err, &fe) || fe.Entry != 0 {
			t.Fatalf("cut at %d of %d: %v, want a FormatError of entry 0", cut, len(b), err)
		}
	}
}
