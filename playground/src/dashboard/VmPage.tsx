// One VM: its state and actions, disks, NICs, snapshots, recent operations
// (with progress bars, pushed by `operationProgress`) and its serial console
// in a terminal. A VM that a running operation is still making (a full
// clone's target) shows that operation and its progress until it exists.
import { useEffect, useRef, useState } from 'react';
import { Terminal } from '@xterm/xterm';
import '@xterm/xterm/css/xterm.css';
import { CONSOLE, PROGRESS, SEND_INPUT, VM_PAGE, type Operation, type ProgressUpdate, type VmPageData, type VmRow } from './documents.ts';
import { follow, request, type FollowState } from './api.ts';
import { ActionButtons, Sparkline, StateBadge, latest, mib, type ActionResult, type Samples } from './parts.tsx';

function Console({ vmId }: { vmId: string }) {
  const box = useRef<HTMLDivElement>(null);
  const [state, setState] = useState<FollowState>('connecting');
  const [inputError, setInputError] = useState<string | null>(null);
  useEffect(() => {
    const term = new Terminal({ convertEol: false, fontSize: 13, rows: 24, cols: 100, scrollback: 5000 });
    term.open(box.current!);
    let next: number | null = null;
    const stop = follow(CONSOLE, () => ({ vm: vmId, after: next }), ({ vmConsole: chunk }) => {
      next = chunk.nextOffset;
      if (chunk.kind === 'OUTPUT') term.write(Uint8Array.from(atob(chunk.data), (c) => c.charCodeAt(0)));
      else term.write(`\r\n\x1b[33m[${chunk.reason || 'output dropped'}]\x1b[0m\r\n`);
    }, { onState: setState });
    // Keystrokes go in order, one mutation each.
    let queue: Promise<unknown> = Promise.resolve();
    const typing = term.onData((data) => {
      queue = queue.then(() => request(SEND_INPUT, { vm: vmId, data })).then(() => setInputError(null), (e) => setInputError(`${e.code}: ${e.message}`));
    });
    return () => { stop(); typing.dispose(); term.dispose(); };
  }, [vmId]);
  return (
    <section>
      <h2>Serial console <small data-testid="console-state">{state === 'complete' ? 'ended (the VM does not run)' : state}</small></h2>
      {inputError && <p className="error">Input not sent: {inputError}</p>}
      <div ref={box} className="terminal" data-testid="terminal" />
    </section>
  );
}

function Progress({ op }: { op: Operation }) {
  if (!op.progress) return op.status === 'RUNNING' ? <progress aria-label="progress" /> : null;
  return <progress aria-label="progress" value={op.progress.fraction} max={1}>{Math.round(op.progress.fraction * 100)}%</progress>;
}

const unfinished = (o: Operation) => o.status === 'RUNNING' || o.status === 'PENDING';

/**
 * The operations that run, with what `operationProgress` pushed of each
 * since: one subscription per running operation, none when nothing runs (no
 * polling). A dropped connection resumes each (the first item after it is
 * where the operation is then; one that ended meanwhile sends how it ended).
 */
function useProgress(operations: Operation[] | undefined): Map<string, ProgressUpdate> {
  const [pushed, setPushed] = useState(new Map<string, ProgressUpdate>());
  const running = (operations ?? []).filter(unfinished).map((o) => o.id).join(' ');
  useEffect(() => {
    if (!running) return undefined;
    const stops = running.split(' ').map((id) => follow(PROGRESS, () => ({ id }), ({ operationProgress: update }) => {
      setPushed((old) => new Map(old).set(update.operationId, update));
    }));
    return () => stops.forEach((stop) => stop());
  }, [running]);
  return pushed;
}

/** An operation as last loaded, or as pushed since while it ran. */
function withPushed(op: Operation, pushed: Map<string, ProgressUpdate>): Operation {
  const update = pushed.get(op.id);
  if (!update || !unfinished(op)) return op;
  return { ...op, status: update.status, progress: update.progress ?? op.progress };
}

function Operations({ operations, pushed }: { operations: Operation[]; pushed: Map<string, ProgressUpdate> }) {
  return (
    <table className="operations"><tbody>
      {operations.map((loaded) => {
        const o = withPushed(loaded, pushed);
        return (
          <tr key={o.id} data-operation={o.kind}>
            <td>{new Date(o.startedAt).toLocaleTimeString()}</td><td>{o.kind}</td>
            <td className={o.status === 'FAILED' ? 'error' : ''} data-testid="operation-status">{o.status}{o.errorCode && `: ${o.errorCode}: ${o.error}`}</td>
            <td><Progress op={o} /></td>
          </tr>
        );
      })}
    </tbody></table>
  );
}

interface VmPageProps {
  id: string;
  /** Bumped on every event: the page loads again. */
  tick: number;
  /** The VM's row in the table, live. */
  vm?: VmRow;
  stats?: Samples;
  result?: ActionResult;
  setResult: (r: ActionResult) => void;
}

export function VmPage({ id, tick, vm: row, stats, result, setResult }: VmPageProps) {
  const [page, setPage] = useState<VmPageData | null>(null);
  const [error, setError] = useState<string | null>(null);
  useEffect(() => {
    request(VM_PAGE, { id }).then((d) => { setPage(d); setError(null); }, (e) => setError(`${e.code}: ${e.message}`));
  }, [id, tick]);
  // Progress bars move between events: pushed, not polled.
  const pushed = useProgress(page?.operations.nodes);

  if (error) return <p className="error">{error}</p>;
  if (!page) return <p>Loading…</p>;
  if (!page.vm) {
    const making = page.operations.nodes.filter(unfinished);
    if (making.length === 0) return <p>No VM {id} (deleted?). <a href="#/">Back to the table</a></p>;
    return (
      <div className="vm-page" data-vm-page={id}>
        <p><a href="#/">← all VMs</a></p>
        <h2>VM {id} <small>being made</small></h2>
        <p>It exists once this ends:</p>
        <Operations operations={making} pushed={pushed} />
      </div>
    );
  }
  const vm = row ?? page.vm;
  const live = ['RUNNING', 'PAUSED', 'STARTING'].includes(vm.state);
  return (
    <div className="vm-page" data-vm-page={vm.name}>
      <p><a href="#/">← all VMs</a></p>
      <h2>{vm.name} <StateBadge state={vm.state} /></h2>
      <p>
        {vm.vcpus} vCPU, {vm.memoryMib} MiB; wanted {vm.desiredState}{vm.stateReason && ` (${vm.stateReason})`}
        {' '}<ActionButtons vm={vm} onResult={setResult} />
        {' '}<span data-testid="result" className={result && !result.ok ? 'error' : ''}>{result?.text}</span>
      </p>
      {stats && (
        <p>CPU <Sparkline values={stats.cpu} max={100 * vm.vcpus} label="CPU %" /> {latest(stats.cpu).toFixed(0)}%
          {' '}memory <Sparkline values={stats.mem} label="RSS" /> {mib(latest(stats.mem))}</p>
      )}
      <div className="columns">
        <section>
          <h3>Disks</h3>
          <table><tbody>
            {page.vm.disks.map((d) => <tr key={d.id}><td>{d.name}</td><td>{d.format}</td><td>{mib(d.sizeBytes)}</td><td>{d.attachment}</td></tr>)}
            {page.vm.disks.length === 0 && <tr><td>none</td></tr>}
          </tbody></table>
          <h3>NICs</h3>
          <table><tbody>
            {page.vm.nics.map((n) => <tr key={n.id}><td>#{n.position}</td><td>{n.network?.name}</td><td>{n.mac}</td><td>{n.model}</td><td>{n.tap}</td><td>{n.attachment}</td></tr>)}
            {page.vm.nics.length === 0 && <tr><td>none</td></tr>}
          </tbody></table>
          <h3>Snapshots</h3>
          <table><tbody>
            {page.vm.snapshots.map((s) => <tr key={s.id}><td>{s.name}</td><td>{s.vmState}</td><td>{s.withMemory ? 'with memory' : 'disks only'}</td><td>{new Date(s.createdAt).toLocaleString()}</td></tr>)}
            {page.vm.snapshots.length === 0 && <tr><td>none</td></tr>}
          </tbody></table>
        </section>
        <section>
          <h3>Operations</h3>
          <Operations operations={page.operations.nodes} pushed={pushed} />
        </section>
      </div>
      {live ? <Console vmId={vm.id} key={vm.id} /> : <p>The serial console shows while the VM runs.</p>}
    </div>
  );
}
