package manager

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"database/sql"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/damselfly-io/damselfly/manager/db"
)

// bcryptCost is the work factor of password hashes (tests lower it).
var bcryptCost = bcrypt.DefaultCost

// Roles.
const (
	RoleAdmin = "admin"
	RoleGuest = "guest"
)

// Token kinds.
const (
	kindSession = "session"
	kindPAT     = "pat"
)

// User is an account.
type User struct {
	ID        int64  `json:"id"`
	Name      string `json:"name"`
	Email     string `json:"email"`
	Role      string `json:"role"`
	CreatedAt int64  `json:"created_at"`
	UpdatedAt int64  `json:"updated_at"`
}

// ensureAdmin creates "admin" when there is no user at all.
func (m *Manager) ensureAdmin(ctx context.Context) error {
	var n int
	if err := m.db.QueryRow(ctx, "SELECT COUNT(*) FROM users").Scan(&n); err != nil {
		return fmt.Errorf("count users: %w", err)
	}
	if n > 0 {
		return nil
	}
	pass := m.cfg.AdminPassword
	if env := os.Getenv("DAMSELFLY_ADMIN_PASSWORD"); env != "" {
		pass = env
	}
	random := pass == ""
	if random {
		pass = randomToken(18)
	}
	_, err := m.createUser(ctx, "admin", "", pass, RoleAdmin)
	if db.IsUnique(err) {
		return nil // another replica created it first
	}
	if err != nil {
		return fmt.Errorf("create admin: %w", err)
	}
	if random {
		m.initPass = pass
	}
	m.log.Info("created the first admin user", "user", "admin", "random_password", random)
	return nil
}

func (m *Manager) createUser(ctx context.Context, name, email, password, role string) (int64, error) {
	h, err := bcrypt.GenerateFromPassword([]byte(password), bcryptCost)
	if err != nil {
		return 0, fmt.Errorf("hash password: %w", err)
	}
	now := nowMs()
	return m.db.Insert(ctx, "INSERT INTO users (name, email, password_hash, role, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?)",
		name, email, string(h), role, now, now)
}

// randomToken returns n random bytes, base64url.
func randomToken(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

func tokenHash(tok string) string {
	s := sha256.Sum256([]byte(tok))
	return hex.EncodeToString(s[:])
}

// issueToken stores a new token's hash and returns the token.
func (m *Manager) issueToken(ctx context.Context, userID int64, kind, name string, ttl time.Duration) (string, int64, int64, error) {
	prefix := "dfs_"
	if kind == kindPAT {
		prefix = "dfp_"
	}
	tok := prefix + randomToken(32)
	now := nowMs()
	exp := now + ttl.Milliseconds()
	id, err := m.db.Insert(ctx, "INSERT INTO tokens (user_id, kind, name, hash, expires_at, created_at) VALUES (?, ?, ?, ?, ?, ?)",
		userID, kind, name, tokenHash(tok), exp, now)
	if err != nil {
		return "", 0, 0, fmt.Errorf("store token: %w", err)
	}
	return tok, id, exp, nil
}

// signIn checks a name and password and returns a session token.
func (m *Manager) signIn(ctx context.Context, name, password string) (string, int64, *User, error) {
	var (
		u    User
		hash string
	)
	err := m.db.QueryRow(ctx, "SELECT id, name, email, role, created_at, updated_at, password_hash FROM users WHERE name = ?", name).
		Scan(&u.ID, &u.Name, &u.Email, &u.Role, &u.CreatedAt, &u.UpdatedAt, &hash)
	if errors.Is(err, sql.ErrNoRows) {
		// Spend the same time as a wrong password.
		_ = bcrypt.CompareHashAndPassword([]byte("$2a$10$C6UzMDM.H6dfI/f/IKcEeO5xk4Rj3SkP9uX7jS3tVvJH6rO2ZfNMe"), []byte(password))
		return "", 0, nil, errUnauthenticated
	}
	if err != nil {
		return "", 0, nil, err
	}
	if bcrypt.CompareHashAndPassword([]byte(hash), []byte(password)) != nil {
		return "", 0, nil, errUnauthenticated
	}
	// Expired tokens are of no use to anyone; sweep them now and then.
	_, _ = m.db.Exec(ctx, "DELETE FROM tokens WHERE expires_at < ?", nowMs())
	tok, _, exp, err := m.issueToken(ctx, u.ID, kindSession, "", m.cfg.SessionTTL.D())
	if err != nil {
		return "", 0, nil, err
	}
	return tok, exp, &u, nil
}

var (
	errUnauthenticated = errors.New("missing, invalid or expired credentials")
	errForbidden       = errors.New("this needs the admin role")
)

// authenticate returns the user behind the request's bearer token.
func (m *Manager) authenticate(r *http.Request) (*User, error) {
	h := r.Header.Get("Authorization")
	tok, ok := strings.CutPrefix(h, "Bearer ")
	if !ok || tok == "" {
		return nil, errUnauthenticated
	}
	var (
		u    User
		tid  int64
		kind string
	)
	err := m.db.QueryRow(r.Context(), `SELECT u.id, u.name, u.email, u.role, u.created_at, u.updated_at, t.id, t.kind
		FROM tokens t JOIN users u ON u.id = t.user_id WHERE t.hash = ? AND t.expires_at > ?`, tokenHash(strings.TrimSpace(tok)), nowMs()).
		Scan(&u.ID, &u.Name, &u.Email, &u.Role, &u.CreatedAt, &u.UpdatedAt, &tid, &kind)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, errUnauthenticated
	}
	if err != nil {
		return nil, err
	}
	if kind == kindPAT {
		_, _ = m.db.Exec(r.Context(), "UPDATE tokens SET last_used_at = ? WHERE id = ?", nowMs(), tid)
	}
	return &u, nil
}

type ctxKey struct{}

func userFrom(r *http.Request) *User { u, _ := r.Context().Value(ctxKey{}).(*User); return u }

// authed wraps h: any signed-in user for guest, admins only for admin.
func (m *Manager) authed(role string, h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		u, err := m.authenticate(r)
		if errors.Is(err, errUnauthenticated) {
			w.Header().Set("WWW-Authenticate", `Bearer realm="damselfly"`)
			writeErr(w, http.StatusUnauthorized, err)
			return
		}
		if err != nil {
			writeErr(w, http.StatusInternalServerError, err)
			return
		}
		if role == RoleAdmin && u.Role != RoleAdmin {
			writeErr(w, http.StatusForbidden, errForbidden)
			return
		}
		h(w, r.WithContext(context.WithValue(r.Context(), ctxKey{}, u)))
	}
}
