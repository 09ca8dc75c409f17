package scheduler

import (
	"errors"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	schedulerv1 "github.com/damselfly-io/damselfly/api/schedulerv1"
	"github.com/damselfly-io/damselfly/core"
	"github.com/damselfly-io/damselfly/internal/identity"
)

func linkHostInfo(id string, port int32) *schedulerv1.Host {
	return &schedulerv1.Host{Id: id, Ip: "10.77.0.1", UploadPort: port}
}

func askPartner(t *testing.T, s *Scheduler, id string, now time.Time, exclude ...string) string {
	t.Helper()
	resp, err := s.LinkPartner(&schedulerv1.LinkPartnerRequest{Host: linkHostInfo(id, 7000), Exclude: exclude}, now)
	if err != nil {
		t.Fatalf("%s: %v", id, err)
	}
	if resp.GetPartner() == nil {
		if resp.GetRetryAfterMs() <= 0 {
			t.Fatalf("%s: neither a partner nor a retry: %v", id, resp)
		}
		return ""
	}
	if resp.GetDurationMs() <= 0 {
		t.Fatalf("%s: partner %s without a duration", id, resp.GetPartner().GetId())
	}
	return resp.GetPartner().GetId()
}

// TestLinkPartnerPairing: a lone host is told to ask again; a partner is
// another host that asked, never one receiving or sending a test, never an
// excluded one; of the free ones, the one that received the fewest tests.
func TestLinkPartnerPairing(t *testing.T) {
	s := newTestScheduler(t, nil, nil)
	t0 := time.Unix(1000, 0)
	if p := askPartner(t, s, "a", t0); p != "" {
		t.Fatalf("a lone host got partner %s", p)
	}
	if p := askPartner(t, s, "b", t0); p != "a" {
		t.Fatalf("b's partner: %q, want a", p)
	}
	// a receives b's test and b sends it: neither is free.
	if p := askPartner(t, s, "c", t0); p != "" {
		t.Fatalf("c got partner %s while a and b were busy", p)
	}
	// a, receiving b's test, does not send its own (its uplink would
	// delay the ACKs of the test it receives).
	if p := askPartner(t, s, "a", t0.Add(time.Second)); p != "" {
		t.Fatalf("a, while receiving: partner %q, want none", p)
	}
	t1 := t0.Add(linkTestDuration + linkBusySlack + time.Second)
	// Free again: b asks with a excluded and gets c (a received one test,
	// c none).
	if p := askPartner(t, s, "b", t1, "a"); p != "c" {
		t.Fatalf("b excluding a: partner %q, want c", p)
	}
	if p := askPartner(t, s, "d", t1); p != "a" {
		t.Fatalf("d: partner %q, want a (the only free one)", p)
	}
	t2 := t1.Add(linkTestDuration + linkBusySlack + time.Second)
	// b and d have received none, a two, c one: e gets b or d.
	if p := askPartner(t, s, "e", t2); p != "b" && p != "d" {
		t.Fatalf("e: partner %q, want b or d (fewest tests received)", p)
	}
	// Everyone but e itself excluded: ask again later.
	if p := askPartner(t, s, "e", t2.Add(5*time.Second), "a", "b", "c", "d"); p != "" {
		t.Fatalf("e with all others excluded got %s", p)
	}
	// Hosts that stopped asking leave the pool.
	s.gc(t2.Add(linkPoolTTL + time.Minute))
	s.mu.Lock()
	left := len(s.linkPool)
	s.mu.Unlock()
	if left != 0 {
		t.Fatalf("%d hosts left in the pool after its TTL", left)
	}
}

// TestLinkPartnerSendingHostNotNamed: a host sending its own test is no
// partner: its busy uplink would delay the ACKs of the test it receives.
func TestLinkPartnerSendingHostNotNamed(t *testing.T) {
	s := newTestScheduler(t, nil, nil)
	t0 := time.Unix(1000, 0)
	askPartner(t, s, "a", t0)
	askPartner(t, s, "b", t0)
	askPartner(t, s, "c", t0) // a and b busy: nobody
	t1 := t0.Add(linkTestDuration + linkBusySlack + time.Second)
	if p := askPartner(t, s, "c", t1); p == "" {
		t.Fatal("c got no partner with a and b free")
	}
	// c sends now; d must get the one of a, b that c did not take.
	s.mu.Lock()
	var free string
	for _, id := range []string{"a", "b"} {
		if !t1.Before(s.linkPool[id].busyUntil) {
			free = id
		}
	}
	s.mu.Unlock()
	if p := askPartner(t, s, "d", t1); p != free {
		t.Fatalf("d: partner %q, want %q (c is sending, the other receiving)", p, free)
	}
}

// TestLinkPartnerLargePool: in a pool larger than a scan, a partner is
// still found for every host, and the tests received spread out.
func TestLinkPartnerLargePool(t *testing.T) {
	s := newTestScheduler(t, nil, nil)
	t0 := time.Unix(1000, 0)
	const n = 500
	got := 0
	for round := range 3 {
		now := t0.Add(time.Duration(round) * (linkTestDuration + linkBusySlack + time.Second))
		for i := range n {
			if askPartner(t, s, string(rune('A'+i%26))+string(rune('0'+i/26%10))+string(rune('a'+i/260)), now) != "" {
				got++
			}
		}
	}
	// Round 0 fills the pool (a host is paired only with one that asked
	// before it); rounds 1 and 2 pair about half the hosts each (a pair
	// takes two free hosts).
	if got < n {
		t.Fatalf("%d pairings over three rounds of %d hosts", got, n)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	most := 0
	for _, l := range s.linkPool {
		most = max(most, l.received)
	}
	if most > 6 {
		t.Fatalf("one host received %d tests: the fewest-received rule did not spread them", most)
	}
}

func TestLinkPartnerRejectsBadRequests(t *testing.T) {
	s := newTestScheduler(t, nil, nil)
	for _, h := range []*schedulerv1.Host{
		{Ip: "10.77.0.1", UploadPort: 1},
		{Id: "a", UploadPort: 1},
		{Id: "a", Ip: "10.77.0.1"},
		{Id: "a", Ip: "10.77.0.1", UploadPort: 70000},
	} {
		if _, err := s.LinkPartner(&schedulerv1.LinkPartnerRequest{Host: h}, time.Unix(1, 0)); !errors.Is(err, core.ErrInvalid) {
			t.Errorf("%v: err %v, want ErrInvalid", h, err)
		}
	}
	many := make([]string, 65)
	if _, err := s.LinkPartner(&schedulerv1.LinkPartnerRequest{Host: linkHostInfo("a", 1), Exclude: many}, time.Unix(1, 0)); !errors.Is(err, core.ErrInvalid) {
		t.Errorf("65 excluded: err %v, want ErrInvalid", err)
	}
}

// TestLinkPartnerOnlyForOwnHost: a rogue peer cannot enter another host
// (its address) into the pool, which would send other hosts' tests to an
// address of its choosing.
func TestLinkPartnerOnlyForOwnHost(t *testing.T) {
	ts := startIdentityServer(t, nil)
	ts.role = identity.RolePeer
	_, err := ts.cl.LinkPartner(ts.callCtx("rogue"), &schedulerv1.LinkPartnerRequest{Host: linkHostInfo("victim", 80)})
	if status.Code(err) != codes.PermissionDenied {
		t.Fatalf("a peer asking for another host: %v, want PermissionDenied", err)
	}
	ts.s.mu.Lock()
	n := len(ts.s.linkPool)
	ts.s.mu.Unlock()
	if n != 0 {
		t.Fatalf("the refused host entered the pool (%d entries)", n)
	}
	if _, err := ts.cl.LinkPartner(ts.callCtx("victim"), &schedulerv1.LinkPartnerRequest{Host: linkHostInfo("victim", 80)}); err != nil {
		t.Fatalf("a peer asking for its own host: %v", err)
	}
}

// TestLinkRatesStandInForDeclared: a host's measured uplink is its
// capacity where nothing is declared; a declared one wins; the measured
// downlink counts only above the measured uplink (a lower bound below it
// would cap the host's relay capacity by a slow sender's rate).
func TestLinkRatesStandInForDeclared(t *testing.T) {
	s := newTestScheduler(t, nil, nil)
	now := time.Unix(1000, 0)
	for _, c := range []struct {
		name                 string
		up, down, lup, ldown int64
		want                 float64
	}{
		{"measured only", 0, 0, 3e6, 0, 3e6},
		{"declared wins", 5e6, 0, 3e6, 0, 5e6},
		{"slower measured downlink ignored", 0, 0, 3e6, 1e6, 3e6},
		// up 1e6 with a 30e6 downlink: the ACKs take 0.6e6.
		{"faster measured downlink counts the ACKs", 0, 0, 1e6, 30e6, float64(core.UsableUplink(1e6, 30e6))},
		{"nothing", 0, 0, 0, 0, 0},
	} {
		s.mu.Lock()
		info := &schedulerv1.Host{Id: c.name, UploadBps: c.up, DownloadBps: c.down, LinkUploadBps: c.lup, LinkDownloadBps: c.ldown}
		h := s.hostLocked(info, now)
		got := s.upCapacity(h, now)
		s.mu.Unlock()
		if got != c.want {
			t.Errorf("%s: capacity %v, want %v", c.name, got, c.want)
		}
		if info.GetUploadBps() != c.up {
			t.Errorf("%s: the registration's own message was changed", c.name)
		}
	}
}

// TestLinkPartnerFromRegisteredHosts: a host that registers with measured
// link rates answers link tests, so it is a partner for a newcomer although
// it has not asked this scheduler (which restarted since its last round).
func TestLinkPartnerFromRegisteredHosts(t *testing.T) {
	s := newTestScheduler(t, nil, nil)
	now := time.Unix(1000, 0)
	s.mu.Lock()
	s.hostLocked(&schedulerv1.Host{Id: "old", Ip: "10.77.0.2", UploadPort: 65002, LinkUploadBps: 1e6}, now)
	s.hostLocked(&schedulerv1.Host{Id: "untested", Ip: "10.77.0.3", UploadPort: 65002}, now)
	s.mu.Unlock()
	if p := askPartner(t, s, "new", now); p != "old" {
		t.Fatalf("newcomer's partner %q, want old (registered with link rates)", p)
	}
	if p := askPartner(t, s, "new2", now); p != "" {
		t.Fatalf("second newcomer's partner %q, want none (old busy; untested answers no tests)", p)
	}
}

// TestLinkPartnerFastDownlinkAfterFirstTest: after a first test, a partner
// whose measured downlink is well above the caller's best rate comes first,
// even one that received more tests: a test into a slow downlink says
// nothing of the caller's uplink.
func TestLinkPartnerFastDownlinkAfterFirstTest(t *testing.T) {
	s := newTestScheduler(t, nil, nil)
	now := time.Unix(1000, 0)
	s.mu.Lock()
	s.linkSeenLocked(&schedulerv1.Host{Id: "slowdown", Ip: "10.77.0.2", UploadPort: 65002, LinkDownloadBps: 250e3}, now)
	fastHost := s.linkSeenLocked(&schedulerv1.Host{Id: "fastdown", Ip: "10.77.0.3", UploadPort: 65002, LinkDownloadBps: 3e6}, now)
	fastHost.received = 5
	s.mu.Unlock()
	resp, err := s.LinkPartner(&schedulerv1.LinkPartnerRequest{Host: linkHostInfo("me", 65002), BestBps: 240e3}, now)
	if err != nil {
		t.Fatal(err)
	}
	if got := resp.GetPartner().GetId(); got != "fastdown" {
		t.Fatalf("after a test at 240 kB/s: partner %q, want fastdown (its downlink 3 MB/s)", got)
	}
	// Without a first result the fewest received comes first.
	later := now.Add(time.Minute)
	resp, err = s.LinkPartner(&schedulerv1.LinkPartnerRequest{Host: linkHostInfo("other", 65002)}, later)
	if err != nil {
		t.Fatal(err)
	}
	if got := resp.GetPartner().GetId(); got != "slowdown" && got != "me" {
		t.Fatalf("first test: partner %q, want one of those that received fewest", got)
	}
}

// A partner in the caller's own IDC (rack) comes first, even one that has
// received more tests: a test to another rack crosses the link between the
// racks, which other tests share. On the harness's two racks, hosts whose
// tests both crossed measured 12-17 Mbit/s of 25 and were placed as slow
// leaves in the other rack (the content crossed twice).
func TestLinkPartnerSameIDCFirst(t *testing.T) {
	s := newTestScheduler(t, nil, nil)
	now := time.Unix(1000, 0)
	s.mu.Lock()
	s.linkSeenLocked(&schedulerv1.Host{Id: "far", Ip: "10.77.2.2", UploadPort: 65002, Idc: "rack2"}, now)
	near := s.linkSeenLocked(&schedulerv1.Host{Id: "near", Ip: "10.77.1.3", UploadPort: 65002, Idc: "rack1"}, now)
	near.received = 5
	s.mu.Unlock()
	me := linkHostInfo("me", 65002)
	me.Idc = "rack1"
	resp, err := s.LinkPartner(&schedulerv1.LinkPartnerRequest{Host: me}, now)
	if err != nil {
		t.Fatal(err)
	}
	if got := resp.GetPartner().GetId(); got != "near" {
		t.Fatalf("partner %q, want near (the caller's rack)", got)
	}
	// With none free in its rack, another rack's host is a partner still.
	other := linkHostInfo("other", 65002)
	other.Idc = "rack1"
	resp, err = s.LinkPartner(&schedulerv1.LinkPartnerRequest{Host: other, Exclude: []string{"near", "me"}}, now)
	if err != nil {
		t.Fatal(err)
	}
	if got := resp.GetPartner().GetId(); got != "far" {
		t.Fatalf("partner %q, want far (none free in the caller's rack)", got)
	}
}
