package main

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"strconv"
	"testing"
	"time"
)

func freeTCPPort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func httpStatus(url string) (int, error) {
	c := &http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode, nil
}

// waitStatus polls url until it answers (bounded), returning its status.
func waitStatus(t *testing.T, url string) int {
	t.Helper()
	var err error
	for range 100 {
		var code int
		if code, err = httpStatus(url); err == nil {
			return code
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("%s: %v", url, err)
	return 0
}

// A scheduler's metrics port has no profiler (404); with --pprof the
// profiler answers on the address chosen, and only there.
func TestSchedulerPprofOnlyWhenEnabled(t *testing.T) {
	for _, enabled := range []bool{false, true} {
		grpcPort, metricsPort, pprofPort := freeTCPPort(t), freeTCPPort(t), freeTCPPort(t)
		args := []string{"scheduler", "--listen", "127.0.0.1:" + strconv.Itoa(grpcPort), "--metrics-port", strconv.Itoa(metricsPort),
			"--pprof-listen", "127.0.0.1:" + strconv.Itoa(pprofPort), "--log-level", "error"}
		if enabled {
			args = append(args, "--pprof")
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan int, 1)
		var out, errb bytes.Buffer
		go func() { done <- run(ctx, args, &out, &errb) }()
		metrics := "http://127.0.0.1:" + strconv.Itoa(metricsPort)
		if code := waitStatus(t, metrics+"/healthy"); code != 200 {
			t.Fatalf("healthy: %d", code)
		}
		if code := waitStatus(t, metrics+"/debug/pprof/cmdline"); code != http.StatusNotFound {
			t.Errorf("pprof=%v: metrics port /debug/pprof/cmdline answered %d, want 404", enabled, code)
		}
		code, err := httpStatus("http://127.0.0.1:" + strconv.Itoa(pprofPort) + "/debug/pprof/cmdline")
		if enabled && code != 200 {
			t.Errorf("--pprof: the chosen address answered %d (%v), want 200", code, err)
		}
		if !enabled && err == nil {
			t.Errorf("without --pprof the profiler address answered %d", code)
		}
		cancel()
		select {
		case c := <-done:
			if c != 0 {
				t.Fatalf("scheduler exit %d: %s", c, errb.String())
			}
		case <-time.After(15 * time.Second):
			t.Fatal("scheduler did not stop")
		}
	}
}
