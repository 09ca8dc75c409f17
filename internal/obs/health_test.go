package obs

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

func TestHealthHandler(t *testing.T) {
	for _, c := range []struct {
		h    Health
		code int
		want string
	}{
		{Health{}, http.StatusOK, StatusOK},
		{Health{Status: StatusDegraded, Reasons: []string{"no scheduler reachable"}}, http.StatusOK, StatusDegraded},
		{Health{Status: StatusUnhealthy, Reasons: []string{"disk gone"}}, http.StatusServiceUnavailable, StatusUnhealthy},
	} {
		mux := http.NewServeMux()
		mux.Handle("GET /healthy", HealthHandler(func() Health { return c.h }))
		mux.Handle("/", Handler(prometheus.NewRegistry(), nil))
		rec := httptest.NewRecorder()
		mux.ServeHTTP(rec, httptest.NewRequest("GET", "/healthy", nil))
		var got Health
		if err := json.Unmarshal(rec.Body.Bytes(), &got); err != nil {
			t.Fatalf("%+v: body %q: %v", c.h, rec.Body, err)
		}
		if rec.Code != c.code || got.Status != c.want || len(got.Reasons) != len(c.h.Reasons) {
			t.Errorf("%+v: got %d %+v, want %d %s", c.h, rec.Code, got, c.code, c.want)
		}
	}
}
