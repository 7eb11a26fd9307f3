package bench

import (
	"cmp"
	"math/rand/v2"
	"slices"
	"time"
)

// Summary is a distribution of durations: its size, median, 10th and 90th
// percentiles, minimum and maximum (nearest rank).
type Summary struct {
	N      int           `json:"n"`
	Median time.Duration `json:"median_ns"`
	P10    time.Duration `json:"p10_ns"`
	P90    time.Duration `json:"p90_ns"`
	Min    time.Duration `json:"min_ns"`
	Max    time.Duration `json:"max_ns"`
}

// Summarize summarizes ds (the zero Summary when ds is empty).
func Summarize(ds []time.Duration) Summary {
	if len(ds) == 0 {
		return Summary{}
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	return Summary{N: len(s), Median: rank(s, 50), P10: rank(s, 10), P90: rank(s, 90), Min: s[0], Max: s[len(s)-1]}
}

// Median is the median of ds (the upper one of an even count), 0 for none.
func Median(ds []time.Duration) time.Duration { return median(ds) }

// median is the upper median of xs, the zero value for none.
func median[T cmp.Ordered](xs []T) T {
	if len(xs) == 0 {
		var zero T
		return zero
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[len(s)/2]
}

// rank is the nearest-rank percentile p of sorted s: the median is the
// upper one of an even count, as Median's.
func rank[T any](s []T, p int) T {
	if p == 50 {
		return s[len(s)/2]
	}
	i := (p*len(s)+99)/100 - 1
	return s[max(0, min(i, len(s)-1))]
}

// Interval is an estimate in percent with its bootstrap 90% interval.
type Interval struct {
	Estimate float64 `json:"estimate_pct"`
	Lo       float64 `json:"lo_pct"`
	Hi       float64 `json:"hi_pct"`
}

// bootstrapRounds is how many resamples an interval is drawn from.
const bootstrapRounds = 2000

// RatioInterval compares two independent samples: median(b)/median(a)-1
// in percent, with the 5th and 95th percentiles of that ratio over
// resamples of both.
func RatioInterval(rng *rand.Rand, a, b []time.Duration) Interval {
	ratio := func(a, b []time.Duration) float64 { return 100 * (float64(Median(b))/float64(Median(a)) - 1) }
	if len(a) == 0 || len(b) == 0 {
		return Interval{}
	}
	ratios := make([]float64, bootstrapRounds)
	ra, rb := make([]time.Duration, len(a)), make([]time.Duration, len(b))
	for i := range ratios {
		resample(rng, a, ra)
		resample(rng, b, rb)
		ratios[i] = ratio(ra, rb)
	}
	slices.Sort(ratios)
	return Interval{Estimate: ratio(a, b), Lo: rank(ratios, 5), Hi: rank(ratios, 95)}
}

// PairedInterval compares paired samples, a[i] and b[i] measured side by
// side (one round): the median of b[i]/a[i]-1 in percent, with the 5th
// and 95th percentiles of that median over resamples of the pairs. The
// pairing takes out what drifts between rounds (the machine's state).
func PairedInterval(rng *rand.Rand, a, b []time.Duration) Interval {
	n := min(len(a), len(b))
	if n == 0 {
		return Interval{}
	}
	ratios := make([]float64, n)
	for i := range n {
		ratios[i] = 100 * (float64(b[i])/float64(a[i]) - 1)
	}
	meds := make([]float64, bootstrapRounds)
	r := make([]float64, n)
	for i := range meds {
		resample(rng, ratios, r)
		meds[i] = median(r)
	}
	slices.Sort(meds)
	return Interval{Estimate: median(ratios), Lo: rank(meds, 5), Hi: rank(meds, 95)}
}

// resample fills out with values drawn from xs with replacement.
func resample[T any](rng *rand.Rand, xs, out []T) {
	for j := range out {
		out[j] = xs[rng.IntN(len(xs))]
	}
}
