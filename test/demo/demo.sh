#!/usr/bin/env bash
# demo.sh CREST OUT: crest's main job on its built-in workload.
#
# Starts a small tree with threads and a pipe (demo.c) as the init of a new
# pid namespace, dumps it with crest, restores it with --verify and spans
# (a waterfall here, an OTLP JSON file in OUT, and Jaeger when
# OTEL_EXPORTER_OTLP_ENDPOINT is set or JAEGER=1), checks that the restored
# tree runs on where it stopped, and stops everything it started.
set -euo pipefail

crest=$(realpath "$1")
out=$(realpath -m "$2")
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)

rm -rf "$out"
mkdir -p "$out/run" "$out/bin"
gcc -static -O2 -pthread -o "$out/bin/demo" "$here/demo.c"
gcc -static -O2 -o "$out/bin/launch" "$repo/test/workloads/src/launch.c"

root=""
jaeger_started=""
cleanup() {
	if [ -n "$root" ] && [ -e "/proc/$root" ]; then
		kill -9 "$root" 2>/dev/null || true
		for _ in $(seq 200); do [ -e "/proc/$root" ] || break; sleep 0.01; done
	fi
	if [ -n "$jaeger_started" ]; then
		bash "$repo/tools/jaeger/jaeger.sh" stop >/dev/null 2>&1 || true
	fi
}
trap cleanup EXIT

wait_gone() {
	for _ in $(seq 500); do [ -e "/proc/$1" ] || return 0; sleep 0.01; done
	echo "demo: pid $1 did not go away" >&2
	return 1
}

traces=(--trace - --trace "$out/trace.json")
if [ "${JAEGER:-}" = 1 ] && [ -z "${OTEL_EXPORTER_OTLP_ENDPOINT:-}" ]; then
	bash "$repo/tools/jaeger/jaeger.sh" start >/dev/null
	jaeger_started=1
	export OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318 # OTLP over HTTP, the spec's default protocol
fi
if [ -n "${OTEL_EXPORTER_OTLP_ENDPOINT:-}" ]; then
	traces+=(--trace otlp)
fi

echo "== starting the workload (a pid namespace init with a worker thread, a child and a pipe)"
# The launcher closes every fd above 2, so nothing of this shell leaks in.
root=$("$out/bin/launch" "$out/run" "$out/bin/demo")
sleep 1
echo "   running as host pid $root: $(wc -l <"$out/run/parent.log") ticks, $(wc -l <"$out/run/child.log") messages read"

echo "== crest dump -t $root -D $out/images --trace $out/dump-trace.json"
"$crest" dump -t "$root" -D "$out/images" --trace "$out/dump-trace.json"
wait_gone "$root"
root=""
at_dump_parent=$(tail -n 1 "$out/run/parent.log")
at_dump_child=$(tail -n 1 "$out/run/child.log")
echo "   dumped and killed; last lines: parent.log '$at_dump_parent', child.log '$at_dump_child'"
"$crest" show -D "$out/images" | sed -n '3,8p'

# --verify=strict: any finding of the kernel-side monitor fails the
# restore and rolls it back.
echo "== crest restore -D $out/images -d --verify=strict ${traces[*]}"
"$crest" restore -D "$out/images" -d --pidfile "$out/pid" --verify=strict "${traces[@]}"
root=$(cat "$out/pid")
sleep 1

echo "== after 1 s of running on (restored root: host pid $root)"
grep -A3 -F -x -- "$at_dump_parent" "$out/run/parent.log" | sed 's/^/   parent.log: /'
grep -A3 -F -x -- "$at_dump_child" "$out/run/child.log" | sed 's/^/   child.log:  /'
if grep -q CORRUPT "$out/run/parent.log" "$out/run/child.log"; then
	echo "demo: the restored workload reports CORRUPT" >&2
	exit 1
fi
for f in parent.log child.log; do
	last=$(tail -n 1 "$out/run/$f")
	case $f in parent.log) was=$at_dump_parent ;; *) was=$at_dump_child ;; esac
	if [ "$last" = "$was" ]; then
		echo "demo: $f did not grow after the restore" >&2
		exit 1
	fi
done
echo "   the restored tree runs on: no gap, no CORRUPT line"
echo "   OTLP JSON traces: $out/dump-trace.json (dump), $out/trace.json (restore)"
if [ -n "$jaeger_started" ] || [ -n "${OTEL_EXPORTER_OTLP_ENDPOINT:-}" ]; then
	id=$(grep -o '"traceId":"[0-9a-f]*"' "$out/trace.json" | sed -n 1p | cut -d'"' -f4)
	url=http://127.0.0.1:16686/api/v3/traces/$id
	echo "   Jaeger: $url"
	if [ -n "$jaeger_started" ]; then
		# Show that the trace arrived before the bundled Jaeger stops.
		for _ in $(seq 50); do
			if curl -fsS "$url" -o "$out/jaeger-trace.json" 2>/dev/null; then
				echo "   Jaeger holds the trace: $(grep -o '"spanId"' "$out/jaeger-trace.json" | wc -l) spans ($out/jaeger-trace.json)"
				break
			fi
			sleep 0.1
		done
	fi
fi
