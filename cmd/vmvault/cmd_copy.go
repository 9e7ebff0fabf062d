package main

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sort"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/vmvault/vmvault/cmd/internal/cli"
	"github.com/vmvault/vmvault/repo"
)

type copyOptions struct {
	from, to  string
	vms, tags []string
	latest    int
	since     string
	dryRun    bool
	limitRate string
	json      bool
}

func newCopyCommand(g *cli.Global) *cobra.Command {
	var o copyOptions
	cmd := &cobra.Command{
		Use:   "copy [RESTORE_POINT...] (--from LOCATION | --to LOCATION)",
		Short: "Copy restore points to another repository (offsite copies for disaster recovery)",
		Long: `Copy restore points from one repository to another: --from names the source
and the destination is --repo (pull), or --to names the destination and the
source is --repo (push); give both to name both. Without arguments every
restore point of the source is copied; name restore points (ids, VM@latest,
VM@TIME) or choose them with --vm, --tag, --since and --latest.

Only chunks the destination lacks are sent. Between repositories whose chunk
ids agree (the same chunk size, and unencrypted or sharing keys: make the
destination with 'vmvault init --like SOURCE'), chunks go across as they are
stored, compressed and encrypted, and a copied restore point has the same id
on both sides; a host with only capture keys can push. Otherwise (different
keys, or chunk sizes) each disk is read and encoded anew at the destination,
deduplicated against the copy of the VM's previous restore point; the copy
then has its own id and records its origin. Every chunk is checked against
its id on the way.

The destination commits as captures do (chunks, then indexes, then the
restore point): an interrupted copy leaves no partial restore point, and a
rerun sends only what did not arrive. Restore points the destination has
already are left alone; ones whose source data is damaged are reported with
disk and offset and not copied, the rest are. The destination keeps its own
retention: copy with --since or --latest so restore points the
destination's prune removed are not copied back.

Passwords: the repository named by --repo uses VMVAULT_PASSWORD_FILE or
_COMMAND; the one named by --from (--to) uses VMVAULT_FROM_PASSWORD_FILE or
_COMMAND (VMVAULT_TO_…) when set, else the same. Location options
(--repo-ca-file, …) apply to both.

Exit codes: 0 copied, 3 some restore points not copied (damaged source
data), 4 nothing to do, 1 the copy failed (the destination keeps what it
committed).`,
		Example: `  vmvault copy --repo /srv/vmvault --to s3:https://s3.dr.example.com/vmvault-site2 --since 48h
  vmvault copy --from s3:https://s3.example.com/vmvault --repo /srv/dr web01@latest
  vmvault copy --to /mnt/usb/vmvault --vm db01 --latest 3 --limit-rate 20MiB --dry-run`,
		RunE: func(cmd *cobra.Command, args []string) error { return runCopy(cmd, g, &o, args) },
	}
	f := cmd.Flags()
	f.StringVar(&o.from, "from", "", "source repository location (the destination is --repo)")
	f.StringVar(&o.to, "to", "", "destination repository location (the source is --repo)")
	f.StringSliceVar(&o.vms, "vm", nil, "only restore points of these VMs (repeatable)")
	f.StringSliceVar(&o.tags, "tag", nil, "only restore points with all these tags (repeatable)")
	f.IntVar(&o.latest, "latest", 0, "only the N newest restore points of each VM (after the other selectors)")
	f.StringVar(&o.since, "since", "", "only restore points taken since this time (2026-11-23T10:00, UTC) or within this long (48h, 7d)")
	f.BoolVarP(&o.dryRun, "dry-run", "n", false, "print what would be copied and sent, copy nothing")
	f.StringVar(&o.limitRate, "limit-rate", "", "send at most this many stored bytes per second (e.g. 20MiB), on average")
	f.BoolVar(&o.json, "json", false, "print the result as JSON")
	return cmd
}

func runCopy(cmd *cobra.Command, g *cli.Global, o *copyOptions, args []string) error {
	ctx := cmd.Context()
	if o.from == "" && o.to == "" {
		return cli.Usagef("copy needs --from LOCATION (pull into --repo) or --to LOCATION (push from --repo)")
	}
	var limit int64
	if o.limitRate != "" {
		n, err := cli.ParseSize(strings.TrimSuffix(o.limitRate, "/s"))
		if err != nil || n <= 0 {
			return cli.Usagef("--limit-rate %q: want bytes per second, e.g. 20MiB", o.limitRate)
		}
		limit = n
	}
	if o.latest < 0 {
		return cli.Usagef("--latest %d: want a positive number", o.latest)
	}
	var since time.Time
	if o.since != "" {
		if d, err := cli.ParseDuration(o.since); err == nil {
			since = time.Now().Add(-d)
		} else if t, err := repo.ParseTime(o.since); err == nil {
			since = t
		} else {
			return cli.Usagef("--since %q: want a time (2026-11-23T10:00) or a duration (48h, 7d)", o.since)
		}
	}
	open := func(flagValue, side string) (*repo.Repository, error) {
		if flagValue == "" {
			return g.OpenRepo(ctx, repo.Options{})
		}
		loc, err := g.LocationOf(flagValue)
		if err != nil {
			return nil, err
		}
		return g.OpenRepoAt(ctx, loc, side, repo.Options{})
	}
	src, err := open(o.from, "FROM")
	if err != nil {
		return fmt.Errorf("source: %w", err)
	}
	defer src.Close()
	dst, err := open(o.to, "TO")
	if err != nil {
		return fmt.Errorf("destination: %w", err)
	}
	defer dst.Close()

	rps, bad, err := src.ListRestorePoints(ctx)
	if err != nil {
		return fmt.Errorf("source: %w", err)
	}
	for _, b := range bad {
		fmt.Fprintf(cmd.ErrOrStderr(), "warning: source restore point %s cannot be read: not copied: %v\n", b.Name, b.Err)
	}
	sel, err := selectForCopy(rps, args, o, since)
	if err != nil {
		return err
	}
	if len(sel) == 0 {
		return fmt.Errorf("%w: no restore point of %s matches", cli.ErrNothingToDo, src.Backend().Location())
	}
	mode, reason := repo.CopyMode(src, dst)
	if mode == repo.CopyReencode {
		slog.Info("chunks are encoded anew at the destination", "why", reason)
	}
	p := &repo.CopyProgress{}
	stop := cli.ShowProgressLine(g.Quiet, time.Minute, func(e time.Duration) string { return copyProgressLine(p, e) })
	start := time.Now()
	rep, err := repo.Copy(ctx, src, dst, repo.CopyOptions{RestorePoints: sel, DryRun: o.dryRun, LimitRate: limit, Progress: p, LockWait: g.LockWait})
	stop()
	elapsed := time.Since(start)
	if rep != nil {
		w := cmd.OutOrStdout()
		if o.json {
			if jerr := cli.PrintJSON(w, copyJSON(rep, src, dst, elapsed, err)); jerr != nil && err == nil {
				err = jerr
			}
		} else {
			printCopyReport(g.Summary(w), w, rep, elapsed)
		}
	}
	switch {
	case err != nil:
		return err
	case len(rep.Skipped) > 0:
		return fmt.Errorf("%w: %d of %d restore points not copied (damaged source data)", cli.ErrDamage, len(rep.Skipped), len(sel))
	case len(rep.Copied) == 0:
		return fmt.Errorf("%w: the destination has all %d restore points", cli.ErrNothingToDo, len(rep.Present))
	}
	return nil
}

// selectForCopy picks the source restore points: named ones or all, then
// the filters, oldest first.
func selectForCopy(rps []*repo.RestorePoint, args []string, o *copyOptions, since time.Time) ([]*repo.RestorePoint, error) {
	sel := rps
	if len(args) > 0 {
		sel = nil
		for _, a := range args {
			rp, err := repo.Resolve(rps, a)
			if err != nil {
				return nil, err
			}
			sel = append(sel, rp)
		}
	}
	sel = filterRPs(sel, o.vms, o.tags)
	if !since.IsZero() {
		var keep []*repo.RestorePoint
		for _, rp := range sel {
			if !rp.Time.Before(since) {
				keep = append(keep, rp)
			}
		}
		sel = keep
	}
	sort.SliceStable(sel, func(i, j int) bool { return sel[i].Time.Before(sel[j].Time) })
	if o.latest > 0 {
		perVM := map[string]int{}
		var keep []*repo.RestorePoint
		for i := len(sel) - 1; i >= 0; i-- {
			if perVM[sel[i].VM] < o.latest {
				perVM[sel[i].VM]++
				keep = append(keep, sel[i])
			}
		}
		for i, j := 0, len(keep)-1; i < j; i, j = i+1, j-1 {
			keep[i], keep[j] = keep[j], keep[i]
		}
		sel = keep
	}
	return sel, nil
}

func copyProgressLine(p *repo.CopyProgress, elapsed time.Duration) string {
	done, total := p.Done.Load(), p.Total.Load()
	line := fmt.Sprintf("copy: restore points %d/%d, chunks %d/%d, data %s / %s, sent %s, %s/s",
		p.RestorePointsDone.Load(), p.RestorePoints.Load(), p.ChunksDone.Load(), p.Chunks.Load(),
		cli.Bytes(done), cli.Bytes(total), cli.Bytes(p.Sent.Load()), cli.Bytes(int64(float64(p.Sent.Load())/max(elapsed.Seconds(), 0.001))))
	if eta := cli.ETA(done, total, elapsed); eta != "" {
		line += "  ETA " + eta
	}
	return line
}

func printCopyReport(summary, w io.Writer, rep *repo.CopyReport, elapsed time.Duration) {
	verb := "copied"
	if rep.DryRun {
		verb = "would copy"
	}
	for _, c := range rep.Copied {
		id := c.Source.ID.Short()
		if c.Copy != nil && c.Copy.ID != c.Source.ID {
			id += " as " + c.Copy.ID.Short()
		}
		fmt.Fprintf(summary, "%s %s %s %s\n", verb, id, c.Source.VM, c.Source.Time.UTC().Format("2006-01-02 15:04:05"))
	}
	for _, d := range rep.Damage {
		where := fmt.Sprintf("offset %d", d.Offset)
		if d.Offset < 0 {
			where = "index"
		}
		fmt.Fprintf(w, "not copied: restore point %s (%s) disk %s %s: %s\n", d.RestorePoint.ID.Short(), d.RestorePoint.VM, d.Disk, where, d.Problem)
	}
	how := "as stored"
	if rep.Mode == repo.CopyReencode {
		how = "encoded anew (" + rep.Reason + ")"
	}
	if rep.DryRun {
		if rep.Mode == repo.CopyReencode {
			fmt.Fprintf(summary, "would copy %d restore points (%d there already), %s: reading %s of data; what is new at the destination shows only after hashing\n",
				len(rep.Copied), len(rep.Present), how, cli.Bytes(rep.BytesRead))
			return
		}
		fmt.Fprintf(summary, "would copy %d restore points (%d there already), %s: %d chunks, %s stored (%s of data); %d chunks there already\n",
			len(rep.Copied), len(rep.Present), how, rep.ChunksSent, cli.Bytes(rep.BytesSent), cli.Bytes(rep.DataBytesSent), rep.ChunksPresent)
		return
	}
	rate := float64(rep.BytesSent) / max(elapsed.Seconds(), 0.001)
	fmt.Fprintf(summary, "copied %d restore points (%d there already, %d not copied), %s: sent %d chunks, %s in %.1fs (%s/s); read %s\n",
		len(rep.Copied), len(rep.Present), len(rep.Skipped), how, rep.ChunksSent, cli.Bytes(rep.BytesSent), elapsed.Seconds(),
		cli.Bytes(int64(rate)), cli.Bytes(rep.BytesRead))
}

type copyJSONPoint struct {
	Source string    `json:"source"`
	Copy   string    `json:"copy,omitempty"`
	VM     string    `json:"vm"`
	Time   time.Time `json:"time"`
}

type copyJSONDamage struct {
	RestorePoint string `json:"restore_point"`
	Disk         string `json:"disk"`
	Offset       int64  `json:"offset"` // -1: the disk's index
	Problem      string `json:"problem"`
}

func copyJSON(rep *repo.CopyReport, src, dst *repo.Repository, elapsed time.Duration, err error) any {
	out := struct {
		From          string           `json:"from"`
		To            string           `json:"to"`
		Mode          string           `json:"mode"`
		Reason        string           `json:"reason,omitempty"`
		DryRun        bool             `json:"dry_run"`
		Result        string           `json:"result"` // copied, partial, nothing, failed
		Error         string           `json:"error,omitempty"`
		Copied        []copyJSONPoint  `json:"copied"`
		Present       []string         `json:"present"`
		Skipped       []string         `json:"skipped"`
		Damage        []copyJSONDamage `json:"damage,omitempty"`
		ChunksSent    int64            `json:"chunks_sent"`
		BytesSent     int64            `json:"bytes_sent"`
		DataBytesSent int64            `json:"data_bytes_sent"`
		ChunksPresent int64            `json:"chunks_present"`
		BytesRead     int64            `json:"bytes_read"`
		Seconds       float64          `json:"duration_seconds"`
	}{From: src.Backend().Location(), To: dst.Backend().Location(), Mode: rep.Mode, Reason: rep.Reason, DryRun: rep.DryRun,
		Copied: []copyJSONPoint{}, Present: []string{}, Skipped: []string{},
		ChunksSent: rep.ChunksSent, BytesSent: rep.BytesSent, DataBytesSent: rep.DataBytesSent, ChunksPresent: rep.ChunksPresent,
		BytesRead: rep.BytesRead, Seconds: elapsed.Seconds()}
	for _, c := range rep.Copied {
		p := copyJSONPoint{Source: c.Source.ID.String(), VM: c.Source.VM, Time: c.Source.Time}
		if c.Copy != nil {
			p.Copy = c.Copy.ID.String()
		}
		out.Copied = append(out.Copied, p)
	}
	for _, rp := range rep.Present {
		out.Present = append(out.Present, rp.ID.String())
	}
	for _, rp := range rep.Skipped {
		out.Skipped = append(out.Skipped, rp.ID.String())
	}
	for _, d := range rep.Damage {
		out.Damage = append(out.Damage, copyJSONDamage{RestorePoint: d.RestorePoint.ID.String(), Disk: d.Disk, Offset: d.Offset, Problem: d.Problem})
	}
	switch {
	case err != nil:
		out.Result, out.Error = "failed", err.Error()
		if errors.Is(err, cli.ErrNothingToDo) {
			out.Result = "nothing"
		}
	case len(rep.Skipped) > 0:
		out.Result = "partial"
	case len(rep.Copied) == 0:
		out.Result = "nothing"
	default:
		out.Result = "copied"
	}
	return out
}
