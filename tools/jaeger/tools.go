//go:build tools

// Package jaeger pins the Jaeger all-in-one (v2) that crest's trace tests
// and `make demo` start on loopback. It is a module of its own so that
// Jaeger's dependency tree never enters crest's go.mod.
//
// Build it with:
//
//	cd tools/jaeger && go build -o BIN github.com/jaegertracing/jaeger/cmd/jaeger
package jaeger

import _ "github.com/jaegertracing/jaeger/cmd/jaeger"
