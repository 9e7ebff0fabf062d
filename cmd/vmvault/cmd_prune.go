package main

import (
	"github.com/spf13/cobra"

	"github.com/vmvault/vmvault/cmd/internal/cli"
	"github.com/vmvault/vmvault/repo"
	"github.com/vmvault/vmvault/repo/format"
)

func newPruneCommand(g *cli.Global) *cobra.Command {
	var f policyFlags
	var gcf gcFlags
	cmd := &cobra.Command{
		Use:   "prune --keep-* N",
		Short: "Forget restore points by retention policy, then collect garbage",
		Long: `Apply a retention policy per VM (like 'forget --keep-*') and then remove the
data no remaining restore point references (like 'gc').`,
		Example: "  vmvault prune --keep-last 3 --keep-daily 7 --keep-weekly 4 --keep-monthly 12",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if f.p.Empty() {
				return cli.Usagef("prune needs a policy: at least one --keep-* flag")
			}
			r, err := g.OpenRepo(cmd.Context(), repo.Options{})
			if err != nil {
				return err
			}
			defer r.Close()
			rps, _, err := r.ListRestorePoints(cmd.Context())
			if err != nil {
				return err
			}
			entries := f.plan(rps)
			gcf.asJSON = f.asJSON
			if !f.asJSON {
				printPlan(cmd.OutOrStdout(), entries)
			}
			res, err := forget(cmd, r, entries, f.dryRun, f.asJSON)
			if err != nil {
				return err
			}
			var ignore []format.ID
			if f.dryRun {
				for _, e := range entries {
					if !e.Keep {
						ignore = append(ignore, e.rp.ID)
					}
				}
			}
			rep, err := r.GC(cmd.Context(), repo.GCOptions{Grace: gcf.grace, DryRun: f.dryRun, LockWait: g.LockWait, Ignore: ignore})
			if err != nil {
				return err
			}
			if f.asJSON {
				return cli.PrintJSON(cmd.OutOrStdout(), struct {
					Forget forgetJSON `json:"forget"`
					GC     gcJSON     `json:"gc"`
				}{res, toGCJSON(rep, gcf, f.dryRun)})
			}
			printGC(cmd.OutOrStdout(), rep, gcf, f.dryRun)
			return nil
		},
	}
	f.addFlags(cmd.Flags())
	gcf.addFlags(cmd.Flags())
	return cmd
}
