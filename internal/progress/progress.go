// Package progress draws the download progress bar the CLIs (dfget,
// dfcache) show on a terminal, and renders byte sizes. It does no I/O but
// writing the bar.
package progress

import (
	"context"
	"fmt"
	"io"
	"math"
	"os"
	"sync/atomic"
	"time"

	"github.com/vbauerster/mpb/v8"
	"github.com/vbauerster/mpb/v8/decor"
	"golang.org/x/term"
)

// IsTerminal reports whether w is a terminal.
func IsTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

const (
	// minRedraw spaces bar updates: progress callbacks come per chunk.
	minRedraw = 50 * time.Millisecond
	// speedTau is the time constant of the speed average.
	speedTau = 3 * time.Second
)

// Bar is a progress bar on a terminal, or nothing (the zero value). Speed and ETA are ours:
// mpb's EWMA ETA rounds the nanoseconds per byte to an integer, which reads
// 0s at any speed above about 500 MB/s.
type Bar struct {
	p     *mpb.Progress
	b     *mpb.Bar
	done  int64
	total int64
	last  time.Time
	start time.Time
	speed atomic.Uint64 // float64 bits, bytes per second
}

// New returns a live bar on w labelled name; use a zero Bar for none.
func New(ctx context.Context, w io.Writer, name string) *Bar {
	now := time.Now()
	br := &Bar{total: -1, last: now, start: now}
	br.p = mpb.NewWithContext(ctx, mpb.WithOutput(w), mpb.WithWidth(40), mpb.WithRefreshRate(150*time.Millisecond))
	br.b = br.p.New(0,
		mpb.BarStyle().Lbound("[").Filler("=").Tip(">").Padding(" ").Rbound("]"),
		mpb.PrependDecorators(
			decor.Name(name, decor.WCSyncSpaceR),
			decor.Counters(decor.SizeB1024(0), "% .1f / % .1f", decor.WCSyncSpace),
		),
		mpb.AppendDecorators(
			decor.Any(func(decor.Statistics) string { return Size(int64(br.bytesPerSec())) + "/s" }, decor.WCSyncSpace),
			decor.OnComplete(decor.Any(br.eta, decor.WCSyncSpace), "done"),
		),
	)
	return br
}

func (b *Bar) bytesPerSec() float64 { return math.Float64frombits(b.speed.Load()) }

func (b *Bar) eta(s decor.Statistics) string {
	v := b.bytesPerSec()
	if s.Total <= 0 || v <= 0 {
		return "ETA -"
	}
	left := time.Duration(float64(s.Total-s.Current) / v * float64(time.Second))
	return "ETA " + left.Round(time.Second).String()
}

// Update reports done bytes of total (-1 when unknown).
func (b *Bar) Update(done, total int64) {
	if b.b == nil {
		return
	}
	now := time.Now()
	dt := now.Sub(b.last)
	if dt < minRedraw && total == b.total && done != total {
		return
	}
	if total >= 0 && total != b.total {
		b.total = total
		b.b.SetTotal(total, false)
	} else if total < 0 && done > b.done {
		b.b.SetTotal(-1, false) // unknown: keep total at current
	}
	switch since := now.Sub(b.start); {
	case since < speedTau && since > 0:
		// Too early for an average over time: take the overall rate.
		b.speed.Store(math.Float64bits(float64(done) / since.Seconds()))
	case done > b.done && dt > 0:
		inst := float64(done-b.done) / dt.Seconds()
		old := b.bytesPerSec()
		w := 1 - math.Exp(-float64(dt)/float64(speedTau))
		b.speed.Store(math.Float64bits(old + w*(inst-old)))
	}
	b.b.SetCurrent(done)
	b.done, b.last = done, now
}

// Finish completes (ok) or abandons the bar and waits for its last render.
func (b *Bar) Finish(ok bool) {
	if b.b == nil {
		return
	}
	if ok {
		b.b.SetTotal(-1, true)
	} else {
		b.b.Abort(true) // drop it: an error or the next attempt's bar follows
	}
	b.p.Wait()
}

// Size renders bytes with binary units.
func Size(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit && exp < 5; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
