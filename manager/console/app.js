// Damselfly console: a small single-page app over the manager's REST API.
// No framework and no build step. Pages are routed by the URL fragment
// (#/tasks, #/jobs/12, ...); the session token lives in sessionStorage and
// is sent as a bearer token. Data is always inserted as text, never HTML.

const TOKEN = 'damselfly.token';
const USER = 'damselfly.user';
const main = document.getElementById('main');
let timers = [];   // polling of the current page, cleared on navigation
let seq = 0;       // render generation: stale fetches do not draw

// ---- DOM and formatting helpers ----

function h(tag, attrs, ...kids) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === false || v === null || v === undefined) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = v;
    else el.setAttribute(k, v === true ? '' : v);
  }
  for (const k of kids.flat(Infinity)) {
    if (k === null || k === undefined || k === false) continue;
    el.append(k instanceof Node ? k : document.createTextNode(String(k)));
  }
  return el;
}
const svgNS = 'http://www.w3.org/2000/svg';
function s(tag, attrs, ...kids) {
  const el = document.createElementNS(svgNS, tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, v);
  for (const k of kids) el.append(k instanceof Node ? k : document.createTextNode(String(k)));
  return el;
}

function bytes(n) {
  if (n === undefined || n === null || n < 0) return '—';
  const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return (i === 0 ? n : n.toFixed(n < 10 ? 2 : 1)) + ' ' + u[i];
}
// shortURL keeps a URL's host and its last path segment (full URL in the title).
function shortURL(u) {
  if (!u) return '—';
  try {
    const x = new URL(u);
    const segs = x.pathname.split('/').filter(Boolean);
    let last = segs.at(-1) || '';
    if (last.length > 28) last = last.slice(0, 24) + '…';
    return x.host + (segs.length > 1 ? '/…/' : '/') + last;
  } catch { return u; }
}
const rate = (n) => bytes(n) + '/s';
const pct = (x) => (x === null || isNaN(x)) ? '—' : (x * 100).toFixed(1) + ' %';
const ms = (sec) => (!sec) ? '—' : (sec < 1 ? (sec * 1000).toFixed(sec < 0.01 ? 2 : 1) + ' ms' : sec.toFixed(2) + ' s');
function when(t) {
  if (!t) return '—';
  const d = new Date(t);
  return d.toLocaleString(undefined, { dateStyle: 'short', timeStyle: 'medium' });
}
function ago(t) {
  if (!t) return 'never';
  const s = Math.max(0, Math.round((Date.now() - t) / 1000));
  if (s < 60) return s + ' s ago';
  if (s < 3600) return Math.round(s / 60) + ' min ago';
  return Math.round(s / 3600) + ' h ago';
}
function badge(state) {
  const cls = { SUCCESS: 'ok', active: 'ok', succeeded: 'ok', FAILURE: 'bad', failed: 'bad', inactive: 'bad',
    RUNNING: 'info', running: 'info', back_to_source: 'warn', PENDING: 'warn', pending: 'warn', waiting: 'warn' }[state] || 'info';
  return h('span', { class: 'badge ' + cls }, state);
}
function announce(msg) {
  const st = document.getElementById('status');
  st.textContent = '';
  setTimeout(() => { st.textContent = msg; }, 30);
}
function field(id, label, input, hint) {
  input.id = id;
  return h('div', { class: input.dataset.wide ? 'wide' : null },
    h('label', { for: id }, label, hint ? h('span', { class: 'hint' }, ' — ' + hint) : null), input);
}
function table(caption, heads, rows, emptyText) {
  const thead = h('thead', {}, h('tr', {}, heads.map((c) => {
    const [text, cls] = Array.isArray(c) ? c : [c, null];
    return h('th', { scope: 'col', class: cls }, text);
  })));
  const body = rows.length ? rows : [h('tr', { class: 'empty' }, h('td', { colspan: heads.length }, emptyText || 'Nothing yet.'))];
  return h('div', { class: 'table-wrap' }, h('table', {}, h('caption', {}, caption), thead, h('tbody', {}, body)));
}
function errorBox(err) { return h('p', { class: 'error', role: 'alert' }, err.message || String(err)); }
function td(v, cls) { return h('td', { class: cls }, v); }

// ---- API ----

class APIError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function api(method, path, body) {
  const headers = { 'Accept': 'application/json' };
  const tok = sessionStorage.getItem(TOKEN);
  if (tok) headers['Authorization'] = 'Bearer ' + tok;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const resp = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  if (resp.status === 401 && !path.endsWith('/signin')) {
    signOut('Your session ended; please sign in again.');
    throw new APIError(401, 'signed out');
  }
  const text = await resp.text();
  let data = null;
  if (text) { try { data = JSON.parse(text); } catch { data = null; } }
  if (!resp.ok) throw new APIError(resp.status, (data && data.message) || resp.statusText);
  return { data, total: Number(resp.headers.get('X-Total-Count') || 0), headers: resp.headers };
}
const get = (p) => api('GET', p).then((r) => r.data);

function me() {
  try { return JSON.parse(sessionStorage.getItem(USER) || 'null'); } catch { return null; }
}
const isAdmin = () => (me() || {}).role === 'admin';

function signOut(msg) {
  sessionStorage.removeItem(TOKEN);
  sessionStorage.removeItem(USER);
  signOutMsg = msg || '';
  location.hash = '#/signin';
}
let signOutMsg = '';

// ---- shell and routing ----

const routes = [
  [/^\/signin$/, pageSignIn, 'Sign in'],
  [/^\/overview$/, pageOverview, 'Overview'],
  [/^\/clusters$/, pageClusters, 'Clusters'],
  [/^\/components$/, pageComponents, 'Schedulers and seed peers'],
  [/^\/peers$/, pagePeers, 'Peers'],
  [/^\/tasks$/, pageTasks, 'Tasks'],
  [/^\/tasks\/([0-9a-f]{64})$/, pageTask, 'Task'],
  [/^\/jobs$/, pageJobs, 'Jobs'],
  [/^\/jobs\/(\d+)$/, pageJob, 'Job'],
  [/^\/users$/, pageUsers, 'Users and tokens'],
  [/^\/config$/, pageConfig, 'Configuration'],
];

function every(msec, fn) { timers.push(setInterval(fn, msec)); }

async function route() {
  timers.forEach(clearInterval);
  timers = [];
  const gen = ++seq;
  const path = location.hash.replace(/^#/, '').split('?')[0] || '/overview';
  const signedIn = !!sessionStorage.getItem(TOKEN);
  if (!signedIn && path !== '/signin') { location.replace('#/signin'); return; }
  if (signedIn && path === '/signin') { location.replace('#/overview'); return; }
  document.getElementById('nav').hidden = !signedIn;
  document.getElementById('who').hidden = !signedIn;
  const u = me();
  document.getElementById('who-name').textContent = u ? u.name + ' (' + u.role + ')' : '';
  for (const a of document.querySelectorAll('#nav a')) {
    const target = a.getAttribute('href').slice(1);
    if (path === target || path.startsWith(target + '/')) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  for (const [re, page, title] of routes) {
    const m = path.match(re);
    if (!m) continue;
    document.title = title + ' · Damselfly';
    const view = h('div', {});
    main.replaceChildren(view);
    try {
      await page(view, () => gen === seq, ...m.slice(1));
    } catch (e) {
      if (gen === seq && !(e instanceof APIError && e.status === 401)) view.append(errorBox(e));
    }
    return;
  }
  document.title = 'Not found · Damselfly';
  main.replaceChildren(h('h1', {}, 'Not found'), h('p', {}, 'No such page. ', h('a', { href: '#/overview' }, 'Go to the overview')));
}

// Focus the page heading after navigation so screen readers announce it.
function focusMain() {
  const h1 = main.querySelector('h1');
  if (h1) { h1.tabIndex = -1; h1.focus({ preventScroll: true }); }
}
window.addEventListener('hashchange', () => route().then(focusMain));
// Sign-out forgets the session token in this tab (it expires on its own
// after the manager's session_ttl).
document.getElementById('signout').addEventListener('click', () => signOut('Signed out.'));

// ---- sign in ----

async function pageSignIn(view) {
  const err = h('div', { 'aria-live': 'assertive' });
  const name = h('input', { name: 'name', autocomplete: 'username', required: true });
  const pass = h('input', { name: 'password', type: 'password', autocomplete: 'current-password', required: true });
  const btn = h('button', { type: 'submit' }, 'Sign in');
  const form = h('form', { novalidate: true, onsubmit: async (ev) => {
    ev.preventDefault();
    err.replaceChildren();
    if (!name.value || !pass.value) { err.append(errorBox(new Error('Enter your name and password.'))); return; }
    btn.disabled = true;
    try {
      const r = await api('POST', '/api/v1/users/signin', { name: name.value, password: pass.value });
      sessionStorage.setItem(TOKEN, r.data.token);
      sessionStorage.setItem(USER, JSON.stringify(r.data.user));
      location.hash = '#/overview';
    } catch (e) {
      err.append(errorBox(e.status === 401 ? new Error('Wrong name or password.') : e));
      btn.disabled = false;
      pass.select();
    }
  } }, field('signin-name', 'Name', name), field('signin-password', 'Password', pass), btn);
  view.append(h('section', { class: 'card signin', 'aria-labelledby': 'signin-h' },
    h('h1', { id: 'signin-h' }, 'Sign in to Damselfly'),
    signOutMsg ? h('p', { class: 'notice', role: 'status' }, signOutMsg) : null, err, form));
  signOutMsg = '';
  name.focus();
}

// ---- overview ----

function chart(title, series, opts) {
  // series: [{name, cls, color, points: [[t, v], ...]}]; inline SVG, no library.
  const W = 600, H = 150, P = 28;
  const all = series.flatMap((x) => x.points);
  const svg = s('svg', { viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': title + ': ' + (opts.describe || '') });
  if (all.length < 2) {
    svg.append(s('text', { x: W / 2, y: H / 2, 'text-anchor': 'middle', fill: '#545d68', 'font-size': 14 }, 'Collecting samples…'));
  } else {
    const t0 = Math.min(...all.map((p) => p[0])), t1 = Math.max(...all.map((p) => p[0]));
    let vmax = Math.max(opts.min || 0, ...all.map((p) => p[1]));
    if (vmax <= 0) vmax = 1;
    const x = (t) => P + (W - P - 6) * ((t - t0) / Math.max(1, t1 - t0));
    const y = (v) => H - 18 - (H - 30) * (v / vmax);
    for (const f of [0, 0.5, 1]) {
      svg.append(s('line', { x1: P, x2: W - 6, y1: y(vmax * f), y2: y(vmax * f), stroke: '#d4d9df', 'stroke-width': 1 }));
      svg.append(s('text', { x: 2, y: y(vmax * f) + 4, fill: '#545d68', 'font-size': 10 }, opts.fmt(vmax * f)));
    }
    for (const ser of series) {
      if (ser.points.length < 2) continue;
      const pts = ser.points.map((p) => x(p[0]).toFixed(1) + ',' + y(p[1]).toFixed(1)).join(' ');
      if (ser.fill) svg.append(s('polygon', { points: `${x(ser.points[0][0])},${y(0)} ${pts} ${x(ser.points.at(-1)[0])},${y(0)}`, fill: ser.color, 'fill-opacity': 0.12 }));
      svg.append(s('polyline', { points: pts, fill: 'none', stroke: ser.color, 'stroke-width': 2.2, 'vector-effect': 'non-scaling-stroke' }));
    }
    svg.append(s('text', { x: P, y: H - 3, fill: '#545d68', 'font-size': 10 }, new Date(t0).toLocaleTimeString()));
    svg.append(s('text', { x: W - 6, y: H - 3, fill: '#545d68', 'font-size': 10, 'text-anchor': 'end' }, new Date(t1).toLocaleTimeString()));
  }
  const legend = series.length > 1 ? h('div', { class: 'legend' }, series.map((x) => h('span', {}, h('span', { class: 'swatch ' + x.cls }), x.name))) : null;
  return h('figure', { class: 'chart' }, h('h2', {}, title), svg, legend);
}

function stat(label, value, sub) {
  return h('div', { class: 'stat' }, h('div', { class: 'label' }, label), h('div', { class: 'value' }, value), sub ? h('div', { class: 'sub' }, sub) : null);
}

async function pageOverview(view, live) {
  const head = h('h1', {}, 'Overview');
  const body = h('div', {}, h('p', { class: 'muted' }, 'Loading the schedulers\u2019 figures…'));
  view.append(head, body);
  const draw = async (refresh) => {
    const ov = await get('/api/v1/overview' + (refresh ? '?refresh=1' : ''));
    if (!live()) return;
    const c = ov.current;
    const total = c.peer_bytes + c.origin_bytes;
    const ratio = total ? c.peer_bytes / total : NaN;
    const b2s = c.registrations ? c.back_to_source / c.registrations : NaN;
    const stats = h('div', { class: 'stats' },
      stat('P2P traffic ratio', pct(ratio), bytes(c.peer_bytes) + ' from peers of ' + bytes(total)),
      stat('Origin offload', bytes(c.peer_bytes), 'not fetched from the origin'),
      stat('Back-to-source rate', pct(b2s), c.back_to_source + ' of ' + c.registrations + ' peers'),
      stat('Active downloads', String(c.active_downloads), c.active_peers + ' peers in ' + c.tasks + ' tasks'),
      stat('Piece latency p99', ms(c.piece_latency_p99), 'p50 ' + ms(c.piece_latency_p50) + ' · p90 ' + ms(c.piece_latency_p90)),
      stat('Schedulers answering', String(c.schedulers || 0), (c.hosts || 0) + ' hosts known'));
    // Per-interval rates from the cumulative series.
    const se = ov.series || [];
    const peerRate = [], originRate = [], ratioPts = [], dl = [], p99 = [];
    for (let i = 1; i < se.length; i++) {
      const a = se[i - 1], b = se[i], dt = Math.max(0.001, (b.at - a.at) / 1000);
      const dp = Math.max(0, b.peer_bytes - a.peer_bytes), dor = Math.max(0, b.origin_bytes - a.origin_bytes);
      peerRate.push([b.at, dp / dt]);
      originRate.push([b.at, dor / dt]);
    }
    // The ratio over time is the running one (over the totals).
    for (const x of se) if (x.peer_bytes + x.origin_bytes > 0) ratioPts.push([x.at, x.peer_bytes / (x.peer_bytes + x.origin_bytes)]);
    for (const x of se) { dl.push([x.at, x.active_downloads]); p99.push([x.at, x.piece_latency_p99]); }
    const charts = h('div', { class: 'charts' },
      chart('Traffic', [
        { name: 'from peers', cls: 'peer', color: '#0b57d0', fill: true, points: peerRate },
        { name: 'from the origin', cls: 'origin', color: '#c2410c', fill: true, points: originRate }],
      { fmt: rate, describe: 'bytes per second from peers and from the origin over time' }),
      chart('P2P traffic ratio', [{ name: 'ratio', color: '#136c2e', points: ratioPts }], { fmt: pct, min: 1, describe: 'share of bytes that came from peers, running total' }),
      chart('Active downloads', [{ name: 'downloads', color: '#6b21a8', points: dl }], { fmt: (v) => v.toFixed(0), min: 2, describe: 'peers downloading over time' }),
      chart('Piece latency p99', [{ name: 'p99', color: '#b3261e', points: p99 }], { fmt: (v) => v ? ms(v) : '0', describe: '99th percentile of piece transfer time' }));
    const per = (ov.clusters || []).map((cl) => {
      const t = cl.current.peer_bytes + cl.current.origin_bytes;
      return h('tr', {}, td(String(cl.cluster_id)), td(pct(t ? cl.current.peer_bytes / t : NaN), 'num'),
        td(bytes(cl.current.origin_bytes), 'num'), td(String(cl.current.active_downloads), 'num'), td(ms(cl.current.piece_latency_p99), 'num'));
    });
    if (!performance.getEntriesByName('overview-drawn').length) performance.mark('overview-drawn');
    body.replaceChildren(stats, charts, h('h2', {}, 'By cluster'),
      table('Clusters', ['Cluster', ['P2P ratio', 'num'], ['From origin', 'num'], ['Active downloads', 'num'], ['Latency p99', 'num']], per, 'No scheduler has answered yet.'),
      h('p', { class: 'muted' }, 'Sampled every ' + Math.round(ov.interval_ms / 1000) + ' s from every active scheduler; totals cover what the schedulers saw since they started.'));
    return ov;
  };
  const ov = await draw(false);
  if (ov && (ov.series || []).length === 0) await draw(true);
  every(Math.max(2000, (ov && ov.interval_ms) || 5000), () => draw(false).catch(() => {}));
}

// ---- clusters ----

async function pageClusters(view, live) {
  view.append(h('h1', {}, 'Clusters'));
  const holder = h('div', {});
  view.append(holder);
  const load = async () => {
    const [cl, sc, sp] = await Promise.all([get('/api/v1/clusters?per_page=100'), get('/api/v1/schedulers?per_page=100'), get('/api/v1/seed-peers?per_page=100')]);
    if (!live()) return;
    const rows = cl.map((c) => h('tr', {},
      td(h('strong', {}, c.name)), td(c.is_default ? badge('default') : ''),
      td(c.scopes.idc || '—'), td(c.scopes.location || '—'), td(c.scopes.cidrs.length ? c.scopes.cidrs.join(', ') : '—'),
      td(String(sc.filter((x) => x.cluster_id === c.id && x.state === 'active').length) + ' / ' + String(sp.filter((x) => x.cluster_id === c.id && x.state === 'active').length), 'num'),
      td(isAdmin() && !c.is_default ? h('button', { type: 'button', class: 'secondary', 'aria-label': 'Delete cluster ' + c.name, onclick: async () => {
        if (!await confirmDialog('Delete cluster ' + c.name + '?', 'Its schedulers and seed peers lose their records.', 'Delete')) return;
        try { await api('DELETE', '/api/v1/clusters/' + c.id); announce('Cluster deleted.'); load(); } catch (e) { holder.prepend(errorBox(e)); }
      } }, 'Delete') : '')));
    holder.replaceChildren(table('Scheduler clusters and the daemons their scopes match',
      ['Name', 'Default', 'IDC scope', 'Location scope', 'CIDR scope', ['Active schedulers / seeds', 'num'], 'Actions'], rows));
  };
  await load();
  if (isAdmin()) view.append(clusterForm(load));
}

function clusterForm(reload) {
  const name = h('input', { required: true, pattern: '[A-Za-z0-9._-]{1,64}' });
  const desc = h('input', {});
  const idc = h('input', { placeholder: 'dc1|dc2' });
  const loc = h('input', { placeholder: 'region|zone' });
  const cidrs = h('input', { placeholder: '10.0.0.0/8, 192.168.0.0/16' });
  const def = h('input', { type: 'checkbox' });
  def.classList.add('check');
  const out = h('div', { 'aria-live': 'polite' });
  const form = h('form', { class: 'grid', onsubmit: async (ev) => {
    ev.preventDefault();
    out.replaceChildren();
    try {
      await api('POST', '/api/v1/clusters', { name: name.value, description: desc.value, is_default: def.checked,
        scopes: { idc: idc.value, location: loc.value, cidrs: cidrs.value.split(',').map((x) => x.trim()).filter(Boolean) } });
      out.append(h('p', { class: 'notice' }, 'Cluster ' + name.value + ' created.'));
      form.reset();
      reload();
    } catch (e) { out.append(errorBox(e)); }
  } },
  field('cl-name', 'Name', name), field('cl-desc', 'Description', desc), field('cl-idc', 'IDC scope', idc, '"|"-separated'),
  field('cl-loc', 'Location scope', loc, 'prefix'), field('cl-cidrs', 'CIDR scope', cidrs, 'comma-separated'),
  field('cl-default', 'Default cluster', def), h('div', {}, h('button', { type: 'submit' }, 'Create cluster')));
  return h('section', { class: 'card', 'aria-labelledby': 'cl-new' }, h('h2', { id: 'cl-new' }, 'New cluster'), form, out);
}

// ---- schedulers and seed peers ----

function configBlock(label, text) {
  if (!text) return h('span', { class: 'muted' }, 'not reported');
  return h('details', {}, h('summary', {}, label), h('pre', { class: 'config', tabindex: 0 }, text));
}

async function pageComponents(view, live) {
  view.append(h('h1', {}, 'Schedulers and seed peers'));
  const holder = h('div', {});
  view.append(holder);
  const load = async () => {
    const [sc, sp] = await Promise.all([get('/api/v1/schedulers?per_page=100'), get('/api/v1/seed-peers?per_page=100')]);
    if (!live()) return;
    const row = (c, seed) => h('tr', {},
      td(h('strong', {}, c.hostname || '—')), td(badge(c.state)), td(h('code', {}, c.ip + ':' + c.port)),
      seed ? td(String(c.upload_port), 'num') : null, td(String(c.cluster_id), 'num'),
      td([c.idc, c.location].filter(Boolean).join(' · ') || '—', 'hide-sm'), td(ago(c.last_keepalive)),
      td(configBlock('Configuration of ' + (c.hostname || c.ip), c.config)));
    holder.replaceChildren(
      table('Schedulers', ['Host', 'State', 'Address', ['Cluster', 'num'], ['Locality', 'hide-sm'], 'Last keepalive', 'Configuration'], sc.map((c) => row(c, false)), 'No scheduler has registered.'),
      h('h2', {}, 'Seed peers'),
      table('Seed peers', ['Host', 'State', 'Peer address', ['Upload port', 'num'], ['Cluster', 'num'], ['Locality', 'hide-sm'], 'Last keepalive', 'Configuration'], sp.map((c) => row(c, true)), 'No seed peer has registered.'));
  };
  await load();
  every(5000, () => load().catch(() => {}));
}

// ---- peers ----

async function pagePeers(view, live) {
  view.append(h('h1', {}, 'Peers'), h('p', { class: 'muted' }, 'Daemons that asked for their schedulers lately, with their cache use and the traffic their schedulers saw.'));
  const holder = h('div', {});
  view.append(holder);
  const load = async () => {
    const r = await api('GET', '/api/v1/peers?per_page=100');
    if (!live()) return;
    const rows = r.data.map((p) => h('tr', { 'data-host': p.hostname },
      td(h('strong', {}, p.hostname)), td(p.seed ? badge('seed') : 'peer'), td(h('code', {}, p.ip + ':' + p.port)),
      td(String(p.cluster_id), 'num'), td([p.idc, p.location].filter(Boolean).join(' · ') || '—', 'hide-sm'),
      td(bytes(p.cache_bytes) + ' · ' + p.cache_tasks + ' tasks', 'num'),
      td(rate(p.upload_rate), 'num'), td(rate(p.download_rate), 'num'),
      td(bytes(p.upload_bytes) + ' ↑ ' + bytes(p.download_bytes) + ' ↓', 'num hide-sm'), td(ago(p.last_seen))));
    holder.replaceChildren(table(r.total + ' peers', ['Host', 'Role', 'Peer address', ['Cluster', 'num'], ['Labels', 'hide-sm'], ['Cache', 'num'], ['Upload', 'num'], ['Download', 'num'], ['Traffic', 'num hide-sm'], 'Last seen'], rows, 'No daemon has been seen lately.'));
  };
  await load();
  every(3000, () => load().catch(() => {}));
}

// ---- tasks ----

async function pageTasks(view, live) {
  const q = new URLSearchParams(location.hash.split('?')[1] || '');
  const page = Math.max(1, Number(q.get('page') || 1));
  const url = h('input', { name: 'url', value: q.get('url') || '', placeholder: 'part of the URL' });
  const tid = h('input', { name: 'task_id', value: q.get('task_id') || '', placeholder: '64 hex digits' });
  const app = h('input', { name: 'application', value: q.get('application') || '' });
  const form = h('form', { class: 'grid', role: 'search', onsubmit: (ev) => {
    ev.preventDefault();
    const p = new URLSearchParams();
    if (url.value) p.set('url', url.value);
    if (tid.value) p.set('task_id', tid.value);
    if (app.value) p.set('application', app.value);
    location.hash = '#/tasks' + (p.toString() ? '?' + p : '');
  } }, field('t-url', 'URL contains', url), field('t-id', 'Task ID', tid), field('t-app', 'Application', app),
  h('div', { class: 'actions' }, h('button', { type: 'submit' }, 'Filter'), h('a', { href: '#/tasks' }, 'Clear')));
  const holder = h('div', {});
  view.append(h('h1', {}, 'Tasks'), h('p', { class: 'muted' }, 'What the swarm holds, as every active scheduler knows it.'),
    h('section', { class: 'card', 'aria-label': 'Filter tasks' }, form), holder);
  const load = async () => {
    const p = new URLSearchParams();
    for (const [k, v] of [['url', url.value], ['task_id', tid.value], ['application', app.value]]) if (v) p.set(k, v);
    p.set('page', page); p.set('per_page', 20);
    const r = await api('GET', '/api/v1/tasks?' + p);
    if (!live()) return;
    const unreachable = r.headers.get('X-Unreachable-Schedulers');
    const rows = r.data.map((t) => h('tr', { 'data-task': t.task_id },
      td(h('a', { href: '#/tasks/' + t.task_id, title: t.task_id }, h('code', {}, t.task_id.slice(0, 12) + '…'))),
      td(h('span', { class: 'mono', title: t.url }, shortURL(t.url))), td(t.application || '—', 'hide-sm'), td(bytes(t.content_length), 'num'),
      td(t.done_peers + ' / ' + t.peers, 'num'), td(String(t.seed_peers), 'num')));
    const pages = Math.max(1, Math.ceil(r.total / 20));
    const nav = (n, label) => {
      const p2 = new URLSearchParams(p); p2.set('page', n); p2.delete('per_page');
      return h('a', { href: '#/tasks?' + p2, 'aria-label': label + ' page' }, label);
    };
    holder.replaceChildren(
      unreachable ? h('p', { class: 'error', role: 'alert' }, 'Some schedulers did not answer; the list may be incomplete.') : '',
      table(r.total + ' tasks', ['Task', 'URL', ['Application', 'hide-sm'], ['Size', 'num'], ['Peers done', 'num'], ['Seeds', 'num']], rows, 'No task matches.'),
      h('nav', { class: 'pager', 'aria-label': 'Task pages' }, page > 1 ? nav(page - 1, 'Previous') : '', h('span', {}, 'Page ' + page + ' of ' + pages), page < pages ? nav(page + 1, 'Next') : ''));
  };
  await load();
  every(5000, () => load().catch(() => {}));
}

async function pageTask(view, live, id) {
  view.append(h('p', {}, h('a', { href: '#/tasks' }, '← All tasks')), h('h1', {}, 'Task'));
  const holder = h('div', {});
  view.append(holder);
  const load = async () => {
    let t;
    try { t = await get('/api/v1/tasks/' + id); } catch (e) {
      if (e.status === 404) { holder.replaceChildren(h('p', { class: 'notice', role: 'status' }, 'No peer holds this task any more.')); return; }
      throw e;
    }
    if (!live()) return;
    const rows = t.peer_list.map((p) => h('tr', { 'data-peer': p.hostname },
      td(h('strong', {}, p.hostname)), td(p.seed ? badge('seed') : 'peer'), td(h('code', {}, p.ip + ':' + p.port)), td(badge(p.state)),
      td(h('progress', { max: Math.max(1, p.piece_count), value: p.pieces, 'aria-label': 'Pieces held by ' + p.hostname }, p.pieces + ' of ' + p.piece_count)),
      td(p.pieces + ' / ' + (p.piece_count || '?'), 'num'), td(bytes(p.bytes), 'num')));
    const evict = isAdmin() ? h('button', { type: 'button', class: 'danger', id: 'evict', onclick: async () => {
      if (!await confirmDialog('Evict this task everywhere?', 'Every daemon and seed peer holding it deletes it from its cache. The next download fetches it again.', 'Evict everywhere')) return;
      try {
        const r = await api('DELETE', '/api/v1/tasks/' + id);
        announce('Eviction started: job ' + r.data.id);
        location.hash = '#/jobs/' + r.data.id;
      } catch (e) { holder.prepend(errorBox(e)); }
    } }, 'Evict everywhere…') : null;
    holder.replaceChildren(
      h('section', { class: 'card' }, h('dl', { class: 'kv' },
        h('dt', {}, 'Task ID'), h('dd', { class: 'mono' }, t.task_id), h('dt', {}, 'URL'), h('dd', { class: 'mono' }, t.url || '—'),
        h('dt', {}, 'Application'), h('dd', {}, t.application || '—'), h('dt', {}, 'Tag'), h('dd', {}, t.tag || '—'),
        h('dt', {}, 'Size'), h('dd', {}, bytes(t.content_length) + (t.piece_count ? ' in ' + t.piece_count + ' pieces of ' + bytes(t.piece_size) : '')),
        h('dt', {}, 'Peers'), h('dd', {}, t.done_peers + ' done of ' + t.peers + (t.seed_peers ? ', ' + t.seed_peers + ' on seed hosts' : ''))),
      evict ? h('div', { class: 'actions' }, evict) : null),
      (t.unreachable || []).length ? h('p', { class: 'error', role: 'alert' }, 'Some schedulers did not answer.') : '',
      table('Peers holding the task', ['Host', 'Role', 'Peer address', 'State', 'Progress', ['Pieces', 'num'], ['Bytes', 'num']], rows));
  };
  await load();
  every(3000, () => load().catch(() => {}));
}

function confirmDialog(title, text, action) {
  return new Promise((resolve) => {
    const prev = document.activeElement;
    const dlg = h('dialog', { 'aria-labelledby': 'dlg-h', 'aria-describedby': 'dlg-t' },
      h('h2', { id: 'dlg-h' }, title), h('p', { id: 'dlg-t' }, text),
      h('form', { method: 'dialog', class: 'actions' },
        h('button', { value: 'cancel', class: 'secondary', autofocus: true }, 'Cancel'),
        h('button', { value: 'ok', class: 'danger', id: 'dlg-ok' }, action)));
    dlg.addEventListener('close', () => { resolve(dlg.returnValue === 'ok'); dlg.remove(); if (prev) prev.focus(); });
    document.body.append(dlg);
    dlg.showModal();
  });
}

// ---- jobs ----

async function pageJobs(view, live) {
  view.append(h('h1', {}, 'Jobs'));
  if (isAdmin()) view.append(preheatForm());
  const holder = h('div', {});
  view.append(h('h2', {}, 'Recent jobs'), holder);
  const load = async () => {
    const r = await api('GET', '/api/v1/jobs?sort=-id&per_page=30');
    if (!live()) return;
    const rows = r.data.map((j) => {
      let target = '';
      try { const a = typeof j.args === 'string' ? JSON.parse(j.args) : j.args; target = a.url || a.task_id || ''; } catch { /* shown empty */ }
      return h('tr', { 'data-job': j.id },
        td(h('a', { href: '#/jobs/' + j.id }, '#' + j.id)), td(j.type), td(badge(j.state)),
        td(h('span', { class: 'mono' }, target)), td(when(j.created_at), 'hide-sm'), td(j.error || '', 'hide-sm'));
    });
    holder.replaceChildren(table(r.total + ' jobs, newest first', ['Job', 'Type', 'State', 'Target', ['Created', 'hide-sm'], ['Error', 'hide-sm']], rows));
  };
  await load();
  every(2000, () => load().catch(() => {}));
}

function preheatForm() {
  const type = h('select', {}, h('option', { value: 'image' }, 'Container image'), h('option', { value: 'file' }, 'File'));
  const url = h('input', { required: true, placeholder: 'registry.example.com/app:1.0 or https://…', 'data-wide': '1' });
  const platform = h('input', { placeholder: 'linux/amd64' });
  const scope = h('select', {}, h('option', { value: 'single_seed_peer' }, 'One seed peer'), h('option', { value: 'all_seed_peers' }, 'All seed peers'), h('option', { value: 'all_peers' }, 'All peers'));
  const clusters = h('input', { placeholder: '1, 2', inputmode: 'numeric' });
  const user = h('input', { autocomplete: 'off' });
  const pass = h('input', { type: 'password', autocomplete: 'new-password' });
  const headers = h('textarea', { placeholder: 'Authorization: Bearer …', 'data-wide': '1' });
  const tag = h('input', {});
  const app = h('input', {});
  const filtered = h('input', { placeholder: 'Expires, Signature' });
  const out = h('div', { 'aria-live': 'polite' });
  const fileOnly = [field('pf-tag', 'Tag', tag, 'file only'), field('pf-app', 'Application', app, 'file only'), field('pf-filter', 'Filtered query', filtered, 'file only; comma-separated')];
  const imageOnly = [field('pf-platform', 'Platform', platform, 'image only')];
  const sync = () => {
    const file = type.value === 'file';
    for (const f of fileOnly) f.hidden = !file;
    for (const f of imageOnly) f.hidden = file;
  };
  type.addEventListener('change', sync);
  const form = h('form', { class: 'grid', onsubmit: async (ev) => {
    ev.preventDefault();
    out.replaceChildren();
    const args = { type: type.value, url: url.value.trim(), scope: scope.value };
    const ids = clusters.value.split(',').map((x) => x.trim()).filter(Boolean).map(Number);
    if (ids.some((x) => !Number.isInteger(x) || x < 1)) { out.append(errorBox(new Error('Cluster IDs are positive integers, separated by commas.'))); return; }
    if (ids.length) args.cluster_ids = ids;
    if (user.value) { args.username = user.value; args.password = pass.value; }
    const hs = {};
    for (const line of headers.value.split('\n')) {
      const i = line.indexOf(':');
      if (i > 0) hs[line.slice(0, i).trim()] = line.slice(i + 1).trim();
    }
    if (Object.keys(hs).length) args.headers = hs;
    if (type.value === 'image' && platform.value) args.platform = platform.value.trim();
    if (type.value === 'file') {
      if (tag.value) args.tag = tag.value;
      if (app.value) args.application = app.value;
      const fq = filtered.value.split(',').map((x) => x.trim()).filter(Boolean);
      if (fq.length) args.filtered_query = fq;
    }
    try {
      const r = await api('POST', '/api/v1/jobs', { type: 'preheat', args });
      announce('Preheat job ' + r.data.id + ' created.');
      location.hash = '#/jobs/' + r.data.id;
    } catch (e) { out.append(errorBox(e)); }
  } },
  field('pf-type', 'What', type), field('pf-scope', 'Scope', scope), field('pf-url', 'Image reference or URL', url),
  imageOnly, fileOnly, field('pf-clusters', 'Clusters', clusters, 'IDs, empty for all'),
  field('pf-user', 'Registry user', user, 'optional'), field('pf-pass', 'Registry password', pass, 'optional'),
  field('pf-headers', 'Headers', headers, 'one "Name: value" a line; kept secret'),
  h('div', {}, h('button', { type: 'submit', id: 'pf-submit' }, 'Start preheat')));
  sync();
  return h('section', { class: 'card', 'aria-labelledby': 'pf-h' }, h('h2', { id: 'pf-h' }, 'New preheat'), form, out);
}

async function pageJob(view, live, id) {
  view.append(h('p', {}, h('a', { href: '#/jobs' }, '← All jobs')), h('h1', {}, 'Job #' + id));
  const holder = h('div', {});
  view.append(holder);
  let timer = null;
  const load = async () => {
    const j = await get('/api/v1/jobs/' + id);
    if (!live()) return;
    let args = j.args;
    try { if (typeof args === 'string') args = JSON.parse(args); } catch { /* keep */ }
    const tasks = (j.result && j.result.tasks) || [];
    const layers = tasks.map((t, i) => {
      const done = t.peers.filter((p) => p.state === 'SUCCESS').length;
      const rows = t.peers.map((p) => h('tr', { 'data-peer': p.hostname },
        td(h('strong', {}, p.hostname || '—')), td(p.seed ? badge('seed') : 'peer'), td(h('code', {}, p.addr)), td(badge(p.state)),
        td(j.type === 'delete_task' ? (p.state === 'SUCCESS' ? (p.deleted ? 'evicted' : 'did not hold it') : '') :
          (p.content_length ? bytes(p.content_length) + (p.cached ? ' (cached)' : '') : (p.bytes ? bytes(p.bytes) : '')), 'num'),
        td(p.error || '')));
      return h('section', { class: 'card', 'aria-label': 'Task ' + (i + 1) },
        h('h2', {}, (!t.digest ? 'Task' : i === 0 ? 'Image config' : 'Layer ' + i) + ' ', badge(t.state)),
        h('dl', { class: 'kv' }, h('dt', {}, 'Task ID'), h('dd', { class: 'mono' }, t.task_id),
          t.url ? [h('dt', {}, 'URL'), h('dd', { class: 'mono' }, t.url)] : '', t.size ? [h('dt', {}, 'Size'), h('dd', {}, bytes(t.size))] : ''),
        h('p', {}, h('label', { for: 'prog-' + i }, 'Peers done: ' + done + ' of ' + t.peers.length),
          h('progress', { id: 'prog-' + i, max: Math.max(1, t.peers.length), value: done }, done + ' of ' + t.peers.length)),
        table('Peers', ['Host', 'Role', 'Address', 'State', ['Result', 'num'], 'Error'], rows, 'No peer.'));
    });
    holder.replaceChildren(
      h('section', { class: 'card' }, h('dl', { class: 'kv' },
        h('dt', {}, 'Type'), h('dd', {}, j.type), h('dt', {}, 'State'), h('dd', { id: 'job-state' }, badge(j.state)),
        h('dt', {}, 'Target'), h('dd', { class: 'mono' }, (args && (args.url || args.task_id)) || '—'),
        args && args.scope ? [h('dt', {}, 'Scope'), h('dd', {}, args.scope)] : '',
        j.result && j.result.manifest_digest ? [h('dt', {}, 'Manifest'), h('dd', { class: 'mono' }, j.result.manifest_digest)] : '',
        h('dt', {}, 'Created'), h('dd', {}, when(j.created_at)), h('dt', {}, 'Updated'), h('dd', {}, when(j.updated_at)))),
      j.error ? h('div', { class: 'error', role: 'alert' }, h('strong', {}, 'Why it failed: '), j.error) : '',
      ...(layers.length ? layers : [h('p', { class: 'muted' }, { PENDING: 'Waiting for a worker…', RUNNING: 'Resolving…' }[j.state] || 'Nothing was fetched.')]));
    if ((j.state === 'SUCCESS' || j.state === 'FAILURE') && timer) { clearInterval(timer); announce('Job ' + id + ': ' + j.state); }
  };
  await load();
  every(1000, () => load().catch(() => {}));
  timer = timers.at(-1);
}

// ---- users and tokens ----

async function pageUsers(view, live) {
  view.append(h('h1', {}, 'Users and tokens'));
  const u = me();
  const toks = h('div', {});
  const loadTokens = async () => {
    const r = await api('GET', '/api/v1/tokens?per_page=100');
    if (!live()) return;
    toks.replaceChildren(table('Your personal access tokens', ['Name', 'Expires', 'Last used', 'Actions'], r.data.map((t) => h('tr', {},
      td(t.name), td(when(t.expires_at)), td(t.last_used_at ? ago(t.last_used_at) : 'never'),
      td(h('button', { type: 'button', class: 'secondary', 'aria-label': 'Revoke token ' + t.name, onclick: async () => {
        if (!await confirmDialog('Revoke token ' + t.name + '?', 'Programs using it lose access at once.', 'Revoke')) return;
        try { await api('DELETE', '/api/v1/tokens/' + t.id); announce('Token revoked.'); loadTokens(); } catch (e) { toks.prepend(errorBox(e)); }
      } }, 'Revoke')))), 'You have no token.'));
  };
  const tname = h('input', { required: true, pattern: '[A-Za-z0-9._-]{1,64}' });
  const ttl = h('select', {}, ['720h', '2160h', '8760h'].map((v, i) => h('option', { value: v, selected: i === 2 }, ['30 days', '90 days', '1 year'][i])));
  const shown = h('div', { 'aria-live': 'polite' });
  const tform = h('form', { class: 'grid', onsubmit: async (ev) => {
    ev.preventDefault();
    shown.replaceChildren();
    try {
      const r = await api('POST', '/api/v1/tokens', { name: tname.value, ttl: ttl.value });
      shown.append(h('div', { class: 'notice' }, 'Token ' + r.data.name + ' created. Copy it now: it is shown only this once.',
        h('output', { class: 'secret mono', id: 'new-token', 'aria-label': 'New token' }, r.data.token)));
      tform.reset();
      loadTokens();
    } catch (e) { shown.append(errorBox(e)); }
  } }, field('tok-name', 'Token name', tname), field('tok-ttl', 'Valid for', ttl), h('div', {}, h('button', { type: 'submit' }, 'Create token')));
  view.append(h('section', { class: 'card', 'aria-labelledby': 'tok-h' }, h('h2', { id: 'tok-h' }, 'Personal access tokens'),
    h('p', { class: 'muted' }, 'Use a token as "Authorization: Bearer …" against /api/v1.'), tform, shown), toks);
  await loadTokens();

  const pw = h('input', { type: 'password', autocomplete: 'new-password', minlength: 8, required: true });
  const pwOut = h('div', { 'aria-live': 'polite' });
  view.append(h('section', { class: 'card', 'aria-labelledby': 'pw-h' }, h('h2', { id: 'pw-h' }, 'Your password'),
    h('form', { class: 'grid', onsubmit: async (ev) => {
      ev.preventDefault();
      pwOut.replaceChildren();
      try { await api('PUT', '/api/v1/users/' + u.id + '/password', { password: pw.value }); signOut('Password changed; sign in again.'); } catch (e) { pwOut.append(errorBox(e)); }
    } }, field('pw-new', 'New password', pw, '8 to 72 characters'), h('div', {}, h('button', { type: 'submit' }, 'Change password'))), pwOut));

  if (!isAdmin()) return;
  const users = h('div', {});
  const loadUsers = async () => {
    const r = await api('GET', '/api/v1/users?per_page=100');
    if (!live()) return;
    users.replaceChildren(table('Users', ['Name', 'Email', 'Role', 'Created', 'Actions'], r.data.map((x) => h('tr', {},
      td(h('strong', {}, x.name)), td(x.email || '—'), td(badge(x.role)), td(when(x.created_at)),
      td(x.id === u.id ? h('span', { class: 'muted' }, 'you') : h('button', { type: 'button', class: 'secondary', 'aria-label': 'Delete user ' + x.name, onclick: async () => {
        if (!await confirmDialog('Delete user ' + x.name + '?', 'Their sessions and tokens stop working.', 'Delete')) return;
        try { await api('DELETE', '/api/v1/users/' + x.id); announce('User deleted.'); loadUsers(); } catch (e) { users.prepend(errorBox(e)); }
      } }, 'Delete'))))));
  };
  const nn = h('input', { required: true, pattern: '[A-Za-z0-9._-]{1,64}', autocomplete: 'off' });
  const ne = h('input', { type: 'email', autocomplete: 'off' });
  const np = h('input', { type: 'password', minlength: 8, required: true, autocomplete: 'new-password' });
  const nr = h('select', {}, h('option', { value: 'guest' }, 'guest (read only)'), h('option', { value: 'admin' }, 'admin'));
  const uOut = h('div', { 'aria-live': 'polite' });
  view.append(h('h2', {}, 'Users and roles'), users, h('section', { class: 'card', 'aria-labelledby': 'nu-h' }, h('h2', { id: 'nu-h' }, 'New user'),
    h('form', { class: 'grid', onsubmit: async (ev) => {
      ev.preventDefault();
      uOut.replaceChildren();
      try {
        await api('POST', '/api/v1/users', { name: nn.value, email: ne.value, password: np.value, role: nr.value });
        uOut.append(h('p', { class: 'notice' }, 'User ' + nn.value + ' created.'));
        ev.target.reset();
        loadUsers();
      } catch (e) { uOut.append(errorBox(e)); }
    } }, field('nu-name', 'Name', nn), field('nu-email', 'Email', ne), field('nu-pass', 'Password', np), field('nu-role', 'Role', nr),
    h('div', {}, h('button', { type: 'submit' }, 'Create user'))), uOut));
  await loadUsers();
}

// ---- configuration ----

async function pageConfig(view, live) {
  view.append(h('h1', {}, 'Configuration'), h('p', { class: 'muted' }, 'Effective settings, read-only; secrets show as [redacted].'));
  const [mc, sc, sp] = await Promise.all([get('/api/v1/config'), get('/api/v1/schedulers?per_page=100'), get('/api/v1/seed-peers?per_page=100')]);
  if (!live()) return;
  view.append(h('section', { class: 'card', 'aria-labelledby': 'cfg-m' }, h('h2', { id: 'cfg-m' }, 'Manager (this replica)'), h('pre', { class: 'config', tabindex: 0, 'aria-label': 'Manager configuration' }, mc.config)));
  for (const [title, list] of [['Schedulers', sc], ['Seed peers', sp]]) {
    view.append(h('h2', {}, title));
    if (!list.length) view.append(h('p', { class: 'muted' }, 'None registered.'));
    for (const c of list) {
      view.append(h('section', { class: 'card' }, h('h3', {}, (c.hostname || c.ip) + ' ', badge(c.state)),
        h('p', { class: 'muted' }, c.ip + ':' + c.port + ' · cluster ' + c.cluster_id), configBlock('Show configuration', c.config)));
    }
  }
}

route().then(() => { if (location.hash) focusMain(); });
