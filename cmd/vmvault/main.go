// Command vmvault reads and manages the restore points in a vmvault
// repository: list, show, restore, verify, forget, prune, gc, compact, stats, and
// serve them as NBD exports (serve, overlay), browse the files inside them
// (partitions, ls, cat, cp, find, timeline) and mount them (mount).
// New restore points are captured by the companion vmvault-capture.
package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/vmvault/vmvault/cmd/internal/cli"
	"github.com/vmvault/vmvault/nbd/overlay"
)

func newRootCommand() *cobra.Command {
	g := &cli.Global{}
	root := &cobra.Command{
		Use:   "vmvault",
		Short: "Restore points of virtual-machine disks in a deduplicated repository",
		Long: `vmvault keeps restore points of virtual-machine disks in a deduplicated,
content-addressed repository and hands them back: restored to image files,
verified, and pruned by retention policy. Capture new restore points with
vmvault-capture.

Restore points are named by id, a unique id prefix (4+ hex digits),
VM@latest, or VM@TIME (the newest one taken at or before TIME, e.g.
web01@2026-11-23T10:00 in UTC).

` + cli.ExitCodesHelp,
		Example: `  export VMVAULT_REPOSITORY=/srv/vmvault
  vmvault init
  vmvault-capture file --vm web01 --disk disk0=/var/lib/libvirt/images/web01.raw
  vmvault snapshots
  vmvault restore web01@latest --disk disk0 --to /tmp/web01.raw`,
	}
	g.Install(root)
	cli.SetVersion(root, fmt.Sprintf("overlay format %d (serve --writable)", overlay.Version))
	root.AddCommand(
		newInitCommand(g), newSnapshotsCommand(g), newShowCommand(g), newRestoreCommand(g),
		newVerifyCommand(g), newForgetCommand(g), newPruneCommand(g), newGCCommand(g), newCompactCommand(g), newCopyCommand(g),
		newStatsCommand(g), newUnlockCommand(g), newServeCommand(g), newOverlayCommand(g),
		newPartitionsCommand(g), newLsCommand(g), newCatCommand(g), newCpCommand(g), newFindCommand(g),
		newTimelineCommand(g), newMountCommand(g), newKeyCommand(g),
	)
	return root
}

func main() { cli.Main(newRootCommand()) }
