// Drives Debian's Chromium through the dashboard of a running cluster, as
// an operator would, and saves a screenshot of every page. tests/dashboard.rs
// starts the cluster, sets the environment below, runs this script and
// checks the results on its own (over MQTT and the API).
//
//   DASH_URL         the dashboard of one node (http://127.0.0.3:PORT/)
//   DASH_OUT         folder for the screenshots
//   DASH_NODES       the node names the overview must show, comma-separated
//   DASH_INVITE      one of them, not yet a member: invited through the
//                    overview's form before the nodes are checked
//   DASH_VICTIM      a connected client to find and kick; DASH_VICTIM_NODE,
//                    DASH_VICTIM_TOPIC: its node and one of its subscriptions
//   DASH_RETAINED    topic=payload of a retained message to find
//   DASH_TRAFFIC     JSON list of commands (argv lists) that make traffic
//                    while the charts are watched; each stops by itself
//
// Prints one JSON object with what it saw; exits 1 with the reason when a
// step fails.
import { chromium } from 'playwright-core';
import { spawn } from 'node:child_process';
import { mkdirSync } from 'node:fs';

const env = name => {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set`);
  return v;
};
const URL_ = env('DASH_URL');
const OUT = env('DASH_OUT');
const NODES = env('DASH_NODES').split(',').sort();
const INVITE = env('DASH_INVITE');
const VICTIM = env('DASH_VICTIM');
const VICTIM_NODE = env('DASH_VICTIM_NODE');
const VICTIM_TOPIC = env('DASH_VICTIM_TOPIC');
const [RET_TOPIC, RET_PAYLOAD] = env('DASH_RETAINED').split('=');
const TRAFFIC = JSON.parse(env('DASH_TRAFFIC'));
const STEP_MS = 20000;

mkdirSync(OUT, { recursive: true });
const seen = {};
const children = [];

function check(cond, what) {
  if (!cond) throw new Error(what);
}

async function shot(page, name) {
  await page.screenshot({ path: `${OUT}/${name}.png`, fullPage: true });
}

async function chartState(page, id) {
  return page.$eval('#' + id, e => ({
    latest: JSON.parse(e.dataset.latest || '{}'),
    samples: Number(e.dataset.samples || 0),
    lines: [...e.querySelectorAll('polyline')].map(p => p.getAttribute('points')),
  }));
}

async function go(page, hash, ready) {
  await page.click(`#nav a[href="${hash}"]`);
  await page.waitForSelector(ready, { timeout: STEP_MS });
}

async function main() {
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  try {
    const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
    page.setDefaultTimeout(STEP_MS);
    const problems = [];
    page.on('pageerror', e => problems.push('page error: ' + e.message));
    page.on('console', m => { if (m.type() === 'error') problems.push('console: ' + m.text()); });

    // Log in: a wrong password is refused with a message, then admin/public.
    await page.goto(URL_);
    await page.waitForSelector('#login-form', { state: 'visible' });
    await shot(page, '01-login');
    await page.fill('#username', 'admin');
    await page.fill('#password', 'not-the-password');
    await page.click('#login-button');
    await page.waitForFunction(() => document.getElementById('login-error').textContent.includes('Wrong'));
    seen.bad_login = await page.textContent('#login-error');
    await page.fill('#password', 'public');
    await page.click('#login-button');
    await page.waitForSelector('#app', { state: 'visible' });

    // Overview: the members; the last node is invited through the form.
    await page.waitForFunction(n => document.querySelectorAll('#nodes tbody tr[data-key]').length === n, NODES.length - 1);
    await page.fill('#invite-node', INVITE);
    await page.click('#invite button[type=submit]');
    await page.waitForFunction(w => document.getElementById('flash').textContent === `${w} joined the cluster.`, INVITE, { timeout: 40000 });
    seen.invited = INVITE;
    // Every node, running, and the default-password warning.
    await page.waitForFunction(n => {
      const rows = document.querySelectorAll('#nodes tbody tr[data-key]');
      return rows.length === n && [...rows].every(r => r.querySelector('.badge').textContent === 'running');
    }, NODES.length);
    seen.nodes = await page.$$eval('#nodes tbody tr[data-key]', rows => rows.map(r => ({
      node: r.dataset.key,
      status: r.querySelector('.badge').textContent,
      role: r.children[1].textContent,
    })));
    check(JSON.stringify(seen.nodes.map(n => n.node)) === JSON.stringify(NODES), 'overview nodes: ' + JSON.stringify(seen.nodes));
    check(seen.nodes.every(n => n.status === 'running'), 'a node not running: ' + JSON.stringify(seen.nodes));
    seen.banner = await page.isVisible('#banner');
    seen.health = await page.textContent('#health');
    // Two polls without traffic, then traffic: both charts must rise.
    await page.waitForFunction(() => Number(document.getElementById('chart-in').dataset.samples) >= 2);
    const quiet = await chartState(page, 'chart-in');
    seen.quiet_rates = quiet.latest;
    await shot(page, '02-overview');
    for (const argv of TRAFFIC) {
      const c = spawn(argv[0], argv.slice(1), { stdio: 'ignore' });
      children.push(c);
    }
    const moving = id => page.waitForFunction(i => {
      const l = JSON.parse(document.getElementById(i).dataset.latest || '{}');
      return Object.values(l).some(v => v > 0);
    }, id, { timeout: 40000 });
    await moving('chart-in');
    await moving('chart-out');
    // One more poll, so the lines show the rise.
    await page.waitForTimeout(2500);
    const busy = await chartState(page, 'chart-in');
    seen.busy_rates_in = busy.latest;
    seen.busy_rates_out = (await chartState(page, 'chart-out')).latest;
    seen.chart_moved = JSON.stringify(busy.lines) !== JSON.stringify(quiet.lines);
    seen.legend = await page.textContent('#chart-in + .legend');
    await shot(page, '03-overview-traffic');

    // Clients: find the victim by search, open it, kick it.
    await go(page, '#/clients', '#clients');
    await page.fill('#client-search', VICTIM);
    await page.click('form.filters button[type=submit]');
    const row = `#clients tr[data-key="${VICTIM}"]`;
    await page.waitForSelector(row);
    seen.victim_node = await page.textContent(`${row} td:nth-child(3)`);
    check(seen.victim_node === VICTIM_NODE, `victim on ${seen.victim_node}, expected ${VICTIM_NODE}`);
    await shot(page, '04-clients');
    await page.click(`${row} a`);
    await page.waitForSelector('#client-info');
    await page.waitForSelector('#client-subscriptions');
    seen.victim_subscriptions = await page.$$eval('#client-subscriptions tbody tr td:first-child', t => t.map(x => x.textContent));
    check(seen.victim_subscriptions.includes(VICTIM_TOPIC), 'victim subscriptions: ' + seen.victim_subscriptions);
    await shot(page, '05-client');
    page.once('dialog', d => d.accept());
    await page.click('#kick');
    await page.waitForFunction(v => document.getElementById('flash').textContent === `Kicked ${v}.`, VICTIM);
    seen.kicked = VICTIM;
    await page.waitForSelector('#clients');
    await page.fill('#client-search', VICTIM);
    await page.click('form.filters button[type=submit]');
    await page.waitForFunction(() => (document.querySelector('#clients tbody') || {}).textContent === 'No client matches.');
    await shot(page, '06-clients-after-kick');

    // Subscriptions and topics of the whole cluster.
    await go(page, '#/subscriptions', '#subscriptions');
    seen.subscriptions = await page.$$eval('#subscriptions tbody tr', r => r.length);
    await shot(page, '07-subscriptions');
    await go(page, '#/topics', '#topics');
    seen.topics = await page.$$eval('#topics tbody tr td:first-child', t => t.map(x => x.textContent));
    await shot(page, '08-topics');

    // Retained: the message and its payload.
    await go(page, '#/retained', '#retained');
    const ret = page.locator('#retained tbody tr', { hasText: RET_TOPIC });
    await ret.locator('button.show').click();
    await page.waitForSelector('pre.payload');
    seen.retained_payload = await page.textContent('pre.payload');
    check(seen.retained_payload === RET_PAYLOAD, 'retained payload: ' + seen.retained_payload);
    await shot(page, '09-retained');

    // Listeners: tcp:default on every node.
    await go(page, '#/listeners', '#listeners');
    seen.listeners = await page.$$eval('#listeners tbody tr', rows => rows.map(r => ({
      id: r.children[0].textContent, running: r.children[2].textContent, nodes: r.children[5].querySelectorAll('li').length,
    })));
    await shot(page, '10-listeners');

    // MQTT users: add one through the form.
    await go(page, '#/users', '#mqtt-users');
    await page.fill('#new-user', 'dash-user');
    await page.fill('#new-user-password', 'dash-secret-1');
    await page.click('#add-user button[type=submit]');
    await page.waitForSelector('#mqtt-users tbody tr:has-text("dash-user")');
    seen.user_added = 'dash-user';
    await shot(page, '11-mqtt-users');

    // ACL: a deny rule for one client.
    await go(page, '#/acl', '#acl-rules');
    await page.selectOption('#acl-kind', 'clients');
    await page.fill('#acl-who', 'dash-acl');
    await page.fill('#acl-topic', 'secret/#');
    await page.selectOption('#acl-permission', 'deny');
    await page.selectOption('#acl-action', 'publish');
    await page.click('#add-rule button[type=submit]');
    await page.waitForSelector('#acl-rules tbody tr:has-text("deny publish secret/#")');
    seen.acl_added = 'dash-acl';
    await shot(page, '12-acl');

    // Banned: ban a client id.
    await go(page, '#/banned', '#banned');
    await page.selectOption('#ban-as', 'clientid');
    await page.fill('#ban-who', 'dash-banned');
    await page.fill('#ban-reason', 'from the dashboard');
    await page.click('#add-ban button[type=submit]');
    await page.waitForSelector('#banned tbody tr:has-text("dash-banned")');
    seen.banned = 'dash-banned';
    await shot(page, '13-banned');

    await go(page, '#/alarms', '#alarms');
    await shot(page, '14-alarms');
    await go(page, '#/account', '#change-pwd');
    await shot(page, '15-account');

    // Log out: the next visit asks for the password again.
    await page.click('#logout');
    await page.waitForSelector('#login-form', { state: 'visible' });
    await page.reload();
    await page.waitForSelector('#login-form', { state: 'visible' });
    seen.logged_out = true;
    seen.problems = problems;
  } finally {
    await browser.close();
  }
}

try {
  await main();
  console.log(JSON.stringify(seen));
} catch (e) {
  console.log(JSON.stringify(seen));
  console.error('dashboard step failed: ' + (e && e.stack || e));
  process.exitCode = 1;
} finally {
  for (const c of children) c.kill();
}
