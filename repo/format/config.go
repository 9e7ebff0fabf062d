package format

import (
	"encoding/json"
	"fmt"
	"time"
)

// Config is the repository's single config object (JSON).
type Config struct {
	Version     int       `json:"version"`
	ID          string    `json:"id"`
	ChunkSize   int64     `json:"chunk_size"`
	Hash        string    `json:"hash"`
	Compression string    `json:"compression"`
	Created     time.Time `json:"created"`
	// PackSize is the target size of packs (format version 2): chunk frames
	// are stored in packs of about this size (repo/backend/pack). Version 1
	// repositories store one object per chunk.
	PackSize int64 `json:"pack_size,omitempty"`
	// ObjectLock is how long every object stays immutable after it is
	// written (S3 Object Lock), in seconds; 0 for none.
	ObjectLockSeconds int64 `json:"object_lock_seconds,omitempty"`
	// ObjectLockMode is the retention mode: "compliance" (nobody can
	// shorten it; the default when empty) or "governance".
	ObjectLockMode string `json:"object_lock_mode,omitempty"`
	// Encryption names the scheme of an encrypted repository (format
	// version 3): what the key objects hold and how objects are sealed
	// (repo/keys); empty for none.
	Encryption string `json:"encryption,omitempty"`
}

// EncryptionV1 is AES-256-GCM for data and metadata, keyed BLAKE3 ids,
// X25519-sealed data keys, argon2id-wrapped key slots (repo/keys).
const EncryptionV1 = "aes256gcm-x25519-v1"

// Limits on the pack size.
const (
	MinPackSize     = 1 << 20
	DefaultPackSize = 32 << 20
	MaxPackSizeConf = 1 << 30
)

// Validate checks a config.
func (c *Config) Validate() error {
	if c.Version < 1 || c.Version > ConfigVersion {
		return fmt.Errorf("config version %d (this build reads 1 to %d): %w", c.Version, ConfigVersion, ErrUnsupportedVersion)
	}
	if (c.Version >= 3) != (c.Encryption != "") {
		return fmt.Errorf("config version %d with encryption %q: encryption is what version 3 adds: %w", c.Version, c.Encryption, ErrCorrupt)
	}
	if c.Encryption != "" && c.Encryption != EncryptionV1 {
		return fmt.Errorf("config: encryption %q: %w", c.Encryption, ErrUnsupportedVersion)
	}
	if (c.Version >= 2) != (c.PackSize > 0) {
		return fmt.Errorf("config version %d with pack size %d: packs are what version 2 adds: %w", c.Version, c.PackSize, ErrCorrupt)
	}
	if c.PackSize != 0 && (c.PackSize < MinPackSize || c.PackSize > MaxPackSizeConf) {
		return fmt.Errorf("config: pack size %d outside %d..%d: %w", c.PackSize, MinPackSize, MaxPackSizeConf, ErrCorrupt)
	}
	if c.ObjectLockSeconds < 0 {
		return fmt.Errorf("config: negative object lock period: %w", ErrCorrupt)
	}
	if m := c.ObjectLockMode; m != "" && m != "compliance" && m != "governance" {
		return fmt.Errorf("config: object lock mode %q: %w", m, ErrCorrupt)
	}
	if len(c.ID) != 32 {
		return fmt.Errorf("config: repository id %q: %w", c.ID, ErrCorrupt)
	}
	if err := ValidChunkSize(c.ChunkSize); err != nil {
		return fmt.Errorf("config: %v: %w", err, ErrCorrupt)
	}
	if c.Hash != HashBLAKE3 {
		return fmt.Errorf("config: hash %q: %w", c.Hash, ErrUnsupportedVersion)
	}
	if err := ValidCompression(c.Compression); err != nil {
		return fmt.Errorf("config: %v: %w", err, ErrUnsupportedVersion)
	}
	return nil
}

// Marshal encodes a validated config.
func (c *Config) Marshal() ([]byte, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return json.MarshalIndent(c, "", "  ")
}

// ParseConfig decodes and validates a config.
func ParseConfig(b []byte) (*Config, error) {
	var c Config
	if err := json.Unmarshal(b, &c); err != nil {
		return nil, fmt.Errorf("config: %v: %w", err, ErrCorrupt)
	}
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return &c, nil
}
