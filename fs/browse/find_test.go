package browse

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/vmvault/vmvault/fs"
)

func TestQueryMatch(t *testing.T) {
	t0 := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	file := fs.Stat{Type: fs.TypeRegular, Mtime: t0.Add(time.Hour)}
	old := fs.Stat{Type: fs.TypeRegular, Mtime: t0.Add(-time.Hour)}
	dir := fs.Stat{Type: fs.TypeDir, Mtime: t0.Add(time.Hour)}
	cases := []struct {
		q    Query
		name string
		st   fs.Stat
		want bool
	}{
		{Query{}, "anything", file, true},
		{Query{Name: "authorized_keys"}, "authorized_keys", file, true},
		{Query{Name: "authorized_keys"}, "authorized_keys2", file, false},
		{Query{Name: "*.php"}, "index.php", file, true},
		{Query{Name: "*.php"}, "INDEX.PHP", file, false},
		{Query{Name: "f?le[0-9]"}, "file7", file, true},
		{Query{IName: "*.exe"}, "SETUP.EXE", file, true},
		{Query{IName: "*.EXE"}, "setup.exe", file, true},
		{Query{IName: "*.exe"}, "setup.dll", file, false},
		{Query{Name: "*.exe", IName: "setup*"}, "setup.exe", file, true},
		{Query{Name: "*.exe", IName: "setup*"}, "other.exe", file, false},
		{Query{Newer: t0}, "f", file, true},
		{Query{Newer: t0}, "f", old, false},
		{Query{Newer: t0}, "f", fs.Stat{Type: fs.TypeRegular, Mtime: t0}, false}, // after, not at
		{Query{Newer: t0}, "f", fs.Stat{Type: fs.TypeRegular}, false},            // no mtime
		{Query{Type: fs.TypeDir}, "d", dir, true},
		{Query{Type: fs.TypeDir}, "f", file, false},
		{Query{Type: fs.TypeRegular, Newer: t0, Name: "f"}, "f", file, true},
		{Query{Type: fs.TypeRegular, Newer: t0, Name: "f"}, "f", dir, false},
		// a name from an image may hold '/': the glob sees it whole
		{Query{Name: "a*"}, "a/b", file, false},
		{Query{Name: "a/*"}, "a/b", file, true},
	}
	for _, c := range cases {
		if got := c.q.Match(c.name, c.st); got != c.want {
			t.Errorf("%+v.Match(%q, %s) = %v, want %v", c.q, c.name, c.st.Type, got, c.want)
		}
	}
}

func TestQueryCheck(t *testing.T) {
	cases := []struct {
		q   Query
		err string
	}{
		{Query{}, ""},
		{Query{Name: "*.[ch]", IName: "READ?E"}, ""},
		{Query{Name: "[a-"}, `bad glob "[a-"`},
		{Query{IName: `x\`}, `bad glob "x\\"`},
	}
	for _, c := range cases {
		err := c.q.Check()
		if (err == nil) != (c.err == "") || err != nil && !strings.Contains(err.Error(), c.err) {
			t.Errorf("%+v.Check() = %v, want %q", c.q, err, c.err)
		}
	}
}

func TestParseType(t *testing.T) {
	want := map[string]fs.Type{"f": fs.TypeRegular, "d": fs.TypeDir, "l": fs.TypeSymlink, "p": fs.TypeFIFO,
		"c": fs.TypeCharDev, "b": fs.TypeBlockDev, "s": fs.TypeSocket}
	for letter, typ := range want {
		if got, ok := ParseType(letter); !ok || got != typ {
			t.Errorf("ParseType(%q) = %s, %v; want %s", letter, got, ok, typ)
		}
	}
	for _, bad := range []string{"", "x", "F", "ff"} {
		if _, ok := ParseType(bad); ok {
			t.Errorf("ParseType(%q) accepted", bad)
		}
	}
}

func TestFind(t *testing.T) {
	m := hostileTree()
	ctx := context.Background()
	var got []string
	err := Find(ctx, m, m.Root(), "/", false, Query{IName: "*.TXT", Type: fs.TypeRegular}, func(p, name string, st fs.Stat) error {
		got = append(got, p)
		return nil
	})
	if s := strings.Join(got, " "); s != "/a/x.txt /b.txt" {
		t.Errorf("found %s", s)
	}
	if err == nil {
		t.Error("the walk's errors (cycle, dangling entry) are not returned")
	}
}
