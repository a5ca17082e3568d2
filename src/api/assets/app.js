// The emqx-rs dashboard: a page of the node's own HTTP API. It logs in
// with POST /api/v5/login like any other client and shows what the API
// answers for the whole cluster. No framework and no build step: the
// node serves this file as it is.
'use strict';

const API = '/api/v5';
const AUTHN_USERS = API + '/authentication/password_based:built_in_database/users';
const ACL = API + '/authorization/sources/built_in_database/rules';
const POLL_MS = 2000;
const CHART_POINTS = 60;
const PALETTE = ['#2f7ed8', '#e4572e', '#17a589', '#8e44ad', '#f39c12', '#34495e', '#c0392b', '#16a085'];

const state = {
  token: sessionStorage.getItem('token'),
  user: sessionStorage.getItem('user'),
  timers: [],
  // Bumped on every page change: a poll of an old page stops drawing.
  generation: 0,
  // Shown by the next page instead of clearing the message line.
  pendingFlash: null,
};

// ------------------------------------------------------------------ DOM

/** An element: `attrs` sets properties (`text`, `class`, `onclick`,
 * `dataset`, `style` as an object: the page's CSP allows no inline style
 * attribute) or attributes; `children` are nodes or strings (as text,
 * never as HTML). */
function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'text') e.textContent = v;
    else if (k === 'class') e.className = v;
    else if (k === 'dataset') Object.assign(e.dataset, v);
    else if (k === 'style') Object.assign(e.style, v);
    else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null) continue;
    e.append(c instanceof Node ? c : String(c));
  }
  return e;
}

function svg(tag, attrs) {
  const e = document.createElementNS('http://www.w3.org/2000/svg', tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  return e;
}

/** A table: `cols` are `[heading, row => cell]`; a cell is text or a node. */
function table(id, cols, rows, empty) {
  const head = el('tr', {}, cols.map(([h]) => el('th', { text: h })));
  const body = rows.length
    ? rows.map(r => el('tr', { dataset: r.__key ? { key: r.__key } : {} },
        cols.map(([, f]) => { const v = f(r); return el('td', {}, v instanceof Node ? v : fmt(v)); })))
    : [el('tr', {}, el('td', { colspan: cols.length, class: 'muted', text: empty || 'Nothing here.' }))];
  return el('table', { id, class: 'grid' }, el('thead', {}, head), el('tbody', {}, body));
}

function fmt(v) {
  if (v === undefined || v === null) return '';
  if (typeof v === 'boolean') return v ? 'yes' : 'no';
  if (typeof v === 'object') return JSON.stringify(v);
  return String(v);
}

function duration(ms) {
  let s = Math.floor(ms / 1000);
  const d = Math.floor(s / 86400); s %= 86400;
  const h = Math.floor(s / 3600); s %= 3600;
  const m = Math.floor(s / 60); s %= 60;
  return (d ? d + 'd ' : '') + (d || h ? h + 'h ' : '') + (d || h || m ? m + 'm ' : '') + s + 's';
}

function bytes(n) {
  if (typeof n !== 'number') return '';
  const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : n) + ' ' + u[i];
}

function flash(text, kind) {
  const f = document.getElementById('flash');
  f.textContent = text;
  f.className = 'flash ' + (kind || 'ok');
  f.hidden = !text;
}

// ------------------------------------------------------------------ API

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

async function api(method, path, body) {
  const headers = { Authorization: 'Bearer ' + state.token };
  const init = { method, headers };
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  const r = await fetch(path, init);
  const text = await r.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (_) { data = text; }
  if (r.status === 401) {
    logout('Your session has ended: log in again.');
    throw new ApiError(401, data && data.code, 'not logged in');
  }
  if (!r.ok) {
    const msg = (data && data.message) || text || r.statusText;
    throw new ApiError(r.status, data && data.code, msg);
  }
  return data;
}

/** Runs `f`, and shows its failure on the page instead of throwing. */
async function guarded(f) {
  try {
    return await f();
  } catch (e) {
    if (!(e instanceof ApiError && e.status === 401)) flash(e.message || String(e), 'error');
    return undefined;
  }
}

function every(ms, f) {
  state.timers.push(setInterval(f, ms));
}

function stopTimers() {
  state.timers.forEach(clearInterval);
  state.timers = [];
}

// ------------------------------------------------------------------ login

function showLogin(message) {
  document.getElementById('app').hidden = true;
  document.getElementById('login').hidden = false;
  document.getElementById('login-error').textContent = message || '';
  document.getElementById('username').focus();
}

function logout(message) {
  stopTimers();
  state.token = null;
  sessionStorage.removeItem('token');
  sessionStorage.removeItem('user');
  sessionStorage.removeItem('default_pwd');
  showLogin(message);
}

async function login(ev) {
  ev.preventDefault();
  const username = document.getElementById('username').value;
  const password = document.getElementById('password').value;
  const err = document.getElementById('login-error');
  err.textContent = '';
  let r;
  try {
    r = await fetch(API + '/login', {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ username, password }),
    });
  } catch (e) {
    err.textContent = 'The node does not answer: ' + e.message;
    return;
  }
  const data = await r.json().catch(() => ({}));
  if (!r.ok) {
    err.textContent = r.status === 401 ? 'Wrong user name or password.' : (data.message || r.statusText);
    return;
  }
  state.token = data.token;
  state.user = username;
  sessionStorage.setItem('token', data.token);
  sessionStorage.setItem('user', username);
  sessionStorage.setItem('default_pwd', password === 'public' ? '1' : '');
  document.getElementById('password').value = '';
  start();
}

function start() {
  document.getElementById('login').hidden = true;
  document.getElementById('app').hidden = false;
  document.getElementById('who').textContent = state.user || '';
  const banner = document.getElementById('banner');
  banner.hidden = sessionStorage.getItem('default_pwd') !== '1';
  banner.replaceChildren('You are using the default password. ', el('a', { href: '#/account', text: 'Change it' }), '.');
  if (!location.hash || location.hash === '#/') location.hash = '#/overview';
  else route();
}

// ------------------------------------------------------------------ pages

const PAGES = {
  overview, clients, client, subscriptions, topics, retained,
  listeners, users, acl, banned, alarms, account,
};

function route() {
  if (!state.token) return;
  stopTimers();
  state.generation++;
  flash(state.pendingFlash || '');
  state.pendingFlash = null;
  const [name, ...rest] = location.hash.replace(/^#\//, '').split('/');
  const page = PAGES[name] ? name : 'overview';
  for (const a of document.querySelectorAll('#nav a')) {
    const target = a.getAttribute('href').slice(2);
    a.classList.toggle('active', target === page || (page === 'client' && target === 'clients'));
  }
  const root = document.getElementById('page');
  root.replaceChildren();
  root.dataset.page = page;
  guarded(() => PAGES[page](root, rest.map(decodeURIComponent).join('/')));
}

/** A paged list: `load(page)` gives `{data, meta}`; `render(rows)` the table. */
function pager(root, load, render) {
  let page = 1;
  const holder = el('div');
  const info = el('span', { class: 'muted pageinfo' });
  const prev = el('button', { type: 'button', text: '‹ Previous', class: 'prev', onclick: () => { page--; show(); } });
  const next = el('button', { type: 'button', text: 'Next ›', class: 'next', onclick: () => { page++; show(); } });
  root.append(holder, el('div', { class: 'pager' }, prev, info, next));
  const gen = state.generation;
  async function show() {
    const r = await guarded(() => load(page));
    if (!r || gen !== state.generation) return;
    holder.replaceChildren(render(r.data));
    info.textContent = `page ${r.meta.page} · ${r.meta.count} in all`;
    prev.disabled = page <= 1;
    next.disabled = !r.meta.hasnext;
  }
  return { show, reset() { page = 1; return show(); } };
}

function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== '' && v !== undefined && v !== null) q.set(k, v);
  return q.toString();
}

function heading(root, text, ...extra) {
  root.append(el('div', { class: 'heading' }, el('h2', { text }), ...extra));
}

// ---------------- overview

async function overview(root) {
  heading(root, 'Cluster overview');
  const cards = el('div', { class: 'cards', id: 'cards' });
  const health = el('div', { id: 'health' });
  const nodesBox = el('div', { class: 'scroll' });
  const chartIn = chart('chart-in', 'Messages in per second (received from publishers)');
  const chartOut = chart('chart-out', 'Messages out per second (sent to subscribers)');
  const inviteName = el('input', { id: 'invite-node', placeholder: 'name@host of a node to invite', required: true, size: 32 });
  const inviteForm = el('form', { class: 'filters', id: 'invite', onsubmit: ev => { ev.preventDefault(); guarded(async () => {
    const who = inviteName.value.trim();
    flash(`Inviting ${who}…`);
    await api('PUT', `${API}/cluster/${encodeURIComponent(who)}/invite`, { timeout: '30s' });
    flash(`${who} joined the cluster.`);
    inviteName.value = '';
    await tick();
  }); } }, inviteName, el('button', { type: 'submit', text: 'Invite' }));
  root.append(cards, health, el('h3', { text: 'Nodes' }), nodesBox, inviteForm,
    el('div', { class: 'charts' }, chartIn.box, chartOut.box));
  const series = {};
  let prev = null;
  const gen = state.generation;

  async function tick() {
    const [cluster, nodes, stats, metrics] = await Promise.all([
      api('GET', API + '/cluster'),
      api('GET', API + '/nodes'),
      api('GET', API + '/stats?aggregate=true'),
      api('GET', API + '/metrics'),
    ]);
    if (gen !== state.generation) return;
    document.getElementById('cluster-name').textContent = cluster.name;
    const running = nodes.filter(n => n.node_status === 'running').length;
    cards.replaceChildren(...[
      ['Nodes running', running],
      ['Nodes stopped', nodes.length - running],
      ['Connections', stats['connections.count']],
      ['Sessions', stats['sessions.count']],
      ['Subscriptions', stats['subscriptions.count']],
      ['Topics', stats['topics.count']],
      ['Retained', stats['retained.count']],
    ].map(([k, v]) => el('div', { class: 'card' }, el('div', { class: 'value', text: fmt(v) }), el('div', { class: 'label', text: k }))));

    const parts = cluster.partitions || [];
    health.className = parts.length || nodes.length - running ? 'warning' : 'ok-box';
    health.replaceChildren(parts.length
      ? `${cluster.self} is partitioned from ${parts.join(', ')}; autoheal: ${cluster.autoheal || 'pending'}.`
      : `No partition seen from ${cluster.self}` + (cluster.autoheal ? `; autoheal: ${cluster.autoheal}.` : '.'));

    nodes.sort((a, b) => a.node.localeCompare(b.node));
    nodesBox.replaceChildren(table('nodes', [
      ['Node', n => n.node],
      ['Role', n => n.role],
      ['Status', n => el('span', { class: 'badge ' + n.node_status, text: n.node_status })],
      ['Uptime', n => n.uptime === undefined ? '' : duration(n.uptime)],
      ['Connections', n => n.connections],
      ['Memory', n => bytes(n.memory_used)],
      ['Load (1 min)', n => n.load1],
      ['Version', n => n.version],
      ['', n => n.node_status === 'stopped' ? el('button', { type: 'button', class: 'danger', text: 'Remove', onclick: () => guarded(async () => {
        if (!confirm(`Remove ${n.node} from the cluster? Its routes go with it.`)) return;
        await api('DELETE', `${API}/cluster/${encodeURIComponent(n.node)}/force_leave`);
        flash(`${n.node} removed from the cluster.`);
        await tick();
      }) }) : ''],
    ], nodes.map(n => ({ ...n, __key: n.node }))));

    const now = performance.now();
    const counts = {};
    for (const m of metrics) counts[m.node] = { in: m['messages.received'], out: m['messages.sent'] };
    if (prev) {
      const dt = (now - prev.t) / 1000;
      for (const [node, c] of Object.entries(counts)) {
        const p = prev.counts[node];
        if (!p) continue;
        const s = series[node] || (series[node] = { in: [], out: [] });
        s.in.push(Math.max(0, (c.in - p.in) / dt));
        s.out.push(Math.max(0, (c.out - p.out) / dt));
        if (s.in.length > CHART_POINTS) { s.in.shift(); s.out.shift(); }
      }
      chartIn.draw(series, 'in');
      chartOut.draw(series, 'out');
    }
    prev = { t: now, counts };
  }
  await tick();
  every(POLL_MS, () => guarded(tick));
}

/** A line chart of a value per node over the last CHART_POINTS polls. */
function chart(id, title) {
  const W = 600, H = 220, L = 48, B = 20, T = 10, R = 10;
  const plot = svg('svg', { id, viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': title, class: 'chart' });
  const legend = el('div', { class: 'legend' });
  const box = el('figure', { class: 'chart-box' }, el('figcaption', { text: title }), plot, legend);
  plot.dataset.latest = '{}';
  plot.dataset.samples = '0';
  function draw(series, key) {
    const nodes = Object.keys(series).sort();
    let max = 1;
    for (const n of nodes) for (const v of series[n][key]) max = Math.max(max, v);
    max = niceCeil(max);
    plot.replaceChildren();
    for (let i = 0; i <= 4; i++) {
      const y = T + (H - T - B) * (1 - i / 4);
      plot.append(svg('line', { x1: L, x2: W - R, y1: y, y2: y, class: 'gridline' }));
      const label = svg('text', { x: L - 6, y: y + 4, 'text-anchor': 'end', class: 'axis' });
      label.textContent = shortNumber(max * i / 4);
      plot.append(label);
    }
    const latest = {};
    let samples = 0;
    nodes.forEach((n, i) => {
      const vals = series[n][key];
      samples = Math.max(samples, vals.length);
      const step = (W - L - R) / (CHART_POINTS - 1);
      const x0 = W - R - step * (vals.length - 1);
      const pts = vals.map((v, j) => `${(x0 + j * step).toFixed(1)},${(T + (H - T - B) * (1 - v / max)).toFixed(1)}`);
      plot.append(svg('polyline', { points: pts.join(' '), stroke: PALETTE[i % PALETTE.length], class: 'series', 'data-node': n }));
      latest[n] = vals.length ? Math.round(vals[vals.length - 1]) : 0;
    });
    plot.dataset.latest = JSON.stringify(latest);
    plot.dataset.samples = String(samples);
    legend.replaceChildren(...nodes.map((n, i) => el('span', { class: 'key' },
      el('i', { style: { background: PALETTE[i % PALETTE.length] } }), `${n}: ${latest[n]}/s`)));
  }
  return { box, draw };
}

function niceCeil(v) {
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 5, 10]) if (v <= m * p) return m * p;
  return 10 * p;
}

function shortNumber(v) {
  if (v >= 1e6) return (v / 1e6).toFixed(v % 1e6 ? 1 : 0) + 'M';
  if (v >= 1e3) return (v / 1e3).toFixed(v % 1e3 ? 1 : 0) + 'k';
  return String(Math.round(v * 100) / 100);
}

// ---------------- clients

async function clients(root) {
  heading(root, 'Clients');
  const search = el('input', { id: 'client-search', type: 'search', placeholder: 'Client id contains…' });
  const user = el('input', { id: 'user-search', type: 'search', placeholder: 'User name contains…' });
  const node = el('select', { id: 'node-filter' }, el('option', { value: '', text: 'All nodes' }));
  const state_ = el('select', { id: 'state-filter' },
    el('option', { value: '', text: 'Any state' }),
    el('option', { value: 'connected', text: 'Connected' }),
    el('option', { value: 'disconnected', text: 'Disconnected' }));
  const form = el('form', { class: 'filters', onsubmit: ev => { ev.preventDefault(); list.reset(); } },
    search, user, node, state_, el('button', { type: 'submit', text: 'Search' }));
  root.append(form);
  const cluster = await api('GET', API + '/cluster');
  for (const n of cluster.nodes) node.append(el('option', { value: n, text: n }));
  const list = pager(root,
    page => api('GET', API + '/clients?' + query({
      page, limit: 20, like_clientid: search.value, like_username: user.value,
      node: node.value, conn_state: state_.value,
    })),
    rows => table('clients', [
      ['Client id', c => el('a', { href: '#/client/' + encodeURIComponent(c.clientid), text: c.clientid })],
      ['User name', c => c.username],
      ['Node', c => c.node],
      ['Address', c => c.ip_address ? `${c.ip_address}:${c.port}` : ''],
      ['Protocol', c => `${c.proto_name} ${c.proto_ver}`],
      ['State', c => el('span', { class: 'badge ' + (c.connected ? 'running' : 'stopped'), text: c.conn_state })],
      ['Subscriptions', c => c.subscriptions_cnt],
      ['Connected at', c => c.connected_at],
      ['', c => el('button', { type: 'button', class: 'danger kick', text: 'Kick', onclick: () => kick(c.clientid, () => { state.pendingFlash = null; list.show(); }) })],
    ], rows.map(c => ({ ...c, __key: c.clientid })), 'No client matches.'));
  await list.show();
}

async function kick(clientid, then) {
  if (!confirm(`Kick ${clientid}? Its connection is closed and its session discarded.`)) return;
  const ok = await guarded(async () => { await api('DELETE', API + '/clients/' + encodeURIComponent(clientid)); return true; });
  if (ok) {
    state.pendingFlash = `Kicked ${clientid}.`;
    flash(state.pendingFlash);
    then();
  }
}

async function client(root, clientid) {
  const c = await api('GET', API + '/clients/' + encodeURIComponent(clientid));
  heading(root, 'Client ' + clientid,
    el('button', { type: 'button', class: 'danger', id: 'kick', text: 'Kick', onclick: () => kick(clientid, () => { location.hash = '#/clients'; }) }));
  const fields = Object.entries(c).filter(([k]) => k !== 'subscriptions');
  root.append(el('table', { class: 'grid kv', id: 'client-info' }, el('tbody', {},
    fields.map(([k, v]) => el('tr', {}, el('th', { text: k }), el('td', { text: fmt(v) }))))));
  root.append(el('h3', { text: 'Subscriptions' }));
  const subs = await api('GET', API + '/clients/' + encodeURIComponent(clientid) + '/subscriptions');
  root.append(table('client-subscriptions', [
    ['Topic', s => s.topic], ['QoS', s => s.qos], ['No local', s => s.nl], ['Retain as published', s => s.rap], ['Retain handling', s => s.rh],
  ], subs, 'No subscription.'));
}

// ---------------- subscriptions, topics

async function subscriptions(root) {
  heading(root, 'Subscriptions');
  const cid = el('input', { id: 'sub-client', type: 'search', placeholder: 'Client id' });
  const topic = el('input', { id: 'sub-topic', type: 'search', placeholder: 'Topic filter (exact)' });
  const match = el('input', { id: 'sub-match', type: 'search', placeholder: 'Matching topic' });
  root.append(el('form', { class: 'filters', onsubmit: ev => { ev.preventDefault(); list.reset(); } },
    cid, topic, match, el('button', { type: 'submit', text: 'Search' })));
  const list = pager(root,
    page => api('GET', API + '/subscriptions?' + query({ page, limit: 50, clientid: cid.value, topic: topic.value, match_topic: match.value })),
    rows => table('subscriptions', [
      ['Client id', s => el('a', { href: '#/client/' + encodeURIComponent(s.clientid), text: s.clientid })],
      ['Topic', s => s.topic], ['QoS', s => s.qos], ['Node', s => s.node],
    ], rows, 'No subscription.'));
  await list.show();
}

async function topics(root) {
  heading(root, 'Topics (routes)');
  const topic = el('input', { id: 'topic-search', type: 'search', placeholder: 'Topic filter (exact)' });
  root.append(el('form', { class: 'filters', onsubmit: ev => { ev.preventDefault(); list.reset(); } },
    topic, el('button', { type: 'submit', text: 'Search' })));
  const list = pager(root,
    page => api('GET', API + '/topics?' + query({ page, limit: 50, topic: topic.value })),
    rows => table('topics', [['Topic', t => t.topic], ['Node', t => t.node]], rows, 'No route.'));
  await list.show();
}

// ---------------- retained

async function retained(root) {
  heading(root, 'Retained messages');
  const view = el('div', { id: 'retained-view' });
  const list = pager(root,
    page => api('GET', API + '/mqtt/retainer/messages?' + query({ page, limit: 50 })),
    rows => table('retained', [
      ['Topic', m => m.topic], ['QoS', m => m.qos], ['From', m => m.from_clientid], ['Published at', m => m.publish_at],
      ['', m => el('span', {},
        el('button', { type: 'button', text: 'Show', class: 'show', onclick: () => guarded(() => showRetained(view, m.topic)) }),
        el('button', { type: 'button', text: 'Delete', class: 'danger', onclick: () => guarded(async () => {
          if (!confirm(`Delete the retained message of ${m.topic}?`)) return;
          await api('DELETE', API + '/mqtt/retainer/message/' + encodeURIComponent(m.topic));
          flash(`Deleted the retained message of ${m.topic}.`);
          view.replaceChildren();
          await list.show();
        }) }))],
    ], rows, 'No retained message.'));
  root.append(view);
  await list.show();
}

async function showRetained(view, topic) {
  const m = await api('GET', API + '/mqtt/retainer/message/' + encodeURIComponent(topic));
  const raw = atob(m.payload || '');
  let text;
  try { text = new TextDecoder('utf-8', { fatal: true }).decode(Uint8Array.from(raw, ch => ch.charCodeAt(0))); } catch (_) { text = null; }
  view.replaceChildren(el('h3', { text: 'Payload of ' + topic }),
    el('pre', { class: 'payload', text: text === null ? `(binary, ${raw.length} bytes, base64) ${m.payload}` : text }));
}

// ---------------- listeners

async function listeners(root) {
  heading(root, 'Listeners');
  const box = el('div');
  root.append(box);
  async function show() {
    const ls = await api('GET', API + '/listeners');
    box.replaceChildren(table('listeners', [
      ['Id', l => l.id], ['Bind', l => l.bind],
      ['Running', l => el('span', { class: 'badge ' + (l.status.running ? 'running' : 'stopped'), text: l.status.running ? 'running' : 'stopped' })],
      ['Connections', l => `${l.status.current_connections} / ${l.status.max_connections}`],
      ['PROXY protocol', l => l.proxy_protocol],
      ['Per node', l => el('ul', { class: 'plain' }, l.node_status.map(n =>
        el('li', { text: `${n.node}: ${n.status.running ? 'running' : 'stopped'}, ${n.status.current_connections} connections` })))],
      ['', l => el('span', {}, ['stop', 'start', 'restart'].map(a => el('button', {
        type: 'button', text: a[0].toUpperCase() + a.slice(1), class: a === 'stop' ? 'danger' : '',
        onclick: () => guarded(async () => {
          if (a === 'stop' && !confirm(`Stop ${l.id} on every node? Open connections stay; new ones are refused.`)) return;
          await api('POST', `${API}/listeners/${encodeURIComponent(l.id)}/${a}`);
          flash(`${l.id}: ${a} done on every node.`);
          await show();
        }),
      })))],
    ], ls, 'No listener.'));
  }
  await show();
}

// ---------------- MQTT users, ACL, banned, alarms

/** `load` failing with 404 means the feature is not configured. */
async function configured(root, load, what) {
  try {
    return await load();
  } catch (e) {
    if (e instanceof ApiError && e.status === 404) {
      root.append(el('p', { class: 'muted notice', text: `${what} is not configured on this cluster (see etc/emqx.conf).` }));
      return null;
    }
    throw e;
  }
}

async function users(root) {
  heading(root, 'MQTT users (built-in database)');
  const first = await configured(root, () => api('GET', AUTHN_USERS + '?page=1&limit=1'), 'The built-in database authenticator');
  if (!first) return;
  const uid = el('input', { id: 'new-user', placeholder: 'User id', required: true });
  const pw = el('input', { id: 'new-user-password', type: 'password', placeholder: 'Password', required: true, autocomplete: 'new-password' });
  const su = el('input', { id: 'new-user-super', type: 'checkbox' });
  root.append(el('form', { class: 'filters', id: 'add-user', onsubmit: ev => { ev.preventDefault(); guarded(async () => {
    await api('POST', AUTHN_USERS, { user_id: uid.value, password: pw.value, is_superuser: su.checked });
    flash(`Added ${uid.value}.`);
    uid.value = ''; pw.value = ''; su.checked = false;
    await list.show();
  }); } }, uid, pw, el('label', { class: 'inline' }, su, ' superuser'), el('button', { type: 'submit', text: 'Add' })));
  const like = el('input', { id: 'user-like', type: 'search', placeholder: 'User id contains…' });
  root.append(el('form', { class: 'filters', onsubmit: ev => { ev.preventDefault(); list.reset(); } }, like, el('button', { type: 'submit', text: 'Search' })));
  const list = pager(root,
    page => api('GET', AUTHN_USERS + '?' + query({ page, limit: 50, like_user_id: like.value })),
    rows => table('mqtt-users', [
      ['User id', u => u.user_id], ['Superuser', u => u.is_superuser],
      ['', u => el('button', { type: 'button', class: 'danger', text: 'Delete', onclick: () => guarded(async () => {
        if (!confirm(`Delete user ${u.user_id}?`)) return;
        await api('DELETE', AUTHN_USERS + '/' + encodeURIComponent(u.user_id));
        flash(`Deleted ${u.user_id}.`);
        await list.show();
      }) })],
    ], rows, 'No user.'));
  await list.show();
}

function ruleText(r) {
  const qos = Array.isArray(r.qos) ? ' qos ' + r.qos.join(',') : '';
  return `${r.permission} ${r.action} ${r.topic}${qos}`;
}

async function acl(root) {
  heading(root, 'ACL (built-in database)');
  const all = await configured(root, () => api('GET', ACL + '/all'), 'The built-in database authorization source');
  if (!all) return;
  const kind = el('select', { id: 'acl-kind' }, el('option', { value: 'clients', text: 'Client id' }), el('option', { value: 'users', text: 'User name' }));
  const who = el('input', { id: 'acl-who', placeholder: 'Client id or user name', required: true });
  const topic = el('input', { id: 'acl-topic', placeholder: 'Topic filter', required: true });
  const perm = el('select', { id: 'acl-permission' }, ['allow', 'deny'].map(p => el('option', { value: p, text: p })));
  const action = el('select', { id: 'acl-action' }, ['publish', 'subscribe', 'all'].map(p => el('option', { value: p, text: p })));
  root.append(el('form', { class: 'filters', id: 'add-rule', onsubmit: ev => { ev.preventDefault(); guarded(async () => {
    const key = kind.value === 'clients' ? 'clientid' : 'username';
    const base = `${ACL}/${kind.value}`;
    const rule = { topic: topic.value, permission: perm.value, action: action.value };
    let existing = null;
    try { existing = await api('GET', `${base}/${encodeURIComponent(who.value)}`); } catch (e) { if (!(e instanceof ApiError && e.status === 404)) throw e; }
    if (existing) await api('PUT', `${base}/${encodeURIComponent(who.value)}`, { [key]: who.value, rules: [...existing.rules, rule] });
    else await api('POST', base, [{ [key]: who.value, rules: [rule] }]);
    flash(`Rule added for ${who.value}.`);
    topic.value = '';
    await show();
  }); } }, kind, who, topic, perm, action, el('button', { type: 'submit', text: 'Add rule' })));
  const box = el('div');
  root.append(box);
  async function show() {
    const [byClient, byUser, every] = await Promise.all([
      api('GET', ACL + '/clients?limit=1000'), api('GET', ACL + '/users?limit=1000'), api('GET', ACL + '/all')]);
    const rows = [
      ...byClient.data.map(r => ({ kind: 'clients', label: 'client id', who: r.clientid, rules: r.rules })),
      ...byUser.data.map(r => ({ kind: 'users', label: 'user name', who: r.username, rules: r.rules })),
    ];
    box.replaceChildren(
      table('acl-rules', [
        ['For', r => r.label], ['Who', r => r.who],
        ['Rules (in order)', r => el('ol', { class: 'plain' }, r.rules.map(x => el('li', { text: ruleText(x) })))],
        ['', r => el('button', { type: 'button', class: 'danger', text: 'Delete', onclick: () => guarded(async () => {
          if (!confirm(`Delete every rule of ${r.who}?`)) return;
          await api('DELETE', `${ACL}/${r.kind}/${encodeURIComponent(r.who)}`);
          flash(`Deleted the rules of ${r.who}.`);
          await show();
        }) })],
      ], rows, 'No rule for a client or a user.'),
      el('h3', { text: 'Rules for every client' }),
      (every.rules || []).length
        ? el('ol', { id: 'acl-all', class: 'plain' }, every.rules.map(x => el('li', { text: ruleText(x) })))
        : el('p', { id: 'acl-all', class: 'muted', text: 'None.' }));
  }
  await show();
}

async function banned(root) {
  heading(root, 'Banned clients');
  const as = el('select', { id: 'ban-as' }, ['clientid', 'username', 'peerhost', 'clientid_re', 'username_re'].map(p => el('option', { value: p, text: p })));
  const who = el('input', { id: 'ban-who', placeholder: 'Who', required: true });
  const reason = el('input', { id: 'ban-reason', placeholder: 'Reason' });
  root.append(el('form', { class: 'filters', id: 'add-ban', onsubmit: ev => { ev.preventDefault(); guarded(async () => {
    await api('POST', API + '/banned', { as: as.value, who: who.value, reason: reason.value, by: state.user });
    flash(`Banned ${as.value} ${who.value}.`);
    who.value = ''; reason.value = '';
    await list.show();
  }); } }, as, who, reason, el('button', { type: 'submit', text: 'Ban' })));
  const list = pager(root,
    page => api('GET', API + '/banned?' + query({ page, limit: 50 })),
    rows => table('banned', [
      ['As', b => b.as], ['Who', b => b.who], ['Reason', b => b.reason], ['By', b => b.by], ['At', b => b.at], ['Until', b => b.until],
      ['', b => el('button', { type: 'button', class: 'danger', text: 'Lift', onclick: () => guarded(async () => {
        await api('DELETE', `${API}/banned/${encodeURIComponent(b.as)}/${encodeURIComponent(b.who)}`);
        flash(`Lifted the ban of ${b.who}.`);
        await list.show();
      }) })],
    ], rows, 'Nobody is banned.'));
  await list.show();
}

async function alarms(root) {
  heading(root, 'Alarms');
  const which = el('select', { id: 'alarm-kind', onchange: () => list.reset() },
    el('option', { value: 'true', text: 'Active' }), el('option', { value: 'false', text: 'History' }));
  root.append(el('div', { class: 'filters' }, which));
  const list = pager(root,
    page => api('GET', API + '/alarms?' + query({ page, limit: 50, activated: which.value })),
    rows => table('alarms', [
      ['Node', a => a.node], ['Name', a => a.name], ['Message', a => a.message],
      ['Since', a => a.activate_at], ['Until', a => a.deactivate_at], ['Duration', a => duration(a.duration)],
    ], rows, 'No alarm.'));
  await list.show();
}

async function account(root) {
  heading(root, 'Account: ' + state.user);
  const old = el('input', { id: 'old-pwd', type: 'password', placeholder: 'Current password', required: true, autocomplete: 'current-password' });
  const pw = el('input', { id: 'new-pwd', type: 'password', placeholder: 'New password (8 to 64 characters)', required: true, minlength: 8, maxlength: 64, autocomplete: 'new-password' });
  root.append(el('form', { class: 'filters', id: 'change-pwd', onsubmit: ev => { ev.preventDefault(); guarded(async () => {
    await api('POST', `${API}/users/${encodeURIComponent(state.user)}/change_pwd`, { old_pwd: old.value, new_pwd: pw.value });
    sessionStorage.setItem('default_pwd', '');
    logout('Password changed on every node: log in with the new one.');
  }); } }, old, pw, el('button', { type: 'submit', text: 'Change password' })));
}

// ------------------------------------------------------------------ start

document.addEventListener('DOMContentLoaded', () => {
  document.getElementById('login-form').addEventListener('submit', login);
  document.getElementById('logout').addEventListener('click', () => logout(''));
  window.addEventListener('hashchange', route);
  if (state.token) start();
  else showLogin('');
});
