package manager

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// credentialsKeyEnv, when set, holds the credentials key (base64 of 32
// bytes) and takes precedence over the key file.
const credentialsKeyEnv = "DAMSELFLY_CREDENTIALS_KEY"

// sealedPrefix marks an encrypted secret column: "v1:" + base64(nonce ‖
// AES-256-GCM ciphertext).
const sealedPrefix = "v1:"

// sealer encrypts jobs' registry credentials with a key kept outside the
// database.
type sealer struct{ aead cipher.AEAD }

// loadSealer reads the key from the environment or the key file, creating
// the file (0600, 32 random bytes) when it does not exist.
func loadSealer(path string) (*sealer, bool, error) {
	var (
		raw     string
		created bool
	)
	if env := os.Getenv(credentialsKeyEnv); env != "" {
		raw = env
	} else {
		b, err := os.ReadFile(path)
		if errors.Is(err, os.ErrNotExist) {
			if b, err = createKeyFile(path); err == nil {
				created = true
			}
		}
		if err != nil {
			return nil, false, fmt.Errorf("credentials key %s: %w", path, err)
		}
		if fi, err := os.Stat(path); err == nil && fi.Mode().Perm()&0o077 != 0 {
			if err := os.Chmod(path, 0o600); err != nil {
				return nil, false, fmt.Errorf("credentials key %s: tighten to 0600: %w", path, err)
			}
		}
		raw = string(b)
	}
	key, err := base64.StdEncoding.DecodeString(strings.TrimSpace(raw))
	if err != nil || len(key) != 32 {
		return nil, false, fmt.Errorf("credentials key: want base64 of 32 bytes (e.g. head -c32 /dev/urandom | base64)")
	}
	blk, err := aes.NewCipher(key)
	if err != nil {
		return nil, false, fmt.Errorf("credentials key: %w", err)
	}
	aead, err := cipher.NewGCM(blk)
	if err != nil {
		return nil, false, fmt.Errorf("credentials key: %w", err)
	}
	return &sealer{aead: aead}, created, nil
}

func createKeyFile(path string) ([]byte, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, err
	}
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		return nil, err
	}
	b := []byte(base64.StdEncoding.EncodeToString(key) + "\n")
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, os.ErrExist) {
		return os.ReadFile(path) // another replica on this host made it first
	}
	if err != nil {
		return nil, err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return nil, err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return nil, err
	}
	return b, f.Close()
}

// seal encrypts plaintext; "" stays "".
func (s *sealer) seal(plain []byte) (string, error) {
	if len(plain) == 0 {
		return "", nil
	}
	nonce := make([]byte, s.aead.NonceSize(), s.aead.NonceSize()+len(plain)+s.aead.Overhead())
	if _, err := rand.Read(nonce); err != nil {
		return "", fmt.Errorf("seal credentials: %w", err)
	}
	return sealedPrefix + base64.StdEncoding.EncodeToString(s.aead.Seal(nonce, nonce, plain, nil)), nil
}

// errSealedKey marks a secret that this replica's key cannot open.
var errSealedKey = errors.New("cannot decrypt the job's credentials: the credentials key differs from the one that encrypted them (replicas must share credentials.key_file or DAMSELFLY_CREDENTIALS_KEY)")

// open decrypts a sealed secret. A value without the prefix is a plaintext
// secret written before encryption existed and is returned as it is.
func (s *sealer) open(v string) ([]byte, error) {
	if v == "" {
		return nil, nil
	}
	b64, ok := strings.CutPrefix(v, sealedPrefix)
	if !ok {
		return []byte(v), nil
	}
	b, err := base64.StdEncoding.DecodeString(b64)
	if err != nil || len(b) < s.aead.NonceSize() {
		return nil, errSealedKey
	}
	plain, err := s.aead.Open(nil, b[:s.aead.NonceSize()], b[s.aead.NonceSize():], nil)
	if err != nil {
		return nil, errSealedKey
	}
	return plain, nil
}

// sealLegacySecrets encrypts secrets stored in plaintext by an older
// version (jobs still pending or running when it was upgraded).
func (m *Manager) sealLegacySecrets(ctx context.Context) error {
	rows, err := m.db.Query(ctx, "SELECT id, secret FROM jobs WHERE secret <> '' AND secret NOT LIKE 'v1:%'")
	if err != nil {
		return fmt.Errorf("find plaintext job credentials: %w", err)
	}
	type row struct {
		id  int64
		sec string
	}
	var legacy []row
	for rows.Next() {
		var r row
		if err := rows.Scan(&r.id, &r.sec); err != nil {
			rows.Close()
			return fmt.Errorf("find plaintext job credentials: %w", err)
		}
		legacy = append(legacy, r)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return fmt.Errorf("find plaintext job credentials: %w", err)
	}
	for _, r := range legacy {
		sealed, err := m.sealer.seal([]byte(r.sec))
		if err != nil {
			return err
		}
		// Only if unchanged: a running job may have cleared it meanwhile.
		if _, err := m.db.Exec(ctx, "UPDATE jobs SET secret = ? WHERE id = ? AND secret = ?", sealed, r.id, r.sec); err != nil {
			return fmt.Errorf("encrypt credentials of job %d: %w", r.id, err)
		}
	}
	if len(legacy) > 0 {
		m.log.Info("encrypted job credentials stored in plaintext by an older version", "jobs", len(legacy))
	}
	return nil
}
