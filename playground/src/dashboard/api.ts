// How the dashboard talks to vman: POST /graphql for queries and mutations,
// graphql-ws on /graphql/ws for subscriptions, both on the page's origin and
// both with the API token (kept in sessionStorage) when there is one:
// `Authorization: Bearer` on HTTP, `{authorization}` in `connection_init`.
// Both take a typed document (documents.ts) and give its typed result.
import { print } from '@0no-co/graphql.web';
import { createClient, type Client, type EventListener } from 'graphql-ws';
import { HEAD } from './documents.ts';
import type { TadaDocumentNode } from './graphql.ts';

const HTTP_URL = new URL('/graphql', window.location.href).href;
const WS_URL = HTTP_URL.replace(/^http/, 'ws') + '/ws';
const TOKEN_KEY = 'vman.dashboard.apiToken';

export const auth = new EventTarget();

export function token(): string {
  try { return sessionStorage.getItem(TOKEN_KEY) || ''; } catch { return ''; }
}

export function setToken(value: string): void {
  const clean = value.trim().replace(/^bearer\s+/i, '').trim();
  try {
    if (clean) sessionStorage.setItem(TOKEN_KEY, clean); else sessionStorage.removeItem(TOKEN_KEY);
  } catch { /* storage disabled */ }
  auth.dispatchEvent(new Event('changed'));
}

function needsToken(message: string): void {
  auth.dispatchEvent(new CustomEvent('needed', { detail: message }));
}

/** An error with vman's `extensions.code`. */
export class ApiError extends Error {
  code: string;
  constructor(message: string, code: string) { super(message); this.code = code; }
}

interface GraphQLError { message: string; extensions?: { code?: string } }
interface Response<T> { data?: T; errors?: GraphQLError[] }

/** The document's text, printed once. */
const texts = new WeakMap<object, string>();
function text(document: TadaDocumentNode<unknown, never>): string {
  let t = texts.get(document);
  if (t === undefined) { t = print(document); texts.set(document, t); }
  return t;
}

type Vars = Record<string, unknown>;

/** Runs a query or mutation; its `data`, or throws an ApiError. */
export async function request<R, V extends Vars>(document: TadaDocumentNode<R, V>, variables?: V): Promise<R> {
  const headers: Record<string, string> = { 'content-type': 'application/json', accept: 'application/json' };
  if (token()) headers.authorization = `Bearer ${token()}`;
  let response;
  try {
    response = await fetch(HTTP_URL, { method: 'POST', headers, body: JSON.stringify({ query: text(document), variables: variables ?? {} }) });
  } catch (e) {
    throw new ApiError(`cannot reach vman: ${(e as Error).message}`, 'UNREACHABLE');
  }
  const body: Response<R> | null = await response.json().catch(() => null);
  const error = body?.errors?.[0];
  if (response.status === 401 || error?.extensions?.code === 'UNAUTHENTICATED') {
    needsToken(error?.message || 'this vman needs an API token');
    throw new ApiError(error?.message || 'unauthenticated', 'UNAUTHENTICATED');
  }
  if (error) throw new ApiError(error.message, error.extensions?.code || 'ERROR');
  if (!response.ok || !body?.data) throw new ApiError(`HTTP ${response.status}`, `HTTP_${response.status}`);
  return body.data;
}

/** The journal's last sequence ("0" when empty). */
export async function journalHead(): Promise<string> {
  return (await request(HEAD)).journalHead;
}

function newClient(on: { connected: EventListener<'connected'> }): Client {
  return createClient({
    url: WS_URL,
    lazy: true,
    retryAttempts: 0,
    connectionParams: () => (token() ? { authorization: `Bearer ${token()}` } : {}),
    on,
  });
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** What `follow` says of its connection. */
export type FollowState = 'connecting' | 'live' | 'reconnecting' | 'error' | 'complete';

/**
 * Follows a subscription for ever: on a dropped connection calls
 * `onState('reconnecting')`, waits (back-off 250 ms doubling to 4 s) and
 * subscribes again with `variables()` (which resume where it stopped);
 * `onState('live')` once connected. A subscription that completes (the
 * server ended it) is not followed again unless `again` says so. Returns a
 * function that stops it.
 */
export function follow<R, V extends Vars>(
  document: TadaDocumentNode<R, V>,
  variables: () => V,
  onData: (data: R) => void,
  { onState = () => {}, again = false }: { onState?: (state: FollowState, message?: string) => void; again?: boolean } = {},
): () => void {
  let stopped = false;
  let client: Client | null = null;
  (async () => {
    let wait = 250;
    while (!stopped) {
      client = newClient({ connected: () => { wait = 250; onState('live'); } });
      let completed = false;
      try {
        for await (const result of client.iterate<R>({ query: text(document), variables: variables() })) {
          if (stopped) break;
          if (result.errors?.length) {
            const e = result.errors[0] as GraphQLError;
            if (e.extensions?.code === 'UNAUTHENTICATED') needsToken(e.message);
            onState('error', e.message);
          } else if (result.data) onData(result.data);
        }
        completed = true;
      } catch (e) {
        // A CloseEvent (4403: the token was refused) or a network error.
        const close = e as { code?: number; reason?: string };
        if (close?.code === 4403 || close?.code === 4401) needsToken(close.reason || 'this vman needs an API token');
      }
      client.dispose();
      if (stopped || (completed && !again)) { if (completed) onState('complete'); return; }
      onState('reconnecting');
      await sleep(wait);
      wait = Math.min(wait * 2, 4000);
    }
  })();
  return () => { stopped = true; client?.dispose(); };
}
