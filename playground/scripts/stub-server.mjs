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
  enum VmState { STOPPED STARTING RUNNING STOPPING }
  scalar Bytes
  type Template { id: ID! name: String! vcpus: Int! memoryMib: Int! defaultDiskSizeBytes: Bytes }
  type Disk { name: String! sizeBytes: Bytes! }
  type Nic { mac: String! tap: String }
  type Network { id: ID! name: String! bridge: String! }
  type Vm {
    id: ID! name: String! state: VmState! stateReason: String template: Template!
    vcpus: Int! memoryMib: Int! disks: [Disk!]! nics: [Nic!]!
  }
  type PlanStep { action: String! summary: String! }
  type OperationStep { summary: String! }
  type Operation { status: String! steps: [OperationStep!]! }
  input CreateTemplateInput { name: String! vcpus: Int! memoryMib: Int! defaultDiskSizeBytes: Bytes }
  input CreateVmInput { name: String! templateName: String! }
  input CreateNetworkInput { name: String! vlanId: Int! }
  type TemplatePayload { template: Template }
  type VmPayload { vm: Vm plan: [PlanStep!] operation: Operation }
  type NetworkPayload { network: Network }
  type NicPayload { nic: Nic }
  type VmStateChange { vm: Vm from: VmState! to: VmState! reason: String sequence: Int! }
  enum Role { VIEWER OPERATOR ADMIN }
  type Me { actor: String! role: Role! }
  type Query { vms: [Vm!]! templates: [Template!]! vm(id: ID, name: String): Vm me: Me! }
  type Mutation {
    createTemplate(input: CreateTemplateInput!): TemplatePayload!
    deleteTemplate(id: ID, name: String): TemplatePayload!
    createVm(input: CreateVmInput!): VmPayload!
    startVm(id: ID, name: String, dryRun: Boolean = false): VmPayload!
    stopVm(id: ID, name: String, force: Boolean = false): VmPayload!
    deleteVm(id: ID, name: String): VmPayload!
    createNetwork(input: CreateNetworkInput!): NetworkPayload!
    deleteNetwork(id: ID, name: String): NetworkPayload!
    attachNic(vmId: ID, vmName: String, networkId: ID, networkName: String): NicPayload!
  }
  type Subscription { vmStateChanged: VmStateChange! }
`);

// Keyed by name; the saved examples name everything (ids work too).
const templates = new Map();
const vms = new Map();
const networks = new Map();
const listeners = new Set();
let sequence = 0;
let nextId = 1;
const newId = () => `00000000-0000-7000-8000-${String(nextId++).padStart(12, '0')}`;

function find(map, what, { id, name }) {
  const found = name != null ? map.get(name) : [...map.values()].find((x) => x.id === id);
  if (!found) throw new Error(`no ${what} ${name != null ? `named ${name}` : `with id ${id}`}`);
  return found;
}

function publish(vm, to, reason) {
  const event = { vm: { ...vm }, from: vm.state, to, reason, sequence: ++sequence };
  vm.state = to;
  vm.stateReason = reason;
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
  vm: (args) => find(vms, 'VM', args),
  // No auth here: everyone is vman's `local` admin, as with auth.mode = "none".
  me: () => ({ actor: 'local', role: 'ADMIN' }),
  createTemplate: ({ input }) => {
    const t = { id: newId(), defaultDiskSizeBytes: null, ...input };
    templates.set(t.name, t);
    return { template: t };
  },
  deleteTemplate: (args) => {
    const t = find(templates, 'template', args);
    templates.delete(t.name);
    return { template: t };
  },
  createVm: ({ input }) => {
    const template = find(templates, 'template', { name: input.templateName });
    const disks = template.defaultDiskSizeBytes ? [{ name: `${input.name}-root`, sizeBytes: template.defaultDiskSizeBytes }] : [];
    const vm = {
      id: newId(), name: input.name, state: 'STOPPED', stateReason: 'created', template,
      vcpus: template.vcpus, memoryMib: template.memoryMib, disks, nics: [],
    };
    vms.set(vm.name, vm);
    return { vm };
  },
  startVm: ({ dryRun, ...args }) => {
    const vm = find(vms, 'VM', args);
    const plan = [
      { action: 'createDir', summary: `create the run directory of VM ${vm.id}` },
      { action: 'spawnQemu', summary: `spawn QEMU for VM ${vm.id}` },
      { action: 'qmp', summary: 'cont' },
    ];
    if (dryRun) return { vm: { ...vm }, plan };
    publish(vm, 'STARTING', 'start requested');
    publish(vm, 'RUNNING', 'booted');
    return { vm: { ...vm }, operation: { status: 'SUCCEEDED', steps: plan } };
  },
  stopVm: (args) => {
    const vm = find(vms, 'VM', args);
    publish(vm, 'STOPPING', 'stop requested');
    publish(vm, 'STOPPED', 'stopped by QEMU quit');
    return { vm: { ...vm } };
  },
  deleteVm: (args) => {
    const vm = find(vms, 'VM', args);
    vms.delete(vm.name);
    return { vm, operation: { status: 'SUCCEEDED', steps: [] } };
  },
  createNetwork: ({ input }) => {
    const network = { id: newId(), name: input.name, bridge: `vmbr${input.vlanId}` };
    networks.set(network.name, network);
    return { network };
  },
  deleteNetwork: (args) => {
    const network = find(networks, 'network', args);
    networks.delete(network.name);
    return { network };
  },
  attachNic: ({ vmId, vmName, networkId, networkName }) => {
    const vm = find(vms, 'VM', { id: vmId, name: vmName });
    find(networks, 'network', { id: networkId, name: networkName });
    const nic = { mac: `52:54:00:00:00:${String(vm.nics.length + 1).padStart(2, '0')}`, tap: `vt${nextId++}` };
    vm.nics.push(nic);
    return { nic };
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
