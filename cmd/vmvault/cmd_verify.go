package main

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/vmvault/vmvault/cmd/internal/cli"
	"github.com/vmvault/vmvault/repo"
)

type verifyOptions struct {
	subset string
	noData bool
	json   bool
}

func newVerifyCommand(g *cli.Global) *cobra.Command {
	var o verifyOptions
	cmd := &cobra.Command{
		Use:   "verify",
		Short: "Check restore points, indexes and chunks",
		Long: `Check every restore point: its manifest, each disk's index (checksum), and
every referenced chunk (decoded and re-hashed against its id). With
--read-data-subset only a random share of the chunks is read; with --no-data
chunks are only checked for existence.

Damaged restore points are listed with the disk and offset of each bad chunk
and the command exits with code 3. Nothing is ever deleted or repaired by
verify: a later capture of the same data stores a good copy again.`,
		Example: "  vmvault verify\n  vmvault verify --read-data-subset 10%",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			subset := 1.0
			if o.subset != "" {
				v, err := strconv.ParseFloat(strings.TrimSuffix(o.subset, "%"), 64)
				if err != nil || v <= 0 || v > 100 {
					return cli.Usagef("--read-data-subset %q: want a percentage in (0, 100]", o.subset)
				}
				subset = v / 100
			}
			r, err := g.OpenRepo(cmd.Context(), repo.Options{})
			if err != nil {
				return err
			}
			defer r.Close()
			start := time.Now()
			p := &repo.Progress{}
			stop := cli.ShowProgress("verify", p, g.Quiet)
			rep, err := r.Verify(cmd.Context(), repo.VerifyOptions{Subset: subset, NoData: o.noData, Progress: p, LockWait: g.LockWait})
			stop()
			if err != nil {
				return err
			}
			if o.json {
				if err := cli.PrintJSON(cmd.OutOrStdout(), verifyJSON(rep)); err != nil {
					return err
				}
			} else {
				w := cmd.OutOrStdout()
				fmt.Fprintf(w, "checked %d restore points, %d indexes, %d of %d chunks (%s) in %.1fs\n",
					rep.RestorePoints, rep.Indexes, rep.ChunksChecked, rep.Chunks, cli.Bytes(rep.BytesChecked), time.Since(start).Seconds())
				for _, b := range rep.BadManifests {
					fmt.Fprintf(w, "DAMAGED manifest %s: %v\n", b.Name, b.Err)
				}
				for _, rp := range rep.DamagedPoints {
					fmt.Fprintf(w, "DAMAGED restore point %s (%s @ %s):\n", rp.ID.Short(), rp.VM, rp.Time.UTC().Format(time.RFC3339))
					for _, d := range rep.Damage {
						if d.RestorePoint.ID == rp.ID {
							where := "index"
							if d.Offset >= 0 {
								where = fmt.Sprintf("offset %d", d.Offset)
							}
							fmt.Fprintf(w, "  disk %s %s: %s\n", d.Disk, where, d.Problem)
						}
					}
				}
				if rep.OK() {
					fmt.Fprintln(w, "no errors found")
				}
			}
			if !rep.OK() {
				return fmt.Errorf("%w: %d damaged restore points, %d bad chunks, %d unreadable manifests", cli.ErrDamage,
					len(rep.DamagedPoints), len(rep.BadChunks), len(rep.BadManifests))
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&o.subset, "read-data-subset", "", "read only this share of chunks, e.g. 10%")
	cmd.Flags().BoolVar(&o.noData, "no-data", false, "only check that chunks exist")
	cmd.Flags().BoolVar(&o.json, "json", false, "print a JSON report")
	return cmd
}

func verifyJSON(rep *repo.VerifyReport) any {
	type dmg struct {
		RestorePoint string `json:"restore_point"`
		VM           string `json:"vm"`
		Disk         string `json:"disk"`
		Offset       int64  `json:"offset"`
		Problem      string `json:"problem"`
	}
	out := struct {
		OK            bool     `json:"ok"`
		RestorePoints int      `json:"restore_points"`
		Chunks        int      `json:"chunks"`
		ChunksChecked int      `json:"chunks_checked"`
		BytesChecked  int64    `json:"bytes_checked"`
		Damaged       []string `json:"damaged_restore_points"`
		BadManifests  []string `json:"bad_manifests"`
		Damage        []dmg    `json:"damage"`
	}{OK: rep.OK(), RestorePoints: rep.RestorePoints, Chunks: rep.Chunks, ChunksChecked: rep.ChunksChecked, BytesChecked: rep.BytesChecked,
		Damaged: []string{}, BadManifests: []string{}, Damage: []dmg{}}
	for _, rp := range rep.DamagedPoints {
		out.Damaged = append(out.Damaged, rp.ID.String())
	}
	for _, b := range rep.BadManifests {
		out.BadManifests = append(out.BadManifests, b.Name)
	}
	for _, d := range rep.Damage {
		out.Damage = append(out.Damage, dmg{d.RestorePoint.ID.String(), d.RestorePoint.VM, d.Disk, d.Offset, d.Problem})
	}
	return out
}
