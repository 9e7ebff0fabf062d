package repo

import (
	"crypto/rand"
	"testing"

	"github.com/vmvault/vmvault/repo/format"
)

// TestBloom: every added id is found, and the false-positive rate at the
// sized load stays near the 1% gc's report and memory figures assume.
func TestBloom(t *testing.T) {
	const n = 200000
	b := newBloom(n)
	ids := make([]format.ID, n)
	for i := range ids {
		rand.Read(ids[i][:])
		b.add(ids[i])
	}
	for _, id := range ids {
		if !b.has(id) {
			t.Fatalf("added id %s not found", id.Short())
		}
	}
	fp := 0
	const probes = 200000
	for range probes {
		var id format.ID
		rand.Read(id[:])
		if b.has(id) {
			fp++
		}
	}
	if rate := float64(fp) / probes; rate > 0.02 {
		t.Fatalf("false-positive rate %.3f at the sized load, want about 0.01", rate)
	} else {
		t.Logf("false-positive rate %.4f, %.1f bits per id", rate, float64(b.bytes()*8)/n)
	}
}
