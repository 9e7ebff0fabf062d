package main

import "github.com/spf13/pflag"

// skipFlags are --skip-free-space and --skip-swap, which every capture
// command has. They default to on where the source is a VM being backed up
// (vsphere, qemu, libvirt) and to off where it may be a forensic image or
// any export (file, nbd): skipping loses deleted files' data.
type skipFlags struct{ free, swap bool }

func (s *skipFlags) add(f *pflag.FlagSet, on bool) {
	free := "do not read blocks the guest filesystems do not use (they read as zeros; deleted files' data is not kept)"
	if on {
		free += "; =false keeps everything"
	}
	f.BoolVar(&s.free, "skip-free-space", on, free)
	f.BoolVar(&s.swap, "skip-swap", on, "do not read Linux swap and Windows page, swap and hibernation files")
}

// skipHelp explains the flags in a command's long help; defaultOn says
// which default the command has.
func skipHelp(defaultOn bool) string {
	d := `Neither is the default here: such a capture may be a forensic image,
whose free space is evidence.`
	if defaultOn {
		d = `Both are on by default here, as in backup products; give
--skip-free-space=false --skip-swap=false to keep everything (forensics).`
	}
	return `--skip-free-space reads the partition table and the allocation maps of the
filesystems on each disk, in partitions and LVM logical volumes (ext2/3/4
block bitmaps, NTFS $Bitmap, the FAT) and does not read the blocks they do
not use: those read as zeros in the restore point, so data of deleted
files is not kept. Partition tables, space outside partitions and LVs,
unknown filesystems, XFS (its log state is not checked yet), ext
filesystems whose journal needs replaying (quiesce: a frozen ext4 has
none) or that are not clean (a mounted ext2), NTFS volumes that are
unclean or hibernated and dirty FAT volumes are read in full. --skip-swap also skips Linux swap (all but its header)
and NTFS's pagefile.sys, swapfile.sys and hiberfil.sys. ` + d + `
What was skipped, and why a volume was read in full, is recorded with the
restore point (vmvault show, --json, vmvault-skipped.txt in the mount).`
}
