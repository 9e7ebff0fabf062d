package extent

import (
	"reflect"
	"testing"
)

func TestNormalize(t *testing.T) {
	tests := []struct {
		name string
		in   []Range
		want []Range
	}{
		{"empty", nil, []Range{}},
		{"drops empty and negative", []Range{{0, 0}, {-5, 10}, {4, -1}}, []Range{}},
		{"sorts", []Range{{20, 5}, {0, 5}}, []Range{{0, 5}, {20, 5}}},
		{"merges overlap", []Range{{0, 10}, {5, 10}}, []Range{{0, 15}}},
		{"merges adjacent", []Range{{0, 10}, {10, 10}}, []Range{{0, 20}}},
		{"contained", []Range{{0, 100}, {10, 5}}, []Range{{0, 100}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := Normalize(tc.in); !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("Normalize(%v) = %v, want %v", tc.in, got, tc.want)
			}
		})
	}
}

func TestIntersect(t *testing.T) {
	tests := []struct {
		a, b, want []Range
	}{
		{[]Range{{0, 10}}, []Range{{5, 10}}, []Range{{5, 5}}},
		{[]Range{{0, 10}, {20, 10}}, []Range{{5, 20}}, []Range{{5, 5}, {20, 5}}},
		{[]Range{{0, 10}}, []Range{{10, 10}}, nil},
		{[]Range{{0, 100}}, []Range{{1, 1}, {50, 2}}, []Range{{1, 1}, {50, 2}}},
	}
	for _, tc := range tests {
		if got := Intersect(tc.a, tc.b); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("Intersect(%v, %v) = %v, want %v", tc.a, tc.b, got, tc.want)
		}
	}
}

func TestCheck(t *testing.T) {
	if err := Check([]Range{{0, 10}, {90, 10}}, 100); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []Range{{-1, 1}, {95, 10}, {0, -1}, {1 << 62, 1 << 62}} {
		if err := Check([]Range{bad}, 100); err == nil {
			t.Errorf("Check(%v) accepted a range outside the disk", bad)
		}
	}
	if Sum([]Range{{0, 3}, {10, 4}}) != 7 {
		t.Fatal("Sum")
	}
}

func TestSubtract(t *testing.T) {
	tests := []struct {
		name       string
		a, b, want []Range
	}{
		{"nothing to take", []Range{{0, 10}}, nil, []Range{{0, 10}}},
		{"all taken", []Range{{0, 10}}, []Range{{0, 10}}, nil},
		{"middle", []Range{{0, 10}}, []Range{{3, 2}}, []Range{{0, 3}, {5, 5}}},
		{"both ends", []Range{{10, 10}}, []Range{{5, 7}, {18, 10}}, []Range{{12, 6}}},
		{"one b over two a", []Range{{0, 10}, {20, 10}}, []Range{{5, 20}}, []Range{{0, 5}, {25, 5}}},
		{"many b in one a", []Range{{0, 100}}, []Range{{10, 10}, {30, 10}, {90, 20}}, []Range{{0, 10}, {20, 10}, {40, 50}}},
		{"b before and after", []Range{{50, 10}}, []Range{{0, 10}, {70, 10}}, []Range{{50, 10}}},
		{"adjacent b", []Range{{0, 10}}, []Range{{10, 5}}, []Range{{0, 10}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := Subtract(tc.a, tc.b); !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("Subtract(%v, %v) = %v, want %v", tc.a, tc.b, got, tc.want)
			}
		})
	}
}

// TestBuilder: ranges added in order come back merged; past Max the
// smallest gaps are closed, so the result still covers everything added
// and stays within Max ranges.
func TestBuilder(t *testing.T) {
	var b Builder
	b.Add(0, 10)
	b.Add(10, 5)
	b.Add(20, 5)
	b.Add(22, 10)
	if got, want := b.Ranges(), []Range{{0, 15}, {20, 12}}; !reflect.DeepEqual(got, want) {
		t.Errorf("Ranges = %v, want %v", got, want)
	}
	capped := Builder{Max: 100}
	var added []Range
	for i := int64(0); i < 10000; i++ { // alternating 512-byte blocks
		capped.Add(i*1024, 512)
		added = append(added, Range{Offset: i * 1024, Length: 512})
	}
	got := capped.Ranges()
	if len(got) > 100 {
		t.Errorf("%d ranges, want at most 100", len(got))
	}
	if rest := Subtract(added, got); len(rest) != 0 {
		t.Errorf("ranges added but not covered: %v", rest[:min(len(rest), 5)])
	}
	if len(got) == 0 || got[0].Offset != 0 || got[len(got)-1].End() != added[len(added)-1].End() {
		t.Errorf("ranges %v reach beyond what was added", got)
	}
}

func TestBuilderAddBits(t *testing.T) {
	tests := []struct {
		name   string
		bitmap []byte
		n      int64
		want   []Range
	}{
		{"whole bytes", []byte{0xff, 0xff, 0x00, 0xff}, 32, []Range{{1000, 16 * 10}, {1000 + 24*10, 8 * 10}}},
		{"bits", []byte{0b0000_0110, 0b1000_0000}, 16, []Range{{1010, 20}, {1150, 10}}},
		{"run across bytes", []byte{0b1100_0000, 0xff, 0b0000_0001}, 24, []Range{{1060, 110}}},
		{"n cuts the last byte", []byte{0xff, 0xff}, 12, []Range{{1000, 120}}},
		{"n past the bitmap", []byte{0x01}, 64, []Range{{1000, 10}}},
		{"empty", []byte{0, 0}, 16, []Range{}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var b Builder
			b.AddBits(tc.bitmap, tc.n, 1000, 10)
			if got := b.Ranges(); !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("AddBits = %v, want %v", got, tc.want)
			}
		})
	}
}
