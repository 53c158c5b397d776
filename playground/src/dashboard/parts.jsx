// Pieces the VM table and the VM page share: state badges, sparklines and
// the action buttons with what they did.
import { useState } from 'react';
import { ACTIONS } from './documents.js';
import { request } from './api.js';

/** How many samples a sparkline shows. */
export const HISTORY = 40;

export function StateBadge({ state }) {
  return <span className={`badge state-${state.toLowerCase()}`} data-testid="state">{state}</span>;
}

export function Sparkline({ values, max, label }) {
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

export const mib = (bytes) => `${Math.round(Number(bytes) / 1048576)} MiB`;

/** What a button did: the operation it caused, or vman's error. */
export function describeResult(action, result) {
  if (result.error) return { ok: false, text: `${action} failed: ${result.error.code}: ${result.error.message}` };
  const op = result.operation;
  if (!op) return { ok: true, text: `${action}: done` };
  const failed = op.status === 'FAILED';
  return {
    ok: !failed,
    text: `${action}: ${op.kind} ${op.status}${op.errorCode ? ` (${op.errorCode}: ${op.error})` : ''}`,
  };
}

export async function runAction(action, id) {
  try {
    const data = await request(ACTIONS[action], { id });
    return { operation: Object.values(data)[0]?.operation };
  } catch (error) {
    return { error };
  }
}

export function ActionButtons({ vm, onResult }) {
  const [busy, setBusy] = useState(null);
  const click = async (action) => {
    if (action === 'delete' && !window.confirm(`Delete ${vm.name} and its disks?`)) return;
    setBusy(action);
    onResult({ ok: true, text: `${action}: running…` });
    onResult(describeResult(action, await runAction(action, vm.id)));
    setBusy(null);
  };
  const can = {
    start: ['STOPPED', 'CRASHED'].includes(vm.state),
    stop: ['RUNNING', 'PAUSED'].includes(vm.state),
    pause: vm.state === 'RUNNING',
    resume: vm.state === 'PAUSED',
    delete: ['STOPPED', 'CRASHED'].includes(vm.state),
  };
  return (
    <span className="actions">
      {Object.keys(ACTIONS).map((a) => (
        <button key={a} type="button" disabled={busy !== null || !can[a]} onClick={() => click(a)} data-action={a}>
          {busy === a ? `${a}…` : a}
        </button>
      ))}
    </span>
  );
}

