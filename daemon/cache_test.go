package daemon

import (
	"io"
	"log/slog"
	"testing"
	"time"

	"golang.org/x/time/rate"

	"github.com/damselfly-io/damselfly/internal/config"
)

func TestReloadChangesLimitsInPlace(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Download.RateLimit = 10 << 20
	cfg.TLS.Insecure = true
	d, err := New(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)), nil)
	if err != nil {
		t.Fatal(err)
	}
	dl, ul := d.dl, d.ul
	if dl.Limit() != rate.Limit(10<<20) || ul.Limit() != rate.Inf {
		t.Fatalf("initial limits %v %v", dl.Limit(), ul.Limit())
	}

	next := cfg
	next.Download.RateLimit = 0
	next.Upload.RateLimit = 5 << 20
	next.Upload.PeerRateLimit = 1 << 20
	next.Download.MaxConcurrentOrigin = 2
	next.Cache.TaskTTL = config.Duration(time.Hour)
	next.Cache.HighWatermark, next.Cache.LowWatermark = 10<<30, 8<<30
	restart, err := d.Reload(next)
	if err != nil {
		t.Fatal(err)
	}
	if len(restart) != 0 {
		t.Fatalf("only reloadable settings changed, yet %v", restart)
	}
	// the same limiters (in use by running transfers) now have the new rates
	if d.dl != dl || d.ul != ul || dl.Limit() != rate.Inf || ul.Limit() != rate.Limit(5<<20) {
		t.Fatalf("after reload: download %v, upload %v", dl.Limit(), ul.Limit())
	}
	if d.originSlots.Max() != 2 {
		t.Fatalf("origin slots %d", d.originSlots.Max())
	}
	if p := d.reloadable().policy; p.TTL != time.Hour || p.HighBytes != 10<<30 || p.LowBytes != 8<<30 || p.HighPercent != 90 {
		t.Fatalf("cache policy %+v", p)
	}

	bad := next
	bad.Cache.LowWatermark = 20 << 30
	bad.Upload.RateLimit = 1
	if _, err := d.Reload(bad); err == nil {
		t.Fatal("invalid config accepted")
	}
	if ul.Limit() != rate.Limit(5<<20) {
		t.Fatal("a rejected reload changed a limit")
	}

	other := next
	other.PeerPort = 1234
	if restart, err := d.Reload(other); err != nil || len(restart) == 0 {
		t.Fatalf("a changed port must be reported as needing a restart: %v, %v", restart, err)
	}
}
