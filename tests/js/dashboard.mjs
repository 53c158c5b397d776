// The dashboard (/dashboard) as vman serves it, in headless Chromium, against
// a real `vman serve` with real QEMU and the test guest under TCG:
//
//   node tests/js/dashboard.mjs VMAN_BINARY DATA_DIR PORT GUEST_DIR
//
// Starts vman itself (so it can SIGKILL and restart it on the same port),
// then: a VM created and started through the API appears in the table and
// shows RUNNING within 1 s of the answer; typing `echo hi` into the serial
// terminal of its page shows the guest's `hi`; a Start click starts a second
// VM and shows the operation; the first VM's QEMU SIGKILLed shows CRASHED
// within 1 s without a reload; vman SIGKILLed shows "reconnecting", and
// after the second VM's QEMU was killed meanwhile and vman restarted, the
// page is live again and shows that VM as vman now reports it. Then a full
// clone of a VM with a 256 MiB disk, copied at 32 MiB/s: the clone's page
// shows the CLONE_VM operation, its progress bar moves as the
// `operationProgress` subscription pushes, with no query sent meanwhile (no
// polling), and the page turns into the new VM's once the copy is done. No
// request of the page leaves the vman origin.
//
// Screenshots: the table and the VM page go to $SHOTS (a temp dir by
// default, printed) and, with DASHBOARD_DOCS_SHOTS=dir, to
// dir/dashboard.png and dir/dashboard-vm.png.
// Prints one line per check; exits non-zero on any failure.
import { execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { chromium } from 'playwright-core';

// With DASHBOARD_VIEWER_TOKEN and DASHBOARD_ADMIN_TOKEN (a server with
// `auth.mode = "token"`, given by URL: `node dashboard.mjs URL`) it walks the
// token prompt instead: the page asks for a token, takes the viewer's (kept
// over a reload), then lists the VMs live over an authenticated websocket,
// and a Start click shows the FORBIDDEN a viewer gets.
const viewerToken = process.env.DASHBOARD_VIEWER_TOKEN || null;
const adminToken = process.env.DASHBOARD_ADMIN_TOKEN || null;
const [bin, data, port, guest] = process.argv.slice(2);
if (!viewerToken && !guest) {
  console.error('usage: node dashboard.mjs VMAN_BINARY DATA_DIR PORT GUEST_DIR, or node dashboard.mjs URL with the tokens');
  process.exit(2);
}
const origin = viewerToken ? new URL(bin).origin : `http://127.0.0.1:${port}`;
const executablePath = process.env.CHROMIUM || '/usr/bin/chromium';
const shots = process.env.SHOTS || fs.mkdtempSync(path.join(os.tmpdir(), 'vman-dashboard-shots-'));
const docsShots = process.env.DASHBOARD_DOCS_SHOTS || null;
/** The guest boots under TCG on a busy host. */
const BOOT_MS = 120_000;
/** What the issue asks: a state change shows within a second. */
const LIVE_MS = 1_000;
const WAIT_MS = 30_000;
setTimeout(() => { console.log('FAIL the whole run took more than 400 s'); process.exit(1); }, 400_000).unref();

let passed = 0;
const failures = [];
function check(ok, what, detail = '') {
  if (ok) { passed++; console.log(`ok   ${what}`); } else { failures.push(what); console.log(`FAIL ${what}${detail ? `: ${detail}` : ''}`); }
}

let vman = null;
function startVman() {
  vman = spawn(bin, ['serve', '--listen', `127.0.0.1:${port}`, '--data-dir', data], {
    // A full clone's copy slow enough to watch: 256 MiB at 32 MiB/s.
    env: { ...process.env, VMAN_QEMU_ACCEL: 'tcg', VMAN_IMPORT_DIR: guest, VMAN_LOG_LEVEL: 'warn', VMAN_STORAGE_COPY_BYTES_PER_SECOND: String(32 << 20) },
    stdio: ['ignore', 'inherit', 'inherit'],
  });
}
process.on('exit', () => vman?.kill('SIGKILL'));
async function ready() {
  for (let i = 0; i < 1000; i++) {
    try { if ((await fetch(`${origin}/readyz`)).ok) return; } catch { /* not yet */ }
    await new Promise((r) => setTimeout(r, 20));
  }
  throw new Error('vman did not become ready');
}
async function gql(query, variables = {}) {
  const headers = { 'content-type': 'application/json' };
  if (adminToken) headers.authorization = `Bearer ${adminToken}`;
  const r = await (await fetch(`${origin}/graphql`, { method: 'POST', headers, body: JSON.stringify({ query, variables }) })).json();
  if (r.errors) throw new Error(JSON.stringify(r.errors));
  return r.data;
}
const qemuPid = (vmId) => Number(fs.readFileSync(path.join(data, 'run', vmId, 'qemu.pid'), 'utf8').trim());
const vmState = async (id) => (await gql('query($id: ID) { vm(id: $id) { state } }', { id })).vm.state;

if (!viewerToken) {
  startVman();
  await ready();
}
const IMPORT = 'mutation($n: String!, $k: ImageKind!, $p: String!) { importImage(input: {name: $n, kind: $k, path: $p}) { image { id } } }';
async function guestTemplate() {
  const kernel = (await gql(IMPORT, { n: 'kernel', k: 'KERNEL', p: 'vmlinuz' })).importImage.image.id;
  const initrd = (await gql(IMPORT, { n: 'initrd', k: 'INITRD', p: 'initrd.img' })).importImage.image.id;
  await gql('mutation($k: ID!, $i: ID!) { createTemplate(input: {name: "tiny", vcpus: 1, memoryMib: 256, kernelImageId: $k, initrdImageId: $i, cmdline: "console=ttyS0 panic=-1"}) { template { id } } }', { k: kernel, i: initrd });
}
const createVm = async (name, template = 'tiny') => (await gql('mutation($n: String!, $t: String!) { createVm(input: {name: $n, templateName: $t}) { vm { id } } }', { n: name, t: template })).createVm.vm.id;

const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'vman-dash-chromium-'));
const context = await chromium.launchPersistentContext(userDataDir, {
  executablePath,
  headless: true,
  viewport: { width: 1400, height: 900 },
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
const requested = [];
await context.route('**/*', (route) => {
  const u = route.request().url();
  requested.push(u);
  return new URL(u).origin === origin ? route.continue() : route.abort();
});
const page = context.pages()[0] || await context.newPage();
const problems = [];
page.on('pageerror', (e) => problems.push(`pageerror: ${e.message}`));
page.on('console', (m) => { if (m.type() === 'error' && !/ERR_CONNECTION_REFUSED|WebSocket connection|status of 401/.test(m.text())) problems.push(`console: ${m.text()}`); });
page.on('websocket', (ws) => {
  requested.push(ws.url());
  ws.on('framesent', (f) => { if (typeof f.payload === 'string' && f.payload.includes('DashboardOperationProgress')) progressSubscriptions++; });
});
// The page's queries and mutations (POST /graphql), by operation name.
const posts = [];
let progressSubscriptions = 0;
page.on('request', (r) => {
  if (r.method() !== 'POST' || !r.url().endsWith('/graphql')) return;
  const name = /\b(?:query|mutation)\s+(\w+)/.exec(r.postDataJSON()?.query || '')?.[1] || '?';
  posts.push({ at: Date.now(), name });
});

const row = (name) => page.locator(`tr[data-vm="${name}"]`);
const stateOf = (name) => row(name).getByTestId('state');
async function within(ms, what, wait) {
  const t0 = Date.now();
  try {
    await wait(ms);
    check(true, `${what} (${Date.now() - t0} ms)`);
    return true;
  } catch (e) {
    check(false, what, e.message.split('\n')[0]);
    return false;
  }
}
const shot = async (name) => {
  await page.screenshot({ path: path.join(shots, name) });
  if (docsShots && name.startsWith('dashboard')) fs.copyFileSync(path.join(shots, name), path.join(docsShots, name));
};

// The bundle's size: what loading /dashboard fetched (HTML, JS, CSS).
const loaded = new Map();
page.on('response', async (r) => {
  if (r.request().method() === 'GET' && !r.url().includes('/graphql')) {
    loaded.set(r.url(), (await r.body().catch(() => Buffer.alloc(0))).length);
  }
});

async function tokenWalk() {
  await gql('mutation { createTemplate(input: {name: "small", vcpus: 1, memoryMib: 128}) { template { id } } }');
  await createVm('db-1', 'small');
  await page.goto(`${origin}/dashboard`);
  await within(WAIT_MS, 'without a token the page asks for one',
    (ms) => page.getByRole('textbox', { name: 'API token' }).waitFor({ timeout: ms }));
  await page.getByRole('textbox', { name: 'API token' }).fill(`Bearer ${viewerToken}`);
  await page.getByRole('button', { name: 'Use token' }).click();
  await within(WAIT_MS, 'with the viewer token the table loads and the events websocket is live',
    (ms) => page.getByTestId('connection').filter({ hasText: /^live$/ }).waitFor({ timeout: ms }));
  check(await page.getByRole('textbox', { name: 'API token' }).count() === 0, 'the prompt is gone');
  await page.reload();
  await within(WAIT_MS, 'the token is kept over a reload (sessionStorage)',
    (ms) => stateOf('db-1').filter({ hasText: 'STOPPED' }).waitFor({ timeout: ms }));
  // The 1 s below is the live path's: the reloaded page's websocket first.
  await within(WAIT_MS, 'after the reload the events websocket is live again',
    (ms) => page.getByTestId('connection').filter({ hasText: /^live$/ }).waitFor({ timeout: ms }));
  await createVm('db-2', 'small');
  await within(LIVE_MS, 'a VM created by the admin shows within 1 s',
    (ms) => stateOf('db-2').filter({ hasText: 'STOPPED' }).waitFor({ timeout: ms }));
  await row('db-1').locator('button[data-action="start"]').click();
  await within(WAIT_MS, 'a viewer\'s Start click shows vman\'s FORBIDDEN',
    (ms) => row('db-1').getByTestId('result').filter({ hasText: /^start failed: FORBIDDEN: / }).waitFor({ timeout: ms }));
}

try {
  if (viewerToken) {
    await tokenWalk();
  } else {
    await guestTemplate();
    await qemuWalk();
  }
} catch (e) {
  check(false, 'the walk ran to its end', e.stack);
  await page.screenshot({ path: path.join(shots, 'failure.png') }).catch(() => {});
}

async function qemuWalk() {
  await page.goto(`${origin}/dashboard`);
  await within(WAIT_MS, 'the dashboard loads and its event subscription is live',
    (ms) => page.getByTestId('connection').filter({ hasText: /^live$/ }).waitFor({ timeout: ms }));

  const bytes = [...loaded.values()].reduce((a, b) => a + b, 0);
  console.log(`bundle: ${loaded.size} files, ${(bytes / 1024).toFixed(0)} kB uncompressed:`);
  for (const [u, n] of loaded) console.log(`  ${(n / 1024).toFixed(1).padStart(7)} kB ${new URL(u).pathname}`);
  check(bytes < 1024 * 1024, `the dashboard loads under 1 MiB (${(bytes / 1024).toFixed(0)} kB)`);

  // Created and started through the API: in the table, RUNNING within 1 s.
  const web1 = await createVm('web-1');
  await within(LIVE_MS, 'a VM created through the API appears in the table within 1 s',
    (ms) => stateOf('web-1').filter({ hasText: 'STOPPED' }).waitFor({ timeout: ms }));
  const started = await gql('mutation($id: ID) { startVm(id: $id) { vm { state } } }', { id: web1 });
  check(started.startVm.vm.state === 'RUNNING', 'startVm answers RUNNING', started.startVm.vm.state);
  await within(LIVE_MS, 'the VM started through the API shows RUNNING within 1 s',
    (ms) => stateOf('web-1').filter({ hasText: /^RUNNING$/ }).waitFor({ timeout: ms }));

  // Its page: the serial console takes `echo hi` and shows the guest's `hi`.
  await row('web-1').getByRole('link', { name: 'web-1' }).click();
  await within(WAIT_MS, 'the VM page shows its disks, NICs, snapshots and operations',
    (ms) => page.locator('[data-vm-page="web-1"]').getByRole('heading', { name: 'Operations' }).waitFor({ timeout: ms }));
  const termText = () => page.evaluate(() => [...document.querySelectorAll('.xterm-rows > div')].map((d) => d.textContent.replace(/\u00a0/g, ' ').trimEnd()));
  await within(BOOT_MS, 'the terminal shows the guest boot up to its shell prompt',
    (ms) => page.waitForFunction(() => [...document.querySelectorAll('.xterm-rows > div')].some((d) => d.textContent.replace(/\u00a0/g, ' ').trim() === '/ #'), null, { timeout: ms }));
  await page.locator('.xterm').click();
  await page.keyboard.type('echo hi');
  await page.keyboard.press('Enter');
  const sawHi = await within(WAIT_MS, 'typing `echo hi` in the terminal shows the guest\'s `hi`',
    (ms) => page.waitForFunction(() => [...document.querySelectorAll('.xterm-rows > div')].some((d) => d.textContent.replace(/\u00a0/g, ' ').trim() === 'hi'), null, { timeout: ms }));
  if (!sawHi) console.log((await termText()).filter(Boolean).slice(-10).join('\n'));
  await shot('dashboard-vm.png');

  // Back to the table: a Start click starts a second VM.
  await page.getByRole('link', { name: '← all VMs' }).click();
  const web2 = await createVm('web-2');
  await within(LIVE_MS, 'the second VM appears in the table within 1 s',
    (ms) => stateOf('web-2').filter({ hasText: 'STOPPED' }).waitFor({ timeout: ms }));
  await row('web-2').locator('button[data-action="start"]').click();
  await within(WAIT_MS, 'the Start click shows the operation it caused',
    (ms) => row('web-2').getByTestId('result').filter({ hasText: /^start: \S+ SUCCEEDED$/ }).waitFor({ timeout: ms }));
  await within(LIVE_MS, 'and the VM shows RUNNING', (ms) => stateOf('web-2').filter({ hasText: /^RUNNING$/ }).waitFor({ timeout: ms }));
  check(await vmState(web2) === 'RUNNING', 'vman says the clicked VM runs');
  await within(WAIT_MS, 'the table shows CPU and memory sparklines from vmStats',
    (ms) => row('web-1').locator('svg.spark').first().waitFor({ timeout: ms }));
  await page.waitForFunction(() => document.querySelectorAll('tr[data-vm] svg.spark polyline').length >= 4, null, { timeout: WAIT_MS }).catch(() => {});
  await shot('dashboard.png');

  // QEMU SIGKILLed: CRASHED within 1 s, without a reload.
  process.kill(qemuPid(web1), 'SIGKILL');
  await within(LIVE_MS, 'a SIGKILLed QEMU shows CRASHED within 1 s without a reload',
    (ms) => stateOf('web-1').filter({ hasText: /^CRASHED$/ }).waitFor({ timeout: ms }));

  // vman SIGKILLed: "reconnecting"; the other QEMU dies meanwhile; vman restarted.
  const pid2 = qemuPid(web2);
  vman.kill('SIGKILL');
  await new Promise((r) => vman.once('exit', r));
  await within(WAIT_MS, 'vman gone: the page says it is reconnecting',
    (ms) => page.getByTestId('reconnecting').waitFor({ timeout: ms }));
  await shot('reconnecting.png');
  process.kill(pid2, 'SIGKILL');
  startVman();
  await ready();
  await within(WAIT_MS, 'vman back: the page is live again, the banner gone',
    (ms) => page.getByTestId('reconnecting').waitFor({ state: 'detached', timeout: ms }));
  const after = await vmState(web2);
  check(after !== 'RUNNING', 'vman found the second VM gone while it was down', after);
  await within(WAIT_MS, `the page shows what happened meanwhile: web-2 ${after}`,
    (ms) => stateOf('web-2').filter({ hasText: new RegExp(`^${after}$`) }).waitFor({ timeout: ms }));
  check((await page.getByTestId('connection').innerText()) === 'live', 'the connection badge says live');

  await cloneProgress();
}

// A full clone's progress bar, pushed by `operationProgress`: it moves while
// the page sends no query.
async function cloneProgress() {
  const big = (await gql('mutation { createVm(input: {name: "big", vcpus: 1, memoryMib: 128}) { vm { id } } }')).createVm.vm.id;
  const disk = (await gql('mutation { createDisk(input: {name: "big-data", sizeBytes: 268435456, format: QCOW2}) { disk { id } } }')).createDisk.disk.id;
  await gql('mutation($d: ID!, $v: ID!) { attachDisk(diskId: $d, vmId: $v) { disk { id } } }', { d: disk, v: big });
  execFileSync('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x5a 0 256M', path.join(data, 'storage', `${disk}.qcow2`)], { stdio: 'ignore' });
  const cloned = (await gql('mutation($id: ID!) { cloneVm(id: $id, name: "big2", linked: false) { operation { id status targetId } } }', { id: big })).cloneVm.operation;
  check(cloned.status === 'RUNNING', 'a full clone of a VM with a 256 MiB disk answers RUNNING', cloned.status);
  // The clone's page (as a link to it would open it): its VM is being made.
  await page.evaluate((id) => { window.location.hash = `#/vm/${id}`; }, cloned.targetId);
  const clonePage = page.locator(`[data-vm-page="${cloned.targetId}"]`);
  const bar = clonePage.locator('tr[data-operation="CLONE_VM"] progress');
  const fraction = () => bar.evaluate((b) => (b.hasAttribute('value') ? b.value : -1)).catch(() => -1);
  const shown = await within(WAIT_MS, 'the clone\'s page shows its CLONE_VM operation with a progress bar under way',
    (ms) => page.waitForFunction((id) => {
      const b = document.querySelector(`[data-vm-page="${id}"] tr[data-operation="CLONE_VM"] progress[value]`);
      return b && b.value > 0 && b.value < 0.7;
    }, cloned.targetId, { timeout: ms }));
  if (shown) {
    const from = Date.now();
    const seen = [await fraction()];
    while (Date.now() - from < 2500) {
      await new Promise((r) => setTimeout(r, 250));
      seen.push(await fraction());
    }
    const moves = seen.filter((v, i) => i > 0 && v > seen[i - 1]).length;
    check(moves >= 3 && seen.every((v, i) => i === 0 || v >= seen[i - 1]), `the progress bar moves forward (${seen.map((v) => v.toFixed(2)).join(' ')})`);
    const sent = posts.filter((p) => p.at >= from);
    check(sent.length === 0, 'and the page sent no query meanwhile: the progress is pushed, not polled', sent.map((p) => p.name).join(', '));
    check(progressSubscriptions >= 1, `over the operationProgress subscription (${progressSubscriptions} subscribed)`);
  }
  await within(WAIT_MS, 'the copy done, the page shows the new VM big2 STOPPED',
    (ms) => page.locator('[data-vm-page="big2"]').getByTestId('state').filter({ hasText: /^STOPPED$/ }).waitFor({ timeout: ms }));
  const pagesLoaded = posts.filter((p) => p.name === 'DashboardVmPage').length;
  console.log(`the VM page was loaded ${pagesLoaded} times in the whole walk`);
}

const foreign = requested.filter((u) => !u.startsWith(origin) && !u.startsWith(origin.replace('http', 'ws')));
check(foreign.length === 0, `all ${requested.length} requests of the page went to the vman origin`, foreign.join(', '));
check(problems.length === 0, 'no page errors', problems.join('\n'));
console.log(`screenshots in ${shots}`);
await context.close();
console.log(`${passed} passed, ${failures.length} failed`);
process.exit(failures.length ? 1 : 0);
