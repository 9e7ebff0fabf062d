package bufpool

import (
	"sync"
	"testing"
)

func TestGetPut(t *testing.T) {
	tests := []struct {
		name    string
		put     int // capacity of a buffer put first (0: none)
		get     int
		reused  bool
		wantCap int
	}{
		{"empty pool allocates the class size plus slack", 0, 1000, false, 1024 + Slack},
		{"exact power of two", 0, 4096, false, 4096 + Slack},
		{"same class is reused", 1024 + Slack, 700, true, 1024 + Slack},
		{"a bigger odd capacity serves its floor class", 1500, 1024, true, 1500},
		{"too small for the request", 1500, 1025, false, 2048 + Slack},
		{"a power of two without slack does not serve its class", 1024, 1000, false, 1024 + Slack},
		{"a power of two without slack serves the class below", 1024, 512, true, 1024},
		{"one byte", 0, 1, false, 1 + Slack},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := New(1 << 20)
			var put []byte
			if tt.put > 0 {
				put = make([]byte, 0, tt.put)
				p.Put(put)
			}
			b := p.Get(tt.get)
			if len(b) != tt.get || cap(b) != tt.wantCap || cap(b) < tt.get+Slack {
				t.Fatalf("Get(%d): len %d cap %d, want len %d cap %d", tt.get, len(b), cap(b), tt.get, tt.wantCap)
			}
			if reused := put != nil && &b[:1][0] == &put[:1][0]; reused != tt.reused {
				t.Fatalf("reused = %v, want %v", reused, tt.reused)
			}
		})
	}
	if b := New(1).Get(0); b != nil {
		t.Fatalf("Get(0) = %v", b)
	}
}

func TestLimit(t *testing.T) {
	p := New(4096)
	for range 10 {
		p.Put(make([]byte, 1024+Slack))
	}
	if n := len(p.class[10].bufs); n != 4 {
		t.Fatalf("class 1 KiB holds %d buffers under a 4 KiB limit, want 4", n)
	}
	p.Put(make([]byte, 1<<20+Slack)) // larger than the limit: never kept
	if n := len(p.class[20].bufs); n != 0 {
		t.Fatalf("class 1 MiB holds %d buffers under a 4 KiB limit, want 0", n)
	}
}

func TestConcurrent(t *testing.T) {
	p := New(1 << 20)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 1000 {
				n := 1 + (g*7919+i*104729)%(64<<10)
				b := p.Get(n)
				for j := range b {
					b[j] = byte(g)
				}
				for j := range b {
					if b[j] != byte(g) {
						t.Errorf("buffer shared between goroutines")
						return
					}
				}
				p.Put(b)
			}
		}()
	}
	wg.Wait()
}
