package daemon

import (
	"bufio"
	"errors"
	"io"
	"net"
	"net/http"
	"strconv"
	"testing"
	"time"
)

// The upload and proxy ports close keep-alive connections left idle
// (obs.idle_timeout) and cut clients that never finish their headers.
func TestUploadAndProxyPortsCloseIdleConnections(t *testing.T) {
	d := startProxyDaemon(t, func(c *Config) {
		_ = c.Obs.IdleTimeout.Set("300ms")
		_ = c.Obs.ReadHeaderTimeout.Set("300ms")
	})
	upload := net.JoinHostPort("127.0.0.1", strconv.Itoa(int(d.Host().GetUploadPort())))
	for name, c := range map[string]struct{ addr, req string }{
		// An unknown task: 404, and the connection stays open for the next request.
		"upload": {upload, "GET /pieces/0000/0 HTTP/1.1\r\nHost: x\r\n\r\n"},
		// A proxied request to a closed loopback port: 502, kept alive.
		"proxy": {d.ProxyAddr(), "GET http://127.0.0.1:1/x HTTP/1.1\r\nHost: 127.0.0.1:1\r\n\r\n"},
	} {
		t.Run(name+"/idle", func(t *testing.T) {
			conn, err := net.Dial("tcp", c.addr)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			if _, err := io.WriteString(conn, c.req); err != nil {
				t.Fatal(err)
			}
			br := bufio.NewReader(conn)
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatal(err)
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.Close {
				t.Fatalf("the server closed after the response (status %d); the test needs a kept-alive connection", resp.StatusCode)
			}
			if !serverClosed(conn, br, 5*time.Second) {
				t.Fatal("idle keep-alive connection still open after 5s (idle_timeout 300ms)")
			}
		})
		t.Run(name+"/slowloris", func(t *testing.T) {
			conn, err := net.Dial("tcp", c.addr)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			if _, err := io.WriteString(conn, "GET /x HTTP/1.1\r\nHost: x\r\n"); err != nil {
				t.Fatal(err)
			}
			if !serverClosed(conn, conn, 5*time.Second) {
				t.Fatal("unfinished headers: connection still open after 5s (read_header_timeout 300ms)")
			}
		})
	}
}

// serverClosed reads until the server hangs up (true) or d passes (false).
func serverClosed(conn net.Conn, r io.Reader, d time.Duration) bool {
	_ = conn.SetReadDeadline(time.Now().Add(d))
	buf := make([]byte, 512)
	for {
		if _, err := r.Read(buf); err != nil {
			var ne net.Error
			return !(errors.As(err, &ne) && ne.Timeout())
		}
	}
}
