package oci

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"time"
)

// TokenServer is a bearer-token realm as docker-registry's `auth: token`
// expects: GET /token?service=…&scope=repository:<name>:<actions> with
// basic auth answers {"token": JWT}. The JWT is ES256-signed, and its x5c
// header carries the signing certificate, which is also the registry's
// rootcertbundle.
type TokenServer struct {
	Service, Issuer string
	User, Password  string
	key             *ecdsa.PrivateKey
	certDER         []byte
	addr            string
	srv             *http.Server
	issued, denied  atomic.Int64
	log             *slog.Logger
}

// NewTokenServer makes a signing key and a self-signed certificate for it.
func NewTokenServer(user, password string, log *slog.Logger) (*TokenServer, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("token server: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(time.Now().UnixNano()),
		Subject:               pkix.Name{CommonName: "damselfly test token issuer"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("token server: %w", err)
	}
	return &TokenServer{Service: "damselfly-test-registry", Issuer: "damselfly-test-issuer", User: user, Password: password,
		key: key, certDER: der, log: log}, nil
}

// CertPEM is the registry's rootcertbundle.
func (s *TokenServer) CertPEM() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: s.certDER})
}

// Serve answers token requests on ln (which may live in another network
// namespace) until Close.
func (s *TokenServer) Serve(ln net.Listener) {
	s.addr = ln.Addr().String()
	mux := http.NewServeMux()
	mux.HandleFunc("GET /token", s.token)
	s.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = s.srv.Serve(ln) }()
}

// Realm is the URL registries send clients to.
func (s *TokenServer) Realm() string { return "http://" + s.addr + "/token" }

// Close stops serving.
func (s *TokenServer) Close() error {
	if s.srv == nil {
		return nil
	}
	return s.srv.Close()
}

// Issued and Denied count the token requests answered and refused.
func (s *TokenServer) Issued() int64 { return s.issued.Load() }
func (s *TokenServer) Denied() int64 { return s.denied.Load() }

type accessEntry struct {
	Type    string   `json:"type"`
	Name    string   `json:"name"`
	Actions []string `json:"actions"`
}

func (s *TokenServer) token(w http.ResponseWriter, r *http.Request) {
	user, pass, ok := r.BasicAuth()
	if !ok || user != s.User || pass != s.Password {
		s.denied.Add(1)
		s.log.Info("token denied", "remote", r.RemoteAddr, "basic_auth", ok, "query", r.URL.RawQuery)
		w.Header().Set("WWW-Authenticate", `Basic realm="damselfly-test-token"`)
		http.Error(w, "bad credentials", http.StatusUnauthorized)
		return
	}
	var access []accessEntry
	for _, scope := range r.URL.Query()["scope"] {
		// repository:<name>:<actions>; the name may hold ':' only in a
		// registry host, which scopes never carry.
		f := strings.Split(scope, ":")
		if len(f) != 3 {
			continue
		}
		access = append(access, accessEntry{Type: f[0], Name: f[1], Actions: strings.Split(f[2], ",")})
	}
	tok, err := s.sign(user, r.URL.Query().Get("service"), access)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	s.issued.Add(1)
	s.log.Info("token issued", "remote", r.RemoteAddr, "query", r.URL.RawQuery)
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]any{
		"token": tok, "access_token": tok, "expires_in": 600, "issued_at": time.Now().UTC().Format(time.RFC3339),
	})
}

func b64(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

func (s *TokenServer) sign(subject, service string, access []accessEntry) (string, error) {
	if service == "" {
		service = s.Service
	}
	now := time.Now()
	header, err := json.Marshal(map[string]any{
		"typ": "JWT", "alg": "ES256",
		"x5c": []string{base64.StdEncoding.EncodeToString(s.certDER)},
	})
	if err != nil {
		return "", err
	}
	jti := make([]byte, 8)
	_, _ = rand.Read(jti)
	claims, err := json.Marshal(map[string]any{
		"iss": s.Issuer, "sub": subject, "aud": service,
		"exp": now.Add(10 * time.Minute).Unix(), "nbf": now.Add(-time.Minute).Unix(), "iat": now.Unix(),
		"jti": hex.EncodeToString(jti), "access": access,
	})
	if err != nil {
		return "", err
	}
	signing := b64(header) + "." + b64(claims)
	sum := sha256.Sum256([]byte(signing))
	r, sg, err := ecdsa.Sign(rand.Reader, s.key, sum[:])
	if err != nil {
		return "", err
	}
	sig := make([]byte, 64) // JWS ES256: r and s, 32 bytes each, big-endian
	r.FillBytes(sig[:32])
	sg.FillBytes(sig[32:])
	return signing + "." + b64(sig), nil
}
