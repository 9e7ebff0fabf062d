// Command vmvault-capture captures new restore points into a vmvault
// repository: from raw image files and block devices (file), vSphere VMs
// with snapshots and Changed Block Tracking (vsphere), running QEMU VMs
// through QMP and dirty bitmaps (qemu), libvirt domains through libvirt's
// backup API with checkpoints (libvirt), and any NBD export (nbd). Every
// capture after the first of a VM is incremental.
package main

import (
	"os"
	"runtime/debug"

	"github.com/spf13/cobra"

	"github.com/vmvault/vmvault/cmd/internal/cli"
)

func newRootCommand() *cobra.Command {
	g := &cli.Global{}
	root := &cobra.Command{
		Use:   "vmvault-capture",
		Short: "Capture restore points of virtual-machine disks into a vmvault repository",
		Long: `vmvault-capture reads virtual-machine disks and stores them as a new restore
point in a vmvault repository. Only chunks whose content is new are stored;
with a list of changed ranges (changed block tracking) only those ranges are
read. An interrupted capture leaves no restore point and never touches the
existing ones.

` + cli.ExitCodesHelp,
	}
	g.Install(root)
	cli.SetVersion(root)
	root.AddCommand(newFileCommand(g), newVSphereCommand(g), newNBDCommand(g), newQEMUCommand(g), newLibvirtCommand(g))
	return root
}

// memoryLimit is the soft limit of a capture's heap: what a capture holds
// is bounded (packs being stored, the write-behind queue, read-ahead:
// about 280 MiB at most), and the GC's default pacing would let the heap
// grow to twice that between collections.
const memoryLimit = 400 << 20

func main() {
	if os.Getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(memoryLimit)
	}
	cli.Main(newRootCommand())
}
