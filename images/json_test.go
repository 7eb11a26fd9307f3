package images

import (
	"encoding/base64"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	criu_core "github.com/checkpoint-restore/go-criu/v8/crit/images/criu-core"
	ghost_file "github.com/checkpoint-restore/go-criu/v8/crit/images/ghost-file"
	pipe_data "github.com/checkpoint-restore/go-criu/v8/crit/images/pipe-data"
	sk_inet "github.com/checkpoint-restore/go-criu/v8/crit/images/sk-inet"
	sk_unix "github.com/checkpoint-restore/go-criu/v8/crit/images/sk-unix"
	tcp_stream "github.com/checkpoint-restore/go-criu/v8/crit/images/tcp-stream"

	"github.com/crest-restore/crest/test/fixture"
)

// critJSON is the shape of crit's output.
type critJSON struct {
	Magic   string           `json:"magic"`
	Entries []map[string]any `json:"entries"`
}

// TestJSONFixtures renders every image file of every fixture, pretty and
// plain, and checks the result is JSON with the right magic and entries.
func TestJSONFixtures(t *testing.T) {
	for _, name := range fixture.Names(t) {
		for _, path := range fixtureImageFiles(t, name) {
			img, err := ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			for _, o := range []JSONOptions{{Pretty: true}, {}, {Pretty: true, NoPayload: true}} {
				out, err := img.JSON(o)
				if err != nil {
					t.Fatalf("%s/%s: %v", name, filepath.Base(path), err)
				}
				var c critJSON
				if err := json.Unmarshal(out, &c); err != nil {
					t.Fatalf("%s/%s %+v: not JSON: %v\n%s", name, filepath.Base(path), o, err, out)
				}
				if c.Magic != img.Kind.Name || len(c.Entries) != len(img.Entries) {
					t.Errorf("%s/%s: magic %s with %d entries, want %s with %d", name, filepath.Base(path), c.Magic, len(c.Entries), img.Kind.Name, len(img.Entries))
				}
				if !o.Pretty && strings.Contains(string(out), "\n") {
					t.Errorf("%s/%s: plain output spans lines", name, filepath.Base(path))
				}
			}
		}
	}
}

// TestJSONPipesDataAsCrit compares with the text crit show and crit decode
// print for the pipe fixture's pipes-data.img (taken from pycriu's
// output): base64 with encodebytes' trailing newline, four-space indent,
// Python's separators.
func TestJSONPipesDataAsCrit(t *testing.T) {
	img, err := ReadFile(fixture.Path(t, "pipe", "images", "pipes-data.img"))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		o    JSONOptions
		want string
	}{
		{JSONOptions{Pretty: true}, `{
    "magic": "PIPES_DATA",
    "entries": [
        {
            "pipe_id": 97264,
            "bytes": 16,
            "size": 65536,
            "extra": "bXNnIDE1Mwptc2cgMTU0Cg==\n"
        }
    ]
}`},
		{JSONOptions{}, `{"magic": "PIPES_DATA", "entries": [{"pipe_id": 97264, "bytes": 16, "size": 65536, "extra": "bXNnIDE1Mwptc2cgMTU0Cg==\n"}]}`},
		{JSONOptions{NoPayload: true}, `{"magic": "PIPES_DATA", "entries": [{"pipe_id": 97264, "bytes": 16, "size": 65536, "extra": "... <16B>"}]}`},
	} {
		out, err := img.JSON(tc.o)
		if err != nil {
			t.Fatal(err)
		}
		if string(out) != tc.want {
			t.Errorf("%+v:\n%s\nwant\n%s", tc.o, out, tc.want)
		}
	}
	var c critJSON
	if err := json.Unmarshal(img.mustJSON(t), &c); err != nil {
		t.Fatal(err)
	}
	data, err := base64.StdEncoding.DecodeString(c.Entries[0]["extra"].(string))
	if err != nil || string(data) != "msg 153\nmsg 154\n" {
		t.Errorf("extra decodes to %q (%v), want the 16 bytes in the pipe", data, err)
	}
}

func (img *Image) mustJSON(t *testing.T) []byte {
	t.Helper()
	out, err := img.JSON(JSONOptions{Pretty: true})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestJSONPrettyFields checks the (criu) options on real images: hex,
// inherited hex, flags, dicts and enums, against the values crit shows
// for the same files.
func TestJSONPrettyFields(t *testing.T) {
	load := func(fx, file string) critJSON {
		t.Helper()
		img, err := ReadFile(fixture.Path(t, fx, "images", file))
		if err != nil {
			t.Fatal(err)
		}
		var c critJSON
		if err := json.Unmarshal(img.mustJSON(t), &c); err != nil {
			t.Fatal(err)
		}
		return c
	}
	obj := func(v any) map[string]any { return v.(map[string]any) }
	list := func(v any) []any { return v.([]any) }

	mm := load("shmem", "mm-1.img").Entries[0]
	vmas := list(mm["vmas"])
	want := map[string]any{
		"start": "0x7f01a94d6000", "end": "0x7f01a95d6000", "pgoff": float64(0), "shmid": float64(2),
		"prot": "PROT_READ | PROT_WRITE", "flags": "MAP_SHARED",
		"status": "VMA_AREA_REGULAR | VMA_FILE_SHARED | VMA_AREA_MEMFD", "fd": float64(-1), "fdflags": "0x2",
	}
	v := obj(vmas[7])
	for k, w := range want {
		if v[k] != w {
			t.Errorf("mm-1.img vma 7 %s = %#v, want %#v", k, v[k], w)
		}
	}
	if mm["mm_start_code"] != "0x401000" || mm["exe_file_id"] != float64(1) {
		t.Errorf("mm-1.img: mm_start_code %v exe_file_id %v", mm["mm_start_code"], mm["exe_file_id"])
	}
	// Status 0 for the vsyscall's flags would be "", as crit's map_flags.
	if s := obj(vmas[len(vmas)-1])["status"]; s != "VMA_AREA_VSYSCALL | VMA_ANON_PRIVATE" {
		t.Errorf("vsyscall status %v", s)
	}

	pm := load("files", "pagemap-1.img").Entries
	if pm[0]["pages_id"] != float64(2) || pm[1]["vaddr"] != "0x401000" || pm[1]["flags"] != "PE_PRESENT" ||
		pm[1]["nr_pages"] != float64(1) || pm[3]["flags"] != "PE_LAZY | PE_PRESENT" {
		t.Errorf("pagemap-1.img: %v %v %v", pm[0], pm[1], pm[3])
	}

	core := load("signals", "core-1.img").Entries[0]
	if core["mtype"] != "X86_64" {
		t.Errorf("core mtype %v, want the enum's name X86_64", core["mtype"])
	}
	tc := obj(core["tc"])
	if tc["task_state"] != "Alive" || tc["comm"] != "prog" || tc["blk_sigset"] != "0x800" {
		t.Errorf("core tc: task_state %v comm %v blk_sigset %v", tc["task_state"], tc["comm"], tc["blk_sigset"])
	}
	// gpregs is marked hex: every register below it is hex, inherited
	// (its mode stays an enum name).
	regs := obj(obj(core["thread_info"])["gpregs"])
	for _, r := range []string{"ip", "sp", "ax", "cs"} {
		if s, ok := regs[r].(string); !ok || !strings.HasPrefix(s, "0x") {
			t.Errorf("gpregs.%s = %#v, want hex", r, regs[r])
		}
	}
	if regs["mode"] != "NATIVE" {
		t.Errorf("gpregs.mode = %#v, want NATIVE", regs["mode"])
	}

	files := load("files", "files.img").Entries
	var sawAppend, sawMemfd bool
	for _, f := range files {
		switch f["type"] {
		case "REG":
			if r := obj(f["reg"]); r["name"] == "/opt/crest-fixtures/files/out.log" {
				sawAppend = r["flags"] == "O_WRONLY | O_APPEND | O_LARGEFILE" && r["pos"] == float64(8527)
			}
		case "MEMFD":
			m := obj(f["memfd"])
			sawMemfd = m["flags"] == "O_RDWR | O_LARGEFILE" && m["pos"] == float64(8192)
		}
	}
	if !sawAppend || !sawMemfd {
		t.Errorf("files.img: out.log O_WRONLY|O_APPEND at 8527 %v, memfd O_RDWR at 8192 %v", sawAppend, sawMemfd)
	}
	memfd := load("files", "memfd.img").Entries[0]
	if memfd["name"] != "crest-memfd" || memfd["seals"] != "F_SEAL_SEAL" || memfd["size"] != float64(8192) {
		t.Errorf("memfd.img: %v", memfd)
	}
	pipes := load("pipe", "files.img").Entries
	for _, f := range pipes {
		if f["type"] == "PIPE" {
			if fl := obj(f["pipe"])["flags"]; fl != "0x1" && fl != "0x0" {
				t.Errorf("pipe flags %v, want hex", fl)
			}
		}
	}
}

// TestJSONOptionsOnMessages covers the options no fixture has: devices,
// IP addresses, socket dicts, unix names, payload splitting.
func TestJSONOptionsOnMessages(t *testing.T) {
	pretty := JSONOptions{Pretty: true}
	get := func(m proto.Message, o JSONOptions) map[string]any {
		t.Helper()
		var out map[string]any
		if err := json.Unmarshal(MessageJSON(m, o), &out); err != nil {
			t.Fatal(err)
		}
		return out
	}

	isk := &sk_inet.InetSkEntry{Family: proto.Uint32(2), Type: proto.Uint32(1), Proto: proto.Uint32(6), State: proto.Uint32(10),
		SrcAddr: []uint32{0x0100007f}, DstAddr: []uint32{0, 0, 0, 0x01000000}}
	got := get(isk, pretty)
	for k, w := range map[string]any{"family": "INET", "type": "STREAM", "proto": "TCP", "state": "LISTEN"} {
		if got[k] != w {
			t.Errorf("inet %s = %v, want %v", k, got[k], w)
		}
	}
	if a := got["src_addr"].([]any); len(a) != 1 || a[0] != "127.0.0.1" {
		t.Errorf("src_addr %v, want [127.0.0.1]", a)
	}
	if a := got["dst_addr"].([]any); len(a) != 1 || a[0] != "::1" {
		t.Errorf("dst_addr %v, want [::1]", a)
	}
	if plain := get(isk, JSONOptions{}); plain["family"] != float64(2) || plain["src_addr"].([]any)[0] != float64(0x0100007f) {
		t.Errorf("plain inet: %v", plain)
	}

	g := &ghost_file.GhostFileEntry{Uid: proto.Uint32(0), Gid: proto.Uint32(0), Mode: proto.Uint32(0o100644),
		Dev: proto.Uint32(8<<20 | 1), Rdev: proto.Uint32(0x0805)}
	if got := get(g, pretty); got["dev"] != "8:1" || got["rdev"] != "8:5" {
		t.Errorf("ghost dev %v rdev %v, want 8:1 and 8:5", got["dev"], got["rdev"])
	}

	usk := &sk_unix.UnixSkEntry{Name: []byte("\x00crest=sock")}
	if got := get(usk, pretty); got["name"] != "=00crest=3Dsock" {
		t.Errorf("unix name %q, want quoted-printable", got["name"])
	}

	tc := &criu_core.TaskCoreEntry{TaskState: proto.Uint32(6), ExitCode: proto.Uint32(3)}
	if got := get(tc, pretty); got["task_state"] != "Zombie" {
		t.Errorf("task_state 6 = %v, want Zombie", got["task_state"])
	}

	// tcp-stream: the payload is split into inq and outq.
	ts := &tcp_stream.TcpStreamEntry{InqLen: proto.Uint32(3), OutqLen: proto.Uint32(2)}
	img := &Image{Kind: KindTCPStream, Entries: []Entry{{Message: ts, Payload: []byte("abcde")}}}
	var c critJSON
	if err := json.Unmarshal(img.mustJSON(t), &c); err != nil {
		t.Fatal(err)
	}
	extra := c.Entries[0]["extra"].(map[string]any)
	if extra["inq"] != "YWJj\n" || extra["outq"] != "ZGU=\n" {
		t.Errorf("tcp extra %v", extra)
	}

	// An empty pipe still has an extra, empty as crit's.
	img = &Image{Kind: KindPipesData, Entries: []Entry{{Message: &pipe_data.PipeDataEntry{PipeId: proto.Uint32(1), Bytes: proto.Uint32(0)}}}}
	if out, _ := img.JSON(JSONOptions{}); string(out) != `{"magic": "PIPES_DATA", "entries": [{"pipe_id": 1, "bytes": 0, "extra": ""}]}` {
		t.Errorf("empty pipe: %s", out)
	}
}

func TestJSONHelpers(t *testing.T) {
	// The expected strings are what Python 3.11 prints for the same input
	// (quopri.encodestring, base64.encodebytes, json.dumps).
	for in, want := range map[string]string{
		"/tmp/sock":             "/tmp/sock",
		"\x00abstract":          "=00abstract",
		"a=b":                   "a=3Db",
		"tail ":                 "tail=20",
		"tab\t":                 "tab=09",
		".":                     "=2E",
		strings.Repeat("x", 80): strings.Repeat("x", 75) + "=\n" + "xxxxx",
		"caf\xc3\xa9":           "caf=C3=A9",
		"line\nnext":            "line\nnext",
		"sp \nx":                "sp=20\nx",
	} {
		if got := quotedPrintable([]byte(in)); got != want {
			t.Errorf("quotedPrintable(%q) = %q, want %q", in, got, want)
		}
	}

	b := make([]byte, 100)
	for i := range b {
		b[i] = byte(i)
	}
	wantB64 := "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8gISIjJCUmJygpKissLS4vMDEyMzQ1Njc4\nOTo7PD0+P0BBQkNERUZHSElKS0xNTk9QUVJTVFVWV1hZWltcXV5fYGFiYw==\n"
	if got := critBase64(b); got != wantB64 {
		t.Errorf("critBase64 = %q, want %q", got, wantB64)
	}
	if critBase64(nil) != "" {
		t.Errorf("critBase64(nil) = %q", critBase64(nil))
	}

	v := jsonObject{{"k", "a\u00e9\x01\x7f\U0001F600\"\\/\b\f"}, {"l", []any{}}, {"d", jsonObject{}},
		{"n", []any{int64(1), jsonObject{{"x", true}}}}}
	if got, want := string(encodeJSON(v, false)), `{"k": "a\u00e9\u0001\u007f\ud83d\ude00\"\\/\b\f", "l": [], "d": {}, "n": [1, {"x": true}]}`; got != want {
		t.Errorf("plain JSON\n%s\nwant\n%s", got, want)
	}
	want := "{\n    \"l\": [],\n    \"n\": [\n        1,\n        {\n            \"x\": null\n        }\n    ]\n}"
	if got := string(encodeJSON(jsonObject{{"l", []any{}}, {"n", []any{int64(1), jsonObject{{"x", nil}}}}}, true)); got != want {
		t.Errorf("pretty JSON\n%s\nwant\n%s", got, want)
	}

	for n, want := range map[int]string{0: "... <0B>", 16: "... <16B>", 1536: "... <1.5KB>", 1 << 20: "... <1MB>"} {
		if got := payloadSize(n); got != want {
			t.Errorf("payloadSize(%d) = %q, want %q", n, got, want)
		}
	}
}

// FuzzImageJSON feeds arbitrary bytes through the reader and renders
// whatever decodes: the JSON must always be valid and never panic.
func FuzzImageJSON(f *testing.F) {
	if root := fixture.Root(); root != "" {
		for _, p := range []string{"pipe/images/pipes-data.img", "signals/images/core-1.img", "shmem/images/mm-1.img",
			"files/images/files.img", "files/images/pagemap-1.img", "pipe/images/inventory.img"} {
			if b, err := os.ReadFile(filepath.Join(root, fixture.Set, p)); err == nil {
				f.Add(b)
			}
		}
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		img, err := ReadImage(strings.NewReader(string(b)), "fuzz.img", int64(len(b)))
		if err != nil {
			return
		}
		for _, o := range []JSONOptions{{}, {Pretty: true}} {
			out, err := img.JSON(o)
			if err != nil {
				t.Fatal(err)
			}
			if !json.Valid(out) {
				t.Fatalf("invalid JSON:\n%s", out)
			}
		}
	})
}
