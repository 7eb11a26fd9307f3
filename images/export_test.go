package images

// For the tests of package images_test.
var (
	IsRawFile         = isRawFile
	FixtureImageFiles = fixtureImageFiles
)
