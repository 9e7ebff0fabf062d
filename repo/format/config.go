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
}

// Validate checks a config.
func (c *Config) Validate() error {
	if c.Version != ConfigVersion {
		return fmt.Errorf("config version %d (this build reads %d): %w", c.Version, ConfigVersion, ErrUnsupportedVersion)
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
