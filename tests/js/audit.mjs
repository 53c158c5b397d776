// GraphQL-over-HTTP conformance audit of a running vman /graphql endpoint.
//
//   node tests/js/audit.mjs http://127.0.0.1:PORT/graphql
//
// Runs every graphql-http server audit, prints one line per audit and a
// summary line, and exits non-zero unless every audit is "ok": a failed MUST
// (error), a failed SHOULD (warn) and a failed MAY (notice) all count.
import { serverAudits } from 'graphql-http';

const url = process.argv[2];
if (!url) {
  console.error('usage: node audit.mjs http://127.0.0.1:PORT/graphql');
  process.exit(2);
}

const audits = serverAudits({ url, fetchFn: fetch });
const counts = { ok: 0, warn: 0, error: 0, notice: 0 };
let failed = 0;

// One at a time: the output order is stable and the server is not flooded.
for (const { id, name, fn } of audits) {
  let result;
  try {
    result = await fn();
  } catch (err) {
    // graphql-http rethrows anything that is not an assertion failure
    // (e.g. connection refused): that is a hard error.
    result = { id, name, status: 'error', reason: `fatal: ${err?.cause?.message ?? err?.message ?? err}` };
  }
  counts[result.status] = (counts[result.status] ?? 0) + 1;
  if (result.status === 'ok') {
    console.log(`ok     ${id} ${name}`);
    continue;
  }
  failed += 1;
  let detail = '';
  if (result.response) {
    const res = result.response;
    let body = '';
    try {
      body = (await res.text()).replace(/\s+/g, ' ').trim().slice(0, 300);
    } catch {
      // body already consumed
    }
    detail = ` [status ${res.status}, content-type ${res.headers.get('content-type')}${body ? `, body ${body}` : ''}]`;
  }
  console.log(`${result.status.padEnd(6)} ${id} ${name}: ${result.reason}${detail}`);
}

console.log(
  `graphql-http audit: ${audits.length} audits, ${counts.ok} ok, ${counts.warn} warn, ${counts.error} error, ${counts.notice} notice`,
);
process.exit(failed === 0 ? 0 : 1);
