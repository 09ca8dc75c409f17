package main

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"strconv"

	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/damselfly-io/damselfly/source"
)

// s3Headers resolves where an s3:// URL lives and as whom to read it, from
// the caller's standard AWS environment and files (AWS_ACCESS_KEY_ID,
// AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_REGION, AWS_ENDPOINT_URL[_S3],
// AWS_PROFILE with ~/.aws/config and ~/.aws/credentials, and the rest of the
// SDK's default chain), and renders it as the request headers the S3 source
// reads. The daemon keeps the credential headers on the node: they never go
// into the task the scheduler and other peers see. No credentials found
// means anonymous requests (public buckets).
func s3Headers(ctx context.Context, pathStyle bool) (http.Header, bool, error) {
	cfg, err := config.LoadDefaultConfig(ctx)
	if err != nil {
		return nil, false, fmt.Errorf("load AWS configuration: %w", err)
	}
	h := http.Header{}
	if ep := s3.NewFromConfig(cfg).Options().BaseEndpoint; ep != nil && *ep != "" {
		h.Set(source.HeaderS3Endpoint, *ep)
	}
	if cfg.Region != "" {
		h.Set(source.HeaderS3Region, cfg.Region)
	}
	if v, err := strconv.ParseBool(os.Getenv("AWS_S3_FORCE_PATH_STYLE")); pathStyle || (err == nil && v) {
		h.Set(source.HeaderS3PathStyle, "true")
	}
	anonymous := true
	if cfg.Credentials != nil {
		c, err := cfg.Credentials.Retrieve(ctx)
		if err == nil && c.AccessKeyID != "" {
			h.Set(source.HeaderS3AccessKeyID, c.AccessKeyID)
			h.Set(source.HeaderS3SecretAccessKey, c.SecretAccessKey)
			if c.SessionToken != "" {
				h.Set(source.HeaderS3SessionToken, c.SessionToken)
			}
			anonymous = false
		}
	}
	return h, anonymous, nil
}
