package mirror

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/damselfly-io/damselfly/test/oci"
)

// TestDirectPull checks the test parts themselves, without Damselfly: for
// each auth mode, an image pushed with skopeo is pulled straight from the
// registry by skopeo and by containerd with exact digests, a client without
// credentials is refused, and the registry's access log accounts for
// exactly the blob bytes a pull needs (the measure the mirror tests use).
func TestDirectPull(t *testing.T) {
	requireTools(t, "docker-registry", "skopeo", "htpasswd")
	for _, auth := range []oci.Auth{oci.AuthNone, oci.AuthBasic, oci.AuthToken} {
		t.Run(auth.String(), func(t *testing.T) {
			env := startRegistry(t, "", fmt.Sprintf("127.0.0.1:%d", freePort(t)), fmt.Sprintf("127.0.0.1:%d", freePort(t)), auth)
			im, ref := pushImage(t, "", env, "direct/"+auth.String(), 3, 3<<20)
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			before, err := env.reg.AccessLog()
			if err != nil {
				t.Fatal(err)
			}

			out := filepath.Join(t.TempDir(), "pulled")
			if err := oci.SkopeoPull(ctx, "", ref, out, "latest", oci.SkopeoOpts{Creds: env.reg.Creds()}); err != nil {
				t.Fatal(err)
			}
			if err := oci.VerifyLayout(out, im); err != nil {
				t.Error(err)
			}
			after, err := env.reg.AccessLog()
			if err != nil {
				t.Fatal(err)
			}
			served := oci.Sum(after[len(before):])
			if served.BlobBytes != im.BlobBytes() {
				t.Errorf("registry log: %d blob bytes served for one skopeo pull, want exactly %d (%+v)", served.BlobBytes, im.BlobBytes(), served)
			}
			if served.ManifestBytes < int64(len(im.ManifestBytes)) {
				t.Errorf("registry log: %d manifest bytes, want ≥ %d", served.ManifestBytes, len(im.ManifestBytes))
			}
			if auth != oci.AuthNone {
				err := oci.SkopeoPull(ctx, "", ref, filepath.Join(t.TempDir(), "anon"), "latest", oci.SkopeoOpts{})
				if err == nil {
					t.Errorf("%s registry: skopeo without credentials succeeded", auth)
				}
			}
			if auth == oci.AuthToken && env.token.Issued() == 0 {
				t.Errorf("token realm issued no token")
			}

			if os.Geteuid() != 0 {
				t.Log("containerd part skipped: needs root")
				return
			}
			requireTools(t, "containerd", "ctr")
			cd, err := oci.StartContainerd(ctx, "", filepath.Join(oci.ShortDir(t), "cd"))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(cd.Stop)
			if _, err := cd.Pull(ctx, ref, oci.PullOpts{Creds: env.reg.Creds()}); err != nil {
				t.Fatal(err)
			}
			if err := cd.Verify(ctx, ref, im); err != nil {
				t.Error(err)
			}
		})
	}
}
