// The playground as vman itself serves it, driven in headless Chromium:
//
//   node tests/js/playground.mjs http://127.0.0.1:PORT/graphql
//
// (any URL on the server will do: its origin is used). Opens the page at `/`,
// runs a query in GraphiQL and looks for its result in the response panel,
// then starts a vmStateChanged subscription in the page and makes the VM
// change state with mutations sent from node (not from the page), and looks
// for those changes in the response panel.
//
// Uses the system Chromium (CHROMIUM, default /usr/bin/chromium) through
// playwright-core and never downloads a browser. Every request the page makes
// is intercepted: one to a host other than loopback fails the test (and is
// aborted), and so do a console error and an uncaught page error. A
// screenshot goes to a fresh temp dir (or $SHOTS), whose path is printed.
// Prints one line per check; exits non-zero on any failure.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { chromium } from 'playwright-core';

const arg = process.argv[2];
if (!arg) {
  console.error('usage: node playground.mjs http://127.0.0.1:PORT/graphql');
  process.exit(2);
}
const origin = new URL(arg).origin;
const graphqlUrl = `${origin}/graphql`;
const executablePath = process.env.CHROMIUM || '/usr/bin/chromium';
if (!fs.existsSync(executablePath)) {
  console.log(`FAIL no Chromium at ${executablePath}: run \`make deps\` (scripts/install-deps.sh installs the Debian package chromium)`);
  process.exit(1);
}
const shots = process.env.SHOTS || fs.mkdtempSync(path.join(os.tmpdir(), 'vman-playground-shots-'));

/** How long any single wait in the page may take. */
const WAIT_MS = 15_000;
/** The first load compiles ~7 MB of JavaScript on a small machine. */
const FIRST_LOAD_MS = 60_000;
// A last resort: whatever hangs (Chromium included), the process ends.
setTimeout(() => {
  console.log('FAIL the whole run took more than 170 s');
  process.exit(1);
}, 170_000).unref();

const runId = `${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 6)}`;
let passed = 0;
const failures = [];
function check(ok, what, detail = '') {
  if (ok) {
    passed++;
    console.log(`ok   ${what}`);
  } else {
    failures.push(what);
    console.log(`FAIL ${what}${detail ? `: ${detail}` : ''}`);
  }
  return ok;
}

const isLoopback = (u) => {
  const { protocol, hostname } = new URL(u);
  if (protocol === 'data:' || protocol === 'blob:' || protocol === 'about:') return true;
  return hostname === '127.0.0.1' || hostname === 'localhost' || hostname === '[::1]' || /^127\./.test(hostname);
};

/** A GraphQL request from node (not from the page); fails on any error. */
async function gql(query, variables = {}) {
  const response = await fetch(graphqlUrl, {
    method: 'POST',
    headers: { 'content-type': 'application/json', accept: 'application/json' },
    body: JSON.stringify({ query, variables }),
    signal: AbortSignal.timeout(WAIT_MS),
  });
  const body = await response.json();
  if (!response.ok || body.errors) throw new Error(`${query}: HTTP ${response.status} ${JSON.stringify(body)}`);
  return body.data;
}

/** The sequence of the newest journal event (null when the journal is empty). */
async function journalHead() {
  let after = null;
  let head = null;
  for (;;) {
    const { events } = await gql(
      'query($after: String) { events(after: $after, first: 500) { edges { cursor node { sequence } } pageInfo { hasNextPage } } }',
      { after },
    );
    if (events.edges.length) {
      after = events.edges.at(-1).cursor;
      head = events.edges.at(-1).node.sequence;
    }
    if (!events.pageInfo.hasNextPage) return head;
  }
}

// Monaco renders spaces as U+00A0 and soft-wraps long lines (a long id lands
// on a line of its own), so the response panel is compared with all white
// space removed: expect '"id":"…"', not '"id": "…"'.
const compact = (s) => s.replace(/[\s\u00a0]+/g, '');
const responseText = (page) => page.locator('.graphiql-response .view-lines').innerText();
const has = (shown, ...expected) => expected.every((e) => compact(shown).includes(e));
/** Waits until the response panel contains every string of `expected` (see `compact`). */
function waitForResponse(page, expected, timeout = WAIT_MS) {
  return page.waitForFunction((all) => {
    const t = (document.querySelector('.graphiql-response .view-lines')?.textContent || '').replace(/[\s\u00a0]+/g, '');
    return all.every((e) => t.includes(e));
  }, expected, { timeout });
}
async function setQuery(page, query) {
  await page.locator('.graphiql-query-editor .monaco-editor').click();
  await page.keyboard.press('Control+A');
  await page.keyboard.press('Delete');
  // One line: multi-line text inserted into monaco gets auto-indented.
  await page.keyboard.insertText(query);
  await page.keyboard.press('Home'); // scrolls back to the start, for the screenshots
  // GraphiQL re-derives the operation name 100 ms (debounced) after the
  // editor changes; running sooner sends the previous operation's name.
  await page.waitForTimeout(300);
}

const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'vman-playground-chromium-'));
let context;
const offLoopback = [];
const consoleProblems = [];
try {
  const t0 = Date.now();
  context = await chromium.launchPersistentContext(userDataDir, {
    executablePath,
    headless: true,
    viewport: { width: 1400, height: 900 },
    timeout: WAIT_MS * 2,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  context.setDefaultTimeout(WAIT_MS);
  console.log(`     Chromium ${context.browser()?.version() ?? ''} started in ${Date.now() - t0} ms`);

  // Every request the page (or its workers) makes passes through here.
  await context.route('**/*', (route) => {
    const u = route.request().url();
    if (isLoopback(u)) return route.continue();
    offLoopback.push(u);
    return route.abort();
  });
  context.on('request', (r) => { if (!isLoopback(r.url())) offLoopback.push(r.url()); });

  const page = context.pages()[0] ?? await context.newPage();
  page.on('console', (m) => { if (m.type() === 'error') consoleProblems.push(`console error: ${m.text()}`); });
  page.on('pageerror', (e) => consoleProblems.push(`page error: ${e.message}`));
  const sockets = [];
  page.on('websocket', (ws) => {
    if (!isLoopback(ws.url())) offLoopback.push(ws.url());
    const socket = { url: ws.url(), sent: [], received: [] };
    sockets.push(socket);
    ws.on('framesent', (f) => socket.sent.push(String(f.payload)));
    ws.on('framereceived', (f) => socket.received.push(String(f.payload)));
  });

  // ---- the page, from vman's binary, at / ---------------------------------
  const t1 = Date.now();
  const response = await page.goto(`${origin}/`);
  check(response?.ok() && /text\/html/.test(response.headers()['content-type'] ?? ''),
    `GET ${origin}/ -> ${response?.status()} ${response?.headers()['content-type']}`);
  await page.locator('.graphiql-query-editor .monaco-editor').waitFor({ timeout: FIRST_LOAD_MS });
  check(await page.locator('.graphiql-container').isVisible(), `GraphiQL renders at / (editor after ${Date.now() - t1} ms)`);
  check(await page.locator('.vman-examples').isVisible(), 'the Examples panel is open');
  // GraphiQL fills the first tab with the first example once its tabs are
  // set up; editing the editor before that can be overwritten.
  await page.waitForFunction(() => document.querySelector('.graphiql-query-editor .view-lines')?.textContent.includes('createTemplate'));

  // ---- a query, its result in the response panel --------------------------
  const templateName = `pg-tpl-${runId}`;
  const vmName = `pg-vm-${runId}`;
  await gql('mutation($name: String!) { createTemplate(input: {name: $name, vcpus: 1, memoryMib: 128}) { template { id } } }',
    { name: templateName });
  const vm = (await gql('mutation($name: String!, $t: String!) { createVm(input: {name: $name, templateName: $t}) { vm { id state } } }',
    { name: vmName, t: templateName })).createVm.vm;
  check(vm.state === 'STOPPED', `node created VM ${vmName} (${vm.id}) over HTTP`);

  await setQuery(page, `query FindVm { health { ready } vm(name: "${vmName}") { id name state template { name } } }`);
  await page.locator('.graphiql-execute-button').click();
  await waitForResponse(page, [`"name":"${vmName}"`, '"state":"STOPPED"']);
  const out = await responseText(page);
  check(has(out, `"id":"${vm.id}"`, `"template":{"name":"${templateName}"}`, '"health":{"ready":'),
    'query FindVm ran in the page; the response panel shows the VM', out);
  await page.screenshot({ path: path.join(shots, 'playground-query.png') });

  // ---- a subscription in the page; mutations from node --------------------
  // `after` = the journal head: whatever happens from here on reaches the
  // page even if the server sets the stream up after the mutation commits
  // (graphql-transport-ws does not acknowledge a subscribe).
  const head = await journalHead();
  await setQuery(page,
    `subscription WatchVm { vmStateChanged(vmId: "${vm.id}", after: "${head}") { vmId from to reason sequence vm { name } } }`);
  const wsOpened = page.waitForEvent('websocket');
  await page.locator('.graphiql-execute-button').click();
  const ws = await wsOpened;
  check(ws.url() === `${origin.replace(/^http/, 'ws')}/graphql/ws`, `the subscription opened the websocket ${ws.url()}`);
  const socket = sockets.find((s) => s.url === ws.url());
  for (let i = 0; i < 100 && !socket.sent.some((f) => /"type":"subscribe"/.test(f)); i++) await page.waitForTimeout(50);
  check(socket.sent.some((f) => /"type":"subscribe"/.test(f) && f.includes('vmStateChanged')),
    'the page sent the subscribe message over the websocket');

  const started = (await gql('mutation($id: ID!) { startVm(id: $id) { vm { state } } }', { id: vm.id })).startVm.vm;
  check(['STARTING', 'RUNNING'].includes(started.state), `node ran startVm over HTTP -> ${started.state}`);
  await waitForResponse(page, ['"vmStateChanged"', '"to":"RUNNING"', `"name":"${vmName}"`]);
  let shown = await responseText(page);
  check(has(shown, `"vmId":"${vm.id}"`, '"from":"STARTING"'), 'the response panel shows the pushed STARTING→RUNNING change', shown);
  const nexts = socket.received.filter((f) => /"type":"next"/.test(f));
  check(nexts.some((f) => f.includes('"from":"STOPPED"') && f.includes('"to":"STARTING"')) &&
    nexts.some((f) => f.includes('"from":"STARTING"') && f.includes('"to":"RUNNING"')),
  `the websocket delivered STOPPED→STARTING and STARTING→RUNNING (${nexts.length} next messages)`);

  // Caught up with the journal now: a stop can only arrive as a live push.
  // GraphiQL shows the newest payload only: the stop's last change.
  const stopped = (await gql('mutation($id: ID!) { stopVm(id: $id) { vm { state } } }', { id: vm.id })).stopVm.vm;
  await waitForResponse(page, [`"to":"${stopped.state}"`, '"reason"']);
  shown = await responseText(page);
  check(has(shown, `"vmId":"${vm.id}"`) && !has(shown, '"to":"RUNNING"'),
    `a later stopVm (from node, -> ${stopped.state}) shows up live in the response panel`, shown);
  check(socket.received.some((f) => f.includes('"from":"RUNNING"')), 'the websocket delivered the RUNNING→… change of the stop');
  await page.screenshot({ path: path.join(shots, 'playground-subscription.png') });
  console.log(`     screenshots in ${shots}`);

  await page.locator('.graphiql-execute-button').click(); // stop the subscription
  for (let i = 0; i < 40 && !socket.sent.some((f) => /"type":"complete"/.test(f)) && !ws.isClosed(); i++) await page.waitForTimeout(50);
  check(ws.isClosed() || socket.sent.some((f) => /"type":"complete"/.test(f)), 'stopping it in the page ends the subscription');
} catch (e) {
  check(false, 'exception', e?.stack ?? String(e));
  const page = context?.pages()[0];
  if (page) {
    await page.screenshot({ path: path.join(shots, 'playground-failure.png') }).catch(() => {});
    console.log(`     failure screenshot in ${shots}`);
  }
} finally {
  check(offLoopback.length === 0, 'no request left loopback', [...new Set(offLoopback)].join(' '));
  check(consoleProblems.length === 0, 'no console errors', consoleProblems.join('\n  '));
  await context?.close().catch(() => {});
  fs.rmSync(userDataDir, { recursive: true, force: true });
}
console.log(`${passed} passed, ${failures.length} failed`);
process.exit(failures.length ? 1 : 0);
