package scheduler

import (
	"fmt"
	"testing"

	"github.com/damselfly-io/damselfly/api/schedulerv1"
)

// idcHost is a host in an IDC, declaring its uplink in Mbit/s (0: nothing).
func idcHost(id, idc string, upMbps float64) regOpt {
	return withHost(&schedulerv1.Host{Id: "host-" + id, Hostname: id, Ip: "127.0.0.1", PeerPort: 65000, UploadPort: 65002,
		Idc: idc, UploadSlots: 16, UploadBps: int64(upMbps * mbps)})
}

// crossings counts t's full-rate edges between two IDCs and the parents
// with more than one full-rate child.
func crossings(v *vsched, task string) (cross, split int, edges string) {
	v.s.mu.Lock()
	defer v.s.mu.Unlock()
	for _, p := range v.s.tasks[tid(task)].list {
		if unpacedChildren(p) > 1 {
			split++
		}
		for _, l := range p.parents {
			if l.share > 0 {
				continue
			}
			edges += fmt.Sprintf(" %s→%s", l.peer.id, p.id)
			if localityGroup(l.peer.host.info) != localityGroup(p.host.info) {
				cross++
			}
		}
	}
	return cross, split, edges
}

// With IDC labels and peers of two IDCs arriving interleaved, the content
// crosses between them once and no uplink is split: each IDC grows its own
// pipeline, and the second one's head hangs below the first one's tail.
// Before, children were counted per IDC: the second IDC's head hung below
// the first one's head and halved both pipelines (the simulator's racks at
// 0.50 of the bound, 0.01 at 200 hosts); and, counted in all, a newcomer of
// the first IDC that found every host of its own IDC busy crossed to the
// other one. With capacities declared and without.
func TestPipelinePerIDC(t *testing.T) {
	for _, up := range []float64{0, 100} {
		t.Run(fmt.Sprintf("uplink %v", up), func(t *testing.T) {
			v := pipelineVirtual(t, nil)
			v.source("t", "s", idcHost("s", "r1", up))
			for _, id := range []string{"a1", "b1", "a2", "b2", "a3", "b3", "a4", "b4"} {
				v.join("t", id, idcHost(id, "r"+map[byte]string{'a': "1", 'b': "2"}[id[0]], up)).parents()
			}
			cross, split, edges := crossings(v, "t")
			if cross != 1 || split != 0 {
				t.Errorf("%d edges between the IDCs (want 1), %d split uplinks (want 0):%s", cross, split, edges)
			}
			v.invariants()
		})
	}
}

// A head of an IDC's pipeline that holds more than a few pieces is not
// moved below a newcomer, which has none: it would wait for the newcomer to
// catch up.
func TestOldCrossHeadStays(t *testing.T) {
	v := pipelineVirtual(t, nil)
	src := v.join("t", "s", idcHost("s", "r1", 100))
	if d := src.decision(); d.GetBackToSource() == nil {
		t.Fatalf("s: want back to source, got %v", d)
	}
	const pieces = 4 * youngHead
	src.meta(pieces<<18, 1<<18)
	for n := range uint32(pieces) {
		src.pieces(originPiece(n))
	}
	src.handle(&schedulerv1.PeerMessage{Msg: &schedulerv1.PeerMessage_Done{Done: &schedulerv1.PeerDone{ContentLength: pieces << 18}}})
	a1 := v.join("t", "a1", idcHost("a1", "r1", 100))
	a1.parents()
	b1 := v.join("t", "b1", idcHost("b1", "r2", 100))
	if got := b1.parents(); len(got) != 1 || got[0] != "a1" {
		t.Fatalf("b1's parents %v, want [a1] (the tail of r1's pipeline)", got)
	}
	b1.pieces(piecesFrom("a1", youngHead+1)...)
	v.join("t", "a2", idcHost("a2", "r1", 100)).parents()
	if got := v.children("t", "a1"); len(got) != 1 || got[0] != "b1" {
		t.Errorf("a1's children %v, want [b1]: a head holding %d pieces was moved", got, youngHead+1)
	}
	v.invariants()
}
