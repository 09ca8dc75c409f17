package daemon

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

func TestSchedulersForConsistentHashing(t *testing.T) {
	d := &Daemon{cfg: DefaultConfig(), log: slog.New(slog.DiscardHandler)}
	defer d.closeSchedulers()
	all := []string{"10.0.0.1:8002", "10.0.0.2:8002", "10.0.0.3:8002", "10.0.0.4:8002"}
	if err := d.setSchedulers(context.Background(), all); err != nil {
		t.Fatal(err)
	}
	home := map[string]string{}
	count := map[string]int{}
	for i := range 4000 {
		id := fmt.Sprintf("task-%d", i)
		ts := d.schedulersFor(id)
		if len(ts) != len(all) {
			t.Fatalf("%d candidates, want every scheduler as a fallback", len(ts))
		}
		seen := map[string]bool{}
		for _, s := range ts {
			seen[s.addr] = true
		}
		if len(seen) != len(all) {
			t.Fatalf("candidates repeat: %v", ts)
		}
		if again := d.schedulersFor(id); again[0].addr != ts[0].addr {
			t.Fatal("the same task went to two schedulers")
		}
		home[id] = ts[0].addr
		count[ts[0].addr]++
	}
	for _, a := range all {
		if count[a] < 700 || count[a] > 1300 {
			t.Fatalf("uneven share: %v", count)
		}
	}
	// One scheduler leaves: only its tasks move, to its fallback.
	gone := all[1]
	if err := d.setSchedulers(context.Background(), slices.Delete(slices.Clone(all), 1, 2)); err != nil {
		t.Fatal(err)
	}
	for id, h := range home {
		now := d.schedulersFor(id)[0].addr
		if h != gone && now != h {
			t.Fatalf("task %s moved from %s to %s though %s stayed", id, h, now, h)
		}
		if now == gone {
			t.Fatalf("task %s still goes to the scheduler that left", id)
		}
	}
}

func TestSchedulerListOnDisk(t *testing.T) {
	cfg := DefaultConfig()
	cfg.DataDir = t.TempDir()
	cfg.Scheduler = "127.0.0.1:8002"
	d := &Daemon{cfg: cfg, log: slog.New(slog.DiscardHandler)}
	if got := d.savedSchedulers(); got != nil {
		t.Fatalf("saved list without a file: %v", got)
	}
	if got := d.withFallback(nil); !slices.Equal(got, []string{"127.0.0.1:8002"}) {
		t.Fatalf("empty list falls back to %v", got)
	}
	if got := d.withFallback([]string{"10.0.0.9:8002"}); !slices.Equal(got, []string{"10.0.0.9:8002"}) {
		t.Fatalf("the manager's list is %v", got)
	}
	if err := os.WriteFile(filepath.Join(cfg.DataDir, schedulersFile), []byte(`{"schedulers":["10.0.0.5:8002"]}`), 0o644); err != nil {
		t.Fatal(err)
	}
	if got := d.savedSchedulers(); !slices.Equal(got, []string{"10.0.0.5:8002"}) {
		t.Fatalf("saved list %v", got)
	}
}

// A change of the scheduler list wakes the cached tasks' announcers (they
// check whether their task moved on the hash ring); setting the same list
// again does not.
func TestRingChangedSignalsListChanges(t *testing.T) {
	d := &Daemon{cfg: DefaultConfig(), log: slog.New(slog.DiscardHandler)}
	defer d.closeSchedulers()
	closed := func(ch <-chan struct{}) bool {
		select {
		case <-ch:
			return true
		default:
			return false
		}
	}
	if err := d.setSchedulers(context.Background(), []string{"10.0.0.1:8002", "10.0.0.2:8002"}); err != nil {
		t.Fatal(err)
	}
	ch := d.ringChanged()
	if err := d.setSchedulers(context.Background(), []string{"10.0.0.2:8002", "10.0.0.1:8002"}); err != nil {
		t.Fatal(err)
	}
	if closed(ch) {
		t.Fatal("the same list (another order) signalled a change")
	}
	if err := d.setSchedulers(context.Background(), []string{"10.0.0.1:8002", "10.0.0.3:8002"}); err != nil {
		t.Fatal(err)
	}
	if !closed(ch) {
		t.Fatal("a new list did not signal a change")
	}
	if closed(d.ringChanged()) {
		t.Fatal("the next change's channel is closed already")
	}
}

// Re-announce delays are drawn in [d/2, d): spread out, never in step.
func TestReconnectDelayJitter(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	const d = time.Second
	seen := map[time.Duration]bool{}
	for range 1000 {
		w := reconnectDelay(r, d)
		if w < d/2 || w >= d {
			t.Fatalf("delay %v outside [%v, %v)", w, d/2, d)
		}
		seen[w/(10*time.Millisecond)] = true
	}
	if len(seen) < 40 {
		t.Fatalf("1000 delays fell in only %d of 50 10-ms buckets: not spread", len(seen))
	}
}

// The upload pacing budget: a declared asymmetric host paces at its usable
// uplink, a declared symmetric one not at all, an undeclared one at what a
// scheduler advised; each only while something downloads.
func TestUploadBudget(t *testing.T) {
	d := &Daemon{cfg: DefaultConfig(), log: slog.New(slog.DiscardHandler)}
	if f, _ := d.uploadBudget(1000, 1000); f != nil {
		t.Fatal("a symmetric declared host is paced")
	}
	f, usable := d.uploadBudget(312500, 3125000)
	if f == nil || usable != 250000 {
		t.Fatalf("2.5/25 Mbit/s declared: pacing %v at %d B/s, want 250000", f != nil, usable)
	}
	if got := f(); got != 0 {
		t.Fatalf("paced at %d with nothing downloading", got)
	}
	d.inflight.Add(1)
	if got := f(); got != 250000 {
		t.Fatalf("paced at %d while downloading, want 250000", got)
	}
	d.adviseUploadBudget(1234) // a declared host keeps its own budget
	if got := f(); got != 250000 {
		t.Fatalf("paced at %d after advice, want the declared 250000", got)
	}

	u, _ := d.uploadBudget(0, 0)
	if u == nil {
		t.Fatal("an undeclared host cannot be paced")
	}
	d.adviseUploadBudget(0)
	if got := u(); got != 0 {
		t.Fatalf("undeclared, no advice: paced at %d", got)
	}
	d.adviseUploadBudget(200000)
	if got := u(); got != 200000 {
		t.Fatalf("undeclared, advised 200000: paced at %d", got)
	}
	d.adviseUploadBudget(-5)
	if got := u(); got != 0 {
		t.Fatalf("advice withdrawn (negative): paced at %d", got)
	}
	d.adviseUploadBudget(200000)
	d.inflight.Add(1)
	d.downloadEnded()
	if got := u(); got != 200000 {
		t.Fatalf("one of two downloads ended: paced at %d, want 200000", got)
	}
	d.downloadEnded()
	if got := u(); got != 0 {
		t.Fatalf("nothing downloading: paced at %d", got)
	}
	// The last download's end dropped the advice: the next download is
	// not paced until a scheduler advises again.
	d.inflight.Add(1)
	if got := u(); got != 0 {
		t.Fatalf("a new download paced at %d by an old scheduler's advice", got)
	}
}
