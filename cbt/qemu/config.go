package qemu

import (
	"context"
	"encoding/json"
	"fmt"
)

// Config is the VM configuration stored with a QEMU restore point: a
// summary for people, and the query-* answers it came from verbatim.
type Config struct {
	Type        string                     `json:"type"` // "qemu"
	Name        string                     `json:"name,omitempty"`
	UUID        string                     `json:"uuid,omitempty"`
	QEMU        string                     `json:"qemu_version,omitempty"`
	Arch        string                     `json:"arch,omitempty"`
	CPUs        int                        `json:"cpus,omitempty"`
	MemoryBytes int64                      `json:"memory_bytes,omitempty"`
	Disks       []ConfigDisk               `json:"disks"`
	Query       map[string]json.RawMessage `json:"query,omitempty"`
}

// ConfigDisk is one captured disk in Config.
type ConfigDisk struct {
	Name   string `json:"name"`
	Device string `json:"device,omitempty"`
	Node   string `json:"node"`
	Driver string `json:"driver"`
	File   string `json:"file,omitempty"`
	Size   int64  `json:"size"`
}

// queryConfig asks QEMU what it runs: the commands qemu-storage-daemon
// does not have are left out.
func (s *session) queryConfig(ctx context.Context, st *state) (json.RawMessage, error) {
	c := Config{Type: "qemu", Query: map[string]json.RawMessage{}}
	for _, q := range []string{"query-name", "query-uuid", "query-version", "query-target", "query-cpus-fast", "query-memory-size-summary", "query-block"} {
		r, err := rawJSON(ctx, s.m, q)
		if err != nil {
			return nil, err
		}
		if r != nil {
			c.Query[q] = r
		}
	}
	var name struct {
		Name string `json:"name"`
	}
	var uuid struct {
		UUID string `json:"UUID"`
	}
	var ver struct {
		QEMU    struct{ Major, Minor, Micro int } `json:"qemu"`
		Package string                            `json:"package"`
	}
	var target struct {
		Arch string `json:"arch"`
	}
	var cpus []json.RawMessage
	var mem struct {
		Base int64 `json:"base-memory"`
	}
	json.Unmarshal(c.Query["query-name"], &name)
	json.Unmarshal(c.Query["query-uuid"], &uuid)
	json.Unmarshal(c.Query["query-target"], &target)
	json.Unmarshal(c.Query["query-cpus-fast"], &cpus)
	json.Unmarshal(c.Query["query-memory-size-summary"], &mem)
	if json.Unmarshal(c.Query["query-version"], &ver) == nil {
		c.QEMU = fmt.Sprintf("%d.%d.%d", ver.QEMU.Major, ver.QEMU.Minor, ver.QEMU.Micro)
	}
	c.Name, c.UUID, c.Arch, c.CPUs, c.MemoryBytes = name.Name, uuid.UUID, target.Arch, len(cpus), mem.Base
	for _, d := range s.disks {
		file := d.file
		if n := st.node(d.node); n != nil && n.Image.Filename != "" {
			file = n.Image.Filename
		}
		c.Disks = append(c.Disks, ConfigDisk{Name: d.name, Device: d.device, Node: d.node, Driver: d.drv, File: file, Size: d.size})
	}
	return json.Marshal(c)
}
