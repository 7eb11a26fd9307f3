package images

// fastdecode_gen.go holds the reflection-free decoders of the message types
// a restore reads (see fastdecode.go); genfast writes it from the go-criu
// types themselves.
//go:generate go run ./internal/genfast -o fastdecode_gen.go
