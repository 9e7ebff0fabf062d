package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/vmvault/vmvault/cbt"
	cbtoverlay "github.com/vmvault/vmvault/cbt/overlay"
	"github.com/vmvault/vmvault/cmd/internal/cli"
	"github.com/vmvault/vmvault/nbd/overlay"
	"github.com/vmvault/vmvault/repo"
)

func newOverlayCommand(g *cli.Global) *cobra.Command {
	var overlayDir string
	cmd := &cobra.Command{
		Use:   "overlay",
		Short: "List, discard or commit the write overlays of 'vmvault serve --writable'",
		Long: `A writable export keeps the writes of its clients (e.g. a VM booted
from a backup) in an overlay: one per restore point and disk, below the
overlay directory. The restore point itself never changes.

  list     shows every overlay, its size and whether a server has it open
  discard  deletes the overlays of a restore point
  commit   stores restore point + overlay as a new restore point whose
           parent is the booted one, writing only the changed chunks:
           the instantly recovered VM joins the backup chain again.`,
	}
	cmd.PersistentFlags().StringVar(&overlayDir, "overlay-dir", os.Getenv("VMVAULT_OVERLAY_DIR"), "overlay directory (env VMVAULT_OVERLAY_DIR; default ~/.local/state/vmvault/overlays/REPO-ID)")
	cmd.AddCommand(newOverlayListCommand(g, &overlayDir), newOverlayDiscardCommand(g, &overlayDir), newOverlayCommitCommand(g, &overlayDir))
	return cmd
}

// overlayRoot opens the repository and finds the overlay directory.
func overlayRoot(cmd *cobra.Command, g *cli.Global, flag string) (*repo.Repository, string, error) {
	r, err := g.OpenRepo(cmd.Context(), repo.Options{})
	if err != nil {
		return nil, "", err
	}
	if flag != "" {
		return r, flag, nil
	}
	dir, err := defaultOverlayDir(r.Config().ID)
	if err != nil {
		r.Close()
		return nil, "", err
	}
	return r, dir, nil
}

// overlayEntry is how 'overlay list' shows an overlay (also as JSON).
type overlayEntry struct {
	VM           string    `json:"vm"`
	RestorePoint string    `json:"restore_point"`
	Disk         string    `json:"disk"`
	Size         int64     `json:"size"`
	Allocated    int64     `json:"allocated"`
	InUse        bool      `json:"in_use"`
	Created      time.Time `json:"created"`
	Dir          string    `json:"dir"`
}

// findOverlays lists the overlays below root, warning on stderr about
// those it cannot read.
func findOverlays(root string) ([]overlay.Found, error) {
	list, skipped, err := overlay.List(root)
	for _, err := range skipped {
		fmt.Fprintf(os.Stderr, "warning: %v\n", err)
	}
	return list, err
}

// entryOf is f as 'overlay list' shows it.
func entryOf(f overlay.Found) overlayEntry {
	m := f.Meta
	return overlayEntry{VM: m.VM, RestorePoint: m.RestorePoint, Disk: m.Disk, Size: m.Size, Allocated: f.Written, InUse: f.InUse, Created: m.Created, Dir: f.Dir}
}

func newOverlayListCommand(g *cli.Global, dirFlag *string) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List overlays",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			r, root, err := overlayRoot(cmd, g, *dirFlag)
			if err != nil {
				return err
			}
			defer r.Close()
			found, err := findOverlays(root)
			if err != nil {
				return err
			}
			list := []overlayEntry{}
			for _, f := range found {
				list = append(list, entryOf(f))
			}
			if asJSON {
				return cli.PrintJSON(cmd.OutOrStdout(), list)
			}
			if len(list) == 0 {
				fmt.Fprintf(cmd.OutOrStdout(), "no overlays in %s\n", root)
				return nil
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "VM\tRESTORE POINT\tDISK\tSIZE\tWRITTEN\tIN USE\tCREATED")
			for _, e := range list {
				rp := e.RestorePoint
				if len(rp) > 8 {
					rp = rp[:8]
				}
				inUse := "no"
				if e.InUse {
					inUse = "yes"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", e.VM, rp, e.Disk, cli.Bytes(e.Size), cli.Bytes(e.Allocated), inUse, e.Created.Format(time.RFC3339))
			}
			return tw.Flush()
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

// overlaysOf returns the overlays of restore point id (full hex).
func overlaysOf(root, id string, disk string) ([]overlay.Found, error) {
	all, err := findOverlays(root)
	if err != nil {
		return nil, err
	}
	out := overlay.ForRestorePoint(all, id, disk)
	if len(out) == 0 {
		return nil, fmt.Errorf("no overlay for restore point %s in %s", id[:min(len(id), 8)], root)
	}
	return out, nil
}

// overlayNameHelp describes the names commit and discard take.
const overlayNameHelp = `The overlays are named by their restore point as everywhere else (an id
prefix, VM@latest, VM@TIME) or by an export name as 'vmvault serve' lists
it (VM/ID or VM/ID/DISK, ID a full id or a prefix; VM@latest/DISK).`

// resolveOverlayName finds the restore point (full id) and disk an overlay
// command names (overlay.ParseName): in the repository, or, unless
// needRepo, among the overlays alone, so overlays of forgotten restore
// points can still be discarded. rp is nil when only the overlays knew it.
func resolveOverlayName(cmd *cobra.Command, r *repo.Repository, root, name string, needRepo bool) (id string, rp *repo.RestorePoint, disk string, err error) {
	n, err := overlay.ParseName(name)
	if err != nil {
		return "", nil, "", cli.Usagef("%v", err)
	}
	rp, err = resolveOne(cmd, r, n.RestorePoint)
	if err == nil {
		if n.VM != "" && rp.VM != n.VM {
			return "", nil, "", fmt.Errorf("%s: restore point %s belongs to VM %s, not %s", name, rp.ID.Short(), rp.VM, n.VM)
		}
		return rp.ID.String(), rp, n.Disk, nil
	}
	if needRepo {
		return "", nil, "", err
	}
	all, lerr := findOverlays(root)
	if lerr != nil {
		return "", nil, "", lerr
	}
	if n.VM != "" {
		var ofVM []overlay.Found
		for _, f := range all {
			if f.Meta.VM == n.VM {
				ofVM = append(ofVM, f)
			}
		}
		all = ofVM
	}
	if id := overlay.MatchRestorePoint(all, strings.ToLower(n.RestorePoint)); id != "" {
		return id, nil, n.Disk, nil
	}
	return "", nil, "", err
}

func newOverlayDiscardCommand(g *cli.Global, dirFlag *string) *cobra.Command {
	var disk string
	cmd := &cobra.Command{
		Use:   "discard NAME",
		Short: "Delete the overlays of a restore point (all disks, or one)",
		Long: `Delete the overlays of a restore point, or of one disk (NAME ending in
/DISK, or --disk): the writes made through 'vmvault serve --writable' are
lost; the restore point is unchanged. An overlay a running server has open
is not touched. Overlays of restore points no longer in the repository
are found by their id prefix.

` + overlayNameHelp,
		Example: "  vmvault overlay discard 3fa4b2c1\n  vmvault overlay discard web01/3fa4b2c1/disk0\n  vmvault overlay discard web01@latest --disk disk1",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			r, root, err := overlayRoot(cmd, g, *dirFlag)
			if err != nil {
				return err
			}
			defer r.Close()
			id, _, nameDisk, err := resolveOverlayName(cmd, r, root, args[0], false)
			if err != nil {
				return err
			}
			if nameDisk != "" && disk != "" && nameDisk != disk {
				return cli.Usagef("%s names disk %s, --disk %s", args[0], nameDisk, disk)
			}
			if disk == "" {
				disk = nameDisk
			}
			list, err := overlaysOf(root, id, disk)
			if err != nil {
				return err
			}
			var errs []error
			for _, e := range list {
				if err := overlay.Discard(e.Dir); err != nil {
					errs = append(errs, err)
					continue
				}
				fmt.Fprintf(g.Summary(cmd.OutOrStdout()), "discarded overlay of %s disk %s (%s written)\n", id[:8], e.Meta.Disk, cli.Bytes(e.Written))
			}
			os.Remove(filepath.Join(root, id))
			return errors.Join(errs...)
		},
	}
	cmd.Flags().StringVar(&disk, "disk", "", "only this disk's overlay")
	return cmd
}

func newOverlayCommitCommand(g *cli.Global, dirFlag *string) *cobra.Command {
	var (
		tags     []string
		discard  bool
		asJSON   bool
		compress string
	)
	cmd := &cobra.Command{
		Use:   "commit NAME",
		Short: "Store a restore point plus its overlays as a new restore point",
		Long: `Store what the clients of a writable export saw — the restore point with
its overlays applied — as a new restore point of the same VM whose parent
is the booted restore point. Only chunks that overlay writes touch are
read and stored; every other chunk is shared with the parent. Disks
without an overlay are carried over unchanged.

The overlays must not be in use (stop the server or disconnect first).
They are kept unless --discard is given. A restore point holds all disks
of a VM, so every overlay of the restore point is committed, also when
NAME is an export name ending in a disk.

` + overlayNameHelp,
		Example: "  vmvault overlay commit web01/3fa4b2c1 --tag recovered\n  vmvault overlay commit 3fa4b2c1 --discard",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := cli.CheckCompression(compress); err != nil {
				return err
			}
			ctx := cmd.Context()
			r, root, err := overlayRoot(cmd, g, *dirFlag)
			if err != nil {
				return err
			}
			defer r.Close()
			id, rp, _, err := resolveOverlayName(cmd, r, root, args[0], true)
			if err != nil {
				return err
			}
			list, err := overlaysOf(root, id, "")
			if err != nil {
				return err
			}
			src, err := cbtoverlay.Open(ctx, r, rp, list)
			if err != nil {
				return err
			}
			defer src.Close()
			start := time.Now()
			p := &repo.Progress{}
			stop := cli.ShowProgress("commit", p, g.Quiet)
			newRP, err := src.Commit(ctx, cbt.Options{Tags: tags, Progress: p, LockWait: g.LockWait, Compression: compress})
			stop()
			if err != nil {
				return err
			}
			changedBytes := src.ChangedBytes
			if discard {
				if err := src.Discard(); err != nil {
					return fmt.Errorf("restore point %s committed, but: %w", newRP.ID.Short(), err)
				}
				os.Remove(filepath.Join(root, id))
			}
			if asJSON {
				return cli.PrintJSON(cmd.OutOrStdout(), map[string]any{
					"id": newRP.ID.String(), "parent": rp.ID.String(), "vm": rp.VM, "changed_bytes": changedBytes,
					"duration_seconds": time.Since(start).Seconds(), "overlays_discarded": discard,
				})
			}
			fmt.Fprintf(g.Summary(cmd.OutOrStdout()), "restore point %s of %s committed from %s + %s of overlay writes in %s\n",
				newRP.ID.Short(), rp.VM, rp.ID.Short(), cli.Bytes(changedBytes), time.Since(start).Round(time.Millisecond))
			return nil
		},
	}
	cmd.Flags().StringArrayVar(&tags, "tag", nil, "add a tag to the new restore point (repeatable)")
	cmd.Flags().BoolVar(&discard, "discard", false, "delete the overlays after a successful commit")
	cli.CompressionFlag(cmd.Flags(), &compress)
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the result as JSON")
	return cmd
}
