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
