// Command damselfly runs the Damselfly components: the scheduler, the daemon
// (and seed peer), or all of them in one process.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

// Version is set by the build (-ldflags "-X main.Version=…").
var Version = "dev"

type command struct {
	name     string
	synopsis string
	run      func(ctx context.Context, args []string, stdout, stderr io.Writer) int
}

func commands() []command {
	return []command{
		{"scheduler", "run the scheduler (tracks tasks and peers, picks parents)", runScheduler},
		{"daemon", "run the node daemon (peer, cache, local API); --seed for a seed peer", runDaemon},
		{"manager", "run the manager (clusters, registry of schedulers and seed peers, preheat jobs, REST API)", runManager},
		{"certs", "make a CA and component certificates for mutual TLS from files (init-ca, issue, hash)", runCerts},
		{"all-in-one", "run scheduler, seed peer and daemon in one process on embedded defaults", runAllInOne},
		{"dev-cluster", "start a scheduler, a seed peer and N daemons on loopback, to try several nodes on one machine", runDevCluster},
		{"configure-runtime", "point containerd, CRI-O, Podman or Docker at the local daemon's registry mirror", runConfigureRuntime},
		{"version", "print the version", func(_ context.Context, _ []string, stdout, _ io.Writer) int {
			fmt.Fprintln(stdout, "damselfly", Version)
			return 0
		}},
	}
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "Usage: damselfly <command> [flags]\n\nCommands:")
	for _, c := range commands() {
		fmt.Fprintf(w, "  %-17s %s\n", c.name, c.synopsis)
	}
	fmt.Fprintln(w, "\nRun 'damselfly <command> -h' for the flags of a command.")
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		usage(stdout)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	if args[0] == "--version" || args[0] == "-v" {
		args[0] = "version"
	}
	for _, c := range commands() {
		if c.name == args[0] {
			return c.run(ctx, args[1:], stdout, stderr)
		}
	}
	fmt.Fprintf(stderr, "damselfly: unknown command %q\n\n", args[0])
	usage(stderr)
	return 2
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stdout, os.Stderr))
}
