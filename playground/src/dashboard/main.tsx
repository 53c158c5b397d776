// The vman dashboard (/dashboard): a live VM table, the open coherence
// issues, and a page per VM (#/vm/<id>). Everything it shows comes from the
// API of the origin that served it; see docs/DASHBOARD.md.
import { StrictMode, useCallback, useEffect, useRef, useState } from 'react';
import { createRoot } from 'react-dom/client';
import { EVENTS, ISSUES, STATS, VMS, VM_ROW_QUERY, type VmRow } from './documents.ts';
import { ActionButtons, HISTORY, Sparkline, StateBadge, latest, mib, type ActionResult, type Samples } from './parts.tsx';
import { auth, follow, journalHead, request, setToken, token, type FollowState } from './api.ts';
import { VmPage } from './VmPage.tsx';
import type { ResultOf } from './graphql.ts';
import './dashboard.css';

type Issue = ResultOf<typeof ISSUES>['coherenceIssues']['nodes'][number];

interface VmTableProps {
  vms: Map<string, VmRow>;
  stats: Map<string, Samples>;
  results: Map<string, ActionResult>;
  setResult: (id: string, r: ActionResult) => void;
}

function VmTable({ vms, stats, results, setResult }: VmTableProps) {
  const rows = [...vms.values()].sort((a, b) => a.name.localeCompare(b.name));
  return (
    <table className="vms">
      <thead>
        <tr><th>Name</th><th>State</th><th>vCPUs</th><th>Memory</th><th>CPU</th><th>Memory used</th><th>Actions</th><th>Last action</th></tr>
      </thead>
      <tbody>
        {rows.length === 0 && <tr><td colSpan={8} className="empty">No VMs yet: create one with the createVm mutation (see the playground).</td></tr>}
        {rows.map((vm) => {
          const s = stats.get(vm.id);
          const result = results.get(vm.id);
          return (
            <tr key={vm.id} data-vm={vm.name}>
              <td><a href={`#/vm/${vm.id}`}>{vm.name}</a></td>
              <td><StateBadge state={vm.state} />{vm.stateReason && <div className="reason">{vm.stateReason}</div>}</td>
              <td>{vm.vcpus}</td>
              <td>{vm.memoryMib} MiB</td>
              <td><Sparkline values={s?.cpu} max={100 * vm.vcpus} label="CPU %" /> {s && <small>{latest(s.cpu).toFixed(0)}%</small>}</td>
              <td><Sparkline values={s?.mem} max={vm.memoryMib * 1048576 * 1.5} label="RSS" /> {s && <small>{mib(latest(s.mem))}</small>}</td>
              <td><ActionButtons vm={vm} onResult={(r) => setResult(vm.id, r)} /></td>
              <td data-testid="result" className={result && !result.ok ? 'error' : ''}>{result?.text}</td>
            </tr>
          );
        })}
      </tbody>
    </table>
  );
}

function Issues({ version }: { version: number }) {
  const [issues, setIssues] = useState<Issue[]>([]);
  const [error, setError] = useState<string | null>(null);
  useEffect(() => {
    request(ISSUES).then((d) => { setIssues(d.coherenceIssues.nodes); setError(null); }, (e) => setError(e.message));
  }, [version]);
  return (
    <section className="issues" data-testid="issues">
      <h2>Open coherence issues ({issues.length})</h2>
      {error && <p className="error">{error}</p>}
      {issues.length === 0 ? <p className="empty">None: what vman wants is what the host shows.</p> : (
        <ul>
          {issues.map((i) => (
            <li key={i.id}>
              <b>{i.kind}</b> {i.vm ? <a href={`#/vm/${i.vm.id}`}>{i.vm.name}</a> : `${i.subjectType} ${i.subjectId}`}:
              {' '}expected <code>{i.expected}</code>, observed <code>{i.observed}</code>
              <small> since {new Date(i.detectedAt).toLocaleTimeString()}</small>
            </li>
          ))}
        </ul>
      )}
    </section>
  );
}

function TokenPrompt({ message }: { message: string }) {
  const [value, setValue] = useState('');
  return (
    <form className="token" onSubmit={(e) => { e.preventDefault(); setToken(value); }}>
      <p>{message} Paste an API token (<code>vman token create</code>); it is kept for this browser tab only.</p>
      <input type="password" aria-label="API token" value={value} onChange={(e) => setValue(e.target.value)} placeholder="API token" />
      <button type="submit">Use token</button>
    </form>
  );
}

function useRoute(): { vm?: string } {
  const [hash, setHash] = useState(window.location.hash);
  useEffect(() => {
    const on = () => setHash(window.location.hash);
    window.addEventListener('hashchange', on);
    return () => window.removeEventListener('hashchange', on);
  }, []);
  const m = hash.match(/^#\/vm\/(.+)$/);
  return m ? { vm: decodeURIComponent(m[1]) } : {};
}

function App() {
  const [vms, setVms] = useState(new Map<string, VmRow>());
  const [stats, setStats] = useState(new Map<string, Samples>());
  const [results, setResults] = useState(new Map<string, ActionResult>());
  const [connection, setConnection] = useState<FollowState>('connecting');
  const [tick, setTick] = useState(0);
  const [issuesVersion, setIssuesVersion] = useState(0);
  const [tokenNeeded, setTokenNeeded] = useState<string | null>(null);
  const [loadError, setLoadError] = useState<string | null>(null);
  const [session, setSession] = useState(0);
  const last = useRef<string | null>(null);
  const { vm: vmId } = useRoute();

  useEffect(() => {
    const needed = (e: Event) => setTokenNeeded((e as CustomEvent<string>).detail);
    const changed = () => { setTokenNeeded(null); setSession((s) => s + 1); };
    auth.addEventListener('needed', needed);
    auth.addEventListener('changed', changed);
    return () => { auth.removeEventListener('needed', needed); auth.removeEventListener('changed', changed); };
  }, []);

  const refetchVm = useCallback(async (id: string) => {
    try {
      const { vm } = await request(VM_ROW_QUERY, { id });
      setVms((old) => {
        const next = new Map(old);
        if (vm) next.set(vm.id, vm); else next.delete(id);
        return next;
      });
    } catch { /* the next event or reconnect brings it */ }
  }, []);

  // The table: the journal's head, the VMs, then every event after the head.
  useEffect(() => {
    let stop = () => {};
    let cancelled = false;
    (async () => {
      try {
        last.current = await journalHead();
        const { vms: list } = await request(VMS);
        if (cancelled) return;
        setVms(new Map(list.nodes.map((vm) => [vm.id, vm])));
        setLoadError(null);
      } catch (e) {
        setLoadError((e as Error).message);
        return;
      }
      let wasDown = false;
      stop = follow(EVENTS, () => ({ after: last.current }), ({ events: event }) => {
        last.current = event.sequence;
        if (event.subjectType === 'Vm') refetchVm(event.subjectId);
        if (event.subjectType === 'CoherenceIssue' || event.kind.startsWith('COHERENCE')) setIssuesVersion((v) => v + 1);
        setTick((t) => t + 1);
      }, {
        again: true,
        onState: (state) => {
          setConnection(state);
          if (state === 'reconnecting') wasDown = true;
          if (state === 'live' && wasDown) { wasDown = false; setIssuesVersion((v) => v + 1); setTick((t) => t + 1); }
        },
      });
    })();
    return () => { cancelled = true; stop(); };
  }, [session, refetchVm]);

  // CPU and memory of every running VM, every second.
  useEffect(() => follow(STATS, () => ({}), ({ vmStats: s }) => {
    setStats((old) => {
      const next = new Map(old);
      const h = next.get(s.vmId) || { cpu: [], mem: [] };
      next.set(s.vmId, { cpu: [...h.cpu, s.cpuPercent ?? 0].slice(-HISTORY), mem: [...h.mem, Number(s.memoryRssBytes)].slice(-HISTORY) });
      return next;
    });
  }, { again: true }), [session]);

  const setResult = useCallback((id: string, r: ActionResult) => setResults((old) => new Map(old).set(id, r)), []);

  return (
    <>
      <header>
        <h1><a href="#/">vman</a> dashboard</h1>
        <span className={`connection ${connection}`} data-testid="connection">
          {connection === 'live' ? 'live' : connection === 'reconnecting' ? 'reconnecting…' : connection}
        </span>
        <nav><a href="/">playground</a>{token() && <button type="button" onClick={() => setToken('')}>forget token</button>}</nav>
      </header>
      {connection === 'reconnecting' && (
        <div className="banner" role="status" data-testid="reconnecting">Connection to vman lost: reconnecting… (what happens meanwhile is shown once it is back)</div>
      )}
      {tokenNeeded !== null && <TokenPrompt message={tokenNeeded} />}
      {loadError && <p className="error">Could not load the VMs: {loadError} <button type="button" onClick={() => setSession((s) => s + 1)}>retry</button></p>}
      <main>
        {vmId ? (
          <VmPage id={vmId} tick={tick} vm={vms.get(vmId)} stats={stats.get(vmId)} result={results.get(vmId)} setResult={(r) => setResult(vmId, r)} />
        ) : (
          <>
            <VmTable vms={vms} stats={stats} results={results} setResult={setResult} />
            <Issues version={issuesVersion} />
          </>
        )}
      </main>
    </>
  );
}

createRoot(document.getElementById('root')!).render(<StrictMode><App /></StrictMode>);
