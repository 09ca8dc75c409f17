package source

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/smithy-go"

	"github.com/damselfly-io/damselfly/core"
)

// Request headers that carry S3 settings from a client (dfget) to the source.
// They are never sent to an origin as HTTP headers: the S3 source reads them
// and signs its own requests.
//
// Endpoint, region and path style say where the object lives; they travel
// with the task so a seed peer reaches the same service. The credential
// headers are secrets: the daemon keeps them out of the task spec (see
// S3CredentialHeaders).
const (
	HeaderS3Endpoint        = "X-Damselfly-S3-Endpoint"
	HeaderS3Region          = "X-Damselfly-S3-Region"
	HeaderS3PathStyle       = "X-Damselfly-S3-Path-Style"
	HeaderS3AccessKeyID     = "X-Damselfly-S3-Access-Key-Id"
	HeaderS3SecretAccessKey = "X-Damselfly-S3-Secret-Access-Key" //nolint:gosec // a header name, not a secret
	HeaderS3SessionToken    = "X-Damselfly-S3-Session-Token"     //nolint:gosec // a header name, not a secret
)

// S3CredentialHeaders are the request headers that hold S3 credentials.
var S3CredentialHeaders = []string{HeaderS3AccessKeyID, HeaderS3SecretAccessKey, HeaderS3SessionToken}

// defaultS3Region is used when neither the request nor the bucket's
// configuration names a region (S3-compatible servers mostly ignore it, but
// SigV4 needs one).
const defaultS3Region = "us-east-1"

// presignExpiry bounds how long a signed GET stays valid; every Fetch signs
// anew, so it only needs to cover one transfer's retries and resumes.
const presignExpiry = time.Hour

// S3Config configures the s3:// source.
type S3Config struct {
	// PathStyle addresses every bucket as endpoint/bucket/key instead of
	// bucket.endpoint/key (what most S3-compatible servers need). Default false.
	PathStyle bool `yaml:"path_style"`
	// Buckets holds per-bucket endpoints and credentials, used for requests
	// that carry no credentials of their own (a seed peer fetching for the
	// swarm, a preheat). A request's own credentials always win.
	Buckets map[string]S3Bucket `yaml:"buckets"`
}

// S3Bucket is the configuration of one bucket.
type S3Bucket struct {
	// Endpoint is the service's base URL, e.g. https://minio.internal:9000;
	// empty means AWS's own endpoint for the region.
	Endpoint string `yaml:"endpoint"`
	// Region signs the requests. Default us-east-1.
	Region string `yaml:"region"`
	// AccessKeyID and SecretAccessKeyFile (a file holding the secret key;
	// surrounding white space is ignored) are the credentials. Both empty:
	// anonymous requests.
	AccessKeyID         string `yaml:"access_key_id"`
	SecretAccessKeyFile string `yaml:"secret_access_key_file"`
	// PathStyle addresses this bucket as endpoint/bucket/key.
	PathStyle bool `yaml:"path_style"`
}

// Validate reports the first invalid field.
func (c S3Config) Validate() error {
	for name, b := range c.Buckets {
		if name == "" || strings.ContainsAny(name, "/ ") {
			return fmt.Errorf("source config: s3 bucket name %q: %w", name, core.ErrInvalid)
		}
		if err := validEndpoint(b.Endpoint); err != nil {
			return fmt.Errorf("source config: s3 bucket %s: %w", name, err)
		}
		if (b.AccessKeyID == "") != (b.SecretAccessKeyFile == "") {
			return fmt.Errorf("source config: s3 bucket %s: access_key_id and secret_access_key_file go together: %w", name, core.ErrInvalid)
		}
	}
	return nil
}

func validEndpoint(e string) error {
	if e == "" {
		return nil
	}
	u, err := url.Parse(e)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("s3 endpoint %q: want http(s)://host[:port]: %w", e, core.ErrInvalid)
	}
	return nil
}

// S3 fetches s3://bucket/key URLs from S3 or an S3-compatible service. A
// byte range is read by signing a GET for the object (SigV4, query
// authentication) and handing it to the HTTP source, so S3 transfers get the
// same retries, stall detection and resumable bodies as http(s) ones.
type S3 struct {
	http *HTTP
	cfg  S3Config
}

var _ Source = (*S3)(nil)

// CheckSecrets reads every configured bucket's secret key file, so a
// missing or unreadable one is reported when a component starts rather than
// at its first fetch.
func (c S3Config) CheckSecrets() error {
	for name, b := range c.Buckets {
		if b.SecretAccessKeyFile == "" {
			continue
		}
		sk, err := os.ReadFile(b.SecretAccessKeyFile)
		if err != nil {
			return fmt.Errorf("source config: s3 bucket %s: read secret_access_key_file: %w", name, err)
		}
		if strings.TrimSpace(string(sk)) == "" {
			return fmt.Errorf("source config: s3 bucket %s: secret_access_key_file %s is empty: %w", name, b.SecretAccessKeyFile, core.ErrInvalid)
		}
	}
	return nil
}

// NewS3 returns an S3 source that sends its requests through h.
func NewS3(h *HTTP, cfg S3Config) (*S3, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &S3{http: h, cfg: cfg}, nil
}

// S3Object names one object: s3://bucket/key[?versionId=…].
type S3Object struct {
	Bucket    string
	Key       string
	VersionID string
}

// ParseS3URL splits s3://bucket/key. The key may be empty (a prefix for a
// listing).
func ParseS3URL(raw string) (S3Object, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return S3Object{}, fmt.Errorf("s3 URL %q: %w: %w", raw, core.ErrInvalid, err)
	}
	if !strings.EqualFold(u.Scheme, "s3") || u.Host == "" || u.User != nil || u.Opaque != "" {
		return S3Object{}, fmt.Errorf("s3 URL %q: want s3://bucket/key: %w", raw, core.ErrInvalid)
	}
	return S3Object{Bucket: u.Host, Key: strings.TrimPrefix(u.Path, "/"), VersionID: u.Query().Get("versionId")}, nil
}

// URL renders the object as an s3:// URL.
func (o S3Object) URL() string {
	u := url.URL{Scheme: "s3", Host: o.Bucket, Path: "/" + o.Key}
	if o.VersionID != "" {
		u.RawQuery = url.Values{"versionId": {o.VersionID}}.Encode()
	}
	return u.String()
}

// s3Params is where and as whom one request goes.
type s3Params struct {
	endpoint  string
	region    string
	pathStyle bool
	creds     aws.CredentialsProvider
}

// params resolves a request's endpoint and credentials: the request's own
// credentials if it carries any; otherwise, for a trusted request (the
// daemon's own fetch for the swarm), the bucket's configured ones, but only
// towards the bucket's configured endpoint (a request cannot send the
// configured secret elsewhere); otherwise anonymous.
func (s *S3) params(bucket string, h http.Header, trusted bool) (s3Params, error) {
	p := s3Params{
		endpoint:  h.Get(HeaderS3Endpoint),
		region:    h.Get(HeaderS3Region),
		pathStyle: s.cfg.PathStyle || isTrue(h.Get(HeaderS3PathStyle)),
		creds:     aws.AnonymousCredentials{},
	}
	if err := validEndpoint(p.endpoint); err != nil {
		return p, err
	}
	if ak := h.Get(HeaderS3AccessKeyID); ak != "" {
		sk := h.Get(HeaderS3SecretAccessKey)
		if sk == "" {
			return p, fmt.Errorf("s3 credentials: access key id without secret key: %w", core.ErrInvalid)
		}
		p.creds = credentials.NewStaticCredentialsProvider(ak, sk, h.Get(HeaderS3SessionToken))
	} else if b, ok := s.cfg.Buckets[bucket]; ok && trusted && (p.endpoint == "" || sameEndpoint(p.endpoint, b.Endpoint)) {
		p.endpoint = b.Endpoint
		if p.region == "" {
			p.region = b.Region
		}
		p.pathStyle = p.pathStyle || b.PathStyle
		if b.AccessKeyID != "" {
			secret, err := os.ReadFile(b.SecretAccessKeyFile)
			if err != nil {
				return p, fmt.Errorf("s3 bucket %s: read secret_access_key_file: %w", bucket, err)
			}
			p.creds = credentials.NewStaticCredentialsProvider(b.AccessKeyID, strings.TrimSpace(string(secret)), "")
		}
	}
	if p.region == "" {
		p.region = defaultS3Region
	}
	return p, nil
}

func sameEndpoint(a, b string) bool {
	return strings.TrimRight(strings.ToLower(a), "/") == strings.TrimRight(strings.ToLower(b), "/")
}

func isTrue(v string) bool {
	b, err := strconv.ParseBool(strings.TrimSpace(v))
	return err == nil && b
}

// client builds an S3 API client for p over the HTTP source's transport.
func (s *S3) client(p s3Params) *s3.Client {
	cfg := aws.Config{
		Region:           p.region,
		Credentials:      p.creds,
		HTTPClient:       s.http.client,
		RetryMaxAttempts: s.http.cfg.Retries + 1,
	}
	return s3.NewFromConfig(cfg, func(o *s3.Options) {
		if p.endpoint != "" {
			o.BaseEndpoint = aws.String(p.endpoint)
		}
		o.UsePathStyle = p.pathStyle
	})
}

// Fetch reads a range of the object. An If-Match header (the ETag the task
// was named after) makes a changed object fail instead of mixing versions.
func (s *S3) Fetch(ctx context.Context, req Request) (*Response, error) {
	obj, err := ParseS3URL(req.URL)
	if err != nil {
		return nil, err
	}
	if obj.Key == "" || strings.HasSuffix(obj.Key, "/") {
		return nil, fmt.Errorf("fetch %s: names a prefix, not an object (use --recursive): %w", req.URL, core.ErrInvalid)
	}
	p, err := s.params(obj.Bucket, req.Header, req.Trusted)
	if err != nil {
		return nil, fmt.Errorf("fetch %s: %w", req.URL, err)
	}
	in := &s3.GetObjectInput{Bucket: aws.String(obj.Bucket), Key: aws.String(obj.Key)}
	if obj.VersionID != "" {
		in.VersionId = aws.String(obj.VersionID)
	}
	anonymous := false
	if _, ok := p.creds.(aws.AnonymousCredentials); ok {
		// The presigner needs keys; an anonymous GET is the same URL with
		// the signature taken off.
		anonymous = true
		p.creds = credentials.NewStaticCredentialsProvider("anonymous", "anonymous", "")
	}
	signed, err := s3.NewPresignClient(s.client(p)).PresignGetObject(ctx, in, s3.WithPresignExpires(presignExpiry))
	if err != nil {
		return nil, fmt.Errorf("fetch %s: sign request: %w", req.URL, err)
	}
	if anonymous {
		if signed.URL, err = unsign(signed.URL); err != nil {
			return nil, fmt.Errorf("fetch %s: %w", req.URL, err)
		}
	}
	hdr := http.Header{}
	for k, vs := range signed.SignedHeader {
		if !strings.EqualFold(k, "Host") {
			hdr[k] = vs
		}
	}
	if m := req.Header.Get("If-Match"); m != "" {
		hdr.Set("If-Match", m)
	}
	resp, err := s.http.Fetch(ctx, Request{URL: signed.URL, Header: hdr, Offset: req.Offset, Length: req.Length})
	if err != nil {
		var se *StatusError
		if errors.As(err, &se) {
			se.URL = req.URL
			if se.Code == http.StatusPreconditionFailed {
				return nil, fmt.Errorf("fetch %s: the object changed since the task was named after ETag %s: %w", req.URL, req.Header.Get("If-Match"), err)
			}
		}
		return nil, err
	}
	return resp, nil
}

// ObjectInfo is what a HEAD or a listing says about an object.
type ObjectInfo struct {
	Key  string
	Size int64
	// ETag as the service sent it, quotes included.
	ETag string
}

// Stat asks the service about one object (HEAD) with the request's settings.
func (s *S3) Stat(ctx context.Context, req Request) (ObjectInfo, error) {
	obj, err := ParseS3URL(req.URL)
	if err != nil {
		return ObjectInfo{}, err
	}
	if obj.Key == "" {
		return ObjectInfo{}, fmt.Errorf("stat %s: no object key: %w", req.URL, core.ErrInvalid)
	}
	p, err := s.params(obj.Bucket, req.Header, req.Trusted)
	if err != nil {
		return ObjectInfo{}, fmt.Errorf("stat %s: %w", req.URL, err)
	}
	in := &s3.HeadObjectInput{Bucket: aws.String(obj.Bucket), Key: aws.String(obj.Key)}
	if obj.VersionID != "" {
		in.VersionId = aws.String(obj.VersionID)
	}
	out, err := s.client(p).HeadObject(ctx, in)
	if err != nil {
		return ObjectInfo{}, s3Error("HEAD", req.URL, err)
	}
	return ObjectInfo{Key: obj.Key, Size: aws.ToInt64(out.ContentLength), ETag: aws.ToString(out.ETag)}, nil
}

// List returns the objects under the URL's key prefix (every level), in key
// order, at most limit of them (0: no limit).
func (s *S3) List(ctx context.Context, req Request, limit int) ([]ObjectInfo, error) {
	obj, err := ParseS3URL(req.URL)
	if err != nil {
		return nil, err
	}
	p, err := s.params(obj.Bucket, req.Header, req.Trusted)
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", req.URL, err)
	}
	pg := s3.NewListObjectsV2Paginator(s.client(p), &s3.ListObjectsV2Input{Bucket: aws.String(obj.Bucket), Prefix: aws.String(obj.Key)})
	var out []ObjectInfo
	for pg.HasMorePages() {
		page, err := pg.NextPage(ctx)
		if err != nil {
			return nil, s3Error("LIST", req.URL, err)
		}
		for _, o := range page.Contents {
			k := aws.ToString(o.Key)
			if strings.HasSuffix(k, "/") {
				continue // a "directory" marker
			}
			out = append(out, ObjectInfo{Key: k, Size: aws.ToInt64(o.Size), ETag: aws.ToString(o.ETag)})
			if limit > 0 && len(out) >= limit {
				return out, nil
			}
		}
	}
	return out, nil
}

// s3Error turns an API error into a StatusError (so 404 is core.ErrNotFound
// and 401/403 core.ErrDenied), keeping the service's error code.
func s3Error(op, rawURL string, err error) error {
	var re *awshttp.ResponseError
	if errors.As(err, &re) && re.HTTPStatusCode() > 0 {
		code := re.HTTPStatusCode()
		st := strconv.Itoa(code) + " " + http.StatusText(code)
		var ae smithy.APIError
		if errors.As(err, &ae) && ae.ErrorCode() != "" {
			st += " (" + ae.ErrorCode() + ")"
		}
		return &StatusError{Method: op, URL: rawURL, Code: code, Status: st}
	}
	return fmt.Errorf("%s %s: %w: %w", op, rawURL, core.ErrOrigin, err)
}

// unsign removes the SigV4 query parameters from a presigned URL.
func unsign(raw string) (string, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return "", fmt.Errorf("signed URL: %w", err)
	}
	q := u.Query()
	for k := range q {
		if strings.HasPrefix(strings.ToLower(k), "x-amz-") {
			q.Del(k)
		}
	}
	u.RawQuery = q.Encode()
	return u.String(), nil
}
