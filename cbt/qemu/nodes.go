package qemu

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"strings"
)

// The QMP answers this package reads (fields it does not use are left out).

// bitmapInfo is one dirty bitmap of a node.
type bitmapInfo struct {
	Name         string `json:"name"`
	Recording    bool   `json:"recording"`
	Busy         bool   `json:"busy"`
	Persistent   bool   `json:"persistent"`
	Inconsistent bool   `json:"inconsistent"`
	Granularity  int64  `json:"granularity"`
	Count        int64  `json:"count"`
}

// nodeInfo is a block node (query-named-block-nodes, query-block's
// inserted medium).
type nodeInfo struct {
	NodeName string `json:"node-name"`
	Drv      string `json:"drv"`
	RO       bool   `json:"ro"`
	File     string `json:"file"`
	Image    struct {
		VirtualSize int64  `json:"virtual-size"`
		Filename    string `json:"filename"`
		Format      string `json:"format"`
	} `json:"image"`
	Bitmaps []bitmapInfo `json:"dirty-bitmaps"`
}

// blockInfo is a block device of a VM (query-block).
type blockInfo struct {
	Device    string    `json:"device"`
	QDev      string    `json:"qdev"`
	Removable bool      `json:"removable"`
	Inserted  *nodeInfo `json:"inserted"`
}

type jobInfo struct {
	ID     string `json:"id"`
	Type   string `json:"type"`
	Status string `json:"status"`
}

type exportInfo struct {
	ID           string `json:"id"`
	Type         string `json:"type"`
	NodeName     string `json:"node-name"`
	ShuttingDown bool   `json:"shutting-down"`
}

// devName is the name query-block gives a device: its -drive id, or the
// last useful element of its qdev path
// (/machine/peripheral/vd0/virtio-backend → vd0).
func devName(b blockInfo) string {
	if b.Device != "" {
		return b.Device
	}
	parts := strings.Split(strings.Trim(b.QDev, "/"), "/")
	for i := len(parts) - 1; i >= 0; i-- {
		if p := parts[i]; p != "" && p != "virtio-backend" {
			return p
		}
	}
	return b.QDev
}

// state is what QEMU holds at one moment: devices, nodes, jobs, exports.
type state struct {
	blocks  []blockInfo
	nodes   []nodeInfo
	jobs    []jobInfo
	exports []exportInfo
}

func queryState(ctx context.Context, m *Monitor) (*state, error) {
	s := &state{}
	if err := m.Execute(ctx, "query-block", nil, &s.blocks); err != nil && !IsCommandNotFound(err) {
		return nil, err
	}
	if err := m.Execute(ctx, "query-named-block-nodes", map[string]any{"flat": true}, &s.nodes); err != nil {
		return nil, err
	}
	if err := m.Execute(ctx, "query-jobs", nil, &s.jobs); err != nil {
		return nil, err
	}
	if err := m.Execute(ctx, "query-block-exports", nil, &s.exports); err != nil && !IsCommandNotFound(err) {
		return nil, err
	}
	return s, nil
}

func (s *state) node(name string) *nodeInfo {
	for i := range s.nodes {
		if s.nodes[i].NodeName == name {
			return &s.nodes[i]
		}
	}
	return nil
}

// resolve finds the node a disk spec names: a node name, or a device
// (its -drive id, qdev id or qdev path), whose inserted medium's top node
// it returns with the device's name.
func (s *state) resolve(spec string) (*nodeInfo, string, error) {
	for _, b := range s.blocks {
		if b.Inserted != nil && (b.Device == spec || b.QDev == spec || devName(b) == spec) {
			n := s.node(b.Inserted.NodeName)
			if n == nil {
				n = b.Inserted
			}
			return n, devName(b), nil
		}
	}
	if n := s.node(spec); n != nil {
		return n, "", nil
	}
	return nil, "", fmt.Errorf("QEMU has no block device or node named %q", spec)
}

// devices lists the writable disks of a VM with a medium, by device name.
func (s *state) devices() []blockInfo {
	var out []blockInfo
	for _, b := range s.blocks {
		if b.Inserted != nil && !b.Inserted.RO {
			out = append(out, b)
		}
	}
	return out
}

// Names of what a capture creates in QEMU; everything starts with
// "vmvault-", which is how cleanup finds leftovers.
const (
	prefix       = "vmvault-"
	bitmapPrefix = prefix // + repository id prefix + "-" + time
)

// ownBitmaps returns the bitmaps of a node that captures into the
// repository with id prefix repoTag made, sorted by name (= by time).
func ownBitmaps(n *nodeInfo, repoTag string) []bitmapInfo {
	var out []bitmapInfo
	for _, b := range n.Bitmaps {
		if strings.HasPrefix(b.Name, bitmapPrefix+repoTag+"-") {
			out = append(out, b)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// leftovers lists what interrupted captures left in QEMU: nodes, jobs and
// exports named vmvault-*, and disabled vmvault bitmaps (a capture
// disables the previous bitmap only while it runs).
func (s *state) leftovers() []string {
	var out []string
	for _, e := range s.exports {
		if strings.HasPrefix(e.ID, prefix) {
			out = append(out, "export "+e.ID)
		}
	}
	for _, j := range s.jobs {
		if strings.HasPrefix(j.ID, prefix) {
			out = append(out, "job "+j.ID)
		}
	}
	for _, n := range s.nodes {
		if strings.HasPrefix(n.NodeName, prefix) {
			out = append(out, "node "+n.NodeName)
		}
		for _, b := range n.Bitmaps {
			if strings.HasPrefix(b.Name, bitmapPrefix) && !b.Recording && !b.Inconsistent {
				out = append(out, "disabled bitmap "+n.NodeName+"/"+b.Name)
			}
		}
	}
	return out
}

// rawJSON runs a query and returns its answer verbatim (nil when the
// process does not have the command).
func rawJSON(ctx context.Context, m *Monitor, cmd string) (json.RawMessage, error) {
	var r json.RawMessage
	if err := m.Execute(ctx, cmd, nil, &r); err != nil {
		if IsCommandNotFound(err) {
			return nil, nil
		}
		return nil, err
	}
	return r, nil
}
