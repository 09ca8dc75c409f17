package manager

import (
	"embed"
	"errors"
	"io/fs"
	"net/http"

	"github.com/damselfly-io/damselfly/internal/config"
)

// The web console: hand-written HTML, CSS and JavaScript modules, no build
// step; see docs/console.md.
//
//go:embed console
var consoleFiles embed.FS

// consoleHandler serves the console's files. The page itself holds no data:
// it signs in through the REST API and keeps the token in sessionStorage.
func consoleHandler() http.Handler {
	sub, _ := fs.Sub(consoleFiles, "console")
	files := http.FileServerFS(sub)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			writeErr(w, http.StatusMethodNotAllowed, errors.New("the console is read with GET"))
			return
		}
		h := w.Header()
		h.Set("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "no-referrer")
		h.Set("Cache-Control", "no-cache")
		files.ServeHTTP(w, r)
	})
}

// handleConfig shows the manager's own effective configuration, secrets
// redacted (schedulers' and seed peers' come with their records).
func (m *Manager) handleConfig(w http.ResponseWriter, r *http.Request) {
	b, err := config.RenderRedacted(m.cfg)
	if err != nil {
		fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"component": "manager", "config": string(b)})
}
