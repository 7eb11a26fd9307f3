// Command genfast writes images/fastdecode_gen.go: reflection-free decoders
// for the go-criu message types a restore reads.
//
// protobuf-go builds its coder tables for a message type by reflection the
// first time the type is decoded in a process, which costs about half a
// millisecond per type: more than decoding a whole image set. The decoders
// written here set the fields of the go-criu structs directly and use only
// protowire, so a restore never pays that. They stop with errFallback
// whenever the input holds something they cannot represent exactly as
// proto.Unmarshal would (an unknown field, an unknown enum value, an
// unexpected wire type, a group), and the reader then uses proto.Unmarshal.
//
// The message set is every type reachable from the roots below, walked over
// their protoreflect descriptors; the Go field of each protobuf field is
// found by its struct tag. Run it with `go generate ./images`.
package main

import (
	"bytes"
	"flag"
	"fmt"
	"go/format"
	"log"
	"os"
	"reflect"
	"slices"
	"strconv"
	"strings"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/checkpoint-restore/go-criu/v8/crit/images/creds"
	criu_core "github.com/checkpoint-restore/go-criu/v8/crit/images/criu-core"
	criu_sa "github.com/checkpoint-restore/go-criu/v8/crit/images/criu-sa"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/fdinfo"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/fs"
	ghost_file "github.com/checkpoint-restore/go-criu/v8/crit/images/ghost-file"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/inventory"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/memfd"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/mm"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/pagemap"
	pipe_data "github.com/checkpoint-restore/go-criu/v8/crit/images/pipe-data"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/pstree"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/seccomp"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/siginfo"
	sk_packet "github.com/checkpoint-restore/go-criu/v8/crit/images/sk-packet"
	tcp_stream "github.com/checkpoint-restore/go-criu/v8/crit/images/tcp-stream"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/timens"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/tty"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/vma"
)

// roots are the entry types of the image kinds a restore reads (see
// restore/plan.go and images/dir.go), and of the older separate kinds for
// what CRIU 4.2 keeps in the core image (creds, sigacts, signals). The
// file kinds (reg-files, pipes, unixsk ...) need no root of their own:
// their entry types are reachable from fdinfo.FileEntry.
var roots = []proto.Message{
	&inventory.InventoryEntry{},
	&pstree.PstreeEntry{},
	&criu_core.CoreEntry{},
	&criu_core.TaskKobjIdsEntry{},
	&mm.MmEntry{},
	&vma.VmaEntry{},
	&pagemap.PagemapHead{},
	&pagemap.PagemapEntry{},
	&fs.FsEntry{},
	&creds.CredsEntry{},
	&fdinfo.FdinfoEntry{},
	&fdinfo.FileEntry{},
	&timens.TimensEntry{},
	&seccomp.SeccompEntry{},
	&criu_sa.SaEntry{},
	&siginfo.SiginfoEntry{},
	&pipe_data.PipeDataEntry{},
	&sk_packet.SkPacketEntry{},
	&memfd.MemfdInodeEntry{},
	&tcp_stream.TcpStreamEntry{},
	&ghost_file.GhostFileEntry{},
	&ghost_file.GhostChunkEntry{},
	&tty.TtyInfoEntry{},
	&tty.TtyDataEntry{},
}

func main() {
	out := flag.String("o", "fastdecode_gen.go", "file to write")
	flag.Parse()
	src, err := Generate()
	if err != nil {
		log.Fatalf("genfast: %v", err)
	}
	if err := os.WriteFile(*out, src, 0o644); err != nil {
		log.Fatalf("genfast: %v", err)
	}
}

// message is one message type to write a decoder for.
type message struct {
	desc   protoreflect.MessageDescriptor
	goType reflect.Type // the struct type, not the pointer
	name   string       // unique Go identifier part: decodeNAME, checkNAME
	fields []field
}

// field is one protobuf field and the Go struct field that holds it.
type field struct {
	desc    protoreflect.FieldDescriptor
	goName  string
	goType  reflect.Type // type of the struct field
	message *message     // for message fields
	enum    *enum        // for enum fields
}

type enum struct {
	desc   protoreflect.EnumDescriptor
	goType reflect.Type
	name   string
}

type generator struct {
	messages map[protoreflect.FullName]*message
	enums    map[protoreflect.FullName]*enum
	names    map[string]string // Go identifier part -> full name that took it
	imports  map[string]string // import path -> alias
}

// Generate returns the gofmt'd source of fastdecode_gen.go.
func Generate() ([]byte, error) {
	g := &generator{
		messages: map[protoreflect.FullName]*message{},
		enums:    map[protoreflect.FullName]*enum{},
		names:    map[string]string{},
		imports:  map[string]string{},
	}
	for _, r := range roots {
		if _, err := g.addMessage(r.ProtoReflect().Descriptor(), reflect.TypeOf(r).Elem()); err != nil {
			return nil, err
		}
	}
	for _, m := range g.sortedMessages() {
		if err := g.checkAcyclic(m, nil); err != nil {
			return nil, err
		}
	}
	src := g.write()
	out, err := format.Source(src)
	if err != nil {
		return nil, fmt.Errorf("formatting the generated source: %w\n%s", err, src)
	}
	return out, nil
}

func (g *generator) sortedMessages() []*message {
	ms := make([]*message, 0, len(g.messages))
	for _, m := range g.messages {
		ms = append(ms, m)
	}
	slices.SortFunc(ms, func(a, b *message) int { return strings.Compare(a.name, b.name) })
	return ms
}

func (g *generator) sortedEnums() []*enum {
	es := make([]*enum, 0, len(g.enums))
	for _, e := range g.enums {
		es = append(es, e)
	}
	slices.SortFunc(es, func(a, b *enum) int { return strings.Compare(a.name, b.name) })
	return es
}

// ident returns a unique identifier part for a Go type: its name, or its
// package alias and name when two types share a name.
func (g *generator) ident(t reflect.Type, full protoreflect.FullName) string {
	name := t.Name()
	if prev, ok := g.names[name]; ok && prev != string(full) {
		name = g.alias(t.PkgPath()) + "_" + t.Name()
	}
	g.names[name] = string(full)
	return name
}

// alias returns the import alias of a go-criu package, registering it.
func (g *generator) alias(path string) string {
	if a, ok := g.imports[path]; ok {
		return a
	}
	a := strings.ReplaceAll(path[strings.LastIndex(path, "/")+1:], "-", "_")
	for _, other := range g.imports {
		if other == a {
			panic("genfast: two packages named " + a)
		}
	}
	g.imports[path] = a
	return a
}

// goName returns how the generated code names Go type t.
func (g *generator) goName(t reflect.Type) string {
	return g.alias(t.PkgPath()) + "." + t.Name()
}

func (g *generator) addMessage(md protoreflect.MessageDescriptor, t reflect.Type) (*message, error) {
	if m, ok := g.messages[md.FullName()]; ok {
		if m.goType != t {
			return nil, fmt.Errorf("%s: two Go types, %v and %v", md.FullName(), m.goType, t)
		}
		return m, nil
	}
	if md.Syntax() != protoreflect.Proto2 {
		// proto3 differs: implicit presence, UTF-8 checks on strings.
		return nil, fmt.Errorf("%s: %v message, only proto2 is supported", md.FullName(), md.Syntax())
	}
	if md.ExtensionRanges().Len() > 0 || md.Oneofs().Len() > 0 {
		return nil, fmt.Errorf("%s: extensions and oneofs are not supported", md.FullName())
	}
	if t.Kind() != reflect.Struct {
		return nil, fmt.Errorf("%s: Go type %v is not a struct", md.FullName(), t)
	}
	m := &message{desc: md, goType: t, name: g.ident(t, md.FullName())}
	g.messages[md.FullName()] = m

	byNumber := map[protoreflect.FieldNumber]reflect.StructField{}
	for i := range t.NumField() {
		sf := t.Field(i)
		tag := sf.Tag.Get("protobuf")
		if tag == "" || !sf.IsExported() {
			continue
		}
		parts := strings.Split(tag, ",")
		if len(parts) < 2 {
			return nil, fmt.Errorf("%v.%s: bad protobuf tag %q", t, sf.Name, tag)
		}
		n, err := strconv.Atoi(parts[1])
		if err != nil {
			return nil, fmt.Errorf("%v.%s: bad protobuf tag %q", t, sf.Name, tag)
		}
		byNumber[protoreflect.FieldNumber(n)] = sf
	}
	fds := md.Fields()
	for i := range fds.Len() {
		fd := fds.Get(i)
		sf, ok := byNumber[fd.Number()]
		if !ok {
			return nil, fmt.Errorf("%s: no Go field in %v", fd.FullName(), t)
		}
		f := field{desc: fd, goName: sf.Name, goType: sf.Type}
		if err := checkGoType(fd, sf.Type); err != nil {
			return nil, err
		}
		switch fd.Kind() {
		case protoreflect.MessageKind:
			ptr := sf.Type // *T, or []*T when repeated
			if fd.IsList() {
				ptr = ptr.Elem()
			}
			sub, err := g.addMessage(fd.Message(), ptr.Elem())
			if err != nil {
				return nil, err
			}
			f.message = sub
		case protoreflect.EnumKind:
			f.enum = g.addEnum(fd.Enum(), sf.Type.Elem())
		case protoreflect.GroupKind:
			return nil, fmt.Errorf("%s: groups are not supported", fd.FullName())
		}
		m.fields = append(m.fields, f)
	}
	slices.SortFunc(m.fields, func(a, b field) int { return int(a.desc.Number() - b.desc.Number()) })
	return m, nil
}

func (g *generator) addEnum(ed protoreflect.EnumDescriptor, t reflect.Type) *enum {
	if e, ok := g.enums[ed.FullName()]; ok {
		return e
	}
	e := &enum{desc: ed, goType: t, name: g.ident(t, ed.FullName())}
	g.enums[ed.FullName()] = e
	return e
}

// goKinds are the Go kinds go-criu uses for each protobuf kind.
var goKinds = map[protoreflect.Kind]reflect.Kind{
	protoreflect.BoolKind:     reflect.Bool,
	protoreflect.EnumKind:     reflect.Int32,
	protoreflect.Int32Kind:    reflect.Int32,
	protoreflect.Sint32Kind:   reflect.Int32,
	protoreflect.Sfixed32Kind: reflect.Int32,
	protoreflect.Uint32Kind:   reflect.Uint32,
	protoreflect.Fixed32Kind:  reflect.Uint32,
	protoreflect.Int64Kind:    reflect.Int64,
	protoreflect.Sint64Kind:   reflect.Int64,
	protoreflect.Sfixed64Kind: reflect.Int64,
	protoreflect.Uint64Kind:   reflect.Uint64,
	protoreflect.Fixed64Kind:  reflect.Uint64,
	protoreflect.FloatKind:    reflect.Float32,
	protoreflect.DoubleKind:   reflect.Float64,
	protoreflect.StringKind:   reflect.String,
}

// checkGoType makes sure the Go field has the shape the generated code
// assigns to: *T for singular scalars and messages, []T for repeated
// fields, []byte for bytes.
func checkGoType(fd protoreflect.FieldDescriptor, t reflect.Type) error {
	bad := func() error { return fmt.Errorf("%s: unexpected Go type %v", fd.FullName(), t) }
	elem := t
	if fd.IsList() {
		if t.Kind() != reflect.Slice {
			return bad()
		}
		elem = t.Elem()
	}
	switch fd.Kind() {
	case protoreflect.BytesKind:
		if elem.Kind() != reflect.Slice || elem.Elem().Kind() != reflect.Uint8 {
			return bad()
		}
		return nil
	case protoreflect.MessageKind:
		if elem.Kind() != reflect.Pointer || elem.Elem().Kind() != reflect.Struct {
			return bad()
		}
		return nil
	}
	if !fd.IsList() {
		if t.Kind() != reflect.Pointer {
			return bad()
		}
		elem = t.Elem()
	}
	want, ok := goKinds[fd.Kind()]
	if !ok || elem.Kind() != want {
		return bad()
	}
	if fd.Kind() == protoreflect.EnumKind && elem.Name() == "" {
		return bad()
	}
	return nil
}

// checkAcyclic refuses recursive message types: the decoders recurse
// without the depth limit proto.Unmarshal keeps.
func (g *generator) checkAcyclic(m *message, path []*message) error {
	if slices.Contains(path, m) {
		return fmt.Errorf("%s: recursive message type, not supported", m.desc.FullName())
	}
	path = append(path, m)
	for _, f := range m.fields {
		if f.message != nil {
			if err := g.checkAcyclic(f.message, path); err != nil {
				return err
			}
		}
	}
	return nil
}

// needsCheck reports whether a message or one it holds has required
// fields, so that a check function is written for it.
func (m *message) needsCheck() bool {
	for _, f := range m.fields {
		if f.desc.Cardinality() == protoreflect.Required {
			return true
		}
		if f.message != nil && f.message.needsCheck() {
			return true
		}
	}
	return false
}

func (g *generator) write() []byte {
	ms := g.sortedMessages()
	var body bytes.Buffer
	w := func(format string, args ...any) { fmt.Fprintf(&body, format, args...) }

	w("// fastUnmarshal decodes b into m, a new message, as proto.Unmarshal does,\n")
	w("// for the message types below. It returns errFallback when b holds\n")
	w("// something only proto.Unmarshal represents exactly, and errNoDecoder for\n")
	w("// other types.\n")
	w("func fastUnmarshal(b []byte, m proto.Message) error {\n")
	w("switch m := m.(type) {\n")
	for _, m := range ms {
		w("case *%s:\n", g.goName(m.goType))
		if m.needsCheck() {
			w("if err := decode%s(m, b); err != nil {\nreturn err\n}\n", m.name)
			w("return check%s(m)\n", m.name)
		} else {
			w("return decode%s(m, b)\n", m.name)
		}
	}
	w("}\nreturn errNoDecoder\n}\n\n")

	for _, m := range ms {
		g.writeDecode(&body, m)
		if m.needsCheck() {
			g.writeCheck(&body, m)
		}
	}
	for _, e := range g.sortedEnums() {
		g.writeEnum(&body, e)
	}

	var src bytes.Buffer
	fmt.Fprintf(&src, "// Code generated by images/internal/genfast from the go-criu v8 message types. DO NOT EDIT.\n\n")
	fmt.Fprintf(&src, "package images\n\nimport (\n")
	if bytes.Contains(body.Bytes(), []byte("math.")) {
		fmt.Fprintf(&src, "%q\n\n", "math")
	}
	fmt.Fprintf(&src, "%q\n%q\n\n", "google.golang.org/protobuf/encoding/protowire", "google.golang.org/protobuf/proto")
	paths := make([]string, 0, len(g.imports))
	for p := range g.imports {
		paths = append(paths, p)
	}
	slices.Sort(paths)
	for _, p := range paths {
		if a := g.imports[p]; a != p[strings.LastIndex(p, "/")+1:] {
			fmt.Fprintf(&src, "%s %q\n", a, p)
		} else {
			fmt.Fprintf(&src, "%q\n", p)
		}
	}
	fmt.Fprintf(&src, ")\n\n")
	src.Write(body.Bytes())
	return src.Bytes()
}

// wireType is the wire type of a field's elements when not packed.
func wireType(k protoreflect.Kind) int {
	switch k {
	case protoreflect.Fixed32Kind, protoreflect.Sfixed32Kind, protoreflect.FloatKind:
		return 5
	case protoreflect.Fixed64Kind, protoreflect.Sfixed64Kind, protoreflect.DoubleKind:
		return 1
	case protoreflect.StringKind, protoreflect.BytesKind, protoreflect.MessageKind:
		return 2
	}
	return 0
}

// conv returns the Go expression that turns raw, the element's wire value
// (a uint64 for varints and fixed64, a uint32 or uint64 for fixed32), into
// the field's Go element type, as protobuf-go does.
func (g *generator) conv(f field, raw string) string {
	switch f.desc.Kind() {
	case protoreflect.BoolKind:
		return raw + " != 0"
	case protoreflect.Int32Kind, protoreflect.Sfixed32Kind:
		return "int32(" + raw + ")"
	case protoreflect.Sint32Kind:
		return "int32(protowire.DecodeZigZag(uint64(" + raw + ") & 0xffffffff))"
	case protoreflect.Uint32Kind, protoreflect.Fixed32Kind:
		return "uint32(" + raw + ")"
	case protoreflect.Int64Kind, protoreflect.Sfixed64Kind:
		return "int64(" + raw + ")"
	case protoreflect.Sint64Kind:
		return "protowire.DecodeZigZag(" + raw + ")"
	case protoreflect.Uint64Kind, protoreflect.Fixed64Kind:
		return raw
	case protoreflect.FloatKind:
		return "math.Float32frombits(uint32(" + raw + "))"
	case protoreflect.DoubleKind:
		return "math.Float64frombits(" + raw + ")"
	}
	panic("genfast: no conversion for " + f.desc.Kind().String())
}

func (g *generator) writeDecode(buf *bytes.Buffer, m *message) {
	w := func(format string, args ...any) { fmt.Fprintf(buf, format, args...) }
	w("// decode%s merges the %s in b into m.\n", m.name, m.desc.FullName())
	w("func decode%s(m *%s, b []byte) error {\n", m.name, g.goName(m.goType))
	if len(m.fields) == 0 {
		w("if len(b) > 0 {\nreturn errFallback\n}\nreturn nil\n}\n\n")
		return
	}
	w("var f wireField\n")
	w("for len(b) > 0 {\n")
	w("var err error\n")
	w("if b, err = f.next(b, %q); err != nil {\nreturn err\n}\n", m.desc.FullName())
	w("switch f.tag {\n")
	for _, f := range m.fields {
		g.writeField(buf, m, f)
	}
	w("default:\nreturn errFallback\n}\n}\nreturn nil\n}\n\n")
}

func (g *generator) writeField(buf *bytes.Buffer, m *message, f field) {
	w := func(format string, args ...any) { fmt.Fprintf(buf, format, args...) }
	fd := f.desc
	num := uint64(fd.Number())
	wt := wireType(fd.Kind())
	dst := "m." + f.goName
	w("case %d: // %s\n", num<<3|uint64(wt), fd.Name())
	switch {
	case fd.Kind() == protoreflect.MessageKind && fd.IsList():
		w("e := new(%s)\n", g.goName(f.message.goType))
		w("if err := decode%s(e, f.b); err != nil {\nreturn err\n}\n", f.message.name)
		w("%s = append(%s, e)\n", dst, dst)
	case fd.Kind() == protoreflect.MessageKind:
		// A message that appears twice is merged, as protobuf requires.
		w("if %s == nil {\n%s = new(%s)\n}\n", dst, dst, g.goName(f.message.goType))
		w("if err := decode%s(%s, f.b); err != nil {\nreturn err\n}\n", f.message.name, dst)
	case fd.Kind() == protoreflect.BytesKind && fd.IsList():
		w("%s = append(%s, cloneBytes(f.b))\n", dst, dst)
	case fd.Kind() == protoreflect.BytesKind:
		w("%s = cloneBytes(f.b)\n", dst)
	case fd.Kind() == protoreflect.StringKind && fd.IsList():
		w("%s = append(%s, string(f.b))\n", dst, dst)
	case fd.Kind() == protoreflect.StringKind:
		w("%s = new(string(f.b))\n", dst)
	case fd.Kind() == protoreflect.EnumKind:
		w("x, ok := enum%s(f.v)\n", f.enum.name)
		w("if !ok {\nreturn errFallback\n}\n")
		if fd.IsList() {
			w("%s = append(%s, x)\n", dst, dst)
		} else {
			w("%s = &x\n", dst)
		}
	case fd.IsList():
		w("%s = append(%s, %s)\n", dst, dst, g.conv(f, "f.v"))
	default:
		w("%s = new(%s)\n", dst, g.conv(f, "f.v"))
	}
	if !fd.IsList() || wt == 2 {
		return
	}
	// Repeated scalars are accepted packed whatever the descriptor says,
	// and unpacked too.
	w("case %d: // %s, packed\n", num<<3|2, fd.Name())
	w("for p := f.b; len(p) > 0; {\n")
	switch wt {
	case 0:
		w("v, n := protowire.ConsumeVarint(p)\n")
	case 5:
		w("v, n := protowire.ConsumeFixed32(p)\n")
	case 1:
		w("v, n := protowire.ConsumeFixed64(p)\n")
	}
	w("if n < 0 {\nreturn malformed(%q, protowire.ParseError(n))\n}\n", fd.FullName())
	w("p = p[n:]\n")
	if fd.Kind() == protoreflect.EnumKind {
		w("x, ok := enum%s(v)\n", f.enum.name)
		w("if !ok {\nreturn errFallback\n}\n")
		w("%s = append(%s, x)\n", dst, dst)
	} else {
		w("%s = append(%s, %s)\n", dst, dst, g.conv(f, "v"))
	}
	w("}\n")
}

func (g *generator) writeCheck(buf *bytes.Buffer, m *message) {
	w := func(format string, args ...any) { fmt.Fprintf(buf, format, args...) }
	w("// check%s reports the first required field of m, or of a message in\n// it, that is not set.\n", m.name)
	w("func check%s(m *%s) error {\n", m.name, g.goName(m.goType))
	for _, f := range m.fields {
		if f.desc.Cardinality() == protoreflect.Required {
			w("if m.%s == nil {\nreturn requiredNotSet(%q)\n}\n", f.goName, f.desc.FullName())
		}
	}
	for _, f := range m.fields {
		if f.message == nil || !f.message.needsCheck() {
			continue
		}
		if f.desc.IsList() {
			w("for _, e := range m.%s {\nif err := check%s(e); err != nil {\nreturn err\n}\n}\n", f.goName, f.message.name)
		} else {
			w("if m.%s != nil {\nif err := check%s(m.%s); err != nil {\nreturn err\n}\n}\n", f.goName, f.message.name, f.goName)
		}
	}
	w("return nil\n}\n\n")
}

func (g *generator) writeEnum(buf *bytes.Buffer, e *enum) {
	w := func(format string, args ...any) { fmt.Fprintf(buf, format, args...) }
	vals := e.desc.Values()
	nums := make([]int32, 0, vals.Len())
	for i := range vals.Len() {
		n := int32(vals.Get(i).Number())
		if !slices.Contains(nums, n) {
			nums = append(nums, n)
		}
	}
	slices.Sort(nums)
	list := make([]string, len(nums))
	for i, n := range nums {
		list[i] = strconv.Itoa(int(n))
	}
	w("// enum%s converts a varint to %s; false for a value the\n// enum does not declare (proto2 enums are closed).\n", e.name, e.desc.FullName())
	w("func enum%s(v uint64) (%s, bool) {\n", e.name, g.goName(e.goType))
	w("switch x := int32(v); x {\ncase %s:\nreturn %s(x), true\n}\nreturn 0, false\n}\n\n", strings.Join(list, ", "), g.goName(e.goType))
}
