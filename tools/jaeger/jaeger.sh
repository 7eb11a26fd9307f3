#!/usr/bin/env bash
# jaeger.sh: the Jaeger that crest's tests and `make demo` send traces to.
#
#   jaeger.sh build          build the pinned Jaeger (go.mod here) if needed; print its path
#   jaeger.sh start          start it on loopback with in-memory storage, wait until it is ready,
#                            print OTEL_EXPORTER_OTLP_ENDPOINT=... and the query URL
#   jaeger.sh stop           stop the instance start started, and wait until it is gone
#   jaeger.sh status         say whether it runs
#
# Environment: CREST_JAEGER (the binary; default in the user's cache),
# CREST_JAEGER_RUN (pid and log directory, default /tmp/crest-jaeger),
# CREST_JAEGER_{OTLP_GRPC,OTLP_HTTP,QUERY,QUERY_GRPC,HEALTH}_PORT
# (defaults 4317 4318 16686 16685 13133).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
bin=${CREST_JAEGER:-${XDG_CACHE_HOME:-$HOME/.cache}/crest/jaeger-v1.76.0}
run=${CREST_JAEGER_RUN:-/tmp/crest-jaeger}
export CREST_JAEGER_OTLP_GRPC_PORT=${CREST_JAEGER_OTLP_GRPC_PORT:-4317}
export CREST_JAEGER_OTLP_HTTP_PORT=${CREST_JAEGER_OTLP_HTTP_PORT:-4318}
export CREST_JAEGER_QUERY_PORT=${CREST_JAEGER_QUERY_PORT:-16686}
export CREST_JAEGER_QUERY_GRPC_PORT=${CREST_JAEGER_QUERY_GRPC_PORT:-16685}
export CREST_JAEGER_HEALTH_PORT=${CREST_JAEGER_HEALTH_PORT:-13133}

build() {
	# The Go build cache makes a rebuild cheap; skip even that when the
	# binary is newer than the pins.
	if [ -x "$bin" ] && [ "$bin" -nt "$here/go.mod" ] && [ "$bin" -nt "$here/go.sum" ]; then
		echo "$bin"
		return
	fi
	mkdir -p "$(dirname "$bin")"
	(cd "$here" && go build -trimpath -o "$bin.tmp" github.com/jaegertracing/jaeger/cmd/jaeger) >&2
	mv "$bin.tmp" "$bin"
	echo "$bin"
}

ready() {
	if command -v curl >/dev/null; then
		curl -fsS -o /dev/null "http://127.0.0.1:$CREST_JAEGER_HEALTH_PORT/status" 2>/dev/null
	else
		(exec 3<>"/dev/tcp/127.0.0.1/$CREST_JAEGER_QUERY_PORT") 2>/dev/null
	fi
}

running() {
	[ -f "$run/pid" ] && kill -0 "$(cat "$run/pid")" 2>/dev/null
}

start() {
	if running; then
		echo "jaeger.sh: already running (pid $(cat "$run/pid"))" >&2
		exit 1
	fi
	build >/dev/null
	mkdir -p "$run"
	"$bin" --config "file:$here/config.yaml" >"$run/log" 2>&1 &
	echo $! >"$run/pid"
	for _ in $(seq 300); do
		if ready; then
			echo "OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:$CREST_JAEGER_OTLP_HTTP_PORT"
			echo "grpc://127.0.0.1:$CREST_JAEGER_OTLP_GRPC_PORT"
			echo "http://127.0.0.1:$CREST_JAEGER_QUERY_PORT"
			return
		fi
		if ! running; then
			echo "jaeger.sh: jaeger exited; its log:" >&2
			cat "$run/log" >&2
			rm -f "$run/pid"
			exit 1
		fi
		sleep 0.1
	done
	echo "jaeger.sh: not ready after 30 s; its log:" >&2
	cat "$run/log" >&2
	stop
	exit 1
}

stop() {
	running || { rm -f "$run/pid"; return 0; }
	pid=$(cat "$run/pid")
	kill "$pid"
	# Once it received traces, Jaeger's shutdown can hang on a gRPC client
	# of its own; its storage is memory, so do not wait long.
	for _ in $(seq 20); do
		kill -0 "$pid" 2>/dev/null || { rm -f "$run/pid"; return 0; }
		sleep 0.1
	done
	kill -9 "$pid" 2>/dev/null || true
	rm -f "$run/pid"
}

case "${1:-}" in
build) build ;;
start) start ;;
stop) stop ;;
status) if running; then echo "running (pid $(cat "$run/pid"))"; else echo "stopped"; exit 1; fi ;;
*)
	sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//' >&2
	exit 2
	;;
esac
