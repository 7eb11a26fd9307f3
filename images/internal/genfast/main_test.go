package main

import (
	"bytes"
	"os"
	"testing"
)

// TestGeneratedIsCurrent checks that the committed fastdecode_gen.go is
// what the generator writes now: run `go generate ./images` when it fails.
func TestGeneratedIsCurrent(t *testing.T) {
	want, err := Generate()
	if err != nil {
		t.Fatal(err)
	}
	again, err := Generate()
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(want, again) {
		t.Fatal("two runs of the generator differ")
	}
	got, err := os.ReadFile("../../fastdecode_gen.go")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("images/fastdecode_gen.go is not what the generator writes: run go generate ./images")
	}
}
