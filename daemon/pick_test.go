package daemon

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/damselfly-io/damselfly/api/peerv1"
	"github.com/damselfly-io/damselfly/api/schedulerv1"
	"github.com/damselfly-io/damselfly/core"
	"github.com/damselfly-io/damselfly/daemon/piece"
	"github.com/damselfly-io/damselfly/daemon/store"
)

// conductorWithParents builds a conductor over a task of n pieces whose
// digests are known, with parents holding the given pieces.
func conductorWithParents(t *testing.T, n int, parents map[string][]uint32) *conductor {
	t.Helper()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	st, err := store.Open(context.Background(), t.TempDir(), log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	task, _, err := st.GetOrCreate(store.Meta{TaskID: "t", ContentLength: -1})
	if err != nil {
		t.Fatal(err)
	}
	task.SetShape(int64(n)*1024, 1024)
	ds := map[uint32][]byte{}
	for i := 0; i < n; i++ {
		ds[uint32(i)] = core.PieceDigest([]byte{byte(i)})
	}
	task.SetDigests(ds)
	d := &Daemon{cfg: DefaultConfig(), log: log, store: st, pm: piece.NewMetrics(nil)}
	c := newConductor(d, taskRequest{spec: &schedulerv1.TaskSpec{TaskId: "t"}}, "h")
	c.task = task
	c.setNeed(task.Missing())
	for id, held := range parents {
		p := &parentState{info: &schedulerv1.PeerInfo{PeerId: id}, cancel: func() {}}
		for _, h := range held {
			p.mark(h)
		}
		c.parents[id] = p
	}
	return c
}

// take simulates starting the fetch pick chose.
func take(c *conductor, n uint32, p *parentState) {
	c.inflight[n] = p
	p.inflight++
}

func TestPickSequentialWhenStreaming(t *testing.T) {
	all := []uint32{}
	for i := uint32(0); i < 64; i++ {
		all = append(all, i)
	}
	// a holds everything, b only from piece 10 on; 4 requests per parent
	c := conductorWithParents(t, 64, map[string][]uint32{"a": all, "b": all[10:]})
	c.streaming.Store(true)
	// in order while a has room, then the lowest piece b can give
	for i, want := range []uint32{0, 1, 2, 3, 10, 11, 12, 13} {
		n, p := c.pick()
		if p == nil || n != want {
			t.Fatalf("streaming pick %d: got piece %d (parent %v), want %d", i, n, p != nil, want)
		}
		take(c, n, p)
	}
	if _, p := c.pick(); p != nil {
		t.Fatal("picked beyond every parent's request limit")
	}
}

// Rarest first: a piece only one parent holds goes before pieces everyone
// holds, and ties are not always broken the same way (peers must end up
// holding different pieces).
func TestPickRarestFirstWithRandomTies(t *testing.T) {
	common := []uint32{0, 1, 2, 3, 4, 5, 6, 7}
	c := conductorWithParents(t, 9, map[string][]uint32{"a": append(common, 8), "b": common})
	if n, p := c.pick(); p == nil || n != 8 {
		t.Fatalf("pick %d, want the rare piece 8", n)
	}
	firsts := map[uint32]bool{}
	for i := 0; i < 50; i++ {
		c := conductorWithParents(t, 8, map[string][]uint32{"a": common, "b": common})
		n, p := c.pick()
		if p == nil {
			t.Fatal("nothing picked")
		}
		firsts[n] = true
	}
	if len(firsts) < 3 {
		t.Fatalf("50 conductors all started with pieces %v: ties are not random", firsts)
	}
}

// A piece whose digest is not known yet is never requested.
func TestPickNeedsTrustedDigest(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	st, _ := store.Open(context.Background(), t.TempDir(), log)
	defer st.Close()
	task, _, _ := st.GetOrCreate(store.Meta{TaskID: "t", ContentLength: -1})
	task.SetShape(4096, 1024)
	task.SetDigests(map[uint32][]byte{2: core.PieceDigest([]byte("x"))})
	d := &Daemon{cfg: DefaultConfig(), log: log, store: st, pm: piece.NewMetrics(nil)}
	c := newConductor(d, taskRequest{spec: &schedulerv1.TaskSpec{TaskId: "t"}}, "h")
	c.task = task
	c.setNeed(task.Missing())
	c.parents["a"] = &parentState{info: &schedulerv1.PeerInfo{PeerId: "a"}, has: []bool{true, true, true, true}, count: 4, cancel: func() {}}
	n, p := c.pick()
	if p == nil || n != 2 {
		t.Fatalf("picked %d, want 2 (the only piece with a digest)", n)
	}
	take(c, n, p)
	if _, p := c.pick(); p != nil {
		t.Fatal("picked a piece without a trusted digest")
	}
}

// A large task: picks stay bounded, every piece is picked exactly once, and
// a piece only one parent holds still goes early.
func TestPickLargeTask(t *testing.T) {
	const n = 30000
	all := make([]uint32, 0, n)
	for i := uint32(0); i < n; i++ {
		if i != 777 {
			all = append(all, i)
		}
	}
	c := conductorWithParents(t, n, map[string][]uint32{"a": append(all, 777), "b": all, "c": all})
	c.d.cfg.Download.PerParentRequests = n
	got := map[uint32]bool{}
	rareAt := -1
	for i := 0; i < n; i++ {
		k, p := c.pick()
		if p == nil {
			t.Fatalf("pick %d: nothing, %d pieces left", i, len(c.need))
		}
		if got[k] {
			t.Fatalf("piece %d picked twice", k)
		}
		got[k] = true
		if k == 777 {
			rareAt = i
		}
		c.removeNeed(k) // as if fetched at once
	}
	if len(c.need) != 0 || len(got) != n {
		t.Fatalf("%d pieces left, %d picked", len(c.need), len(got))
	}
	// With samples of pickSample among n, the rare piece is found within a
	// few dozen picks almost surely; far later means rarity is ignored.
	if rareAt < 0 || rareAt > n/4 {
		t.Fatalf("the rare piece went at pick %d of %d", rareAt, n)
	}
}

// A not-found answer forgets the piece at that parent, unless the piece was
// announced again after the request went out (its relay restarted, or it is
// now held): the piece stream may overtake the answer. A parent that says
// it is done holds every piece.
func TestNotFoundRacingAnnouncement(t *testing.T) {
	c := conductorWithParents(t, 8, map[string][]uint32{"a": nil})
	p := c.parents["a"]
	ctx := context.Background()
	announce := func(st *peerv1.PieceState) { c.handleParent(ctx, evParent{id: "a", st: st}) }
	notFound := func(n, asked uint32) {
		take(c, n, p)
		if err := c.handlePiece(ctx, evPiece{n: n, parent: p, asked: asked, err: core.ErrNotFound}); err != nil {
			t.Fatal(err)
		}
	}
	holds := func(n uint32) bool { return int(n) < len(p.has) && p.has[n] }

	announce(&peerv1.PieceState{Relaying: []uint32{3}})
	asked := p.updates
	notFound(3, asked) // the relay failed before the request arrived
	if holds(3) {
		t.Fatal("piece 3 still expected at a parent that said it has not got it")
	}

	announce(&peerv1.PieceState{Relaying: []uint32{5}})
	asked = p.updates
	announce(&peerv1.PieceState{Pieces: []uint32{5}}) // held now, announced before the answer came
	notFound(5, asked)
	if !holds(5) {
		t.Fatal("a stale not-found erased a newer announcement of piece 5")
	}

	announce(&peerv1.PieceState{Pieces: []uint32{7}, Done: true})
	for n := uint32(0); n < 8; n++ {
		if !holds(n) {
			t.Fatalf("parent done but piece %d not expected there", n)
		}
	}
}

// A parent storing new pieces is progress of the swarm (the swarm timeout
// must not send a peer to the origin while its source trickles); a relay
// announcement alone is not.
func TestParentPiecesAreSwarmProgress(t *testing.T) {
	c := conductorWithParents(t, 8, map[string][]uint32{"a": nil})
	ctx := context.Background()
	old := time.Now().Add(-time.Hour)
	c.lastProgress = old
	c.handleParent(ctx, evParent{id: "a", st: &peerv1.PieceState{Relaying: []uint32{1}}})
	if !c.lastProgress.Equal(old) {
		t.Fatal("a relay announcement counted as progress")
	}
	c.handleParent(ctx, evParent{id: "a", st: &peerv1.PieceState{Pieces: []uint32{1}}})
	if time.Since(c.lastProgress) > time.Minute {
		t.Fatal("a parent's new piece did not count as progress")
	}
}

// When the only parent's stream breaks, the peer waits a moment for the
// scheduler (which sees a dead peer itself) before asking for new parents,
// and does not ask at all if parents came meanwhile.
func TestParentGoneWaitsForScheduler(t *testing.T) {
	ctx := context.Background()
	c := conductorWithParents(t, 8, map[string][]uint32{"a": {0, 1}})
	c.mode = modeP2P
	c.lastProgress = time.Now()
	c.handleParent(ctx, evParent{id: "a", err: errors.New("stream broke")})
	if !c.lastResched.IsZero() {
		t.Fatal("rescheduled at once")
	}
	if err := c.checkStall(ctx); err != nil || !c.lastResched.IsZero() {
		t.Fatalf("rescheduled within the grace: %v", err)
	}
	c.goneAt = time.Now().Add(-parentGoneGrace)
	if err := c.checkStall(ctx); err != nil || c.lastResched.IsZero() {
		t.Fatalf("no reschedule after the grace: %v", err)
	}

	c = conductorWithParents(t, 8, map[string][]uint32{"a": {0, 1}})
	c.mode = modeP2P
	c.lastProgress = time.Now()
	c.handleParent(ctx, evParent{id: "a", err: errors.New("stream broke")})
	c.parents["b"] = &parentState{info: &schedulerv1.PeerInfo{PeerId: "b"}, cancel: func() {}} // the scheduler's answer
	c.goneAt = time.Now().Add(-parentGoneGrace)
	if err := c.checkStall(ctx); err != nil || !c.lastResched.IsZero() || c.gone != nil {
		t.Fatalf("asked although the scheduler already gave parents: %v", err)
	}
}
