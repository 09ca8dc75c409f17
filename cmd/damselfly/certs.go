package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/damselfly-io/damselfly/internal/identity"
	"github.com/damselfly-io/damselfly/internal/pki"
)

// runCerts makes a CA and component certificates for file-based mutual TLS.
func runCerts(_ context.Context, args []string, stdout, stderr io.Writer) int {
	const usage = `Usage:
  damselfly certs init-ca --dir DIR
      create a CA in DIR (ca.crt, ca.key 0600); prints its pin for --manager-ca-hash
  damselfly certs issue --ca-dir DIR --role ROLE --host-id ID --out DIR2 [--ttl 8760h] [--san IP,NAME]
      issue a key and certificate for damselfly://ROLE/ID into DIR2 (tls.crt, tls.key, ca.crt, all 0600);
      use them with --tls-cert DIR2/tls.crt --tls-key DIR2/tls.key --tls-ca DIR2/ca.crt
  damselfly certs hash --ca-dir DIR
      print the CA's pin (sha256 of its public key)
Roles: manager, scheduler, seed, peer.
`
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	switch args[0] {
	case "init-ca":
		fs := flag.NewFlagSet("certs init-ca", flag.ContinueOnError)
		fs.SetOutput(stderr)
		dir := fs.String("dir", "", "directory for the new CA")
		name := fs.String("name", "damselfly CA", "the CA's common name")
		if err := fs.Parse(args[1:]); err != nil {
			return 2
		}
		if *dir == "" {
			fmt.Fprintln(stderr, "damselfly certs init-ca: --dir is required")
			return 2
		}
		ca, created, err := pki.LoadOrCreateCA(*dir, *name)
		if err != nil {
			fmt.Fprintln(stderr, "damselfly certs init-ca:", err)
			return 1
		}
		if !created {
			fmt.Fprintf(stderr, "damselfly certs init-ca: %s already holds a CA; kept it\n", *dir)
		}
		fmt.Fprintln(stdout, ca.Hash())
		return 0
	case "issue":
		fs := flag.NewFlagSet("certs issue", flag.ContinueOnError)
		fs.SetOutput(stderr)
		caDir := fs.String("ca-dir", "", "directory of the CA (from init-ca)")
		role := fs.String("role", "", "manager, scheduler, seed or peer")
		host := fs.String("host-id", "", "host ID the certificate names (a daemon goes by it; the scheduler holds it to it)")
		out := fs.String("out", "", "directory for tls.crt, tls.key and ca.crt")
		ttl := fs.Duration("ttl", 365*24*time.Hour, "lifetime of the certificate")
		sans := fs.String("san", "", "comma-separated IP addresses and DNS names to add (optional; identities are checked, not names)")
		if err := fs.Parse(args[1:]); err != nil {
			return 2
		}
		id := identity.Identity{Role: identity.Role(*role), HostID: *host}
		if *caDir == "" || *out == "" || !id.Role.Valid() || *host == "" || strings.Contains(*host, "/") {
			fmt.Fprintln(stderr, "damselfly certs issue: need --ca-dir, --out, --role (manager, scheduler, seed, peer) and --host-id (no '/')")
			return 2
		}
		ca, err := pki.LoadCA(*caDir)
		if err != nil {
			fmt.Fprintln(stderr, "damselfly certs issue:", err)
			return 1
		}
		var extra []string
		if *sans != "" {
			extra = strings.Split(*sans, ",")
		}
		if err := ca.IssueFiles(*out, id, *ttl, extra...); err != nil {
			fmt.Fprintln(stderr, "damselfly certs issue:", err)
			return 1
		}
		fmt.Fprintln(stdout, id.URI())
		return 0
	case "hash":
		fs := flag.NewFlagSet("certs hash", flag.ContinueOnError)
		fs.SetOutput(stderr)
		caDir := fs.String("ca-dir", "", "directory of the CA")
		if err := fs.Parse(args[1:]); err != nil {
			return 2
		}
		ca, err := pki.LoadCA(*caDir)
		if err != nil {
			fmt.Fprintln(stderr, "damselfly certs hash:", err)
			return 1
		}
		fmt.Fprintln(stdout, ca.Hash())
		return 0
	case "-h", "--help", "help":
		fmt.Fprint(stdout, usage)
		return 0
	}
	fmt.Fprintf(stderr, "damselfly certs: unknown subcommand %q\n\n%s", args[0], usage)
	return 2
}
