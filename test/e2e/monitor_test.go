package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// promProc is a real Prometheus (Debian's) scraping the test's cluster.
type promProc struct {
	*proc
	url string
}

// startPrometheus runs prometheus with its own storage in a temp dir, on a
// free loopback port, scraping every second and evaluating rules every second.
func startPrometheus(t *testing.T, jobs map[string][]string, rules string) *promProc {
	t.Helper()
	bin, err := exec.LookPath("prometheus")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("prometheus not installed (scripts/install-deps.sh installs it)")
		}
		t.Skip("prometheus not installed (apt-get install prometheus, see scripts/install-deps.sh)")
	}
	dir := t.TempDir()
	var cfg strings.Builder
	cfg.WriteString("global: {scrape_interval: 1s, scrape_timeout: 900ms, evaluation_interval: 1s}\n")
	fmt.Fprintf(&cfg, "rule_files: [%q]\nscrape_configs:\n", rules)
	for job, targets := range jobs {
		q := make([]string, len(targets))
		for i, tg := range targets {
			q[i] = strconv.Quote(tg)
		}
		fmt.Fprintf(&cfg, "  - job_name: %s\n    static_configs: [{targets: [%s]}]\n", job, strings.Join(q, ", "))
	}
	cfgPath := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(cfgPath, []byte(cfg.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	addr := "127.0.0.1:" + strconv.Itoa(freePort(t))
	logPath := filepath.Join(dir, "prometheus.log")
	f, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "--config.file="+cfgPath, "--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+addr, "--storage.tsdb.retention.time=1h")
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &proc{name: "prometheus", cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); f.Close(); close(p.done) }()
	t.Cleanup(func() {
		p.stop(syscall.SIGTERM)
		if t.Failed() {
			b, _ := os.ReadFile(logPath)
			t.Logf("---- prometheus log ----\n%s", b)
		}
	})
	pp := &promProc{proc: p, url: "http://" + addr}
	waitHTTP(t, pp.url+"/-/ready", p)
	return pp
}

type promResult struct {
	Status    string `json:"status"`
	Error     string `json:"error"`
	ErrorType string `json:"errorType"`
	Data      struct {
		ResultType string            `json:"resultType"`
		Result     []json.RawMessage `json:"result"`
	} `json:"data"`
}

// query runs an instant query through /api/v1/query.
func (p *promProc) query(t *testing.T, q string) promResult {
	t.Helper()
	resp, err := http.Get(p.url + "/api/v1/query?query=" + url.QueryEscape(q))
	if err != nil {
		t.Fatalf("query %s: %v", q, err)
	}
	defer resp.Body.Close()
	var r promResult
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
		t.Fatalf("query %s: %v", q, err)
	}
	return r
}

func (p *promProc) getJSON(t *testing.T, path string, out any) {
	t.Helper()
	resp, err := http.Get(p.url + path)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
}

type promAlert struct {
	Labels map[string]string `json:"labels"`
	State  string            `json:"state"`
}

func (p *promProc) alerts(t *testing.T) []promAlert {
	var r struct {
		Data struct {
			Alerts []promAlert `json:"alerts"`
		} `json:"data"`
	}
	p.getJSON(t, "/api/v1/alerts", &r)
	return r.Data.Alerts
}

func firing(as []promAlert, name string, match map[string]string) bool {
next:
	for _, a := range as {
		if a.Labels["alertname"] != name || a.State != "firing" {
			continue
		}
		for k, v := range match {
			if a.Labels[k] != v {
				continue next
			}
		}
		return true
	}
	return false
}

// dashboardExprs returns every query of the Grafana dashboard, with its
// panel title, and the names of its template variables.
func dashboardExprs(t *testing.T, path string) (map[string][]string, []string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	type panel struct {
		Title   string `json:"title"`
		Targets []struct {
			Expr string `json:"expr"`
		} `json:"targets"`
		Panels []json.RawMessage `json:"panels"`
	}
	var dash struct {
		Panels     []json.RawMessage `json:"panels"`
		Templating struct {
			List []struct {
				Name string `json:"name"`
			} `json:"list"`
		} `json:"templating"`
	}
	if err := json.Unmarshal(b, &dash); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	exprs := map[string][]string{}
	var walk func([]json.RawMessage)
	walk = func(ps []json.RawMessage) {
		for _, raw := range ps {
			var p panel
			if err := json.Unmarshal(raw, &p); err != nil {
				t.Fatalf("%s: panel: %v", path, err)
			}
			for _, tg := range p.Targets {
				exprs[p.Title] = append(exprs[p.Title], tg.Expr)
			}
			walk(p.Panels)
		}
	}
	walk(dash.Panels)
	var vars []string
	for _, v := range dash.Templating.List {
		vars = append(vars, v.Name)
	}
	return exprs, vars
}

// TestPrometheusDashboardAndAlerts starts a small cluster (manager,
// scheduler, seed peer, two daemons) and a real Prometheus scraping it, runs
// downloads, and checks through Prometheus' HTTP API that every query of the
// shipped Grafana dashboard returns data, that every alert rule evaluates,
// that promtool accepts the rules, and that stopping the scheduler fires
// the scheduler-unreachable and component-down alerts.
func TestPrometheusDashboardAndAlerts(t *testing.T) {
	root := filepath.Join("..", "..")
	rulesSrc := filepath.Join(root, "deploy", "prometheus", "damselfly-rules.yaml")
	if out, err := exec.Command("promtool", "check", "rules", rulesSrc).CombinedOutput(); err != nil {
		t.Fatalf("promtool check rules %s: %v\n%s", rulesSrc, err, out)
	}
	// The test's copy waits 1 s instead of minutes before an alert fires.
	raw, err := os.ReadFile(rulesSrc)
	if err != nil {
		t.Fatal(err)
	}
	fors := regexp.MustCompile(`(?m)^(\s+for:) \S+$`)
	if n := len(fors.FindAll(raw, -1)); n != 6 {
		t.Fatalf("%d rules with for:, want 6 (every rule needs one)", n)
	}
	rules := filepath.Join(t.TempDir(), "rules.yaml")
	if err := os.WriteFile(rules, fors.ReplaceAll(raw, []byte("$1 1s")), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("promtool", "check", "rules", rules).CombinedOutput(); err != nil {
		t.Fatalf("promtool check rules (test copy): %v\n%s", err, out)
	}

	o := newOrigin(t)
	mgr := startManager(t, t.TempDir())
	sched := startScheduler(t, "--manager", mgr.grpc)
	// Byte watermarks, so the dashboard draws them (the defaults use only
	// the file system's).
	extra := []string{"--manager", mgr.grpc, "--cache-high-watermark", "8G", "--cache-low-watermark", "6G"}
	seed := startDaemon(t, daemonOpts{name: "seed", scheduler: sched.addr, seed: true, extra: extra})
	ds := []*daemonProc{
		startDaemon(t, daemonOpts{name: "peer0", scheduler: sched.addr, extra: extra}),
		startDaemon(t, daemonOpts{name: "peer1", scheduler: sched.addr, extra: extra}),
	}
	host := func(u string) string { return strings.TrimPrefix(u, "http://") }
	prom := startPrometheus(t, map[string][]string{
		"damselfly-daemon":    {host(seed.metrics), host(ds[0].metrics), host(ds[1].metrics)},
		"damselfly-scheduler": {host(sched.metrics)},
		"damselfly-manager":   {host(mgr.api)},
	}, rules)

	// Rates need two samples: Prometheus scrapes everything once before the
	// downloads, and a few times after.
	waitFor(t, 30*time.Second, "Prometheus to scrape every component", func() bool {
		r := prom.query(t, `count(up == 1) == 5`)
		return len(r.Data.Result) > 0
	})
	url, sum := o.add("monitored.bin", 6<<20, 7)
	fetchAll(t, ds, url, sum)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if code, out := dfget(ctx, o.URL+"/no-such-file", "-O", filepath.Join(t.TempDir(), "x"), "--sock", ds[0].sock); code == 0 {
		t.Fatalf("dfget of a missing file succeeded: %s", out)
	}
	// Bounded wait until Prometheus holds a scrape taken after the downloads.
	waitFor(t, 30*time.Second, "Prometheus to scrape the downloads", func() bool {
		r := prom.query(t, `count_over_time(damselfly_daemon_downloads_total{outcome="failure",reason="not_found"}[1m]) >= 3`)
		return len(r.Data.Result) > 0
	})

	exprs, vars := dashboardExprs(t, filepath.Join(root, "deploy", "grafana", "damselfly.json"))
	subst := strings.NewReplacer(
		"$daemon_job", "damselfly-daemon", "$scheduler_job", "damselfly-scheduler", "$manager_job", "damselfly-manager",
		"$instance", ".*", "$__rate_interval", "1m", "$__range", "5m")
	if len(vars) != 5 {
		t.Errorf("template variables %v: the substitutions below cover datasource, daemon_job, scheduler_job, manager_job and instance", vars)
	}
	n := 0
	for title, es := range exprs {
		for _, e := range es {
			q := subst.Replace(e)
			if strings.Contains(q, "$") {
				t.Errorf("%s: unknown template variable left in %s", title, q)
				continue
			}
			n++
			r := prom.query(t, q)
			switch {
			case r.Status != "success":
				t.Errorf("%s: %s: %s %s", title, q, r.ErrorType, r.Error)
			case len(r.Data.Result) == 0:
				t.Errorf("%s: no data for %s", title, q)
			}
		}
	}
	if n < 20 {
		t.Errorf("only %d dashboard queries found", n)
	}

	// Every rule evaluates without error (health ok), and none of the two
	// scheduler alerts fires while the scheduler runs.
	type rule struct {
		Name, Query, Health, LastError string
	}
	var rulesResp struct {
		Data struct {
			Groups []struct {
				Rules []rule `json:"rules"`
			} `json:"groups"`
		} `json:"data"`
	}
	waitFor(t, 20*time.Second, "every rule evaluated", func() bool {
		prom.getJSON(t, "/api/v1/rules", &rulesResp)
		cnt := 0
		for _, g := range rulesResp.Data.Groups {
			for _, r := range g.Rules {
				if r.Health != "ok" {
					return false
				}
				cnt++
			}
		}
		return cnt == 6
	})
	for _, g := range rulesResp.Data.Groups {
		for _, r := range g.Rules {
			if res := prom.query(t, r.Query); res.Status != "success" {
				t.Errorf("alert %s: %s: %s", r.Name, res.ErrorType, res.Error)
			}
		}
	}
	as := prom.alerts(t)
	if firing(as, "DamselflySchedulerUnreachable", nil) || firing(as, "DamselflyComponentDown", nil) {
		t.Fatalf("scheduler alerts fire while every component runs: %+v", as)
	}

	sched.stop(syscall.SIGTERM)
	waitFor(t, 60*time.Second, "the scheduler alerts to fire", func() bool {
		as := prom.alerts(t)
		return firing(as, "DamselflySchedulerUnreachable", nil) &&
			firing(as, "DamselflyComponentDown", map[string]string{"job": "damselfly-scheduler"})
	})
	// The daemons say so on /healthy too, still answering 200.
	resp, err := http.Get(ds[0].metrics + "/healthy")
	if err != nil {
		t.Fatal(err)
	}
	var h struct{ Status string }
	_ = json.NewDecoder(resp.Body).Decode(&h)
	resp.Body.Close()
	if resp.StatusCode != 200 || h.Status != "degraded" {
		t.Errorf("/healthy with the scheduler stopped: %d %q, want 200 degraded", resp.StatusCode, h.Status)
	}
}
