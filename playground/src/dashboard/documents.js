// Every GraphQL document the dashboard sends. `npm run build` validates each
// one against ../schema.graphql (vite.config.js, `validateDocuments`): a
// schema change that breaks the dashboard breaks the build.

export const HEAD = /* GraphQL */ `
  query DashboardJournalHead { journalHead }`;

const VM_ROW = /* GraphQL */ `
  fragment VmRow on Vm { id name state stateReason desiredState vcpus memoryMib }`;

export const VMS = /* GraphQL */ `
  query DashboardVms { vms(first: 500) { nodes { ...VmRow } } }
  ${VM_ROW}`;

export const VM_ROW_QUERY = /* GraphQL */ `
  query DashboardVm($id: ID) { vm(id: $id) { ...VmRow } }
  ${VM_ROW}`;

export const VM_PAGE = /* GraphQL */ `
  query DashboardVmPage($id: ID) {
    vm(id: $id) {
      ...VmRow
      disks { id name format sizeBytes attachment }
      nics { id mac model position tap attachment network { name } }
      snapshots { id name withMemory vmState createdAt }
    }
    operations(vmId: $id, first: 20) {
      nodes { id kind status progress { fraction bytesDone bytesTotal } error errorCode startedAt }
    }
  }
  ${VM_ROW}`;

export const ISSUES = /* GraphQL */ `
  query DashboardIssues {
    coherenceIssues(open: true, first: 100) {
      nodes { id kind subjectType subjectId expected observed detectedAt vm { id name } }
    }
  }`;

export const EVENTS = /* GraphQL */ `
  subscription DashboardEvents($after: String) {
    events(after: $after) { sequence kind subjectId subjectType }
  }`;

export const STATS = /* GraphQL */ `
  subscription DashboardStats { vmStats(intervalSeconds: 1) { vmId cpuPercent memoryRssBytes memoryBytes } }`;

export const CONSOLE = /* GraphQL */ `
  subscription DashboardConsole($vm: ID!, $after: Bytes) {
    vmConsole(vmId: $vm, replayBytes: 65536, after: $after) { kind data nextOffset reason }
  }`;

export const SEND_INPUT = /* GraphQL */ `
  mutation DashboardConsoleInput($vm: ID!, $data: String!) {
    sendConsoleInput(vmId: $vm, data: $data) { bytes }
  }`;

const OP = 'operation { id kind status error errorCode }';

/** The buttons: action name → mutation. */
export const ACTIONS = {
  start: `mutation DashboardStart($id: ID) { startVm(id: $id) { vm { ...VmRow } ${OP} } } ${VM_ROW}`,
  stop: `mutation DashboardStop($id: ID) { stopVm(id: $id) { vm { ...VmRow } ${OP} } } ${VM_ROW}`,
  pause: `mutation DashboardPause($id: ID) { pauseVm(id: $id) { vm { ...VmRow } ${OP} } } ${VM_ROW}`,
  resume: `mutation DashboardResume($id: ID) { resumeVm(id: $id) { vm { ...VmRow } ${OP} } } ${VM_ROW}`,
  delete: `mutation DashboardDelete($id: ID) { deleteVm(id: $id) { ${OP} } }`,
};

export const ALL = [HEAD, VMS, VM_ROW_QUERY, VM_PAGE, ISSUES, EVENTS, STATS, CONSOLE, SEND_INPUT, ...Object.values(ACTIONS)];
