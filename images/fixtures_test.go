package images

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/crest-restore/crest/test/fixture"
)

// isRawFile reports files of an image directory that carry no magic.
func isRawFile(name string) bool {
	return strings.HasPrefix(name, "pages-") || name == "dump.log"
}

// fixtureImageFiles returns the framed (not raw) image files of the
// fixture name, in name order.
func fixtureImageFiles(t testing.TB, name string) []string {
	t.Helper()
	dir := fixture.Images(t, name)
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		if !isRawFile(e.Name()) {
			out = append(out, filepath.Join(dir, e.Name()))
		}
	}
	return out
}
