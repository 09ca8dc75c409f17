package console

import (
	"bytes"
	"context"
	"fmt"
	"image"
	"image/png"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/damselfly-io/damselfly/client"
	"github.com/damselfly-io/damselfly/core"
)

// browser is one headless Chromium tab on the console.
type browser struct {
	t        *testing.T
	ctx      context.Context
	base     string
	shots    string
	axe      string
	shotList []string
}

func newBrowser(t *testing.T, base string) *browser {
	t.Helper()
	path, err := exec.LookPath("chromium")
	if err != nil {
		t.Skip("chromium not installed (scripts/install-deps.sh installs it)")
	}
	axe, err := os.ReadFile(filepath.Join("testdata", "axe.min.js"))
	if err != nil {
		t.Fatal(err)
	}
	shots := filepath.Join(t.TempDir(), "screenshots")
	if d := os.Getenv("DAMSELFLY_SCREENSHOTS"); d != "" {
		shots = d
	}
	if err := os.MkdirAll(shots, 0o755); err != nil {
		t.Fatal(err)
	}
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(path), chromedp.Headless, chromedp.NoSandbox, chromedp.DisableGPU, chromedp.NoFirstRun,
		chromedp.Flag("disable-quic", true), chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true), chromedp.Flag("disable-sync", true),
		chromedp.UserDataDir(filepath.Join(t.TempDir(), "chromium-profile")), chromedp.WindowSize(1366, 900))
	actx, cancelA := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelC := chromedp.NewContext(actx)
	t.Cleanup(func() { cancelC(); cancelA() })
	b := &browser{t: t, ctx: ctx, base: base, shots: shots, axe: string(axe)}
	// Start the browser with the laptop viewport. The first call starts the
	// browser, which lives as long as this call's context: no timeout here.
	if err := chromedp.Do(ctx, chromedp.EmulateViewport(1366, 900)); err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	return b
}

func (b *browser) do(actions ...chromedp.Action[chromedp.Void]) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 60*time.Second)
	defer cancel()
	if err := chromedp.Do(ctx, actions...); err != nil {
		b.t.Fatalf("browser: %v", err)
	}
}

func eval[T any](b *browser, js string) T {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 60*time.Second)
	defer cancel()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](js, chromedp.EvalAwaitPromise))
	if err != nil {
		b.t.Fatalf("evaluate %q: %v", js, err)
	}
	return v
}

// fill types text into the input #id and checks that the input holds it
// before the test goes on: under load one keystroke was lost (a token
// created as "ci-toke"), and the test then waited for a button that was
// never drawn. A field that does not hold the text is cleared and typed
// again, three times at most.
func (b *browser) fill(id, text string) {
	b.t.Helper()
	for try := 1; ; try++ {
		eval[string](b, "(e => { e.value = ''; return '' })(document.getElementById("+quote(id)+"))")
		b.do(chromedp.SendKeys(chromedp.ID(id), text))
		got := eval[string](b, "document.getElementById("+quote(id)+").value")
		if got == text {
			return
		}
		if try == 3 {
			b.t.Fatalf("typed %q into #%s three times; it holds %q", text, id, got)
		}
		b.t.Logf("typed %q into #%s; it holds %q: typing it again", text, id, got)
	}
}

// clickJS clicks the element selector names as soon as it is there, in the
// page itself: the users page re-renders its tables after a change, and a
// chromedp.Click that found the node just before that waits on a detached
// node until its timeout.
func (b *browser) clickJS(what, selector string, timeout time.Duration) {
	b.t.Helper()
	b.waitJS(what, "(() => { const e = document.querySelector("+strconv.Quote(selector)+"); if (!e) return false; e.click(); return true })()", timeout)
}

// waitJS polls a JavaScript predicate in the page until it is true.
func (b *browser) waitJS(what, pred string, timeout time.Duration) {
	b.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ctx, cancel := context.WithTimeout(b.ctx, 10*time.Second)
		ok, err := chromedp.Run(ctx, chromedp.Evaluate[bool]("!!("+pred+")"))
		cancel()
		if err == nil && ok {
			return
		}
		if time.Now().After(deadline) {
			text, _ := chromedp.Run(b.ctx, chromedp.Evaluate[string]("document.querySelector('main').innerText.slice(0, 2000)"))
			b.t.Fatalf("timed out after %s waiting for %s (last error %v); page says:\n%s", timeout, what, err, text)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// open goes to a console page and waits for its content.
func (b *browser) open(hash, ready string) {
	b.t.Helper()
	b.do(chromedp.Evaluate[chromedp.Void]("location.hash = " + quote(hash)))
	b.waitJS(hash+" to show "+ready, "document.querySelector("+quote(ready)+")", 30*time.Second)
}

func quote(s string) string { return "'" + strings.ReplaceAll(s, "'", "\\'") + "'" }

// frames waits two animation frames, so layout and paint follow a change.
func (b *browser) frames() {
	eval[bool](b, "new Promise(r => requestAnimationFrame(() => requestAnimationFrame(() => r(true))))")
}

// shoot saves a laptop and a phone screenshot of the page, checks that each
// shows something (not a blank page), and runs the accessibility check.
func (b *browser) shoot(name string) {
	b.t.Helper()
	b.checkAccessibility(name)
	for _, vp := range []struct {
		label string
		w, h  int64
		opts  []chromedp.EmulateViewportOption
	}{
		{"laptop", 1366, 900, nil},
		{"phone", 390, 844, []chromedp.EmulateViewportOption{chromedp.EmulateMobile, chromedp.EmulateTouch}},
	} {
		b.do(chromedp.EmulateViewport(vp.w, vp.h, vp.opts...))
		b.frames()
		ctx, cancel := context.WithTimeout(b.ctx, 60*time.Second)
		buf, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
		cancel()
		if err != nil {
			b.t.Fatalf("screenshot %s: %v", name, err)
		}
		file := filepath.Join(b.shots, fmt.Sprintf("%s-%s.png", name, vp.label))
		if err := os.WriteFile(file, buf, 0o644); err != nil {
			b.t.Fatal(err)
		}
		if err := notBlank(buf); err != nil {
			b.t.Fatalf("screenshot %s: %v", file, err)
		}
		b.shotList = append(b.shotList, file)
	}
	b.do(chromedp.EmulateViewport(1366, 900))
	b.frames()
}

// notBlank decodes a PNG and requires a drawn page: many distinct colours
// and a good share of pixels that are not the background.
func notBlank(buf []byte) error {
	img, err := png.Decode(bytes.NewReader(buf))
	if err != nil {
		return fmt.Errorf("decode png: %w", err)
	}
	r := img.Bounds()
	if r.Dx() < 300 || r.Dy() < 300 {
		return fmt.Errorf("image of %dx%d", r.Dx(), r.Dy())
	}
	colours := map[uint32]bool{}
	var total, differs int
	bg := colourKey(img, r.Min.X+r.Dx()/2, r.Max.Y-1)
	for y := r.Min.Y; y < r.Max.Y; y += 2 {
		for x := r.Min.X; x < r.Max.X; x += 2 {
			k := colourKey(img, x, y)
			colours[k] = true
			total++
			if k != bg {
				differs++
			}
		}
	}
	if len(colours) < 24 {
		return fmt.Errorf("only %d distinct colours: the page looks blank", len(colours))
	}
	if frac := float64(differs) / float64(total); frac < 0.03 {
		return fmt.Errorf("only %.1f%% of pixels differ from the background", frac*100)
	}
	return nil
}

func colourKey(img image.Image, x, y int) uint32 {
	r, g, b, _ := img.At(x, y).RGBA()
	return (r>>8)<<16 | (g>>8)<<8 | b>>8
}

type axeViolation struct {
	ID     string   `json:"id"`
	Impact string   `json:"impact"`
	Help   string   `json:"help"`
	Nodes  []string `json:"nodes"`
}

// checkAccessibility injects axe-core into the page and fails on any
// critical violation (serious ones are reported in the log).
func (b *browser) checkAccessibility(page string) {
	b.t.Helper()
	if !eval[bool](b, "typeof window.axe === 'object'") {
		eval[bool](b, b.axe+"\n;true")
	}
	res := eval[struct {
		Passes     int            `json:"passes"`
		Violations []axeViolation `json:"violations"`
	}](b, `axe.run(document).then(r => ({passes: r.passes.length, violations: r.violations.map(v => ({
		id: v.id, impact: v.impact || '', help: v.help, nodes: v.nodes.slice(0, 5).map(n => n.target.join(' ')) }))}))`)
	if res.Passes == 0 {
		b.t.Fatalf("%s: axe checked nothing", page)
	}
	for _, v := range res.Violations {
		msg := fmt.Sprintf("%s: axe %s (%s): %s on %v", page, v.ID, v.Impact, v.Help, v.Nodes)
		if v.Impact == "critical" {
			b.t.Error(msg)
		} else {
			b.t.Log(msg)
		}
	}
}

// TestConsole walks the console as an operator would: sign in, look at
// every page, preheat an image and watch the job reach SUCCESS, find a
// layer in the task list, evict it everywhere, create a token, and see a
// peer leave the peers page when its daemon stops. Every page is
// photographed on a laptop and a phone viewport and checked by axe-core.
func TestConsole(t *testing.T) {
	if _, err := exec.LookPath("docker-registry"); err != nil {
		t.Skip("docker-registry not installed (scripts/install-deps.sh installs it)")
	}
	if _, err := exec.LookPath("skopeo"); err != nil {
		t.Skip("skopeo not installed (scripts/install-deps.sh installs it)")
	}
	c := startCluster(t)
	ref, im := c.startRegistry(t)
	b := newBrowser(t, c.api)

	// A wrong password is refused with a message; the right one signs in.
	b.do(chromedp.Navigate(c.api + "/"))
	b.waitJS("the sign-in form", "document.getElementById('signin-name')", 30*time.Second)
	t.Logf("first contentful paint of the sign-in page: %.0f ms (not asserted)",
		eval[float64](b, "(performance.getEntriesByName('first-contentful-paint')[0] || {startTime: -1}).startTime"))
	b.shoot("signin")
	// Keyboard: from the top of the page the first Tab reaches the skip
	// link, and Tab moves from the name to the password field; focus is
	// visible each time.
	focused := func(want string) {
		t.Helper()
		if !eval[bool](b, "document.activeElement.matches("+quote(want)+") && getComputedStyle(document.activeElement).outlineStyle !== 'none'") {
			t.Fatalf("focus on %q without a visible ring, want %s", eval[string](b, "document.activeElement.outerHTML"), want)
		}
	}
	b.do(chromedp.Evaluate[chromedp.Void]("document.body.tabIndex = -1; document.body.focus()"), chromedp.KeyEvent("\t"))
	focused("a.skip")
	b.do(chromedp.Focus(chromedp.ID("signin-name")), chromedp.KeyEvent("\t"))
	focused("#signin-password")
	b.do(chromedp.SendKeys(chromedp.ID("signin-name"), "admin"), chromedp.SendKeys(chromedp.ID("signin-password"), "wrong-password"),
		chromedp.Click(chromedp.CSS("form button[type=submit]")))
	b.waitJS("the refusal", "document.querySelector('[role=alert]') && document.querySelector('[role=alert]').textContent.includes('Wrong name or password')", 20*time.Second)
	// The right password, submitted with the Enter key.
	b.do(chromedp.Evaluate[chromedp.Void]("document.getElementById('signin-password').value = ''"),
		chromedp.SendKeys(chromedp.ID("signin-password"), adminPass+"\r"))
	b.waitJS("the overview", "document.querySelector('.stats')", 30*time.Second)
	// A fresh load of the overview, signed in (the figure is logged: tests
	// do not assert wall-clock times).
	b.do(chromedp.Navigate(c.api + "/?reload=1#/overview"))
	b.waitJS("the overview after a reload", "performance.getEntriesByName('overview-drawn').length", 30*time.Second)
	t.Logf("overview: first contentful paint %.0f ms, figures drawn %.0f ms after navigation (not asserted)",
		eval[float64](b, "(performance.getEntriesByName('first-contentful-paint')[0] || {startTime: -1}).startTime"),
		eval[float64](b, "performance.getEntriesByName('overview-drawn')[0].startTime"))
	if tok := eval[string](b, "sessionStorage.getItem('damselfly.token') || ''"); !strings.HasPrefix(tok, "dfs_") {
		t.Fatalf("session token %q not in sessionStorage", tok)
	}

	// Preheat the image to every peer and watch the job succeed.
	b.open("#/jobs", "#pf-url")
	b.do(chromedp.SetValue(chromedp.ID("pf-scope"), "all_peers"))
	b.fill("pf-url", ref)
	b.fill("pf-platform", "linux/amd64")
	b.shoot("jobs")
	b.do(chromedp.Click(chromedp.ID("pf-submit")))
	b.waitJS("the job page", "/^#\\/jobs\\/\\d+$/.test(location.hash) && document.getElementById('job-state')", 30*time.Second)
	b.waitJS("the preheat to reach SUCCESS", "document.getElementById('job-state') && document.getElementById('job-state').textContent === 'SUCCESS'", 120*time.Second)
	jobID := regexp.MustCompile(`\d+$`).FindString(eval[string](b, "location.hash"))
	b.waitJS("peer rows of every layer", fmt.Sprintf("document.querySelectorAll('tr[data-peer]').length === %d", 3*len(im.Blobs())), 10*time.Second)
	b.shoot("job")

	// A preheat of an image the registry does not have fails, and the job
	// page says why.
	b.open("#/jobs", "#pf-url")
	b.fill("pf-url", strings.TrimSuffix(ref, ":v1")+":missing")
	b.do(chromedp.Click(chromedp.ID("pf-submit")))
	b.waitJS("the failed job page", "/^#\\/jobs\\/\\d+$/.test(location.hash) && location.hash !== '#/jobs/"+jobID+"'", 30*time.Second)
	b.waitJS("the failure and its reason", "document.getElementById('job-state') && document.getElementById('job-state').textContent === 'FAILURE' && document.querySelector('.error[role=alert]') && document.querySelector('.error[role=alert]').textContent.includes('not found')", 60*time.Second)
	b.shoot("job-failed")

	// The overview now has traffic.
	b.open("#/overview", ".stats")
	b.waitJS("the charts to have samples", "document.querySelectorAll('.chart polyline').length >= 2", 30*time.Second)
	b.shoot("overview")

	// The last layer is in the task list; its page shows the three peers.
	layer := im.Layers[len(im.Layers)-1]
	tid, err := core.ContentTaskID(layer.Digest)
	if err != nil {
		t.Fatal(err)
	}
	b.open("#/tasks", "table")
	b.waitJS("the layer in the task list", fmt.Sprintf("document.querySelector('tr[data-task=%q] a')", tid), 30*time.Second)
	b.shoot("tasks")
	b.do(chromedp.Evaluate[chromedp.Void](fmt.Sprintf("location.hash = '#/tasks?url=%s'", "blobs/"+layer.Digest)))
	b.waitJS("the URL filter", fmt.Sprintf("document.querySelectorAll('tr[data-task]').length === 1 && document.querySelector('tr[data-task=%q]')", tid), 20*time.Second)
	b.do(chromedp.Click(chromedp.CSS(fmt.Sprintf("tr[data-task=%q] a", tid))))
	b.waitJS("the task's peers", "document.querySelectorAll('tr[data-peer]').length === 3 && document.getElementById('evict')", 20*time.Second)
	for _, h := range []string{"seed-1", "d0", "d1"} {
		if !eval[bool](b, fmt.Sprintf("!!document.querySelector('tr[data-peer=%q] progress[value]')", h)) {
			t.Fatalf("no progress of %s on the task page", h)
		}
	}
	b.shoot("task")

	// Evict it everywhere, after confirming.
	b.do(chromedp.Click(chromedp.ID("evict")))
	b.waitJS("the confirmation", "document.querySelector('dialog[open] #dlg-ok')", 10*time.Second)
	b.shoot("evict-confirm")
	b.do(chromedp.Click(chromedp.ID("dlg-ok")))
	b.waitJS("the eviction job", "/^#\\/jobs\\/\\d+$/.test(location.hash) && location.hash !== '#/jobs/"+jobID+"'", 20*time.Second)
	b.waitJS("the eviction to reach SUCCESS", "document.getElementById('job-state') && document.getElementById('job-state').textContent === 'SUCCESS'", 60*time.Second)
	b.waitJS("evicted on three peers", "[...document.querySelectorAll('tr[data-peer]')].filter(r => r.textContent.includes('evicted')).length === 3", 10*time.Second)
	for name, d := range c.daemons {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		cl, err := client.Dial(ctx, d.sock)
		if err != nil {
			cancel()
			t.Fatal(err)
		}
		if st, err := cl.StatTask(ctx, tid); err == nil {
			t.Errorf("%s still holds the evicted layer: %v", name, st)
		}
		cl.Close()
		cancel()
	}
	waitFor(t, 20*time.Second, "the scheduler to forget the evicted layer", func() bool {
		return c.call(t, "GET", "/api/v1/tasks/"+tid, nil, nil) == 404
	})

	// The other pages.
	b.open("#/clusters", "#cl-name")
	b.fill("cl-name", "dc2")
	b.fill("cl-idc", "dc2|dc2b")
	b.fill("cl-cidrs", "10.77.2.0/24")
	b.do(chromedp.Click(chromedp.CSS("#cl-cidrs ~ button, form.grid button[type=submit]")))
	b.waitJS("the new cluster with its scopes", "[...document.querySelectorAll('td')].some(td => td.textContent === '10.77.2.0/24')", 20*time.Second)
	b.shoot("clusters")
	b.open("#/components", "details pre.config")
	b.shoot("components")
	b.open("#/config", "pre.config")
	if txt := eval[string](b, "document.querySelector('pre.config').textContent"); strings.Contains(txt, adminPass) || !strings.Contains(txt, "admin_password: '[redacted]'") {
		t.Fatalf("manager config shown without redaction:\n%s", txt)
	}
	b.shoot("config")
	b.open("#/users", "#tok-name")
	b.fill("tok-name", "ci-token")
	b.do(chromedp.Click(chromedp.CSS("#tok-name ~ button, section form button[type=submit]")))
	b.waitJS("the new token, shown once", "document.getElementById('new-token') && document.getElementById('new-token').textContent.startsWith('dfp_')", 20*time.Second)
	b.waitJS("the users table", "[...document.querySelectorAll('caption')].some(c => c.textContent === 'Users')", 20*time.Second)
	b.shoot("users")
	b.clickJS("the token's revoke button", "button[aria-label='Revoke token ci-token']", 20*time.Second)
	b.waitJS("the revocation's confirmation", "document.querySelector('dialog[open] #dlg-ok')", 10*time.Second)
	b.do(chromedp.Click(chromedp.ID("dlg-ok")))
	b.waitJS("the token gone", "!document.querySelector(\"button[aria-label='Revoke token ci-token']\")", 20*time.Second)
	var pats []struct{ Name string }
	if c.call(t, "GET", "/api/v1/tokens", nil, &pats); len(pats) != 0 {
		t.Fatalf("tokens after revocation: %+v", pats)
	}

	// A peer disappears when its daemon stops.
	b.open("#/peers", "tr[data-host=\"d1\"]")
	b.shoot("peers")
	c.daemons["d1"].Stop(5 * time.Second)
	b.waitJS("d1 to leave the peers page", "document.querySelector('tr[data-host=\"d0\"]') && !document.querySelector('tr[data-host=\"d1\"]')", 30*time.Second)

	// Sign out: the token is gone and the sign-in form is back.
	b.do(chromedp.Click(chromedp.ID("signout")))
	b.waitJS("the sign-in form after sign-out", "document.getElementById('signin-name') && !sessionStorage.getItem('damselfly.token')", 20*time.Second)
	// A guest sees the tasks and jobs but is offered no change.
	if code := c.call(t, "POST", "/api/v1/users", map[string]string{"name": "viewer", "password": "viewer-pass-1", "role": "guest"}, nil); code != 201 {
		t.Fatalf("create guest: %d", code)
	}
	cfgID, err := core.ContentTaskID(im.Config.Digest)
	if err != nil {
		t.Fatal(err)
	}
	b.do(chromedp.SendKeys(chromedp.ID("signin-name"), "viewer"), chromedp.SendKeys(chromedp.ID("signin-password"), "viewer-pass-1\r"))
	b.waitJS("the guest's overview", "document.querySelector('.stats')", 30*time.Second)
	b.open("#/jobs", "tr[data-job]")
	if eval[bool](b, "!!document.getElementById('pf-url')") {
		t.Fatal("a guest is offered the preheat form")
	}
	b.open("#/tasks/"+cfgID, "tr[data-peer]")
	if eval[bool](b, "!!document.getElementById('evict')") {
		t.Fatal("a guest is offered the eviction")
	}
	b.open("#/users", "#tok-name")
	if eval[bool](b, "!!document.getElementById('nu-name')") {
		t.Fatal("a guest is offered to create users")
	}
	if n := len(b.shotList); n < 24 {
		t.Fatalf("%d screenshots, want two of every page", n)
	}
	t.Logf("screenshots in %s", b.shots)
}
