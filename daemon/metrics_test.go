package daemon

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"

	"github.com/damselfly-io/damselfly/api/daemonv1"
	"github.com/damselfly-io/damselfly/client"
)

// A failed download is counted with the reason its error kind maps to, and
// pieces fetched from the origin land in the piece-latency histogram under
// source="origin".
func TestDownloadMetricsReasonAndOriginPieces(t *testing.T) {
	body := strings.Repeat("damselfly", 200_000) // 1.8 MB: several pieces
	origin := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/ok":
			http.ServeContent(w, r, "ok", time.Time{}, strings.NewReader(body))
		case "/broken":
			http.Error(w, "boom", http.StatusInternalServerError)
		default:
			http.NotFound(w, r)
		}
	}))
	defer origin.Close()
	d, reg := startHealthDaemon(t, "", io.Discard)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := client.Dial(ctx, d.cfg.Sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for _, p := range []string{"/ok", "/missing", "/broken"} {
		_, _ = c.Download(ctx, &daemonv1.DownloadRequest{Url: origin.URL + p}, nil)
	}
	for _, want := range []struct {
		labels []string
		n      float64
	}{
		{[]string{"success", "", "origin"}, 1},
		{[]string{"failure", "not_found", "none"}, 1},
		{[]string{"failure", "origin_error", "none"}, 1},
	} {
		if got := testutil.ToFloat64(d.metrics.downloads.WithLabelValues(want.labels...)); got != want.n {
			t.Errorf("downloads_total%v = %v, want %v", want.labels, got, want.n)
		}
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var origins uint64
	for _, mf := range mfs {
		if mf.GetName() != "damselfly_daemon_piece_duration_seconds" {
			continue
		}
		for _, m := range mf.GetMetric() {
			if labelIs(m, "source", "origin") {
				origins += m.GetHistogram().GetSampleCount()
			}
		}
	}
	_, ps := mustTask(t, d, origin.URL+"/ok")
	if want := uint64((len(body) + int(ps) - 1) / int(ps)); origins != want {
		t.Errorf("piece_duration_seconds{source=origin} counted %d pieces, want %d", origins, want)
	}
}

func labelIs(m *dto.Metric, name, value string) bool {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return l.GetValue() == value
		}
	}
	return false
}

func mustTask(t *testing.T, d *Daemon, url string) (int64, int64) {
	t.Helper()
	for _, tk := range d.Store().List() {
		if tk.Meta().URL == url {
			l, ps := tk.Shape()
			return l, int64(ps)
		}
	}
	t.Fatalf("no task for %s", url)
	return 0, 0
}
