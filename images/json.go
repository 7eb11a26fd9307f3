package images

import (
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"fmt"
	"math"
	"net/netip"
	"sort"
	"strconv"
	"sync"
	"unicode/utf8"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/descriptorpb"

	ghost_file "github.com/checkpoint-restore/go-criu/v8/crit/images/ghost-file"
	ipc_msg "github.com/checkpoint-restore/go-criu/v8/crit/images/ipc-msg"
	ipc_sem "github.com/checkpoint-restore/go-criu/v8/crit/images/ipc-sem"
	ipc_shm "github.com/checkpoint-restore/go-criu/v8/crit/images/ipc-shm"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/opts"
	tcp_stream "github.com/checkpoint-restore/go-criu/v8/crit/images/tcp-stream"
)

// This file turns images into the JSON that CRIU's crit decode prints
// (lib/pycriu/images/images.py and pb2dict.py), so that crest's output can
// be read by the same tools and diffed against crit's:
//
//	{"magic": "CORE", "entries": [{field: value, ..., "extra": payload}]}
//
// Fields appear in field-number order with their .proto names, only when
// set (proto2 presence, non-empty repeated); enums by name; bytes fields and
// payloads in base64 with a newline after every 76 characters and at the
// end, exactly as Python's base64.encodebytes writes them (Go's decoder
// skips the newlines). With Pretty, numbers are shown as crit --pretty
// shows them, following the (criu) field options of the .proto files: hex
// ("0x401000", inherited by every field of a message marked hex), flags by
// name ("PROT_READ | PROT_EXEC"), devices as "major:minor", socket
// constants and task states by name, IP addresses as text.

// JSONOptions selects how an image is rendered as JSON.
type JSONOptions struct {
	// Pretty formats numbers as crit --pretty does (see above) and indents
	// with four spaces, as crit show and crit decode --pretty do. Without
	// it, numbers are numbers and the output is one line.
	Pretty bool
	// NoPayload replaces payloads with their size ("... <16B>"), as
	// crit decode --nopl does.
	NoPayload bool
}

// MarshalJSON renders the image as crit decode does without --pretty.
func (img *Image) MarshalJSON() ([]byte, error) { return img.JSON(JSONOptions{}) }

// JSON renders the image in crit's JSON form.
func (img *Image) JSON(o JSONOptions) ([]byte, error) {
	if img.Kind == nil {
		return nil, fmt.Errorf("image without a kind")
	}
	entries := make([]any, 0, len(img.Entries))
	for i, e := range img.Entries {
		if e.Message == nil {
			return nil, fmt.Errorf("%s image: entry %d has no message", img.Kind.Name, i)
		}
		obj := messageJSON(e.Message.ProtoReflect(), o.Pretty, false)
		if extra, ok := payloadJSON(img.Kind, e, o.NoPayload); ok {
			obj = append(obj, jsonMember{"extra", extra})
		}
		entries = append(entries, obj)
	}
	root := jsonObject{{"magic", img.Kind.Name}, {"entries", entries}}
	return encodeJSON(root, o.Pretty), nil
}

// MessageJSON renders one message as crit renders an entry (without its
// payload).
func MessageJSON(m proto.Message, o JSONOptions) []byte {
	return encodeJSON(messageJSON(m.ProtoReflect(), o.Pretty, false), o.Pretty)
}

// payloadJSON returns the "extra" of an entry, as crit's extra handlers
// make it, and whether the entry has one.
func payloadJSON(k *Kind, e Entry, noPayload bool) (any, bool) {
	switch k.Payload {
	case PipeDataPayload, SkQueuePayload, BpfmapPayload:
		if noPayload {
			return payloadSize(len(e.Payload)), true
		}
		return critBase64(e.Payload), true
	case TCPStreamPayload:
		if noPayload {
			return payloadSize(len(e.Payload)), true
		}
		t, _ := e.Message.(*tcp_stream.TcpStreamEntry)
		n := min(int(t.GetInqLen()), len(e.Payload))
		return jsonObject{{"inq", critBase64(e.Payload[:n])}, {"outq", critBase64(e.Payload[n:])}}, true
	case IPCShmPayload:
		m, _ := e.Message.(*ipc_shm.IpcShmEntry)
		if m.GetInPagemaps() {
			return nil, false // in pagemap-shmem-ID.img
		}
		data := e.Payload[:min(uint64(len(e.Payload)), m.GetSize())]
		if noPayload {
			return payloadSize(len(data)), true
		}
		return critBase64(data), true
	case IPCSemPayload:
		m, _ := e.Message.(*ipc_sem.IpcSemEntry)
		values := IPCSemValues(m, e.Payload)
		if noPayload {
			return payloadSize(2 * len(values)), true
		}
		out := make([]any, len(values))
		for i, v := range values {
			out[i] = int64(v)
		}
		return out, true
	case IPCMsgPayload:
		// crit's: each message's ipc_msg, then its text
		msgs, err := IPCMessages(e.Payload)
		if err != nil {
			return nil, false
		}
		if noPayload {
			return payloadSize(len(e.Payload)), true
		}
		var out []any
		for _, m := range msgs {
			out = append(out, messageJSON((&ipc_msg.IpcMsg{Mtype: proto.Uint64(uint64(m.Type)), Msize: proto.Uint32(uint32(len(m.Text)))}).ProtoReflect(), false, false),
				critBase64(m.Text))
		}
		return out, true
	case GhostPayload:
		// crit skips ghost contents silently with --nopl.
		if noPayload {
			return nil, false
		}
		if g, ok := e.Message.(*ghost_file.GhostFileEntry); ok && g.GetChunks() {
			return nil, false // the chunks that follow carry the data
		}
		return critBase64(e.Payload), true
	}
	return nil, false
}

// critBase64 encodes b as Python's base64.encodebytes does: lines of at most
// 76 characters, each ending in a newline.
func critBase64(b []byte) string {
	const lineBytes = 57 // 76 characters of base64
	var out bytes.Buffer
	for len(b) > 0 {
		n := min(len(b), lineBytes)
		out.WriteString(base64.StdEncoding.EncodeToString(b[:n]))
		out.WriteByte('\n')
		b = b[n:]
	}
	return out.String()
}

// payloadSize is crit --nopl's placeholder, "... <16B>", "... <1.5KB>".
func payloadSize(n int) string {
	num := float64(n)
	for _, unit := range []string{"", "K", "M", "G", "T", "P", "E", "Z"} {
		if num < 1024 {
			if num == math.Trunc(num) {
				return fmt.Sprintf("... <%d%sB>", int64(num), unit)
			}
			return fmt.Sprintf("... <%.1f%sB>", num, unit)
		}
		num /= 1024
	}
	return fmt.Sprintf("... <%.1fYB>", num)
}

// messageJSON converts a message as pb2dict does. hex is inherited: every
// integer below a field marked (criu).hex is shown in hex.
func messageJSON(m protoreflect.Message, pretty, hex bool) jsonObject {
	fields := m.Descriptor().Fields()
	set := make([]protoreflect.FieldDescriptor, 0, fields.Len())
	for i := 0; i < fields.Len(); i++ {
		if fd := fields.Get(i); m.Has(fd) {
			set = append(set, fd)
		}
	}
	// protobuf's ListFields, which pb2dict walks, orders by number.
	sort.Slice(set, func(i, j int) bool { return set[i].Number() < set[j].Number() })

	obj := make(jsonObject, 0, len(set))
	for _, fd := range set {
		co := criuOptions(fd)
		h := hex || co.GetHex()
		v := m.Get(fd)
		var val any
		switch {
		case fd.IsList():
			l := v.List()
			if pretty && co.GetIpadd() {
				if addr, ok := ipAddress(l); ok {
					val = []any{addr}
					break
				}
			}
			items := make([]any, l.Len())
			for i := range items {
				items[i] = scalarJSON(fd, co, l.Get(i), pretty, h)
			}
			val = items
		case fd.IsMap():
			// No CRIU image has maps; render them plainly for completeness.
			mo := jsonObject{}
			v.Map().Range(func(k protoreflect.MapKey, mv protoreflect.Value) bool {
				mo = append(mo, jsonMember{k.String(), scalarJSON(fd.MapValue(), nil, mv, pretty, h)})
				return true
			})
			sort.Slice(mo, func(i, j int) bool { return mo[i].key < mo[j].key })
			val = mo
		default:
			val = scalarJSON(fd, co, v, pretty, h)
		}
		obj = append(obj, jsonMember{string(fd.Name()), val})
	}
	return obj
}

func scalarJSON(fd protoreflect.FieldDescriptor, co *opts.CRIU_Opts, v protoreflect.Value, pretty, hex bool) any {
	switch fd.Kind() {
	case protoreflect.MessageKind, protoreflect.GroupKind:
		return messageJSON(v.Message(), pretty, hex)
	case protoreflect.EnumKind:
		if ev := fd.Enum().Values().ByNumber(v.Enum()); ev != nil {
			return string(ev.Name())
		}
		return int64(v.Enum())
	case protoreflect.BytesKind:
		if co.GetConv() == "unix_name" {
			return quotedPrintable(v.Bytes())
		}
		return critBase64(v.Bytes())
	case protoreflect.BoolKind:
		return v.Bool()
	case protoreflect.StringKind:
		return v.String()
	case protoreflect.FloatKind, protoreflect.DoubleKind:
		return v.Float()
	case protoreflect.Int32Kind, protoreflect.Sint32Kind, protoreflect.Sfixed32Kind,
		protoreflect.Int64Kind, protoreflect.Sint64Kind, protoreflect.Sfixed64Kind:
		n := v.Int()
		if pretty {
			if hex {
				return hexString(n)
			}
			if n >= 0 {
				if s, ok := prettyUint(fd, co, uint64(n)); ok {
					return s
				}
			}
		}
		return n
	default: // unsigned kinds
		u := v.Uint()
		if pretty {
			if hex {
				return "0x" + strconv.FormatUint(u, 16)
			}
			if s, ok := prettyUint(fd, co, u); ok {
				return s
			}
		}
		return u
	}
}

func hexString(n int64) string {
	if n < 0 {
		return "-0x" + strconv.FormatUint(uint64(^n)+1, 16)
	}
	return "0x" + strconv.FormatUint(uint64(n), 16)
}

// prettyUint applies the dev, flags and dict options, in pb2dict's order.
func prettyUint(fd protoreflect.FieldDescriptor, co *opts.CRIU_Opts, u uint64) (any, bool) {
	if co.GetDev() {
		if co.GetOdev() {
			// glibc's major()/minor() of the old encoding.
			major := (u>>8)&0xfff | (u>>32)&^uint64(0xfff)
			minor := u&0xff | (u>>12)&^uint64(0xff)
			return fmt.Sprintf("%d:%d", major, minor), true
		}
		const kernMinorBits = 20
		return fmt.Sprintf("%d:%d", u>>kernMinorBits, u&(1<<kernMinorBits-1)), true
	}
	if f := co.GetFlags(); f != "" {
		names, ok := critFlagMaps[f]
		if !ok {
			return "0x" + strconv.FormatUint(u, 16), true
		}
		return formatFlags(u, names, " | "), true
	}
	if d := co.GetDict(); d != "" {
		if name, ok := critDicts[d][string(fd.Name())][u]; ok {
			return name, true
		}
	}
	return nil, false
}

// flagName is one named bit (or bits) of a flags field.
type flagName struct {
	name string
	bits uint64
}

// formatFlags lists the names of the bits set in v in the table's order,
// then what is left in hex; zero gives "" (as crit's map_flags).
func formatFlags(v uint64, names []flagName, sep string) string {
	var b bytes.Buffer
	rest := v
	for _, f := range names {
		if v&f.bits != 0 {
			if b.Len() > 0 {
				b.WriteString(sep)
			}
			b.WriteString(f.name)
		}
		rest &^= f.bits
	}
	if rest != 0 {
		if b.Len() > 0 {
			b.WriteString(sep)
		}
		fmt.Fprintf(&b, "0x%x", rest)
	}
	return b.String()
}

// The flag tables of pb2dict, by the name the .proto files give them.
var critFlagMaps = map[string][]flagName{
	"mmap.prot": {{"PROT_READ", 0x1}, {"PROT_WRITE", 0x2}, {"PROT_EXEC", 0x4}},
	"mmap.flags": {{"MAP_SHARED", 0x1}, {"MAP_PRIVATE", 0x2}, {"MAP_DROPPABLE", 0x08},
		{"MAP_ANON", 0x20}, {"MAP_GROWSDOWN", 0x0100}},
	"mmap.status": vmaStatusNames,
	"rfile.flags": openFlagNames,
	"pmap.flags":  {{"PE_PARENT", 1 << 0}, {"PE_LAZY", 1 << 1}, {"PE_PRESENT", 1 << 2}},
	"seals.flags": {{"F_SEAL_SEAL", 0x1}, {"F_SEAL_SHRINK", 0x2}, {"F_SEAL_GROW", 0x4},
		{"F_SEAL_WRITE", 0x8}, {"F_SEAL_FUTURE_WRITE", 0x10}},
}

// openFlagNames are the open(2) status flags of x86-64 (rfile.flags).
var openFlagNames = []flagName{
	{"O_WRONLY", 0o1}, {"O_RDWR", 0o2}, {"O_CREAT", 0o100}, {"O_EXCL", 0o200},
	{"O_NOCTTY", 0o400}, {"O_TRUNC", 0o1000}, {"O_APPEND", 0o2000},
	{"O_NONBLOCK", 0o4000}, {"O_DSYNC", 0o10000}, {"FASYNC", 0o20000},
	{"O_DIRECT", 0o40000}, {"O_LARGEFILE", 0o100000}, {"O_DIRECTORY", 0o200000},
	{"O_NOFOLLOW", 0o400000}, {"O_NOATIME", 0o1000000}, {"O_CLOEXEC", 0o2000000},
}

// critDicts are pb2dict's value names, per dict and field name. task_state
// follows compel's TASK_* values (CRIU 4.2's own table had Zombie and
// Stopped swapped and no Dead; later CRIU fixed it).
var critDicts = map[string]map[string]map[uint64]string{
	"gen": {
		"task_state": {1: "Alive", 2: "Dead", 3: "Stopped", 6: "Zombie"},
	},
	"sk": {
		"family": {1: "UNIX", 2: "INET", 10: "INET6", 16: "NETLINK", 17: "PACKET"},
		"type":   {1: "STREAM", 2: "DGRAM", 3: "RAW", 5: "SEQPACKET", 10: "PACKET"},
		"state": {1: "ESTABLISHED", 2: "SYN_SENT", 3: "SYN_RECV", 4: "FIN_WAIT1",
			5: "FIN_WAIT2", 6: "TIME_WAIT", 7: "CLOSE", 8: "CLOSE_WAIT", 9: "LAST_ACK", 10: "LISTEN"},
		"proto": {0: "IP", 6: "TCP", 17: "UDP", 136: "UDPLITE"},
	},
}

// ipAddress renders an address kept as u32 words in network byte order
// (one word for IPv4, four for IPv6).
func ipAddress(l protoreflect.List) (string, bool) {
	var b [16]byte
	switch l.Len() {
	case 1:
		binary.LittleEndian.PutUint32(b[:4], uint32(l.Get(0).Uint()))
		return netip.AddrFrom4([4]byte(b[:4])).String(), true
	case 4:
		for i := 0; i < 4; i++ {
			binary.LittleEndian.PutUint32(b[4*i:], uint32(l.Get(i).Uint()))
		}
		return netip.AddrFrom16(b).String(), true
	}
	return "", false
}

// quotedPrintable encodes a unix socket name as Python's quopri.encodestring
// (binascii.b2a_qp) does, for "\n" line ends: printable ASCII stays, "=",
// bytes above 126 and controls other than tab, space, CR and LF become =XX,
// trailing blanks are encoded, and lines are broken softly at 76.
func quotedPrintable(b []byte) string {
	const maxLine = 76
	var out []byte
	line := 0
	for i := 0; i < len(b); i++ {
		c := b[i]
		last := i+1 == len(b)
		next := byte(0)
		if !last {
			next = b[i+1]
		}
		encode := c > 126 || c == '=' ||
			(c == '.' && line == 0 && (last || next == '\n' || next == '\r' || next == 0)) ||
			((c == '\t' || c == ' ') && last) ||
			(c < 33 && c != '\r' && c != '\n' && c != '\t' && c != ' ')
		switch {
		case encode:
			if line+3 >= maxLine {
				out = append(out, '=', '\n')
				line = 0
			}
			out = fmt.Appendf(out, "=%02X", c)
			line += 3
		case c == '\n':
			if n := len(out); n > 0 && (out[n-1] == ' ' || out[n-1] == '\t') {
				blank := out[n-1]
				out = fmt.Appendf(out[:n-1], "=%02X", blank)
			}
			out = append(out, '\n')
			line = 0
		default:
			if !last && next != '\n' && line+1 >= maxLine {
				out = append(out, '=', '\n')
				line = 0
			}
			out = append(out, c)
			line++
		}
	}
	return string(out)
}

var criuOptionsCache sync.Map // protoreflect.FieldDescriptor -> *opts.CRIU_Opts

// criuOptions returns the (criu) options of a field, or nil.
func criuOptions(fd protoreflect.FieldDescriptor) *opts.CRIU_Opts {
	if c, ok := criuOptionsCache.Load(fd); ok {
		return c.(*opts.CRIU_Opts)
	}
	var co *opts.CRIU_Opts
	if fo, ok := fd.Options().(*descriptorpb.FieldOptions); ok && fo != nil && proto.HasExtension(fo, opts.E_Criu) {
		co, _ = proto.GetExtension(fo, opts.E_Criu).(*opts.CRIU_Opts)
	}
	criuOptionsCache.Store(fd, co)
	return co
}

// A small ordered JSON model, so that keys keep crit's order and the text
// comes out as Python's json module writes it.
type jsonMember struct {
	key string
	val any
}

type jsonObject []jsonMember

// encodeJSON writes v as Python's json.dump does: with indent=4 when
// pretty, else on one line with ", " and ": " separators; non-ASCII
// characters escaped (ensure_ascii).
func encodeJSON(v any, pretty bool) []byte {
	var b bytes.Buffer
	writeJSON(&b, v, pretty, 0)
	return b.Bytes()
}

func writeJSON(b *bytes.Buffer, v any, pretty bool, depth int) {
	open := func(c byte, n int) {
		b.WriteByte(c)
		if pretty && n > 0 {
			newline(b, depth+1)
		}
	}
	sep := func() {
		if pretty {
			b.WriteByte(',')
			newline(b, depth+1)
		} else {
			b.WriteString(", ")
		}
	}
	closing := func(c byte, n int) {
		if pretty && n > 0 {
			newline(b, depth)
		}
		b.WriteByte(c)
	}
	switch x := v.(type) {
	case jsonObject:
		open('{', len(x))
		for i, m := range x {
			if i > 0 {
				sep()
			}
			writeString(b, m.key)
			b.WriteString(": ")
			writeJSON(b, m.val, pretty, depth+1)
		}
		closing('}', len(x))
	case []any:
		open('[', len(x))
		for i, e := range x {
			if i > 0 {
				sep()
			}
			writeJSON(b, e, pretty, depth+1)
		}
		closing(']', len(x))
	case string:
		writeString(b, x)
	case bool:
		b.WriteString(strconv.FormatBool(x))
	case int64:
		b.WriteString(strconv.FormatInt(x, 10))
	case uint64:
		b.WriteString(strconv.FormatUint(x, 10))
	case float64:
		switch {
		case math.IsNaN(x):
			b.WriteString("NaN")
		case math.IsInf(x, 1):
			b.WriteString("Infinity")
		case math.IsInf(x, -1):
			b.WriteString("-Infinity")
		default:
			b.WriteString(strconv.FormatFloat(x, 'g', -1, 64))
		}
	case nil:
		b.WriteString("null")
	default:
		panic(fmt.Sprintf("images: no JSON form for %T", v))
	}
}

func newline(b *bytes.Buffer, depth int) {
	b.WriteByte('\n')
	for i := 0; i < depth; i++ {
		b.WriteString("    ")
	}
}

func writeString(b *bytes.Buffer, s string) {
	b.WriteByte('"')
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		i += size
		switch {
		case r == '"':
			b.WriteString(`\"`)
		case r == '\\':
			b.WriteString(`\\`)
		case r == '\n':
			b.WriteString(`\n`)
		case r == '\r':
			b.WriteString(`\r`)
		case r == '\t':
			b.WriteString(`\t`)
		case r == '\b':
			b.WriteString(`\b`)
		case r == '\f':
			b.WriteString(`\f`)
		case r >= 0x20 && r <= 0x7e:
			b.WriteByte(byte(r))
		case r > 0xffff:
			r -= 0x10000
			fmt.Fprintf(b, `\u%04x\u%04x`, 0xd800+(r>>10), 0xdc00+(r&0x3ff))
		default:
			fmt.Fprintf(b, `\u%04x`, r)
		}
	}
	b.WriteByte('"')
}
