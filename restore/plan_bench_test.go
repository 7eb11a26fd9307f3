package restore

import (
	"testing"

	"github.com/crest-restore/crest/images"
	"github.com/crest-restore/crest/test/fixture"
)

// BenchmarkPlan measures planning (images.Open and NewPlan) of the
// counter and tree fixtures in a warm process. A crest command plans once,
// cold: its first decode of each protobuf message type builds that type's
// tables, which costs several times this (see the notes of issue 6).
func BenchmarkPlan(b *testing.B) {
	for _, name := range []string{"counter", "tree"} {
		b.Run(name, func(b *testing.B) {
			dir := fixture.Images(b, name)
			for b.Loop() {
				d, err := images.Open(dir)
				if err != nil {
					b.Fatal(err)
				}
				if _, err := NewPlan(d); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
