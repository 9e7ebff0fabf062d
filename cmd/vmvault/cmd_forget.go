package main

import (
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
}

// plan applies the policy and prints it; it returns the names to forget.
func (f *policyFlags) plan(w io.Writer, rps []*repo.RestorePoint) []string {
	var names []string
	lastVM := ""
	for _, d := range repo.ApplyPolicy(filterRPs(rps, f.vms, nil), f.p) {
		rp := d.RestorePoint
		if rp.VM != lastVM {
			fmt.Fprintf(w, "%s:\n", rp.VM)
			lastVM = rp.VM
		}
		verdict := "remove"
		if d.Keep {
			verdict = "keep   (" + strings.Join(d.Reasons, ", ") + ")"
		} else {
			names = append(names, rp.ID.String())
		}
		fmt.Fprintf(w, "  %s  %s  %s\n", rp.ID.Short(), rp.Time.UTC().Format("2006-01-02 15:04:05"), verdict)
	}
	return names
}

func newForgetCommand(g *cli.Global) *cobra.Command {
	var f policyFlags
	cmd := &cobra.Command{
		Use:   "forget [RESTORE_POINT...] [--keep-* N]",
		Short: "Remove restore points, by name or by retention policy",
		Long: `Remove restore points named on the command line, or those a retention policy
(--keep-*) does not keep; the policy applies per VM. Forgetting removes only
the manifest: the data stays until 'vmvault gc' (or use 'vmvault prune').
A restore point whose manifest is damaged can be forgotten by its full id.`,
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
			var names []string
			if len(args) > 0 {
				for _, a := range args {
					rp, err := repo.Resolve(rps, a)
					if err != nil {
						if n := damagedName(bad, a); n != "" {
							names = append(names, n)
							continue
						}
						return err
					}
					names = append(names, rp.ID.String())
					fmt.Fprintf(cmd.OutOrStdout(), "remove %s  %s  %s\n", rp.ID.Short(), rp.Time.UTC().Format("2006-01-02 15:04:05"), rp.VM)
				}
			} else {
				names = f.plan(cmd.OutOrStdout(), rps)
			}
			return forget(cmd, r, names, f.dryRun, g.LockWait)
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

func forget(cmd *cobra.Command, r *repo.Repository, names []string, dryRun bool, wait time.Duration) error {
	if dryRun {
		fmt.Fprintf(cmd.OutOrStdout(), "dry run: would remove %d restore points\n", len(names))
		return nil
	}
	if err := r.Forget(cmd.Context(), names, wait); err != nil {
		return err
	}
	fmt.Fprintf(cmd.OutOrStdout(), "removed %d restore points\n", len(names))
	return nil
}
