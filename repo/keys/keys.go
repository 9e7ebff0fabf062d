// Package keys holds an encrypted repository's key material and the
// operations on it: password-wrapped key slots, keyed chunk ids, sealing
// of metadata objects, and per-session data keys sealed to the
// repository's public key — which is what lets a capture host write
// chunks it cannot read back.
//
// Key material (a Set):
//   - ID key: chunk ids are BLAKE3 keyed with it, so object names reveal
//     nothing about content; capture hosts hold it (they need ids for
//     deduplication).
//   - Metadata key: AES-256-GCM over manifests, disk indexes, pack
//     indexes, pack trailers, locks and repository state, and (through a
//     derived key) the names of manifests and disk indexes. Capture hosts
//     hold it (they read manifests and indexes to choose a base and reuse
//     ids, and write new ones).
//   - Data key pair (X25519): every writing session makes a random data
//     key, seals it to the public half and stores it (a "dk-" key object);
//     chunk payloads are AES-256-GCM under the session's data key. Only
//     the private half opens data keys: full keys hold it, capture keys do
//     not.
//
// A key slot ("slot-" key object) holds a Set wrapped with a key derived
// from one password (argon2id, parameters calibrated at creation and
// stored in the slot), so passwords are added and removed without
// touching data.
//
// Invariants: secrets never leave this package in the clear except
// through a Set held in memory; every sealed object authenticates its own
// name and type (swapping two valid objects fails to open); nonces are
// random 96-bit values under keys that seal at most millions of messages
// (one data key per writing session).
package keys

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"runtime"
	"sync"
	"time"

	"github.com/zeebo/blake3"
	"golang.org/x/crypto/argon2"
	"golang.org/x/crypto/curve25519"
	"golang.org/x/crypto/hkdf"

	"github.com/vmvault/vmvault/repo/format"
)

// Kinds of keys.
const (
	KindFull    = "full"    // reads and writes everything
	KindCapture = "capture" // writes restore points, cannot read chunk contents
)

// Errors callers test with errors.Is.
var (
	ErrWrongPassword = errors.New("wrong password: no key slot opens with it")
	ErrCaptureKey    = errors.New("this is a capture key: it writes restore points but cannot read their contents (use a full key)")
	ErrTampered      = errors.New("authentication failed: the object was changed or swapped")
)

// Set is the key material one key slot unlocks.
type Set struct {
	Kind     string
	IDKey    [32]byte
	MetaKey  [32]byte
	DataPub  [32]byte
	DataPriv [32]byte // zero for capture keys

	meta     cipher.AEAD
	nameKey  [32]byte
	mu       sync.RWMutex
	dataKeys map[[16]byte]cipher.AEAD // opened data keys, by id
}

// NewSet makes fresh key material for a new repository.
func NewSet() (*Set, error) {
	s := &Set{Kind: KindFull}
	for _, k := range [][]byte{s.IDKey[:], s.MetaKey[:], s.DataPriv[:]} {
		if _, err := rand.Read(k); err != nil {
			return nil, err
		}
	}
	pub, err := curve25519.X25519(s.DataPriv[:], curve25519.Basepoint)
	if err != nil {
		return nil, err
	}
	copy(s.DataPub[:], pub)
	return s, s.init()
}

// init derives the working keys.
func (s *Set) init() error {
	m, err := newGCM(s.MetaKey[:])
	if err != nil {
		return err
	}
	s.meta = m
	r := hkdf.New(sha256.New, s.MetaKey[:], nil, []byte("vmvault object names v1"))
	if _, err := io.ReadFull(r, s.nameKey[:]); err != nil {
		return err
	}
	s.dataKeys = map[[16]byte]cipher.AEAD{}
	return nil
}

// CaptureOnly returns the capture key material of s (no private data key).
func (s *Set) CaptureOnly() *Set {
	c := &Set{Kind: KindCapture, IDKey: s.IDKey, MetaKey: s.MetaKey, DataPub: s.DataPub}
	_ = c.init()
	return c
}

// CanRead reports whether chunk contents can be decrypted.
func (s *Set) CanRead() bool { return s.Kind == KindFull }

func newGCM(key []byte) (cipher.AEAD, error) {
	b, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(b)
}

// ChunkID is the keyed id of a chunk's content.
func (s *Set) ChunkID(data []byte) format.ID {
	h, _ := blake3.NewKeyed(s.IDKey[:])
	_, _ = h.Write(data)
	var id format.ID
	h.Sum(id[:0])
	return id
}

// NameID is the keyed name of a metadata object (manifest, disk index)
// with content data.
func (s *Set) NameID(data []byte) format.ID {
	h, _ := blake3.NewKeyed(s.nameKey[:])
	_, _ = h.Write(data)
	var id format.ID
	h.Sum(id[:0])
	return id
}

// Sealed metadata object: "VVEN", version, 3 reserved, 12-byte nonce,
// AES-256-GCM ciphertext and tag; the additional data is the object's
// type and name, so a valid object moved to another name does not open.
const (
	sealMagic   = "VVEN"
	sealVersion = 1
	sealHeader  = 8 + 12
)

// Seal encrypts a metadata object stored under (kind, name).
func (s *Set) Seal(kind, name string, plain []byte) []byte {
	out := make([]byte, sealHeader, sealHeader+len(plain)+16)
	copy(out, sealMagic)
	out[4] = sealVersion
	_, _ = rand.Read(out[8:sealHeader])
	return s.meta.Seal(out, out[8:sealHeader], plain, ad(kind, name))
}

// Open decrypts a metadata object Seal made for (kind, name).
func (s *Set) Open(kind, name string, sealed []byte) ([]byte, error) {
	if len(sealed) < sealHeader+16 || string(sealed[:4]) != sealMagic {
		return nil, fmt.Errorf("%s %s: not a sealed object: %w", kind, name, format.ErrCorrupt)
	}
	if sealed[4] != sealVersion {
		return nil, fmt.Errorf("%s %s: sealed object version %d: %w", kind, name, sealed[4], format.ErrUnsupportedVersion)
	}
	plain, err := s.meta.Open(nil, sealed[8:sealHeader], sealed[sealHeader:], ad(kind, name))
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", kind, name, ErrTampered)
	}
	return plain, nil
}

func ad(kind, name string) []byte { return []byte(kind + "/" + name) }

// SameMaterial reports whether s and o name chunks and objects alike and
// seal data to the same public key: then one repository's stored chunk
// frames, data keys and object names are valid in the other.
func (s *Set) SameMaterial(o *Set) bool {
	eq := func(a, b [32]byte) bool { return subtle.ConstantTimeCompare(a[:], b[:]) == 1 }
	return s != nil && o != nil && eq(s.IDKey, o.IDKey) && eq(s.MetaKey, o.MetaKey) && eq(s.DataPub, o.DataPub)
}

// DataKey is one writing session's key for chunk payloads.
type DataKey struct {
	ID   [16]byte
	aead cipher.AEAD
}

// NewDataKey makes a data key and returns it with its sealed form, to be
// stored before any chunk sealed with it is referenced.
func (s *Set) NewDataKey() (*DataKey, []byte, error) {
	var raw [32]byte
	dk := &DataKey{}
	if _, err := rand.Read(raw[:]); err != nil {
		return nil, nil, err
	}
	if _, err := rand.Read(dk.ID[:]); err != nil {
		return nil, nil, err
	}
	a, err := newGCM(raw[:])
	if err != nil {
		return nil, nil, err
	}
	dk.aead = a
	sealed, err := s.sealDataKey(dk.ID, raw)
	if err != nil {
		return nil, nil, err
	}
	return dk, sealed, nil
}

// A sealed data key: version, the sealing's ephemeral X25519 public key,
// a nonce and the data key under a key both sides derive (ECDH, HKDF).
func (s *Set) sealDataKey(id [16]byte, raw [32]byte) ([]byte, error) {
	var eph [32]byte
	if _, err := rand.Read(eph[:]); err != nil {
		return nil, err
	}
	ephPub, err := curve25519.X25519(eph[:], curve25519.Basepoint)
	if err != nil {
		return nil, err
	}
	shared, err := curve25519.X25519(eph[:], s.DataPub[:])
	if err != nil {
		return nil, err
	}
	w, err := wrapAEAD(shared, ephPub, s.DataPub[:])
	if err != nil {
		return nil, err
	}
	out := append([]byte{1}, ephPub...)
	nonce := make([]byte, 12)
	_, _ = rand.Read(nonce)
	out = append(out, nonce...)
	return w.Seal(out, nonce, raw[:], id[:]), nil
}

func wrapAEAD(shared, ephPub, pub []byte) (cipher.AEAD, error) {
	info := append(append([]byte("vmvault data key v1"), ephPub...), pub...)
	var k [32]byte
	if _, err := io.ReadFull(hkdf.New(sha256.New, shared, nil, info), k[:]); err != nil {
		return nil, err
	}
	return newGCM(k[:])
}

// OpenDataKey unseals a data key (full keys only) and keeps it for
// OpenFrame.
func (s *Set) OpenDataKey(id [16]byte, sealed []byte) error {
	if !s.CanRead() {
		return ErrCaptureKey
	}
	if len(sealed) != 1+32+12+32+16 || sealed[0] != 1 {
		return fmt.Errorf("data key %x: %w", id[:4], format.ErrCorrupt)
	}
	ephPub := sealed[1:33]
	shared, err := curve25519.X25519(s.DataPriv[:], ephPub)
	if err != nil {
		return fmt.Errorf("data key %x: %w", id[:4], format.ErrCorrupt)
	}
	w, err := wrapAEAD(shared, ephPub, s.DataPub[:])
	if err != nil {
		return err
	}
	raw, err := w.Open(nil, sealed[33:45], sealed[45:], id[:])
	if err != nil {
		return fmt.Errorf("data key %x: %w", id[:4], ErrTampered)
	}
	a, err := newGCM(raw)
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.dataKeys[id] = a
	s.mu.Unlock()
	return nil
}

// HasDataKey reports whether a data key is open.
func (s *Set) HasDataKey(id [16]byte) bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	_, ok := s.dataKeys[id]
	return ok
}

// Encrypted chunk frames. A plain frame (format.EncodeChunk) becomes an
// encrypted one by setting the payload type's high bit and replacing the
// payload with: the data key id (16 bytes), a nonce (12) and the
// AES-256-GCM ciphertext of the payload with its tag; the additional data
// is the chunk id and the header's first 12 bytes, so a frame moved under
// another chunk's name, or with its header changed, does not open. The
// header's CRC covers the new payload: damage shows without keys.
const (
	encryptedBit   = 0x80
	frameCryptoHdr = 16 + 12
)

// SealFrame turns a plain frame of chunk id into an encrypted one,
// appending to dst.
func (dk *DataKey) SealFrame(dst, frame []byte, id format.ID) []byte {
	hdr := frame[:format.ChunkHeaderSize]
	start := len(dst)
	dst = append(dst, hdr...)
	dst[start+5] |= encryptedBit
	dst = append(dst, dk.ID[:]...)
	nonce := make([]byte, 12)
	_, _ = rand.Read(nonce)
	dst = append(dst, nonce...)
	dst = dk.aead.Seal(dst, nonce, frame[format.ChunkHeaderSize:], frameAD(id, dst[start:start+12]))
	binary.LittleEndian.PutUint32(dst[start+12:], format.CRC(dst[start+format.ChunkHeaderSize:]))
	return dst
}

func frameAD(id format.ID, hdr []byte) []byte {
	return append(append(make([]byte, 0, 44), id[:]...), hdr...)
}

// Encrypted reports whether a frame is encrypted, and its data key id.
func Encrypted(frame []byte) (bool, [16]byte) {
	var id [16]byte
	if len(frame) < format.ChunkHeaderSize+frameCryptoHdr || frame[5]&encryptedBit == 0 {
		return false, id
	}
	copy(id[:], frame[format.ChunkHeaderSize:])
	return true, id
}

// CheckFrame checks an encrypted frame's header and checksum, what can be
// checked without its data key.
func CheckFrame(frame []byte) error {
	if enc, _ := Encrypted(frame); !enc || string(frame[:4]) != "VVCK" {
		return fmt.Errorf("chunk frame: not an encrypted frame: %w", format.ErrCorrupt)
	}
	if format.CRC(frame[format.ChunkHeaderSize:]) != binary.LittleEndian.Uint32(frame[12:]) {
		return fmt.Errorf("chunk frame: checksum mismatch: %w", format.ErrCorrupt)
	}
	return nil
}

// OpenFrame turns an encrypted frame back into the plain frame SealFrame
// got, appending to dst; the frame's data key must be open.
func (s *Set) OpenFrame(dst, frame []byte, id format.ID) ([]byte, error) {
	enc, dkID := Encrypted(frame)
	if !enc {
		return nil, fmt.Errorf("chunk frame is not encrypted: %w", format.ErrCorrupt)
	}
	if !s.CanRead() {
		return nil, ErrCaptureKey
	}
	s.mu.RLock()
	a, ok := s.dataKeys[dkID]
	s.mu.RUnlock()
	if !ok {
		return nil, fmt.Errorf("chunk frame: data key %x is not open", dkID[:4])
	}
	if format.CRC(frame[format.ChunkHeaderSize:]) != binary.LittleEndian.Uint32(frame[12:]) {
		return nil, fmt.Errorf("chunk frame: checksum mismatch: %w", format.ErrCorrupt)
	}
	start := len(dst)
	dst = append(dst, frame[:format.ChunkHeaderSize]...)
	dst[start+5] &^= encryptedBit
	p := frame[format.ChunkHeaderSize:]
	out, err := a.Open(dst, p[16:28], p[28:], frameAD(id, frame[:12]))
	if err != nil {
		return nil, fmt.Errorf("chunk frame: %w", ErrTampered)
	}
	binary.LittleEndian.PutUint32(out[start+12:], format.CRC(out[start+format.ChunkHeaderSize:]))
	return out, nil
}

// Key slots.

// KDF are argon2id parameters.
type KDF struct {
	Alg     string `json:"alg"` // "argon2id"
	Time    uint32 `json:"time"`
	Memory  uint32 `json:"memory_kib"`
	Threads uint8  `json:"threads"`
	Salt    []byte `json:"salt"`
}

// Slot is a key object: a Set wrapped with a password-derived key.
type Slot struct {
	Version  int       `json:"version"`
	Kind     string    `json:"kind"`
	Created  time.Time `json:"created"`
	Hostname string    `json:"hostname,omitempty"`
	Comment  string    `json:"comment,omitempty"`
	KDF      KDF       `json:"kdf"`
	Nonce    []byte    `json:"nonce"`
	Sealed   []byte    `json:"sealed"`
}

// DefaultKDFTime is what deriving a key from a password takes at least
// (on the machine that made the key slot).
const DefaultKDFTime = 500 * time.Millisecond

// Calibrate picks argon2id parameters that take about target on this
// machine (64 MiB of memory, at most 4 threads, at least 2 passes): the
// passes scale from a timed run, so the cost lands near target rather than
// anywhere up to twice it. Every command that opens an encrypted
// repository pays it once.
func Calibrate(target time.Duration) KDF {
	k := KDF{Alg: "argon2id", Time: 2, Memory: 64 << 10, Threads: uint8(min(4, runtime.NumCPU()))}
	salt := make([]byte, 16)
	run := func(passes uint32) time.Duration {
		start := time.Now()
		argon2.IDKey([]byte("calibration"), salt, passes, k.Memory, k.Threads, 32)
		return time.Since(start)
	}
	// The fastest of a few runs: a busy machine must not make the
	// passes fewer than the target asks.
	best := run(k.Time)
	for range 2 {
		best = min(best, run(k.Time))
	}
	per := best / time.Duration(k.Time)
	if per <= 0 {
		per = time.Nanosecond
	}
	k.Time = uint32(min(max(int64((target+per-1)/per), 2), 256))
	return k
}

func (k KDF) key(password []byte) ([]byte, error) {
	if k.Alg != "argon2id" || k.Time == 0 || k.Time > 256 || k.Memory < 8<<10 || k.Memory > 1<<20 || k.Threads == 0 || len(k.Salt) < 16 {
		return nil, fmt.Errorf("key slot: unusable KDF parameters: %w", format.ErrCorrupt)
	}
	return argon2.IDKey(password, k.Salt, k.Time, k.Memory, k.Threads, 32), nil
}

// bundle is what a slot wraps.
type bundle struct {
	Kind     string `json:"kind"`
	IDKey    []byte `json:"id_key"`
	MetaKey  []byte `json:"meta_key"`
	DataPub  []byte `json:"data_pub"`
	DataPriv []byte `json:"data_priv,omitempty"`
}

// NewSlot wraps s (or its capture half, when kind is KindCapture) with a
// key derived from password.
func NewSlot(s *Set, kind string, password []byte, kdf KDF, hostname string) ([]byte, error) {
	if kind != KindFull && kind != KindCapture {
		return nil, fmt.Errorf("key slot kind %q", kind)
	}
	if kind == KindFull && !s.CanRead() {
		return nil, ErrCaptureKey
	}
	kdf.Salt = make([]byte, 16)
	if _, err := rand.Read(kdf.Salt); err != nil {
		return nil, err
	}
	kek, err := kdf.key(password)
	if err != nil {
		return nil, err
	}
	b := bundle{Kind: kind, IDKey: s.IDKey[:], MetaKey: s.MetaKey[:], DataPub: s.DataPub[:]}
	if kind == KindFull {
		b.DataPriv = s.DataPriv[:]
	}
	plain, _ := json.Marshal(b)
	a, err := newGCM(kek)
	if err != nil {
		return nil, err
	}
	slot := Slot{Version: 1, Kind: kind, Created: time.Now().UTC(), Hostname: hostname, KDF: kdf, Nonce: make([]byte, 12)}
	_, _ = rand.Read(slot.Nonce)
	slot.Sealed = a.Seal(nil, slot.Nonce, plain, []byte("vmvault key slot v1 "+kind))
	return json.MarshalIndent(slot, "", " ")
}

// ParseSlot decodes a key slot object without opening it.
func ParseSlot(b []byte) (*Slot, error) {
	var s Slot
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("key slot: %v: %w", err, format.ErrCorrupt)
	}
	if s.Version != 1 {
		return nil, fmt.Errorf("key slot version %d: %w", s.Version, format.ErrUnsupportedVersion)
	}
	if (s.Kind != KindFull && s.Kind != KindCapture) || len(s.Nonce) != 12 || len(s.Sealed) < 16 || len(s.Sealed) > 4096 {
		return nil, fmt.Errorf("key slot: malformed: %w", format.ErrCorrupt)
	}
	return &s, nil
}

// OpenSlot unwraps a slot with password; a wrong password fails with
// ErrWrongPassword.
func OpenSlot(b, password []byte) (*Set, error) {
	slot, err := ParseSlot(b)
	if err != nil {
		return nil, err
	}
	kek, err := slot.KDF.key(password)
	if err != nil {
		return nil, err
	}
	a, err := newGCM(kek)
	if err != nil {
		return nil, err
	}
	plain, err := a.Open(nil, slot.Nonce, slot.Sealed, []byte("vmvault key slot v1 "+slot.Kind))
	if err != nil {
		return nil, ErrWrongPassword
	}
	var bd bundle
	if err := json.Unmarshal(plain, &bd); err != nil || bd.Kind != slot.Kind || len(bd.IDKey) != 32 || len(bd.MetaKey) != 32 || len(bd.DataPub) != 32 ||
		(bd.Kind == KindFull) != (len(bd.DataPriv) == 32) {
		return nil, fmt.Errorf("key slot: malformed key material: %w", format.ErrCorrupt)
	}
	s := &Set{Kind: bd.Kind}
	copy(s.IDKey[:], bd.IDKey)
	copy(s.MetaKey[:], bd.MetaKey)
	copy(s.DataPub[:], bd.DataPub)
	copy(s.DataPriv[:], bd.DataPriv)
	if s.Kind == KindFull {
		pub, err := curve25519.X25519(s.DataPriv[:], curve25519.Basepoint)
		if err != nil || [32]byte(pub) != s.DataPub {
			return nil, fmt.Errorf("key slot: private and public data keys do not match: %w", format.ErrCorrupt)
		}
	}
	return s, s.init()
}
