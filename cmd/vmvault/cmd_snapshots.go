package main

import (
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/vmvault/vmvault/cmd/internal/cli"
	"github.com/vmvault/vmvault/repo"
)

type snapshotsOptions struct {
	vms  []string
	tags []string
	json bool
}

// rpJSON is the machine-readable form of a restore point (snapshots, show).
type rpJSON struct {
	ID       string   `json:"id"`
	ShortID  string   `json:"short_id"`
	VM       string   `json:"vm"`
	Time     string   `json:"time"`
	Tags     []string `json:"tags"`
	Source   string   `json:"source,omitempty"`
	Hostname string   `json:"hostname,omitempty"`
	// AddedBytes is what the restore point's capture added to the
	// repository (its disks' stored bytes, compressed).
	AddedBytes int64      `json:"added_bytes"`
	Disks      []diskJSON `json:"disks"`
}

// addedBytes is what rp's capture added to the repository: the bytes of
// the new chunks its disks stored, as the manifest's statistics record.
func addedBytes(rp *repo.RestorePoint) int64 {
	var n int64
	for _, d := range rp.Disks {
		n += d.Stats.BytesStored
	}
	return n
}

type diskJSON struct {
	Name        string `json:"name"`
	Size        int64  `json:"size"`
	ChunkSize   int64  `json:"chunk_size"`
	ChangeToken string `json:"change_token,omitempty"`
	Parent      string `json:"parent,omitempty"`
	Index       string `json:"index"`
	Stats       any    `json:"stats,omitempty"`
}

func toJSON(rp *repo.RestorePoint, withStats bool) rpJSON {
	j := rpJSON{ID: rp.ID.String(), ShortID: rp.ID.Short(), VM: rp.VM, Time: rp.Time.UTC().Format(time.RFC3339Nano),
		Tags: rp.Tags, Source: rp.Source, Hostname: rp.Hostname, AddedBytes: addedBytes(rp)}
	if j.Tags == nil {
		j.Tags = []string{}
	}
	for _, d := range rp.Disks {
		dj := diskJSON{Name: d.Name, Size: d.Size, ChunkSize: d.ChunkSize, ChangeToken: d.ChangeToken, Parent: d.Parent, Index: d.Index}
		if withStats {
			dj.Stats = d.Stats
		}
		j.Disks = append(j.Disks, dj)
	}
	return j
}

func newSnapshotsCommand(g *cli.Global) *cobra.Command {
	var o snapshotsOptions
	cmd := &cobra.Command{
		Use:     "snapshots",
		Aliases: []string{"list", "ls-rp"},
		Short:   "List restore points",
		Long: `List restore points, oldest first per VM, optionally only those of some VMs or
with some tags. ADDED (added_bytes in --json) is what the restore point's
capture added to the repository: the new chunks it stored, compressed.
Later restore points may share those chunks, so forgetting one frees at
most that much.`,
		Example: "  vmvault snapshots --vm web01\n  vmvault snapshots --tag daily --json",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			r, err := g.OpenRepo(cmd.Context(), repo.Options{})
			if err != nil {
				return err
			}
			defer r.Close()
			rps, bad, err := r.ListRestorePoints(cmd.Context())
			if err != nil {
				return err
			}
			for _, b := range bad {
				fmt.Fprintf(cmd.ErrOrStderr(), "warning: restore point %s cannot be read: %v\n", b.Name, b.Err)
			}
			rps = filterRPs(rps, o.vms, o.tags)
			if o.json {
				out := make([]rpJSON, 0, len(rps))
				for _, rp := range rps {
					out = append(out, toJSON(rp, false))
				}
				return cli.PrintJSON(cmd.OutOrStdout(), out)
			}
			printRPTable(cmd.OutOrStdout(), rps)
			return nil
		},
	}
	cmd.Flags().StringSliceVar(&o.vms, "vm", nil, "only these VMs (repeatable)")
	cmd.Flags().StringSliceVar(&o.tags, "tag", nil, "only restore points with all these tags (repeatable)")
	cmd.Flags().BoolVar(&o.json, "json", false, "print a JSON array")
	return cmd
}

func filterRPs(rps []*repo.RestorePoint, vms, tags []string) []*repo.RestorePoint {
	var out []*repo.RestorePoint
	for _, rp := range rps {
		if len(vms) > 0 && !slices.Contains(vms, rp.VM) {
			continue
		}
		ok := true
		for _, t := range tags {
			ok = ok && slices.Contains(rp.Tags, t)
		}
		if ok {
			out = append(out, rp)
		}
	}
	return out
}

func printRPTable(w io.Writer, rps []*repo.RestorePoint) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tTIME (UTC)\tVM\tDISKS\tADDED\tTAGS")
	for _, rp := range rps {
		var disks []string
		for _, d := range rp.Disks {
			disks = append(disks, fmt.Sprintf("%s (%s)", d.Name, cli.Bytes(d.Size)))
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", rp.ID.Short(), rp.Time.UTC().Format("2006-01-02 15:04:05"), rp.VM, strings.Join(disks, ", "),
			cli.Bytes(addedBytes(rp)), strings.Join(rp.Tags, ","))
	}
	tw.Flush()
	fmt.Fprintf(w, "%d restore points\n", len(rps))
}
