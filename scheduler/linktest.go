package scheduler

import (
	"context"
	"fmt"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	schedulerv1 "github.com/damselfly-io/damselfly/api/schedulerv1"
	"github.com/damselfly-io/damselfly/core"
)

// Link tests (docs/architecture.md, "Link tests"). A host that declares
// nothing is otherwise known only from what it sends in tasks, and a host
// fed by a slow one sends no faster than it receives, whatever its own
// uplink: in a pipeline the meter finds the slow hosts one at a time, from
// the top. So every daemon tests its links when it starts: it asks a
// scheduler for a partner, sends it junk bytes for about a second, and the
// partner says what rate it received. The sender's best rate is a lower
// bound of its uplink, the partner's best received rate one of its downlink;
// the daemon reports both in its Host and the scheduler takes them where
// nothing is declared (effectiveHost). The scheduler only pairs: it names
// as partner a host that asked too, is neither receiving nor sending a test
// (a partner's uplink busy with its own test would delay the ACKs of the
// one it receives), and has received the fewest tests, so each host's
// downlink gets measured too.

const (
	// linkTestDuration: how long a test sends.
	linkTestDuration = time.Second
	// linkBusySlack: a host stays busy this much longer than its test
	// (the connection's set-up, a late start).
	linkBusySlack = time.Second
	// linkRetry: when no partner is free, the caller asks again after
	// about this long.
	linkRetry = 2 * time.Second
	// linkPoolTTL: a host that asked is a candidate partner this long
	// after it last asked (daemons test again every hour by default).
	linkPoolTTL = 3 * time.Hour
	// linkScan: in a pool this small every candidate is looked at; in a
	// larger one, linkSample drawn at random.
	linkScan   = 64
	linkSample = 32
	// linkFastDown: a partner whose measured downlink is this many times
	// the caller's best rate so far cannot have been what limited it.
	linkFastDown = 1.5
)

// linkHost is one host that asked for a partner.
type linkHost struct {
	info      *schedulerv1.Host
	seen      time.Time
	busyUntil time.Time // receiving or sending a test until then
	received  int       // tests it was named partner for
}

// LinkPartner names a partner for req.Host's link test, or says when to
// ask again. The caller joins the pool of partners.
func (s *Scheduler) LinkPartner(req *schedulerv1.LinkPartnerRequest, now time.Time) (*schedulerv1.LinkPartnerResponse, error) {
	h := req.GetHost()
	if h.GetId() == "" || !linkDialable(h) {
		return nil, fmt.Errorf("link partner: host id, ip and upload_port are required: %w", core.ErrInvalid)
	}
	if len(req.GetExclude()) > 64 {
		return nil, fmt.Errorf("link partner: at most 64 excluded hosts: %w", core.ErrInvalid)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	me := s.linkSeenLocked(h, now)
	skip := func(id string, l *linkHost) bool {
		if l == me || now.Before(l.busyUntil) || l.stale(now) {
			return true
		}
		for _, x := range req.GetExclude() {
			if x == id {
				return true
			}
		}
		return false
	}
	// After a first test, a partner whose measured downlink is well above
	// the caller's best rate so far comes first (linkFastDown): a test to
	// a slow downlink says nothing of the caller's uplink, and two of them
	// made a 25 Mbit/s uplink look like 1.9 on the harness (mixed
	// downlinks). Then the one that received the fewest tests.
	fast := func(l *linkHost) bool {
		return req.GetBestBps() > 0 && float64(l.info.GetLinkDownloadBps()) > linkFastDown*float64(req.GetBestBps())
	}
	// A partner in the caller's own locality group (IDC, rack) comes first
	// of all: a test to another one crosses the link between them, which
	// other tests and transfers share. On the harness's two racks, hosts
	// whose two tests both crossed measured 12-17 Mbit/s of 25, were placed
	// as slow leaves in the other rack's pipeline, and the content crossed
	// between the racks twice (2.07 × F), the last host at 0.61 of the bound.
	group := localityGroup(h)
	local := func(l *linkHost) bool { return localityGroup(l.info) == group }
	var best *linkHost
	consider := func(id string) {
		l := s.linkPool[id]
		if skip(id, l) {
			return
		}
		switch {
		case best == nil:
			best = l
		case local(l) != local(best):
			if local(l) {
				best = l
			}
		case fast(l) != fast(best):
			if fast(l) {
				best = l
			}
		case l.received < best.received:
			best = l
		}
	}
	n := len(s.linkIDs)
	if n <= linkScan {
		off := s.rnd.IntN(n)
		for i := range n {
			consider(s.linkIDs[(off+i)%n])
		}
	} else {
		for range linkSample {
			consider(s.linkIDs[s.rnd.IntN(n)])
		}
	}
	if best == nil || now.Before(me.busyUntil) {
		return &schedulerv1.LinkPartnerResponse{RetryAfterMs: linkRetry.Milliseconds()}, nil
	}
	until := now.Add(linkTestDuration + linkBusySlack)
	best.busyUntil, me.busyUntil = until, until
	best.received++
	s.m.linkTests.Inc()
	return &schedulerv1.LinkPartnerResponse{Partner: best.info, DurationMs: linkTestDuration.Milliseconds()}, nil
}

// linkSeenLocked enters h in the pool of partners, or refreshes it. Called
// for a host that asks for a partner, and for one that registers with rates
// its link tests measured (it answers tests): after a scheduler restart the
// pool fills again as the hosts reconnect, not only as they start their
// next round, an hour later.
func (s *Scheduler) linkSeenLocked(h *schedulerv1.Host, now time.Time) *linkHost {
	l := s.linkPool[h.GetId()]
	if l == nil {
		l = &linkHost{}
		s.linkPool[h.GetId()] = l
		s.linkIDs = append(s.linkIDs, h.GetId())
	}
	l.info, l.seen = h, now
	return l
}

// stale reports whether l was last seen (asked, or registered with
// measured rates) more than linkPoolTTL ago: it is no partner any more.
func (l *linkHost) stale(now time.Time) bool { return now.Sub(l.seen) > linkPoolTTL }

// linkDialable reports whether h names an address its upload port can be
// dialled at: a partner's, or one that may become one.
func linkDialable(h *schedulerv1.Host) bool {
	return h.GetIp() != "" && h.GetUploadPort() > 0 && h.GetUploadPort() <= 65535
}

// gcLinkPoolLocked drops the stale hosts.
func (s *Scheduler) gcLinkPoolLocked(now time.Time) {
	for i := 0; i < len(s.linkIDs); {
		id := s.linkIDs[i]
		if !s.linkPool[id].stale(now) {
			i++
			continue
		}
		delete(s.linkPool, id)
		last := len(s.linkIDs) - 1
		if i != last {
			s.linkIDs[i] = s.linkIDs[last]
		}
		s.linkIDs = s.linkIDs[:last]
	}
}

// LinkPartner serves the RPC: only a peer or seed peer may ask, for its
// own host.
func (svc *service) LinkPartner(ctx context.Context, req *schedulerv1.LinkPartnerRequest) (*schedulerv1.LinkPartnerResponse, error) {
	if err := authorizeHost(ctx, req.GetHost()); err != nil {
		return nil, err
	}
	resp, err := svc.s.LinkPartner(req, svc.s.now())
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	return resp, nil
}

// effectiveHost is info as the scheduler uses it: where the operator
// declared no uplink, the one the daemon's link tests measured stands in
// (upload_bps). The measured downlink stands in for download_bps only
// above that uplink: it is a lower bound (the sender may have been the
// limit), and below the uplink it would cap the host's relay capacity by a
// slow sender's rate; above it, it only counts the ACKs a download puts
// on a slow uplink (core.UsableUplink), as the daemon does when it paces
// its uploads. A seed peer's too: its measured uplink may be only its
// partners' downlink (a 10 Gbit/s seed among 1 Gbit/s hosts), so in a large
// task its uplink is still probed from its children (host.linkOnly,
// probing). info itself is left alone (messages share it).
func effectiveHost(info *schedulerv1.Host) *schedulerv1.Host {
	lu, ld := info.GetLinkUploadBps(), info.GetLinkDownloadBps()
	if info.GetUploadBps() > 0 || lu <= 0 {
		return info
	}
	c := proto.Clone(info).(*schedulerv1.Host)
	c.UploadBps = lu
	if c.DownloadBps <= 0 && ld > lu {
		c.DownloadBps = ld
	}
	return c
}
