// Pieces the VM table and the VM page share: state badges, sparklines and
// the action buttons with what they did.
import { useState } from 'react';
import { ACTIONS, type Action, type ActionOperation, type VmRow } from './documents.ts';
import { ApiError, request } from './api.ts';

/** How many samples a sparkline shows. */
export const HISTORY = 40;

/** A VM's last samples of `vmStats`. */
export interface Samples { cpu: number[]; mem: number[] }

/** What a button did, as the *Last action* column says it. */
export interface ActionResult { ok: boolean; text: string }

export function StateBadge({ state }: { state: string }) {
  return <span className={`badge state-${state.toLowerCase()}`} data-testid="state">{state}</span>;
}

export function Sparkline({ values, max, label }: { values?: number[]; max?: number; label: string }) {
  const w = 120;
  const h = 24;
  if (!values?.length) return <span className="spark-empty" aria-label={label}>–</span>;
  const top = max ?? Math.max(...values, 1);
  const points = values.map((v, i) => `${(i / (HISTORY - 1)) * w},${h - (Math.min(v, top) / top) * (h - 2) - 1}`).join(' ');
  return (
    <svg className="spark" width={w} height={h} aria-label={label}>
      <polyline points={points} fill="none" strokeWidth="1.5" />
    </svg>
  );
}

/** A sparkline's newest value (0 before any). */
export const latest = (values: number[]) => values[values.length - 1] ?? 0;

export const mib = (bytes: number | string) => `${Math.round(Number(bytes) / 1048576)} MiB`;

type Outcome = { operation?: ActionOperation | null; error?: undefined } | { error: ApiError };

/** What a button did: the operation it caused, or vman's error. */
export function describeResult(action: Action, result: Outcome): ActionResult {
  if (result.error) return { ok: false, text: `${action} failed: ${result.error.code}: ${result.error.message}` };
  const op = result.operation;
  if (!op) return { ok: true, text: `${action}: done` };
  const failed = op.status === 'FAILED';
  return {
    ok: !failed,
    text: `${action}: ${op.kind} ${op.status}${op.errorCode ? ` (${op.errorCode}: ${op.error})` : ''}`,
  };
}

async function operationOf(action: Action, id: string): Promise<ActionOperation | null> {
  switch (action) {
    case 'start': return (await request(ACTIONS.start, { id })).startVm.operation;
    case 'stop': return (await request(ACTIONS.stop, { id })).stopVm.operation;
    case 'pause': return (await request(ACTIONS.pause, { id })).pauseVm.operation;
    case 'resume': return (await request(ACTIONS.resume, { id })).resumeVm.operation;
    case 'delete': return (await request(ACTIONS.delete, { id })).deleteVm.operation;
  }
}

export async function runAction(action: Action, id: string): Promise<Outcome> {
  try {
    return { operation: await operationOf(action, id) };
  } catch (error) {
    return { error: error instanceof ApiError ? error : new ApiError(String(error), 'ERROR') };
  }
}

export function ActionButtons({ vm, onResult }: { vm: VmRow; onResult: (r: ActionResult) => void }) {
  const [busy, setBusy] = useState<Action | null>(null);
  const click = async (action: Action) => {
    if (action === 'delete' && !window.confirm(`Delete ${vm.name} and its disks?`)) return;
    setBusy(action);
    onResult({ ok: true, text: `${action}: running…` });
    onResult(describeResult(action, await runAction(action, vm.id)));
    setBusy(null);
  };
  const can: Record<Action, boolean> = {
    start: ['STOPPED', 'CRASHED'].includes(vm.state),
    stop: ['RUNNING', 'PAUSED'].includes(vm.state),
    pause: vm.state === 'RUNNING',
    resume: vm.state === 'PAUSED',
    delete: ['STOPPED', 'CRASHED'].includes(vm.state),
  };
  return (
    <span className="actions">
      {(Object.keys(ACTIONS) as Action[]).map((a) => (
        <button key={a} type="button" disabled={busy !== null || !can[a]} onClick={() => click(a)} data-action={a}>
          {busy === a ? `${a}…` : a}
        </button>
      ))}
    </span>
  );
}
