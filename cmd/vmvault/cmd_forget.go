package main

import (
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/vmvault/vmvault/cmd/internal/cli"
	"github.com/vmvault/vmvault/repo"
)

// policyFlags are the --keep-* flags shared by forget and prune.
type policyFlags struct {
	p      repo.Policy
	vms    []string
	dryRun bool
	asJSON bool
}

func (f *policyFlags) addFlags(fs *pflag.FlagSet) {
	fs.IntVar(&f.p.Last, "keep-last", 0, "keep the N newest restore points")
	fs.IntVar(&f.p.Hourly, "keep-hourly", 0, "keep the newest restore point of each of the last N hours that have one")
	fs.IntVar(&f.p.Daily, "keep-daily", 0, "likewise for N days")
	fs.IntVar(&f.p.Weekly, "keep-weekly", 0, "likewise for N ISO weeks")
	fs.IntVar(&f.p.Monthly, "keep-monthly", 0, "likewise for N months")
	fs.IntVar(&f.p.Yearly, "keep-yearly", 0, "likewise for N years")
	fs.StringSliceVar(&f.vms, "vm", nil, "apply the policy only to these VMs (repeatable)")
	fs.BoolVarP(&f.dryRun, "dry-run", "n", false, "print what would be removed, remove nothing")
	fs.BoolVar(&f.asJSON, "json", false, "print the plan and the result as JSON")
}

// forgetEntry is one restore point a forget or prune decided about.
type forgetEntry struct {
	ID      string   `json:"id"`
	VM      string   `json:"vm,omitempty"`
	Time    string   `json:"time,omitempty"`
	Keep    bool     `json:"keep"`
	Reasons []string `json:"reasons,omitempty"`
	// ProtectedUntil is set when the object lock kept a restore point the
	// policy or the command line would remove.
	ProtectedUntil string `json:"protected_until,omitempty"`
	rp             *repo.RestorePoint
}

// forgetJSON is forget's --json output (and prune's "forget" part).
type forgetJSON struct {
	DryRun        bool          `json:"dry_run"`
	RestorePoints []forgetEntry `json:"restore_points"`
	Forgotten     int           `json:"forgotten"`
}

func entryOfRP(rp *repo.RestorePoint, keep bool, reasons []string) forgetEntry {
	return forgetEntry{ID: rp.ID.String(), VM: rp.VM, Time: rp.Time.UTC().Format(time.RFC3339), Keep: keep, Reasons: reasons, rp: rp}
}

// plan applies the policy per VM.
func (f *policyFlags) plan(rps []*repo.RestorePoint) []forgetEntry {
	var out []forgetEntry
	for _, d := range repo.ApplyPolicy(filterRPs(rps, f.vms, nil), f.p) {
		out = append(out, entryOfRP(d.RestorePoint, d.Keep, d.Reasons))
	}
	return out
}

// printPlan prints a policy's decisions per VM.
func printPlan(w io.Writer, entries []forgetEntry) {
	lastVM := ""
	for _, e := range entries {
		if e.VM != lastVM {
			fmt.Fprintf(w, "%s:\n", e.VM)
			lastVM = e.VM
		}
		verdict := "remove"
		if e.Keep {
			verdict = "keep   (" + strings.Join(e.Reasons, ", ") + ")"
		}
		fmt.Fprintf(w, "  %s  %s  %s\n", e.ID[:8], e.rp.Time.UTC().Format("2006-01-02 15:04:05"), verdict)
	}
}

func newForgetCommand(g *cli.Global) *cobra.Command {
	var f policyFlags
	cmd := &cobra.Command{
		Use:   "forget [RESTORE_POINT...] [--keep-* N]",
		Short: "Remove restore points, by name or by retention policy",
		Long: `Remove restore points named on the command line, or those a retention policy
(--keep-*) does not keep; the policy applies per VM. Forgetting removes only
the manifest: the data stays until 'vmvault gc' (or use 'vmvault prune').
A restore point whose manifest is damaged can be forgotten by its full id.
forget takes no lock: a restore point that a server or mount is reading
keeps its data until that reader lets go.`,
		Example: "  vmvault forget 3fa4b2c1\n  vmvault forget --keep-daily 7 --keep-weekly 4 --dry-run",
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) > 0 && !f.p.Empty() {
				return cli.Usagef("give restore points or --keep-* flags, not both")
			}
			if len(args) == 0 && f.p.Empty() {
				return cli.Usagef("nothing to forget: give restore points or --keep-* flags")
			}
			r, err := g.OpenRepo(cmd.Context(), repo.Options{})
			if err != nil {
				return err
			}
			defer r.Close()
			rps, bad, err := r.ListRestorePoints(cmd.Context())
			if err != nil {
				return err
			}
			var entries []forgetEntry
			if len(args) > 0 {
				for _, a := range args {
					rp, err := repo.Resolve(rps, a)
					if err != nil {
						if n := damagedName(bad, a); n != "" {
							entries = append(entries, forgetEntry{ID: n})
							continue
						}
						return err
					}
					entries = append(entries, entryOfRP(rp, false, nil))
					if !f.asJSON {
						fmt.Fprintf(cmd.OutOrStdout(), "remove %s  %s  %s\n", rp.ID.Short(), rp.Time.UTC().Format("2006-01-02 15:04:05"), rp.VM)
					}
				}
			} else {
				entries = f.plan(rps)
				if !f.asJSON {
					printPlan(cmd.OutOrStdout(), entries)
				}
			}
			res, err := forget(cmd, r, entries, f.dryRun, f.asJSON)
			if err != nil {
				return err
			}
			if f.asJSON {
				if err := cli.PrintJSON(cmd.OutOrStdout(), res); err != nil {
					return err
				}
			}
			if len(args) > 0 {
				for _, e := range res.RestorePoints {
					if e.ProtectedUntil != "" {
						return fmt.Errorf("%w: not all named restore points were forgotten", repo.ErrProtected)
					}
				}
			}
			return nil
		},
	}
	f.addFlags(cmd.Flags())
	return cmd
}

// damagedName returns name when it is the full id of a restore point whose
// manifest cannot be read (so Resolve cannot find it), else "".
func damagedName(bad []repo.BadRestorePoint, name string) string {
	for _, b := range bad {
		if b.Name == name {
			return name
		}
	}
	return ""
}

// forget removes the restore points entries do not keep (unless dryRun)
// and reports it; text is printed unless asJSON.
func forget(cmd *cobra.Command, r *repo.Repository, entries []forgetEntry, dryRun, asJSON bool) (forgetJSON, error) {
	res := forgetJSON{DryRun: dryRun, RestorePoints: entries}
	if res.RestorePoints == nil {
		res.RestorePoints = []forgetEntry{}
	}
	var names []string
	for _, e := range entries {
		if !e.Keep {
			names = append(names, e.ID)
		}
	}
	if dryRun {
		if !asJSON {
			fmt.Fprintf(cmd.OutOrStdout(), "dry run: would remove %d restore points\n", len(names))
		}
		return res, nil
	}
	err := r.Forget(cmd.Context(), names)
	var prot *repo.ProtectedError
	if err != nil && !errors.As(err, &prot) {
		return res, err
	}
	res.Forgotten = len(names)
	if prot != nil {
		res.Forgotten -= len(prot.Until)
		for i, e := range res.RestorePoints {
			if until, ok := prot.Until[e.ID]; ok {
				res.RestorePoints[i].Keep = true
				res.RestorePoints[i].ProtectedUntil = until.UTC().Format(time.RFC3339)
			}
		}
	}
	if !asJSON {
		fmt.Fprintf(cmd.OutOrStdout(), "removed %d restore points\n", res.Forgotten)
		if prot != nil {
			for id, until := range prot.Until {
				fmt.Fprintf(cmd.OutOrStdout(), "kept %s: protected by the object lock until %s\n", id[:8], until.UTC().Format(time.RFC3339))
			}
		}
	}
	return res, nil
}
