// Command layers checks vmvault's package layering (scripts/test.sh runs
// it; README's "Layout" lists the same rules). The data paths are
//
//	source → cbt.Capture → repo writer → backend
//	backend → repo.Disk (io.ReaderAt) → nbd | fs → mount
//
// and an arrow may only point down them. It lists every package with its
// imports (`go list -deps -json ./...`, production code: tests may wire
// anything together) and prints each forbidden import with the chain of
// imports that leads to it. Exit status 1 when any rule is broken.
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"sort"
	"strings"
)

const module = "github.com/vmvault/vmvault"

// rule forbids packages matching from to depend on packages matching to,
// transitively (direct only when direct is set), unless allow matches the
// target.
type rule struct {
	why    string
	from   []string // patterns: "x" is x itself, "x/..." x and below
	to     []string
	allow  []string
	direct bool
}

var rules = []rule{
	{why: "fs reads io.ReaderAt disks and never knows the repository", from: []string{"fs/..."}, to: []string{"repo/..."}, allow: []string{"repo/extent"}},
	{why: "repo is below every consumer", from: []string{"repo/..."}, to: []string{"nbd/...", "fs/...", "cbt/...", "mount/...", "cmd/..."}},
	{why: "only repo, cmd (and scripts tools) choose backend implementations", from: []string{"..."}, to: backendImpls, direct: true},
	{why: "capture code reads NBD exports through nbd/client, never the server", from: []string{"cbt/..."}, to: []string{"nbd"}},
	{why: "the mount serves files, not NBD", from: []string{"mount/..."}, to: []string{"nbd/..."}},
	{why: "the NBD server and overlays do not capture", from: []string{"nbd/..."}, to: []string{"cbt/...", "mount/..."}},
	{why: "the wire protocol and the client are leaves", from: []string{"nbd/proto", "nbd/client"}, to: []string{"repo/...", "nbd", "nbd/overlay"}},
	{why: "library packages do not parse command lines", from: []string{"repo/...", "nbd/...", "fs/...", "cbt/...", "mount/..."}, to: []string{"github.com/spf13/cobra", "github.com/spf13/pflag", "cmd/..."}},
}

// backendImpls are the backend implementations (not the interface, the
// conformance suite, the wrappers or the registry).
var backendImpls = []string{"repo/backend/local", "repo/backend/mem", "repo/backend/s3"}

// importers of backend implementations, besides the implementations
// themselves.
var implImporters = []string{"repo/...", "cmd/...", "scripts/..."}

type pkg struct {
	ImportPath string
	Imports    []string
	Standard   bool
	Module     *struct{ Path string }
}

func main() {
	cmd := exec.Command("go", "list", "-deps", "-json", "./...")
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		fmt.Fprintln(os.Stderr, "layers: go list:", err)
		os.Exit(2)
	}
	pkgs, err := decode(out)
	if err != nil {
		fmt.Fprintln(os.Stderr, "layers:", err)
		os.Exit(2)
	}
	bad := check(pkgs)
	for _, b := range bad {
		fmt.Println(b)
	}
	if len(bad) > 0 {
		fmt.Printf("layers: %d forbidden imports (rules in scripts/layers/main.go and README's Layout)\n", len(bad))
		os.Exit(1)
	}
}

func decode(b []byte) (map[string]*pkg, error) {
	dec := json.NewDecoder(strings.NewReader(string(b)))
	pkgs := map[string]*pkg{}
	for {
		var p pkg
		if err := dec.Decode(&p); err == io.EOF {
			break
		} else if err != nil {
			return nil, fmt.Errorf("decode go list output: %w", err)
		}
		pkgs[p.ImportPath] = &p
	}
	return pkgs, nil
}

// short returns a module package's path relative to the module, or the
// full path of anything else.
func short(path string) string {
	if path == module {
		return "."
	}
	return strings.TrimPrefix(path, module+"/")
}

func match(patterns []string, path string) bool {
	s := short(path)
	for _, p := range patterns {
		switch {
		case p == "...":
			if strings.HasPrefix(path, module) {
				return true
			}
		case strings.HasSuffix(p, "/..."):
			base := strings.TrimSuffix(p, "/...")
			if s == base || strings.HasPrefix(s, base+"/") {
				return true
			}
		case s == p:
			return true
		}
	}
	return false
}

// check returns one line per (package, forbidden dependency) with the
// import chain, sorted.
func check(pkgs map[string]*pkg) []string {
	var out []string
	for _, r := range rules {
		for path := range pkgs {
			if !strings.HasPrefix(path, module) || !match(r.from, path) {
				continue
			}
			if r.direct {
				if match(backendImpls, path) || match(implImporters, path) {
					continue
				}
				for _, imp := range pkgs[path].Imports {
					if match(r.to, imp) {
						out = append(out, fmt.Sprintf("%s imports %s: %s", short(path), short(imp), r.why))
					}
				}
				continue
			}
			for _, chain := range forbidden(pkgs, path, r) {
				out = append(out, fmt.Sprintf("%s depends on %s (%s): %s", short(path), short(chain[len(chain)-1]), joinChain(chain), r.why))
			}
		}
	}
	sort.Strings(out)
	return out
}

// forbidden walks path's dependencies breadth first and returns the
// shortest import chain to each dependency the rule forbids.
func forbidden(pkgs map[string]*pkg, path string, r rule) [][]string {
	prev := map[string]string{path: ""}
	queue := []string{path}
	var found [][]string
	for len(queue) > 0 {
		cur := queue[0]
		queue = queue[1:]
		p := pkgs[cur]
		if p == nil {
			continue
		}
		for _, imp := range p.Imports {
			if _, seen := prev[imp]; seen {
				continue
			}
			prev[imp] = cur
			if match(r.to, imp) && !match(r.allow, imp) {
				var chain []string
				for n := imp; n != ""; n = prev[n] {
					chain = append([]string{n}, chain...)
				}
				found = append(found, chain)
				continue
			}
			queue = append(queue, imp)
		}
	}
	return found
}

func joinChain(chain []string) string {
	s := make([]string, len(chain))
	for i, c := range chain {
		s[i] = short(c)
	}
	return strings.Join(s, " → ")
}
