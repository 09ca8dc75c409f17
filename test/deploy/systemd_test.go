package deploy

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// unit reads a systemd unit's [Service] settings (the last of repeated keys wins).
func unit(t *testing.T, path string) map[string]string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	kv := map[string]string{}
	section := ""
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		l := strings.TrimSpace(sc.Text())
		switch {
		case l == "" || strings.HasPrefix(l, "#"):
		case strings.HasPrefix(l, "["):
			section = l
		case section == "[Service]" || section == "[Install]":
			k, v, ok := strings.Cut(l, "=")
			if !ok {
				t.Fatalf("%s: bad line %q", path, l)
			}
			kv[k] = v
		}
	}
	return kv
}

// Every unit's command line parses (run with --print-config, the systemd
// variables filled in), and each unit is hardened as far as its component
// allows: the manager, scheduler and seed peer as a dynamic user with no
// capabilities, the daemon as root with a read-only system.
func TestSystemdUnits(t *testing.T) {
	units, _ := filepath.Glob("../../deploy/systemd/*.service")
	if len(units) != 4 {
		t.Fatalf("units: %v", units)
	}
	for _, u := range units {
		kv := unit(t, u)
		exe := kv["ExecStart"]
		if !strings.HasPrefix(exe, "/usr/local/bin/damselfly ") || !strings.HasSuffix(exe, " $DAMSELFLY_ARGS") {
			t.Errorf("%s: ExecStart %q", u, exe)
			continue
		}
		line := strings.NewReplacer("${STATE_DIRECTORY}", t.TempDir(), "${RUNTIME_DIRECTORY}", t.TempDir(), " $DAMSELFLY_ARGS", "").Replace(exe)
		argv := strings.Fields(line)
		out, err := exec.Command(damselfly(), append(argv[1:], "--print-config")...).CombinedOutput()
		if err != nil {
			t.Errorf("%s: %s: %v\n%s", u, line, err, out)
		}
		for _, k := range []string{"NoNewPrivileges", "ProtectSystem", "ProtectKernelModules", "SystemCallFilter", "CapabilityBoundingSet"} {
			if kv[k] == "" && k != "CapabilityBoundingSet" {
				t.Errorf("%s: no %s", u, k)
			}
			if _, ok := kv[k]; !ok {
				t.Errorf("%s: no %s", u, k)
			}
		}
		if kv["WantedBy"] != "multi-user.target" {
			t.Errorf("%s: WantedBy %q", u, kv["WantedBy"])
		}
		daemon := strings.HasSuffix(u, "damselfly-daemon.service")
		if daemon != (kv["DynamicUser"] != "yes") {
			t.Errorf("%s: DynamicUser %q (only the node daemon runs as root)", u, kv["DynamicUser"])
		}
		if !daemon && (kv["CapabilityBoundingSet"] != "" || kv["ProtectSystem"] != "strict") {
			t.Errorf("%s: capabilities %q, ProtectSystem %q", u, kv["CapabilityBoundingSet"], kv["ProtectSystem"])
		}
	}

	// systemd's own parser: any unknown key or bad value is a warning.
	requireTools(t, "systemd-analyze")
	dir := t.TempDir()
	var copies []string
	for _, u := range units {
		b, err := os.ReadFile(u)
		if err != nil {
			t.Fatal(err)
		}
		// verify wants the binary to exist; point it at this build.
		p := filepath.Join(dir, filepath.Base(u))
		os.WriteFile(p, []byte(strings.ReplaceAll(string(b), "/usr/local/bin/damselfly", damselfly())), 0o644)
		copies = append(copies, p)
	}
	bad := filepath.Join(dir, "bad.service")
	os.WriteFile(bad, []byte("[Service]\nExecStart=/bin/true\nProtectSystm=yes\n"), 0o644)
	if out, _ := exec.Command("systemd-analyze", "verify", bad).CombinedOutput(); !strings.Contains(string(out), "ProtectSystm") {
		t.Fatalf("systemd-analyze verify did not flag a misspelt key: %s", out)
	}
	out, err := exec.Command("systemd-analyze", append([]string{"verify"}, copies...)...).CombinedOutput()
	if err != nil || len(strings.TrimSpace(string(out))) != 0 {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}
}
