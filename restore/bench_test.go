package restore

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/crest-restore/crest/images"
	"github.com/crest-restore/crest/test/cli"
	"github.com/crest-restore/crest/test/fixture"
	"github.com/crest-restore/crest/test/procscan"
)

// The restore benchmarks of issue 3: each fixture restored over and over,
// detached, then killed; what is timed is one restore, from opening the
// image directory until the tree runs on its own. Besides ns/op (the
// mean) they report the median and the 90th percentile, which say more
// about a latency than a mean does. Numbers, never assertions.
//
//	go test -p 1 -run '^$' -bench '^BenchmarkRestore' -benchtime 100x ./restore

var benchFixtures = []string{"counter", "tree", "threads", "dynamic"}

// BenchmarkRestore restores through the library, as `crest restore -d`
// does: images.Open, NewPlan, Start (to COMPLETE) and Detach.
func BenchmarkRestore(b *testing.B) {
	benchNeedRoot(b)
	for _, name := range benchFixtures {
		b.Run(name, func(b *testing.B) {
			fixture.Install(b, name)
			imgs := fixture.Images(b, name)
			var times []time.Duration
			for i := 0; i < b.N; i++ {
				start := time.Now()
				d, err := images.Open(imgs)
				if err != nil {
					b.Fatal(err)
				}
				p, err := NewPlan(d)
				if err != nil {
					b.Fatal(err)
				}
				r, err := Start(context.Background(), p, Options{})
				if err != nil {
					b.Fatal(err)
				}
				var hosts []int
				for _, task := range p.Tasks {
					hosts = append(hosts, r.HostPID(task.PID))
				}
				root := r.RootPID()
				r.Detach()
				times = append(times, time.Since(start))

				b.StopTimer()
				killTree(b, root)
				if left := procscan.WaitGone(10*time.Second, hosts...); len(left) > 0 {
					b.Fatalf("tasks %v still exist", left)
				}
				b.StartTimer()
			}
			reportLatency(b, times)
		})
	}
}

// BenchmarkRestoreCLI times `crest restore -D IMAGES -d --pidfile F` from
// the exec of the crest binary until it exited: what a user waits for.
func BenchmarkRestoreCLI(b *testing.B) {
	benchNeedRoot(b)
	bin := cli.Binary(b)
	cli.Subreaper(b) // the detached roots come to us, to be reaped
	for _, name := range benchFixtures {
		b.Run(name, func(b *testing.B) {
			fixture.Install(b, name)
			imgs := fixture.Images(b, name)
			pidfile := filepath.Join(b.TempDir(), "pid")
			var times []time.Duration
			for i := 0; i < b.N; i++ {
				res := cli.Run(b, bin, "restore", "-D", imgs, "-d", "--pidfile", pidfile)
				times = append(times, res.Wall)
				b.StopTimer()
				if res.Code != 0 {
					b.Fatalf("crest restore: exit %d: %s", res.Code, res.Stderr)
				}
				pb, err := os.ReadFile(pidfile)
				if err != nil {
					b.Fatal(err)
				}
				root, err := strconv.Atoi(strings.TrimSpace(string(pb)))
				if err != nil {
					b.Fatalf("pidfile %q", pb)
				}
				killTree(b, root)
				b.StartTimer()
			}
			reportLatency(b, times)
		})
	}
}

// reportLatency reports the median and the 90th percentile of times.
func reportLatency(b *testing.B, times []time.Duration) {
	b.Helper()
	if len(times) == 0 {
		return
	}
	slices.Sort(times)
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	n := len(times)
	median := times[n/2]
	if n%2 == 0 {
		median = (times[n/2-1] + times[n/2]) / 2
	}
	b.ReportMetric(ms(median), "ms/median")
	b.ReportMetric(ms(times[(n*9+9)/10-1]), "ms/p90")
	b.ReportMetric(ms(times[0]), "ms/min")
}

func benchNeedRoot(b *testing.B) {
	b.Helper()
	if os.Geteuid() != 0 {
		b.Skip("restoring a tree needs root (CAP_SYS_ADMIN for clone3 set_tid and new pid namespaces)")
	}
}
