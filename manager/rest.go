package manager

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/damselfly-io/damselfly/internal/obs"
	"github.com/damselfly-io/damselfly/manager/db"
)

func (m *Manager) routes() http.Handler {
	mux := http.NewServeMux()
	ops := obs.Handler(m.gather, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		return m.db.PingContext(ctx)
	})
	mux.Handle("GET /healthy", ops)
	mux.Handle("GET /metrics", ops)

	a, g := RoleAdmin, RoleGuest
	mux.HandleFunc("POST /api/v1/users/signin", m.handleSignIn)
	mux.HandleFunc("GET /api/v1/users/me", m.authed(g, m.handleMe))
	mux.HandleFunc("GET /api/v1/users", m.authed(a, m.handleListUsers))
	mux.HandleFunc("POST /api/v1/users", m.authed(a, m.handleCreateUser))
	mux.HandleFunc("GET /api/v1/users/{id}", m.authed(a, m.handleGetUser))
	mux.HandleFunc("DELETE /api/v1/users/{id}", m.authed(a, m.handleDeleteUser))
	mux.HandleFunc("PUT /api/v1/users/{id}/password", m.authed(g, m.handleSetPassword))

	mux.HandleFunc("GET /api/v1/tokens", m.authed(g, m.handleListTokens))
	mux.HandleFunc("POST /api/v1/tokens", m.authed(g, m.handleCreateToken))
	mux.HandleFunc("DELETE /api/v1/tokens/{id}", m.authed(g, m.handleDeleteToken))

	mux.HandleFunc("GET /api/v1/clusters", m.authed(g, m.handleListClusters))
	mux.HandleFunc("POST /api/v1/clusters", m.authed(a, m.handleCreateCluster))
	mux.HandleFunc("GET /api/v1/clusters/{id}", m.authed(g, m.handleGetCluster))
	mux.HandleFunc("PATCH /api/v1/clusters/{id}", m.authed(a, m.handleUpdateCluster))
	mux.HandleFunc("DELETE /api/v1/clusters/{id}", m.authed(a, m.handleDeleteCluster))

	for _, k := range []componentKind{kindScheduler, kindSeedPeer} {
		mux.HandleFunc("GET /api/v1/"+k.path, m.authed(g, m.handleListComponents(k)))
		mux.HandleFunc("GET /api/v1/"+k.path+"/{id}", m.authed(g, m.handleGetComponent(k)))
		mux.HandleFunc("DELETE /api/v1/"+k.path+"/{id}", m.authed(a, m.handleDeleteComponent(k)))
	}
	mux.HandleFunc("GET /api/v1/peers", m.authed(g, m.handleListPeers))

	mux.HandleFunc("GET /api/v1/applications", m.authed(g, m.handleListApplications))
	mux.HandleFunc("POST /api/v1/applications", m.authed(a, m.handleCreateApplication))
	mux.HandleFunc("GET /api/v1/applications/{id}", m.authed(g, m.handleGetApplication))
	mux.HandleFunc("PATCH /api/v1/applications/{id}", m.authed(a, m.handleUpdateApplication))
	mux.HandleFunc("DELETE /api/v1/applications/{id}", m.authed(a, m.handleDeleteApplication))

	mux.HandleFunc("GET /api/v1/jobs", m.authed(g, m.handleListJobs))
	mux.HandleFunc("POST /api/v1/jobs", m.authed(a, m.handleCreateJob))
	mux.HandleFunc("GET /api/v1/jobs/{id}", m.authed(g, m.handleGetJob))

	mux.HandleFunc("GET /api/v1/audit", m.authed(a, m.handleListAudit))
	mux.HandleFunc("GET /api/v1/tasks", m.authed(g, m.handleListTasks))
	mux.HandleFunc("GET /api/v1/tasks/{id}", m.authed(g, m.handleGetTask))
	mux.HandleFunc("DELETE /api/v1/tasks/{id}", m.authed(a, m.handleDeleteTask))
	mux.HandleFunc("GET /api/v1/overview", m.authed(g, m.handleOverview))
	mux.HandleFunc("GET /api/v1/config", m.authed(g, m.handleConfig))

	if m.cfg.Console.Enabled {
		mux.Handle("/", consoleHandler())
	}
	// Dragonfly's open API (Harbor's Dragonfly preheat provider): oapi.go.
	mux.HandleFunc("POST /oapi/v1/jobs", m.authed(a, m.handleOAPICreateJob))
	mux.HandleFunc("GET /oapi/v1/jobs/{id}", m.authed(g, m.handleOAPIGetJob))

	mux.HandleFunc("/api/", func(w http.ResponseWriter, r *http.Request) {
		writeErr(w, http.StatusNotFound, fmt.Errorf("no such endpoint: %s %s", r.Method, r.URL.Path))
	})
	return m.count(mux)
}

// count records each request's status code.
func (m *Manager) count(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sw := &statusWriter{ResponseWriter: w, code: http.StatusOK}
		h.ServeHTTP(sw, r)
		m.m.http.WithLabelValues(r.Method, strconv.Itoa(sw.code)).Inc()
	})
}

type statusWriter struct {
	http.ResponseWriter
	code int
}

func (s *statusWriter) WriteHeader(c int) { s.code = c; s.ResponseWriter.WriteHeader(c) }

// errBadRequest marks input errors (400).
var errBadRequest = errors.New("bad request")

func badRequest(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{errBadRequest}, args...)...)
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

func writeErr(w http.ResponseWriter, code int, err error) {
	writeJSON(w, code, map[string]string{"message": err.Error()})
}

// fail maps an error to its status: 400 for bad input, 404 for unknown
// objects, 409 for conflicts, else 500.
func fail(w http.ResponseWriter, err error) {
	switch {
	case errors.Is(err, errBadRequest):
		writeErr(w, http.StatusBadRequest, err)
	case errors.Is(err, errNotFound), errors.Is(err, sql.ErrNoRows):
		writeErr(w, http.StatusNotFound, errNotFound)
	case db.IsUnique(err):
		writeErr(w, http.StatusConflict, errors.New("an object with that name already exists"))
	case errors.Is(err, errForbidden):
		writeErr(w, http.StatusForbidden, err)
	case errors.Is(err, errUnavailable):
		writeErr(w, http.StatusServiceUnavailable, err)
	default:
		writeErr(w, http.StatusInternalServerError, err)
	}
}

// readJSON decodes the body strictly into v.
func readJSON(r *http.Request, v any) error {
	dec := json.NewDecoder(io.LimitReader(r.Body, 1<<20))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return badRequest("body: %v", err)
	}
	return nil
}

func pathID(r *http.Request) (int64, error) {
	id, err := strconv.ParseInt(r.PathValue("id"), 10, 64)
	if err != nil || id < 1 {
		return 0, badRequest("id %q is not a positive integer", r.PathValue("id"))
	}
	return id, nil
}

// paging reads ?page= (from 1) and ?per_page= (1..100, default 20).
func paging(r *http.Request) (limit, offset int, err error) {
	page, per := 1, 20
	if s := r.URL.Query().Get("page"); s != "" {
		if page, err = strconv.Atoi(s); err != nil || page < 1 {
			return 0, 0, badRequest("page %q: want an integer ≥ 1", s)
		}
	}
	if s := r.URL.Query().Get("per_page"); s != "" {
		if per, err = strconv.Atoi(s); err != nil || per < 1 || per > 100 {
			return 0, 0, badRequest("per_page %q: want 1..100", s)
		}
	}
	return per, (page - 1) * per, nil
}

// writeList sends a page of items with its total in X-Total-Count.
func writeList[T any](w http.ResponseWriter, items []T, total int) {
	if items == nil {
		items = []T{}
	}
	w.Header().Set("X-Total-Count", strconv.Itoa(total))
	writeJSON(w, http.StatusOK, items)
}

// ---- users and tokens ----

func (m *Manager) handleSignIn(w http.ResponseWriter, r *http.Request) {
	var in struct {
		Name     string `json:"name"`
		Password string `json:"password"`
	}
	if err := readJSON(r, &in); err != nil {
		fail(w, err)
		return
	}
	if in.Name == "" || in.Password == "" {
		fail(w, badRequest("name and password are required"))
		return
	}
	ctx, src := r.Context(), sourceOf(r)
	// A locked name or source is refused before its password is looked at.
	if d, err := m.lockedFor(ctx, in.Name, src); err != nil {
		fail(w, err)
		return
	} else if d > 0 {
		m.auditLocked(ctx, auditEntry{Action: auditSignIn, Outcome: outcomeLocked, UserName: in.Name, Source: src})
		w.Header().Set("Retry-After", retryAfter(d))
		writeErr(w, http.StatusTooManyRequests, fmt.Errorf("too many failed sign-ins: try again in %s", d.Round(time.Second)))
		return
	}
	tok, exp, u, err := m.signIn(ctx, in.Name, in.Password)
	if errors.Is(err, errUnauthenticated) {
		m.audit(ctx, auditEntry{Action: auditSignIn, Outcome: outcomeFailure, UserName: in.Name, Source: src})
		d, lerr := m.signInFailed(ctx, in.Name, src)
		if lerr != nil {
			fail(w, lerr)
			return
		}
		if d > 0 {
			w.Header().Set("Retry-After", retryAfter(d))
			writeErr(w, http.StatusTooManyRequests, fmt.Errorf("wrong name or password; too many failed sign-ins: try again in %s", d.Round(time.Second)))
			return
		}
		writeErr(w, http.StatusUnauthorized, errors.New("wrong name or password"))
		return
	}
	if err != nil {
		fail(w, err)
		return
	}
	m.signInSucceeded(ctx, in.Name)
	m.audit(ctx, auditEntry{Action: auditSignIn, Outcome: outcomeSuccess, UserID: u.ID, UserName: u.Name, Source: src})
	writeJSON(w, http.StatusOK, map[string]any{"token": tok, "expires_at": exp, "user": u})
}

func (m *Manager) handleMe(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, userFrom(r))
}

const userCols = "id, name, email, role, created_at, updated_at"

func scanUser(s interface{ Scan(...any) error }) (User, error) {
	var u User
	err := s.Scan(&u.ID, &u.Name, &u.Email, &u.Role, &u.CreatedAt, &u.UpdatedAt)
	return u, err
}

func (m *Manager) getUser(r *http.Request, id int64) (User, error) {
	return scanUser(m.db.QueryRow(r.Context(), "SELECT "+userCols+" FROM users WHERE id = ?", id))
}

func (m *Manager) handleListUsers(w http.ResponseWriter, r *http.Request) {
	listRows(m, w, r, "users", userCols, "", nil, scanUser)
}

func validName(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.ContainsRune("._-", c)) {
			return false
		}
	}
	return true
}

func (m *Manager) handleCreateUser(w http.ResponseWriter, r *http.Request) {
	var in struct {
		Name     string `json:"name"`
		Email    string `json:"email"`
		Password string `json:"password"`
		Role     string `json:"role"`
	}
	if err := readJSON(r, &in); err != nil {
		fail(w, err)
		return
	}
	if in.Role == "" {
		in.Role = RoleGuest
	}
	switch {
	case !validName(in.Name):
		fail(w, badRequest("name %q: want 1-64 letters, digits, '.', '_' or '-'", in.Name))
		return
	case len(in.Password) < 8 || len(in.Password) > 72:
		fail(w, badRequest("password: want 8 to 72 characters"))
		return
	case in.Role != RoleAdmin && in.Role != RoleGuest:
		fail(w, badRequest("role %q: want admin or guest", in.Role))
		return
	}
	id, err := m.createUser(r.Context(), in.Name, in.Email, in.Password, in.Role)
	if err != nil {
		fail(w, err)
		return
	}
	u, err := m.getUser(r, id)
	if err != nil {
		fail(w, err)
		return
	}
	writeJSON(w, http.StatusCreated, u)
}

func (m *Manager) handleGetUser(w http.ResponseWriter, r *http.Request) {
	id, err := pathID(r)
	if err == nil {
		var u User
		if u, err = m.getUser(r, id); err == nil {
			writeJSON(w, http.StatusOK, u)
			return
		}
	}
	fail(w, err)
}

func (m *Manager) handleDeleteUser(w http.ResponseWriter, r *http.Request) {
	id, err := pathID(r)
	if err == nil && id == userFrom(r).ID {
		err = badRequest("you cannot delete yourself")
	}
	if err == nil {
		err = m.deleteRow(r, "users", id)
	}
	if err != nil {
		fail(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (m *Manager) handleSetPassword(w http.ResponseWriter, r *http.Request) {
	id, err := pathID(r)
	if err != nil {
		fail(w, err)
		return
	}
	me := userFrom(r)
	if me.ID != id && me.Role != RoleAdmin {
		fail(w, errForbidden)
		return
	}
	var in struct {
		Password string `json:"password"`
	}
	if err := readJSON(r, &in); err != nil {
		fail(w, err)
		return
	}
	if len(in.Password) < 8 || len(in.Password) > 72 {
		fail(w, badRequest("password: want 8 to 72 characters"))
		return
	}
	if _, err := m.getUser(r, id); err != nil {
		fail(w, err)
		return
	}
	h, err := bcryptHash(in.Password)
	if err == nil {
		_, err = m.db.Exec(r.Context(), "UPDATE users SET password_hash = ?, updated_at = ? WHERE id = ?", h, nowMs(), id)
	}
	if err == nil {
		// Sessions end with a password change; personal access tokens stay.
		_, err = m.db.Exec(r.Context(), "DELETE FROM tokens WHERE user_id = ? AND kind = ?", id, kindSession)
	}
	if err != nil {
		fail(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// Token is a personal access token as listed (never the token itself).
type Token struct {
	ID         int64  `json:"id"`
	UserID     int64  `json:"user_id"`
	Name       string `json:"name"`
	ExpiresAt  int64  `json:"expires_at"`
	LastUsedAt int64  `json:"last_used_at"`
	CreatedAt  int64  `json:"created_at"`
}

const tokenCols = "id, user_id, name, expires_at, last_used_at, created_at"

func scanToken(s interface{ Scan(...any) error }) (Token, error) {
	var t Token
	err := s.Scan(&t.ID, &t.UserID, &t.Name, &t.ExpiresAt, &t.LastUsedAt, &t.CreatedAt)
	return t, err
}

func (m *Manager) handleListTokens(w http.ResponseWriter, r *http.Request) {
	listRows(m, w, r, "tokens", tokenCols, "kind = ? AND user_id = ?", []any{kindPAT, userFrom(r).ID}, scanToken)
}

func (m *Manager) handleCreateToken(w http.ResponseWriter, r *http.Request) {
	var in struct {
		Name string `json:"name"`
		// TTL as a Go duration ("720h"); default one year.
		TTL string `json:"ttl"`
	}
	if err := readJSON(r, &in); err != nil {
		fail(w, err)
		return
	}
	maxTTL := m.cfg.Auth.MaxTokenTTL.D()
	ttl := min(365*24*time.Hour, maxTTL)
	if in.TTL != "" {
		d, err := time.ParseDuration(in.TTL)
		if err != nil || d <= 0 {
			fail(w, badRequest("ttl %q: want a positive duration such as 720h", in.TTL))
			return
		}
		if d > maxTTL {
			fail(w, badRequest("ttl %s is longer than the cap auth.max_token_ttl = %s", d, maxTTL))
			return
		}
		ttl = d
	}
	if !validName(in.Name) {
		fail(w, badRequest("name %q: want 1-64 letters, digits, '.', '_' or '-'", in.Name))
		return
	}
	u := userFrom(r)
	tok, id, exp, err := m.issueToken(r.Context(), u.ID, kindPAT, in.Name, ttl)
	if err != nil {
		fail(w, err)
		return
	}
	m.audit(r.Context(), auditEntry{Action: auditTokenCreate, Outcome: outcomeSuccess, UserID: u.ID, UserName: u.Name, Source: sourceOf(r),
		Detail: fmt.Sprintf("token %d %q expires %s", id, in.Name, time.UnixMilli(exp).UTC().Format(time.RFC3339))})
	// The token is shown this once; only its hash is stored.
	writeJSON(w, http.StatusCreated, map[string]any{"id": id, "name": in.Name, "token": tok, "expires_at": exp})
}

func (m *Manager) handleDeleteToken(w http.ResponseWriter, r *http.Request) {
	id, err := pathID(r)
	if err != nil {
		fail(w, err)
		return
	}
	me := userFrom(r)
	q, args := "DELETE FROM tokens WHERE id = ? AND kind = ? AND user_id = ?", []any{id, kindPAT, me.ID}
	if me.Role == RoleAdmin {
		q, args = "DELETE FROM tokens WHERE id = ? AND kind = ?", []any{id, kindPAT}
	}
	res, err := m.db.Exec(r.Context(), q, args...)
	if err == nil {
		if n, _ := res.RowsAffected(); n == 0 {
			err = errNotFound
		}
	}
	if err != nil {
		fail(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// ---- generic helpers over tables ----

// listRows pages through table (filtered by where) and writes the list.
func listRows[T any](m *Manager, w http.ResponseWriter, r *http.Request, table, cols, where string, args []any, scan func(interface{ Scan(...any) error }) (T, error)) {
	limit, offset, err := paging(r)
	if err != nil {
		fail(w, err)
		return
	}
	items, total, err := queryPage(m, r, table, cols, where, args, limit, offset, scan)
	if err != nil {
		fail(w, err)
		return
	}
	writeList(w, items, total)
}

func queryPage[T any](m *Manager, r *http.Request, table, cols, where string, args []any, limit, offset int, scan func(interface{ Scan(...any) error }) (T, error)) ([]T, int, error) {
	ctx := r.Context()
	if where != "" {
		where = " WHERE " + where
	}
	var total int
	if err := m.db.QueryRow(ctx, "SELECT COUNT(*) FROM "+table+where, args...).Scan(&total); err != nil {
		return nil, 0, fmt.Errorf("count %s: %w", table, err)
	}
	order := "id"
	if r.URL.Query().Get("sort") == "-id" {
		order = "id DESC" // newest first
	}
	rows, err := m.db.Query(ctx, "SELECT "+cols+" FROM "+table+where+" ORDER BY "+order+" LIMIT ? OFFSET ?", append(args, limit, offset)...)
	if err != nil {
		return nil, 0, fmt.Errorf("list %s: %w", table, err)
	}
	defer rows.Close()
	var items []T
	for rows.Next() {
		it, err := scan(rows)
		if err != nil {
			return nil, 0, fmt.Errorf("list %s: %w", table, err)
		}
		items = append(items, it)
	}
	return items, total, rows.Err()
}

func (m *Manager) deleteRow(r *http.Request, table string, id int64) error {
	res, err := m.db.Exec(r.Context(), "DELETE FROM "+table+" WHERE id = ?", id)
	if err != nil {
		return fmt.Errorf("delete from %s: %w", table, err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return errNotFound
	}
	return nil
}

// ---- clusters ----

// Cluster is a scheduler cluster: its schedulers serve the daemons its scope
// matches.
type Cluster struct {
	ID          int64        `json:"id"`
	Name        string       `json:"name"`
	Description string       `json:"description"`
	IsDefault   bool         `json:"is_default"`
	Scopes      ClusterScope `json:"scopes"`
	CreatedAt   int64        `json:"created_at"`
	UpdatedAt   int64        `json:"updated_at"`
}

// ClusterScope matches daemons: by IDC (any of a "|"-separated list), by
// location prefix ("region|zone"), or by the daemon's IP in one of the CIDRs.
type ClusterScope struct {
	IDC      string   `json:"idc"`
	Location string   `json:"location"`
	CIDRs    []string `json:"cidrs"`
}

const clusterCols = "id, name, description, is_default, scope_idc, scope_location, scope_cidrs, created_at, updated_at"

func scanCluster(s interface{ Scan(...any) error }) (Cluster, error) {
	var (
		c     Cluster
		def   int
		cidrs string
	)
	err := s.Scan(&c.ID, &c.Name, &c.Description, &def, &c.Scopes.IDC, &c.Scopes.Location, &cidrs, &c.CreatedAt, &c.UpdatedAt)
	c.IsDefault = def != 0
	c.Scopes.CIDRs = []string{}
	if cidrs != "" {
		c.Scopes.CIDRs = strings.Split(cidrs, ",")
	}
	return c, err
}

type clusterInput struct {
	Name        *string       `json:"name"`
	Description *string       `json:"description"`
	IsDefault   *bool         `json:"is_default"`
	Scopes      *ClusterScope `json:"scopes"`
}

func (in clusterInput) apply(c *Cluster) error {
	if in.Name != nil {
		c.Name = *in.Name
	}
	if in.Description != nil {
		c.Description = *in.Description
	}
	if in.IsDefault != nil {
		c.IsDefault = *in.IsDefault
	}
	if in.Scopes != nil {
		c.Scopes = *in.Scopes
	}
	if !validName(c.Name) {
		return badRequest("name %q: want 1-64 letters, digits, '.', '_' or '-'", c.Name)
	}
	for _, s := range c.Scopes.CIDRs {
		if _, _, err := net.ParseCIDR(s); err != nil {
			return badRequest("scopes.cidrs: %q is not a CIDR", s)
		}
	}
	return nil
}

func (m *Manager) handleListClusters(w http.ResponseWriter, r *http.Request) {
	listRows(m, w, r, "clusters", clusterCols, "", nil, scanCluster)
}

func (m *Manager) getCluster(r *http.Request, id int64) (Cluster, error) {
	return scanCluster(m.db.QueryRow(r.Context(), "SELECT "+clusterCols+" FROM clusters WHERE id = ?", id))
}

func (m *Manager) handleGetCluster(w http.ResponseWriter, r *http.Request) {
	id, err := pathID(r)
	if err == nil {
		var c Cluster
		if c, err = m.getCluster(r, id); err == nil {
			writeJSON(w, http.StatusOK, c)
			return
		}
	}
	fail(w, err)
}

func (m *Manager) saveCluster(r *http.Request, c *Cluster) error {
	now := nowMs()
	def := 0
	if c.IsDefault {
		def = 1
		// One default cluster: the new one takes the place.
		if _, err := m.db.Exec(r.Context(), "UPDATE clusters SET is_default = 0 WHERE id <> ?", c.ID); err != nil {
			return err
		}
	}
	cidrs := strings.Join(c.Scopes.CIDRs, ",")
	if c.ID == 0 {
		id, err := m.db.Insert(r.Context(), "INSERT INTO clusters (name, description, is_default, scope_idc, scope_location, scope_cidrs, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
			c.Name, c.Description, def, c.Scopes.IDC, c.Scopes.Location, cidrs, now, now)
		c.ID = id
		if err == nil && c.IsDefault {
			_, err = m.db.Exec(r.Context(), "UPDATE clusters SET is_default = 0 WHERE id <> ?", id)
		}
		return err
	}
	_, err := m.db.Exec(r.Context(), "UPDATE clusters SET name = ?, description = ?, is_default = ?, scope_idc = ?, scope_location = ?, scope_cidrs = ?, updated_at = ? WHERE id = ?",
		c.Name, c.Description, def, c.Scopes.IDC, c.Scopes.Location, cidrs, now, c.ID)
	return err
}

func (m *Manager) handleCreateCluster(w http.ResponseWriter, r *http.Request) {
	var in clusterInput
	c := Cluster{}
	err := readJSON(r, &in)
	if err == nil {
		err = in.apply(&c)
	}
	if err == nil {
		err = m.saveCluster(r, &c)
	}
	if err == nil {
		c, err = m.getCluster(r, c.ID)
	}
	if err != nil {
		fail(w, err)
		return
	}
	writeJSON(w, http.StatusCreated, c)
}

func (m *Manager) handleUpdateCluster(w http.ResponseWriter, r *http.Request) {
	id, err := pathID(r)
	var c Cluster
	if err == nil {
		c, err = m.getCluster(r, id)
	}
	var in clusterInput
	if err == nil {
		err = readJSON(r, &in)
	}
	if err == nil {
		wasDefault := c.IsDefault
		err = in.apply(&c)
		if err == nil && wasDefault && !c.IsDefault {
			err = badRequest("a cluster stops being the default only when another one becomes it")
		}
	}
	if err == nil {
		err = m.saveCluster(r, &c)
	}
	if err == nil {
		c, err = m.getCluster(r, id)
	}
	if err != nil {
		fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, c)
}

func (m *Manager) handleDeleteCluster(w http.ResponseWriter, r *http.Request) {
	id, err := pathID(r)
	var c Cluster
	if err == nil {
		c, err = m.getCluster(r, id)
	}
	if err == nil && c.IsDefault {
		err = badRequest("the default cluster cannot be deleted")
	}
	if err == nil {
		err = m.deleteRow(r, "clusters", id)
	}
	if err != nil {
		fail(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// ---- applications ----

// Application names a user of the system (tasks may carry its name).
type Application struct {
	ID          int64  `json:"id"`
	Name        string `json:"name"`
	URL         string `json:"url"`
	Description string `json:"description"`
	Priority    int    `json:"priority"`
	UserID      int64  `json:"user_id"`
	CreatedAt   int64  `json:"created_at"`
	UpdatedAt   int64  `json:"updated_at"`
}

const appCols = "id, name, url, description, priority, user_id, created_at, updated_at"

func scanApp(s interface{ Scan(...any) error }) (Application, error) {
	var a Application
	err := s.Scan(&a.ID, &a.Name, &a.URL, &a.Description, &a.Priority, &a.UserID, &a.CreatedAt, &a.UpdatedAt)
	return a, err
}

type appInput struct {
	Name        *string `json:"name"`
	URL         *string `json:"url"`
	Description *string `json:"description"`
	Priority    *int    `json:"priority"`
}

func (in appInput) apply(a *Application) error {
	if in.Name != nil {
		a.Name = *in.Name
	}
	if in.URL != nil {
		a.URL = *in.URL
	}
	if in.Description != nil {
		a.Description = *in.Description
	}
	if in.Priority != nil {
		a.Priority = *in.Priority
	}
	if !validName(a.Name) {
		return badRequest("name %q: want 1-64 letters, digits, '.', '_' or '-'", a.Name)
	}
	if a.Priority < 0 || a.Priority > 10 {
		return badRequest("priority %d: want 0..10", a.Priority)
	}
	return nil
}

func (m *Manager) getApp(r *http.Request, id int64) (Application, error) {
	return scanApp(m.db.QueryRow(r.Context(), "SELECT "+appCols+" FROM applications WHERE id = ?", id))
}

func (m *Manager) handleListApplications(w http.ResponseWriter, r *http.Request) {
	listRows(m, w, r, "applications", appCols, "", nil, scanApp)
}

func (m *Manager) handleGetApplication(w http.ResponseWriter, r *http.Request) {
	id, err := pathID(r)
	if err == nil {
		var a Application
		if a, err = m.getApp(r, id); err == nil {
			writeJSON(w, http.StatusOK, a)
			return
		}
	}
	fail(w, err)
}

func (m *Manager) handleCreateApplication(w http.ResponseWriter, r *http.Request) {
	var in appInput
	a := Application{UserID: userFrom(r).ID}
	err := readJSON(r, &in)
	if err == nil {
		err = in.apply(&a)
	}
	if err == nil {
		now := nowMs()
		a.ID, err = m.db.Insert(r.Context(), "INSERT INTO applications (name, url, description, priority, user_id, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
			a.Name, a.URL, a.Description, a.Priority, a.UserID, now, now)
	}
	if err == nil {
		a, err = m.getApp(r, a.ID)
	}
	if err != nil {
		fail(w, err)
		return
	}
	writeJSON(w, http.StatusCreated, a)
}

func (m *Manager) handleUpdateApplication(w http.ResponseWriter, r *http.Request) {
	id, err := pathID(r)
	var a Application
	if err == nil {
		a, err = m.getApp(r, id)
	}
	var in appInput
	if err == nil {
		err = readJSON(r, &in)
	}
	if err == nil {
		err = in.apply(&a)
	}
	if err == nil {
		_, err = m.db.Exec(r.Context(), "UPDATE applications SET name = ?, url = ?, description = ?, priority = ?, updated_at = ? WHERE id = ?",
			a.Name, a.URL, a.Description, a.Priority, nowMs(), id)
	}
	if err == nil {
		a, err = m.getApp(r, id)
	}
	if err != nil {
		fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, a)
}

func (m *Manager) handleDeleteApplication(w http.ResponseWriter, r *http.Request) {
	id, err := pathID(r)
	if err == nil {
		err = m.deleteRow(r, "applications", id)
	}
	if err != nil {
		fail(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}
