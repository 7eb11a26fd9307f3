package images_test

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/crest-restore/crest/images"
	"github.com/crest-restore/crest/test/fixture"
)

// isRaw reports files of an image directory that carry no magic.
func isRaw(name string) bool {
	return strings.HasPrefix(name, "pages-") || name == "dump.log"
}

// TestFixturesRoundTrip decodes every image file of every CRIU 4.2 fixture
// and checks that encoding the result gives back the same bytes.
func TestFixturesRoundTrip(t *testing.T) {
	for _, name := range fixture.Names(t) {
		dir := fixture.Images(t, name)
		ents, err := os.ReadDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, e := range ents {
			if isRaw(e.Name()) {
				continue
			}
			path := filepath.Join(dir, e.Name())
			t.Run(name+"/"+e.Name(), func(t *testing.T) {
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
