// Command crest restores Linux process trees from CRIU image directories and
// shows what happened: kernel-side verification and per-stage spans.
//
// Each verb lives in its own file (show.go, check.go ...) and registers
// itself with register; this file holds only the dispatch, help and the
// conventions every verb shares (logging, exit codes).
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"sort"
	"strings"
	"syscall"

	"github.com/spf13/pflag"
)

// version is set by the build (-ldflags "-X main.version=...").
var version = "dev"

// verb is one crest subcommand.
type verb struct {
	name  string
	usage string // one line: arguments after the verb
	short string // one line for the verb list
	long  string // paragraphs for `crest help VERB`
	// setup declares the verb's flags on fs and returns the function that
	// runs the verb once they are parsed (args: what is left after flags).
	setup func(fs *pflag.FlagSet) runFunc
}

type runFunc func(ctx context.Context, env *env, args []string) error

var verbs = map[string]*verb{}

func register(v *verb) { verbs[v.name] = v }

// env is what every verb gets: its output streams and logger.
type env struct {
	stdout io.Writer
	stderr io.Writer
	log    *slog.Logger
}

// usageError is a bad command line: crest prints the verb's usage and exits 2.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error { return &usageError{fmt.Sprintf(format, args...)} }

// exitError carries a specific exit status (e.g. crest check: a missing
// feature; crest restore: the restored root's status).
type exitError struct {
	code int
	err  error // may be nil: nothing more to print
}

func (e *exitError) Error() string {
	if e.err == nil {
		return fmt.Sprintf("exit status %d", e.code)
	}
	return e.err.Error()
}

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		printUsage(stderr)
		return 2
	}
	name := args[0]
	switch name {
	case "help", "-h", "--help":
		if len(args) > 1 {
			if v := verbs[args[1]]; v != nil {
				printVerbHelp(stdout, v)
				return 0
			}
			fmt.Fprintf(stderr, "crest: unknown command %q\n", args[1])
			return 2
		}
		printUsage(stdout)
		return 0
	case "version", "--version":
		fmt.Fprintf(stdout, "crest %s\n", version)
		return 0
	}
	v := verbs[name]
	if v == nil {
		fmt.Fprintf(stderr, "crest: unknown command %q (see 'crest help')\n", name)
		return 2
	}

	fs := pflag.NewFlagSet("crest "+name, pflag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.SortFlags = false
	var (
		logFile   string
		verbosity int
		help      bool
	)
	runVerb := v.setup(fs)
	fs.StringVarP(&logFile, "log-file", "o", "", "write the log to `FILE` (as CRIU's -o)")
	fs.CountVarP(&verbosity, "verbose", "v", "log more (repeat for debug)")
	fs.BoolVarP(&help, "help", "h", false, "show this help")
	if err := fs.Parse(args[1:]); err != nil {
		fmt.Fprintf(stderr, "crest %s: %v\n", name, err)
		fmt.Fprintf(stderr, "usage: crest %s %s (see 'crest help %s')\n", name, v.usage, name)
		return 2
	}
	if help {
		printVerbHelp(stdout, v)
		return 0
	}

	logger, closeLog, err := newLogger(logFile, verbosity, stderr)
	if err != nil {
		fmt.Fprintf(stderr, "crest %s: %v\n", name, err)
		return 1
	}
	defer closeLog()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	err = runVerb(ctx, &env{stdout: stdout, stderr: stderr, log: logger}, fs.Args())
	var ue *usageError
	var ee *exitError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &ue):
		fmt.Fprintf(stderr, "crest %s: %s\n", name, ue.msg)
		fmt.Fprintf(stderr, "usage: crest %s %s (see 'crest help %s')\n", name, v.usage, name)
		return 2
	case errors.As(err, &ee):
		if ee.err != nil {
			fmt.Fprintf(stderr, "crest %s: %v\n", name, ee.err)
		}
		return ee.code
	default:
		logger.Debug("failed", "err", err)
		fmt.Fprintf(stderr, "crest %s: %v\n", name, err)
		return 1
	}
}

// newLogger logs to stderr at warning level by default, info with -v and
// debug with -vv; -o sends the log to a file instead, at debug level with
// -v as CRIU's -o -v4 would.
func newLogger(file string, verbosity int, stderr io.Writer) (*slog.Logger, func(), error) {
	level := slog.LevelWarn
	switch {
	case verbosity >= 2:
		level = slog.LevelDebug
	case verbosity == 1:
		level = slog.LevelInfo
	}
	w, closeFn := stderr, func() {}
	if file != "" {
		f, err := os.OpenFile(file, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
		if err != nil {
			return nil, nil, fmt.Errorf("log file: %w", err)
		}
		w, closeFn = f, func() { f.Close() }
		if verbosity > 0 {
			level = slog.LevelDebug
		} else {
			level = slog.LevelInfo
		}
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: level})), closeFn, nil
}

func printUsage(w io.Writer) {
	fmt.Fprintf(w, "crest restores Linux process trees from CRIU image directories and shows what happened.\n\n")
	fmt.Fprintf(w, "usage: crest <command> [flags] [args]\n\ncommands:\n")
	names := make([]string, 0, len(verbs))
	for n := range verbs {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(w, "  %-10s %s\n", n, verbs[n].short)
	}
	fmt.Fprintf(w, "  %-10s %s\n", "help", "show help for crest or a command")
	fmt.Fprintf(w, "  %-10s %s\n", "version", "print crest's version")
	fmt.Fprintf(w, "\nRun 'crest help <command>' for a command's flags.\n")
}

func printVerbHelp(w io.Writer, v *verb) {
	fmt.Fprintf(w, "usage: crest %s %s\n\n%s\n", v.name, v.usage, v.short)
	if v.long != "" {
		fmt.Fprintf(w, "\n%s\n", strings.TrimSpace(v.long))
	}
	fs := pflag.NewFlagSet(v.name, pflag.ContinueOnError)
	fs.SortFlags = false
	v.setup(fs)
	fs.StringP("log-file", "o", "", "write the log to `FILE` (as CRIU's -o)")
	fs.CountP("verbose", "v", "log more (repeat for debug)")
	fs.BoolP("help", "h", false, "show this help")
	fmt.Fprintf(w, "\nflags:\n%s", fs.FlagUsages())
}
