// The playground as vman itself serves it, driven in headless Chromium:
//
//   node tests/js/playground.mjs http://127.0.0.1:PORT/graphql
//
// (any URL on the server will do: its origin is used). Opens the page at `/`,
// runs a query in GraphiQL and looks for its result in the response panel,
// then starts a vmStateChanged subscription in the page and makes the VM
// change state with mutations sent from node (not from the page), and looks
// for those changes in the response panel. The token bar says no token is
// needed.
//
// With PLAYGROUND_WALK=1 (a fresh dry-run server) it runs the saved examples
// instead (playground/src/examples.graphql, the README's walk): each from its
// own tab, in order, as a newcomer would, each answer without `errors`; the
// subscription among them runs in a second browser tab and shows the pushes
// of the steps after it. It also checks that every line of every example fits
// the query editor at 1400 px, and takes a screenshot of the walk at its
// LookAtVm step (written to PLAYGROUND_DOCS_SHOT too when that is set:
// docs/playground.png).
//
// With PLAYGROUND_ADMIN_TOKEN and PLAYGROUND_VIEWER_TOKEN set (a server with
// auth.mode = "token"), it walks the token bar instead: without a token the
// bar and the response panel say one is needed; a wrong token is refused; the
// viewer token pasted into the bar is kept over a reload, sent as
// `Authorization: Bearer` on every POST (introspection included) and in the
// websocket's connection_init, and a query and a subscription work with it;
// after Clear a subscription is refused (4403) at once. Node's own requests
// carry the admin token.
//
// Uses the system Chromium (CHROMIUM, default /usr/bin/chromium) through
// playwright-core and never downloads a browser. Every request the page makes
// is intercepted: one to a host other than loopback fails the test (and is
// aborted), and so do a console error and an uncaught page error (but for
// Chromium's "status of 401" lines where 401s are expected). Screenshots go
// to a fresh temp dir (or $SHOTS), whose path is printed.
// Prints one line per check; exits non-zero on any failure.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parse } from 'graphql';
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
const adminToken = process.env.PLAYGROUND_ADMIN_TOKEN || null;
const viewerToken = process.env.PLAYGROUND_VIEWER_TOKEN || null;
if (!adminToken !== !viewerToken) {
  console.log('FAIL set both PLAYGROUND_ADMIN_TOKEN and PLAYGROUND_VIEWER_TOKEN, or neither');
  process.exit(2);
}
/** The localStorage key of the token bar (playground/src/auth.js). */
const TOKEN_KEY = 'vman.playground.apiToken';

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
    headers: {
      'content-type': 'application/json',
      accept: 'application/json',
      ...(adminToken ? { authorization: `Bearer ${adminToken}` } : {}),
    },
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

/** Resolves with the first frame `ws` sent (`framesent`) or received
 * (`framereceived`) that `test` accepts, counting those already seen. */
function frame(socket, ws, event, test) {
  const seen = event === 'framesent' ? socket.sent : socket.received;
  const found = seen.find(test);
  if (found !== undefined) return Promise.resolve(found);
  return ws.waitForEvent(event, { predicate: (f) => test(String(f.payload)) }).then((f) => String(f.payload));
}
const tokenStatus = (page) => page.locator('.vman-token-status');
const tokenField = (page) => page.getByLabel('API token', { exact: true });
/** Waits for the token bar's state (`data-state`); its text. */
async function waitForTokenState(page, state) {
  await page.locator(`.vman-token-status[data-state="${state}"]`).waitFor();
  return tokenStatus(page).innerText();
}
/** Loads the page at `/` and waits until GraphiQL has set up its tabs and the
 * active one shows `expect` (the first example's, on a first visit). */
async function openPlayground(page, expect = 'createTemplate') {
  const t1 = Date.now();
  const response = await page.goto(`${origin}/`);
  check(response?.ok() && /text\/html/.test(response.headers()['content-type'] ?? ''),
    `GET ${origin}/ -> ${response?.status()} ${response?.headers()['content-type']}`);
  await page.locator('.graphiql-query-editor .monaco-editor').waitFor({ timeout: FIRST_LOAD_MS });
  check(await page.locator('.graphiql-container').isVisible(), `GraphiQL renders at / (editor after ${Date.now() - t1} ms)`);
  // GraphiQL fills the first tab with the first example once its tabs are
  // set up; editing the editor before that can be overwritten.
  await page.waitForFunction((e) => document.querySelector('.graphiql-query-editor .view-lines')?.textContent.includes(e), expect);
}
/** A template and a stopped VM made by node over HTTP; the VM. */
async function makeVm() {
  const templateName = `pg-tpl-${runId}`;
  const vmName = `pg-vm-${runId}`;
  await gql('mutation($name: String!) { createTemplate(input: {name: $name, vcpus: 1, memoryMib: 128}) { template { id } } }',
    { name: templateName });
  const vm = (await gql('mutation($name: String!, $t: String!) { createVm(input: {name: $name, templateName: $t}) { vm { id state } } }',
    { name: vmName, t: templateName })).createVm.vm;
  check(vm.state === 'STOPPED', `node created VM ${vmName} (${vm.id}) over HTTP`);
  return { ...vm, name: vmName, templateName };
}
const findVmQuery = (vm) => `query FindVm { health { ready } vm(name: "${vm.name}") { id name state template { name } } }`;
/** The POSTs to /graphql the page makes from now on: operation name and headers. */
function recordPosts(page) {
  const posts = [];
  page.on('request', (r) => {
    if (r.method() !== 'POST' || new URL(r.url()).pathname !== '/graphql') return;
    let operationName = null;
    try { operationName = JSON.parse(r.postData() ?? '{}').operationName ?? null; } catch { /* not JSON */ }
    posts.push({ operationName, authorization: r.headers().authorization ?? null, request: r });
  });
  return posts;
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

  // Console errors, page errors and websockets of every page (the walk opens
  // a second one).
  const sockets = [];
  const watchPage = (page) => {
    page.on('console', (m) => {
      if (m.type() !== 'error') return;
      // Chromium logs every 401 response; with tokens, 401s are the point.
      if (adminToken && /status of 401/.test(m.text())) return;
      consoleProblems.push(`console error: ${m.text()}`);
    });
    page.on('pageerror', (e) => consoleProblems.push(`page error: ${e.message}`));
    page.on('websocket', (ws) => {
      if (!isLoopback(ws.url())) offLoopback.push(ws.url());
      const socket = { ws, url: ws.url(), sent: [], received: [] };
      sockets.push(socket);
      ws.on('framesent', (f) => socket.sent.push(String(f.payload)));
      ws.on('framereceived', (f) => socket.received.push(String(f.payload)));
    });
  };
  // (A persistent context opens with a page: the event misses that one.)
  const first = context.pages()[0];
  if (first) watchPage(first);
  context.on('page', watchPage);
  const page = first ?? await context.newPage();
  const posts = recordPosts(page);

  if (adminToken) await withTokens(page, sockets, posts);
  else if (process.env.PLAYGROUND_WALK) await walkExamples(page, sockets, posts);
  else await withoutAuth(page, sockets);
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

// ---- auth.mode = "none": the page as it always was ------------------------
async function withoutAuth(page, sockets) {
  await openPlayground(page);
  check(await page.locator('.vman-examples').isVisible(), 'the Examples panel is open');
  const open = await waitForTokenState(page, 'open');
  check(open.includes('No token needed') && open.includes('local'), `the token bar says: ${open}`);

  // ---- a query, its result in the response panel --------------------------
  const vm = await makeVm();
  await setQuery(page, findVmQuery(vm));
  await page.locator('.graphiql-execute-button').click();
  await waitForResponse(page, [`"name":"${vm.name}"`, '"state":"STOPPED"']);
  const out = await responseText(page);
  check(has(out, `"id":"${vm.id}"`, `"template":{"name":"${vm.templateName}"}`, '"health":{"ready":'),
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
  const socket = sockets.find((s) => s.ws === ws);
  const subscribe = await frame(socket, ws, 'framesent', (f) => /"type":"subscribe"/.test(f));
  check(subscribe.includes('vmStateChanged'), 'the page sent the subscribe message over the websocket');

  const started = (await gql('mutation($id: ID!) { startVm(id: $id) { vm { state } } }', { id: vm.id })).startVm.vm;
  check(['STARTING', 'RUNNING'].includes(started.state), `node ran startVm over HTTP -> ${started.state}`);
  await waitForResponse(page, ['"vmStateChanged"', '"to":"RUNNING"', `"name":"${vm.name}"`]);
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

  await stopSubscription(page, socket);
}

/** Clicks Run again (it is Stop while a subscription runs); the socket ends
 * it with `complete`, or closes. */
async function stopSubscription(page, socket) {
  // (Waiting for a frame fails when the socket closes first: that ends it too.)
  const ended = Promise.race([
    frame(socket, socket.ws, 'framesent', (f) => /"type":"complete"/.test(f)).then(() => true, () => socket.ws.isClosed()),
    socket.ws.isClosed() || socket.ws.waitForEvent('close').then(() => true, () => false),
  ]);
  await page.locator('.graphiql-execute-button').click();
  check(await ended, 'stopping it in the page ends the subscription');
}

// ---- auth.mode = "token": the token bar -----------------------------------
async function withTokens(page, sockets, posts) {
  await openPlayground(page);

  // ---- no token: the bar and the response panel say one is needed --------
  const needs = await waitForTokenState(page, 'needs-token');
  check(needs.includes('needs a token'), `without a token the token bar says: ${needs}`);
  check(await tokenField(page).getAttribute('type') === 'password', 'the token field is a password field');
  // GraphiQL's schema fetch got a 401: it shows the answer, with the hint.
  await waitForResponse(page, ['ThisvmanneedsanAPItoken', '"code":"UNAUTHENTICATED"', 'anAPItokenisrequired']);
  check(posts.some((p) => p.operationName === 'IntrospectionQuery' && p.authorization === null),
    'the schema fetch went out without Authorization and its 401 says to paste a token');

  const vm = await makeVm();
  await setQuery(page, findVmQuery(vm));
  let before = posts.length;
  await page.locator('.graphiql-execute-button').click();
  await waitForResponse(page, ['ThisvmanneedsanAPItoken', '"code":"UNAUTHENTICATED"', 'anAPItokenisrequired']);
  let shown = await responseText(page);
  check(!has(shown, `"id":"${vm.id}"`) && posts.slice(before).some((p) => p.operationName === 'FindVm' && p.authorization === null),
    'query FindVm without a token: the response panel says to paste a token, and shows no VM', shown);
  await page.screenshot({ path: path.join(shots, 'playground-token-needed.png') });

  // ---- a wrong token is refused -------------------------------------------
  await tokenField(page).fill('vman_not-a-real-token_x');
  await page.getByRole('button', { name: 'Save' }).click();
  const refused = await waitForTokenState(page, 'refused');
  check(refused.includes('refused') && refused.includes('unknown or revoked token'), `a wrong token: the token bar says: ${refused}`);
  // GraphiQL fetched the schema again with it: its 401 replaces the answer
  // shown before. (Waiting for it also keeps that late answer from landing
  // after the next token's.)
  await waitForResponse(page, ['vmanrefusedthisAPItoken', 'unknownorrevokedtoken']);

  // ---- the viewer's token: who you are, and the schema with it ------------
  before = posts.length;
  const introspected = page.waitForResponse((r) => r.request().method() === 'POST' &&
    r.request().headers().authorization === `Bearer ${viewerToken}` && /IntrospectionQuery/.test(r.request().postData() ?? ''));
  await tokenField(page).fill(viewerToken);
  await page.getByRole('button', { name: 'Save' }).click();
  const me = await waitForTokenState(page, 'signed-in');
  check(me.includes('viewer') && me.includes('VIEWER'), `with the viewer's token the token bar says: ${me}`);
  check((await introspected).status() === 200, 'saving it fetched the schema again, with Authorization: Bearer <token>, and got 200');
  check(await page.evaluate((key) => localStorage.getItem(key), TOKEN_KEY) === viewerToken, 'the token is in localStorage');
  // The "needs a token" answer of before is gone from the response panel.
  await page.waitForFunction(() => !document.querySelector('.graphiql-response .view-lines')?.textContent.includes('vman-playground'));

  // ---- a reload keeps it; a query with it ---------------------------------
  // (GraphiQL restores its tabs: the active one still holds FindVm.)
  await openPlayground(page, 'FindVm');
  const again = await waitForTokenState(page, 'signed-in');
  check(again.includes('viewer') && await tokenField(page).inputValue() === viewerToken,
    `after a reload the token is still there: ${again}`);
  await setQuery(page, findVmQuery(vm));
  before = posts.length;
  await page.locator('.graphiql-execute-button').click();
  await waitForResponse(page, [`"name":"${vm.name}"`, '"state":"STOPPED"']);
  shown = await responseText(page);
  check(has(shown, `"id":"${vm.id}"`, `"template":{"name":"${vm.templateName}"}`),
    'query FindVm with the token: the response panel shows the VM', shown);
  const sent = posts.slice(before).filter((p) => p.operationName === 'FindVm');
  check(sent.length === 1 && sent[0].authorization === `Bearer ${viewerToken}`,
    `FindVm went out with Authorization: Bearer <viewer token> (${sent.map((p) => p.authorization?.slice(0, 12)).join(', ')}…)`);
  await page.screenshot({ path: path.join(shots, 'playground-token-query.png') });

  // ---- a subscription with it; mutations from node, as admin --------------
  const head = await journalHead();
  await setQuery(page,
    `subscription WatchVm { vmStateChanged(vmId: "${vm.id}", after: "${head}") { vmId from to reason sequence vm { name } } }`);
  let wsOpened = page.waitForEvent('websocket');
  await page.locator('.graphiql-execute-button').click();
  let ws = await wsOpened;
  let socket = sockets.find((s) => s.ws === ws);
  const init = JSON.parse(await frame(socket, ws, 'framesent', (f) => /"type":"connection_init"/.test(f)));
  check(init.payload?.authorization === `Bearer ${viewerToken}`,
    'the websocket\'s connection_init carries {"authorization": "Bearer <viewer token>"}', JSON.stringify(init.payload));
  await frame(socket, ws, 'framereceived', (f) => /"type":"connection_ack"/.test(f));
  const subscribe = await frame(socket, ws, 'framesent', (f) => /"type":"subscribe"/.test(f));
  check(subscribe.includes('vmStateChanged'), 'vman acknowledged the connection and the page subscribed');

  const started = (await gql('mutation($id: ID!) { startVm(id: $id) { vm { state } } }', { id: vm.id })).startVm.vm;
  check(['STARTING', 'RUNNING'].includes(started.state), `node ran startVm as admin over HTTP -> ${started.state}`);
  await waitForResponse(page, ['"vmStateChanged"', '"to":"RUNNING"', `"name":"${vm.name}"`]);
  shown = await responseText(page);
  check(has(shown, `"vmId":"${vm.id}"`, '"from":"STARTING"'), 'the response panel shows the pushed STARTING→RUNNING change', shown);
  await page.screenshot({ path: path.join(shots, 'playground-token-subscription.png') });
  await stopSubscription(page, socket);

  // ---- Clear: no token again, and a subscription is refused at once -------
  await page.getByRole('button', { name: 'Clear' }).click();
  const cleared = await waitForTokenState(page, 'needs-token');
  check(cleared.includes('needs a token') && await tokenField(page).inputValue() === '' &&
    await page.evaluate((key) => localStorage.getItem(key), TOKEN_KEY) === null,
  'Clear empties the field and localStorage, and the bar says a token is needed');
  const opened = sockets.length;
  wsOpened = page.waitForEvent('websocket');
  await page.locator('.graphiql-execute-button').click();
  ws = await wsOpened;
  socket = sockets.find((s) => s.ws === ws);
  const bare = JSON.parse(await frame(socket, ws, 'framesent', (f) => /"type":"connection_init"/.test(f)));
  check(bare.payload?.authorization === undefined, 'without a token connection_init has no authorization', JSON.stringify(bare.payload));
  // graphql-ws would retry a 4403 for about 30 s; the playground does not.
  await waitForResponse(page, ['ThisvmanneedsanAPItoken', 'Thewebsocketwasclosedwith4403']);
  check(sockets.length === opened + 1, `the refused subscription opened one websocket, not more (${sockets.length - opened})`);
  await page.screenshot({ path: path.join(shots, 'playground-token-refused-ws.png') });
  console.log(`     screenshots in ${shots}`);
}

// ---- PLAYGROUND_WALK: every saved example, in order -----------------------
// (Functions only down here: the code at the top runs before any `const`
// below is set.)

/** The saved examples, split as the page splits them
 * (playground/src/examples.js): each operation with the comment lines
 * directly above it. */
function savedExamples() {
  const file = fileURLToPath(new URL('../../playground/src/examples.graphql', import.meta.url));
  const text = fs.readFileSync(file, 'utf8');
  return parse(text).definitions.map((def) => {
    const before = text.slice(0, def.loc.start).split('\n');
    before.pop();
    const comments = [];
    for (let i = before.length - 1; i >= 0 && before[i].trim().startsWith('#'); i--) comments.unshift(before[i]);
    return {
      name: def.name.value,
      kind: def.operation,
      lines: [...comments, ...text.slice(def.loc.start, def.loc.end).split('\n')],
    };
  });
}

function tabTitles(page) {
  return page.locator('.graphiql-tab .graphiql-tab-button').allInnerTexts().then((all) => all.map((t) => t.trim()));
}
/** Makes the tab titled `name` the active one, as a user clicking it does. */
async function openTab(page, name) {
  await page.locator('.graphiql-tab .graphiql-tab-button').filter({ hasText: new RegExp(`^\\s*${name}\\s*$`) }).click();
  await page.waitForFunction((n) => document.querySelector('.graphiql-tab-active .graphiql-tab-button')?.textContent.trim() === n, name);
  await page.waitForFunction((n) => document.querySelector('.graphiql-query-editor .view-lines')?.textContent.includes(n), name);
  // As in setQuery: GraphiQL re-derives the operation name 100 ms after the
  // editor changes, and nothing in the page says when it has.
  await page.waitForTimeout(300);
}

/** How many characters a line of the query editor shows without scrolling:
 * up to the editor's vertical scrollbar, or to GraphiQL's toolbar (Run,
 * prettify, …) where that covers the editor. Fira Code is monospaced. */
function editorColumns(page) {
  return page.evaluate(() => {
    const editor = document.querySelector('.graphiql-query-editor .monaco-editor');
    const lines = editor.querySelector('.view-lines');
    const visible = editor.querySelector('.monaco-scrollable-element').getBoundingClientRect();
    const scrollbar = editor.querySelector('.scrollbar.vertical')?.getBoundingClientRect();
    const toolbar = document.querySelector('.graphiql-query-editor .graphiql-toolbar')?.getBoundingClientRect();
    const span = [...lines.querySelectorAll('.view-line > span')].find((s) => s.textContent.length >= 10);
    const charWidth = span.getBoundingClientRect().width / span.textContent.length;
    const edges = [visible.right, scrollbar?.width ? scrollbar.left : Infinity, toolbar?.width ? toolbar.left : Infinity];
    const width = Math.min(...edges) - lines.getBoundingClientRect().left;
    return { columns: Math.floor(width / charWidth), width: Math.round(width), charWidth, edges, left: lines.getBoundingClientRect().left };
  });
}

/** What each example's answer must show, besides having no errors. */
function expectations() {
  return {
  CreateTemplate: (d) => d.createTemplate.template.name === 'tiny',
  CreateVm: (d) => d.createVm.vm.state === 'STOPPED' && d.createVm.vm.disks[0].sizeBytes === 1073741824,
  PlanStartVm: (d) => d.startVm.plan.map((s) => s.action).join() === 'createDir,spawnQemu,qmp',
  CreateNetwork: (d) => d.createNetwork.network.bridge === 'vmbr10',
  AttachNic: (d) => d.attachNic.nic.mac.length === 17,
  StartVm: (d) => d.startVm.vm.state === 'RUNNING' && d.startVm.operation.status === 'SUCCEEDED',
  LookAtVm: (d) => d.vm.state === 'RUNNING' && d.vm.nics.length === 1 && d.vm.disks.length === 1,
  StopVm: (d) => d.stopVm.vm.state === 'STOPPED',
  DeleteVm: (d) => d.deleteVm.operation.status === 'SUCCEEDED',
  DeleteNetwork: (d) => d.deleteNetwork.network.name === 'lan',
  DeleteTemplate: (d) => d.deleteTemplate.template.name === 'tiny',
  };
}

/** Runs the example in the active tab of `page`: its answer (over HTTP). */
async function runExample(page, name) {
  const answered = page.waitForResponse((r) => {
    if (r.request().method() !== 'POST' || new URL(r.url()).pathname !== '/graphql') return false;
    try { return JSON.parse(r.request().postData() ?? '{}').operationName === name; } catch { return false; }
  });
  await page.locator('.graphiql-execute-button').click();
  const response = await answered;
  const body = await response.json();
  // The response panel shows it too.
  const first = Object.keys(body.data ?? {})[0] ?? 'errors';
  await waitForResponse(page, [`"${first}"`]);
  return { status: response.status(), body, shown: await responseText(page) };
}

/** Starts the subscription example `name` in a second browser tab of the
 * playground, as its description says; the tab and its socket. */
async function subscribeInSecondTab(sockets, name) {
  const page2 = await context.newPage();
  await page2.goto(`${origin}/`);
  await page2.locator('.graphiql-query-editor .monaco-editor').waitFor({ timeout: FIRST_LOAD_MS });
  await openTab(page2, name);
  const wsOpened = page2.waitForEvent('websocket');
  await page2.locator('.graphiql-execute-button').click();
  const ws = await wsOpened;
  const socket = sockets.find((s) => s.ws === ws);
  const subscribe = await frame(socket, ws, 'framesent', (f) => /"type":"subscribe"/.test(f));
  check(subscribe.includes(`"operationName":"${name}"`),
    `${name} runs in a second browser tab: it opened ${ws.url()} and subscribed`, subscribe);
  return { page2, socket };
}

async function walkExamples(page, sockets, posts) {
  const examples = savedExamples();
  const names = examples.map((ex) => ex.name);
  await openPlayground(page);
  check(JSON.stringify(await tabTitles(page)) === JSON.stringify(names),
    `on a first visit the tabs are the ${names.length} saved examples, in order: ${names.join(', ')}`, (await tabTitles(page)).join(', '));
  const listed = await page.locator('.vman-example').evaluateAll((all) => all.map((b) => b.dataset.example));
  check(JSON.stringify(listed) === JSON.stringify(names), 'the Examples panel lists them in the same order', listed.join(', '));

  // Every line of every example fits the editor (none is cut at the right).
  const { columns, width, ...geometry } = await editorColumns(page);
  console.log(`     the query editor: ${JSON.stringify(geometry)}`);
  const tooLong = examples.flatMap((ex) => ex.lines.filter((l) => l.length > columns).map((l) => `${ex.name}: ${l}`));
  check(columns >= 40 && tooLong.length === 0,
    `every line of every example fits the query editor at 1400 px (${columns} characters, ${width} px)`, tooLong.join('\n  '));

  let watch = null;
  for (const [i, ex] of examples.entries()) {
    const step = `${i + 1}. ${ex.name}`;
    if (ex.kind === 'subscription') {
      watch = await subscribeInSecondTab(sockets, ex.name);
      await page.bringToFront();
      continue;
    }
    await openTab(page, ex.name);
    const before = posts.length;
    const { status, body, shown } = await runExample(page, ex.name);
    const expect = expectations()[ex.name];
    check(status === 200 && !body.errors && body.data && (!expect || expect(body.data)) && !compact(shown).includes('"errors"'),
      `${step} ran from its tab: ${JSON.stringify(body).slice(0, 160)}`, JSON.stringify(body));
    check(posts.slice(before).filter((p) => p.operationName === ex.name).length === 1, `${step} was sent once`);
    if (ex.name === 'LookAtVm') {
      await page.screenshot({ path: path.join(shots, 'playground-walk.png') });
      if (process.env.PLAYGROUND_DOCS_SHOT) {
        fs.copyFileSync(path.join(shots, 'playground-walk.png'), process.env.PLAYGROUND_DOCS_SHOT);
        console.log(`     screenshot of the walk written to ${process.env.PLAYGROUND_DOCS_SHOT}`);
      }
    }
    // The subscription in the other tab shows the state changes as they happen.
    const to = { StartVm: 'RUNNING', StopVm: 'STOPPED' }[ex.name];
    if (watch && to) {
      await waitForResponse(watch.page2, ['"vmStateChanged"', '"name":"vm1"', `"to":"${to}"`]);
      const pushed = await responseText(watch.page2);
      check(!compact(pushed).includes('"errors"'), `${step}: the second tab's subscription shows the push (to ${to})`, pushed);
    }
  }
  check(watch !== null, 'the walk has a subscription example, and it ran');
  if (watch) {
    const nexts = watch.socket.received.filter((f) => /"type":"next"/.test(f));
    check(nexts.length >= 4 && nexts.every((f) => !f.includes('"errors"')),
      `the subscription received ${nexts.length} state changes, none with errors`, nexts.join('\n  '));
    await stopSubscription(watch.page2, watch.socket);
    await watch.page2.close();
  }

  // The walk leaves the server as it found it, so it can be run again.
  const left = await gql('{ templates { totalCount } vms { totalCount } disks { totalCount } networks { totalCount } }');
  check(Object.values(left).every((c) => c.totalCount === 0), `the walk left nothing behind: ${JSON.stringify(left)}`);
  console.log(`     screenshots in ${shots}`);
}
