// Every GraphQL document the dashboard sends, typed by gql.tada against
// ../schema.graphql (graphql.ts): `npm run build` runs `gql.tada check` and
// `tsc`, so a document that selects what the schema lacks, or a component
// that reads what its document does not select, breaks the build.
import { graphql, type ResultOf } from './graphql.ts';

export const HEAD = graphql(`
  query DashboardJournalHead { journalHead }`);

const VM_ROW = graphql(`
  fragment VmRow on Vm { id name state stateReason desiredState vcpus memoryMib }`);

/** A row of the VM table (what every VM query and mutation returns). */
export type VmRow = ResultOf<typeof VM_ROW>;

export const VMS = graphql(`
  query DashboardVms { vms(first: 500) { nodes { ...VmRow } } }`, [VM_ROW]);

export const VM_ROW_QUERY = graphql(`
  query DashboardVm($id: ID) { vm(id: $id) { ...VmRow } }`, [VM_ROW]);

export const VM_PAGE = graphql(`
  query DashboardVmPage($id: ID) {
    vm(id: $id) {
      ...VmRow
      disks { id name format sizeBytes attachment }
      nics { id mac model position tap attachment network { name } }
      snapshots { id name withMemory vmState createdAt }
    }
    operations(vmId: $id, first: 20, newestFirst: true) {
      nodes { id kind status progress { fraction bytesDone bytesTotal } error errorCode startedAt }
    }
  }`, [VM_ROW]);

export type VmPageData = ResultOf<typeof VM_PAGE>;
export type Operation = VmPageData['operations']['nodes'][number];

export const ISSUES = graphql(`
  query DashboardIssues {
    coherenceIssues(open: true, first: 100) {
      nodes { id kind subjectType subjectId expected observed detectedAt vm { id name } }
    }
  }`);

export const EVENTS = graphql(`
  subscription DashboardEvents($after: String) {
    events(after: $after) { sequence kind subjectId subjectType }
  }`);

export const STATS = graphql(`
  subscription DashboardStats { vmStats(intervalSeconds: 1) { vmId cpuPercent memoryRssBytes memoryBytes } }`);

export const CONSOLE = graphql(`
  subscription DashboardConsole($vm: ID!, $after: Bytes) {
    vmConsole(vmId: $vm, replayBytes: 65536, after: $after) { kind data nextOffset reason }
  }`);

export const SEND_INPUT = graphql(`
  mutation DashboardConsoleInput($vm: ID!, $data: String!) {
    sendConsoleInput(vmId: $vm, data: $data) { bytes }
  }`);

/** A running operation's progress bar: pushed at most every 250 ms, then its end. */
export const PROGRESS = graphql(`
  subscription DashboardOperationProgress($id: ID!) {
    operationProgress(id: $id) { operationId status progress { fraction bytesDone bytesTotal } }
  }`);

export type ProgressUpdate = ResultOf<typeof PROGRESS>['operationProgress'];

const OPERATION = graphql(`
  fragment ActionOperation on Operation { id kind status error errorCode }`);

/** The buttons: action name → mutation. */
export const ACTIONS = {
  start: graphql(`mutation DashboardStart($id: ID) { startVm(id: $id) { vm { ...VmRow } operation { ...ActionOperation } } }`, [VM_ROW, OPERATION]),
  stop: graphql(`mutation DashboardStop($id: ID) { stopVm(id: $id) { vm { ...VmRow } operation { ...ActionOperation } } }`, [VM_ROW, OPERATION]),
  pause: graphql(`mutation DashboardPause($id: ID) { pauseVm(id: $id) { vm { ...VmRow } operation { ...ActionOperation } } }`, [VM_ROW, OPERATION]),
  resume: graphql(`mutation DashboardResume($id: ID) { resumeVm(id: $id) { vm { ...VmRow } operation { ...ActionOperation } } }`, [VM_ROW, OPERATION]),
  delete: graphql(`mutation DashboardDelete($id: ID) { deleteVm(id: $id) { operation { ...ActionOperation } } }`, [OPERATION]),
};

export type Action = keyof typeof ACTIONS;
export type ActionOperation = ResultOf<typeof OPERATION>;
