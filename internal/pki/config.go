package pki

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"regexp"
	"strings"
)

// TokenEnv is the environment variable holding the bootstrap token.
const TokenEnv = "DAMSELFLY_BOOTSTRAP_TOKEN"

// Config is the `tls:` section every component's configuration has.
type Config struct {
	// Cert and Key are this component's certificate (chain) and private key,
	// PEM files. CA is the bundle of CA certificates that sign the other
	// components (and this one).
	Cert string `yaml:"cert"`
	Key  string `yaml:"key"`
	CA   string `yaml:"ca"`
	// Insecure runs gRPC in plaintext, trusting callers as they claim. Only
	// for tests and closed networks; logged as a warning at start.
	Insecure bool `yaml:"insecure"`
	// BootstrapToken (or the file BootstrapTokenFile, or the environment
	// variable DAMSELFLY_BOOTSTRAP_TOKEN) lets a component without
	// certificate files get one from the manager's CA. On the manager it is
	// the token it accepts (default: made on first start, kept in its data
	// dir).
	BootstrapToken     string `yaml:"bootstrap_token"`
	BootstrapTokenFile string `yaml:"bootstrap_token_file"`
	// ManagerCAHash pins the manager's CA for the join: "sha256:<hex>" of
	// its public key, as the manager prints it at start (components only).
	ManagerCAHash string `yaml:"manager_ca_hash"`
}

// Flags binds the TLS flags to c. joiner adds --manager-ca-hash (components
// that join the manager's CA).
func (c *Config) Flags(fs *flag.FlagSet, joiner bool) {
	fs.StringVar(&c.Cert, "tls-cert", c.Cert, "PEM certificate of this component (with --tls-key and --tls-ca: mutual TLS from files)")
	fs.StringVar(&c.Key, "tls-key", c.Key, "PEM private key of --tls-cert")
	fs.StringVar(&c.CA, "tls-ca", c.CA, "PEM bundle of the CA certificates other components' certificates must chain to")
	fs.BoolVar(&c.Insecure, "insecure", c.Insecure, "plaintext gRPC without certificates; callers are trusted as they claim (tests, closed networks only)")
	if joiner {
		fs.StringVar(&c.BootstrapToken, "bootstrap-token", c.BootstrapToken, "token <id>.<secret> to get a certificate from the manager's CA (env "+TokenEnv+")")
		fs.StringVar(&c.BootstrapTokenFile, "bootstrap-token-file", c.BootstrapTokenFile, "file holding the bootstrap token (e.g. a mounted Kubernetes Secret)")
		fs.StringVar(&c.ManagerCAHash, "manager-ca-hash", c.ManagerCAHash, "sha256:<hex> pin of the manager's CA public key (printed by the manager), checked when joining with a token")
	} else {
		fs.StringVar(&c.BootstrapToken, "bootstrap-token", c.BootstrapToken, "bootstrap token <id>.<secret> the manager accepts (env "+TokenEnv+"; default: made on first start and kept in the data dir)")
		fs.StringVar(&c.BootstrapTokenFile, "bootstrap-token-file", c.BootstrapTokenFile, "file holding the bootstrap token the manager accepts")
	}
}

var (
	hashRE  = regexp.MustCompile(`^sha256:[0-9a-f]{64}$`)
	tokenRE = regexp.MustCompile(`^[a-z0-9]{6}\.[a-z0-9]{16,64}$`)
)

// HasFiles reports whether certificate files are configured.
// (A CA bundle alone is only the manager's pin for a token join.)
func (c Config) HasFiles() bool { return c.Cert != "" || c.Key != "" }

// HasToken reports whether a bootstrap token is configured (flag, file or
// environment).
func (c Config) HasToken() bool {
	return c.BootstrapToken != "" || c.BootstrapTokenFile != "" || os.Getenv(TokenEnv) != ""
}

// Validate checks the section.
func (c Config) Validate() error {
	if c.Insecure && (c.HasFiles() || c.CA != "" || c.BootstrapToken != "" || c.BootstrapTokenFile != "" || c.ManagerCAHash != "") {
		return errors.New("tls.insecure (--insecure) conflicts with certificate files and bootstrap tokens; choose one")
	}
	if c.HasFiles() && (c.Cert == "" || c.Key == "" || c.CA == "") {
		return errors.New("tls: give all of cert, key and ca (--tls-cert, --tls-key, --tls-ca)")
	}
	if c.BootstrapToken != "" && !tokenRE.MatchString(c.BootstrapToken) {
		return errors.New("tls.bootstrap_token: want <id>.<secret>: 6 then 16 to 64 characters of a-z and 0-9")
	}
	if c.ManagerCAHash != "" && !hashRE.MatchString(c.ManagerCAHash) {
		return fmt.Errorf("tls.manager_ca_hash %q: want sha256:<64 hex digits>", c.ManagerCAHash)
	}
	return nil
}

// Token returns the bootstrap token: the flag, else the file, else the
// environment; "" when none is set.
func (c Config) Token() (string, error) {
	t := c.BootstrapToken
	if t == "" && c.BootstrapTokenFile != "" {
		b, err := os.ReadFile(c.BootstrapTokenFile)
		if err != nil {
			return "", fmt.Errorf("read bootstrap token: %w", err)
		}
		t = strings.TrimSpace(string(b))
	}
	if t == "" {
		t = strings.TrimSpace(os.Getenv(TokenEnv))
	}
	if t != "" && !tokenRE.MatchString(t) {
		return "", errors.New("bootstrap token: want <id>.<secret>: 6 then 16 to 64 characters of a-z and 0-9")
	}
	return t, nil
}

// ErrNoTLS says a component has neither certificates nor a way to get them.
var ErrNoTLS = errors.New("no TLS material: give --tls-cert, --tls-key and --tls-ca (or tls: cert, key, ca in the config file), " +
	"or --bootstrap-token (or --bootstrap-token-file, env " + TokenEnv + ") with --manager to get a certificate from the manager's CA, " +
	"or --insecure for plaintext gRPC")

// Require returns ErrNoTLS when c has no way to certificates and is not
// insecure: a component must not start that way.
func (c Config) Require() error {
	if c.Insecure || c.HasFiles() || c.HasToken() {
		return nil
	}
	return ErrNoTLS
}

// LoadFiles loads the configured certificate files; nil without error in
// insecure mode; ErrNoTLS when there are no files (a bootstrap token, if
// any, is handled by the caller).
func (c Config) LoadFiles() (*Creds, error) {
	if c.Insecure {
		return nil, nil
	}
	if !c.HasFiles() {
		return nil, ErrNoTLS
	}
	return LoadFiles(c.Cert, c.Key, c.CA)
}
