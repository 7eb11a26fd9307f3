# crest: the usual entry points. Everything runs as root on Linux.
GO      ?= go
OUT     ?= out
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X main.version=$(VERSION)

.PHONY: all build generate test check bench fuzz demo jaeger clean

all: build

# build: the crest binary in ./crest (the agent and the bpf objects are
# committed, so this needs Go alone).
build:
	$(GO) build -ldflags "$(LDFLAGS)" -o crest ./cmd/crest

# generate: rebuild the committed generated files (needs gcc, clang-14).
generate:
	$(GO) generate ./...

# check: formatting and vet.
check:
	@unformatted=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$unformatted" ]; then echo "gofmt would change:"; echo "$$unformatted"; exit 1; fi
	$(GO) vet ./...

# test: the whole suite, as root (end-to-end tests restore real processes).
test: check
	$(GO) test -count=1 ./...

# bench: the benchmarks (numbers for the notes, never asserted).
bench:
	$(GO) test -run '^$$' -bench . -benchmem ./...

# fuzz: run every fuzz target of the images package for FUZZTIME each.
FUZZTIME ?= 1m
fuzz:
	@for t in $$($(GO) test -list '^Fuzz' ./images | grep '^Fuzz'); do \
		echo "== $$t"; $(GO) test -run '^$$' -fuzz "^$$t$$" -fuzztime $(FUZZTIME) ./images || exit 1; \
	done

# demo: crest's main job on the built-in example. Until restore lands it
# writes the example image set with crest's own writer and shows it.
demo: build
	rm -rf $(OUT)/example
	$(GO) run ./test/example/mkexample $(OUT)/example
	./crest show -D $(OUT)/example

# jaeger: build the pinned Jaeger of tools/jaeger (prints its path).
jaeger:
	bash tools/jaeger/jaeger.sh build

clean:
	rm -rf crest $(OUT)
