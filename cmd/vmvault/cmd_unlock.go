package main

import (
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/vmvault/vmvault/cmd/internal/cli"
	"github.com/vmvault/vmvault/repo"
)

func newUnlockCommand(g *cli.Global) *cobra.Command {
	var all, list bool
	cmd := &cobra.Command{
		Use:   "unlock",
		Short: "Remove stale locks",
		Long: `Remove locks whose holder is gone: a process on this host that no longer
exists, or a lock not refreshed for 30 minutes. --remove-all removes every
lock; only use it when you are sure no vmvault process uses the repository.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			r, err := g.OpenRepo(cmd.Context(), repo.Options{})
			if err != nil {
				return err
			}
			defer r.Close()
			if list {
				locks, err := r.Locks(cmd.Context())
				if err != nil {
					return err
				}
				for _, l := range locks {
					kind := "shared"
					if l.Exclusive {
						kind = "exclusive"
					}
					state := "active"
					if l.Stale {
						state = "stale: " + l.StaleReason
					}
					fmt.Fprintf(cmd.OutOrStdout(), "%s %s %q by %s pid %d since %s (%s)\n", l.Name[:8], kind, l.Operation, l.Hostname, l.PID, l.Started.Format(time.RFC3339), state)
				}
				return nil
			}
			n, err := r.RemoveLocks(cmd.Context(), all)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "removed %d locks\n", n)
			return nil
		},
	}
	cmd.Flags().BoolVar(&all, "remove-all", false, "remove all locks, not only stale ones")
	cmd.Flags().BoolVar(&list, "list", false, "list locks instead of removing")
	return cmd
}
