// Command rogue is an attacker speaking Damselfly's gRPC protocols: it
// tries one thing a component must not let it do and prints ACCEPTED or
// REFUSED <code>: <message>. The mTLS tests (../mtls_test.go) run it with no
// certificate, with a peer's certificate, and with a certificate from
// another CA against the real binaries.
//
// Attacks (-attack):
//
//	register-seed, register-scheduler  manager Register as that component type
//	announce                           scheduler Announce registering -host-id
//	seed-tasks                         scheduler SeedTasks for -host-id
//	preheat                            daemon Peer.Preheat
//	seed-listener                      register as a seed peer with the manager at
//	                                   -target, serve Peer.Preheat on -listen and
//	                                   print PREHEAT <authorization> for every call
//	                                   (until killed)
package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/damselfly-io/damselfly/api/managerv1"
	"github.com/damselfly-io/damselfly/api/peerv1"
	"github.com/damselfly-io/damselfly/api/schedulerv1"
	"github.com/damselfly-io/damselfly/core"
)

func main() {
	attack := flag.String("attack", "", "what to try (see the package doc)")
	target := flag.String("target", "", "host:port of the manager, scheduler or daemon peer port")
	transport := flag.String("transport", "plaintext", "plaintext, tls (TLS without a client certificate) or mtls (with -tls-*)")
	hostID := flag.String("host-id", "rogue", "host ID to claim")
	listen := flag.String("listen", "127.0.0.1:0", "seed-listener: its peer gRPC address")
	var tc struct{ Cert, Key, CA string }
	flag.StringVar(&tc.Cert, "tls-cert", "", "certificate (mtls)")
	flag.StringVar(&tc.Key, "tls-key", "", "key (mtls)")
	flag.StringVar(&tc.CA, "tls-ca", "", "CA bundle (mtls; unused: the rogue trusts any server)")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var opt grpc.DialOption
	switch *transport {
	case "plaintext":
		opt = grpc.WithTransportCredentials(insecure.NewCredentials())
	case "tls":
		// A stranger: TLS, trusting any server, no certificate of its own.
		opt = grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{InsecureSkipVerify: true})) //nolint:gosec // an attacker
	case "mtls":
		kp, err := tls.LoadX509KeyPair(tc.Cert, tc.Key)
		if err != nil {
			fail(err)
		}
		// The attacker presents its certificate and does not care who the
		// server is: any refusal is the server's.
		opt = grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{kp}, InsecureSkipVerify: true})) //nolint:gosec // an attacker
	default:
		fail(fmt.Errorf("unknown -transport %q", *transport))
	}
	conn, err := grpc.NewClient(*target, opt)
	if err != nil {
		fail(err)
	}
	defer conn.Close()
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	switch *attack {
	case "register-seed", "register-scheduler":
		typ := managerv1.ComponentType_COMPONENT_TYPE_SEED_PEER
		if *attack == "register-scheduler" {
			typ = managerv1.ComponentType_COMPONENT_TYPE_SCHEDULER
		}
		_, err := managerv1.NewManagerClient(conn).Register(rctx, &managerv1.RegisterRequest{Type: typ, HostId: *hostID, Hostname: *hostID, Ip: "127.0.0.1", Port: 1})
		report(err)
	case "announce":
		actx, acancel := context.WithTimeout(ctx, 3*time.Second)
		defer acancel()
		stream, err := schedulerv1.NewSchedulerClient(conn).Announce(actx)
		if err == nil {
			url := "http://127.0.0.1:1/rogue"
			err = stream.Send(&schedulerv1.PeerMessage{Msg: &schedulerv1.PeerMessage_Register{Register: &schedulerv1.Register{
				PeerId: core.NewPeerID(*hostID),
				Host:   &schedulerv1.Host{Id: *hostID, Hostname: *hostID, Ip: "127.0.0.1", PeerPort: 1, UploadPort: 2, UploadSlots: 4},
				Task:   &schedulerv1.TaskSpec{TaskId: core.TaskID(url, core.TaskOptions{}), Url: url},
			}}})
		}
		if err == nil {
			// The scheduler answers a registration (wait, back to source,
			// parents) or holds the stream open; a refusal ends it.
			_, err = stream.Recv()
		}
		if status.Code(err) == codes.DeadlineExceeded {
			err = nil
		}
		report(err)
	case "seed-tasks":
		sctx, scancel := context.WithTimeout(ctx, 3*time.Second)
		defer scancel()
		stream, err := schedulerv1.NewSchedulerClient(conn).SeedTasks(sctx, &schedulerv1.SeedTasksRequest{Host: &schedulerv1.Host{Id: *hostID, Hostname: *hostID, Ip: "127.0.0.1", PeerPort: 1, UploadPort: 2, Seed: true}})
		if err == nil {
			_, err = stream.Recv()
		}
		if status.Code(err) == codes.DeadlineExceeded {
			// The stream stayed open: the scheduler took it as a seed peer.
			err = nil
		}
		report(err)
	case "preheat":
		// A task ID that does not fit the URL: a handler that runs refuses
		// it at once (InvalidArgument), without fetching anything.
		url := "http://127.0.0.1:1/rogue-preheat"
		_, err := peerv1.NewPeerClient(conn).Preheat(rctx, &peerv1.PreheatRequest{Task: &schedulerv1.TaskSpec{TaskId: "rogue", Url: url}})
		report(err)
	case "seed-listener":
		seedListener(ctx, conn, *listen, *hostID)
	default:
		fail(fmt.Errorf("unknown -attack %q", *attack))
	}
}

// report prints the outcome: the call reached its handler and was served
// (ACCEPTED), or the server refused who the caller is (REFUSED). A handler
// that ran and failed for another reason counts as accepted.
func report(err error) {
	switch status.Code(err) {
	case codes.PermissionDenied, codes.Unauthenticated, codes.Unavailable:
		fmt.Printf("REFUSED %s: %s\n", status.Code(err), status.Convert(err).Message())
	default:
		fmt.Println("ACCEPTED", err)
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "rogue:", err)
	os.Exit(1)
}

// seedListener registers as a seed peer (plaintext peer port, as on main)
// and reports every Preheat it is sent, with its Authorization header.
func seedListener(ctx context.Context, conn *grpc.ClientConn, listen, hostID string) {
	lis, err := net.Listen("tcp", listen)
	if err != nil {
		fail(err)
	}
	gs := grpc.NewServer()
	peerv1.RegisterPeerServer(gs, &preheatSpy{})
	go func() { _ = gs.Serve(lis) }()
	defer gs.Stop()
	port := lis.Addr().(*net.TCPAddr).Port
	fmt.Println("LISTENING", port)
	mc := managerv1.NewManagerClient(conn)
	for ctx.Err() == nil {
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		_, err := mc.Register(rctx, &managerv1.RegisterRequest{Type: managerv1.ComponentType_COMPONENT_TYPE_SEED_PEER,
			HostId: hostID, Hostname: hostID, Ip: "127.0.0.1", Port: int32(port), UploadPort: int32(port)})
		cancel()
		report(err)
		select {
		case <-ctx.Done():
		case <-time.After(500 * time.Millisecond):
		}
	}
}

type preheatSpy struct{ peerv1.UnimplementedPeerServer }

func (preheatSpy) Preheat(_ context.Context, req *peerv1.PreheatRequest) (*peerv1.PreheatResponse, error) {
	fmt.Println("PREHEAT", strconv.Quote(req.GetTask().GetHeaders()["Authorization"]))
	return nil, errors.New("rogue")
}
