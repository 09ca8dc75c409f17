package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"

	"github.com/damselfly-io/damselfly/internal/runtimes"
)

// listFlag is a comma-separated list flag.
type listFlag struct{ v *[]string }

func (l listFlag) String() string {
	if l.v == nil {
		return ""
	}
	return strings.Join(*l.v, ",")
}

func (l listFlag) Set(s string) error {
	*l.v = nil
	for _, x := range strings.Split(s, ",") {
		if x = strings.TrimSpace(x); x != "" {
			*l.v = append(*l.v, x)
		}
	}
	return nil
}

func runtimeFlags(fs *flag.FlagSet, cfg *runtimes.Config) {
	fs.StringVar(&cfg.Root, "root", cfg.Root, "file system root the runtime files live under (e.g. /host in a container)")
	fs.Var(listFlag{&cfg.Runtimes}, "runtimes", "runtimes to wire, comma-separated: containerd, crio, podman, docker (default: each whose config directory exists)")
	fs.StringVar(&cfg.Mirror, "mirror", cfg.Mirror, "the daemon's registry mirror (its --proxy-port)")
	fs.Var(listFlag{&cfg.Registries}, "registries", "containerd: registries that get a hosts.toml, comma-separated host[:port] (https) or http://host:port")
	fs.StringVar(&cfg.Upstream, "upstream", cfg.Upstream, "the registry the daemon's --registry-mirror names: CRI-O, Podman and Docker get a mirror for it only")
	fs.StringVar(&cfg.ContainerdConfig, "containerd-config", cfg.ContainerdConfig, "containerd's main config file (under --root)")
	fs.StringVar(&cfg.ContainerdCertsDir, "containerd-certs-dir", cfg.ContainerdCertsDir, "containerd's hosts.toml directory (config_path; under --root)")
	fs.StringVar(&cfg.RegistriesConfDir, "registries-conf-dir", cfg.RegistriesConfDir, "CRI-O's and Podman's registries.conf.d directory (under --root)")
	fs.StringVar(&cfg.DockerConfig, "docker-config", cfg.DockerConfig, "Docker's daemon.json (under --root)")
	fs.StringVar(&cfg.Restart, "restart", cfg.Restart, "auto: restart containerd when its main config changed, reload CRI-O and Docker when theirs did; never: only say so")
	fs.Var(argvFlag{&cfg.ContainerdRestart}, "containerd-restart-command", "command that restarts containerd (space-separated)")
	fs.Var(argvFlag{&cfg.CRIOReload}, "crio-reload-command", "command that makes CRI-O re-read registries.conf")
	fs.Var(argvFlag{&cfg.DockerReload}, "docker-reload-command", "command that makes dockerd re-read daemon.json")
}

// argvFlag is a command line split on spaces.
type argvFlag struct{ v *[]string }

func (a argvFlag) String() string {
	if a.v == nil {
		return ""
	}
	return strings.Join(*a.v, " ")
}

func (a argvFlag) Set(s string) error { *a.v = strings.Fields(s); return nil }

func runConfigureRuntime(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	cfg := runtimes.DefaultConfig()
	if err := loadConfig(args, &cfg); err != nil {
		fmt.Fprintln(stderr, "damselfly configure-runtime:", err)
		return 2
	}
	fs := newFlagSet("configure-runtime", `Point the node's container runtimes at the local daemon's registry mirror:
containerd (config_path and certs.d/<registry>/hosts.toml), CRI-O and Podman
(registries.conf.d/50-damselfly.conf), Docker (daemon.json registry-mirrors,
Docker Hub only). Keeps what the files already say, backs each file up before
its first change, and changes nothing when run again.`, stderr)
	runtimeFlags(fs, &cfg)
	dry := fs.Bool("dry-run", false, "print the changes as a unified diff and change nothing")
	undo := fs.Bool("undo", false, "restore every file as it was before the first run")
	reloadFile := fs.String("reload-file", "", "also write the runtimes that must re-read their configuration to this file, one per line (for a later step that can restart them, e.g. a privileged init container)")
	pc := fs.Bool("print-config", false, "print the effective configuration as YAML and exit")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "damselfly configure-runtime: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	if *pc {
		return printConfig(stdout, cfg)
	}
	if err := cfg.Validate(); err != nil {
		fmt.Fprintln(stderr, "damselfly configure-runtime: invalid config:", err)
		return 2
	}
	plan := cfg.PlanApply
	if *undo {
		plan = cfg.PlanUndo
	}
	p, err := plan()
	if err != nil {
		fmt.Fprintln(stderr, "damselfly configure-runtime:", err)
		return 1
	}
	for _, n := range p.Notes {
		fmt.Fprintln(stderr, "note:", n)
	}
	if len(p.Changes) == 0 {
		if *reloadFile != "" && !*dry {
			if err := os.WriteFile(*reloadFile, nil, 0o644); err != nil {
				fmt.Fprintln(stderr, "damselfly configure-runtime: write --reload-file:", err)
				return 1
			}
		}
		if *undo {
			fmt.Fprintln(stdout, "nothing to undo")
		} else {
			fmt.Fprintf(stdout, "%s: already configured, nothing to change\n", strings.Join(p.Runtimes, ", "))
		}
		return 0
	}
	if *dry {
		for _, ch := range p.Changes {
			fmt.Fprint(stdout, ch.Diff(cfg.Root))
		}
		for n, argv := range cfg.Reloads(p) {
			fmt.Fprintf(stdout, "# then %s: %s\n", n, strings.Join(argv, " "))
		}
		return 0
	}
	if err := runtimes.Apply(p); err != nil {
		fmt.Fprintln(stderr, "damselfly configure-runtime:", err)
		return 1
	}
	for _, ch := range p.Changes {
		verb := "wrote"
		if ch.Remove {
			verb = "removed"
		} else if *undo {
			verb = "restored"
		}
		fmt.Fprintf(stdout, "%s: %s %s\n", ch.Runtime, verb, ch.Path)
	}
	if *reloadFile != "" {
		var names []string
		for n := range cfg.Reloads(p) {
			names = append(names, n+"\n")
		}
		sort.Strings(names)
		if err := os.WriteFile(*reloadFile, []byte(strings.Join(names, "")), 0o644); err != nil {
			fmt.Fprintln(stderr, "damselfly configure-runtime: write --reload-file:", err)
			return 1
		}
	}
	msgs, err := cfg.RunReloads(ctx, p)
	for _, m := range msgs {
		fmt.Fprintln(stdout, m)
	}
	if err != nil {
		fmt.Fprintln(stderr, "damselfly configure-runtime:", err)
		return 1
	}
	return 0
}
