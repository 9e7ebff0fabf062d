// Command workload builds the deterministic benchmark workload used by
// scripts/bench-capture.sh: a pseudo-random file, a compressible text file,
// and a seeded plan of scattered guest writes inside those files' data
// blocks (found from debugfs "stat" output), plus the matching
// changed-extents list.
//
//	workload files DIR [BYTES]         write DIR/random.bin and DIR/text.txt (300 MB each, or BYTES)
//	workload plan  FSIMG PARTOFF OUT   plan 640 writes of 64 KiB; OUT.writes and OUT.extents
//	workload apply PLAN.writes IMAGE   apply the planned writes to IMAGE
package main

import (
	"bufio"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"regexp"
	"sort"
	"strconv"
	"strings"
)

const (
	defaultFileSize = 300 * 1000 * 1000
	writeSize       = 64 << 10
	writeCount      = 640
	blockSize       = 4096
	seed            = 20261123
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "workload:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	if len(args) == 0 {
		return fmt.Errorf("usage: workload files DIR | plan FSIMG PARTOFF OUT | apply PLAN IMAGE")
	}
	switch {
	case args[0] == "files" && (len(args) == 2 || len(args) == 3):
		size := defaultFileSize
		if len(args) == 3 {
			n, err := strconv.Atoi(args[2])
			if err != nil || n <= 0 {
				return fmt.Errorf("files: size %q: want a positive number of bytes", args[2])
			}
			size = n
		}
		return files(args[1], size)
	case args[0] == "plan" && len(args) == 4:
		off, err := strconv.ParseInt(args[2], 10, 64)
		if err != nil {
			return err
		}
		return plan(args[1], off, args[3])
	case args[0] == "apply" && len(args) == 3:
		return apply(args[1], args[2])
	}
	return fmt.Errorf("bad arguments %q", args)
}

func files(dir string, size int) error {
	rng := rand.NewChaCha8([32]byte{1, 2, 3})
	if err := writeGen(dir+"/random.bin", size, func(b []byte) { _, _ = rng.Read(b) }); err != nil {
		return err
	}
	// Text: lines of words drawn from a fixed vocabulary with a skewed
	// distribution, so it compresses like logs or documents (about 3-4x).
	words := strings.Fields(`the of and to in is that for it as was with be by on not he this are or his from at which
		but have an they you were her she there been one all we their has would when if will out more up said no what
		its about into them can only other time new some could these two may first then do any like my now over such our
		man me even most made after also did many before must through back years where much your way well down should
		because each just those people how too little state good very make world still own see men work long get here
		between both life being under never day same another know while last might us great old year off come since
		against go came right used take three backup restore disk chunk volume snapshot kernel error warning info debug`)
	trng := rand.New(rand.NewPCG(seed, 7))
	var line []byte
	return writeGen(dir+"/text.txt", size, func(b []byte) {
		for i := 0; i < len(b); {
			if len(line) == 0 {
				line = fmt.Appendf(line, "%08d ", trng.IntN(100000000))
				for n := 4 + trng.IntN(12); n > 0; n-- {
					w := words[int(float64(len(words))*trng.Float64()*trng.Float64())]
					line = append(append(line, w...), ' ')
				}
				line[len(line)-1] = '\n'
			}
			n := copy(b[i:], line)
			line = line[n:]
			i += n
		}
	})
}

func writeGen(path string, size int, fill func([]byte)) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	w := bufio.NewWriterSize(f, 1<<20)
	buf := make([]byte, 1<<20)
	for done := 0; done < size; {
		n := min(len(buf), size-done)
		fill(buf[:n])
		if _, err := w.Write(buf[:n]); err != nil {
			return err
		}
		done += n
	}
	if err := w.Flush(); err != nil {
		return err
	}
	return f.Close()
}

// extentRE matches debugfs extent entries: (lstart[-lend]):pstart[-pend].
var extentRE = regexp.MustCompile(`\((\d+)(?:-(\d+))?\):(\d+)(?:-(\d+))?`)

type blockRun struct{ start, n int64 } // physical blocks

func fileRuns(fsimg, path string) ([]blockRun, error) {
	out, err := exec.Command("debugfs", "-R", "stat "+path, fsimg).Output()
	if err != nil {
		return nil, fmt.Errorf("debugfs stat %s: %w", path, err)
	}
	text := string(out)
	i := strings.Index(text, "EXTENTS:")
	if i < 0 {
		return nil, fmt.Errorf("debugfs stat %s: no EXTENTS section", path)
	}
	var runs []blockRun
	for _, m := range extentRE.FindAllStringSubmatch(text[i:], -1) {
		ps, _ := strconv.ParseInt(m[3], 10, 64)
		pe := ps
		if m[4] != "" {
			pe, _ = strconv.ParseInt(m[4], 10, 64)
		}
		runs = append(runs, blockRun{ps, pe - ps + 1})
	}
	return runs, nil
}

func plan(fsimg string, partOff int64, out string) error {
	var runs []blockRun
	for _, p := range []string{"/random.bin", "/text.txt"} {
		r, err := fileRuns(fsimg, p)
		if err != nil {
			return err
		}
		runs = append(runs, r...)
	}
	perWrite := int64(writeSize / blockSize)
	var total int64
	for _, r := range runs {
		if r.n >= perWrite {
			total += r.n - perWrite + 1
		}
	}
	rng := rand.New(rand.NewPCG(seed, 9))
	taken := map[int64]bool{}
	var offs []int64
	for len(offs) < writeCount {
		k := rng.Int64N(total)
		for _, r := range runs {
			if r.n < perWrite {
				continue
			}
			if k < r.n-perWrite+1 {
				off := partOff + (r.start+k)*blockSize
				if !taken[off/writeSize] && !taken[off/writeSize+1] {
					taken[off/writeSize] = true
					offs = append(offs, off)
				}
				break
			}
			k -= r.n - perWrite + 1
		}
	}
	sort.Slice(offs, func(i, j int) bool { return offs[i] < offs[j] })
	wf, err := os.Create(out + ".writes")
	if err != nil {
		return err
	}
	ef, err := os.Create(out + ".extents")
	if err != nil {
		return err
	}
	for i, off := range offs {
		fmt.Fprintf(wf, "%d\t%d\t%d\n", off, writeSize, i)
		fmt.Fprintf(ef, "%d\t%d\n", off, writeSize)
	}
	if err := wf.Close(); err != nil {
		return err
	}
	return ef.Close()
}

func apply(planFile, image string) error {
	b, err := os.ReadFile(planFile)
	if err != nil {
		return err
	}
	f, err := os.OpenFile(image, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	buf := make([]byte, writeSize)
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		var off, n, id int64
		if _, err := fmt.Sscanf(line, "%d\t%d\t%d", &off, &n, &id); err != nil {
			return fmt.Errorf("plan line %q: %w", line, err)
		}
		if n <= 0 || n > writeSize || off < 0 {
			return fmt.Errorf("plan line %q: bad range", line)
		}
		var key [32]byte
		copy(key[:], fmt.Sprintf("write-%d", id))
		_, _ = rand.NewChaCha8(key).Read(buf[:n])
		if _, err := f.WriteAt(buf[:n], off); err != nil {
			return err
		}
	}
	return f.Close()
}
