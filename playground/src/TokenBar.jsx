// The bar above GraphiQL: a field for the API token (kept in this browser's
// localStorage), Save and Clear, and who vman says you are.
import { useEffect, useId, useState } from 'react';

import { authEvents, bearer, cleanToken, whoAmI } from './auth.js';

function describe(status, token) {
  switch (status.kind) {
    case 'checking':
      return 'Asking vman who you are…';
    case 'open':
      return token
        ? `No token needed: this vman runs without auth and ignores the token (you are ${status.actor}, ${status.role}).`
        : `No token needed: this vman runs without auth (you are ${status.actor}, ${status.role}).`;
    case 'signed-in':
      return `You are ${status.actor} (role ${status.role}).`;
    case 'needs-token':
      return 'This vman needs a token: paste one and press Save.';
    case 'refused':
      return `vman refused this token: ${status.message}.`;
    default:
      return `Could not ask vman who you are: ${status.message}`;
  }
}

export function TokenBar({ url, token, onChange }) {
  const inputId = useId();
  const [draft, setDraft] = useState(token);
  const [status, setStatus] = useState({ kind: 'checking' });
  // Bumped by Save with the same token: ask again.
  const [asked, setAsked] = useState(0);

  useEffect(() => setDraft(token), [token]);

  useEffect(() => {
    const abort = new AbortController();
    setStatus({ kind: 'checking' });
    whoAmI(url, token, abort.signal).then(setStatus, () => {});
    return () => abort.abort();
  }, [url, token, asked]);

  // GraphiQL's requests with this token (or without one, as the bar's) that
  // vman refused; one with another Authorization from the header editor, or
  // from before the token changed, says nothing about this token.
  useEffect(() => {
    const listener = ({ detail }) => {
      if (detail.authorization !== bearer(token)) return;
      setStatus(token ? { kind: 'refused', message: detail.message } : { kind: 'needs-token' });
    };
    authEvents.addEventListener('unauthorized', listener);
    return () => authEvents.removeEventListener('unauthorized', listener);
  }, [token]);

  const save = (event) => {
    event.preventDefault();
    const next = cleanToken(draft);
    if (next === token) setAsked((n) => n + 1);
    onChange(next);
  };
  const clear = () => {
    setDraft('');
    onChange('');
  };

  return (
    <form className="vman-token-bar" onSubmit={save} aria-label="Authentication">
      <label htmlFor={inputId} className="vman-token-label">API token</label>
      <input
        id={inputId}
        className="vman-token-input"
        type="password"
        autoComplete="off"
        spellCheck={false}
        placeholder="paste a token (vman token create)"
        value={draft}
        onChange={(e) => setDraft(e.target.value)}
      />
      <button type="submit" className="vman-token-button">Save</button>
      <button type="button" className="vman-token-button" onClick={clear} disabled={!token && !draft}>
        Clear
      </button>
      <span className="vman-token-status" data-state={status.kind} role="status">
        {describe(status, token)}
      </span>
      <span className="vman-token-note">
        Saved in this browser only (localStorage) until you press Clear; sent as
        Authorization: Bearer … on every request and in the websocket&apos;s connection_init.
      </span>
    </form>
  );
}
