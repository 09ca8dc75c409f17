package scheduler

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/damselfly-io/damselfly/api/schedulerv1"
	"github.com/damselfly-io/damselfly/core"
	"github.com/damselfly-io/damselfly/internal/identity"
)

// A register whose task ID does not follow from its spec, or whose URL is
// not one the swarm fetches, is answered with Fail and never registered: a
// rogue peer cannot file a file:// URL (or any other URL) under a victim
// task's ID and have a seed peer fetch it.
func TestRegisterRefusesSpecThatDoesNotHold(t *testing.T) {
	ts := startServer(t, nil)
	victim := tid("victim")
	digest := "sha256:" + strings.Repeat("ab", 32)
	contentID, _ := core.ContentTaskID(digest)
	for name, sp := range map[string]*schedulerv1.TaskSpec{
		"file url under a url task's id":     {TaskId: victim, Url: "file:///etc/shadow"},
		"other url under a url task's id":    {TaskId: victim, Url: "http://attacker.test/x"},
		"other tag":                          {TaskId: victim, Url: "http://origin.test/victim", Tag: "x"},
		"file url with its own id":           {TaskId: core.TaskID("file:///etc/shadow", core.TaskOptions{}), Url: "file:///etc/shadow"},
		"ftp url with its own id":            {TaskId: core.TaskID("ftp://o.test/x", core.TaskOptions{}), Url: "ftp://o.test/x"},
		"content id without its digest":      {TaskId: contentID, Url: "http://registry.test/v2/r/blobs/" + digest},
		"content id, file url":               {TaskId: contentID, Url: "file:///var/lib/secret", Digest: digest},
		"cache url under a url task's id":    {TaskId: victim, Url: core.CacheURL("model")},
		"digest that does not name the task": {TaskId: victim, Url: "http://attacker.test/x", Digest: digest},
	} {
		id := "rogue-" + strings.ReplaceAll(name, " ", "-")
		p := ts.register(sp.GetTaskId(), id, func(r *schedulerv1.Register) { r.Task = sp })
		if m := p.next(); m.GetFail() == nil || !strings.Contains(m.GetFail().GetReason(), "task refused") {
			t.Errorf("%s: got %v, want Fail", name, m)
		}
		if code := p.expectEnd(); code != codes.OK {
			t.Errorf("%s: stream ended with %v", name, code)
		}
		ts.inspect(func(s *Scheduler) {
			if tk := s.tasks[sp.GetTaskId()]; tk != nil {
				t.Errorf("%s: task %s was created", name, sp.GetTaskId())
			}
		})
	}
	if n := ts.metric("damselfly_scheduler_registers_refused_total"); n != 9 {
		t.Errorf("registers_refused_total %v, want 9", n)
	}
	// The honest forms are accepted.
	ts.register("victim", "honest").expectBackToSource()
	ts.register(contentID, "blob", func(r *schedulerv1.Register) {
		r.Task = &schedulerv1.TaskSpec{TaskId: contentID, Url: "https://registry.test/v2/r/blobs/" + digest, Digest: digest}
	}).expectBackToSource()
}

// seed_request makes the caller the trusted source of a task's digests, so
// only a caller with a seed certificate may send it; SeedTasks (which
// carries task headers) needs one too; a caller without any certificate may
// not announce at all.
func TestSeedRequestNeedsSeedRole(t *testing.T) {
	ts := startIdentityServer(t, nil)

	ts.role = identity.RolePeer
	rogue := ts.register("t", "rogue", seedRequest())
	if code := rogue.expectEnd(); code != codes.PermissionDenied {
		t.Fatalf("seed_request with a peer certificate ended with %v, want PermissionDenied", code)
	}
	stream, err := ts.cl.SeedTasks(ts.callCtx("host-rogue"), &schedulerv1.SeedTasksRequest{Host: ts.newHost("rogue")})
	if err == nil {
		_, err = stream.Recv()
	}
	if code := statusCode(err); code != codes.PermissionDenied {
		t.Fatalf("SeedTasks with a peer certificate: %v, want PermissionDenied", err)
	}
	// An honest peer registers normally; the rogue left no trace.
	ts.register("t", "peer").expectBackToSource()

	ts.role = ""
	anon := ts.register("t", "anon")
	if code := anon.expectEnd(); code != codes.PermissionDenied {
		t.Fatalf("register without a certificate ended with %v, want PermissionDenied", code)
	}

	ts.role = identity.RoleSeed
	ts.register("t2", "seed", seedRequest()).expectBackToSource()
	if n := ts.metric("damselfly_scheduler_registers_refused_total"); n != 1 {
		t.Errorf("registers_refused_total %v, want 1", n)
	}
}

func statusCode(err error) codes.Code { return status.Code(err) }

// poisonedTask makes "a" the origin fetcher of task "t" reporting digests
// that are not the true ones (lie) and "b" a peer that got every piece from
// a and holds them all.
func poisonedTask(t *testing.T, ts *testServer, lie bool) (a, b *testPeer) {
	t.Helper()
	a = ts.register("t", "a")
	a.expectBackToSource()
	a.meta(2<<18, 1<<18)
	d := func(n uint32) *schedulerv1.PieceResult {
		r := originPiece(n)
		if lie {
			r.Digest = core.PieceDigest([]byte("forged"))
		}
		return r
	}
	a.pieces(d(0), d(1))
	b = ts.register("t", "b")
	if got := b.expectParents(); !slices.Equal(got, []string{"a"}) {
		t.Fatalf("b parents %v", got)
	}
	b.pieces(&schedulerv1.PieceResult{Number: 0, ParentId: "a", Length: 1 << 18}, &schedulerv1.PieceResult{Number: 1, ParentId: "a", Length: 1 << 18})
	ts.waitPeer("t", "b", func(p *peer) bool { return p.pieces.count == 2 })
	return a, b
}

func (p *testPeer) contentCorrupt() {
	p.send(&schedulerv1.PeerMessage{Msg: &schedulerv1.PeerMessage_ContentCorrupt{ContentCorrupt: &schedulerv1.ContentCorrupt{Reason: "test"}}})
}

// A content-corrupt report suspends the accused source's digests; a fresh
// fetch from the origin by another host that disagrees with them bans the
// source's host: no parent, no fetcher, for any task, for ban_ttl.
func TestContentCorruptConfirmedBansSource(t *testing.T) {
	ts := startServer(t, nil)
	_, b := poisonedTask(t, ts, true)
	b.contentCorrupt()
	eventually(t, "digests suspended", func() bool {
		ok := false
		ts.inspect(func(s *Scheduler) { ok = s.tasks[tid("t")].suspect != nil && len(s.tasks[tid("t")].digests) == 0 })
		return ok
	})
	// The accused gave up its origin slot: the next peer checks.
	c := ts.register("t", "c")
	c.expectBackToSource()
	c.meta(2<<18, 1<<18)
	c.pieces(originPiece(0))
	eventually(t, "host-a banned", func() bool {
		banned := false
		ts.inspect(func(s *Scheduler) { banned = time.Now().Before(s.hosts["host-a"].bannedUntil) })
		return banned
	})
	if n := ts.metric("damselfly_scheduler_content_corrupt_total", "outcome", "confirmed"); n != 1 {
		t.Errorf("confirmed %v, want 1", n)
	}
	// A newcomer never gets the banned host as a parent, in this task or
	// another, and the banned host is not sent to the origin.
	d := ts.register("t", "d")
	if got := d.expectParents(); slices.Contains(got, "a") {
		t.Fatalf("d got the banned host's peer: %v", got)
	}
	a2 := ts.register("t3", "a2", withHost(ts.newHost("a")))
	a2.expectWait()
	ts.inspect(func(s *Scheduler) {
		if tk := s.tasks[tid("t")]; tk.suspect != nil {
			t.Errorf("suspicion still open after it was confirmed")
		}
	})
}

// A lying reporter cannot get an honest source banned: the fresh fetch
// agrees with the suspended digests, the accused is cleared, and the
// reporter's later reports are ignored.
func TestContentCorruptFalseReportClears(t *testing.T) {
	ts := startServer(t, nil)
	_, b := poisonedTask(t, ts, false)
	b.contentCorrupt()
	eventually(t, "digests suspended", func() bool {
		ok := false
		ts.inspect(func(s *Scheduler) { ok = s.tasks[tid("t")].suspect != nil })
		return ok
	})
	c := ts.register("t", "c")
	c.expectBackToSource()
	c.meta(2<<18, 1<<18)
	c.pieces(originPiece(0), originPiece(1))
	c.done(2 << 18)
	eventually(t, "suspicion cleared", func() bool {
		cleared := false
		ts.inspect(func(s *Scheduler) { cleared = s.tasks[tid("t")].suspect == nil })
		return cleared
	})
	ts.inspect(func(s *Scheduler) {
		if !s.hosts["host-a"].bannedUntil.IsZero() {
			t.Errorf("honest source banned")
		}
		if !time.Now().Before(s.hosts["host-b"].falseReportUntil) {
			t.Errorf("false reporter not marked")
		}
	})
	if n := ts.metric("damselfly_scheduler_content_corrupt_total", "outcome", "cleared"); n != 1 {
		t.Errorf("cleared %v, want 1", n)
	}
	// Its next report changes nothing.
	b.contentCorrupt()
	eventually(t, "report ignored", func() bool {
		return ts.metric("damselfly_scheduler_content_corrupt_total", "outcome", "ignored") == 1
	})
	ts.inspect(func(s *Scheduler) {
		if s.tasks[tid("t")].suspect != nil || len(s.tasks[tid("t")].digests) != 2 {
			t.Errorf("a disproved reporter suspended the digests again")
		}
	})
	// The accused is a parent again.
	e := ts.register("t", "e")
	if got := e.expectParents(); len(got) == 0 {
		t.Fatalf("e got no parents")
	}
}

// A reporter that does not hold the content is not heard; a fetcher
// reporting its own content corrupt drops its own digests.
func TestContentCorruptReportRules(t *testing.T) {
	ts := startServer(t, nil)
	a := ts.register("t", "a")
	a.expectBackToSource()
	a.meta(2<<18, 1<<18)
	a.pieces(originPiece(0), originPiece(1))
	b := ts.register("t", "b")
	b.expectParents()
	b.contentCorrupt() // holds nothing
	eventually(t, "report ignored", func() bool {
		return ts.metric("damselfly_scheduler_content_corrupt_total", "outcome", "ignored") == 1
	})
	a.contentCorrupt() // the fetcher confesses
	eventually(t, "fetcher's digests dropped", func() bool {
		n := -1
		ts.inspect(func(s *Scheduler) { n = len(s.tasks[tid("t")].digests) })
		return n == 0
	})
	ts.inspect(func(s *Scheduler) {
		if !s.hosts["host-a"].bannedUntil.IsZero() || s.tasks[tid("t")].suspect != nil {
			t.Errorf("a confession banned or suspended")
		}
	})
}

func privateSpec(name string) regOpt {
	return func(r *schedulerv1.Register) { r.Task.Private = true }
}

func verified() regOpt { return func(r *schedulerv1.Register) { r.OriginVerified = true } }

func (p *testPeer) expectAccess() *schedulerv1.PieceAccess {
	p.t.Helper()
	select {
	case a := <-p.access:
		return a
	case <-time.After(step):
		p.t.Fatalf("peer %s: no PieceAccess", p.id)
	}
	return nil
}

// A private task: peers that showed the origin grants them the content get
// a piece token (and the task's key) and each other as parents; a peer that
// did not gets Fail and no parents, no digests, no token; no seed peer is
// triggered; tokens are renewed before they expire.
func TestPrivateTaskAccess(t *testing.T) {
	ts := startServer(t, func(c *Config) { c.PieceTokenTTL = Duration(400 * time.Millisecond) })
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if _, err := ts.cl.SeedTasks(ctx, &schedulerv1.SeedTasksRequest{Host: &schedulerv1.Host{Id: "host-seed", Seed: true}}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "seed connected", func() bool {
		n := 0
		ts.inspect(func(s *Scheduler) { n = len(s.seeds) })
		return n == 1
	})
	a := ts.register("t", "a", privateSpec("t"), verified())
	a.expectBackToSource() // no seed for a private task
	acc := a.expectAccess()
	if err := core.CheckPieceToken(acc.GetKey(), acc.GetToken(), tid("t"), "a", time.Now()); err != nil {
		t.Fatalf("a's token: %v", err)
	}
	a.meta(2<<18, 1<<18)
	a.pieces(originPiece(0), originPiece(1))

	// No credentials shown: Fail, and nothing about the content.
	b := ts.register("t", "b")
	for {
		m := b.next()
		if m.GetTaskInfo() != nil {
			t.Fatalf("unverified peer got task info %v", m)
		}
		if m.GetFail() != nil {
			break
		}
		t.Fatalf("unverified peer got %v, want Fail", m)
	}
	select {
	case <-b.access:
		t.Fatal("unverified peer got a piece token")
	default:
	}

	c := ts.register("t", "c", verified())
	if got := c.expectParents(); !slices.Equal(got, []string{"a"}) {
		t.Fatalf("c parents %v", got)
	}
	cacc := c.expectAccess()
	if err := core.CheckPieceToken(acc.GetKey(), cacc.GetToken(), tid("t"), "c", time.Now()); err != nil {
		t.Fatalf("c's token does not verify with the key a holds: %v", err)
	}
	if err := core.CheckPieceToken(acc.GetKey(), cacc.GetToken(), tid("t"), "b", time.Now()); err == nil {
		t.Fatal("c's token is valid for another peer")
	}
	// Renewed while c stays.
	renewed := c.expectAccess()
	if renewed.GetExpiresUnixMs() <= cacc.GetExpiresUnixMs() {
		t.Fatalf("renewed token expires at %d, not after %d", renewed.GetExpiresUnixMs(), cacc.GetExpiresUnixMs())
	}
	if n := ts.metric("damselfly_scheduler_seed_triggers_total"); n != 0 {
		t.Fatalf("seed triggered %v times for a private task", n)
	}
	// A public task stays public: no tokens (and its seed is triggered).
	p := ts.register("pub", "p")
	p.expectWait()
	select {
	case m := <-p.access:
		t.Fatalf("public task peer got a token %v", m)
	case <-time.After(quiet):
	}
}

// With a seed peer connected, a content-corrupt report triggers it at once
// for the fresh fetch, and the seed peer goes to the origin although others
// hold (suspect) data.
func TestContentCorruptTriggersSeed(t *testing.T) {
	ts := startServer(t, nil)
	_, b := poisonedTask(t, ts, true)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	seeds, err := ts.cl.SeedTasks(ctx, &schedulerv1.SeedTasksRequest{Host: &schedulerv1.Host{Id: "host-seed", Seed: true}})
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, "seed connected", func() bool {
		n := 0
		ts.inspect(func(s *Scheduler) { n = len(s.seeds) })
		return n == 1
	})
	b.contentCorrupt()
	got := make(chan *schedulerv1.SeedTask, 1)
	go func() {
		if st, err := seeds.Recv(); err == nil {
			got <- st
		}
	}()
	select {
	case st := <-got:
		if st.GetTask().GetTaskId() != tid("t") {
			t.Fatalf("seed got %v", st)
		}
	case <-time.After(step):
		t.Fatal("no seed triggered for the fresh fetch")
	}
	sp := ts.register("t", "seedpeer", withHost(&schedulerv1.Host{Id: "host-seed", Seed: true}), seedRequest())
	sp.expectBackToSource()
	sp.meta(2<<18, 1<<18)
	sp.pieces(originPiece(0))
	eventually(t, "host-a banned", func() bool {
		banned := false
		ts.inspect(func(s *Scheduler) { banned = time.Now().Before(s.hosts["host-a"].bannedUntil) })
		return banned
	})
}
