package images_test

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/crest-restore/crest/images"
	"github.com/crest-restore/crest/test/fixture"
)

// TestFixturesRoundTrip decodes every image file of every CRIU 4.2 fixture
// and checks that encoding the result gives back the same bytes.
func TestFixturesRoundTrip(t *testing.T) {
	for _, name := range fixture.Names(t) {
		n := 0
		for _, path := range images.FixtureImageFiles(t, name) {
			t.Run(name+"/"+filepath.Base(path), func(t *testing.T) {
				orig, err := os.ReadFile(path)
				if err != nil {
					t.Fatal(err)
				}
				img, err := images.ReadFile(path)
				if err != nil {
					t.Fatal(err)
				}
				var out bytes.Buffer
				if _, err := img.WriteTo(&out); err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(out.Bytes(), orig) {
					i := 0
					for i < len(orig) && i < out.Len() && orig[i] == out.Bytes()[i] {
						i++
					}
					t.Fatalf("re-encoded %s differs from the original at byte %d (%d vs %d bytes)", img.Kind.Name, i, out.Len(), len(orig))
				}
			})
			n++
		}
		if n < 10 {
			t.Errorf("%s: only %d image files decoded", name, n)
		}
	}
}
