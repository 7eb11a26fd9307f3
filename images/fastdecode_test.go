package images

import (
	"bytes"
	"errors"
	"hash/fnv"
	"io"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	criu_core "github.com/checkpoint-restore/go-criu/v8/crit/images/criu-core"
	criu_sa "github.com/checkpoint-restore/go-criu/v8/crit/images/criu-sa"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/fdinfo"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/pstree"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/regfile"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/siginfo"
	sk_opts "github.com/checkpoint-restore/go-criu/v8/crit/images/sk-opts"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/vma"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"

	"github.com/crest-restore/crest/test/fixture"
)

// fastKinds are the kinds a restore reads (restore/plan.go, images/dir.go),
// with the file kinds whose entries files.img embeds: each must decode
// without protobuf-go's runtime.
var fastKinds = []*Kind{
	KindInventory, KindPstree, KindCore, KindIDs, KindMM, KindVMAs, KindPagemap,
	KindFS, KindCreds, KindFdinfo, KindFiles, KindTimeNS, KindSeccomp, KindSigact,
	KindSignal, KindPipesData, KindFifoData, KindSkQueues, KindMemfdInode,
	KindTCPStream, KindGhostFile, KindTTYInfo, KindTTYData,
	KindRegFiles, KindPipes, KindFifo, KindUnixSk, KindInetSk, KindPacketSk,
	KindNetlinkSk, KindEventfd, KindEventpoll, KindSignalfd, KindTimerfd,
	KindInotify, KindFanotify, KindExtFiles, KindNSFiles, KindTTYFiles,
	KindBpfmapFile,
}

// fastTypes returns the message types of fastKinds and every type they
// hold, sorted by full name, as protobuf-go's registry has them.
func fastTypes(t testing.TB) []protoreflect.MessageType {
	seen := map[protoreflect.FullName]protoreflect.MessageType{}
	var walk func(mt protoreflect.MessageType)
	walk = func(mt protoreflect.MessageType) {
		if seen[mt.Descriptor().FullName()] != nil {
			return
		}
		seen[mt.Descriptor().FullName()] = mt
		fds := mt.Descriptor().Fields()
		for i := range fds.Len() {
			if md := fds.Get(i).Message(); md != nil {
				sub, err := protoregistry.GlobalTypes.FindMessageByName(md.FullName())
				if err != nil {
					t.Fatal(err)
				}
				walk(sub)
			}
		}
	}
	for _, k := range fastKinds {
		walk(k.Entry().ProtoReflect().Type())
		if k.Head != nil {
			walk(k.Head().ProtoReflect().Type())
		}
	}
	out := make([]protoreflect.MessageType, 0, len(seen))
	for _, mt := range seen {
		out = append(out, mt)
	}
	slices.SortFunc(out, func(a, b protoreflect.MessageType) int {
		return strings.Compare(string(a.Descriptor().FullName()), string(b.Descriptor().FullName()))
	})
	return out
}

func TestFastDecodeCoversRestoreKinds(t *testing.T) {
	for _, mt := range fastTypes(t) {
		if err := fastUnmarshal(nil, mt.New().Interface()); errors.Is(err, errNoDecoder) {
			t.Errorf("%s: no generated decoder", mt.Descriptor().FullName())
		}
	}
}

// fixtureEntry is one entry of a fixture image, as proto.Unmarshal reads it.
type fixtureEntry struct {
	where string // file and entry index
	raw   []byte // the entry's protobuf bytes
	msg   proto.Message
}

// fixtureEntries reads every entry of every CRIU 4.2 fixture with
// proto.Unmarshal. The round-trip test shows that encoding a message gives
// back its bytes, so raw is the entry as it is in the file.
func fixtureEntries(t testing.TB) []fixtureEntry {
	defer func(on bool) { fastDecode = on }(fastDecode)
	fastDecode = false
	var out []fixtureEntry
	for _, name := range fixture.Names(t) {
		for _, path := range fixtureImageFiles(t, name) {
			img, err := ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			for i, ent := range img.Entries {
				raw, err := proto.Marshal(ent.Message)
				if err != nil {
					t.Fatal(err)
				}
				out = append(out, fixtureEntry{where: name + "/" + filepath.Base(path) + "#" + strconv.Itoa(i), raw: raw, msg: ent.Message})
			}
		}
	}
	if len(out) == 0 {
		t.Fatal("no fixture entries")
	}
	return out
}

// TestFastDecodeFixtures decodes every entry of every fixture on the fast
// path and with proto.Unmarshal: the messages must be equal and encode to
// the same bytes, and no entry may need the fallback.
func TestFastDecodeFixtures(t *testing.T) {
	for _, fe := range fixtureEntries(t) {
		m := fe.msg.ProtoReflect().Type().New().Interface()
		err := fastUnmarshal(fe.raw, m)
		if errors.Is(err, errNoDecoder) {
			continue // kinds a restore does not read (stats)
		}
		if err != nil {
			t.Errorf("%s: fast decode: %v", fe.where, err)
			continue
		}
		if !proto.Equal(m, fe.msg) {
			t.Errorf("%s: fast decode differs from proto.Unmarshal:\n fast %v\nproto %v", fe.where, m, fe.msg)
			continue
		}
		b, err := proto.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(b, fe.raw) {
			t.Errorf("%s: fast decode re-encodes to different bytes", fe.where)
		}
	}
}

// TestFastDecodeReadFile reads every fixture image with the switch on and
// off: the images must be equal, payloads included.
func TestFastDecodeReadFile(t *testing.T) {
	defer func(on bool) { fastDecode = on }(fastDecode)
	for _, name := range fixture.Names(t) {
		for _, path := range fixtureImageFiles(t, name) {
			fastDecode = true
			fast, err := ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			fastDecode = false
			slow, err := ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if len(fast.Entries) != len(slow.Entries) {
				t.Fatalf("%s: %d entries on the fast path, %d with proto.Unmarshal", path, len(fast.Entries), len(slow.Entries))
			}
			for i := range fast.Entries {
				if !proto.Equal(fast.Entries[i].Message, slow.Entries[i].Message) || !bytes.Equal(fast.Entries[i].Payload, slow.Entries[i].Payload) {
					t.Errorf("%s entry %d: fast and proto.Unmarshal differ", path, i)
				}
			}
		}
	}
}

// field helpers for hand-made entries.
func tagged(num protowire.Number, typ protowire.Type) []byte {
	return protowire.AppendTag(nil, num, typ)
}

func varintField(num protowire.Number, v uint64) []byte {
	return protowire.AppendVarint(tagged(num, protowire.VarintType), v)
}

func bytesField(num protowire.Number, b []byte) []byte {
	return protowire.AppendBytes(tagged(num, protowire.BytesType), b)
}

func fixed64Field(num protowire.Number, v uint64) []byte {
	return protowire.AppendFixed64(tagged(num, protowire.Fixed64Type), v)
}

func packedVarints(num protowire.Number, vs ...uint64) []byte {
	var p []byte
	for _, v := range vs {
		p = protowire.AppendVarint(p, v)
	}
	return bytesField(num, p)
}

func cat(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

func marshal(t testing.TB, m proto.Message) []byte {
	b, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// pstreeHead is a pstree_entry's required fields: pid 1, ppid 0, pgid 1, sid 1.
var pstreeHead = cat(varintField(1, 1), varintField(2, 0), varintField(3, 1), varintField(4, 1))

// saFields are the required fields of an sa_entry, with sigaction = v.
func saFields(v uint64) []byte {
	return cat(varintField(1, v), varintField(2, 0), varintField(3, 0), varintField(4, 0))
}

// regFile is a reg_file_entry with every required field, named name.
func regFile(name string) []byte {
	return cat(varintField(1, 7), varintField(2, 2), varintField(3, 0),
		bytesField(5, cat(varintField(1, 0), varintField(2, 0), varintField(3, 0), varintField(4, 0), varintField(5, 0))),
		bytesField(6, []byte(name)))
}

// taskCore is a task_core_entry with every required field and comm.
func taskCore(comm string, extra ...[]byte) []byte {
	return cat(varintField(1, 1), varintField(2, 0), varintField(3, 0), varintField(4, 0), varintField(5, 0),
		bytesField(6, []byte(comm)), cat(extra...))
}

// TestFastDecodeRules checks one rule of proto2 decoding per case: what the
// fast path must do itself (decode), leave to proto.Unmarshal (fallback) or
// refuse as proto.Unmarshal does (error, naming the field).
func TestFastDecodeRules(t *testing.T) {
	const (
		decode   = "decode"
		fallback = "fallback"
		refuse   = "error"
	)
	core := func(fields ...[]byte) []byte { return cat(varintField(1, 1), cat(fields...)) } // mtype X86_64
	tests := []struct {
		name string
		msg  proto.Message
		b    []byte
		want string
		// for decode: the message proto.Unmarshal must also give, or nil;
		// for error: a part of the error text.
		wantMsg proto.Message
		errPart string
	}{
		{name: "unpacked repeated", msg: &pstree.PstreeEntry{}, want: decode,
			b:       cat(pstreeHead, varintField(5, 1), varintField(5, 2)),
			wantMsg: &pstree.PstreeEntry{Pid: proto.Uint32(1), Ppid: proto.Uint32(0), Pgid: proto.Uint32(1), Sid: proto.Uint32(1), Threads: []uint32{1, 2}}},
		{name: "packed repeated", msg: &pstree.PstreeEntry{}, want: decode,
			b:       cat(pstreeHead, packedVarints(5, 1, 2)),
			wantMsg: &pstree.PstreeEntry{Pid: proto.Uint32(1), Ppid: proto.Uint32(0), Pgid: proto.Uint32(1), Sid: proto.Uint32(1), Threads: []uint32{1, 2}}},
		{name: "packed and unpacked mixed", msg: &pstree.PstreeEntry{}, want: decode,
			b:       cat(packedVarints(5, 1, 300), pstreeHead, varintField(5, 3), packedVarints(5)),
			wantMsg: &pstree.PstreeEntry{Pid: proto.Uint32(1), Ppid: proto.Uint32(0), Pgid: proto.Uint32(1), Sid: proto.Uint32(1), Threads: []uint32{1, 300, 3}}},
		{name: "packed fixed64", msg: &sk_opts.SkOptsEntry{}, want: decode,
			b: func() []byte {
				req := cat(varintField(1, 1), varintField(2, 2), varintField(3, 0), varintField(4, 0), varintField(5, 0), varintField(6, 0))
				return cat(req, fixed64Field(16, 5), bytesField(16, protowire.AppendFixed64(protowire.AppendFixed64(nil, 6), 7)))
			}()},
		{name: "scalar twice: last wins", msg: &pstree.PstreeEntry{}, want: decode,
			b:       cat(pstreeHead, varintField(1, 42)),
			wantMsg: &pstree.PstreeEntry{Pid: proto.Uint32(42), Ppid: proto.Uint32(0), Pgid: proto.Uint32(1), Sid: proto.Uint32(1)}},
		{name: "message twice: merged", msg: &criu_core.CoreEntry{}, want: decode,
			b: core(bytesField(3, taskCore("one", bytesField(15, saFields(1)), varintField(14, 5))),
				bytesField(3, cat(bytesField(6, []byte("two")), bytesField(15, saFields(2))))),
			wantMsg: &criu_core.CoreEntry{Mtype: criu_core.CoreEntry_X86_64.Enum(), Tc: &criu_core.TaskCoreEntry{
				TaskState: proto.Uint32(1), ExitCode: proto.Uint32(0), Personality: proto.Uint32(0), Flags: proto.Uint32(0), BlkSigset: proto.Uint64(0),
				Comm: proto.String("two"), OomScoreAdj: proto.Int32(5),
				Sigactions: []*criu_sa.SaEntry{
					{Sigaction: proto.Uint64(1), Flags: proto.Uint64(0), Restorer: proto.Uint64(0), Mask: proto.Uint64(0)},
					{Sigaction: proto.Uint64(2), Flags: proto.Uint64(0), Restorer: proto.Uint64(0), Mask: proto.Uint64(0)}}}}},
		{name: "required field completed by the merge", msg: &criu_core.CoreEntry{}, want: decode,
			b: core(bytesField(3, bytesField(6, []byte("x"))), bytesField(3, taskCore("y")))},
		{name: "empty bytes field is present", msg: &siginfo.SiginfoEntry{}, want: decode,
			b: bytesField(1, nil), wantMsg: &siginfo.SiginfoEntry{Siginfo: []byte{}}},
		{name: "bytes twice: last wins", msg: &siginfo.SiginfoEntry{}, want: decode,
			b: cat(bytesField(1, []byte{1, 2}), bytesField(1, []byte{3})), wantMsg: &siginfo.SiginfoEntry{Siginfo: []byte{3}}},
		{name: "invalid UTF-8 in a string", msg: &regfile.RegFileEntry{}, want: decode,
			b: regFile("\xff\xfe/tmp/x")},
		{name: "negative int32, sint32 and sint64", msg: &criu_core.CoreEntry{}, want: decode,
			b: core(bytesField(3, taskCore("n", varintField(14, uint64(1<<64-5)))),
				bytesField(5, cat(varintField(1, 1), varintField(2, 0), varintField(3, protowire.EncodeZigZag(-7)))))},
		{name: "sint64 in a vma", msg: &vma.VmaEntry{}, want: decode,
			b: cat(varintField(1, 0x1000), varintField(2, 0x2000), varintField(3, 0), varintField(4, 3), varintField(5, 2),
				varintField(6, 0x22), varintField(7, 0x201), varintField(8, protowire.EncodeZigZag(-1)))},
		{name: "bool from a varint above 1", msg: &criu_core.CoreEntry{}, want: decode,
			b: core(bytesField(3, taskCore("b", varintField(18, 2))))},
		{name: "enum from a varint above 32 bits", msg: &criu_core.CoreEntry{}, want: decode,
			b: cat(varintField(1, 1<<32|1))},
		{name: "non-minimal tag varint", msg: &pstree.PstreeEntry{}, want: decode,
			b: cat([]byte{0x88, 0x80, 0x00, 9}, pstreeHead[2:])},
		{name: "unknown enum value", msg: &criu_core.CoreEntry{}, want: fallback,
			b: varintField(1, 99)},
		{name: "unknown enum value in a nested message", msg: &fdinfo.FileEntry{}, want: fallback,
			b: cat(varintField(1, 1), varintField(2, 1), bytesField(3, regFile("/x")), varintField(1, 1000))},
		{name: "unknown field", msg: &pstree.PstreeEntry{}, want: fallback,
			b: cat(pstreeHead, varintField(100, 1))},
		{name: "wire type not the field's", msg: &pstree.PstreeEntry{}, want: fallback,
			b: cat(pstreeHead, fixed64Field(1, 5))},
		{name: "group", msg: &pstree.PstreeEntry{}, want: fallback,
			b: cat(pstreeHead, tagged(9, protowire.StartGroupType), varintField(1, 1), tagged(9, protowire.EndGroupType))},
		{name: "field number 0", msg: &pstree.PstreeEntry{}, want: fallback,
			b: cat(pstreeHead, varintField(0, 1))},
		{name: "missing required field", msg: &pstree.PstreeEntry{}, want: refuse,
			b: pstreeHead[:6], errPart: "pstree_entry.sid"},
		{name: "missing required field of a nested message", msg: &fdinfo.FileEntry{}, want: refuse,
			b: cat(varintField(1, 1), varintField(2, 1), bytesField(3, regFile("/x")[:4])), errPart: "reg_file_entry.pos"},
		{name: "missing required field of a repeated message", msg: &criu_core.CoreEntry{}, want: refuse,
			b: core(bytesField(3, taskCore("r", bytesField(15, saFields(1)[:4])))), errPart: "sa_entry.restorer"},
		{name: "truncated varint", msg: &pstree.PstreeEntry{}, want: refuse,
			b: cat(pstreeHead, []byte{5 << 3, 0x80}), errPart: "pstree_entry"},
		{name: "truncated tag", msg: &pstree.PstreeEntry{}, want: refuse,
			b: cat(pstreeHead, []byte{0x80}), errPart: "pstree_entry"},
		{name: "varint of 11 bytes", msg: &pstree.PstreeEntry{}, want: refuse,
			b: cat(pstreeHead, []byte{5 << 3, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01}), errPart: "pstree_entry"},
		{name: "length beyond the buffer", msg: &fdinfo.FileEntry{}, want: refuse,
			b: cat(varintField(1, 1), varintField(2, 1), bytesField(3, regFile("/x"))[:8]), errPart: "file_entry"},
		{name: "truncated packed field", msg: &pstree.PstreeEntry{}, want: refuse,
			b: cat(pstreeHead, bytesField(5, []byte{0x80})), errPart: "pstree_entry.threads"},
		{name: "truncated fixed64", msg: &sk_opts.SkOptsEntry{}, want: refuse,
			b: cat(tagged(16, protowire.Fixed64Type), []byte{1, 2, 3}), errPart: "sk_opts_entry"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fast := tt.msg.ProtoReflect().Type().New().Interface()
			ferr := fastUnmarshal(tt.b, fast)
			slow := tt.msg.ProtoReflect().Type().New().Interface()
			serr := proto.Unmarshal(tt.b, slow)
			switch tt.want {
			case decode:
				if ferr != nil || serr != nil {
					t.Fatalf("fast: %v, proto.Unmarshal: %v; want both to decode", ferr, serr)
				}
				if !proto.Equal(fast, slow) {
					t.Fatalf("fast %v, proto.Unmarshal %v", fast, slow)
				}
				if tt.wantMsg != nil && !proto.Equal(fast, tt.wantMsg) {
					t.Fatalf("got %v, want %v", fast, tt.wantMsg)
				}
				if !bytes.Equal(marshal(t, fast), marshal(t, slow)) {
					t.Fatal("re-encodings differ")
				}
			case fallback:
				if !errors.Is(ferr, errFallback) {
					t.Fatalf("fast: %v, want the fallback", ferr)
				}
				// What the reader does: the entry decodes as with proto.Unmarshal.
				m := tt.msg.ProtoReflect().Type().New().Interface()
				uerr := unmarshal(tt.b, m)
				if (uerr == nil) != (serr == nil) || (serr == nil && !proto.Equal(m, slow)) {
					t.Fatalf("after fallback: %v %v; proto.Unmarshal: %v %v", uerr, m, serr, slow)
				}
			case refuse:
				if ferr == nil || serr == nil || errors.Is(ferr, errFallback) {
					t.Fatalf("fast: %v, proto.Unmarshal: %v; want both to fail", ferr, serr)
				}
				if !strings.Contains(ferr.Error(), tt.errPart) {
					t.Fatalf("fast error %q does not name %q", ferr, tt.errPart)
				}
			}
		})
	}
}

// TestFastDecodeReaderError checks that a bad entry on the fast path is a
// FormatError naming the file, offset, entry and field.
func TestFastDecodeReaderError(t *testing.T) {
	var img bytes.Buffer
	for _, m := range []Magic{MagicImgCommon, MagicPstree} {
		img.Write([]byte{byte(m), byte(m >> 8), byte(m >> 16), byte(m >> 24)})
	}
	good := cat(pstreeHead, varintField(5, 1))
	bad := pstreeHead[:6]
	for _, e := range [][]byte{good, bad} {
		img.Write([]byte{byte(len(e)), 0, 0, 0})
		img.Write(e)
	}
	_, err := ReadImage(bytes.NewReader(img.Bytes()), "pstree.img", int64(img.Len()))
	var fe *FormatError
	if !errors.As(err, &fe) {
		t.Fatalf("got %v, want a FormatError", err)
	}
	if fe.Entry != 1 || fe.Offset != int64(8+4+len(good)) || !strings.Contains(err.Error(), "pstree_entry.sid") {
		t.Fatalf("got %v (entry %d, offset %d)", err, fe.Entry, fe.Offset)
	}
}

// fill sets every field of m: scalars to nonzero values, enums to their
// last value, two elements in every list.
func fill(m protoreflect.Message, depth int) {
	fds := m.Descriptor().Fields()
	for i := range fds.Len() {
		fd := fds.Get(i)
		value := func(n int) protoreflect.Value {
			switch fd.Kind() {
			case protoreflect.MessageKind:
				var sub protoreflect.Message
				if fd.IsList() {
					sub = m.Mutable(fd).List().NewElement().Message()
				} else {
					sub = m.NewField(fd).Message()
				}
				if depth < 8 {
					fill(sub, depth+1)
				}
				return protoreflect.ValueOfMessage(sub)
			case protoreflect.EnumKind:
				vals := fd.Enum().Values()
				return protoreflect.ValueOfEnum(vals.Get(vals.Len() - 1).Number())
			case protoreflect.BoolKind:
				return protoreflect.ValueOfBool(true)
			case protoreflect.StringKind:
				return protoreflect.ValueOfString(strings.Repeat("s", n+1))
			case protoreflect.BytesKind:
				return protoreflect.ValueOfBytes(bytes.Repeat([]byte{0xb}, n+1))
			case protoreflect.Int32Kind, protoreflect.Sint32Kind, protoreflect.Sfixed32Kind:
				return protoreflect.ValueOfInt32(int32(-3 - n))
			case protoreflect.Int64Kind, protoreflect.Sint64Kind, protoreflect.Sfixed64Kind:
				return protoreflect.ValueOfInt64(int64(-1<<40 - n))
			case protoreflect.Uint32Kind, protoreflect.Fixed32Kind:
				return protoreflect.ValueOfUint32(uint32(0x80000001 + n))
			case protoreflect.Uint64Kind, protoreflect.Fixed64Kind:
				return protoreflect.ValueOfUint64(1<<63 + uint64(n))
			case protoreflect.FloatKind:
				return protoreflect.ValueOfFloat32(1.5)
			case protoreflect.DoubleKind:
				return protoreflect.ValueOfFloat64(-2.25)
			}
			panic(fd.Kind().String())
		}
		if fd.IsList() {
			l := m.Mutable(fd).List()
			l.Append(value(0))
			l.Append(value(1))
		} else {
			m.Set(fd, value(0))
		}
	}
}

// TestFastDecodeFull decodes a message of each type with every field set.
func TestFastDecodeFull(t *testing.T) {
	for _, mt := range fastTypes(t) {
		full := mt.New()
		fill(full, 0)
		b := marshal(t, full.Interface())
		m := mt.New().Interface()
		if err := fastUnmarshal(b, m); err != nil {
			t.Errorf("%s: %v", mt.Descriptor().FullName(), err)
			continue
		}
		if !proto.Equal(m, full.Interface()) {
			t.Errorf("%s: decoded %v, want %v", mt.Descriptor().FullName(), m, full.Interface())
		}
	}
}

// fuzzType picks the message type named name, or one by name's hash so
// that every input decodes as some type.
func fuzzType(types []protoreflect.MessageType, name string) protoreflect.MessageType {
	for _, mt := range types {
		if string(mt.Descriptor().FullName()) == name {
			return mt
		}
	}
	h := fnv.New32a()
	io.WriteString(h, name)
	return types[h.Sum32()%uint32(len(types))]
}

// addNested seeds each message held in m with its own type's bytes.
func addNested(f *testing.F, m protoreflect.Message) {
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		if fd.Kind() != protoreflect.MessageKind {
			return true
		}
		add := func(sub protoreflect.Message) {
			b, err := proto.Marshal(sub.Interface())
			if err != nil {
				f.Fatal(err)
			}
			f.Add(string(sub.Descriptor().FullName()), b)
			addNested(f, sub)
		}
		if fd.IsList() {
			for i := range v.List().Len() {
				add(v.List().Get(i).Message())
			}
		} else {
			add(v.Message())
		}
		return true
	})
}

// FuzzFastDecode decodes bytes as a message type both on the fast path and
// with proto.Unmarshal: both must fail, or both succeed with equal messages
// that encode to the same bytes. A required field left unset fails both
// after a whole decode, whose messages must agree too. Inputs the fast path
// hands to proto.Unmarshal need no comparison.
func FuzzFastDecode(f *testing.F) {
	types := fastTypes(f)
	for _, fe := range fixtureEntries(f) {
		f.Add(string(fe.msg.ProtoReflect().Descriptor().FullName()), fe.raw)
		addNested(f, fe.msg.ProtoReflect())
	}
	for _, mt := range types {
		full := mt.New()
		fill(full, 0)
		f.Add(string(mt.Descriptor().FullName()), marshal(f, full.Interface()))
	}
	f.Fuzz(func(t *testing.T, name string, b []byte) {
		mt := fuzzType(types, name)
		fast := mt.New().Interface()
		ferr := fastUnmarshal(b, fast)
		if errors.Is(ferr, errFallback) {
			return
		}
		slow := mt.New().Interface()
		serr := proto.Unmarshal(b, slow)
		var req *requiredError
		switch {
		case errors.As(ferr, &req) && serr != nil && strings.Contains(serr.Error(), "required field"):
			// Both decoded the whole input: what they decoded must agree.
		case ferr != nil && serr != nil:
			return
		case ferr != nil || serr != nil:
			t.Fatalf("%s: fast: %v, proto.Unmarshal: %v", mt.Descriptor().FullName(), ferr, serr)
		}
		if !proto.Equal(fast, slow) {
			t.Fatalf("%s: fast %v, proto.Unmarshal %v", mt.Descriptor().FullName(), fast, slow)
		}
		opts := proto.MarshalOptions{Deterministic: true, AllowPartial: true}
		fb, err := opts.Marshal(fast)
		if err != nil {
			t.Fatal(err)
		}
		sb, err := opts.Marshal(slow)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(fb, sb) {
			t.Fatalf("%s: re-encodings differ", mt.Descriptor().FullName())
		}
	})
}

// BenchmarkDecode decodes every entry of the counter fixture, warm, on the
// fast path and with proto.Unmarshal.
func BenchmarkDecode(b *testing.B) {
	var ents []fixtureEntry
	for _, fe := range fixtureEntries(b) {
		if strings.HasPrefix(fe.where, "counter/") {
			ents = append(ents, fe)
		}
	}
	for _, path := range []struct {
		name   string
		decode func([]byte, proto.Message) error
	}{{"fast", unmarshal}, {"proto", proto.Unmarshal}} {
		b.Run(path.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				for _, fe := range ents {
					if err := path.decode(fe.raw, fe.msg.ProtoReflect().Type().New().Interface()); err != nil {
						b.Fatal(err)
					}
				}
			}
		})
	}
}
