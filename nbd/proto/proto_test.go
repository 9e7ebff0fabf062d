package proto

import (
	"bytes"
	"encoding/binary"
	"reflect"
	"strings"
	"testing"
)

// Every encoder's output decodes to what was encoded, with the size the
// protocol fixes for headers.
func TestRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		name   string
		enc    []byte
		size   int // 0: not a fixed-size header
		decode func([]byte) (any, error)
		want   any
	}{
		{"greeting", AppendGreeting(nil, FlagFixedNewstyle|FlagNoZeroes), GreetingSize,
			func(b []byte) (any, error) { return ParseGreeting(b) }, FlagFixedNewstyle | FlagNoZeroes},
		{"option header", OptionHeader{Option: OptGo, Length: 77}.Append(nil), OptionHeaderSize,
			func(b []byte) (any, error) { return ParseOptionHeader(b) }, OptionHeader{Option: OptGo, Length: 77}},
		{"option reply header", OptionReplyHeader{Option: OptInfo, Type: RepErrUnknown, Length: 5}.Append(nil), OptionReplyHeaderSize,
			func(b []byte) (any, error) { return ParseOptionReplyHeader(b) }, OptionReplyHeader{Option: OptInfo, Type: RepErrUnknown, Length: 5}},
		{"request", Request{Flags: CmdFlagFUA, Type: CmdWrite, Cookie: 1<<63 + 5, Offset: 1 << 40, Length: 4096}.Append(nil), RequestSize,
			func(b []byte) (any, error) { return ParseRequest(b) }, Request{Flags: CmdFlagFUA, Type: CmdWrite, Cookie: 1<<63 + 5, Offset: 1 << 40, Length: 4096}},
		{"simple reply", SimpleReply{Error: EIO, Cookie: 9}.Append(nil), SimpleReplySize,
			func(b []byte) (any, error) { return ParseSimpleReply(b) }, SimpleReply{Error: EIO, Cookie: 9}},
		{"structured reply", StructuredReply{Flags: ReplyFlagDone, Type: ReplyTypeOffsetHole, Cookie: 3, Length: 12}.Append(nil), StructuredReplySize,
			func(b []byte) (any, error) { return ParseStructuredReply(b) }, StructuredReply{Flags: ReplyFlagDone, Type: ReplyTypeOffsetHole, Cookie: 3, Length: 12}},
		{"info request", InfoRequest{Name: "web01/abc/disk0", Items: []uint16{InfoBlockSize, InfoName}}.Append(nil), 0,
			func(b []byte) (any, error) { return ParseInfoRequest(b) }, InfoRequest{Name: "web01/abc/disk0", Items: []uint16{InfoBlockSize, InfoName}}},
		{"meta request", MetaRequest{Name: "d", Queries: []string{MetaBaseAllocation, MetaQemuDirtyBitmap + "b0"}}.Append(nil), 0,
			func(b []byte) (any, error) { return ParseMetaRequest(b) }, MetaRequest{Name: "d", Queries: []string{MetaBaseAllocation, MetaQemuDirtyBitmap + "b0"}}},
		{"meta context", AppendMetaContext(nil, 7, MetaBaseAllocation), 0,
			func(b []byte) (any, error) {
				id, name, err := ParseMetaContext(b)
				return [2]any{id, name}, err
			}, [2]any{uint32(7), MetaBaseAllocation}},
		{"info export", AppendInfoExport(nil, 1<<33, FlagReadOnly|FlagHasFlags), 12,
			func(b []byte) (any, error) {
				size, flags, err := ParseInfoExport(b)
				return [2]any{size, flags}, err
			}, [2]any{uint64(1 << 33), FlagReadOnly | FlagHasFlags}},
		{"block sizes", BlockSizes{Min: 1, Preferred: 4096, Max: 32 << 20}.Append(nil), 14,
			func(b []byte) (any, error) { return ParseInfoBlockSize(b) }, BlockSizes{Min: 1, Preferred: 4096, Max: 32 << 20}},
		{"error", AppendError(nil, ENOSPC, "disk full"), 0,
			func(b []byte) (any, error) {
				code, msg, err := ParseError(b)
				return [2]any{code, msg}, err
			}, [2]any{ENOSPC, "disk full"}},
		{"block status", AppendBlockStatus(nil, 3, []Descriptor{{Length: 512, Flags: StateHole | StateZero}, {Length: 1 << 20}}), 0,
			func(b []byte) (any, error) {
				s, err := ParseBlockStatus(b)
				var ds []Descriptor
				for i := range s.Len() {
					ds = append(ds, s.Descriptor(i))
				}
				return [2]any{s.Context, ds}, err
			}, [2]any{uint32(3), []Descriptor{{Length: 512, Flags: StateHole | StateZero}, {Length: 1 << 20}}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.size != 0 && len(tc.enc) != tc.size {
				t.Errorf("encoded %d bytes, want %d", len(tc.enc), tc.size)
			}
			got, err := tc.decode(tc.enc)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("decoded %+v, want %+v", got, tc.want)
			}
		})
	}
}

// Encoders append: what the caller's slice held stays in front.
func TestAppendKeepsPrefix(t *testing.T) {
	b := Request{Type: CmdRead}.Append([]byte("xy"))
	if !bytes.HasPrefix(b, []byte("xy")) || len(b) != 2+RequestSize {
		t.Fatalf("%x", b)
	}
}

// Malformed input is an error, never a panic or a value read past the
// bytes given.
func TestRejects(t *testing.T) {
	be := binary.BigEndian
	longName := be.AppendUint32(nil, MaxString+1)
	longName = append(longName, strings.Repeat("a", MaxString+1)...)
	for _, tc := range []struct {
		name  string
		parse func() error
	}{
		{"greeting short", func() error { _, err := ParseGreeting(AppendGreeting(nil, 0)[:17]); return err }},
		{"greeting magic", func() error { _, err := ParseGreeting(append([]byte("NBDMAGICIHAVEOPX"), 0, 0)); return err }},
		{"option header magic", func() error {
			b := OptionHeader{Option: 1}.Append(nil)
			b[0] ^= 1
			_, err := ParseOptionHeader(b)
			return err
		}},
		{"option reply header short", func() error { _, err := ParseOptionReplyHeader(make([]byte, 19)); return err }},
		{"request magic", func() error { _, err := ParseRequest(make([]byte, RequestSize)); return err }},
		{"request long", func() error { _, err := ParseRequest(append(Request{}.Append(nil), 0)); return err }},
		{"simple reply magic", func() error {
			_, err := ParseSimpleReply(StructuredReply{}.Append(nil)[:SimpleReplySize])
			return err
		}},
		{"structured reply magic", func() error { _, err := ParseStructuredReply(make([]byte, StructuredReplySize)); return err }},
		{"info request trailing byte", func() error { _, err := ParseInfoRequest(append(InfoRequest{Name: "d"}.Append(nil), 0)); return err }},
		{"info request item count past the end", func() error {
			_, err := ParseInfoRequest(be.AppendUint16(be.AppendUint32(nil, 0), 3))
			return err
		}},
		{"info request name past the end", func() error { _, err := ParseInfoRequest(be.AppendUint32(nil, 9)); return err }},
		{"info request name too long", func() error { _, err := ParseInfoRequest(be.AppendUint16(longName, 0)); return err }},
		{"meta request query count past the end", func() error {
			_, err := ParseMetaRequest(be.AppendUint32(be.AppendUint32(nil, 0), 1<<30))
			return err
		}},
		{"meta request trailing byte", func() error {
			_, err := ParseMetaRequest(append(MetaRequest{Name: "d", Queries: []string{"q"}}.Append(nil), 0))
			return err
		}},
		{"meta request short query", func() error {
			b := MetaRequest{Name: "d", Queries: []string{"query"}}.Append(nil)
			_, err := ParseMetaRequest(b[:len(b)-1])
			return err
		}},
		{"meta context short", func() error { _, _, err := ParseMetaContext([]byte{0, 0, 1}); return err }},
		{"info type empty", func() error { _, err := InfoType([]byte{0}); return err }},
		{"info export short", func() error { _, _, err := ParseInfoExport(AppendInfoExport(nil, 1, 1)[:11]); return err }},
		{"block sizes short", func() error { _, err := ParseInfoBlockSize(BlockSizes{}.Append(nil)[:13]); return err }},
		{"error short", func() error { _, _, err := ParseError([]byte{0, 0, 0, 5, 0}); return err }},
		{"block status no id", func() error { _, err := ParseBlockStatus([]byte{0, 0, 1}); return err }},
		{"block status partial descriptor", func() error {
			_, err := ParseBlockStatus(AppendBlockStatus(nil, 1, []Descriptor{{Length: 1}})[:11])
			return err
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.parse(); err == nil {
				t.Error("accepted")
			}
		})
	}
}

// An error message is cut to MaxString on the wire; a message length
// running past the payload decodes as no message.
func TestErrorMessageBounds(t *testing.T) {
	b := AppendError(nil, EIO, strings.Repeat("x", MaxString+10))
	if _, msg, err := ParseError(b); err != nil || len(msg) != MaxString {
		t.Fatalf("message of %d bytes, %v", len(msg), err)
	}
	b = AppendError(nil, EIO, "abc")
	if code, msg, err := ParseError(b[:len(b)-1]); err != nil || code != EIO || msg != "" {
		t.Fatalf("truncated payload: %d %q %v", code, msg, err)
	}
}
