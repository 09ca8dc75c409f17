// Command localrogue is a hostile local client of the daemon's socket for the
// attack tests: it speaks the local API directly (no dfget, no client
// library) and asks for what a well-behaved client never would — an output
// path, an owner and set-id mode bits of its choosing, an import by path.
// It prints what the daemon answered and exits 0 when the daemon accepted
// the request, 1 when it refused, 2 on a usage error.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/damselfly-io/damselfly/api/daemonv1"
	"github.com/damselfly-io/damselfly/internal/fdpass"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: rogue download|import|stat [flags]")
		os.Exit(2)
	}
	fs := flag.NewFlagSet(os.Args[1], flag.ExitOnError)
	sock := fs.String("sock", "", "daemon socket")
	url := fs.String("url", "", "URL to download")
	output := fs.String("output", "", "output path to name in the request")
	pass := fs.String("pass-output", "", "create this file ourselves and pass it as the output")
	mode := fs.Uint("mode", 0o4755, "output mode to ask for")
	uid := fs.Int64("uid", 0, "owner to ask for")
	gid := fs.Int64("gid", 0, "group to ask for")
	path := fs.String("path", "", "file to import by path")
	id := fs.String("id", "", "dfcache id")
	_ = fs.Parse(os.Args[2:])
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	conn, err := grpc.NewClient("unix://"+*sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		fmt.Println("dial:", err)
		os.Exit(1)
	}
	defer conn.Close()
	api := daemonv1.NewDaemonClient(conn)
	switch os.Args[1] {
	case "download":
		req := &daemonv1.DownloadRequest{Url: *url, Output: *output, OutputMode: uint32(*mode), Uid: *uid, Gid: *gid}
		if *pass != "" {
			f, err := os.OpenFile(*pass, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o644)
			if err != nil {
				fmt.Println("create:", err)
				os.Exit(2)
			}
			defer f.Close()
			tok, err := fdpass.Send(ctx, *sock, map[string]*os.File{fdpass.RoleOut: f})
			if err != nil {
				fmt.Println("pass:", err)
				os.Exit(1)
			}
			req.FdToken = tok
		}
		stream, err := api.Download(ctx, req)
		if err == nil {
			for {
				var p *daemonv1.DownloadProgress
				if p, err = stream.Recv(); err != nil || p.GetDone() {
					break
				}
			}
		}
		if err != nil && err != io.EOF {
			fmt.Println("refused:", err)
			os.Exit(1)
		}
	case "import":
		_, err := api.ImportCache(ctx, &daemonv1.ImportCacheRequest{Id: *id, Path: *path})
		if err != nil {
			fmt.Println("refused:", err)
			os.Exit(1)
		}
	case "stat":
		// Any answer of the daemon (NOT_FOUND for this made-up task)
		// shows the socket let us in; UNAVAILABLE means it did not.
		_, err := api.StatTask(ctx, &daemonv1.StatTaskRequest{TaskId: "x"})
		if status.Code(err) == codes.Unavailable {
			fmt.Println("unreachable:", err)
			os.Exit(1)
		}
	default:
		fmt.Fprintln(os.Stderr, "unknown command", os.Args[1])
		os.Exit(2)
	}
	fmt.Println("accepted")
}
