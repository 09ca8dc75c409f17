package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/damselfly-io/damselfly/api/daemonv1"
	"github.com/damselfly-io/damselfly/client"
)

type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// dev-cluster 2 prints each node's socket; a file downloaded on node1 is
// then served to node2 by the swarm; a second cluster on the same
// directory is refused, naming the process that holds it.
func TestDevCluster(t *testing.T) {
	dir, err := os.MkdirTemp("", "dfdev-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	ctx, cancel := context.WithCancel(context.Background())
	var out, errb syncBuf
	done := make(chan int, 1)
	go func() { done <- run(ctx, []string{"dev-cluster", "--dir", dir, "--base-port", "0", "2"}, &out, &errb) }()
	defer func() {
		cancel()
		select {
		case code := <-done:
			if code != 0 {
				t.Errorf("dev-cluster exit %d: %s", code, errb.String())
			}
		case <-time.After(20 * time.Second):
			t.Error("dev-cluster did not stop")
		}
	}()
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(out.String(), "Ctrl-C") {
		select {
		case code := <-done:
			t.Fatalf("dev-cluster exited %d: %s", code, errb.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("no usage printed; stderr: %s", errb.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	socks := regexp.MustCompile(`dfget --sock (\S+) URL`).FindAllStringSubmatch(out.String(), -1)
	if len(socks) != 3 || !strings.Contains(out.String(), "mirror http://127.0.0.1:") {
		t.Fatalf("printed:\n%s", out.String())
	}

	content := make([]byte, 5<<20)
	rand.Read(content)
	origin := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.ServeContent(w, r, "f", time.Unix(0, 0), bytes.NewReader(content))
	}))
	defer origin.Close()
	get := func(sock string, n int) *daemonv1.DownloadProgress {
		t.Helper()
		c, err := client.Dial(ctx, sock)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		outPath := filepath.Join(t.TempDir(), fmt.Sprintf("out%d", n))
		final, err := c.Download(ctx, &daemonv1.DownloadRequest{Url: origin.URL + "/f", Output: outPath, Uid: -1, Gid: -1}, nil)
		if err != nil {
			t.Fatalf("download on %s: %v", sock, err)
		}
		if b, _ := os.ReadFile(outPath); !bytes.Equal(b, content) {
			t.Fatalf("download on %s: wrong content", sock)
		}
		return final
	}
	get(socks[1][1], 1)
	if p := get(socks[2][1], 2); p.GetPeerBytes() == 0 {
		t.Fatalf("node2 fetched nothing from peers: %+v", p)
	}

	code, _, errs := runCmd("dev-cluster", "--dir", dir, "--base-port", "0", "1")
	if code == 0 || !strings.Contains(errs, fmt.Sprintf("locked by process %d", os.Getpid())) {
		t.Fatalf("second cluster on the same dir: exit %d, %s", code, errs)
	}
}

func TestDevClusterBadInput(t *testing.T) {
	for _, args := range [][]string{{"dev-cluster"}, {"dev-cluster", "0"}, {"dev-cluster", "x"}, {"dev-cluster", "--base-port", "65500", "3"}} {
		if code, _, _ := runCmd(args...); code != 2 {
			t.Errorf("%v: exit %d, want 2", args, code)
		}
	}
}
