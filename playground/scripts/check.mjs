// End-to-end check of the built playground (run `npm run build` first):
// starts scripts/stub-server.mjs on a free loopback port, opens dist/ in
// headless Chromium (playwright-core, system Chromium — never downloads a
// browser) and walks the saved examples (src/examples.graphql), with an API
// token saved in the token bar. Any request to a non-loopback host fails the
// check. (tests/js/playground.mjs runs every example against vman itself.)
//
//   CHROMIUM=/usr/bin/chromium SHOTS=/tmp node scripts/check.mjs
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parse } from 'graphql';
import { chromium } from 'playwright-core';
import { startStub, log } from './stub-server.mjs';

// The saved examples' names, in order.
const examplesFile = fileURLToPath(new URL('../src/examples.graphql', import.meta.url));
const exampleNames = parse(fs.readFileSync(examplesFile, 'utf8')).definitions.map((d) => d.name.value);

const executablePath = process.env.CHROMIUM || '/usr/bin/chromium';
const shots = process.env.SHOTS || os.tmpdir();
const failures = [];
let passed = 0;
function check(ok, what) {
  if (ok) { passed++; console.log(`ok   ${what}`); } else { failures.push(what); console.log(`FAIL ${what}`); }
}
const isLoopback = (u) => {
  const { protocol, hostname } = new URL(u);
  if (protocol === 'data:' || protocol === 'blob:' || protocol === 'about:') return true;
  return hostname === '127.0.0.1' || hostname === 'localhost' || hostname === '[::1]' || /^127\./.test(hostname);
};

const { server, port } = await startStub(0);
const base = `http://127.0.0.1:${port}`;
const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'vman-pg-chromium-'));
const context = await chromium.launchPersistentContext(userDataDir, {
  executablePath,
  headless: true,
  viewport: { width: 1400, height: 900 },
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});

const offLoopback = [];
const consoleProblems = [];
await context.route('**/*', (route) => {
  const u = route.request().url();
  if (isLoopback(u)) return route.continue();
  offLoopback.push(u);
  return route.abort();
});
context.on('request', (r) => { if (!isLoopback(r.url())) offLoopback.push(r.url()); });
const watch = (page, name) => {
  page.on('console', (m) => {
    if (m.type() === 'error' || /fall(ing)? ?back|could not create web worker/i.test(m.text())) {
      consoleProblems.push(`${name}: ${m.type()}: ${m.text()}`);
    }
  });
  page.on('pageerror', (e) => consoleProblems.push(`${name}: pageerror: ${e.message}`));
  page.on('websocket', (ws) => { if (!isLoopback(ws.url())) offLoopback.push(ws.url()); });
};

const text = (s) => s.replace(/\u00a0/g, ' ');
const responseText = (page) => page.locator('.graphiql-response .view-lines').innerText().then(text);
const tabNames = (page) => page.locator('.graphiql-tab .graphiql-tab-button').allInnerTexts();
async function openTab(page, name) {
  // Exactly `name`: "StartVm" is also part of "PlanStartVm".
  await page.locator('.graphiql-tab .graphiql-tab-button').filter({ hasText: new RegExp(`^\\s*${name}\\s*$`) }).click();
  await page.waitForFunction((n) => document.querySelector('.graphiql-tab-active .graphiql-tab-button')?.textContent.trim() === n, name);
  // GraphiQL re-derives the operation name 100 ms (debounced) after the
  // editor content changes; clicking Run sooner sends the previous tab's
  // operationName ("Unknown operation named ..."). Humans never hit this.
  await page.waitForTimeout(300);
}
async function setQuery(page, query) {
  await page.locator('.graphiql-query-editor .monaco-editor').click();
  await page.keyboard.press('Control+A');
  await page.keyboard.press('Delete');
  await page.keyboard.insertText(query);
  await page.waitForTimeout(300); // see openTab
}
async function run(page, expect, timeout = 15000) {
  await page.locator('.graphiql-execute-button').click();
  await page.waitForFunction((e) => {
    const t = document.querySelector('.graphiql-response .view-lines')?.textContent.replace(/\u00a0/g, ' ') || '';
    return t.includes(e);
  }, expect, { timeout });
  return responseText(page);
}

try {
  // ---- page 1: /playground/ ------------------------------------------------
  const page = context.pages()[0] ?? await context.newPage();
  watch(page, 'page1');
  const t0 = Date.now();
  await page.goto(`${base}/playground/`);
  await page.locator('.graphiql-query-editor .monaco-editor').waitFor({ timeout: 30000 });
  console.log(`     editor visible after ${Date.now() - t0} ms`);
  check(await page.locator('.graphiql-container').isVisible(), 'GraphiQL renders at /playground/');
  check(JSON.stringify((await tabNames(page)).map((t) => t.trim())) === JSON.stringify(exampleNames),
    `examples preloaded as tabs: ${(await tabNames(page)).join(', ')}`);
  check(await page.locator('.vman-examples').isVisible(), 'Examples panel is open');
  check(await page.locator('.vman-example').count() === exampleNames.length, `Examples panel lists ${exampleNames.length} operations`);
  await page.waitForFunction(() => document.querySelector('.graphiql-query-editor .view-lines')?.textContent.includes('createTemplate'));

  // Token bar: the stub has no auth, like vman with auth.mode = "none".
  const tokenStatus = page.locator('.vman-token-status');
  await page.waitForSelector('.vman-token-status[data-state="open"]');
  check((await tokenStatus.innerText()).includes('No token needed'), `token bar: ${await tokenStatus.innerText()}`);
  check(await page.getByLabel('API token', { exact: true }).getAttribute('type') === 'password', 'the token field is a password field');
  // A saved token: kept in localStorage, and GraphiQL fetches the schema again with it.
  const introspectionsBefore = log.graphql.length;
  await page.getByLabel('API token', { exact: true }).fill('stub-token');
  await page.getByRole('button', { name: 'Save' }).click();
  await page.waitForFunction(() => localStorage.getItem('vman.playground.apiToken') === 'stub-token');
  for (let i = 0; i < 50 && !log.graphql.slice(introspectionsBefore).some((g) => g.operationName === 'IntrospectionQuery'); i++) await new Promise((r) => setTimeout(r, 100));
  check(log.graphql.slice(introspectionsBefore).some((g) => g.operationName === 'IntrospectionQuery' && g.headers.authorization === 'Bearer stub-token'),
    'saving a token fetches the schema again, with Authorization: Bearer <token>');

  // Header editor: enabled, and its contents reach the server.
  await page.getByRole('button', { name: 'Headers' }).click();
  const headerEditor = page.locator('.graphiql-editor-tool .monaco-editor').last();
  await headerEditor.click();
  await page.keyboard.insertText('{"x-vman-test": "hello-from-headers"}');
  check(text(await headerEditor.locator('.view-lines').innerText()).includes('"x-vman-test": "hello-from-headers"'),
    'header editor accepts input');

  // Step 1.
  const before = log.graphql.length;
  let out = await run(page, '"name": "tiny"');
  check(out.includes('"createTemplate"'), 'step 1 CreateTemplate ran; result panel shows the template');
  const sent = log.graphql.slice(before).find((g) => g.operationName === 'CreateTemplate');
  check(sent?.headers['x-vman-test'] === 'hello-from-headers', 'header editor contents sent as HTTP header on POST /graphql');
  check(sent?.headers.authorization === 'Bearer stub-token', 'the saved token sent as Authorization: Bearer on POST /graphql, next to them');
  check(log.graphql.some((g) => g.operationName === 'IntrospectionQuery'), 'schema introspection went to POST /graphql');
  await page.screenshot({ path: path.join(shots, 'playground-step1.png') });

  // Step 2.
  await openTab(page, 'CreateVm');
  out = await run(page, '"state": "STOPPED"');
  check(out.includes('"name": "vm1"'), 'step 2 CreateVm ran');

  // ---- page 2: a second browser tab runs the subscription ------------------
  const page2 = await context.newPage();
  watch(page2, 'page2');
  await page2.goto(`${base}/playground/`);
  await page2.locator('.graphiql-query-editor .monaco-editor').waitFor({ timeout: 30000 });
  await openTab(page2, 'WatchVmStates');
  await page2.getByRole('button', { name: 'Headers' }).click();
  await page2.locator('.graphiql-editor-tool .monaco-editor').last().click();
  await page2.keyboard.insertText('{"x-vman-test": "ws-params"}');
  const wsOpened = page2.waitForEvent('websocket', { timeout: 10000 });
  const wsInitBefore = log.wsInit.length;
  await page2.locator('.graphiql-execute-button').click();
  const ws = await wsOpened;
  check(ws.url() === `ws://127.0.0.1:${port}/graphql/ws`, `subscription uses websocket ${ws.url()}`);
  for (let i = 0; i < 50 && log.wsInit.length === wsInitBefore; i++) await new Promise((r) => setTimeout(r, 100));
  check(log.wsInit.at(-1)?.['x-vman-test'] === 'ws-params', 'header editor contents sent as graphql-ws connection_init payload');
  check(log.wsInit.at(-1)?.authorization === 'Bearer stub-token',
    'the token saved by the first page (localStorage) sent as {authorization: "Bearer <token>"} in connection_init');

  // ---- StartVm on page 1 (by name: no id to copy); events on page 2 --------
  await page.bringToFront();
  await openTab(page, 'StartVm');
  const startQuery = (await page.locator('.graphiql-query-editor .view-lines').innerText().then(text));
  check(startQuery.includes('startVm(name: "vm1")'), 'StartVm example names the VM, no id to paste');
  out = await run(page, '"state": "RUNNING"');
  check(out.includes('"SUCCEEDED"'), 'StartVm ran');
  await page.screenshot({ path: path.join(shots, 'playground-start.png') });

  await page2.bringToFront();
  await page2.waitForFunction(() => document.querySelector('.graphiql-response .view-lines')?.textContent.includes('RUNNING'), null, { timeout: 10000 });
  out = await responseText(page2);
  check(out.includes('"to": "RUNNING"') && out.includes('"reason": "booted"'), 'the subscription (WatchVmStates) shows the state change pushed over the websocket');
  await page2.screenshot({ path: path.join(shots, 'playground-subscription.png') });
  await page2.locator('.graphiql-execute-button').click(); // stop the subscription
  // A token saved in one tab applies in the other (the storage event).
  await page.getByLabel('API token', { exact: true }).fill('stub-token-2');
  await page.getByRole('button', { name: 'Save' }).click();
  await page2.waitForFunction(() => document.querySelector('.vman-token-input')?.value === 'stub-token-2');
  check(true, 'a token saved in one tab shows up in the other tab\'s token field');
  await page2.close();

  // ---- page 3: same files served at / ; fresh storage; Examples panel -----
  const page3 = await context.newPage();
  watch(page3, 'page3');
  await page3.goto(`${base}/`);
  await page3.evaluate(() => localStorage.clear());
  await page3.reload();
  await page3.locator('.graphiql-query-editor .monaco-editor').waitFor({ timeout: 30000 });
  check(await page3.locator('.vman-examples').isVisible(), 'same build renders at / (relative asset paths)');
  await page3.locator('.vman-example[data-example="CreateTemplate"]').click();
  check((await tabNames(page3)).length === exampleNames.length + 1, 'Examples panel opens an example in a new tab');
  await page3.waitForFunction(() => document.querySelector('.graphiql-tab-active')?.textContent.includes('CreateTemplate'));
  out = await run(page3, '"name": "tiny"');
  check(out.includes('"createTemplate"'), 'example opened from the panel runs at /');
  check(log.graphql.at(-1)?.headers.authorization === undefined, 'after localStorage.clear() no token is sent');
  // An Authorization typed into the header editor wins over the saved token
  // (one header, not both).
  await page3.getByLabel('API token', { exact: true }).fill('stub-token');
  await page3.getByRole('button', { name: 'Save' }).click();
  await page3.getByRole('button', { name: 'Headers' }).click();
  await page3.locator('.graphiql-editor-tool .monaco-editor').last().click();
  await page3.keyboard.insertText('{"Authorization": "Bearer typed-in-editor"}');
  await page3.waitForTimeout(300); // see openTab
  const beforeTyped = log.graphql.length;
  await run(page3, '"name": "tiny"');
  const typed = log.graphql.slice(beforeTyped).find((g) => g.operationName === 'CreateTemplate');
  check(typed?.headers.authorization === 'Bearer typed-in-editor',
    `an Authorization in the header editor replaces the saved token's (sent: ${typed?.headers.authorization})`);
  await page3.close();

  const served = log.requests.filter((r) => /worker/.test(r));
  check(served.length >= 3, `monaco workers served from loopback: ${[...new Set(served.map((r) => r.replace(/.*assets\//, '')))].join(', ')}`);
} catch (e) {
  failures.push(`exception: ${e.stack || e}`);
  console.log(`FAIL exception: ${e.stack || e}`);
  const p = context.pages()[0];
  if (p) await p.screenshot({ path: path.join(shots, 'playground-failure.png') }).catch(() => {});
} finally {
  check(offLoopback.length === 0, `no non-loopback requests${offLoopback.length ? ': ' + [...new Set(offLoopback)].join(' ') : ''}`);
  check(consoleProblems.length === 0, `no console errors${consoleProblems.length ? ':\n  ' + consoleProblems.join('\n  ') : ''}`);
  await context.close();
  server.close();
  fs.rmSync(userDataDir, { recursive: true, force: true });
}
console.log(`${passed} passed, ${failures.length} failed`);
process.exit(failures.length ? 1 : 0);
