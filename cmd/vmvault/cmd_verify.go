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
	subset     string
	noData     bool
	json       bool
	vms, tags  []string
	skipWithin string
}

func newVerifyCommand(g *cli.Global) *cobra.Command {
	var o verifyOptions
	cmd := &cobra.Command{
		Use:   "verify [RESTORE_POINT...]",
		Short: "Check restore points, indexes and chunks",
		Long: `Check restore points: each manifest, each disk's index (checksum), and
every referenced chunk (decoded and re-hashed against its id). Without
arguments every restore point is checked; name restore points (ids,
VM@latest, VM@TIME) or choose them with --vm and --tag. With
--read-data-subset only a random share of the chunks is read; with
--no-data chunks are only checked for existence.

Verify records what it finds in the repository: when each restore point
was last verified (--skip-verified-within 30d then skips restore points
verified clean, all data read, within 30 days — rerun an interrupted
verify with it to resume), and the list of damaged chunks. A damaged chunk
object is copied aside (state/quarantine-…) and never deleted or
overwritten without that copy; the next capture of the same data stores a
good copy instead of trusting the damaged one, and the next verify takes
it off the list. On a read-only repository nothing is recorded.

Damaged restore points are listed with the disk and offset of each bad chunk
and the command exits with code 3.`,
		Example: "  vmvault verify\n  vmvault verify web01@latest\n  vmvault verify --vm web01 --skip-verified-within 30d\n  vmvault verify --read-data-subset 10%",
		RunE: func(cmd *cobra.Command, args []string) error {
			subset := 1.0
			if o.subset != "" {
				v, err := strconv.ParseFloat(strings.TrimSuffix(o.subset, "%"), 64)
				if err != nil || v <= 0 || v > 100 {
					return cli.Usagef("--read-data-subset %q: want a percentage in (0, 100]", o.subset)
				}
				subset = v / 100
			}
			var within time.Duration
			if o.skipWithin != "" {
				d, err := cli.ParseDuration(o.skipWithin)
				if err != nil {
					return cli.Usagef("--skip-verified-within: %v", err)
				}
				within = d
			}
			r, err := g.OpenRepo(cmd.Context(), repo.Options{})
			if err != nil {
				return err
			}
			defer r.Close()
			var sel []*repo.RestorePoint
			if len(args) > 0 || len(o.vms) > 0 || len(o.tags) > 0 {
				rps, bad, err := r.ListRestorePoints(cmd.Context())
				if err != nil {
					return err
				}
				for _, b := range bad {
					fmt.Fprintf(cmd.ErrOrStderr(), "warning: restore point %s cannot be read: %v\n", b.Name, b.Err)
				}
				if len(args) == 0 {
					rps = filterRPs(rps, o.vms, o.tags)
				} else {
					var named []*repo.RestorePoint
					for _, a := range args {
						rp, err := repo.Resolve(rps, a)
						if err != nil {
							return err
						}
						named = append(named, rp)
					}
					rps = filterRPs(named, o.vms, o.tags)
				}
				if len(rps) == 0 {
					return cli.Usagef("no restore point matches")
				}
				sel = rps
			}
			start := time.Now()
			p := &repo.Progress{}
			stop := cli.ShowProgress("verify", p, g.Quiet)
			rep, err := r.Verify(cmd.Context(), repo.VerifyOptions{RestorePoints: sel, Subset: subset, NoData: o.noData,
				SkipVerifiedWithin: within, Progress: p, LockWait: g.LockWait})
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
				if len(rep.Skipped) > 0 {
					fmt.Fprintf(w, "skipped %d restore points verified clean within %s\n", len(rep.Skipped), o.skipWithin)
				}
				for _, rp := range rep.Forgotten {
					fmt.Fprintf(w, "restore point %s was forgotten meanwhile: not checked\n", rp.ID.Short())
				}
				for _, id := range rep.Healed {
					fmt.Fprintf(w, "chunk %s is good again (stored anew): off the damaged list\n", id.Short())
				}
				if rep.Quarantined > 0 {
					fmt.Fprintf(w, "copied %d damaged chunk objects aside (state/quarantine-*)\n", rep.Quarantined)
				}
				if rep.ReadOnly {
					fmt.Fprintln(w, "the repository is read-only here: nothing was recorded")
				}
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
	cmd.Flags().StringSliceVar(&o.vms, "vm", nil, "only restore points of these VMs (repeatable)")
	cmd.Flags().StringSliceVar(&o.tags, "tag", nil, "only restore points with all these tags (repeatable)")
	cmd.Flags().StringVar(&o.skipWithin, "skip-verified-within", "", "skip restore points verified clean within this long (e.g. 30d, 12h)")
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
		Skipped       []string `json:"skipped"`
		Forgotten     []string `json:"forgotten"`
		Healed        []string `json:"healed"`
		Quarantined   int      `json:"quarantined"`
		ReadOnly      bool     `json:"read_only"`
	}{Skipped: ids(rep.Skipped), Forgotten: ids(rep.Forgotten), Quarantined: rep.Quarantined, ReadOnly: rep.ReadOnly, Healed: []string{}, OK: rep.OK(), RestorePoints: rep.RestorePoints, Chunks: rep.Chunks, ChunksChecked: rep.ChunksChecked, BytesChecked: rep.BytesChecked,
		Damaged: []string{}, BadManifests: []string{}, Damage: []dmg{}}
	for _, rp := range rep.DamagedPoints {
		out.Damaged = append(out.Damaged, rp.ID.String())
	}
	for _, id := range rep.Healed {
		out.Healed = append(out.Healed, id.String())
	}
	for _, b := range rep.BadManifests {
		out.BadManifests = append(out.BadManifests, b.Name)
	}
	for _, d := range rep.Damage {
		out.Damage = append(out.Damage, dmg{d.RestorePoint.ID.String(), d.RestorePoint.VM, d.Disk, d.Offset, d.Problem})
	}
	return out
}

func ids(rps []*repo.RestorePoint) []string {
	out := make([]string, 0, len(rps))
	for _, rp := range rps {
		out = append(out, rp.ID.String())
	}
	return out
}
