// The API token of the page: where it is kept, how it is sent, and who vman
// says the caller is.
//
// vman with `auth.mode = "token"` wants `Authorization: Bearer <token>` on
// every POST /graphql (else 401, code UNAUTHENTICATED) and
// `{"authorization": "Bearer <token>"}` as the payload of the websocket's
// `connection_init` (else it closes the socket with 4403). With
// `auth.mode = "none"` nothing is needed and a token is ignored.

/** The localStorage key (per origin: each vman keeps its own). */
export const STORAGE_KEY = 'vman.playground.apiToken';

export function loadToken() {
  try {
    return localStorage.getItem(STORAGE_KEY) || '';
  } catch {
    return ''; // storage disabled: the token lasts until the page is closed
  }
}

export function storeToken(token) {
  try {
    if (token) localStorage.setItem(STORAGE_KEY, token);
    else localStorage.removeItem(STORAGE_KEY);
  } catch {
    // storage disabled: see loadToken
  }
}

/** What was pasted, without white space or a leading `Bearer `. */
export function cleanToken(text) {
  return text.trim().replace(/^bearer\s+/i, '').trim();
}

export function bearer(token) {
  return token ? `Bearer ${token}` : null;
}

/** The value of a headers object's Authorization, in any letter case. */
export function authorizationOf(headers) {
  if (!headers || typeof headers !== 'object') return null;
  const key = Object.keys(headers).find((k) => k.toLowerCase() === 'authorization');
  return key === undefined ? null : String(headers[key]);
}

/**
 * The headers typed into GraphiQL's header editor plus the token's
 * Authorization. An Authorization typed there (in any letter case) wins
 * over the saved token, so there is never more than one.
 */
export function withToken(token, typed) {
  const headers = typed && typeof typed === 'object' && !Array.isArray(typed) ? { ...typed } : {};
  if (token && authorizationOf(headers) === null) headers.authorization = bearer(token);
  return headers;
}

/**
 * GraphiQL's own requests report refusals here (`unauthorized` events, with
 * `detail: {authorization, message}`: what was sent and vman's reason), so
 * the token bar can say that a token is needed.
 */
export const authEvents = new EventTarget();

export function reportUnauthorized(authorization, message) {
  authEvents.dispatchEvent(new CustomEvent('unauthorized', { detail: { authorization, message } }));
}

/** Marks the errors the playground adds (vman's own errors follow them). */
export const PLAYGROUND_HINT = 'vman-playground';

export function hintError(authorization) {
  const message = authorization
    ? 'vman refused this API token (its reason follows). Paste a valid one into the API token field at the top of the page and press Save.'
    : 'This vman needs an API token. Paste one into the API token field at the top of the page and press Save: the playground then sends it as Authorization: Bearer <token> on every request and in the websocket\'s connection_init.';
  return { message, extensions: { code: 'UNAUTHENTICATED', from: PLAYGROUND_HINT } };
}

/**
 * Asks vman `{ me { actor role } }` with `token` (none: without
 * Authorization). One of:
 *   {kind: 'open', actor, role}       auth.mode = "none": no token needed
 *   {kind: 'signed-in', actor, role}  the token works
 *   {kind: 'needs-token', message}    401 without a token
 *   {kind: 'refused', message}        401 with this token
 *   {kind: 'error', message}          anything else (unreachable, 429, …)
 */
export async function whoAmI(url, token, signal) {
  const headers = { 'content-type': 'application/json', accept: 'application/json' };
  if (token) headers.authorization = bearer(token);
  let response;
  try {
    response = await fetch(url, {
      method: 'POST',
      headers,
      body: JSON.stringify({ query: 'query PlaygroundWhoAmI { me { actor role } }' }),
      signal,
    });
  } catch (e) {
    if (signal?.aborted) throw e;
    return { kind: 'error', message: `cannot reach ${url}: ${e.message}` };
  }
  let body = null;
  try {
    body = await response.json();
  } catch {
    // not JSON: the status says enough
  }
  const message = body?.errors?.[0]?.message || `HTTP ${response.status}`;
  if (response.status === 401) return { kind: token ? 'refused' : 'needs-token', message };
  const me = body?.data?.me;
  if (!response.ok || !me) return { kind: 'error', message };
  // Without auth every caller is `local` (a token may not be named so).
  return { kind: me.actor === 'local' ? 'open' : 'signed-in', actor: me.actor, role: me.role };
}
