// A tiny stand-in for vman, for checking the playground without the Rust
// server: serves dist/ at / and at /playground/, answers POST /graphql with
// graphql-js over a toy schema shaped like vman's, and speaks graphql-ws
// (graphql-transport-ws) at /graphql/ws. Loopback only.
//
//   node scripts/stub-server.mjs [port]      (default 4000; 0 = any free port)
import http from 'node:http';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { buildSchema, graphql } from 'graphql';
import { WebSocketServer } from 'ws';
import { useServer } from 'graphql-ws/use/ws';

const here = path.dirname(fileURLToPath(import.meta.url));
const DIST = path.resolve(here, '..', 'dist');

const schema = buildSchema(`
  enum VmState { STOPPED STARTING RUNNING }
  type Template { id: ID! name: String! vcpus: Int! memoryMib: Int! }
  type Vm { id: ID! name: String! state: VmState! template: Template! }
  input CreateTemplateInput { name: String! vcpus: Int! memoryMib: Int! }
  input CreateVmInput { name: String! templateName: String! }
  type TemplatePayload { template: Template! }
  type VmPayload { vm: Vm! }
  type VmStateChange { vm: Vm! from: VmState! to: VmState! reason: String! sequence: Int! }
  enum Role { VIEWER OPERATOR ADMIN }
  type Me { actor: String! role: Role! }
  type Query { vms: [Vm!]! templates: [Template!]! me: Me! }
  type Mutation {
    createTemplate(input: CreateTemplateInput!): TemplatePayload!
    createVm(input: CreateVmInput!): VmPayload!
    startVm(id: ID!): VmPayload!
  }
  type Subscription { vmStateChanged: VmStateChange! }
`);

const templates = new Map();
const vms = new Map();
const listeners = new Set();
let sequence = 0;
let nextId = 1;

function publish(vm, to, reason) {
  const event = { vm: { ...vm }, from: vm.state, to, reason, sequence: ++sequence };
  vm.state = to;
  event.vm.state = to;
  for (const l of listeners) l(event);
}

// A push-based async iterator for one subscriber.
function stateChanges() {
  const queue = [];
  let wake = null;
  let done = false;
  const listener = (ev) => {
    queue.push(ev);
    if (wake) { wake(); wake = null; }
  };
  listeners.add(listener);
  return {
    [Symbol.asyncIterator]() { return this; },
    async next() {
      while (!done && queue.length === 0) await new Promise((r) => { wake = r; });
      if (done) return { done: true, value: undefined };
      return { done: false, value: { vmStateChanged: queue.shift() } };
    },
    async return() {
      done = true;
      listeners.delete(listener);
      if (wake) wake();
      return { done: true, value: undefined };
    },
  };
}

const rootValue = {
  vms: () => [...vms.values()],
  templates: () => [...templates.values()],
  // No auth here: everyone is vman's `local` admin, as with auth.mode = "none".
  me: () => ({ actor: 'local', role: 'ADMIN' }),
  createTemplate: ({ input }) => {
    const t = { id: `t${nextId++}`, ...input };
    templates.set(t.name, t);
    return { template: t };
  },
  createVm: ({ input }) => {
    const template = templates.get(input.templateName);
    if (!template) throw new Error(`no template named ${input.templateName}`);
    const vm = { id: `00000000-0000-7000-8000-${String(nextId++).padStart(12, '0')}`, name: input.name, state: 'STOPPED', template };
    vms.set(vm.id, vm);
    return { vm };
  },
  startVm: ({ id }) => {
    const vm = vms.get(id);
    if (!vm) throw new Error(`no VM with id ${id}`);
    publish(vm, 'STARTING', 'start requested');
    setTimeout(() => publish(vm, 'RUNNING', 'booted'), 300);
    return { vm: { ...vm } };
  },
  vmStateChanged: () => stateChanges(),
};

// What the check script inspects.
export const log = { requests: [], graphql: [], wsInit: [] };

const TYPES = {
  '.html': 'text/html; charset=utf-8', '.js': 'text/javascript', '.css': 'text/css',
  '.ttf': 'font/ttf', '.woff2': 'font/woff2', '.svg': 'image/svg+xml', '.json': 'application/json',
};

function serveStatic(req, res, urlPath) {
  let rel = urlPath;
  if (rel.startsWith('/playground/')) rel = rel.slice('/playground'.length);
  else if (rel === '/playground') { res.writeHead(301, { location: '/playground/' }); return res.end(); }
  if (rel.endsWith('/')) rel += 'index.html';
  const file = path.join(DIST, path.normalize(decodeURIComponent(rel)));
  if (!file.startsWith(DIST) || !fs.existsSync(file) || !fs.statSync(file).isFile()) {
    res.writeHead(404, { 'content-type': 'text/plain' });
    return res.end('not found');
  }
  res.writeHead(200, { 'content-type': TYPES[path.extname(file)] || 'application/octet-stream' });
  fs.createReadStream(file).pipe(res);
}

async function handleGraphql(req, res) {
  let body = '';
  for await (const chunk of req) body += chunk;
  let params;
  try { params = JSON.parse(body); } catch {
    res.writeHead(400, { 'content-type': 'application/json' });
    return res.end(JSON.stringify({ errors: [{ message: 'bad JSON' }] }));
  }
  log.graphql.push({ operationName: params.operationName ?? null, headers: req.headers, query: params.query });
  const result = await graphql({
    schema, source: params.query, rootValue,
    variableValues: params.variables, operationName: params.operationName,
  });
  res.writeHead(200, { 'content-type': 'application/graphql-response+json; charset=utf-8' });
  res.end(JSON.stringify(result));
}

export function startStub(port = 4000) {
  const server = http.createServer((req, res) => {
    const urlPath = new URL(req.url, 'http://x').pathname;
    log.requests.push(`${req.method} ${urlPath}`);
    if (urlPath === '/graphql' && req.method === 'POST') return void handleGraphql(req, res);
    if (req.method === 'GET') return serveStatic(req, res, urlPath);
    res.writeHead(405); res.end();
  });
  const wss = new WebSocketServer({ server, path: '/graphql/ws' });
  useServer({
    schema,
    roots: { query: rootValue, mutation: rootValue, subscription: rootValue },
    onConnect: (ctx) => { log.wsInit.push(ctx.connectionParams ?? null); return true; },
  }, wss);
  return new Promise((resolve) => {
    server.listen(port, '127.0.0.1', () => resolve({ server, wss, port: server.address().port }));
  });
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const port = Number(process.argv[2] ?? 4000);
  const { port: p } = await startStub(port);
  console.log(`stub vman on http://127.0.0.1:${p}/ and http://127.0.0.1:${p}/playground/`);
}
