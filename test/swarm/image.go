package swarm

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"

	"github.com/damselfly-io/damselfly/test/oci"
)

// Ports of the image systems on the origin host.
const (
	registryPort = 5000
	// deadPort has no listener: skopeo's fallback from the mirror to the
	// registry is pointed there, so an image-damselfly pull succeeds only
	// through the daemon and cannot quietly become a direct pull.
	deadPort = 9
)

// registryAddr is the registry on the origin host.
func (e *sysEnv) registryAddr() string {
	return net.JoinHostPort(e.netw.Origin().IP.String(), strconv.Itoa(registryPort))
}

// imageRef is the image's reference in the registry.
func (e *sysEnv) imageRef() string { return e.registryAddr() + "/swarm/image:latest" }

// startRegistry runs docker-registry (no auth, storage in the system's
// scratch directory) on the origin host, pushes the image into it from the
// origin host itself (over its loopback, so no shaped link carries it) and
// points e.stats at the registry's access log.
func (e *sysEnv) startRegistry(ctx context.Context) error {
	o := e.netw.Origin()
	dir := filepath.Join(e.dir, "registry")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("start registry: %w", err)
	}
	argv, _, err := oci.RegistryCommand(ctx, oci.RegistryConfig{Addr: e.registryAddr(), Dir: dir})
	if err != nil {
		return err
	}
	logPath := e.logf("registry")
	if _, err := e.ps.startIn(o.NS, "registry", logPath, nil, false, argv...); err != nil {
		return err
	}
	if err := oci.WaitRegistry(ctx, nil, nsDialer(o.NS), e.registryAddr()); err != nil {
		return err
	}
	e.log.Info("pushing image", "ref", e.imageRef(), "blob_bytes", e.image.BlobBytes())
	if err := oci.Push(ctx, o.NS, e.image, e.imageRef(), ""); err != nil {
		return err
	}
	pushed, err := oci.ReadAccessLog(logPath)
	if err != nil {
		return err
	}
	// From now on, the registry's own count of body bytes, without the push.
	e.stats = func(context.Context) (OriginStats, error) {
		log, err := oci.ReadAccessLog(logPath)
		if err != nil {
			return OriginStats{}, err
		}
		s := oci.Sum(log[len(pushed):])
		return OriginStats{Requests: int64(s.Requests), BodyBytes: s.Total()}, nil
	}
	return nil
}

// imageDownload is a gated skopeo copying the image into an OCI layout on
// host h, checked against the image's digests.
func (e *sysEnv) imageDownload(h *Host, registriesConf string) (*download, error) {
	out := filepath.Join(e.dir, h.Name, "image")
	argv := oci.SkopeoPullArgs(e.imageRef(), out, "latest", oci.SkopeoOpts{RegistriesConf: registriesConf})
	argv = append(argv[:1], append([]string{"--tmpdir", filepath.Join(e.dir, h.Name)}, argv[1:]...)...)
	p, err := e.ps.startIn(h.NS, "skopeo", e.logf(h.Name+"-skopeo"), nil, true, argv...)
	if err != nil {
		return nil, err
	}
	im := e.image
	return &download{host: h, out: out, proc: p, check: func() error { return oci.VerifyLayout(out, im) }}, nil
}

// setupImageDirect: every peer's skopeo pulls the image from the registry.
func setupImageDirect(ctx context.Context, e *sysEnv) ([]*download, error) {
	if err := e.startRegistry(ctx); err != nil {
		return nil, err
	}
	var dls []*download
	for _, h := range e.netw.Peers() {
		if err := os.MkdirAll(filepath.Join(e.dir, h.Name), 0o755); err != nil {
			return nil, fmt.Errorf("setup image-direct: %w", err)
		}
		d, err := e.imageDownload(h, "")
		if err != nil {
			return nil, err
		}
		dls = append(dls, d)
	}
	return dls, nil
}

// setupImageDamselfly: Damselfly as for files, every daemon a registry
// mirror of the registry on 127.0.0.1 of its host; every peer's skopeo pulls
// through it (registries.conf: mirror first, fallback to a dead port).
func setupImageDamselfly(ctx context.Context, e *sysEnv) ([]*download, error) {
	if err := e.startRegistry(ctx); err != nil {
		return nil, err
	}
	daemons, err := e.startDamselfly(ctx, "--proxy-ip", "127.0.0.1", "--registry-mirror", "http://"+e.registryAddr())
	if err != nil {
		return nil, err
	}
	var dls []*download
	for _, d := range daemons[1:] {
		conf := filepath.Join(e.dir, d.host.Name, "registries.conf")
		if err := oci.WriteRegistriesConf(conf, e.registryAddr(), fmt.Sprintf("127.0.0.1:%d", deadPort), fmt.Sprintf("127.0.0.1:%d", proxyPort)); err != nil {
			return nil, err
		}
		dl, err := e.imageDownload(d.host, conf)
		if err != nil {
			return nil, err
		}
		dl.extra = []*Proc{d.proc}
		dls = append(dls, dl)
	}
	return dls, nil
}
