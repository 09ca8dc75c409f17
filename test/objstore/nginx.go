package objstore

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/damselfly-io/damselfly/test/oci"
)

// Nginx is Debian's nginx serving a directory with autoindex on.
type Nginx struct {
	// URL is the server's base URL, e.g. http://127.0.0.1:41234.
	URL  string
	Root string
	dir  string
	proc *oci.Proc
}

// StartNginx serves root on a free loopback port, with its configuration,
// prefix, logs and temporary files under dir, and waits until it answers.
func StartNginx(ctx context.Context, dir, root string) (*Nginx, error) {
	bin, err := exec.LookPath("nginx")
	if err != nil {
		if _, serr := os.Stat("/usr/sbin/nginx"); serr != nil {
			return nil, ErrNoNginx
		}
		bin = "/usr/sbin/nginx"
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	for _, d := range []string{"tmp", "logs"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return nil, err
		}
	}
	user := ""
	if os.Geteuid() == 0 {
		// The workers read the test's temporary directories, which only
		// their owner may enter.
		user = "user root;"
	}
	conf := fmt.Sprintf(`%s
daemon off;
master_process on;
worker_processes 1;
pid %[2]s/nginx.pid;
error_log %[2]s/logs/error.log warn;
events { worker_connections 256; }
http {
  log_format counted '$request_method $uri $status $body_bytes_sent';
  access_log %[2]s/logs/access.log counted;
  client_body_temp_path %[2]s/tmp/body;
  proxy_temp_path %[2]s/tmp/proxy;
  fastcgi_temp_path %[2]s/tmp/fastcgi;
  uwsgi_temp_path %[2]s/tmp/uwsgi;
  scgi_temp_path %[2]s/tmp/scgi;
  default_type application/octet-stream;
  sendfile on;
  server {
    listen 127.0.0.1:%[3]d;
    root %[4]s;
    location / { autoindex on; }
  }
}
`, user, dir, port, root)
	cfgPath := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(cfgPath, []byte(conf), 0o644); err != nil {
		return nil, fmt.Errorf("nginx config: %w", err)
	}
	p, err := oci.Start("", "nginx", filepath.Join(dir, "logs", "nginx.out"), bin, "-p", dir, "-c", cfgPath, "-e", filepath.Join(dir, "logs", "error.log"))
	if err != nil {
		return nil, err
	}
	n := &Nginx{URL: "http://127.0.0.1:" + strconv.Itoa(port), Root: root, dir: dir, proc: p}
	c := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true}}
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := c.Get(n.URL + "/")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return n, nil
			}
			err = fmt.Errorf("GET /: %s", resp.Status)
		}
		if done, perr := p.Exited(); done {
			return nil, fmt.Errorf("nginx exited (%v): %s %s", perr, p.LogTail(2000), n.ErrorLog())
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			n.Stop()
			return nil, fmt.Errorf("nginx on %s does not answer: %w", n.URL, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Served sums the body bytes nginx sent per URI path for GETs answered 200
// or 206, from its access log.
func (n *Nginx) Served() (map[string]int64, error) {
	f, err := os.Open(filepath.Join(n.dir, "logs", "access.log"))
	if err != nil {
		return nil, fmt.Errorf("nginx access log: %w", err)
	}
	defer f.Close()
	out := map[string]int64{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		if len(fs) != 4 || fs[0] != http.MethodGet || (fs[2] != "200" && fs[2] != "206") {
			continue
		}
		b, err := strconv.ParseInt(fs[3], 10, 64)
		if err != nil {
			continue
		}
		out[fs[1]] += b
	}
	return out, sc.Err()
}

// ErrorLog is the tail of nginx's error log.
func (n *Nginx) ErrorLog() string {
	b, _ := os.ReadFile(filepath.Join(n.dir, "logs", "error.log"))
	s := string(b)
	if len(s) > 4000 {
		s = s[len(s)-4000:]
	}
	return s
}

// Stop ends nginx (by its PID, the process group with its worker).
func (n *Nginx) Stop() { n.proc.Stop(3 * time.Second) }
