// Interop of two ordinary GraphQL clients with a live vman:
//
//   node tests/js/clients.mjs http://127.0.0.1:PORT/graphql ws://127.0.0.1:PORT/graphql/ws
//
// or, against a vman that serves TLS with a certificate from a CA of its own:
//
//   NODE_EXTRA_CA_CERTS=ca.pem node tests/js/clients.mjs \
//     https://127.0.0.1:PORT/graphql wss://127.0.0.1:PORT/graphql/ws
//
// - `graphql-ws` (createClient, with `ws` as the WebSocket): the query, the
//   mutations and the subscription all go over the websocket
//   (graphql-transport-ws).
// - Apollo Client 4: HttpLink (POST /graphql) for queries and mutations,
//   GraphQLWsLink (graphql-ws over /graphql/ws) for the subscription.
//
// Each client runs `{ health { ready } }`, createTemplate and createVm, then
// subscribes to vmStateChanged for its VM, starts the VM with a startVm
// mutation and must receive STOPPED→STARTING then STARTING→RUNNING, then a
// stopVm's first change pushed live.
// Names are unique per run, so the same server can be used again. Every wait
// has a timeout. Prints one line per check; exits non-zero on any failure.
import { ApolloClient, ApolloLink, HttpLink, InMemoryCache, gql } from '@apollo/client';
import { GraphQLWsLink } from '@apollo/client/link/subscriptions';
import { getMainDefinition } from '@apollo/client/utilities';
import { createClient } from 'graphql-ws';
import WebSocket from 'ws';

const [url, wsUrl] = process.argv.slice(2);
if (!url || !wsUrl) {
  console.error('usage: node clients.mjs http://127.0.0.1:PORT/graphql ws://127.0.0.1:PORT/graphql/ws');
  process.exit(2);
}

/** How long any single wait may take. */
const WAIT_MS = 10_000;
// A last resort: whatever hangs, the process ends.
setTimeout(() => {
  console.log('FAIL the whole run took more than 120 s');
  process.exit(1);
}, 120_000).unref();

const runId = `${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 6)}`;
let passed = 0;
let failed = 0;
function check(ok, what, detail = '') {
  if (ok) {
    passed++;
    console.log(`ok   ${what}`);
  } else {
    failed++;
    console.log(`FAIL ${what}${detail ? `: ${detail}` : ''}`);
  }
  return ok;
}

function within(promise, what, ms = WAIT_MS) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** A subscription's events as a queue: `next()` waits for the next one. */
class Events {
  constructor(what) {
    this.what = what;
    this.items = [];
    this.waiters = [];
  }
  push(item) {
    const waiter = this.waiters.shift();
    if (waiter) waiter(item);
    else this.items.push(item);
  }
  next() {
    const item = this.items.length
      ? Promise.resolve(this.items.shift())
      : new Promise((resolve) => this.waiters.push(resolve));
    return within(item, `the next ${this.what} event`).then((e) => {
      if (e.error) throw e.error;
      return e.data;
    });
  }
}

const describe = (errors) => JSON.stringify(errors?.errors ?? errors?.message ?? errors);

// ---- the two clients, behind one small interface ----------------------------

function graphqlWsClient() {
  const client = createClient({
    url: wsUrl,
    webSocketImpl: WebSocket,
    retryAttempts: 0,
    lazy: true,
  });
  return {
    name: 'graphql-ws',
    async request(query, variables) {
      const result = await within(
        new Promise((resolve, reject) => {
          let value;
          client.subscribe(
            { query, variables },
            {
              next: (v) => { value = v; },
              error: reject,
              complete: () => resolve(value),
            },
          );
        }),
        'a response',
      );
      if (result?.errors) throw new Error(`GraphQL errors: ${describe(result.errors)}`);
      return result.data;
    },
    subscribe(query, variables, events) {
      return client.subscribe(
        { query, variables },
        {
          next: (v) => events.push(v.errors ? { error: new Error(describe(v.errors)) } : { data: v.data }),
          error: (e) => events.push({ error: e instanceof Error ? e : new Error(describe(e)) }),
          complete: () => events.push({ error: new Error('subscription completed by the server') }),
        },
      );
    },
    async close() {
      await client.dispose();
    },
  };
}

function apolloClient() {
  const wsClient = createClient({ url: wsUrl, webSocketImpl: WebSocket, retryAttempts: 0 });
  const isSubscription = ({ query }) => {
    const def = getMainDefinition(query);
    return def.kind === 'OperationDefinition' && def.operation === 'subscription';
  };
  const link = ApolloLink.split(isSubscription, new GraphQLWsLink(wsClient), new HttpLink({ uri: url }));
  const client = new ApolloClient({
    link,
    cache: new InMemoryCache(),
    defaultOptions: {
      query: { fetchPolicy: 'no-cache' },
      mutate: { fetchPolicy: 'no-cache' },
    },
  });
  return {
    name: 'apollo',
    async request(query, variables) {
      const document = gql(query);
      const isMutation = getMainDefinition(document).operation === 'mutation';
      // Apollo rejects on GraphQL errors (errorPolicy "none").
      const result = await within(
        isMutation ? client.mutate({ mutation: document, variables }) : client.query({ query: document, variables }),
        'a response',
      );
      return result.data;
    },
    subscribe(query, variables, events) {
      const subscription = client
        .subscribe({ query: gql(query), variables, fetchPolicy: 'no-cache' })
        .subscribe({
          next: (r) => events.push(r.error ? { error: r.error } : { data: r.data }),
          error: (e) => events.push({ error: e }),
          complete: () => events.push({ error: new Error('subscription completed by the server') }),
        });
      return () => subscription.unsubscribe();
    },
    async close() {
      client.stop();
      await wsClient.dispose();
    },
  };
}

// ---- the walk, the same for each client ------------------------------------

const HEALTH = '{ health { ready } }';
const CREATE_TEMPLATE =
  'mutation($name: String!) { createTemplate(input: {name: $name, vcpus: 1, memoryMib: 128, defaultDiskSizeBytes: 1048576}) { template { id name } } }';
const CREATE_VM =
  'mutation($name: String!, $t: String!) { createVm(input: {name: $name, templateName: $t}) { vm { id name state } } }';
const START_VM = 'mutation($id: ID!) { startVm(id: $id) { vm { id state } } }';
const STOP_VM = 'mutation($id: ID!) { stopVm(id: $id) { vm { id state } } }';
const JOURNAL_PAGE =
  'query($after: String) { events(after: $after, first: 500) { edges { cursor node { sequence } } pageInfo { hasNextPage } } }';
const VM_STATE_CHANGED =
  'subscription($vm: ID, $after: String) { vmStateChanged(vmId: $vm, after: $after) { vmId from to reason sequence vm { name } } }';

/** The sequence of the newest journal event (null when the journal is empty). */
async function journalHead(client) {
  let after = null;
  let head = null;
  for (;;) {
    const { events } = await client.request(JOURNAL_PAGE, { after });
    if (events.edges.length) {
      after = events.edges.at(-1).cursor;
      head = events.edges.at(-1).node.sequence;
    }
    if (!events.pageInfo.hasNextPage) return head;
  }
}

async function walk(client) {
  const tag = client.name.padEnd(10);
  const prefix = client.name.replace(/[^a-z]/g, '');
  const templateName = `js-${prefix}-tpl-${runId}`;
  const vmName = `js-${prefix}-vm-${runId}`;

  const health = await client.request(HEALTH);
  check(typeof health?.health?.ready === 'boolean', `${tag} query { health { ready } } -> ready=${health?.health?.ready}`,
    JSON.stringify(health));

  const template = (await client.request(CREATE_TEMPLATE, { name: templateName })).createTemplate.template;
  check(!!template?.id && template.name === templateName, `${tag} mutation createTemplate ${templateName} -> id ${template?.id}`);

  const vm = (await client.request(CREATE_VM, { name: vmName, t: templateName })).createVm.vm;
  check(!!vm?.id && vm.name === vmName && vm.state === 'STOPPED', `${tag} mutation createVm ${vmName} -> ${vm?.state}`,
    JSON.stringify(vm));

  // Subscribing "after" the journal head leaves no window in which a change
  // could slip between subscribing and the server having set the stream up
  // (graphql-transport-ws does not acknowledge a subscribe).
  const head = await journalHead(client);
  const events = new Events(`${client.name} vmStateChanged`);
  const unsubscribe = client.subscribe(VM_STATE_CHANGED, { vm: vm.id, after: head }, events);
  try {
    const started = (await client.request(START_VM, { id: vm.id })).startVm.vm;
    check(started?.id === vm.id && ['STARTING', 'RUNNING'].includes(started?.state),
      `${tag} mutation startVm -> ${started?.state}`, JSON.stringify(started));

    const first = (await events.next()).vmStateChanged;
    const second = (await events.next()).vmStateChanged;
    const show = (c) => `${c?.from}→${c?.to} (${c?.reason ?? 'no reason'}, #${c?.sequence})`;
    check(first?.from === 'STOPPED' && first?.to === 'STARTING' && first.vmId === vm.id && first.vm?.name === vmName,
      `${tag} subscription vmStateChanged: ${show(first)}`, JSON.stringify(first));
    check(second?.from === 'STARTING' && second?.to === 'RUNNING' && second.vmId === vm.id && second.vm?.name === vmName,
      `${tag} subscription vmStateChanged: ${show(second)}`, JSON.stringify(second));
    check(Number(second?.sequence) === Number(first?.sequence) + 1,
      `${tag} the two changes are consecutive journal entries`);

    // The stream has caught up with the journal by now, so what a stopVm
    // changes can only arrive as a live push.
    await client.request(STOP_VM, { id: vm.id });
    const third = (await events.next()).vmStateChanged;
    check(third?.from === 'RUNNING' && third.vmId === vm.id && Number(third.sequence) > Number(second?.sequence),
      `${tag} subscription pushes a later stopVm live: ${show(third)}`, JSON.stringify(third));
  } finally {
    unsubscribe();
  }
}

for (const make of [graphqlWsClient, apolloClient]) {
  const client = make();
  const t0 = Date.now();
  try {
    await walk(client);
  } catch (e) {
    check(false, `${client.name} walk`, e?.stack ?? describe(e));
  } finally {
    await within(client.close(), `${client.name} to close`).catch((e) => check(false, `${client.name} closes`, e.message));
  }
  console.log(`     ${client.name} took ${Date.now() - t0} ms`);
}

console.log(`${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
