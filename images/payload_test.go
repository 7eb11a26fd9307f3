package images_test

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	ghost_file "github.com/checkpoint-restore/go-criu/v8/crit/images/ghost-file"
	pipe_data "github.com/checkpoint-restore/go-criu/v8/crit/images/pipe-data"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/pstree"
	sk_packet "github.com/checkpoint-restore/go-criu/v8/crit/images/sk-packet"
	tcp_stream "github.com/checkpoint-restore/go-criu/v8/crit/images/tcp-stream"

	"github.com/crest-restore/crest/images"
	"github.com/crest-restore/crest/test/fixture"
)

// plBytes returns n bytes that differ from those of another seed.
func plBytes(seed byte, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = seed + byte(i*7)
	}
	return b
}

// plRoundTrip writes img as name in a fresh image set, checks that
// ReadFile gives back the same entries and payloads and returns the set.
func plRoundTrip(t *testing.T, name string, img *images.Image) *images.Dir {
	t.Helper()
	dir := t.TempDir()
	pgWriteSet(t, dir, 0, nil, -1)
	path := filepath.Join(dir, name)
	if err := images.WriteFile(path, img); err != nil {
		t.Fatal(err)
	}
	got, err := images.ReadKindFile(path, img.Kind)
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Entries) != len(img.Entries) {
		t.Fatalf("%s: read %d entries, wrote %d", name, len(got.Entries), len(img.Entries))
	}
	for i, e := range img.Entries {
		if !proto.Equal(got.Entries[i].Message, e.Message) {
			t.Errorf("%s entry %d: read %v, wrote %v", name, i, got.Entries[i].Message, e.Message)
		}
		if !bytes.Equal(got.Entries[i].Payload, e.Payload) {
			t.Errorf("%s entry %d: payload of %d bytes differs from the %d written", name, i, len(got.Entries[i].Payload), len(e.Payload))
		}
	}
	// Encoding what was read gives the file back.
	orig, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var again bytes.Buffer
	if _, err := got.WriteTo(&again); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(again.Bytes(), orig) {
		t.Errorf("%s: re-encoding differs from the file", name)
	}
	return pgOpen(t, dir)
}

func TestPipeDataRoundTrip(t *testing.T) {
	for _, k := range []*images.Kind{images.KindPipesData, images.KindFifoData} {
		t.Run(k.Name, func(t *testing.T) {
			img := &images.Image{Kind: k}
			for i, n := range []int{16, 0, 65536, 1} {
				img.Entries = append(img.Entries, images.Entry{
					Message: &pipe_data.PipeDataEntry{PipeId: proto.Uint32(uint32(100 + i)), Bytes: proto.Uint32(uint32(n)), Size: proto.Uint32(65536)},
					Payload: plBytes(byte(i), n),
				})
			}
			d := plRoundTrip(t, k.File, img)
			get := d.PipesData
			if k == images.KindFifoData {
				get = d.FifoData
			}
			pd, err := get()
			if err != nil {
				t.Fatal(err)
			}
			if len(pd) != len(img.Entries) {
				t.Fatalf("%d entries, want %d", len(pd), len(img.Entries))
			}
			for i, p := range pd {
				if p.Entry.GetPipeId() != uint32(100+i) || !bytes.Equal(p.Data, img.Entries[i].Payload) {
					t.Errorf("entry %d: pipe %d with %d bytes", i, p.Entry.GetPipeId(), len(p.Data))
				}
			}
		})
	}
}

// TestPipeFixtureData checks the 16 bytes that sat in the pipe fixture's
// pipe: the messages the writer had written and the reader not yet read.
func TestPipeFixtureData(t *testing.T) {
	last := func(file, re string) int {
		b, err := os.ReadFile(fixture.Path(t, "pipe", "files", file))
		if err != nil {
			t.Fatal(err)
		}
		m := regexp.MustCompile(re).FindAllSubmatch(b, -1)
		if m == nil {
			t.Fatalf("%s: no line matches %s", file, re)
		}
		n, err := strconv.Atoi(string(m[len(m)-1][1]))
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	read, wrote := last("out.log", `msg (\d+)\n`), last("out-parent.log", `wrote (\d+)\n`)
	var want strings.Builder
	for n := read + 1; n <= wrote; n++ {
		fmt.Fprintf(&want, "msg %d\n", n)
	}
	if want.Len() != 16 {
		t.Fatalf("the logs say %q was in the pipe, the fixture's README says 16 bytes", want.String())
	}

	d := pgOpen(t, fixture.Images(t, "pipe"))
	pd, err := d.PipesData()
	if err != nil {
		t.Fatal(err)
	}
	if len(pd) != 1 {
		t.Fatalf("%d pipe data entries, want 1", len(pd))
	}
	if pd[0].Entry.GetBytes() != 16 || string(pd[0].Data) != want.String() {
		t.Errorf("pipe %d holds %q (bytes %d), want %q", pd[0].Entry.GetPipeId(), pd[0].Data, pd[0].Entry.GetBytes(), want.String())
	}
}

func TestSkQueuesRoundTrip(t *testing.T) {
	img := &images.Image{Kind: images.KindSkQueues}
	for i, n := range []int{5, 0, 212992, 3} {
		img.Entries = append(img.Entries, images.Entry{
			Message: &sk_packet.SkPacketEntry{IdFor: proto.Uint32(uint32(7 + i%2)), Length: proto.Uint32(uint32(n))},
			Payload: plBytes(byte(40+i), n),
		})
	}
	d := plRoundTrip(t, "sk-queues.img", img)
	q, err := d.SkQueues()
	if err != nil {
		t.Fatal(err)
	}
	if len(q) != len(img.Entries) {
		t.Fatalf("%d packets, want %d", len(q), len(img.Entries))
	}
	for i, p := range q {
		if p.Entry.GetIdFor() != uint32(7+i%2) || !bytes.Equal(p.Data, img.Entries[i].Payload) {
			t.Errorf("packet %d: for %d, %d bytes", i, p.Entry.GetIdFor(), len(p.Data))
		}
	}
}

func TestGhostFileRoundTrip(t *testing.T) {
	head := func(chunks bool, size uint64) *ghost_file.GhostFileEntry {
		g := &ghost_file.GhostFileEntry{Uid: proto.Uint32(0), Gid: proto.Uint32(0), Mode: proto.Uint32(0o100644),
			Size: proto.Uint64(size)}
		if chunks {
			g.Chunks = proto.Bool(true)
		}
		return g
	}
	t.Run("tail", func(t *testing.T) {
		// The older layout: the content runs from the head to EOF.
		for _, n := range []int{0, 1, 70000} {
			content := plBytes(9, n)
			img := &images.Image{Kind: images.KindGhostFile, Entries: []images.Entry{{Message: head(false, uint64(n)), Payload: content}}}
			d := plRoundTrip(t, "ghost-file-1a.img", img)
			g, err := d.GhostFile(0x1a)
			if err != nil {
				t.Fatal(err)
			}
			if g == nil || g.Entry.GetChunks() || len(g.Chunks) != 1 || g.Chunks[0].Off != 0 || !bytes.Equal(g.Chunks[0].Data, content) {
				t.Fatalf("%d bytes: ghost = %+v", n, g)
			}
		}
	})
	t.Run("chunks", func(t *testing.T) {
		chunks := []images.GhostChunk{{Off: 0, Data: plBytes(1, 4096)}, {Off: 1 << 20, Data: plBytes(2, 10)}, {Off: 5 << 20, Data: plBytes(3, 100000)}}
		img := &images.Image{Kind: images.KindGhostFile, Entries: []images.Entry{{Message: head(true, 5<<20+100000)}}}
		for _, c := range chunks {
			img.Entries = append(img.Entries, images.Entry{
				Message: &ghost_file.GhostChunkEntry{Len: proto.Uint64(uint64(len(c.Data))), Off: proto.Uint64(c.Off)},
				Payload: c.Data,
			})
		}
		d := plRoundTrip(t, "ghost-file-ff.img", img)
		g, err := d.GhostFile(0xff)
		if err != nil {
			t.Fatal(err)
		}
		if g == nil || !g.Entry.GetChunks() || len(g.Chunks) != len(chunks) {
			t.Fatalf("ghost = %+v", g)
		}
		for i, c := range chunks {
			if g.Chunks[i].Off != c.Off || !bytes.Equal(g.Chunks[i].Data, c.Data) {
				t.Errorf("chunk %d: %d bytes at %d, want %d at %d", i, len(g.Chunks[i].Data), g.Chunks[i].Off, len(c.Data), c.Off)
			}
		}
	})
}

func plTCP(inq, outq int) *tcp_stream.TcpStreamEntry {
	return &tcp_stream.TcpStreamEntry{InqLen: proto.Uint32(uint32(inq)), InqSeq: proto.Uint32(1000),
		OutqLen: proto.Uint32(uint32(outq)), OutqSeq: proto.Uint32(2000), OptMask: proto.Uint32(0),
		SndWscale: proto.Uint32(7), MssClamp: proto.Uint32(1460), UnsqLen: proto.Uint32(uint32(outq / 2))}
}

func TestTCPStreamRoundTrip(t *testing.T) {
	for _, q := range [][2]int{{10, 20}, {0, 5}, {5, 0}, {0, 0}, {100000, 3}} {
		inq, outq := plBytes('i', q[0]), plBytes('o', q[1])
		img := &images.Image{Kind: images.KindTCPStream, Entries: []images.Entry{
			{Message: plTCP(q[0], q[1]), Payload: append(append([]byte{}, inq...), outq...)},
		}}
		d := plRoundTrip(t, "tcp-stream-beef.img", img)
		s, err := d.TCPStream(0xbeef)
		if err != nil {
			t.Fatal(err)
		}
		if s == nil || !bytes.Equal(s.Inq, inq) || !bytes.Equal(s.Outq, outq) || s.Entry.GetMssClamp() != 1460 {
			t.Errorf("inq %d outq %d: read %+v", q[0], q[1], s)
		}
	}
}

func TestWriterRefusesBadPayloads(t *testing.T) {
	tests := []struct {
		name string
		kind *images.Kind
		e    images.Entry
		msg  string
	}{
		{"pipe data short", images.KindPipesData,
			images.Entry{Message: &pipe_data.PipeDataEntry{PipeId: proto.Uint32(1), Bytes: proto.Uint32(5)}, Payload: []byte("abcd")}, "payload"},
		{"fifo data long", images.KindFifoData,
			images.Entry{Message: &pipe_data.PipeDataEntry{PipeId: proto.Uint32(1), Bytes: proto.Uint32(1)}, Payload: []byte("ab")}, "payload"},
		{"packet", images.KindSkQueues,
			images.Entry{Message: &sk_packet.SkPacketEntry{IdFor: proto.Uint32(1), Length: proto.Uint32(3)}}, "payload"},
		{"tcp queues", images.KindTCPStream, images.Entry{Message: plTCP(3, 4), Payload: []byte("abcdef")}, "payload"},
		{"ghost chunk", images.KindGhostFile, images.Entry{Message: &ghost_file.GhostChunkEntry{Len: proto.Uint64(3), Off: proto.Uint64(0)}, Payload: []byte("ab")}, ""},
		{"payload on a kind without", images.KindPstree,
			images.Entry{Message: &pstree.PstreeEntry{Pid: proto.Uint32(1), Ppid: proto.Uint32(0), Pgid: proto.Uint32(1), Sid: proto.Uint32(1)}, Payload: []byte("x")}, "no payload"},
		{"missing required field", images.KindPstree,
			images.Entry{Message: &pstree.PstreeEntry{Pid: proto.Uint32(1), Pgid: proto.Uint32(1), Sid: proto.Uint32(1)}}, "required"},
		{"missing required tcp field", images.KindTCPStream,
			images.Entry{Message: &tcp_stream.TcpStreamEntry{InqLen: proto.Uint32(0), OutqLen: proto.Uint32(0)}}, "required"},
		{"wrong message", images.KindPipesData,
			images.Entry{Message: &sk_packet.SkPacketEntry{IdFor: proto.Uint32(1), Length: proto.Uint32(0)}}, "want"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out bytes.Buffer
			k := tt.kind
			w, err := images.NewWriter(&out, k)
			if err != nil {
				t.Fatal(err)
			}
			if k == images.KindGhostFile {
				// Chunks follow a head that says so.
				if err := w.Write(images.Entry{Message: &ghost_file.GhostFileEntry{Uid: proto.Uint32(0), Gid: proto.Uint32(0),
					Mode: proto.Uint32(0o100644), Chunks: proto.Bool(true)}}); err != nil {
					t.Fatal(err)
				}
			}
			before := out.Len()
			err = w.Write(tt.e)
			if err == nil {
				t.Fatalf("Write accepted %v with %d payload bytes", tt.e.Message, len(tt.e.Payload))
			}
			if !strings.Contains(err.Error(), tt.msg) || !strings.Contains(err.Error(), k.Name) {
				t.Errorf("error %q does not name the kind and say %q", err, tt.msg)
			}
			if out.Len() != before {
				t.Errorf("a refused entry wrote %d bytes", out.Len()-before)
			}
		})
	}
}
