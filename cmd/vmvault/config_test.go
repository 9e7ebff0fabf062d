package main

import (
	"bytes"
	"encoding/json"
	"strconv"
	"strings"
	"testing"
)

// TestPrintConfig: show prints every source's configuration as readable
// lines: scalars inline, lists one item per line, a domain XML and QEMU's
// query answers by size only; --config gives the XML or indented JSON.
func TestPrintConfig(t *testing.T) {
	xml := "<domain type='qemu'>\n  <name>web01</name>\n" + strings.Repeat("  <!-- padding -->\n", 10) + "</domain>"
	for _, tc := range []struct {
		name, config string
		want, not    []string
		raw          string
	}{
		{"libvirt",
			`{"type":"libvirt","name":"web01","uuid":"5b5c2a56-8a3e-4a8e-9f0c-0123456789ab","cpus":2,"memory_bytes":67108864,` +
				`"disks":[{"target":"vda","bus":"virtio","driver":"qcow2","source":"/var/lib/libvirt/images/web01.qcow2","size":34359738368}],` +
				`"nics":["virtio 52:54:00:12:34:56"],"domain_xml":` + quote(xml) + `}`,
			[]string{"    type:         libvirt", "    name:         web01", "    cpus:         2", "    disks:",
				"      - bus=virtio driver=qcow2 size=34359738368 source=/var/lib/libvirt/images/web01.qcow2 target=vda",
				"    nics:         virtio 52:54:00:12:34:56", "    domain_xml:   (" + strconv.Itoa(len(xml)) + " bytes; vmvault show --config prints it)"},
			[]string{"<name>"}, xml + "\n"},
		{"qemu",
			`{"type":"qemu","name":"testvm","qemu_version":"7.2.22","disks":[{"name":"vd0","node":"n-vd0","driver":"qcow2","size":33554432}],` +
				`"query":{"query-block":[{"device":"","inserted":{"node-name":"n-vd0"}}],"query-name":{"name":"testvm"}}}`,
			[]string{"    qemu_version: 7.2.22", "      - driver=qcow2 name=vd0 node=n-vd0 size=33554432",
				"    query:        (query-block, query-name; vmvault show --json prints them)"},
			[]string{"inserted"}, `"qemu_version": "7.2.22"`},
		{"vsphere",
			`{"name":"web01","moref":"vm-42","cpus":2,"memory_mb":4096,"change_tracking":true,"disks":[{"name":"scsi0-0","capacity":100}]}`,
			[]string{"    moref:           vm-42", "    change_tracking: true", "      - capacity=100 name=scsi0-0"}, nil, `"moref": "vm-42"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var b bytes.Buffer
			if err := printConfig(&b, []byte(tc.config), "    "); err != nil {
				t.Fatal(err)
			}
			out := b.String()
			for _, w := range tc.want {
				if !strings.Contains(out, w+"\n") {
					t.Errorf("missing line %q in\n%s", w, out)
				}
			}
			for _, n := range tc.not {
				if strings.Contains(out, n) {
					t.Errorf("%q shown inline:\n%s", n, out)
				}
			}
			b.Reset()
			if err := writeConfig(&b, []byte(tc.config)); err != nil || !strings.Contains(b.String(), tc.raw) {
				t.Errorf("--config: %v\n%s", err, b.String())
			}
		})
	}
	if err := printConfig(&bytes.Buffer{}, []byte(`[1,2]`), ""); err == nil {
		t.Error("a configuration that is not an object printed")
	}
}

func quote(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}
