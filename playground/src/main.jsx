// Must come first: tells monaco where its (bundled) web workers are.
import './workers.js';
// Includes GraphiQL's fonts (Roboto, Fira Code) as inline data: URLs.
import 'graphiql/style.css';
import './style.css';

import { StrictMode, useEffect, useMemo, useState } from 'react';
import { createRoot } from 'react-dom/client';
import { GraphiQL } from 'graphiql';
import { useGraphiQL, useGraphiQLActions } from '@graphiql/react';

import { examples } from './examples.js';
import { resolveEndpoints } from './endpoint.js';
import { PLAYGROUND_HINT, STORAGE_KEY, loadToken, storeToken } from './auth.js';
import { createVmanFetcher } from './fetcher.js';
import { TokenBar } from './TokenBar.jsx';

const { url, subscriptionUrl } = resolveEndpoints();

// On a first visit the query editor gets 60 % of the width it shares with the
// response (GraphiQL's default is half), so that the saved examples' lines
// (44 characters at most) fit it at 1400 px with the Examples panel open.
// Dragging the divider changes it, and GraphiQL keeps that in this key.
const EDITOR_FLEX_KEY = 'graphiql:editorFlex';
if (localStorage.getItem(EDITOR_FLEX_KEY) === null) localStorage.setItem(EDITOR_FLEX_KEY, '1.5');

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
// Module constants: GraphiQL resets its plugins (and the open one) whenever
// it is given a new array, and App re-renders when the token changes.
const plugins = [examplesPlugin];
const defaultTabs = examples.map((ex) => ({ query: ex.query }));

// Rendered inside GraphiQL (in its logo slot, the one place for children):
// once the token changes, a "needs a token" answer in the response panel is
// stale, so it goes.
function StaleHintRemover({ token }) {
  const responseEditor = useGraphiQL((s) => s.responseEditor);
  useEffect(() => {
    if (responseEditor?.getValue().includes(PLAYGROUND_HINT)) responseEditor.setValue('');
  }, [responseEditor, token]);
  return null;
}

function App() {
  const [token, setToken] = useState(loadToken);
  // A token saved or cleared in another tab of this origin applies here too.
  useEffect(() => {
    const listener = (e) => {
      if (e.key === STORAGE_KEY || e.key === null) setToken(loadToken());
    };
    window.addEventListener('storage', listener);
    return () => window.removeEventListener('storage', listener);
  }, []);
  const changeToken = (next) => {
    storeToken(next);
    setToken(next);
  };
  // A new fetcher per token: GraphiQL then fetches the schema again, and
  // every later request and subscription (each opens its own websocket)
  // carries the new token. A running subscription keeps its socket.
  const fetcher = useMemo(() => createVmanFetcher({ url, subscriptionUrl, token }), [token]);
  return (
    <div className="vman-app">
      <TokenBar url={url} token={token} onChange={changeToken} />
      <div className="vman-graphiql">
        <GraphiQL
          fetcher={fetcher}
          // Used only while no tab state is stored in localStorage (first
          // visit, or after "Clear storage" in GraphiQL's settings).
          defaultTabs={defaultTabs}
          plugins={plugins}
          visiblePlugin={examplesPlugin}
          isHeadersEditorEnabled
          // Keep headers out of localStorage unless the user opts in via the
          // settings dialog. (The token bar's token is kept; see auth.js.)
          shouldPersistHeaders={false}
          showPersistHeadersSettings
        >
          <GraphiQL.Logo>
            vman
            <StaleHintRemover token={token} />
          </GraphiQL.Logo>
        </GraphiQL>
      </div>
    </div>
  );
}

createRoot(document.getElementById('root')).render(
  <StrictMode>
    <App />
  </StrictMode>,
);
