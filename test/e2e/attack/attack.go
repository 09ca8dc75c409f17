// Package attack holds what the end-to-end tests' attacker commands (liar,
// poisoner) share: a JSON stats file a test can poll, the loopback peer and
// upload servers a lying peer offers, and its announce stream to a
// scheduler, with or without a (valid, peer) certificate.
package attack

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"google.golang.org/grpc"

	"github.com/damselfly-io/damselfly/api/peerv1"
	"github.com/damselfly-io/damselfly/api/schedulerv1"
	"github.com/damselfly-io/damselfly/core"
	"github.com/damselfly-io/damselfly/internal/identity"
	"github.com/damselfly-io/damselfly/internal/pki"
)

// Stats keeps a value of T and writes it as JSON to a file after every
// change (atomically: a test polling the file never reads half of it).
type Stats[T any] struct {
	path string
	mu   sync.Mutex
	v    T
}

// NewStats writes to path (made absolute, so a later chdir does not move it).
func NewStats[T any](path string) (*Stats[T], error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("stats file %s: %w", path, err)
	}
	return &Stats[T]{path: abs}, nil
}

// Update changes the value under the lock and writes it out.
func (s *Stats[T]) Update(f func(*T)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	f(&s.v)
	b, _ := json.Marshal(&s.v)
	tmp := s.path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err == nil {
		_ = os.Rename(tmp, s.path)
	}
}

// Get returns a copy of the value.
func (s *Stats[T]) Get() T {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.v
}

// TLSFlags registers -tls-cert, -tls-key, -tls-ca and -insecure on the
// default flag set: with a certificate the attacker is a valid member of the
// cluster that lies.
func TLSFlags() *pki.Config {
	var tc pki.Config
	flag.StringVar(&tc.Cert, "tls-cert", "", "peer certificate (PEM)")
	flag.StringVar(&tc.Key, "tls-key", "", "its key")
	flag.StringVar(&tc.CA, "tls-ca", "", "CA bundle")
	flag.BoolVar(&tc.Insecure, "insecure", false, "plaintext gRPC")
	return &tc
}

// Serve offers peer (the Peer gRPC service) and pieces (GET
// /pieces/{task}/{n}) on loopback ports and returns the scheduler Host that
// names them; stop shuts both down.
func Serve(hostname string, creds *pki.Creds, peer peerv1.PeerServer, pieces http.HandlerFunc) (host *schedulerv1.Host, stop func(), err error) {
	peerLis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, nil, err
	}
	upLis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		peerLis.Close()
		return nil, nil, err
	}
	gs := grpc.NewServer(pki.ServerOptions(creds)...)
	peerv1.RegisterPeerServer(gs, peer)
	go func() { _ = gs.Serve(peerLis) }()
	mux := http.NewServeMux()
	mux.HandleFunc("GET /pieces/{task}/{n}", pieces)
	hs := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = hs.Serve(upLis) }()

	peerPort := peerLis.Addr().(*net.TCPAddr).Port
	hostID := core.HostID(hostname, net.JoinHostPort("127.0.0.1", strconv.Itoa(peerPort)))
	if creds != nil {
		hostID = creds.Identity().HostID
	}
	host = &schedulerv1.Host{
		Id:          hostID,
		Hostname:    hostname,
		Ip:          "127.0.0.1",
		PeerPort:    int32(peerPort),
		UploadPort:  int32(upLis.Addr().(*net.TCPAddr).Port),
		UploadSlots: 16,
	}
	return host, func() { gs.Stop(); _ = hs.Close() }, nil
}

// Announce opens an announce stream to the scheduler at addr and sends reg;
// closing the returned connection ends the stream.
func Announce(ctx context.Context, addr string, creds *pki.Creds, reg *schedulerv1.Register) (schedulerv1.Scheduler_AnnounceClient, *grpc.ClientConn, error) {
	conn, err := grpc.NewClient(addr, pki.DialOption(creds, identity.RoleScheduler))
	if err != nil {
		return nil, nil, fmt.Errorf("dial scheduler %s: %w", addr, err)
	}
	stream, err := schedulerv1.NewSchedulerClient(conn).Announce(ctx)
	if err != nil {
		conn.Close()
		return nil, nil, fmt.Errorf("announce: %w", err)
	}
	if err := stream.Send(&schedulerv1.PeerMessage{Msg: &schedulerv1.PeerMessage_Register{Register: reg}}); err != nil {
		conn.Close()
		return nil, nil, fmt.Errorf("register: %w", err)
	}
	return stream, conn, nil
}

// AllPieces is every piece number of a task of n pieces: what a lying peer
// claims to hold.
func AllPieces(n uint32) []uint32 {
	all := make([]uint32, n)
	for i := range all {
		all[i] = uint32(i)
	}
	return all
}
