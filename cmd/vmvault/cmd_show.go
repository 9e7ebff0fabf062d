package main

import (
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/vmvault/vmvault/cmd/internal/cli"
	"github.com/vmvault/vmvault/repo"
)

func newShowCommand(g *cli.Global) *cobra.Command {
	var asJSON, config bool
	cmd := &cobra.Command{
		Use:   "show RESTORE_POINT",
		Short: "Show one restore point in detail",
		Long: `Show one restore point: VM, time, source, tags, the VM configuration the
source recorded (vSphere hardware, a libvirt domain, QEMU's query answers),
and per disk its size, parent, change token and how it was captured.
--config prints only the configuration as the source gave it (a libvirt
domain's XML, which 'virsh define' takes back; JSON otherwise).`,
		Example: "  vmvault show web01@latest\n  vmvault show 3fa4b2c1 --json\n  vmvault show web01@latest --config > web01.xml",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			r, err := g.OpenRepo(cmd.Context(), repo.Options{})
			if err != nil {
				return err
			}
			defer r.Close()
			rp, err := resolveOne(cmd, r, args[0])
			if err != nil {
				return err
			}
			if config {
				if len(rp.Config) == 0 {
					return fmt.Errorf("restore point %s has no VM configuration (source %s)", rp.ID.Short(), rp.Source)
				}
				return writeConfig(cmd.OutOrStdout(), rp.Config)
			}
			if asJSON {
				c := r.Config()
				j := struct {
					rpJSON
					Config     any               `json:"config,omitempty"`
					Labels     map[string]string `json:"labels,omitempty"`
					Repository repoJSON          `json:"repository"`
				}{rpJSON: toJSON(rp, true), Labels: rp.Labels, Repository: repoJSON{Location: r.Backend().Location(), ID: c.ID, FormatVersion: c.Version, PackSize: c.PackSize}}
				if len(rp.Config) > 0 {
					j.Config = rp.Config
				}
				return cli.PrintJSON(cmd.OutOrStdout(), j)
			}
			w := cmd.OutOrStdout()
			fmt.Fprintf(w, "restore point %s\n  vm:       %s\n  time:     %s\n  source:   %s\n  host:     %s\n  tags:     %s\n",
				rp.ID, rp.VM, rp.Time.UTC().Format("2006-01-02 15:04:05.000 MST"), rp.Source, rp.Hostname, strings.Join(rp.Tags, ", "))
			if len(rp.Config) > 0 {
				fmt.Fprintln(w, "  config:")
				if err := printConfig(w, rp.Config, "    "); err != nil {
					fmt.Fprintf(w, "    (unreadable: %v)\n", err)
				}
			}
			for _, d := range rp.Disks {
				s := d.Stats
				fmt.Fprintf(w, "  disk %s: %s (%d bytes), %s chunks, index %s\n", d.Name, cli.Bytes(d.Size), d.Size, cli.Bytes(d.ChunkSize), d.Index[:8])
				if d.Parent != "" {
					fmt.Fprintf(w, "    parent:       %s\n", d.Parent[:8])
				}
				if d.ChangeToken != "" {
					fmt.Fprintf(w, "    change token: %s\n", d.ChangeToken)
				}
				mode := s.Mode
				if s.Reason != "" {
					mode += " (" + s.Reason + ")"
				}
				fmt.Fprintf(w, "    capture:      %s, read %s, stored %s in %d new of %d chunks (%d zero), %.1fs\n",
					mode, cli.Bytes(s.BytesRead), cli.Bytes(s.BytesStored), s.NewChunks, s.Chunks, s.ZeroChunks, float64(s.DurationSecs))
				cli.PrintSkipped(w, "    ", "skipped:      ", s.Skipped)
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	cmd.Flags().BoolVar(&config, "config", false, "print only the VM configuration, as the source gave it")
	return cmd
}

// resolveOne finds the restore point a user named.
func resolveOne(cmd *cobra.Command, r *repo.Repository, name string) (*repo.RestorePoint, error) {
	rps, bad, err := r.ListRestorePoints(cmd.Context())
	if err != nil {
		return nil, err
	}
	for _, b := range bad {
		fmt.Fprintf(cmd.ErrOrStderr(), "warning: restore point %s cannot be read: %v\n", b.Name, b.Err)
	}
	return repo.Resolve(rps, name)
}

// repoJSON names the repository a restore point is in (show --json).
type repoJSON struct {
	Location      string `json:"location"`
	ID            string `json:"id"`
	FormatVersion int    `json:"format_version"`
	PackSize      int64  `json:"pack_size,omitempty"`
}
