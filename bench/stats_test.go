package bench

import (
	"context"
	"math/rand/v2"
	"strings"
	"testing"
	"time"
)

func ms(vs ...int) []time.Duration {
	ds := make([]time.Duration, len(vs))
	for i, v := range vs {
		ds[i] = time.Duration(v) * time.Millisecond
	}
	return ds
}

func TestSummarize(t *testing.T) {
	tests := []struct {
		name string
		in   []time.Duration
		want Summary
	}{
		{"empty", nil, Summary{}},
		{"one", ms(7), Summary{N: 1, Median: 7 * time.Millisecond, P10: 7 * time.Millisecond, P90: 7 * time.Millisecond,
			Min: 7 * time.Millisecond, Max: 7 * time.Millisecond}},
		// shuffled 1..10: nearest ranks 1 and 9, the upper median 6
		{"ten", ms(4, 9, 1, 10, 2, 8, 3, 7, 5, 6), Summary{N: 10, Median: 6 * time.Millisecond, P10: time.Millisecond,
			P90: 9 * time.Millisecond, Min: time.Millisecond, Max: 10 * time.Millisecond}},
		{"odd", ms(30, 10, 20), Summary{N: 3, Median: 20 * time.Millisecond, P10: 10 * time.Millisecond,
			P90: 30 * time.Millisecond, Min: 10 * time.Millisecond, Max: 30 * time.Millisecond}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := append([]time.Duration(nil), tt.in...)
			if got := Summarize(tt.in); got != tt.want {
				t.Errorf("Summarize = %+v, want %+v", got, tt.want)
			}
			if got := Median(tt.in); got != tt.want.Median {
				t.Errorf("Median = %v, want %v", got, tt.want.Median)
			}
			for i := range in {
				if in[i] != tt.in[i] {
					t.Fatalf("the input was reordered: %v", tt.in)
				}
			}
		})
	}
}

func TestIntervals(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	base := ms(10, 12, 11, 30, 10, 13, 12, 11)
	// every pair 10% slower: the paired median is exactly +10%, however
	// the rounds drift
	slower := make([]time.Duration, len(base))
	for i, d := range base {
		slower[i] = d + d/10
	}
	p := PairedInterval(rng, base, slower)
	if !near(p.Estimate, 10) || !near(p.Lo, 10) || !near(p.Hi, 10) {
		t.Errorf("paired +10%%: %+v", p)
	}
	r := RatioInterval(rng, base, base)
	if r.Estimate != 0 || r.Lo > 0 || r.Hi < 0 {
		t.Errorf("a sample against itself: %+v, want 0 inside the interval", r)
	}
	r = RatioInterval(rng, base, slower)
	if !near(r.Estimate, 10) || r.Lo > r.Estimate || r.Hi < r.Estimate {
		t.Errorf("unpaired +10%%: %+v", r)
	}
	// base's rounds add 1.0, 1.1, 1.1, 1.2, 1.2, 1.3, 3.0 and 1.0 ms: the
	// upper median of the eight is 1.2 ms
	if d := pairedDelta(base, slower); d != 1200*time.Microsecond {
		t.Errorf("paired +10%%: added %v, want 1.2ms", d)
	}
	if (PairedInterval(rng, nil, nil) != Interval{}) || (RatioInterval(rng, nil, base) != Interval{}) {
		t.Error("intervals of nothing are not zero")
	}
}

func near(a, b float64) bool { return a-b < 1e-9 && b-a < 1e-9 }

func TestFormat(t *testing.T) {
	for d, want := range map[time.Duration]string{
		12300 * time.Nanosecond: "12.3 µs",
		1234567:                 "1.235 ms",
		2500 * time.Millisecond: "2.50 s",
		999 * time.Microsecond:  "999.0 µs",
		time.Millisecond:        "1.000 ms",
	} {
		if got := Format(d); got != want {
			t.Errorf("Format(%d) = %q, want %q", d, got, want)
		}
	}
}

func TestRunRefuses(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
		want string
	}{
		{"no runs", Config{Dir: "x", Modes: []Mode{Plain}}, "need at least one"},
		{"negative warm-up", Config{Dir: "x", Runs: 1, Warmup: -1, Modes: []Mode{Plain}}, "no negative warm-up"},
		{"no modes", Config{Dir: "x", Runs: 1}, "no modes"},
		{"twice the same mode", Config{Dir: "x", Runs: 1, Modes: []Mode{Plain, Plain}}, `mode "plain"`},
		{"no such directory", Config{Dir: "/nonexistent/images", Runs: 1, Modes: []Mode{Plain}}, "/nonexistent/images"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Run(context.Background(), tt.cfg)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Run: %v, want an error with %q", err, tt.want)
			}
		})
	}
}
