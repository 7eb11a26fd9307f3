package images

import (
	"errors"
	"fmt"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

// The entries a restore reads are decoded by the generated, reflection-free
// decoders of fastdecode_gen.go: protobuf-go builds its coder tables for a
// message type by reflection on the first decode of that type in a process
// (about 0.6 ms for core_entry), which a restore would pay for every type it
// reads. The generated decoders give the same message as proto.Unmarshal or
// step aside for it: an entry holding anything they do not represent
// exactly (an unknown field or enum value, a wire type the field does not
// have, a group) is decoded again, whole, by proto.Unmarshal.

// fastDecode turns the generated decoders on; tests turn it off to compare.
var fastDecode = true

var (
	// errFallback: the entry needs proto.Unmarshal to be decoded exactly.
	errFallback = errors.New("entry needs proto.Unmarshal")
	// errNoDecoder: no decoder was generated for the message type.
	errNoDecoder = errors.New("no generated decoder for the message type")
)

// unmarshal decodes b into m, a new message, as proto.Unmarshal does.
func unmarshal(b []byte, m proto.Message) error {
	if fastDecode {
		err := fastUnmarshal(b, m)
		if err != errFallback && err != errNoDecoder {
			return err
		}
		// m may hold part of b: proto.Unmarshal resets it first.
	}
	return proto.Unmarshal(b, m)
}

// wireField is one field of an encoded message: its tag (number<<3 | wire
// type) and its value, in v for varint, fixed32 and fixed64 fields and in b
// for length-delimited ones.
type wireField struct {
	tag uint64
	v   uint64
	b   []byte
}

// next reads the field at the start of b, of a msg message, into f and
// returns the rest of b. One-byte tags and varints, most of CRIU's, take
// the short way.
func (f *wireField) next(b []byte, msg string) ([]byte, error) {
	var n int
	if b[0] < 0x80 {
		f.tag, n = uint64(b[0]), 1
	} else if f.tag, n = protowire.ConsumeVarint(b); n < 0 {
		return nil, malformed(msg, protowire.ParseError(n))
	}
	b = b[n:]
	switch protowire.Type(f.tag & 7) {
	case protowire.VarintType:
		if len(b) > 0 && b[0] < 0x80 {
			f.v = uint64(b[0])
			return b[1:], nil
		}
		f.v, n = protowire.ConsumeVarint(b)
	case protowire.Fixed64Type:
		f.v, n = protowire.ConsumeFixed64(b)
	case protowire.Fixed32Type:
		var v uint32
		v, n = protowire.ConsumeFixed32(b)
		f.v = uint64(v)
	case protowire.BytesType:
		f.b, n = protowire.ConsumeBytes(b)
	default:
		// Groups, and wire types 6 and 7 that proto.Unmarshal refuses.
		return nil, errFallback
	}
	if n < 0 {
		return nil, malformed(fmt.Sprintf("%s field %d", msg, f.tag>>3), protowire.ParseError(n))
	}
	return b[n:], nil
}

// wireError is malformed protobuf wire data in an entry.
type wireError struct {
	Where string // the message, or the field, being decoded
	Err   error  // from protowire: io.ErrUnexpectedEOF, an overflow
}

func (e *wireError) Error() string {
	return fmt.Sprintf("cannot parse invalid wire-format data in %s: %v", e.Where, e.Err)
}

func (e *wireError) Unwrap() error { return e.Err }

func malformed(where string, err error) error { return &wireError{Where: where, Err: err} }

// requiredError is a proto2 required field that an entry leaves unset.
type requiredError struct {
	Field string // full name, e.g. "fdinfo_entry.fd"
}

func (e *requiredError) Error() string { return "required field " + e.Field + " not set" }

func requiredNotSet(field string) error { return &requiredError{Field: field} }

// cloneBytes copies a bytes field: never nil, as a present field must be
// told apart from an absent one.
func cloneBytes(b []byte) []byte { return append([]byte{}, b...) }
