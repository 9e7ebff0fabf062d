package main

import (
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/vmvault/vmvault/cmd/internal/cli"
	"github.com/vmvault/vmvault/repo"
	"github.com/vmvault/vmvault/repo/keys"
)

func newKeyCommand(g *cli.Global) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "key",
		Short: "Manage the passwords of an encrypted repository",
		Long: `An encrypted repository opens with any of its keys' passwords. Each key
wraps the repository's key material with its own password, so passwords are
added, changed and removed without re-encrypting data.

A full key reads and writes everything. A capture key (--capture-only) is
for hypervisor hosts: it adds restore points (full and incremental) but
cannot decrypt their contents — restore, cat, cp, serve and mount fail with
it — so a stolen capture host reveals metadata (VM names, sizes, times) but
not disks. Keep it from deleting too: give the host storage credentials
without delete permission, or use S3 Object Lock.

The current password comes from VMVAULT_PASSWORD_FILE, VMVAULT_PASSWORD_COMMAND
or the terminal; a new one from --new-password-file or the terminal.`,
	}
	cmd.AddCommand(newKeyListCommand(g), newKeyAddCommand(g), newKeyRemoveCommand(g), newKeyPasswdCommand(g))
	return cmd
}

func newKeyListCommand(g *cli.Global) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List the keys",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			r, err := g.OpenRepo(cmd.Context(), repo.Options{})
			if err != nil {
				return err
			}
			defer r.Close()
			slots, err := r.KeySlots(cmd.Context())
			if err != nil {
				return err
			}
			if asJSON {
				if slots == nil {
					slots = []repo.KeySlot{}
				}
				return cli.PrintJSON(cmd.OutOrStdout(), slots)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "KEY\tKIND\tCREATED\tHOST")
			for _, s := range slots {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", s.Name, s.Kind, s.Created.Format(time.RFC3339), s.Hostname)
			}
			return tw.Flush()
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func newKeyAddCommand(g *cli.Global) *cobra.Command {
	var captureOnly bool
	var newFile string
	cmd := &cobra.Command{
		Use:   "add",
		Short: "Add a key (a new password)",
		Example: `  vmvault key add --new-password-file /root/second.pw
  vmvault key add --capture-only --new-password-file /etc/vmvault/capture.pw`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			r, err := g.OpenRepo(cmd.Context(), repo.Options{})
			if err != nil {
				return err
			}
			defer r.Close()
			pw, err := cli.NewPassword(newFile, false)
			if err != nil {
				return err
			}
			kind := keys.KindFull
			if captureOnly {
				kind = keys.KindCapture
			}
			name, err := r.AddKey(cmd.Context(), kind, pw, keys.KDF{})
			if err != nil {
				return err
			}
			fmt.Fprintf(g.Summary(cmd.OutOrStdout()), "added %s key %s\n", kind, name)
			return nil
		},
	}
	cmd.Flags().BoolVar(&captureOnly, "capture-only", false, "a capture key: adds restore points, cannot read them")
	cmd.Flags().StringVar(&newFile, "new-password-file", "", "read the new password from this file (first line)")
	return cmd
}

func newKeyRemoveCommand(g *cli.Global) *cobra.Command {
	return &cobra.Command{
		Use:   "remove KEY",
		Short: "Remove a key (its password no longer opens the repository)",
		Long:  "Remove a key by its name (vmvault key list). The last full key is never removed.",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			r, err := g.OpenRepo(cmd.Context(), repo.Options{})
			if err != nil {
				return err
			}
			defer r.Close()
			if err := r.RemoveKey(cmd.Context(), args[0]); err != nil {
				return err
			}
			fmt.Fprintf(g.Summary(cmd.OutOrStdout()), "removed key %s\n", args[0])
			return nil
		},
	}
}

func newKeyPasswdCommand(g *cli.Global) *cobra.Command {
	var newFile string
	cmd := &cobra.Command{
		Use:   "passwd KEY",
		Short: "Change a key's password (a new key of the same kind replaces it)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			r, err := g.OpenRepo(ctx, repo.Options{})
			if err != nil {
				return err
			}
			defer r.Close()
			slots, err := r.KeySlots(ctx)
			if err != nil {
				return err
			}
			kind := ""
			for _, s := range slots {
				if s.Name == args[0] {
					kind = s.Kind
				}
			}
			if kind == "" {
				return fmt.Errorf("no key %s (vmvault key list)", args[0])
			}
			pw, err := cli.NewPassword(newFile, false)
			if err != nil {
				return err
			}
			name, err := r.AddKey(ctx, kind, pw, keys.KDF{})
			if err != nil {
				return err
			}
			if err := r.RemoveKey(ctx, args[0]); err != nil {
				return fmt.Errorf("added key %s, but: %w", name, err)
			}
			fmt.Fprintf(g.Summary(cmd.OutOrStdout()), "key %s replaced by %s\n", args[0], name)
			return nil
		},
	}
	cmd.Flags().StringVar(&newFile, "new-password-file", "", "read the new password from this file (first line)")
	return cmd
}
