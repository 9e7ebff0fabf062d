package main

import (
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/vmvault/vmvault/cmd/internal/cli"
	"github.com/vmvault/vmvault/repo"
)

// lockJSON is one lock in unlock's --json output.
type lockJSON struct {
	Name      string    `json:"name"`
	Kind      string    `json:"kind,omitempty"`
	Operation string    `json:"operation,omitempty"`
	Hostname  string    `json:"hostname,omitempty"`
	PID       int       `json:"pid,omitempty"`
	Started   time.Time `json:"started,omitzero"`
	Modified  time.Time `json:"modified"`
	Pins      []string  `json:"pins,omitempty"`
	Phase     string    `json:"phase,omitempty"`
	Stale     bool      `json:"stale"`
	Garbage   bool      `json:"garbage,omitempty"`
	Reason    string    `json:"reason,omitempty"`
}

func newUnlockCommand(g *cli.Global) *cobra.Command {
	var all, list, asJSON bool
	cmd := &cobra.Command{
		Use:   "unlock",
		Short: "List locks, or remove stale ones",
		Long: `Remove locks whose holder is gone: a process on this host that no longer
exists, or a lock not refreshed for 30 minutes (measured on the storage's
clock). A lock object that cannot be read is reported, counts as a running
capture until it is 30 minutes old, and is removed by --remove-all.
--remove-all removes every lock; only use it when you are sure no vmvault
process uses the repository. --list shows the locks instead: their kind
(reader, writer, maintenance), what holds them and what they pin.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			r, err := g.OpenRepo(cmd.Context(), repo.Options{})
			if err != nil {
				return err
			}
			defer r.Close()
			w := cmd.OutOrStdout()
			if list {
				locks, err := r.Locks(cmd.Context())
				if err != nil {
					return err
				}
				out := []lockJSON{}
				for _, l := range locks {
					j := lockJSON{Name: l.Name, Modified: l.ModTime.UTC(), Stale: l.Stale, Garbage: l.Garbage, Reason: l.StaleReason}
					if !l.Garbage {
						j.Kind, j.Operation, j.Hostname, j.PID, j.Started, j.Pins, j.Phase = l.EffectiveKind(), l.Operation, l.Hostname, l.PID, l.Started, l.Pins, l.Phase
					}
					out = append(out, j)
				}
				if asJSON {
					return cli.PrintJSON(w, out)
				}
				for _, l := range out {
					state := "active"
					if l.Stale {
						state = "stale: " + l.Reason
					}
					if l.Garbage {
						fmt.Fprintf(w, "%s UNREADABLE lock object, modified %s (%s; %s)\n", l.Name[:min(8, len(l.Name))], l.Modified.Format(time.RFC3339), l.Reason, state)
						continue
					}
					pins := ""
					if len(l.Pins) > 0 {
						pins = fmt.Sprintf(", pins %d restore points", len(l.Pins))
					}
					fmt.Fprintf(w, "%s %s %q by %s pid %d since %s%s (%s)\n", l.Name[:8], l.Kind, l.Operation, l.Hostname, l.PID, l.Started.Format(time.RFC3339), pins, state)
				}
				return nil
			}
			n, err := r.RemoveLocks(cmd.Context(), all)
			if err != nil {
				return err
			}
			if asJSON {
				return cli.PrintJSON(w, map[string]int{"removed": n})
			}
			fmt.Fprintf(w, "removed %d locks\n", n)
			return nil
		},
	}
	cmd.Flags().BoolVar(&all, "remove-all", false, "remove all locks, not only stale ones")
	cmd.Flags().BoolVar(&list, "list", false, "list locks instead of removing")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}
