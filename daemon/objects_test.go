package daemon

import (
	"errors"
	"testing"

	"github.com/damselfly-io/damselfly/core"
	"github.com/damselfly-io/damselfly/source"
)

// TestS3CredentialsStayPrivate: S3 keys in a request are split off like
// Authorization (never in the task spec's headers), and count as
// credentials; where the object lives travels with the task.
func TestS3CredentialsStayPrivate(t *testing.T) {
	pub, priv := splitCredentials(map[string]string{
		source.HeaderS3AccessKeyID: "AKID", "x-damselfly-s3-secret-access-key": "SECRET", source.HeaderS3SessionToken: "TOK",
		source.HeaderS3Endpoint: "http://minio:9000", source.HeaderS3Region: "eu-1",
	})
	for k, v := range pub {
		if v == "AKID" || v == "SECRET" || v == "TOK" {
			t.Errorf("credential %s in the public headers", k)
		}
	}
	if pub[source.HeaderS3Endpoint] != "http://minio:9000" || pub[source.HeaderS3Region] != "eu-1" {
		t.Errorf("public %v", pub)
	}
	if priv.Get(source.HeaderS3SecretAccessKey) != "SECRET" || !carriesCredentials(priv) {
		t.Errorf("private %v", priv)
	}
	_, none := splitCredentials(map[string]string{source.HeaderS3Endpoint: "http://minio:9000"})
	if carriesCredentials(none) {
		t.Error("an endpoint alone is no credential")
	}
	_, auth := splitCredentials(map[string]string{"Authorization": "Bearer x"})
	if !carriesCredentials(auth) {
		t.Error("Authorization is a credential")
	}
}

func TestCheckOriginURL(t *testing.T) {
	for _, ok := range []string{"http://o/x", "https://o/x", "file:///tmp/x", "s3://bucket/key", "s3://bucket/a/b"} {
		if _, err := checkOriginURL(ok); err != nil {
			t.Errorf("%s: %v", ok, err)
		}
	}
	for _, bad := range []string{"ftp://o/x", "http:///x", "s3://bucket", "s3://bucket/", "s3:///key", "x"} {
		if _, err := checkOriginURL(bad); !errors.Is(err, core.ErrInvalid) {
			t.Errorf("%s: %v, want ErrInvalid", bad, err)
		}
	}
}
