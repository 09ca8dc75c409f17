// Command liar is a malicious peer for the end-to-end tests. It registers
// with the scheduler for one URL, claims to hold every piece (and even
// reports made-up piece digests), says it is done, and then serves random
// bytes for every piece asked of it. It counts what it serves in a JSON
// stats file so a test can check that honest daemons stop asking.
//
// With -mode source-news it lies about progress instead: it registers as
// the first peer of a task (the one the scheduler sends to the origin),
// never reports a piece, and tells every child on its piece stream, four
// times a second, that the source has received more bytes of the content
// (PieceState.source_bytes): a child must still leave it for the origin
// within its wait's cap.
//
//	liar -scheduler 127.0.0.1:8002 -url http://origin/file -stats /tmp/liar.json
package main

import (
	"context"
	crand "crypto/rand"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/damselfly-io/damselfly/api/peerv1"
	"github.com/damselfly-io/damselfly/api/schedulerv1"
	"github.com/damselfly-io/damselfly/core"
	"github.com/damselfly-io/damselfly/internal/pki"
	"github.com/damselfly-io/damselfly/test/e2e/attack"
)

// Stats is what the liar writes to its stats file after every change.
type Stats struct {
	Ready         bool   `json:"ready"`
	PeerID        string `json:"peer_id"`
	HostID        string `json:"host_id"`
	ContentLength int64  `json:"content_length"`
	PieceSize     uint32 `json:"piece_size"`
	// PieceRequests counts GET /pieces/... requests served with lies.
	PieceRequests int64 `json:"piece_requests"`
	// SyncRequests counts SyncPieces streams opened by children.
	SyncRequests int64 `json:"sync_requests"`
	// source-news mode: notes of source progress sent, and how long the
	// last piece stream a child opened stayed open (milliseconds; 0 while
	// it is open).
	NewsSent      int64 `json:"news_sent"`
	LastStreamMs  int64 `json:"last_stream_ms"`
	StreamsClosed int64 `json:"streams_closed"`
}

type liar struct {
	taskID string
	news   bool
	stats  *attack.Stats[Stats]
}

func (l *liar) update(f func(*Stats)) { l.stats.Update(f) }

func (l *liar) shape() (int64, uint32) {
	st := l.stats.Get()
	return st.ContentLength, st.PieceSize
}

// SyncPieces claims every piece at once and that the task is complete.
type peerServer struct {
	peerv1.UnimplementedPeerServer
	l *liar
}

func (s *peerServer) SyncPieces(req *peerv1.SyncPiecesRequest, stream grpc.ServerStreamingServer[peerv1.PieceState]) error {
	if req.GetTaskId() != s.l.taskID {
		return status.Errorf(codes.NotFound, "task %s not held", req.GetTaskId())
	}
	s.l.update(func(st *Stats) { st.SyncRequests++ })
	if s.l.news {
		return s.l.sendNews(stream)
	}
	length, ps := s.l.shape()
	return stream.Send(&peerv1.PieceState{ContentLength: length, PieceSize: ps, Pieces: attack.AllPieces(core.PieceCount(length, ps)), Done: true})
}

// sendNews holds the child's stream open with ever-growing news of a source
// that never delivers a piece.
func (l *liar) sendNews(stream grpc.ServerStreamingServer[peerv1.PieceState]) error {
	start := time.Now()
	defer l.update(func(st *Stats) {
		st.LastStreamMs = time.Since(start).Milliseconds()
		st.StreamsClosed++
	})
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	for k := uint64(1); ; k++ {
		if err := stream.Send(&peerv1.PieceState{ContentLength: -1, SourceBytes: k << 16}); err != nil {
			return err
		}
		l.update(func(st *Stats) { st.NewsSent++ })
		select {
		case <-tick.C:
		case <-stream.Context().Done():
			return nil
		}
	}
}

// servePiece answers with the right number of random bytes.
func (l *liar) servePiece(w http.ResponseWriter, r *http.Request) {
	if r.PathValue("task") != l.taskID {
		http.Error(w, "unknown task", http.StatusNotFound)
		return
	}
	n, err := strconv.ParseUint(r.PathValue("n"), 10, 32)
	length, ps := l.shape()
	if err != nil || uint32(n) >= core.PieceCount(length, ps) {
		http.Error(w, "bad piece", http.StatusNotFound)
		return
	}
	l.update(func(st *Stats) { st.PieceRequests++ })
	_, size := core.PieceRange(uint32(n), length, ps)
	b := make([]byte, size)
	_, _ = crand.Read(b)
	w.Header().Set("Content-Length", strconv.FormatInt(size, 10))
	w.Header().Set("Content-Type", "application/octet-stream")
	_, _ = w.Write(b)
}

func main() {
	schedAddr := flag.String("scheduler", "", "scheduler host:port")
	url := flag.String("url", "", "URL whose task to lie about (task ID as dfget with no tag/filter)")
	statsPath := flag.String("stats", "", "JSON stats file")
	hostname := flag.String("hostname", "liar", "host name to report")
	mode := flag.String("mode", "corrupt", "corrupt: claim every piece and serve random bytes; source-news: claim nothing and send news of a source that never delivers")
	tc := attack.TLSFlags()
	flag.Parse()
	if *schedAddr == "" || *url == "" || *statsPath == "" {
		fmt.Fprintln(os.Stderr, "liar: -scheduler, -url and -stats are required")
		os.Exit(2)
	}
	if *mode != "corrupt" && *mode != "source-news" {
		fmt.Fprintf(os.Stderr, "liar: -mode %q: want corrupt or source-news\n", *mode)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	creds, err := tc.LoadFiles()
	if err != nil {
		fmt.Fprintln(os.Stderr, "liar:", err)
		os.Exit(2)
	}
	if err := run(ctx, *schedAddr, *url, *statsPath, *hostname, *mode == "source-news", creds); err != nil && ctx.Err() == nil {
		fmt.Fprintln(os.Stderr, "liar:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, schedAddr, url, statsPath, hostname string, news bool, creds *pki.Creds) error {
	stats, err := attack.NewStats[Stats](statsPath)
	if err != nil {
		return err
	}
	l := &liar{taskID: core.TaskID(url, core.TaskOptions{}), news: news, stats: stats}
	host, stop, err := attack.Serve(hostname, creds, &peerServer{l: l}, l.servePiece)
	if err != nil {
		return err
	}
	defer stop()
	peerID := core.NewPeerID(hostname)
	stream, conn, err := attack.Announce(ctx, schedAddr, creds, &schedulerv1.Register{
		PeerId: peerID, Host: host, Task: &schedulerv1.TaskSpec{TaskId: l.taskID, Url: url},
	})
	if err != nil {
		return err
	}
	defer conn.Close()
	if news {
		// Registered: the first peer of the task, sent to the origin.
		// Whatever the scheduler says next, it reports nothing.
		l.update(func(st *Stats) { st.PeerID, st.HostID, st.Ready = peerID, host.GetId(), true })
		fmt.Printf("liar ready: peer %s task %s, news of a source on peer port %d\n", peerID, l.taskID, host.GetPeerPort())
		for {
			if _, err := stream.Recv(); err != nil {
				if ctx.Err() != nil || errors.Is(err, context.Canceled) {
					return nil
				}
				return fmt.Errorf("scheduler stream: %w", err)
			}
		}
	}

	// The scheduler sends the trusted shape at registration when it knows it.
	var length int64 = -1
	var ps uint32
	for length < 0 || ps == 0 {
		m, err := stream.Recv()
		if err != nil {
			return fmt.Errorf("waiting for task info: %w", err)
		}
		if ti := m.GetTaskInfo(); ti != nil && ti.GetPieceSize() > 0 && ti.GetContentLength() >= 0 {
			length, ps = ti.GetContentLength(), ti.GetPieceSize()
		}
	}
	l.update(func(st *Stats) {
		st.PeerID, st.HostID, st.ContentLength, st.PieceSize = peerID, host.GetId(), length, ps
	})

	// Claim every piece, with made-up digests for good measure: the
	// scheduler must trust digests only from peers it sent to the origin.
	n := core.PieceCount(length, ps)
	results := make([]*schedulerv1.PieceResult, n)
	for i := range results {
		_, size := core.PieceRange(uint32(i), length, ps)
		d := make([]byte, core.DigestSize)
		_, _ = crand.Read(d)
		results[i] = &schedulerv1.PieceResult{Number: uint32(i), Digest: d, Length: uint32(size), CostNs: 1e6}
	}
	if err := stream.Send(&schedulerv1.PeerMessage{Msg: &schedulerv1.PeerMessage_Pieces{Pieces: &schedulerv1.PiecesDone{Pieces: results}}}); err != nil {
		return fmt.Errorf("report pieces: %w", err)
	}
	if err := stream.Send(&schedulerv1.PeerMessage{Msg: &schedulerv1.PeerMessage_Done{Done: &schedulerv1.PeerDone{ContentLength: length}}}); err != nil {
		return fmt.Errorf("report done: %w", err)
	}
	l.update(func(st *Stats) { st.Ready = true })
	fmt.Printf("liar ready: peer %s task %s, %d pieces of %d bytes, peer port %d, upload port %d\n",
		peerID, l.taskID, n, ps, host.GetPeerPort(), host.GetUploadPort())

	// Stay registered (a complete parent) until told to stop.
	for {
		if _, err := stream.Recv(); err != nil {
			if ctx.Err() != nil || errors.Is(err, context.Canceled) {
				return nil
			}
			return fmt.Errorf("scheduler stream: %w", err)
		}
	}
}
