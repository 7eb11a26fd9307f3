module github.com/crest-restore/crest

go 1.26.8

require (
	github.com/checkpoint-restore/go-criu/v8 v8.3.0
	github.com/spf13/pflag v1.0.9
	google.golang.org/protobuf v1.36.12
)
