// Package test renders the Helm chart with helm (v4) and decodes every
// manifest strictly into the Kubernetes API types: a field the API does not
// know is an error, as a real API server would reject it. It lives in its
// own module so k8s.io stays out of the product's dependencies.
package test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"
)

const chart = "../damselfly"

// damselflyBin is the product's binary, built once by TestMain, so the
// chart's command lines are checked against the flags that really exist.
var damselflyBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "damselfly-chart-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	damselflyBin = filepath.Join(dir, "damselfly")
	build := exec.Command("go", "build", "-o", damselflyBin, "./cmd/damselfly")
	build.Dir = "../../.."
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build damselfly:", err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// checkArgs runs every damselfly container's command line (with the
// $(VAR) references Kubernetes expands filled in) with --print-config: a
// flag the binary does not know, or a value it rejects, fails. Flags owned
// by another component that this binary does not have yet are reported.
func checkArgs(t *testing.T, r *rendered) {
	t.Helper()
	var specs []corev1.PodSpec
	for _, d := range r.deployments {
		specs = append(specs, d.Spec.Template.Spec)
	}
	for _, s := range r.statefulSets {
		specs = append(specs, s.Spec.Template.Spec)
	}
	for _, d := range r.daemonSets {
		specs = append(specs, d.Spec.Template.Spec)
	}
	help, _ := exec.Command(damselflyBin, "daemon", "-h").CombinedOutput()
	vars := strings.NewReplacer("$(POD_IP)", "10.77.0.2", "$(NODE_IP)", "10.77.0.3", "$(POD_NAME)", "pod-0", "$(NODE_NAME)", "node-a",
		"$(DAMSELFLY_DATABASE_DSN)", "postgres://u:p@db:5432/d")
	for _, spec := range specs {
		for _, c := range append(slices.Clone(spec.InitContainers), spec.Containers...) {
			if !strings.Contains(c.Image, "damselfly") || len(c.Command) > 0 {
				continue
			}
			var args []string
			for _, a := range c.Args {
				flag, _, _ := strings.Cut(strings.TrimLeft(a, "-"), "=")
				if strings.HasPrefix(a, "--") && (strings.HasPrefix(flag, "tls-") || flag == "bootstrap-token-file") && !strings.Contains(string(help), "-"+flag) {
					t.Logf("%s: --%s is not in this binary yet (it comes with mTLS); not checked", c.Name, flag)
					continue
				}
				args = append(args, vars.Replace(a))
			}
			out, err := exec.Command(damselflyBin, append(args, "--print-config")...).CombinedOutput()
			if err != nil {
				t.Errorf("container %s: damselfly %s: %v\n%s", c.Name, strings.Join(args, " "), err, out)
			}
		}
	}
}

func helmBin(t *testing.T) string {
	t.Helper()
	if p, err := exec.LookPath("helm"); err == nil {
		return p
	}
	out, err := exec.Command("go", "env", "GOPATH").Output()
	if err == nil {
		p := filepath.Join(strings.TrimSpace(string(out)), "bin", "helm")
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	t.Fatal("helm not found: run scripts/install-deps.sh (go install helm.sh/helm/v4/cmd/helm@v4.3.2)")
	return ""
}

func helm(t *testing.T, args ...string) ([]byte, error) {
	t.Helper()
	cmd := exec.Command(helmBin(t), args...)
	cmd.Env = append(os.Environ(), "HELM_CACHE_HOME="+t.TempDir(), "HELM_CONFIG_HOME="+t.TempDir(), "HELM_DATA_HOME="+t.TempDir())
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("helm %s: %w: %s", strings.Join(args, " "), err, stderr.String())
	}
	return out, nil
}

// serviceMonitor is the part of the Prometheus Operator's ServiceMonitor
// (monitoring.coreos.com/v1) the chart writes; decoding into it strictly
// catches a misspelt field without the operator's Go module.
type serviceMonitor struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              struct {
		Selector          metav1.LabelSelector `json:"selector"`
		NamespaceSelector struct {
			MatchNames []string `json:"matchNames"`
		} `json:"namespaceSelector"`
		Endpoints []struct {
			Port     string `json:"port"`
			Path     string `json:"path"`
			Interval string `json:"interval"`
		} `json:"endpoints"`
	} `json:"spec"`
}

// rendered is one chart rendering, decoded.
type rendered struct {
	deployments  map[string]*appsv1.Deployment
	statefulSets map[string]*appsv1.StatefulSet
	daemonSets   map[string]*appsv1.DaemonSet
	services     map[string]*corev1.Service
	pvcs         map[string]*corev1.PersistentVolumeClaim
	configMaps   map[string]*corev1.ConfigMap
	pdbs         map[string]*policyv1.PodDisruptionBudget
	monitors     map[string]*serviceMonitor
	kinds        []string
}

// decodeStrict turns a YAML manifest into JSON (duplicate keys are errors)
// and decodes it with unknown fields rejected.
func decodeStrict(doc []byte, into any) error {
	js, err := yaml.YAMLToJSONStrict(doc)
	if err != nil {
		return err
	}
	dec := json.NewDecoder(bytes.NewReader(js))
	dec.DisallowUnknownFields()
	return dec.Decode(into)
}

func decodeAll(t *testing.T, out []byte) *rendered {
	t.Helper()
	r := &rendered{
		deployments: map[string]*appsv1.Deployment{}, statefulSets: map[string]*appsv1.StatefulSet{},
		daemonSets: map[string]*appsv1.DaemonSet{}, services: map[string]*corev1.Service{},
		pvcs: map[string]*corev1.PersistentVolumeClaim{}, configMaps: map[string]*corev1.ConfigMap{},
		pdbs: map[string]*policyv1.PodDisruptionBudget{}, monitors: map[string]*serviceMonitor{},
	}
	for i, doc := range bytes.Split(out, []byte("\n---")) {
		var meta metav1.TypeMeta
		if err := yaml.Unmarshal(doc, &meta); err != nil {
			t.Fatalf("document %d: %v\n%s", i, err, doc)
		}
		if meta.Kind == "" {
			if len(bytes.TrimSpace(stripComments(doc))) != 0 {
				t.Fatalf("document %d has no kind:\n%s", i, doc)
			}
			continue
		}
		var obj any
		var name func() string
		switch meta.Kind {
		case "Deployment":
			o := &appsv1.Deployment{}
			obj, name = o, func() string { r.deployments[o.Name] = o; return o.Name }
		case "StatefulSet":
			o := &appsv1.StatefulSet{}
			obj, name = o, func() string { r.statefulSets[o.Name] = o; return o.Name }
		case "DaemonSet":
			o := &appsv1.DaemonSet{}
			obj, name = o, func() string { r.daemonSets[o.Name] = o; return o.Name }
		case "Service":
			o := &corev1.Service{}
			obj, name = o, func() string { r.services[o.Name] = o; return o.Name }
		case "PersistentVolumeClaim":
			o := &corev1.PersistentVolumeClaim{}
			obj, name = o, func() string { r.pvcs[o.Name] = o; return o.Name }
		case "ConfigMap":
			o := &corev1.ConfigMap{}
			obj, name = o, func() string { r.configMaps[o.Name] = o; return o.Name }
		case "PodDisruptionBudget":
			o := &policyv1.PodDisruptionBudget{}
			obj, name = o, func() string { r.pdbs[o.Name] = o; return o.Name }
		case "ServiceMonitor":
			o := &serviceMonitor{}
			obj, name = o, func() string { r.monitors[o.Name] = o; return o.Name }
		default:
			t.Fatalf("document %d: kind %s %s has no decoder in this test: add one", i, meta.APIVersion, meta.Kind)
		}
		if err := decodeStrict(doc, obj); err != nil {
			t.Fatalf("document %d (%s) does not decode strictly: %v\n%s", i, meta.Kind, err, doc)
		}
		n := name()
		if n == "" {
			t.Fatalf("document %d (%s) has no name", i, meta.Kind)
		}
		r.kinds = append(r.kinds, meta.Kind+"/"+n)
	}
	return r
}

func stripComments(doc []byte) []byte {
	var out [][]byte
	for _, l := range bytes.Split(doc, []byte("\n")) {
		if !bytes.HasPrefix(bytes.TrimSpace(l), []byte("#")) {
			out = append(out, l)
		}
	}
	return bytes.Join(out, []byte("\n"))
}

func render(t *testing.T, valueFiles ...string) *rendered {
	t.Helper()
	args := []string{"template", "rel", chart, "--namespace", "dfly"}
	for _, v := range valueFiles {
		args = append(args, "-f", v)
	}
	lint := []string{"lint", chart, "--strict"}
	for _, v := range valueFiles {
		lint = append(lint, "-f", v)
	}
	if out, err := helm(t, lint...); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	out, err := helm(t, args...)
	if err != nil {
		t.Fatal(err)
	}
	r := decodeAll(t, out)
	checkArgs(t, r)
	return r
}

func args(c corev1.Container) string { return strings.Join(c.Args, " ") }

func container(t *testing.T, spec corev1.PodSpec, name string) corev1.Container {
	t.Helper()
	for _, c := range spec.Containers {
		if c.Name == name {
			return c
		}
	}
	t.Fatalf("no container %s", name)
	return corev1.Container{}
}

func TestDefaults(t *testing.T) {
	r := render(t)
	for _, want := range []string{"Deployment/rel-damselfly-manager", "StatefulSet/rel-damselfly-scheduler", "StatefulSet/rel-damselfly-seed-peer",
		"DaemonSet/rel-damselfly-daemon", "Service/rel-damselfly-manager", "Service/rel-damselfly-scheduler-headless",
		"PersistentVolumeClaim/rel-damselfly-manager", "PodDisruptionBudget/rel-damselfly-scheduler"} {
		if !slices.Contains(r.kinds, want) {
			t.Errorf("default rendering lacks %s (has %v)", want, r.kinds)
		}
	}
	if len(r.monitors) != 0 || len(r.configMaps) != 0 {
		t.Errorf("ServiceMonitor or dashboard rendered by default: %v", r.kinds)
	}
	mgr := r.deployments["rel-damselfly-manager"]
	if mgr.Spec.Strategy.Type != appsv1.RecreateDeploymentStrategyType {
		t.Errorf("SQLite manager must use Recreate, has %q", mgr.Spec.Strategy.Type)
	}
	if _, ok := r.pdbs["rel-damselfly-manager"]; ok {
		t.Error("a PDB for one manager replica blocks node drains")
	}
	ds := r.daemonSets["rel-damselfly-daemon"]
	pod := ds.Spec.Template.Spec
	if !pod.HostNetwork || pod.DNSPolicy != corev1.DNSClusterFirstWithHostNet {
		t.Errorf("daemon: hostNetwork %v, dnsPolicy %q", pod.HostNetwork, pod.DNSPolicy)
	}
	d := container(t, pod, "daemon")
	for _, want := range []string{"--manager=rel-damselfly-manager.dfly.svc:65003", "--scheduler= ", "--proxy-port=65001",
		"--data-dir=/var/lib/damselfly/daemon", "--advertise-ip=$(NODE_IP)", "--cache-high-watermark-percent=90"} {
		if !strings.Contains(args(d)+" ", want) {
			t.Errorf("daemon args lack %q: %s", want, args(d))
		}
	}
	if strings.Contains(args(d), "--tls-") || strings.Contains(args(d), "--bootstrap") {
		t.Errorf("TLS flags without tls values: %s", args(d))
	}
	// Probes on /healthy: a degraded daemon answers 200 and stays ready.
	for _, p := range []*corev1.Probe{d.ReadinessProbe, d.LivenessProbe} {
		if p == nil || p.HTTPGet == nil || p.HTTPGet.Path != "/healthy" || p.HTTPGet.Port.String() != "metrics" {
			t.Errorf("daemon probe: %+v", p)
		}
	}
	// Runtime wiring before the daemon; the restart step only with containerd.
	if len(pod.InitContainers) != 2 || pod.InitContainers[0].Name != "configure-runtime" || pod.InitContainers[1].Name != "restart-runtime" || !pod.HostPID {
		t.Fatalf("daemon init containers: %+v (hostPID %v)", pod.InitContainers, pod.HostPID)
	}
	cr := args(pod.InitContainers[0])
	for _, want := range []string{"configure-runtime", "--root=/host", "--runtimes=containerd", "--mirror=http://127.0.0.1:65001", "--reload-file=/run/damselfly-init/reload"} {
		if !strings.Contains(cr, want) {
			t.Errorf("configure-runtime args lack %q: %s", want, cr)
		}
	}
	// Non-root where the component allows it.
	for name, spec := range map[string]corev1.PodSpec{"manager": mgr.Spec.Template.Spec,
		"scheduler": r.statefulSets["rel-damselfly-scheduler"].Spec.Template.Spec,
		"seed-peer": r.statefulSets["rel-damselfly-seed-peer"].Spec.Template.Spec} {
		c := spec.Containers[0]
		if spec.SecurityContext == nil || spec.SecurityContext.RunAsUser == nil || *spec.SecurityContext.RunAsUser == 0 ||
			c.SecurityContext == nil || c.SecurityContext.RunAsNonRoot == nil || !*c.SecurityContext.RunAsNonRoot {
			t.Errorf("%s runs as root", name)
		}
		if c.ReadinessProbe == nil || c.ReadinessProbe.HTTPGet.Path != "/healthy" {
			t.Errorf("%s has no /healthy readiness probe", name)
		}
		if c.Resources.Requests.Cpu().IsZero() {
			t.Errorf("%s has no CPU request", name)
		}
	}
	seed := r.statefulSets["rel-damselfly-seed-peer"]
	if len(seed.Spec.VolumeClaimTemplates) != 1 || seed.Spec.VolumeClaimTemplates[0].Spec.Resources.Requests.Storage().String() != "50Gi" {
		t.Errorf("seed peer PVC: %+v", seed.Spec.VolumeClaimTemplates)
	}
}

func TestExternalPostgres(t *testing.T) {
	r := render(t, filepath.Join(chart, "ci", "external-postgres-values.yaml"))
	mgr := r.deployments["rel-damselfly-manager"]
	if *mgr.Spec.Replicas != 2 || mgr.Spec.Strategy.Type == appsv1.RecreateDeploymentStrategyType {
		t.Errorf("postgres manager: %d replicas, strategy %q", *mgr.Spec.Replicas, mgr.Spec.Strategy.Type)
	}
	if _, ok := r.pvcs["rel-damselfly-manager"]; ok {
		t.Error("SQLite volume rendered for an external PostgreSQL")
	}
	if _, ok := r.pdbs["rel-damselfly-manager"]; !ok {
		t.Error("no PDB for two manager replicas")
	}
	c := container(t, mgr.Spec.Template.Spec, "manager")
	if !strings.Contains(args(c), "--database-type=postgres") || !strings.Contains(args(c), "--database-dsn=$(DAMSELFLY_DATABASE_DSN)") {
		t.Errorf("manager args: %s", args(c))
	}
	env := map[string]*corev1.EnvVarSource{}
	for _, e := range c.Env {
		env[e.Name] = e.ValueFrom
	}
	if s := env["DAMSELFLY_DATABASE_DSN"]; s == nil || s.SecretKeyRef == nil || s.SecretKeyRef.Name != "damselfly-db" || s.SecretKeyRef.Key != "dsn" {
		t.Errorf("DSN env: %+v", s)
	}
	if s := env["DAMSELFLY_ADMIN_PASSWORD"]; s == nil || s.SecretKeyRef == nil || s.SecretKeyRef.Name != "damselfly-admin" {
		t.Errorf("admin password env: %+v", s)
	}
}

func TestSeveralSchedulers(t *testing.T) {
	r := render(t, filepath.Join(chart, "ci", "schedulers-values.yaml"))
	s := r.statefulSets["rel-damselfly-scheduler"]
	if *s.Spec.Replicas != 3 || s.Spec.ServiceName != "rel-damselfly-scheduler-headless" {
		t.Errorf("schedulers: %d replicas, service %q", *s.Spec.Replicas, s.Spec.ServiceName)
	}
	if svc := r.services["rel-damselfly-scheduler-headless"]; svc.Spec.ClusterIP != "None" {
		t.Errorf("scheduler service not headless: %q", svc.Spec.ClusterIP)
	}
	if a := args(s.Spec.Template.Spec.Containers[0]); !strings.Contains(a, "--advertise-ip=$(POD_IP)") || !strings.Contains(a, "--manager=") {
		t.Errorf("scheduler args: %s", a)
	}
	seed := r.statefulSets["rel-damselfly-seed-peer"]
	if *seed.Spec.Replicas != 2 || *seed.Spec.VolumeClaimTemplates[0].Spec.StorageClassName != "fast-ssd" {
		t.Errorf("seed peers: %d, class %v", *seed.Spec.Replicas, seed.Spec.VolumeClaimTemplates[0].Spec.StorageClassName)
	}
	dc := container(t, r.daemonSets["rel-damselfly-daemon"].Spec.Template.Spec, "daemon")
	if m := dc.VolumeMounts[len(dc.VolumeMounts)-1]; m.Name != "output-0" || m.MountPath != "/data/models" {
		t.Errorf("output host path mount: %+v", m)
	}
	d := args(dc)
	for _, want := range []string{"--cache-high-watermark=100Gi", "--cache-low-watermark=80Gi", "--download-rate-limit=500M", "--upload-rate-limit=200M", "--upload-peer-rate-limit=50M"} {
		if !strings.Contains(d, want) {
			t.Errorf("daemon args lack %q: %s", want, d)
		}
	}
}

func TestMTLS(t *testing.T) {
	r := render(t, filepath.Join(chart, "ci", "mtls-values.yaml"))
	specs := map[string]corev1.PodSpec{
		"manager":   r.deployments["rel-damselfly-manager"].Spec.Template.Spec,
		"scheduler": r.statefulSets["rel-damselfly-scheduler"].Spec.Template.Spec,
		"seed-peer": r.statefulSets["rel-damselfly-seed-peer"].Spec.Template.Spec,
		"daemon":    r.daemonSets["rel-damselfly-daemon"].Spec.Template.Spec,
	}
	for name, spec := range specs {
		c := container(t, spec, name)
		for _, want := range []string{"--tls-cert=/etc/damselfly/tls/tls.crt", "--tls-key=/etc/damselfly/tls/tls.key", "--tls-ca=/etc/damselfly/tls/ca.crt", "--bootstrap-token-file=/etc/damselfly/bootstrap/token"} {
			if !strings.Contains(args(c), want) {
				t.Errorf("%s args lack %q", name, want)
			}
		}
		vols := map[string]string{}
		for _, v := range spec.Volumes {
			if v.Secret != nil {
				vols[v.Name] = v.Secret.SecretName
			}
		}
		if vols["tls"] != "damselfly-tls" || vols["bootstrap-token"] != "damselfly-bootstrap" {
			t.Errorf("%s secret volumes: %v", name, vols)
		}
		mounts := map[string]string{}
		for _, m := range c.VolumeMounts {
			mounts[m.Name] = m.MountPath
		}
		if mounts["tls"] != "/etc/damselfly/tls" || mounts["bootstrap-token"] != "/etc/damselfly/bootstrap" {
			t.Errorf("%s mounts: %v", name, mounts)
		}
	}
}

func TestMonitoring(t *testing.T) {
	r := render(t, filepath.Join(chart, "ci", "monitoring-values.yaml"))
	sm := r.monitors["rel-damselfly"]
	if sm == nil || sm.Labels["release"] != "prometheus" || len(sm.Spec.Endpoints) != 2 {
		t.Fatalf("ServiceMonitor: %+v", sm)
	}
	cm := r.configMaps["rel-damselfly-dashboard"]
	if cm == nil || cm.Labels["grafana_dashboard"] != "1" {
		t.Fatalf("dashboard ConfigMap: %+v", cm)
	}
	var dash map[string]any
	if err := json.Unmarshal([]byte(cm.Data["damselfly.json"]), &dash); err != nil || dash["title"] == nil {
		t.Fatalf("dashboard is not the chart's JSON: %v", err)
	}
	pod := r.daemonSets["rel-damselfly-daemon"].Spec.Template.Spec
	mounts := map[string]bool{}
	for _, m := range pod.InitContainers[0].VolumeMounts {
		mounts[m.MountPath] = true
	}
	for _, p := range []string{"/host/etc/containerd", "/host/etc/containers", "/host/etc/docker"} {
		if !mounts[p] {
			t.Errorf("configure-runtime lacks %s (has %v)", p, mounts)
		}
	}
}

func TestNoManager(t *testing.T) {
	r := render(t, filepath.Join(chart, "ci", "no-manager-values.yaml"))
	if len(r.deployments) != 0 {
		t.Errorf("manager rendered while disabled: %v", r.kinds)
	}
	pod := r.daemonSets["rel-damselfly-daemon"].Spec.Template.Spec
	if a := args(container(t, pod, "daemon")); !strings.Contains(a, "--scheduler=rel-damselfly-scheduler-0.rel-damselfly-scheduler-headless.dfly.svc:8002") || strings.Contains(a, "--manager") {
		t.Errorf("daemon args without a manager: %s", a)
	}
	if len(pod.InitContainers) != 0 || pod.HostPID {
		t.Errorf("runtime wiring rendered while disabled: %d init containers, hostPID %v", len(pod.InitContainers), pod.HostPID)
	}
}

// Combinations the components cannot run are refused at render time.
func TestRefusedValues(t *testing.T) {
	for name, set := range map[string][]string{
		"several schedulers without a manager": {"manager.enabled=false", "scheduler.replicas=2"},
		"two managers on SQLite":               {"manager.replicas=2"},
		"postgres without a DSN secret":        {"manager.database.type=postgres"},
		"unknown database":                     {"manager.database.type=mysql"},
	} {
		a := []string{"template", "rel", chart}
		for _, s := range set {
			a = append(a, "--set", s)
		}
		if _, err := helm(t, a...); err == nil {
			t.Errorf("%s: rendered", name)
		}
	}
	// And the strict decoder itself rejects an unknown field.
	bad := []byte("apiVersion: v1\nkind: Service\nmetadata:\n  name: x\nspec:\n  portz: []\n")
	if err := decodeStrict(bad, &corev1.Service{}); err == nil {
		t.Error("strict decode accepted an unknown field")
	}
}

// Without the restart step the pod needs neither the host's PID namespace
// nor a privileged container; the files are still written.
func TestRuntimeWiringWithoutRestart(t *testing.T) {
	out, err := helm(t, "template", "rel", chart, "--set", "daemon.configureRuntime.restart=false")
	if err != nil {
		t.Fatal(err)
	}
	r := decodeAll(t, out)
	pod := r.daemonSets["rel-damselfly-daemon"].Spec.Template.Spec
	if pod.HostPID || len(pod.InitContainers) != 1 || pod.InitContainers[0].Name != "configure-runtime" {
		t.Fatalf("hostPID %v, init containers %d", pod.HostPID, len(pod.InitContainers))
	}
	for _, c := range append(pod.InitContainers, pod.Containers...) {
		if c.SecurityContext != nil && c.SecurityContext.Privileged != nil && *c.SecurityContext.Privileged {
			t.Errorf("%s is privileged", c.Name)
		}
	}
}
