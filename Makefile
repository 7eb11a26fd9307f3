# crest: the usual entry points. Everything runs as root on Linux.
GO      ?= go
OUT     ?= out
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X main.version=$(VERSION)

.PHONY: all build generate test check bench bench-restore bench-verify fuzz demo jaeger clean

all: build

# build: the crest binary in ./crest (the agent and the bpf objects are
# committed, so this needs Go alone). Static (CGO_ENABLED=0): without the
# dynamic loader and libc a command starts about 0.6 ms sooner, 1-4% of a
# small restore's wall time.
build:
	CGO_ENABLED=0 $(GO) build -ldflags "$(LDFLAGS)" -o crest ./cmd/crest

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

# bench: the benchmarks (numbers for the notes, never asserted). -p 1 keeps
# other packages' tests from disturbing the restore timings.
bench:
	$(GO) test -p 1 -run '^$$' -bench . -benchmem ./...

# bench-restore: restore medians of the CRIU 4.2 fixtures, library and CLI.
bench-restore:
	$(GO) test -p 1 -count 1 -run '^$$' -bench '^BenchmarkRestore' -benchtime 200x ./restore

# bench-verify: what the eBPF monitor costs a restore's stages (crest bench
# --verify: plain and watched restores alternating, paired by round) for
# the fixtures in BENCH_FIXTURES, RUNS restores of each mode.
FIXTURES       ?= $(or $(CREST_FIXTURES),../shared/fixtures)
BENCH_FIXTURES ?= counter tree
RUNS           ?= 300
bench-verify: build
	@for f in $(BENCH_FIXTURES); do \
		flock /run/crest-fixtures.lock sh $(FIXTURES)/install.sh $$f >/dev/null || exit 1; \
		./crest bench -D $(FIXTURES)/criu-4.2/$$f/images --runs $(RUNS) --verify \
			--reset "flock /run/crest-fixtures.lock sh $(FIXTURES)/install.sh $$f" || exit 1; \
	done

# fuzz: run every fuzz target of the images package for FUZZTIME each.
FUZZTIME ?= 1m
fuzz:
	@for t in $$($(GO) test -list '^Fuzz' ./images | grep '^Fuzz'); do \
		echo "== $$t"; $(GO) test -run '^$$' -fuzz "^$$t$$" -fuzztime $(FUZZTIME) ./images || exit 1; \
	done

# demo: crest's main job on its built-in workload (test/demo): a tree with
# threads and a pipe is started, dumped, restored with --verify and traced
# (waterfall, OTLP JSON in $(OUT)/demo/trace.json; JAEGER=1 or
# OTEL_EXPORTER_OTLP_ENDPOINT also sends it to Jaeger), then stopped.
demo: build
	JAEGER=$(JAEGER) bash test/demo/demo.sh ./crest $(OUT)/demo

# jaeger: build the pinned Jaeger of tools/jaeger (prints its path).
jaeger:
	bash tools/jaeger/jaeger.sh build

clean:
	rm -rf crest $(OUT)
