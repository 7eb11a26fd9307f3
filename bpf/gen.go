package bpf

// The monitor's programs, compiled by clang and wrapped by bpf2go. The
// output (monitor_x86_bpfel.go and .o) is committed, so that building crest
// needs no clang; re-run `go generate ./bpf` after changing c/.
//go:generate go run github.com/cilium/ebpf/cmd/bpf2go@v0.22.0 -cc clang-14 -target amd64 -no-global-types -type crest_hdr -type crest_ev_futex -type crest_ev_clone -type crest_ev_clone3 -type crest_ev_setns -type crest_ev_sys_exit -type crest_ev_fork -type crest_ev_exit -type crest_ev_setns_exit -type crest_ns -type crest_config monitor c/monitor.bpf.c -- -I/usr/include/x86_64-linux-gnu -Wall -Werror
