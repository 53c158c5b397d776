// Where the GraphQL API lives. By default: the same origin that served this
// page, at the absolute paths /graphql (HTTP) and /graphql/ws (websocket),
// so the very same build works when served at / and at /playground/.
//
// Overrides (mainly for `npm run dev` or for pointing at another host):
//   * query string: ?endpoint=http://127.0.0.1:8080/graphql
//                   &subscriptionEndpoint=ws://127.0.0.1:8080/graphql/ws
//   * build time:   VITE_GRAPHQL_URL / VITE_GRAPHQL_WS_URL
export function resolveEndpoints(loc = window.location) {
  const params = new URLSearchParams(loc.search);
  const url = new URL(
    params.get('endpoint') || import.meta.env.VITE_GRAPHQL_URL || '/graphql',
    loc.href,
  );
  let subscriptionUrl;
  const ws = params.get('subscriptionEndpoint') || import.meta.env.VITE_GRAPHQL_WS_URL;
  if (ws) {
    subscriptionUrl = new URL(ws, loc.href);
  } else {
    subscriptionUrl = new URL(url.href);
    subscriptionUrl.pathname = subscriptionUrl.pathname.replace(/\/?$/, '/ws');
  }
  if (subscriptionUrl.protocol === 'http:') subscriptionUrl.protocol = 'ws:';
  if (subscriptionUrl.protocol === 'https:') subscriptionUrl.protocol = 'wss:';
  return { url: url.href, subscriptionUrl: subscriptionUrl.href };
}
