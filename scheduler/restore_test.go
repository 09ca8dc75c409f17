package scheduler

import (
	"bytes"
	"slices"
	"testing"

	"github.com/damselfly-io/damselfly/api/schedulerv1"
	"github.com/damselfly-io/damselfly/core"
	"github.com/damselfly-io/damselfly/internal/identity"
)

// reannounce is what a daemon holding task complete sends to a scheduler
// that does not know it (its serve loop after a restart): a register with
// every piece, the shape, every piece's digest (as a source: no parent) and
// Done. forged replaces the digests with made-up ones. The register's
// decision must be to wait: a holder is neither a fetcher nor a parent
// until its claim is trusted.
func reannounce(t *testing.T, ts *testServer, task, id string, host *schedulerv1.Host, forged bool) *testPeer {
	t.Helper()
	p := ts.register(task, id, withHost(host), withHave(0, 1))
	if m := p.nextDecision(); m.GetWait() == nil && m.GetParents() == nil {
		t.Fatalf("holder %s re-announcing: got %v, want wait (or parents once trusted)", id, m)
	}
	p.meta(2<<18, 1<<18)
	d := func(n uint32) *schedulerv1.PieceResult {
		r := originPiece(n)
		if forged {
			r.Digest = core.PieceDigest([]byte("forged"))
		}
		return r
	}
	p.pieces(d(0), d(1))
	p.done(2 << 18)
	return p
}

// expectTrustedDigests requires a TaskInfo carrying the true digests of
// both pieces.
func expectTrustedDigests(t *testing.T, p *testPeer) {
	t.Helper()
	ti := p.expectTaskInfo()
	got := map[uint32][]byte{}
	for _, d := range ti.GetDigests() {
		got[d.GetNumber()] = d.GetDigest()
	}
	for n := range uint32(2) {
		if !bytes.Equal(got[n], pieceDigest(n)) {
			t.Fatalf("peer %s: digest of piece %d is %x, want the true %x (info %v)", p.id, n, got[n], pieceDigest(n), ti)
		}
	}
	if ti.GetContentLength() != 2<<18 || ti.GetPieceSize() != 1<<18 {
		t.Fatalf("peer %s: shape %d/%d", p.id, ti.GetContentLength(), ti.GetPieceSize())
	}
}

// A seed host's re-announcement is trusted at once: a newcomer gets its
// digests and the seed as a parent, not the origin.
func TestRestoreTrustFromSeedHost(t *testing.T) {
	ts := startIdentityServer(t, nil)
	ts.role = identity.RoleSeed
	h := ts.newHost("seed")
	h.Seed = true
	reannounce(t, ts, "t", "seed", h, false)
	eventually(t, "trust restored", func() bool { return ts.metric("damselfly_scheduler_trust_restored_total", "rule", "seed") == 1 })
	ts.role = identity.RolePeer
	b := ts.register("t", "b")
	expectTrustedDigests(t, b)
	if got := b.expectParents(); !slices.Equal(got, []string{"seed"}) {
		t.Fatalf("newcomer parents %v, want [seed]", got)
	}
}

// A content task (ID = digest) is restored from one ordinary peer: every
// child checks the whole content, and a liar is caught by content-corrupt.
func TestRestoreTrustContentTask(t *testing.T) {
	ts := startIdentityServer(t, nil)
	ts.role = identity.RolePeer
	const digest = "sha256:0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0"
	id, _ := core.ContentTaskID(digest)
	sp := &schedulerv1.TaskSpec{TaskId: id, Url: "http://registry.test/v2/x/blobs/" + digest, Digest: digest}
	a := ts.open("a")
	a.send(&schedulerv1.PeerMessage{Msg: &schedulerv1.PeerMessage_Register{Register: &schedulerv1.Register{
		PeerId: "a", Host: ts.newHost("a"), Task: sp, Have: []uint32{0, 1}}}})
	a.startReading()
	a.expectWait()
	a.meta(2<<18, 1<<18)
	a.pieces(originPiece(0), originPiece(1))
	a.done(2 << 18)
	eventually(t, "trust restored", func() bool {
		return ts.metric("damselfly_scheduler_trust_restored_total", "rule", "content_digest") == 1
	})
	b := ts.open("b")
	b.send(&schedulerv1.PeerMessage{Msg: &schedulerv1.PeerMessage_Register{Register: &schedulerv1.Register{
		PeerId: "b", Host: ts.newHost("b"), Task: sp}}})
	b.startReading()
	expectTrustedDigests(t, b)
	if got := b.expectParents(); !slices.Equal(got, []string{"a"}) {
		t.Fatalf("newcomer parents %v, want [a]", got)
	}
	// The restored digests name a's host as their source: a content-corrupt
	// report accuses it like any fetcher.
	ts.inspect(func(s *Scheduler) {
		for n, h := range s.tasks[id].digestHost {
			if h != "host-a" {
				t.Errorf("piece %d digest source %q, want host-a", n, h)
			}
		}
	})
}

// A URL task held by one ordinary host is not restored from its word
// alone: the next peer needing it is sent to the origin at once (no parent
// without digests, so no swarm timeout). A second host agreeing restores it.
func TestRestoreTrustTwoHostsAgree(t *testing.T) {
	ts := startIdentityServer(t, nil)
	ts.role = identity.RolePeer
	reannounce(t, ts, "t", "a", ts.newHost("a"), false)
	ts.waitPeer("t", "a", func(p *peer) bool { return p.state == stateSucceeded })
	reannounce(t, ts, "u", "b", ts.newHost("b"), false) // another task: no agreement across tasks
	c := ts.register("t", "c")
	c.expectBackToSource()
	c.leave()
	eventually(t, "c gone", func() bool {
		gone := false
		ts.inspect(func(s *Scheduler) { gone = s.tasks[tid("t")].peers["c"] == nil })
		return gone
	})

	reannounce(t, ts, "t", "b", ts.newHost("b"), false)
	eventually(t, "trust restored", func() bool {
		return ts.metric("damselfly_scheduler_trust_restored_total", "rule", "two_hosts") == 1
	})
	d := ts.register("t", "d")
	expectTrustedDigests(t, d)
	if got := d.expectParents(); len(got) == 0 {
		t.Fatal("no parents after trust was restored")
	}
	// Both agreeing hosts are sources: a content-corrupt report accuses both.
	ts.inspect(func(s *Scheduler) {
		hosts := map[string]bool{}
		for _, h := range s.tasks[tid("t")].digestHost {
			hosts[h] = true
		}
		if !hosts["host-a"] || !hosts["host-b"] || len(hosts) != 2 {
			t.Errorf("digest sources %v, want host-a and host-b", hosts)
		}
	})
}

// The attack: after a restart, a peer with a valid peer certificate
// re-announces a URL task with forged digests, first, alone and then beside
// an honest holder. The victims never get the forged digests: the first
// victim is sent to the origin, and the digests its fetch brings are the
// task's; the forger is never a fetcher; disagreeing claims restore nothing.
func TestRestoreForgedClaimNotTrusted(t *testing.T) {
	ts := startIdentityServer(t, nil)
	ts.role = identity.RolePeer
	reannounce(t, ts, "t", "rogue", ts.newHost("rogue"), true)
	reannounce(t, ts, "t", "honest", ts.newHost("honest"), false)
	ts.waitPeer("t", "honest", func(p *peer) bool { return p.state == stateSucceeded })
	ts.inspect(func(s *Scheduler) {
		tk := s.tasks[tid("t")]
		if len(tk.digests) != 0 || tk.contentLength >= 0 {
			t.Errorf("disagreeing claims restored something: %d digests, length %d", len(tk.digests), tk.contentLength)
		}
		if r := tk.peers["rogue"]; r.state == stateBackToSource {
			t.Errorf("the forger was made a fetcher")
		}
	})
	if n := ts.metric("damselfly_scheduler_trust_restored_total"); n != 0 {
		t.Fatalf("trust_restored_total %v, want 0", n)
	}
	victim := ts.register("t", "victim")
	victim.expectBackToSource()
	victim.meta(2<<18, 1<<18)
	victim.pieces(originPiece(0), originPiece(1))
	eventually(t, "the fetcher's digests", func() bool {
		n := 0
		ts.inspect(func(s *Scheduler) { n = len(s.tasks[tid("t")].digests) })
		return n == 2
	})
	victim2 := ts.register("t", "victim2")
	expectTrustedDigests(t, victim2)
	if got := victim2.expectParents(); len(got) == 0 {
		t.Fatal("no parents once the fetcher's digests are known")
	}
	// The forger's late claim changes nothing either.
	reannounce(t, ts, "t", "rogue2", ts.newHost("rogue2"), true)
	victim3 := ts.register("t", "victim3")
	expectTrustedDigests(t, victim3)
}

// A claim of more pieces than the peer registered with is no holder's: the
// scheduler keeps nothing of it (a peer must not make it store digests for
// a shape it invents).
func TestRestoreClaimBoundedByHave(t *testing.T) {
	ts := startIdentityServer(t, nil)
	ts.role = identity.RolePeer
	p := ts.register("t", "greedy", withHave(0))
	p.expectWait()
	p.meta(1000<<18, 1<<18) // 1000 pieces claimed, one held
	p.pieces(originPiece(0))
	p.done(1000 << 18) // applied after the claim: the stream is in order
	ts.waitPeer("t", "greedy", func(pp *peer) bool { return pp.state == stateSucceeded })
	ts.inspect(func(s *Scheduler) {
		if c := s.tasks[tid("t")].peers["greedy"].claim; c != nil {
			t.Errorf("claim kept: length %d, %d digests", c.length, len(c.digests))
		}
	})
}
