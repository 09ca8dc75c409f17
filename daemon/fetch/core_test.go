package fetch

import (
	"errors"
	"math"
	"math/rand/v2"
	"reflect"
	"slices"
	"testing"
	"time"

	"github.com/damselfly-io/damselfly/core"
)

const ps = 256 << 10

// startWith starts a core on a task of n pieces, all trusted, with parents
// holding every piece and serving at rates (bytes/s; 0: stalled).
func startWith(t *testing.T, cfg Config, n int, rates map[string]float64, parents ...Parent) (*Core, *net) {
	t.Helper()
	c := testCore(cfg)
	w := newNet(t, c, rates)
	w.step(EvStart{Length: int64(n) * ps, PieceSize: ps, AllTrusted: true})
	w.step(EvParents{Parents: parents})
	for _, p := range parents {
		w.step(EvParentPieces{Parent: p.ID, Pieces: pieces(n)})
	}
	return c, w
}

func TestDownloadFromOneParent(t *testing.T) {
	c := testCore(Config{})
	w := newNet(t, c, map[string]float64{"a": 10 * ps})
	acts := w.step(EvStart{Length: 10*ps - 5, PieceSize: ps, AllTrusted: true})
	if len(find[ActRequest](acts)) != 0 {
		t.Fatal("requested before any parent")
	}
	acts = w.step(EvParents{Parents: []Parent{{ID: "a"}, {ID: "me"}}})
	if got := find[ActConnect](acts); len(got) != 1 || got[0].Parent.ID != "a" {
		t.Fatalf("connects %v, want a only (never itself)", got)
	}
	acts = w.step(EvParentPieces{Parent: "a", Pieces: pieces(10)})
	if got := find[ActRequest](acts); len(got) != 4 {
		t.Fatalf("%d requests to one parent, want per_parent_requests (4)", len(got))
	}
	w.run(1000)
	if got := w.from["a"]; got != 10 {
		t.Fatalf("%d pieces from a, want 10", got)
	}
	var reported []uint32
	for _, r := range find[ActReport](w.acts) {
		for _, p := range r.Pieces {
			reported = append(reported, p.Piece)
			if p.Parent != "a" || p.Cost <= 0 {
				t.Fatalf("report %+v", p)
			}
		}
	}
	slices.Sort(reported)
	if !reflect.DeepEqual(reported, pieces(10)) {
		t.Fatalf("reported %v", reported)
	}
	if _, last := core.PieceRange(9, 10*ps-5, ps); c.PeerBytes() != 9*ps+last {
		t.Fatalf("peer bytes %d", c.PeerBytes())
	}
	// Done: nothing more happens.
	if acts := c.Step(w.now, EvTick{}); len(acts) != 0 {
		t.Fatalf("actions after completion: %v", acts)
	}
}

// A 10× slower parent gets about a tenth of the requests, and the download
// ends about when the two rates together allow.
func TestPiecesSplitByRates(t *testing.T) {
	const n = 220
	_, w := startWith(t, Config{}, n, map[string]float64{"fast": 100 * ps, "slow": 10 * ps}, Parent{ID: "fast"}, Parent{ID: "slow"})
	w.run(10000)
	share := float64(w.from["slow"]) / float64(w.from["slow"]+w.from["fast"])
	if share < 0.04 || share > 0.15 {
		t.Fatalf("slow parent delivered %d of %d pieces (%.2f), want about 1/11", w.from["slow"], n, share)
	}
	ideal := float64(n) / 110 // seconds, both uplinks busy to the end
	if took := w.now.Sub(t0).Seconds(); took > ideal*1.1 {
		t.Fatalf("took %.2fs, the two rates allow %.2fs", took, ideal)
	}
}

// Without measured rates, declared capacities steer the first requests: a
// parent declared 10× slower gets fewer at once.
func TestDeclaredRatesBeforeMeasurement(t *testing.T) {
	c := testCore(Config{})
	c.Step(t0, EvStart{Length: 64 * ps, PieceSize: ps, AllTrusted: true})
	c.Step(t0, EvParents{Parents: []Parent{{ID: "fast", UploadBps: 100e6}, {ID: "slow", UploadBps: 10e6}}})
	c.Step(t0, EvParentPieces{Parent: "fast", Pieces: pieces(64)})
	c.Step(t0, EvParentPieces{Parent: "slow", Pieces: pieces(64)})
	if f, s := len(c.InFlight("fast")), len(c.InFlight("slow")); f != 4 || s != 1 {
		t.Fatalf("in flight: fast %d, slow %d; want 4 and 1", f, s)
	}
}

// The last piece held up by a slow parent is asked of an idle fast one
// too; the first copy wins and the other request is cancelled.
func TestEndgameDuplicatesSlowPiece(t *testing.T) {
	// the slow one takes 2 s a piece
	c, w := startWith(t, Config{}, 8, map[string]float64{"fast": 100 * ps, "slow": ps / 2}, Parent{ID: "fast"}, Parent{ID: "slow"})
	w.run(1000)
	if w.dups == 0 {
		t.Fatal("no duplicate request in the endgame")
	}
	if took := w.now.Sub(t0); took > time.Second {
		t.Fatalf("took %v: the slow parent's piece was waited for", took)
	}
	if c.nreq != 0 || len(c.reqs) != 0 {
		t.Fatalf("%d requests left in flight", c.nreq)
	}
}

// A parent whose stream breaks: its outstanding pieces are free for the
// other parent, which takes up the freed capacity in the same step.
func TestDeadParentPiecesMoveAtOnce(t *testing.T) {
	c, w := startWith(t, Config{PerParentRequests: 8, ConcurrentPieces: 8}, 32, nil, Parent{ID: "a"}, Parent{ID: "b"})
	held := c.InFlight("a")
	if len(held) == 0 {
		t.Fatal("nothing in flight at a")
	}
	acts := w.step(EvParentGone{Parent: "a", Err: errors.New("EOF")})
	cancels := find[ActCancel](acts)
	if len(cancels) != len(held) {
		t.Fatalf("%d cancels, want %d", len(cancels), len(held))
	}
	for _, r := range find[ActRequest](acts) {
		if r.Parent != "b" {
			t.Fatalf("request to %s", r.Parent)
		}
	}
	if len(c.InFlight("b")) != 8 || c.nreq != 8 {
		t.Fatalf("b has %v in flight of %d", c.InFlight("b"), c.nreq)
	}
	for _, n := range held {
		if rs := c.reqs[n]; len(rs) > 0 && rs[0].p.ID != "b" {
			t.Fatalf("piece %d still waits for a", n)
		}
	}
	if len(find[ActReschedule](acts)) != 0 {
		t.Fatal("asked the scheduler although another parent serves")
	}
	// A late answer for a cancelled request changes nothing.
	if acts := c.Step(w.now, EvPieceFailed{Parent: "a", Piece: held[0], Kind: KindConnLost}); len(find[ActPieceFailed](acts)) != 0 {
		t.Fatal("reported a failure of a cancelled request")
	}
}

// The only parent gone: the peer waits ParentGoneGrace for the scheduler
// (which sees the dead peer itself) before asking, and does not ask at all
// when parents came meanwhile.
func TestParentGoneWaitsForScheduler(t *testing.T) {
	c, w := startWith(t, Config{}, 8, nil, Parent{ID: "a"})
	acts := w.step(EvParentGone{Parent: "a", Err: errors.New("EOF")})
	if len(find[ActReschedule](acts)) != 0 {
		t.Fatal("rescheduled at once")
	}
	if dl := c.NextDeadline(); !dl.Equal(w.now.Add(time.Second)) {
		t.Fatalf("deadline %v, want the grace", dl.Sub(w.now))
	}
	w.now = w.now.Add(999 * time.Millisecond)
	if acts := w.step(EvTick{}); len(find[ActReschedule](acts)) != 0 {
		t.Fatal("rescheduled within the grace")
	}
	w.now = w.now.Add(time.Millisecond)
	acts = w.step(EvTick{})
	if rs := find[ActReschedule](acts); len(rs) != 1 || !reflect.DeepEqual(rs[0].Bad, []string{"a"}) {
		t.Fatalf("after the grace: %v", rs)
	}

	c, w = startWith(t, Config{}, 8, nil, Parent{ID: "a"})
	w.step(EvParentGone{Parent: "a", Err: errors.New("EOF")})
	w.step(EvParents{Parents: []Parent{{ID: "b"}}})
	w.now = w.now.Add(time.Second)
	if acts := w.step(EvTick{}); len(find[ActReschedule](acts)) != 0 {
		t.Fatal("asked although the scheduler already gave parents")
	}
	_ = c
}

// A stalled parent (connected, sending nothing): after its stall timeout
// it is dropped, its other pieces go to the other parent at once, and the
// scheduler is asked for a replacement at once, naming it.
func TestStalledParent(t *testing.T) {
	c, w := startWith(t, Config{MinStall: time.Second, MaxStall: 3 * time.Second}, 200, map[string]float64{"ok": 20 * ps, "stuck": 0}, Parent{ID: "ok"}, Parent{ID: "stuck"})
	w.run(10000)
	rs := find[ActReschedule](w.acts)
	if len(rs) != 1 || !reflect.DeepEqual(rs[0].Bad, []string{"stuck"}) || rs[0].Reason != "parent stalled" {
		t.Fatalf("reschedules %+v", rs)
	}
	if w.from["ok"] != 200 {
		t.Fatalf("ok delivered %d", w.from["ok"])
	}
	// ok was busy all along: 10 s of transfer
	if took := w.now.Sub(t0); took > 10*time.Second+100*time.Millisecond {
		t.Fatalf("took %v", took)
	}
	if fs := find[ActPieceFailed](w.acts); len(fs) != 1 || fs[0].Kind != KindTimeout {
		t.Fatalf("piece failures %+v: want the one that timed out", fs)
	}
	_ = c
}

// The stall timeout follows the parent's measured rate, within bounds.
func TestStallTimeoutFollowsRate(t *testing.T) {
	c := testCore(Config{MinStall: time.Second, MaxStall: 30 * time.Second})
	p := &parent{}
	if d := c.stallTimeout(p); d != 30*time.Second {
		t.Fatalf("unmeasured: %v", d)
	}
	p.rate.Observe(10*64<<10*4, int64(2*time.Second), 1) // 2 s for ten chunks per request
	if d := c.stallTimeout(p); d != 2*time.Second {
		t.Fatalf("measured: %v, want 2s", d)
	}
	p.rate.Observe(1<<40, int64(time.Second), 1)
	if d := c.stallTimeout(p); d != time.Second {
		t.Fatalf("fast: %v, want the minimum", d)
	}
}

// A parent failing repeatedly (not stalled) is dropped after
// ParentFailures failures in a row, and the scheduler asked.
func TestParentFailingRepeatedly(t *testing.T) {
	c, w := startWith(t, Config{ParentFailures: 3}, 16, nil, Parent{ID: "a"}, Parent{ID: "b"})
	for i := 0; i < 3; i++ {
		fl := c.InFlight("a")
		if len(fl) == 0 {
			t.Fatalf("failure %d: nothing in flight at a", i)
		}
		acts := w.step(EvPieceFailed{Parent: "a", Piece: fl[0], Kind: KindError, Err: errors.New("500")})
		rs := find[ActReschedule](acts)
		if (i < 2) != (len(rs) == 0) {
			t.Fatalf("failure %d: reschedules %v", i+1, rs)
		}
	}
	if _, ok := c.parents["a"]; ok {
		t.Fatal("a still a parent")
	}
}

// A corrupt piece marks its parent bad: dropped at once, reported as
// corrupt, never taken back from the scheduler; the piece is asked of
// another parent.
func TestCorruptPiece(t *testing.T) {
	c, w := startWith(t, Config{}, 2, nil, Parent{ID: "liar"}, Parent{ID: "b"})
	n := c.InFlight("liar")[0]
	acts := w.step(EvPieceFailed{Parent: "liar", Piece: n, Kind: KindCorrupt, Err: core.ErrDigestMismatch})
	fs := find[ActPieceFailed](acts)
	if len(fs) != 1 || !fs[0].Corrupt || fs[0].Parent != "liar" {
		t.Fatalf("failures %+v", fs)
	}
	if ds := find[ActDisconnect](acts); len(ds) != 1 || ds[0].Parent != "liar" {
		t.Fatalf("disconnects %+v", ds)
	}
	acts = w.step(EvParents{Parents: []Parent{{ID: "liar"}, {ID: "b"}}})
	if len(find[ActConnect](acts)) != 0 {
		t.Fatal("took the liar back")
	}
	if !slices.Contains(c.InFlight("b"), n) {
		t.Fatalf("piece %d not asked of b: %v", n, c.InFlight("b"))
	}
}

// No progress of the swarm for swarm_timeout: the missing pieces from the
// origin, one range per run.
func TestStalledSwarmGoesToOrigin(t *testing.T) {
	c, w := startWith(t, Config{SwarmTimeout: 20 * time.Second, PerParentRequests: 8}, 8, nil, Parent{ID: "a"})
	for _, n := range []uint32{0, 1, 4} {
		w.step(EvPieceDone{Parent: "a", Piece: n, Bytes: ps, Start: t0, End: t0})
	}
	w.step(EvFlush{})
	// a never answers the rest, and stays connected without news.
	progress := w.now
	if dl := c.NextDeadline(); !dl.Equal(progress.Add(20 * time.Second)) {
		t.Fatalf("deadline in %v", dl.Sub(progress))
	}
	w.now = progress.Add(20*time.Second - time.Nanosecond)
	if acts := w.step(EvTick{}); len(find[ActStartOrigin](acts)) != 0 {
		t.Fatal("went to the origin early")
	}
	w.now = progress.Add(20 * time.Second)
	acts := w.step(EvTick{})
	so := find[ActStartOrigin](acts)
	if len(so) != 1 || so[0].Reason != "swarm_stalled" || !so[0].Fallback {
		t.Fatalf("origin %+v", so)
	}
	want := []Range{{2, 3}, {5, 7}}
	if !reflect.DeepEqual(so[0].Ranges, want) {
		t.Fatalf("ranges %v, want %v", so[0].Ranges, want)
	}
	if c.Mode() != ModeOrigin || len(find[ActDisconnect](acts)) != 1 {
		t.Fatalf("mode %v", c.Mode())
	}
	// the origin brings the rest
	for _, n := range []uint32{2, 3, 5, 6, 7} {
		w.step(EvOriginPiece{Piece: n, Bytes: ps})
	}
	if w.done {
		t.Fatal("complete while the origin fetch runs")
	}
	acts = w.step(EvOriginDone{})
	if len(find[ActComplete](acts)) != 1 {
		t.Fatalf("not complete: %v", acts)
	}
	if c.OriginBytes() != 5*ps || c.PeerBytes() != 3*ps {
		t.Fatalf("origin %d peer %d", c.OriginBytes(), c.PeerBytes())
	}
}

// A parent storing new pieces is progress of the swarm; a relay alone
// is not.
func TestParentPiecesAreSwarmProgress(t *testing.T) {
	c, w := startWith(t, Config{}, 8, nil, Parent{ID: "a"})
	w.now = t0.Add(time.Hour)
	w.step(EvParentPieces{Parent: "a", Relaying: []uint32{1}})
	if c.lastProgress.Equal(w.now) {
		t.Fatal("a relay announcement counted as progress")
	}
	w.step(EvParentPieces{Parent: "a", Pieces: []uint32{1}})
	if !c.lastProgress.Equal(w.now) {
		t.Fatal("a parent's new piece did not count as progress")
	}
}

// Where the origin is not allowed, or there is none, falling back fails
// the download with a clear error.
func TestOriginFallbackRules(t *testing.T) {
	cases := []struct {
		cfg  Config
		ev   Event
		want error
		orig string
	}{
		{Config{}, EvSchedulerLost{Err: errors.New("gone")}, nil, "scheduler_lost"},
		{Config{}, EvFail{Reason: "x"}, nil, "scheduler_failed"},
		{Config{NoOrigin: true}, EvSchedulerLost{}, core.ErrUnavailable, ""},
		{Config{Cache: true}, EvSchedulerLost{}, core.ErrUnavailable, ""},
		{Config{Cache: true}, EvBackToSource{}, core.ErrNotFound, ""},
		{Config{Cache: true}, EvFail{}, core.ErrNotFound, ""},
		{Config{FailIsFinal: true}, EvFail{Reason: "level1"}, core.ErrUnavailable, ""},
		{Config{NoOrigin: true, Local: true}, EvSchedulerLost{}, nil, "scheduler_lost"},
		{Config{}, EvBackToSource{}, nil, "scheduled"},
	}
	for i, tc := range cases {
		c := testCore(tc.cfg)
		c.Step(t0, EvStart{Length: -1})
		acts := c.Step(t0, tc.ev)
		fs := find[ActFailed](acts)
		so := find[ActStartOrigin](acts)
		if tc.want != nil {
			if len(fs) != 1 || !errors.Is(fs[0].Err, tc.want) || len(so) != 0 {
				t.Errorf("case %d: failed %v origin %v, want %v", i, fs, so, tc.want)
			}
			continue
		}
		if len(fs) != 0 || len(so) != 1 || so[0].Reason != tc.orig || so[0].Ranges != nil {
			t.Errorf("case %d: failed %v origin %+v, want the whole content for %s", i, fs, so, tc.orig)
		}
	}
}

// Sent to the origin by the scheduler: the shape it learns goes to the
// scheduler, pieces are reported with no parent, the download completes
// when the fetch ends.
func TestBackToSource(t *testing.T) {
	c := testCore(Config{ReportBatch: 2})
	w := newNet(t, c, nil)
	w.step(EvStart{Length: -1})
	acts := w.step(EvBackToSource{Reason: "first"})
	if so := find[ActStartOrigin](acts); len(so) != 1 || so[0].Fallback || so[0].Ranges != nil {
		t.Fatalf("origin %+v", so)
	}
	acts = w.step(EvOriginShape{Length: 3 * ps, PieceSize: ps})
	if m := find[ActSendMeta](acts); len(m) != 1 || m[0].Length != 3*ps {
		t.Fatalf("meta %+v", m)
	}
	var reports []Report
	for n := uint32(0); n < 3; n++ {
		acts = w.step(EvOriginPiece{Piece: n, Bytes: ps, Cost: time.Millisecond})
		for _, r := range find[ActReport](acts) {
			reports = append(reports, r.Pieces...)
		}
	}
	if len(reports) != 2 {
		t.Fatalf("reports %v: want a batch of 2", reports)
	}
	acts = w.step(EvOriginDone{})
	for _, r := range find[ActReport](acts) {
		reports = append(reports, r.Pieces...)
	}
	if len(reports) != 3 || reports[2].Parent != "" || len(find[ActComplete](acts)) != 1 {
		t.Fatalf("reports %v, actions %v", reports, acts)
	}
}

// An origin fetch that ends short fails the download.
func TestOriginEndsShort(t *testing.T) {
	c := testCore(Config{})
	c.Step(t0, EvStart{Length: 3 * ps, PieceSize: ps, Origin: "no_scheduler"})
	c.Step(t0, EvOriginPiece{Piece: 0, Bytes: ps})
	acts := c.Step(t0, EvOriginDone{})
	if fs := find[ActFailed](acts); len(fs) != 1 || !errors.Is(fs[0].Err, core.ErrOrigin) {
		t.Fatalf("%v", acts)
	}
	c = testCore(Config{})
	c.Step(t0, EvStart{Length: 3 * ps, PieceSize: ps, Origin: "no_scheduler"})
	boom := errors.New("boom")
	if fs := find[ActFailed](c.Step(t0, EvOriginDone{Err: boom})); len(fs) != 1 || !errors.Is(fs[0].Err, boom) {
		t.Fatal("origin error not the download's")
	}
}

// A whole content failing its digest after pieces from peers: reported,
// fetched again from the origin once; a second failure ends the download.
func TestContentCorrupt(t *testing.T) {
	c, w := startWith(t, Config{}, 4, map[string]float64{"a": 100 * ps}, Parent{ID: "a"})
	w.run(100)
	bad := errors.New("content is sha256:x: " + core.ErrDigestMismatch.Error())
	acts := w.step(EvContentCorrupt{Err: bad})
	if len(find[ActContentCorrupt](acts)) != 1 || len(find[ActReset](acts)) != 1 {
		t.Fatalf("%v", acts)
	}
	so := find[ActStartOrigin](acts)
	if len(so) != 1 || so[0].Reason != "content_corrupt" || !reflect.DeepEqual(so[0].Ranges, []Range{{0, 3}}) {
		t.Fatalf("origin %+v", so)
	}
	w.done = false
	for n := uint32(0); n < 4; n++ {
		w.step(EvOriginPiece{Piece: n, Bytes: ps})
	}
	if acts := w.step(EvOriginDone{}); len(find[ActComplete](acts)) != 1 {
		t.Fatalf("not complete again: %v", acts)
	}
	acts = w.step(EvContentCorrupt{Err: bad})
	if fs := find[ActFailed](acts); len(fs) != 1 || len(find[ActStartOrigin](acts)) != 0 {
		t.Fatalf("second failure: %v", acts)
	}
	_ = c
}

// A not-found answer forgets the piece at that parent, unless the piece was
// announced again after the request went out; a parent that says it is
// done holds every piece.
func TestNotFoundRacingAnnouncement(t *testing.T) {
	c := testCore(Config{})
	c.Step(t0, EvStart{Length: 8 * ps, PieceSize: ps, AllTrusted: true})
	c.Step(t0, EvParents{Parents: []Parent{{ID: "a"}}})
	p := c.parents["a"]
	c.Step(t0, EvParentPieces{Parent: "a", Relaying: []uint32{3}})
	c.Step(t0, EvPieceFailed{Parent: "a", Piece: 3, Kind: KindNotFound})
	if p.holds(3) {
		t.Fatal("piece 3 still expected at a parent that said it has not got it")
	}
	c.Step(t0, EvParentPieces{Parent: "a", Relaying: []uint32{5}})
	if !slices.Contains(c.InFlight("a"), 5) {
		t.Fatal("5 not requested")
	}
	c.Step(t0, EvParentPieces{Parent: "a", Pieces: []uint32{5}}) // held now, before the answer
	c.Step(t0, EvPieceFailed{Parent: "a", Piece: 5, Kind: KindNotFound})
	if !p.holds(5) {
		t.Fatal("a stale not-found erased a newer announcement of piece 5")
	}
	c.Step(t0, EvParentPieces{Parent: "a", Pieces: []uint32{7}, Done: true})
	for n := uint32(0); n < 8; n++ {
		if !p.holds(n) {
			t.Fatalf("parent done but piece %d not expected there", n)
		}
	}
}

// Rarest first, ties broken at random: peers start with different pieces.
func TestPickRarestFirstWithRandomTies(t *testing.T) {
	common := pieces(8)
	c := testCore(Config{})
	c.Step(t0, EvStart{Length: 9 * ps, PieceSize: ps, AllTrusted: true})
	c.Step(t0, EvParents{Parents: []Parent{{ID: "a"}, {ID: "b"}}})
	c.Step(t0, EvParentPieces{Parent: "b", Pieces: common})
	acts := c.Step(t0, EvParentPieces{Parent: "a", Pieces: append(slices.Clone(common), 8)})
	if rq := find[ActRequest](acts); len(rq) == 0 || rq[0].Piece != 8 {
		t.Fatalf("first request %v, want the rare piece 8", rq)
	}
	firsts := map[uint32]bool{}
	for i := range 50 {
		c := testCore(Config{Rand: rand.New(rand.NewPCG(uint64(i), 1))})
		c.Step(t0, EvStart{Length: 8 * ps, PieceSize: ps, AllTrusted: true})
		c.Step(t0, EvParents{Parents: []Parent{{ID: "a"}}})
		rq := find[ActRequest](c.Step(t0, EvParentPieces{Parent: "a", Pieces: common}))
		firsts[rq[0].Piece] = true
	}
	if len(firsts) < 3 {
		t.Fatalf("50 cores all started with pieces %v: ties are not random", firsts)
	}
}

// Streaming: in order while a parent has room.
func TestPickSequentialWhenStreaming(t *testing.T) {
	c := testCore(Config{})
	c.Step(t0, EvStart{Length: 64 * ps, PieceSize: ps, AllTrusted: true})
	c.Step(t0, EvStreaming{On: true})
	c.Step(t0, EvParents{Parents: []Parent{{ID: "a"}, {ID: "b"}}})
	c.Step(t0, EvParentPieces{Parent: "b", Pieces: pieces(64)[10:]})
	c.Step(t0, EvParentPieces{Parent: "a", Pieces: pieces(64)})
	var got []uint32
	got = append(got, c.InFlight("a")...)
	got = append(got, c.InFlight("b")...)
	slices.Sort(got)
	if want := []uint32{0, 1, 2, 3, 10, 11, 12, 13}; !reflect.DeepEqual(got, want) {
		t.Fatalf("in flight %v, want %v", got, want)
	}
}

// A piece whose digest is not trusted yet is never requested.
func TestPickNeedsTrustedDigest(t *testing.T) {
	c := testCore(Config{})
	c.Step(t0, EvStart{Length: 4 * ps, PieceSize: ps, Trusted: []uint32{2}})
	c.Step(t0, EvParents{Parents: []Parent{{ID: "a"}}})
	acts := c.Step(t0, EvParentPieces{Parent: "a", Pieces: pieces(4)})
	if rq := find[ActRequest](acts); len(rq) != 1 || rq[0].Piece != 2 {
		t.Fatalf("requests %v, want piece 2 only", rq)
	}
	acts = c.Step(t0, EvTaskInfo{Length: 4 * ps, PieceSize: ps, Trusted: []uint32{0}})
	if rq := find[ActRequest](acts); len(rq) != 1 || rq[0].Piece != 0 {
		t.Fatalf("after task info: %v", rq)
	}
}

// A large task: every piece requested exactly once, picks stay cheap, and
// a piece only one parent holds still goes early.
func TestPickLargeTask(t *testing.T) {
	const n = 30000
	c := testCore(Config{})
	c.Step(t0, EvStart{Length: -1})
	c.Step(t0, EvParents{Parents: []Parent{{ID: "a"}, {ID: "b"}, {ID: "c"}}})
	all := slices.DeleteFunc(pieces(n), func(x uint32) bool { return x == 777 })
	c.Step(t0, EvParentPieces{Parent: "b", Pieces: all})
	c.Step(t0, EvParentPieces{Parent: "c", Pieces: all})
	c.Step(t0, EvParentPieces{Parent: "a", Pieces: append(all, 777)})
	queue := find[ActRequest](c.Step(t0, EvTaskInfo{Length: n * ps, PieceSize: ps, AllTrusted: true}))
	seen := map[uint32]bool{}
	rareAt, i := -1, 0
	for len(queue) > 0 {
		r := queue[0]
		queue = queue[1:]
		if seen[r.Piece] {
			t.Fatalf("piece %d requested twice", r.Piece)
		}
		seen[r.Piece] = true
		if r.Piece == 777 {
			rareAt = i
		}
		i++
		acts := c.Step(t0, EvPieceDone{Parent: r.Parent, Piece: r.Piece, Bytes: ps, Start: t0, End: t0})
		for _, x := range find[ActCancel](acts) { // endgame duplicates
			queue = slices.DeleteFunc(queue, func(q ActRequest) bool { return q.Piece == x.Piece && q.Parent == x.Parent })
		}
		queue = append(queue, find[ActRequest](acts)...)
	}
	if len(seen) != n {
		t.Fatalf("%d of %d requested", len(seen), n)
	}
	// With samples of pickSample among n, the rare piece is found within a
	// few dozen picks almost surely; far later means rarity is ignored.
	if rareAt < 0 || rareAt > n/4 {
		t.Fatalf("the rare piece went at request %d of %d", rareAt, n)
	}
}

// A parent serving four requests one after the other at d each delivers at
// size/d, though each request's own start-to-end time is up to 4d.
func TestParentRateCountsDeliveryNotQueueing(t *testing.T) {
	d := 40 * time.Millisecond
	p := &parent{}
	for i := 1; i <= 4; i++ {
		cost := p.deliveryCost(t0, t0.Add(time.Duration(i)*d))
		if cost != d {
			t.Fatalf("piece %d: cost %v, want %v", i, cost, d)
		}
		p.rate.Observe(ps, cost.Nanoseconds(), 0.3)
	}
	if want := float64(ps) / d.Seconds(); math.Abs(p.rate.BytesPerSec()-want)/want > 1e-9 {
		t.Fatalf("rate %.0f, want %.0f", p.rate.BytesPerSec(), want)
	}
	start := t0.Add(10 * d)
	if cost := p.deliveryCost(start, start.Add(2*d)); cost != 2*d {
		t.Fatalf("after idling: cost %v", cost)
	}
	if cost := p.deliveryCost(t0.Add(9*d), t0.Add(11*d)); cost != 2*d {
		t.Fatalf("out of order: cost %v", cost)
	}
	// Four requests started together that complete at the same instant
	// (the simulator's flows sharing a link): the time counts once.
	q := &parent{}
	var sum time.Duration
	for range 4 {
		sum += q.deliveryCost(t0, t0.Add(4*d))
	}
	if sum > 4*d+4*time.Microsecond {
		t.Fatalf("four pieces completing together cost %v in all, want about %v", sum, 4*d)
	}
}

// The same events at the same times give the same actions.
func TestDeterministic(t *testing.T) {
	run := func() []Action {
		c := testCore(Config{Rand: rand.New(rand.NewPCG(3, 4))})
		w := newNet(t, c, map[string]float64{"a": 40 * ps, "b": 13 * ps, "c": 7 * ps})
		w.step(EvStart{Length: 100 * ps, PieceSize: ps, AllTrusted: true})
		w.step(EvParents{Parents: []Parent{{ID: "a"}, {ID: "b"}, {ID: "c", Seed: true}}})
		for _, id := range []string{"a", "b", "c"} {
			w.step(EvParentPieces{Parent: id, Pieces: pieces(100)})
		}
		w.run(10000)
		return w.acts
	}
	if a, b := run(), run(); !reflect.DeepEqual(a, b) {
		t.Fatal("two runs differ")
	}
}

// A timer is asked for whenever the next deadline changes.
func TestSetTimer(t *testing.T) {
	c := testCore(Config{SwarmTimeout: 20 * time.Second})
	acts := c.Step(t0, EvStart{Length: 4 * ps, PieceSize: ps})
	if st := find[ActSetTimer](acts); len(st) != 1 || !st[0].At.Equal(t0.Add(2*time.Second+1)) {
		t.Fatalf("timer %v: want the no-parents ask", st)
	}
	acts = c.Step(t0, EvParents{Parents: []Parent{{ID: "a"}}})
	if st := find[ActSetTimer](acts); len(st) != 1 || !st[0].At.Equal(t0.Add(20*time.Second)) {
		t.Fatalf("timer %v: want the swarm timeout", st)
	}
	if acts := c.Step(t0, EvWait{}); len(find[ActSetTimer](acts)) != 0 {
		t.Fatal("timer repeated")
	}
}

// A late answer to a cancelled request never settles a newer request for
// the same piece at a parent of the same ID (it came back).
func TestLateAnswerOfCancelledRequest(t *testing.T) {
	c := testCore(Config{})
	c.Step(t0, EvStart{Length: ps, PieceSize: ps, AllTrusted: true})
	c.Step(t0, EvParents{Parents: []Parent{{ID: "a"}}})
	old := find[ActRequest](c.Step(t0, EvParentPieces{Parent: "a", Pieces: []uint32{0}}))
	acts := c.Step(t0, EvParentGone{Parent: "a"})
	if cs := find[ActCancel](acts); len(cs) != 1 || cs[0].Req != old[0].Req {
		t.Fatalf("cancels %v", cs)
	}
	c.Step(t0, EvParents{Parents: []Parent{{ID: "a"}}})
	nw := find[ActRequest](c.Step(t0, EvParentPieces{Parent: "a", Pieces: []uint32{0}}))
	if len(nw) != 1 || nw[0].Req == old[0].Req {
		t.Fatalf("new request %v", nw)
	}
	acts = c.Step(t0, EvPieceFailed{Parent: "a", Piece: 0, Kind: KindConnLost, Req: old[0].Req})
	if len(acts) != 0 || !slices.Contains(c.InFlight("a"), 0) {
		t.Fatalf("the old request's failure ended the new one: %v", acts)
	}
}

// The origin fetch ends while a piece it skipped is still on its way from
// a parent (its answer queued behind the origin's): the core waits for it
// instead of failing; when that request fails after all, the origin is
// asked for the rest.
func TestOriginDoneWhileParentRequestInFlight(t *testing.T) {
	c, w := startWith(t, Config{}, 4, nil, Parent{ID: "a"})
	fl := c.InFlight("a")
	if len(fl) != 4 {
		t.Fatalf("in flight %v", fl)
	}
	w.step(EvSchedulerLost{})
	for _, n := range fl[1:] {
		w.step(EvOriginPiece{Piece: n, Bytes: ps})
	}
	acts := w.step(EvOriginDone{})
	if len(find[ActFailed](acts)) != 0 || len(find[ActComplete](acts)) != 0 {
		t.Fatalf("at origin done: %v", acts)
	}
	acts = w.step(EvPieceDone{Parent: "a", Piece: fl[0], Bytes: ps, Start: t0, End: t0})
	if len(find[ActComplete](acts)) != 1 {
		t.Fatalf("not complete: %v", acts)
	}

	c, w = startWith(t, Config{}, 4, nil, Parent{ID: "a"})
	fl = c.InFlight("a")
	w.step(EvSchedulerLost{})
	for _, n := range fl[1:] {
		w.step(EvOriginPiece{Piece: n, Bytes: ps})
	}
	w.step(EvOriginDone{})
	acts = w.step(EvPieceFailed{Parent: "a", Piece: fl[0], Kind: KindConnLost})
	so := find[ActStartOrigin](acts)
	if len(so) != 1 || !reflect.DeepEqual(so[0].Ranges, []Range{{fl[0], fl[0]}}) {
		t.Fatalf("rest from the origin: %+v", so)
	}
	w.step(EvOriginPiece{Piece: fl[0], Bytes: ps})
	if acts := w.step(EvOriginDone{}); len(find[ActComplete](acts)) != 1 {
		t.Fatalf("not complete: %v", acts)
	}
}

// The endgame waits for the end: while pieces nobody was asked for remain,
// an idle fast parent does not copy a piece a slow one is bringing; once
// every missing piece is requested, it does.
func TestEndgameOnlyAtTheEnd(t *testing.T) {
	c := testCore(Config{})
	c.Step(t0, EvStart{Length: 8 * ps, PieceSize: ps, AllTrusted: true})
	c.Step(t0, EvParents{Parents: []Parent{{ID: "fast", UploadBps: 100 * ps}, {ID: "slow", UploadBps: ps}}})
	if rq := find[ActRequest](c.Step(t0, EvParentPieces{Parent: "slow", Pieces: []uint32{0}})); len(rq) != 1 || rq[0].Parent != "slow" {
		t.Fatalf("requests %v", rq)
	}
	now := t0.Add(100 * time.Millisecond)
	if rq := find[ActRequest](c.Step(now, EvParentPieces{Parent: "fast", Pieces: []uint32{0}})); len(rq) != 0 {
		t.Fatalf("copied piece 0 with 7 pieces not asked for yet: %v", rq)
	}
	queue := find[ActRequest](c.Step(now, EvParentPieces{Parent: "fast", Pieces: pieces(8)[1:]}))
	var dup []ActRequest
	for len(queue) > 0 {
		r := queue[0]
		queue = queue[1:]
		if r.Piece == 0 {
			dup = append(dup, r)
			continue
		}
		now = now.Add(10 * time.Millisecond)
		queue = append(queue, find[ActRequest](c.Step(now, EvPieceDone{Parent: r.Parent, Piece: r.Piece, Bytes: ps, Start: now.Add(-10 * time.Millisecond), End: now, Req: r.Req}))...)
	}
	if len(dup) != 1 || dup[0].Parent != "fast" {
		t.Fatalf("endgame requests %v, want piece 0 of fast", dup)
	}
}

// A parent with a share (ShareBps) is paced to it: the next request not
// before the last piece's bytes at the share have elapsed, however fast its
// link is (a link that serves each request in well under that time so has
// one in flight at a time); an unpaced parent beside it keeps
// its pipelined requests. Time comes from the virtual network: no sleeps.
func TestPacedParentKeepsToItsShare(t *testing.T) {
	const n = 200
	// Every link carries 100 pieces/s; the scheduler booked 10 and 20
	// pieces/s of the two paced parents' uplinks for this peer.
	rates := map[string]float64{"main": 100 * ps, "p10": 100 * ps, "p20": 100 * ps}
	_, w := startWith(t, Config{}, n, rates,
		Parent{ID: "main"}, Parent{ID: "p10", ShareBps: 10 * ps}, Parent{ID: "p20", ShareBps: 20 * ps})
	w.run(100000)
	if w.failed != nil {
		t.Fatal(w.failed)
	}
	took := w.now.Sub(t0).Seconds()
	for id, share := range map[string]float64{"p10": 10, "p20": 20} {
		if w.maxOut[id] != 1 {
			t.Errorf("%s: %d requests in flight at once, want 1 (paced)", id, w.maxOut[id])
		}
		iss := w.issued[id]
		if len(iss) < 2 {
			t.Fatalf("%s: %d requests, want it used", id, len(iss))
		}
		gap := time.Duration(float64(time.Second) / share)
		for i := 1; i < len(iss); i++ {
			if d := iss[i].Sub(iss[i-1]); d < gap {
				t.Fatalf("%s: requests %d and %d %v apart, want at least %v", id, i-1, i, d, gap)
			}
		}
		// Never more than its share over the download (one piece of slack
		// for the first request).
		if got := float64(w.from[id]); got > share*took+1 {
			t.Errorf("%s: %v pieces in %.2fs, above its share of %v/s", id, got, took, share)
		}
	}
	if w.maxOut["main"] < 2 {
		t.Errorf("unpaced parent had at most %d requests in flight, want pipelining", w.maxOut["main"])
	}
	// All three used: about n/(100+10+20) s, not n/100.
	if ideal := float64(n) / 130; took > ideal*1.15 {
		t.Errorf("took %.2fs, the three rates allow %.2fs", took, ideal)
	}
}

// A paced parent whose uplink gives each connection less than the share
// (its full-rate children keep several requests in flight, and the uplink
// is shared per connection) still gives the share: the peer's requests
// follow the share's clock and several are in flight at once. Asked one at
// a time, a 20 pieces/s share gave 5.
func TestPacedParentShareMadeUpBySeveralRequests(t *testing.T) {
	const n = 400
	c := testCore(Config{})
	w := newNet(t, c, map[string]float64{"main": 100 * ps, "paced": 5 * ps})
	w.flows = map[string]bool{"paced": true} // 5 pieces/s per connection
	w.step(EvStart{Length: n * ps, PieceSize: ps, AllTrusted: true})
	w.step(EvParents{Parents: []Parent{{ID: "main"}, {ID: "paced", ShareBps: 20 * ps}}})
	w.step(EvParentPieces{Parent: "main", Pieces: pieces(n)})
	w.step(EvParentPieces{Parent: "paced", Pieces: pieces(n)})
	w.run(100000)
	if w.failed != nil {
		t.Fatal(w.failed)
	}
	took := w.now.Sub(t0).Seconds()
	got := float64(w.from["paced"]) / took
	if got < 0.8*20 {
		t.Errorf("paced parent gave %.1f pieces/s (%d in %.2fs), want about its share of 20", got, w.from["paced"], took)
	}
	if float64(w.from["paced"]) > 20*took+1 {
		t.Errorf("paced parent gave %d pieces in %.2fs, above its share of 20/s", w.from["paced"], took)
	}
	if m := w.maxOut["paced"]; m < 2 || m > 4 {
		t.Errorf("paced parent had at most %d requests in flight, want 2 to per_parent_requests (4)", m)
	}
	iss := w.issued["paced"]
	for i := 1; i < len(iss); i++ {
		if d := iss[i].Sub(iss[i-1]); d < time.Second/20 {
			t.Fatalf("paced requests %d and %d %v apart, want at least one piece at the share (50ms)", i-1, i, d)
		}
	}
}

// A peer fed only by paced parents asks each again when its pacing allows:
// a timer is set for it, and the download ends at the sum of the shares.
func TestPacedParentsOnlyWakeByTimer(t *testing.T) {
	const n = 60
	rates := map[string]float64{"a": 100 * ps, "b": 100 * ps}
	c, w := startWith(t, Config{}, n, rates, Parent{ID: "a", ShareBps: 5 * ps}, Parent{ID: "b", ShareBps: 15 * ps})
	if len(c.InFlight("a")) != 1 || len(c.InFlight("b")) != 1 {
		t.Fatalf("in flight a %d, b %d; want 1 each", len(c.InFlight("a")), len(c.InFlight("b")))
	}
	w.run(100000)
	took := w.now.Sub(t0).Seconds()
	if ideal := float64(n) / 20; took < ideal*0.9 || took > ideal*1.15 {
		t.Fatalf("took %.2fs; paced at 5+15 pieces/s it takes about %.2fs", took, ideal)
	}
	if w.from["b"] < 2*w.from["a"] {
		t.Fatalf("a gave %d pieces, b %d: want about 1:3 by their shares", w.from["a"], w.from["b"])
	}
}

// A new parent set may change a parent's share (or clear it: unpaced).
func TestShareUpdatedByNewParents(t *testing.T) {
	c := testCore(Config{})
	c.Step(t0, EvStart{Length: 64 * ps, PieceSize: ps, AllTrusted: true})
	c.Step(t0, EvParents{Parents: []Parent{{ID: "a", ShareBps: ps}}})
	c.Step(t0, EvParentPieces{Parent: "a", Pieces: pieces(64)})
	if got := len(c.InFlight("a")); got != 1 {
		t.Fatalf("paced: %d in flight, want 1", got)
	}
	c.Step(t0, EvParents{Parents: []Parent{{ID: "a"}}})
	if got := len(c.InFlight("a")); got != 4 {
		t.Fatalf("unpaced again: %d in flight, want 4", got)
	}
}

// An executor whose timer fires a little before the paced parent's time
// (its clock, or rounding) finds the parent ready: the core does not
// wait for a timer it will not set again.
func TestPacedParentTimerFiredEarly(t *testing.T) {
	c := testCore(Config{})
	c.Step(t0, EvStart{Length: 8 * ps, PieceSize: ps, AllTrusted: true})
	c.Step(t0, EvParents{Parents: []Parent{{ID: "a", ShareBps: 10 * ps}}})
	acts := c.Step(t0, EvParentPieces{Parent: "a", Pieces: pieces(8)})
	reqs := find[ActRequest](acts)
	if len(reqs) != 1 {
		t.Fatalf("%d requests, want 1", len(reqs))
	}
	end := t0.Add(20 * time.Millisecond)
	c.Step(end, EvPieceDone{Parent: "a", Piece: reqs[0].Piece, Bytes: ps, Start: t0, End: end, Req: reqs[0].Req})
	c.Step(end.Add(60*time.Millisecond), EvTick{}) // the report's timer
	at := c.NextDeadline()
	if want := t0.Add(100 * time.Millisecond); !at.Equal(want) {
		t.Fatalf("next deadline %v after start, want %v (one piece at the share)", at.Sub(t0), want.Sub(t0))
	}
	if got := find[ActRequest](c.Step(at.Add(-10*time.Microsecond), EvTick{})); len(got) != 1 {
		t.Fatalf("a timer fired 10µs early: %d requests, want the next one", len(got))
	}
}

// A paced parent is asked only for pieces it holds whole: a piece it is
// still receiving (relaying) would keep a second connection on its uplink
// for as long as the piece takes to arrive. An unpaced parent relays.
func TestPacedParentNotAskedForRelayedPieces(t *testing.T) {
	c := testCore(Config{})
	c.Step(t0, EvStart{Length: 8 * ps, PieceSize: ps, AllTrusted: true})
	c.Step(t0, EvParents{Parents: []Parent{{ID: "paced", ShareBps: 10 * ps}, {ID: "main"}}})
	if got := find[ActRequest](c.Step(t0, EvParentPieces{Parent: "paced", Relaying: []uint32{0, 1}})); len(got) != 0 {
		t.Fatalf("paced parent asked for a relayed piece: %v", got)
	}
	if got := find[ActRequest](c.Step(t0, EvParentPieces{Parent: "paced", Pieces: []uint32{1}})); len(got) != 1 || got[0].Piece != 1 || got[0].Parent != "paced" {
		t.Fatalf("paced parent holding piece 1 whole: requests %v, want piece 1 of it", got)
	}
	if got := find[ActRequest](c.Step(t0, EvParentPieces{Parent: "main", Relaying: []uint32{0}})); len(got) != 1 || got[0].Parent != "main" {
		t.Fatalf("unpaced parent relaying piece 0: requests %v, want it asked", got)
	}
}

// A relay's parent that left aborts the pieces the relay was passing on:
// its children lose every relayed piece in flight at once. That is not the
// relay's failure: it keeps its children, who forget those pieces there
// until it announces them again (it fetches them anew) and ask for them
// then. Only a long run of such losses with nothing delivered counts
// against it.
func TestRelayLosingPiecesUpstreamIsKept(t *testing.T) {
	c := testCore(Config{ParentFailures: 3, PerParentRequests: 8, ConcurrentPieces: 8})
	c.Step(t0, EvStart{Length: 64 * ps, PieceSize: ps, AllTrusted: true})
	c.Step(t0, EvParents{Parents: []Parent{{ID: "relay"}}})
	acts := c.Step(t0, EvParentPieces{Parent: "relay", Relaying: []uint32{0, 1, 2, 3, 4}})
	asked := find[ActRequest](acts)
	if len(asked) != 5 {
		t.Fatalf("%d requests for 5 relayed pieces", len(asked))
	}
	p := c.parents["relay"]
	for i, r := range asked {
		kind := KindConnLost
		if i%2 == 1 {
			kind = KindNotFound
		}
		acts := c.Step(t0, EvPieceFailed{Parent: "relay", Piece: r.Piece, Req: r.Req, Kind: kind, Err: errors.New("unexpected EOF")})
		if rs := find[ActReschedule](acts); len(rs) != 0 {
			t.Fatalf("loss %d of a relayed piece rescheduled: %+v", i+1, rs)
		}
		if len(find[ActPieceFailed](acts)) != 1 {
			t.Fatalf("loss %d not reported", i+1)
		}
		if p.holds(r.Piece) {
			t.Fatalf("piece %d still expected at the relay that lost it", r.Piece)
		}
	}
	if _, ok := c.parents["relay"]; !ok {
		t.Fatal("the relay was dropped for its parent's failure")
	}
	// Fetched anew upstream: announced again, asked again, delivered.
	acts = c.Step(t0, EvParentPieces{Parent: "relay", Relaying: []uint32{0}})
	again := find[ActRequest](acts)
	if len(again) != 1 || again[0].Piece != 0 {
		t.Fatalf("re-announced piece 0: requests %+v", again)
	}
	c.Step(t0.Add(time.Second), EvPieceDone{Parent: "relay", Piece: 0, Req: again[0].Req, Bytes: ps, Start: t0, End: t0.Add(time.Second)})
	if p.relayLosses != 0 {
		t.Fatalf("relay losses %d after a delivery", p.relayLosses)
	}

	// A parent that keeps announcing pieces it never delivers is dropped:
	// past the budget its losses count, and ParentFailures of them ask the
	// scheduler.
	resched := 0
	for i := 0; i < relayLossBudget+8 && resched == 0; i++ {
		n := uint32(10 + i)
		acts := c.Step(t0, EvParentPieces{Parent: "relay", Relaying: []uint32{n}})
		rq := find[ActRequest](acts)
		if len(rq) != 1 {
			t.Fatalf("round %d: requests %+v", i, rq)
		}
		acts = c.Step(t0, EvPieceFailed{Parent: "relay", Piece: n, Req: rq[0].Req, Kind: KindConnLost, Err: errors.New("EOF")})
		if len(find[ActReschedule](acts)) > 0 {
			resched = i + 1
		}
	}
	if want := relayLossBudget + 3; resched != want {
		t.Fatalf("rescheduled after %d losses in a row, want %d", resched, want)
	}
	// Losing a piece it held whole is its own failure, as before.
	c2, w := startWith(t, Config{ParentFailures: 1}, 8, nil, Parent{ID: "a"}, Parent{ID: "b"})
	fl := c2.InFlight("a")
	if rs := find[ActReschedule](w.step(EvPieceFailed{Parent: "a", Piece: fl[0], Kind: KindConnLost, Err: errors.New("EOF")})); len(rs) != 1 {
		t.Fatalf("a whole piece lost: reschedules %+v", rs)
	}
}

// A parent the scheduler replaced keeps its requests in flight, but the
// pieces a slow one still owes are asked of the new parent too: they are
// the oldest this peer lacks, and a relay's own children wait on them.
func TestReplacedSlowParentsPiecesRescued(t *testing.T) {
	// "slow" takes 2 s a piece, "fast" 10 ms.
	c, w := startWith(t, Config{PerParentRequests: 4}, 16, map[string]float64{"slow": ps / 2, "fast": 100 * ps}, Parent{ID: "slow"})
	for !w.done && w.from["slow"] == 0 {
		w.run1()
	}
	owed := c.InFlight("slow")
	if len(owed) != 4 {
		t.Fatalf("%d requests at the slow parent after its first piece, want 4", len(owed))
	}
	replaced := w.now
	w.step(EvParents{Parents: []Parent{{ID: "fast"}}})
	w.step(EvParentPieces{Parent: "fast", Pieces: pieces(16)})
	// Once the new parent's first piece shows its rate, what the slow one
	// owes is asked of it too, first as its requests end.
	for w.from["fast"] < 4 {
		w.run1()
	}
	for _, n := range owed {
		if !c.isHeld(n) && len(c.reqs[n]) == 1 && c.reqs[n][0].p.ID == "slow" {
			t.Fatalf("piece %d still owed by the replaced slow parent only, after 4 pieces from the new one", n)
		}
	}
	w.run(1000)
	if took := w.now.Sub(replaced); took > time.Second {
		t.Fatalf("done %v after the replacement: the replaced parent's pieces were waited for", took)
	}
	if w.from["slow"] != 1 {
		t.Fatalf("the slow parent delivered %d pieces, want only its first", w.from["slow"])
	}
	if c.nreq != 0 || len(c.reqs) != 0 || len(c.orphans) != 0 {
		t.Fatalf("%d requests, %d orphan parents left", c.nreq, len(c.orphans))
	}
}

// A fast parent the scheduler moved away (to balance the tree) finishes
// what it was asked: nothing is asked twice.
func TestReplacedFastParentFinishesItsPieces(t *testing.T) {
	c, w := startWith(t, Config{PerParentRequests: 4}, 16, map[string]float64{"a": 100 * ps, "b": 100 * ps}, Parent{ID: "a"})
	for !w.done && w.from["a"] == 0 {
		w.run1()
	}
	owed := c.InFlight("a")
	if len(owed) == 0 {
		t.Fatal("nothing in flight at the first parent")
	}
	w.step(EvParents{Parents: []Parent{{ID: "b"}}})
	w.step(EvParentPieces{Parent: "b", Pieces: pieces(16)})
	w.run(1000)
	if w.dups != 0 {
		t.Fatalf("%d duplicate requests", w.dups)
	}
	if w.from["a"] != 1+len(owed) {
		t.Fatalf("the first parent delivered %d pieces, want %d", w.from["a"], 1+len(owed))
	}
}

// A content's source (the seed fetching it from the origin) that brings
// its pieces slowly stretches the swarm timeout to sourcePatience times its
// longest wait for a new piece, at most maxSourcePatience × SwarmTimeout:
// the swarm has nothing newer, and leaving for the origin would only load
// what the source waits on. A quick source leaves SwarmTimeout as it is.
func TestSlowSourceStretchesSwarmWait(t *testing.T) {
	const timeout = 20 * time.Second
	// source starts at t0; each piece k of the list comes in at its time:
	// the scheduler's new digests, the parent's announcement, and the piece
	// itself a moment later.
	setup := func(t *testing.T) (*Core, *net, func(at time.Duration, k uint32)) {
		c := testCore(Config{SwarmTimeout: timeout, PerParentRequests: 8})
		w := newNet(t, c, map[string]float64{"a": 1000 * ps})
		w.step(EvStart{Length: 8 * ps, PieceSize: ps})
		w.step(EvParents{Parents: []Parent{{ID: "a"}}})
		src := func(at time.Duration, k uint32) {
			t.Helper()
			w.now = t0.Add(at)
			if so := find[ActStartOrigin](w.acts); len(so) != 0 {
				t.Fatalf("went to the origin (%+v) before piece %d at %v", so, k, at)
			}
			w.step(EvTaskInfo{Length: 8 * ps, PieceSize: ps, Trusted: pieces(int(k) + 1)})
			if rs := find[ActRequest](w.step(EvParentPieces{Parent: "a", Pieces: []uint32{k}})); len(rs) != 1 || rs[0].Piece != k {
				t.Fatalf("piece %d: requests %+v", k, rs)
			}
			for len(w.pending) > 0 {
				w.run1()
			}
			w.step(EvFlush{}) // the report: no timer but the swarm's left
		}
		return c, w, src
	}
	stalls := func(t *testing.T, c *Core, w *net, after time.Duration) {
		t.Helper()
		stallsAt(t, c, w, c.lastProgress, after)
	}
	t.Run("slow", func(t *testing.T) {
		c, w, src := setup(t)
		src(15*time.Second, 0) // 15 s for the first piece: 45 s of patience
		if n := c.StretchedWaits(); n != 0 {
			t.Fatalf("%d stretched waits counted before any", n)
		}
		src(40*time.Second, 1) // 25 s: 75 s
		if n := c.StretchedWaits(); n != 1 {
			t.Fatalf("%d stretched waits counted after a 25 s wait, want 1 (the daemon logs it)", n)
		}
		src(50*time.Second, 2)
		if n := c.StretchedWaits(); n != 1 {
			t.Fatalf("%d stretched waits counted after a 10 s wait, want still 1", n)
		}
		stalls(t, c, w, 3*25*time.Second) // the longest wait, not the last
	})
	t.Run("capped", func(t *testing.T) {
		c, w, src := setup(t)
		src(15*time.Second, 0)
		src(15*time.Second+40*time.Second, 1) // 3 × 40 s: capped at 4 × 20 s
		stalls(t, c, w, maxSourcePatience*timeout)
	})
	t.Run("quick", func(t *testing.T) {
		c, w, src := setup(t)
		src(time.Second, 0)
		src(2*time.Second, 1)
		stalls(t, c, w, timeout)
		if n := c.StretchedWaits(); n != 0 {
			t.Fatalf("%d stretched waits counted for a quick source", n)
		}
	})
}

func TestSourceNewsStretchesWaitBeforeFirstPiece(t *testing.T) {
	const timeout = 20 * time.Second
	setup := func(t *testing.T, allOK bool) (*Core, *net) {
		c := testCore(Config{SwarmTimeout: timeout, PerParentRequests: 8})
		w := newNet(t, c, map[string]float64{"a": 1000 * ps})
		w.step(EvStart{Length: 8 * ps, PieceSize: ps, AllTrusted: allOK})
		w.step(EvParents{Parents: []Parent{{ID: "a"}}})
		return c, w
	}
	// news: the parent says at each time that the source has v bytes.
	news := func(t *testing.T, w *net, at time.Duration, v uint64) {
		t.Helper()
		w.now = t0.Add(at)
		if so := find[ActStartOrigin](w.step(EvTick{})); len(so) != 0 {
			t.Fatalf("went to the origin (%+v) before the news at %v", so, at)
		}
		if so := find[ActStartOrigin](w.step(EvParentPieces{Parent: "a", SourceBytes: v})); len(so) != 0 {
			t.Fatalf("went to the origin (%+v) on the news at %v", so, at)
		}
	}
	t.Run("receiving", func(t *testing.T) {
		c, w := setup(t, false)
		for s := 5; s <= 55; s += 5 {
			news(t, w, time.Duration(s)*time.Second, uint64(s)<<16)
		}
		stallsAt(t, c, w, t0, 75*time.Second) // timeout after the last news
		if n := c.StretchedWaits(); n != 0 {
			t.Fatalf("%d stretched waits counted with no progress", n)
		}
	})
	t.Run("first piece late", func(t *testing.T) {
		c, w := setup(t, false)
		for s := 5; s <= 30; s += 5 {
			news(t, w, time.Duration(s)*time.Second, uint64(s)<<16)
		}
		w.now = t0.Add(33 * time.Second)
		w.step(EvTaskInfo{Length: 8 * ps, PieceSize: ps, Trusted: pieces(1)})
		if rs := find[ActRequest](w.step(EvParentPieces{Parent: "a", Pieces: []uint32{0}})); len(rs) != 1 {
			t.Fatalf("requests %+v for the first piece", rs)
		}
		if n := c.StretchedWaits(); n != 1 {
			t.Fatalf("%d stretched waits counted for a first piece after 33 s, want 1 (the daemon logs it)", n)
		}
	})
	t.Run("capped", func(t *testing.T) {
		c, w := setup(t, false)
		for s := 5; s < maxNewsPatience*20; s += 5 {
			news(t, w, time.Duration(s)*time.Second, uint64(s)<<16)
		}
		stallsAt(t, c, w, t0, maxNewsPatience*timeout)
	})
	t.Run("source stopped", func(t *testing.T) {
		c, w := setup(t, false)
		news(t, w, 5*time.Second, 1<<16)
		news(t, w, 12*time.Second, 2<<16)
		stallsAt(t, c, w, t0, 32*time.Second)
	})
	t.Run("no growth", func(t *testing.T) {
		// The same count again (peers passing it around a cycle after
		// the source stopped) is no news.
		c, w := setup(t, false)
		news(t, w, 5*time.Second, 1<<16)
		for s := 10; s <= 24; s += 2 {
			news(t, w, time.Duration(s)*time.Second, 1<<16)
		}
		stallsAt(t, c, w, t0, 25*time.Second)
	})
	t.Run("cached content", func(t *testing.T) {
		// Every digest known: the content is whole somewhere, and news
		// of a source changes nothing.
		c, w := setup(t, true)
		news(t, w, 5*time.Second, 1<<16)
		news(t, w, 15*time.Second, 2<<16)
		stallsAt(t, c, w, t0, timeout)
	})
}

// stallsAt checks that the core's next deadline is from+after, that a tick
// just before it does nothing, and that a tick at it sends the download to
// the origin for a stalled swarm.
func stallsAt(t *testing.T, c *Core, w *net, from time.Time, after time.Duration) {
	t.Helper()
	if dl := c.NextDeadline(); !dl.Equal(from.Add(after)) {
		t.Fatalf("deadline in %v, want %v", dl.Sub(from), after)
	}
	w.now = from.Add(after - time.Nanosecond)
	if so := find[ActStartOrigin](w.step(EvTick{})); len(so) != 0 {
		t.Fatalf("went to the origin after %v, want %v", after-time.Nanosecond, after)
	}
	w.now = from.Add(after)
	so := find[ActStartOrigin](w.step(EvTick{}))
	if len(so) != 1 || so[0].Reason != "swarm_stalled" {
		t.Fatalf("origin %+v after %v, want swarm_stalled", so, after)
	}
}

// shared runs c against parents that hold every piece, where each transfer
// gets an even part of this host's downlink, down bytes/s, and at most
// perFlow (0: no bound) of its parent's uplink (each TCP connection its own
// flow, as the daemon's piece client makes them). It returns the longest time one
// piece was in flight, and stops at the end, at a failure, at an origin
// fallback (its reason), or after limit of virtual time.
func shared(t *testing.T, c *Core, down, perFlow float64, ids []string, n int, limit time.Duration) (longest time.Duration, origin string) {
	t.Helper()
	type flow struct {
		a     ActRequest
		left  float64
		start time.Time
	}
	now := t0
	var flows []*flow
	done := false
	handle := func(acts []Action) {
		for _, a := range acts {
			switch a := a.(type) {
			case ActRequest:
				flows = append(flows, &flow{a: a, left: float64(a.Size), start: now})
			case ActCancel:
				flows = slices.DeleteFunc(flows, func(f *flow) bool { return f.a.Req == a.Req })
			case ActStartOrigin:
				if origin == "" {
					origin = a.Reason
				}
			case ActComplete:
				done = true
			case ActFailed:
				t.Fatal(a.Err)
			}
		}
	}
	handle(c.Step(now, EvStart{Length: int64(n) * ps, PieceSize: ps, AllTrusted: true}))
	var parents []Parent
	for _, id := range ids {
		parents = append(parents, Parent{ID: id, ShareBps: 4 * down})
	}
	handle(c.Step(now, EvParents{Parents: parents}))
	for _, id := range ids {
		handle(c.Step(now, EvParentConnected{Parent: id}))
		handle(c.Step(now, EvParentPieces{Parent: id, Pieces: pieces(n)}))
	}
	rate := func() float64 {
		each := down / float64(len(flows))
		if perFlow > 0 {
			each = min(each, perFlow)
		}
		return each
	}
	for !done && origin == "" && now.Sub(t0) < limit {
		next := c.NextDeadline()
		var first *flow
		if len(flows) > 0 {
			each := rate()
			for _, f := range flows {
				if first == nil || f.left < first.left {
					first = f
				}
			}
			at := now.Add(secs(first.left / each))
			if next.IsZero() || !next.Before(at) {
				for _, f := range flows {
					f.left -= each * at.Sub(now).Seconds()
				}
				now = at
				flows = slices.DeleteFunc(flows, func(f *flow) bool { return f == first })
				longest = max(longest, now.Sub(first.start))
				handle(c.Step(now, EvPieceDone{Parent: first.a.Parent, Piece: first.a.Piece, Bytes: first.a.Size, Start: first.start, End: now, Req: first.a.Req}))
				continue
			}
		}
		if next.IsZero() {
			t.Fatalf("stuck at %v: nothing in flight and no timer", now.Sub(t0))
		}
		if len(flows) > 0 {
			each := rate()
			for _, f := range flows {
				f.left -= each * next.Sub(now).Seconds()
			}
		}
		now = next
		handle(c.Step(now, EvTick{}))
	}
	if !done && origin == "" {
		t.Fatalf("not done after %v", limit)
	}
	return longest, origin
}

// A host whose downlink is much slower than the shares its parents give it
// keeps no more in flight than the downlink drains in a few seconds: the
// pieces come one after the other instead of all together, late. Three
// paced parents four requests deep put twelve pieces into a 0.6 Mbit/s
// downlink, and none was done within the swarm timeout: the download went
// to the origin (11 of 12 such hosts in the simulator's mixed with slow
// downlinks).
func TestInflightBoundedByDownlink(t *testing.T) {
	const down = 75_000 // bytes/s: 0.6 Mbit/s
	c := testCore(Config{Downlink: down})
	longest, origin := shared(t, c, down, 0, []string{"a", "b", "c"}, 24, 10*time.Minute)
	if origin != "" {
		t.Fatalf("went to the origin (%s); longest piece in flight %v", origin, longest)
	}
	// The bytes the downlink drains in inflightShare of the swarm
	// timeout, and the piece that starts it when less.
	horizon := secs(inflightShare * c.cfg.SwarmTimeout.Seconds())
	if most := horizon + secs(float64(ps)/down); longest > most+time.Second {
		t.Errorf("a piece was in flight %v, want at most about %v", longest, most)
	}
}

// The downlink a link test measured is a lower bound: the rates the parents
// give count too, so a host whose test partner was slow still keeps enough
// in flight to receive at its downlink where each connection gets less
// (paced parents on uplinks shared with other children).
func TestInflightFollowsMeasuredRates(t *testing.T) {
	const down = 2_500_000 // bytes/s: 20 Mbit/s, measured at 0.4
	c := testCore(Config{Downlink: 50_000})
	if _, origin := shared(t, c, down, 400_000, []string{"a", "b", "c"}, 200, 10*time.Minute); origin != "" {
		t.Fatalf("went to the origin (%s)", origin)
	}
	// 200 pieces at 2.5 MB/s take 21 s.
	lastDone := time.Duration(0)
	for _, p := range c.order {
		lastDone = max(lastDone, p.lastDone.Sub(t0))
	}
	if want := secs(200 * float64(ps) / down); lastDone > want*11/10 {
		t.Errorf("done after %v, want about %v: the lower bound held the requests back", lastDone, want)
	}
}
