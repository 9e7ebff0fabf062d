package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strings"
)

// configField is one top-level field of a stored VM configuration, in
// the order the source wrote it.
type configField struct {
	key string
	val json.RawMessage
}

// configFields splits a configuration object into its fields, in order.
func configFields(raw json.RawMessage) ([]configField, error) {
	dec := json.NewDecoder(bytes.NewReader(raw))
	if t, err := dec.Token(); err != nil || t != json.Delim('{') {
		return nil, fmt.Errorf("configuration is not a JSON object")
	}
	var out []configField
	for dec.More() {
		t, err := dec.Token()
		if err != nil {
			return nil, err
		}
		k, _ := t.(string)
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return nil, err
		}
		out = append(out, configField{k, v})
	}
	return out, nil
}

// longConfigValue is the length from which a string is not shown inline.
const longConfigValue = 100

// scalar renders a JSON scalar, or a short object as k=v pairs; ok is
// false for anything longer.
func scalar(v json.RawMessage) (string, bool) {
	var x any
	if err := json.Unmarshal(v, &x); err != nil {
		return "", false
	}
	switch x := x.(type) {
	case nil:
		return "", true
	case string:
		if len(x) > longConfigValue || strings.ContainsAny(x, "\n\r") {
			return fmt.Sprintf("(%d bytes; vmvault show --config prints it)", len(x)), true
		}
		return x, true
	case bool, float64:
		return strings.TrimSpace(string(v)), true
	case map[string]any:
		keys := make([]string, 0, len(x))
		for k := range x {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		var parts []string
		for _, k := range keys {
			b, _ := json.Marshal(x[k])
			s, ok := scalar(b)
			if !ok || len(parts) > 12 {
				return "", false
			}
			if s != "" {
				parts = append(parts, k+"="+s)
			}
		}
		return strings.Join(parts, " "), true
	}
	return "", false
}

// printConfig prints a restore point's VM configuration for people: one
// line per field; lists one item per line; long strings (a libvirt domain
// XML) and deep structures (QEMU's query answers) only by size.
func printConfig(w io.Writer, raw json.RawMessage, indent string) error {
	fields, err := configFields(raw)
	if err != nil {
		return err
	}
	width := 0
	for _, f := range fields {
		width = max(width, len(f.key)+1)
	}
	for _, f := range fields {
		label := fmt.Sprintf("%s%-*s ", indent, width, f.key+":")
		if s, ok := scalar(f.val); ok {
			if s != "" {
				fmt.Fprintln(w, strings.TrimRight(label+s, " "))
			}
			continue
		}
		var list []json.RawMessage
		if json.Unmarshal(f.val, &list) == nil {
			if len(list) == 0 {
				continue
			}
			var items []string
			inline := true
			for _, it := range list {
				s, ok := scalar(it)
				if !ok {
					s = fmt.Sprintf("(%d bytes of JSON)", len(it))
				}
				items = append(items, s)
				var m map[string]any
				inline = inline && json.Unmarshal(it, &m) != nil
			}
			if inline {
				fmt.Fprintln(w, label+strings.Join(items, ", "))
				continue
			}
			fmt.Fprintln(w, strings.TrimRight(label, " "))
			for _, s := range items {
				fmt.Fprintf(w, "%s  - %s\n", indent, s)
			}
			continue
		}
		var obj map[string]json.RawMessage
		json.Unmarshal(f.val, &obj)
		keys := make([]string, 0, len(obj))
		for k := range obj {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		fmt.Fprintf(w, "%s(%s; vmvault show --json prints them)\n", label, strings.Join(keys, ", "))
	}
	return nil
}

// writeConfig prints the configuration as the source gave it: a libvirt
// domain's XML, or the JSON indented.
func writeConfig(w io.Writer, raw json.RawMessage) error {
	var c struct {
		DomainXML string `json:"domain_xml"`
	}
	if json.Unmarshal(raw, &c) == nil && c.DomainXML != "" {
		_, err := io.WriteString(w, strings.TrimRight(c.DomainXML, "\n")+"\n")
		return err
	}
	var b bytes.Buffer
	if err := json.Indent(&b, raw, "", "  "); err != nil {
		return err
	}
	b.WriteByte('\n')
	_, err := w.Write(b.Bytes())
	return err
}
