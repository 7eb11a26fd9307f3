// Package images reads and writes CRIU image directories.
//
// It implements CRIU's framing (magic numbers, u32-length protobuf entries,
// raw payloads after some entries) on top of the generated protobuf types of
// go-criu v8, and gives the restore planner a typed, lazily loaded view of a
// whole image directory (Dir) and of the memory pages it holds.
//
// Errors in the bytes are *FormatError values that name the file, the byte
// offset and the entry; absent required images are *MissingError values.
package images
