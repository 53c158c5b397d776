// GraphiQL's fetcher for vman, made for one API token (none: '').
//
// Queries, mutations and schema introspection: POST `url` with JSON, through
// @graphiql/toolkit. Subscriptions: a graphql-ws client (graphql-transport-ws)
// on `subscriptionUrl`, one per subscription, as the toolkit does it.
//
// Headers are the header editor's contents plus `Authorization: Bearer
// <token>` (see `withToken`: an Authorization typed in the editor wins). They
// go out as HTTP headers on every POST and as the `connection_init` payload
// on the websocket (browsers cannot set headers on a websocket handshake).
//
// A 401 gets a first error of the playground's own that says to paste a token
// (vman's error follows it), and is reported on `authEvents`; so is a
// websocket closed with 4403.
import { createGraphiQLFetcher } from '@graphiql/toolkit';
import { getOperationAST } from 'graphql';
import { createClient } from 'graphql-ws';

import { authorizationOf, hintError, reportUnauthorized, withToken } from './auth.js';

/** vman's close code for a websocket without a valid token. */
const FORBIDDEN = 4403;

/** window.fetch, with the playground's hint added to a 401. */
async function fetchWithHint(input, init) {
  const response = await fetch(input, init);
  if (response.status !== 401) return response;
  let body = null;
  try {
    body = await response.json();
  } catch {
    // not JSON: only the hint is shown
  }
  const errors = Array.isArray(body?.errors) ? body.errors : [];
  const authorization = authorizationOf(init?.headers);
  reportUnauthorized(authorization, errors[0]?.message ?? '');
  return new Response(JSON.stringify({ errors: [hintError(authorization), ...errors] }), {
    status: 401,
    statusText: response.statusText,
    headers: { 'content-type': 'application/json' },
  });
}

const isCloseEvent = (e) => typeof e === 'object' && e !== null && 'code' in e && 'reason' in e;

/**
 * A subscription as an observable (GraphiQL takes those): a graphql-ws
 * client of its own, ended with the subscription.
 */
function overWebsocket(url, request, connectionParams) {
  return {
    subscribe(observer) {
      const client = createClient({
        url,
        connectionParams,
        // A socket refused for its token is refused again: say so at once
        // instead of after graphql-ws's retries (about 30 s).
        shouldRetry: (e) => !(isCloseEvent(e) && e.code === FORBIDDEN),
      });
      let ended = false;
      const end = () => {
        if (!ended) {
          ended = true;
          client.dispose();
        }
      };
      const unsubscribe = client.subscribe(request, {
        next: (result) => observer.next(result),
        complete: () => {
          end();
          observer.complete();
        },
        error: (error) => {
          end();
          if (!isCloseEvent(error)) return observer.error(error);
          const closed = { message: `The websocket was closed with ${error.code} ${error.reason || ''}`.trim() };
          if (error.code !== FORBIDDEN) return observer.error(new Error(closed.message));
          const authorization = authorizationOf(connectionParams);
          reportUnauthorized(authorization, error.reason || '');
          observer.error([hintError(authorization), closed]);
        },
      });
      return {
        unsubscribe() {
          unsubscribe();
          end();
        },
      };
    },
  };
}

export function createVmanFetcher({ url, subscriptionUrl, token }) {
  const http = createGraphiQLFetcher({
    url,
    fetch: fetchWithHint,
    // Plain `application/json` POSTs instead of incremental delivery
    // (multipart/mixed): vman does not use @defer/@stream.
    enableIncrementalDelivery: false,
  });
  return (params, opts) => {
    const headers = withToken(token, opts?.headers);
    const operation = opts?.documentAST && getOperationAST(opts.documentAST, params.operationName || undefined);
    if (operation?.operation === 'subscription') return overWebsocket(subscriptionUrl, params, headers);
    return http(params, { ...opts, headers });
  };
}
