package obs

import (
	"encoding/json"
	"net/http"
)

// Health states a component reports on /healthy.
const (
	StatusOK        = "ok"
	StatusDegraded  = "degraded"
	StatusUnhealthy = "unhealthy"
)

// Health is the body of /healthy: the state and, unless it is ok, why.
// Degraded means the component works with less than it should (a daemon
// without a scheduler still serves downloads from the origin), so it
// answers 200 and readiness probes pass; unhealthy answers 503.
type Health struct {
	Status  string   `json:"status"`
	Reasons []string `json:"reasons,omitempty"`
}

// HealthHandler serves check's answer as JSON: 200 for ok and degraded,
// 503 for unhealthy.
func HealthHandler(check func() Health) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := check()
		if h.Status == "" {
			h.Status = StatusOK
		}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		if h.Status == StatusUnhealthy {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		_ = json.NewEncoder(w).Encode(h)
	})
}
