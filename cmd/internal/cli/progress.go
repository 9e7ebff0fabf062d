package cli

import (
	"fmt"
	"io"
	"os"
	"time"

	"golang.org/x/term"

	"github.com/vmvault/vmvault/repo"
)

// ShowProgress prints a progress line (bytes, rate, ETA) to stderr every
// 250 ms while stderr is a terminal and quiet is false. The returned
// function stops it and clears the line.
func ShowProgress(label string, p *repo.Progress, quiet bool) func() {
	if quiet || !term.IsTerminal(int(os.Stderr.Fd())) {
		return func() {}
	}
	return startProgress(os.Stderr, label, p, 250*time.Millisecond)
}

// ShowProgressLine is ShowProgress with the caller's line (given the time
// since the start). When stderr is not a terminal (a scheduled job) and
// logEvery is positive, the line is logged that often instead.
func ShowProgressLine(quiet bool, logEvery time.Duration, line func(elapsed time.Duration) string) func() {
	if quiet {
		return func() {}
	}
	if !term.IsTerminal(int(os.Stderr.Fd())) {
		if logEvery <= 0 {
			return func() {}
		}
		return ticker(logEvery, func(e time.Duration) { fmt.Fprintln(os.Stderr, line(e)) }, func() {})
	}
	return ticker(250*time.Millisecond, func(e time.Duration) { fmt.Fprint(os.Stderr, "\r\033[K"+line(e)) },
		func() { fmt.Fprint(os.Stderr, "\r\033[K") })
}

// ticker calls tick every interval until the returned function is called,
// which calls end.
func ticker(every time.Duration, tick func(time.Duration), end func()) func() {
	stop := make(chan struct{})
	done := make(chan struct{})
	start := time.Now()
	go func() {
		defer close(done)
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-stop:
				end()
				return
			case <-t.C:
				tick(time.Since(start))
			}
		}
	}()
	return func() {
		close(stop)
		<-done
	}
}

// ETA is the time left at rate for what remains of total, or "".
func ETA(done, total int64, elapsed time.Duration) string {
	rate := float64(done) / max(elapsed.Seconds(), 0.001)
	if rate <= 0 || total <= done {
		return ""
	}
	return (time.Duration(float64(total-done) / rate * float64(time.Second))).Round(time.Second).String()
}

func startProgress(w io.Writer, label string, p *repo.Progress, every time.Duration) func() {
	stop := make(chan struct{})
	done := make(chan struct{})
	start := time.Now()
	go func() {
		defer close(done)
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-stop:
				fmt.Fprint(w, "\r\033[K")
				return
			case <-t.C:
				fmt.Fprint(w, "\r\033[K"+progressLine(label, p.Done.Load(), p.Total.Load(), time.Since(start)))
			}
		}
	}()
	return func() {
		close(stop)
		<-done
	}
}

func progressLine(label string, done, total int64, elapsed time.Duration) string {
	rate := float64(done) / max(elapsed.Seconds(), 0.001)
	line := fmt.Sprintf("%s %s / %s", label, Bytes(done), Bytes(total))
	if total > 0 {
		line += fmt.Sprintf(" (%.1f%%)", 100*float64(done)/float64(total))
	}
	line += fmt.Sprintf("  %s/s", Bytes(int64(rate)))
	if rate > 0 && total > done {
		eta := time.Duration(float64(total-done) / rate * float64(time.Second))
		line += "  ETA " + eta.Round(time.Second).String()
	}
	return line
}
