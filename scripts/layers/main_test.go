package main

import (
	"strings"
	"testing"
)

func TestCheck(t *testing.T) {
	m := func(s string) string { return module + "/" + s }
	graph := func(edges map[string][]string) map[string]*pkg {
		pkgs := map[string]*pkg{}
		for from, tos := range edges {
			p := &pkg{ImportPath: m(from)}
			for _, to := range tos {
				p.Imports = append(p.Imports, m(to))
				if pkgs[m(to)] == nil {
					pkgs[m(to)] = &pkg{ImportPath: m(to)}
				}
			}
			pkgs[m(from)] = p
		}
		return pkgs
	}
	tests := []struct {
		name  string
		edges map[string][]string
		want  []string // substrings, one per reported line
	}{
		{"clean", map[string][]string{"fs/image": {"fs", "repo/extent"}, "cbt": {"repo", "nbd/client"}, "cmd/vmvault": {"repo/backend/local"}}, nil},
		{"fs reaches repo through a helper", map[string][]string{"fs/image": {"fs/helper"}, "fs/helper": {"repo"}},
			[]string{"fs/helper depends on repo (fs/helper → repo)", "fs/image depends on repo (fs/image → fs/helper → repo)"}},
		{"capture imports the server", map[string][]string{"cbt/vsphere": {"nbd"}}, []string{"cbt/vsphere depends on nbd"}},
		{"nbd imports a backend implementation", map[string][]string{"nbd": {"repo/backend/mem"}}, []string{"nbd imports repo/backend/mem"}},
		{"repo imports fs", map[string][]string{"repo": {"fs/image"}}, []string{"repo depends on fs/image"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := check(graph(tc.edges))
			if len(got) != len(tc.want) {
				t.Fatalf("got %d lines, want %d:\n%s", len(got), len(tc.want), strings.Join(got, "\n"))
			}
			for i, w := range tc.want {
				if !strings.Contains(got[i], w) {
					t.Errorf("line %d = %q, want it to contain %q", i, got[i], w)
				}
			}
		})
	}
}
