// Must come first: tells monaco where its (bundled) web workers are.
import './workers.js';
// Includes GraphiQL's fonts (Roboto, Fira Code) as inline data: URLs.
import 'graphiql/style.css';
import './style.css';

import { StrictMode } from 'react';
import { createRoot } from 'react-dom/client';
import { GraphiQL } from 'graphiql';
import { createGraphiQLFetcher } from '@graphiql/toolkit';
import { useGraphiQL, useGraphiQLActions } from '@graphiql/react';

import { examples } from './examples.js';
import { resolveEndpoints } from './endpoint.js';

const { url, subscriptionUrl } = resolveEndpoints();

// Queries and mutations: POST `url` with JSON. Subscriptions: the graphql-ws
// protocol (graphql-transport-ws) on `subscriptionUrl`. The contents of the
// header editor are sent as HTTP headers on every POST, and as the payload
// of `connection_init` on the websocket (browsers cannot set headers on a
// websocket handshake) — the place for a future auth header.
const fetcher = createGraphiQLFetcher({
  url,
  subscriptionUrl,
  // Plain `application/json` POSTs instead of incremental delivery
  // (multipart/mixed): vman does not use @defer/@stream.
  enableIncrementalDelivery: false,
});

function ExamplesIcon() {
  return (
    <svg viewBox="0 0 24 24" fill="none" stroke="currentColor" strokeWidth="1.5"
         strokeLinecap="round" strokeLinejoin="round" aria-hidden="true">
      <path d="M4 5h16M4 10h16M4 15h10M4 20h7" />
      <path d="M17 15.5v5l4-2.5z" fill="currentColor" />
    </svg>
  );
}

function ExamplesPanel() {
  const { addTab } = useGraphiQLActions();
  const { queryEditor, variableEditor } = useGraphiQL((s) => ({
    queryEditor: s.queryEditor,
    variableEditor: s.variableEditor,
  }));
  const open = (example) => {
    addTab();
    queryEditor?.setValue(example.query);
    variableEditor?.setValue('');
  };
  return (
    <div className="vman-examples">
      <div className="graphiql-doc-explorer-title">Examples</div>
      <p>
        Run these in order. Each opens in a new tab. Endpoint: <code>{url}</code>,
        subscriptions: <code>{subscriptionUrl}</code>.
      </p>
      <ol>
        {examples.map((ex) => (
          <li key={ex.name}>
            <button type="button" className="vman-example" onClick={() => open(ex)}
                    data-example={ex.name}>
              <span className="vman-example-name">{ex.name}</span>
              <span className="vman-example-kind">{ex.kind}</span>
            </button>
            <p className="vman-example-desc">{ex.description}</p>
          </li>
        ))}
      </ol>
    </div>
  );
}

const examplesPlugin = {
  title: 'Examples',
  icon: ExamplesIcon,
  content: ExamplesPanel,
};

function App() {
  return (
    <GraphiQL
      fetcher={fetcher}
      // Used only while no tab state is stored in localStorage (first visit,
      // or after "Clear storage" in GraphiQL's settings).
      defaultTabs={examples.map((ex) => ({ query: ex.query }))}
      plugins={[examplesPlugin]}
      visiblePlugin={examplesPlugin}
      isHeadersEditorEnabled
      // Keep headers (e.g. an auth token) out of localStorage unless the user
      // opts in via the settings dialog.
      shouldPersistHeaders={false}
      showPersistHeadersSettings
    >
      <GraphiQL.Logo>vman</GraphiQL.Logo>
    </GraphiQL>
  );
}

createRoot(document.getElementById('root')).render(
  <StrictMode>
    <App />
  </StrictMode>,
);
