//! Every list the API offers is read through an index: each query below runs
//! over real HTTP against a migrated SQLite file, the statements sea-orm
//! really sent for it are recorded (`App::statements`), and each SELECT goes
//! through `EXPLAIN QUERY PLAN`. A full `SCAN` of a table that grows with use
//! (VMs, disks, NICs, tags, operations, events, coherence issues) fails the
//! test, and so does sorting a page in a temporary b-tree, unless the case
//! says why it cannot be helped.

mod common;

use common::TestServer;
use sea_orm::{ConnectionTrait, Statement};
use serde_json::{Value, json};

/// Tables whose rows grow with use: reading one of them must not walk it all.
const BIG: &[&str] = &[
    "vms",
    "disks",
    "nics",
    "vm_tags",
    "operations",
    "events",
    "coherence_issues",
];

struct Case {
    /// What the case reads, for messages.
    what: &'static str,
    query: &'static str,
    /// A scan of these tables is what the query asks for (a count of a whole
    /// table, a substring match), with the reason in the case's `what`.
    may_scan: &'static [&'static str],
    /// Sorting the matching rows is what the query asks for (the reason in
    /// `what`).
    may_sort: bool,
}

const CASES: &[Case] = &[
    Case {
        what: "vms, oldest first (the count of all VMs reads them all)",
        query: "{ vms(first: 2) { totalCount edges { cursor node { id } } } }",
        may_scan: &["vms"],
        may_sort: false,
    },
    Case {
        what: "vms by name",
        query: "{ vms(first: 2, orderBy: NAME) { edges { cursor node { id } } } }",
        may_scan: &["vms"],
        may_sort: false,
    },
    Case {
        what: "vms by state",
        query: "{ vms(first: 2, orderBy: STATE) { edges { cursor node { id } } } }",
        may_scan: &["vms"],
        may_sort: false,
    },
    Case {
        what: "vms in a state",
        query: "{ vms(first: 2, state: STOPPED) { totalCount edges { cursor node { id } } } }",
        may_scan: &[],
        may_sort: false,
    },
    Case {
        what: "vms in a state, by name",
        query: "{ vms(first: 2, state: STOPPED, orderBy: NAME) { totalCount edges { cursor node { id } } } }",
        may_scan: &[],
        may_sort: false,
    },
    Case {
        what: "vms in a state, by state",
        query: "{ vms(first: 2, state: STOPPED, orderBy: STATE) { totalCount edges { cursor node { id } } } }",
        may_scan: &[],
        may_sort: false,
    },
    Case {
        what: "vms with a tag",
        query: "{ vms(first: 2, tag: \"web\") { totalCount edges { cursor node { id } } } }",
        may_scan: &[],
        may_sort: false,
    },
    Case {
        what: "vms with a tag, by name (the VMs with the tag are sorted by name)",
        query: "{ vms(first: 2, tag: \"web\", orderBy: NAME) { totalCount edges { cursor node { id } } } }",
        may_scan: &[],
        may_sort: true,
    },
    Case {
        what: "vms with a tag in a state",
        query: "{ vms(first: 2, tag: \"web\", state: STOPPED) { totalCount edges { cursor node { id } } } }",
        may_scan: &[],
        may_sort: false,
    },
    Case {
        what: "vms whose name contains a text (a substring match reads every name)",
        query: "{ vms(first: 2, nameContains: \"vm\") { totalCount edges { cursor node { id } } } }",
        may_scan: &["vms"],
        may_sort: false,
    },
    Case {
        what: "a page of vms with everything nested in a VM",
        query: "{ vms(first: 5) { edges { node { id template { id } disks { id vm { id } backingTemplate { id } } nics { id vm { id } network { id } } tags pendingChanges { vcpus } coherenceIssues(open: true) { id } } } } }",
        may_scan: &["vms"],
        may_sort: false,
    },
    Case {
        what: "a vm by name",
        query: "{ vm(name: \"vm-1\") { id } }",
        may_scan: &[],
        may_sort: false,
    },
    Case {
        what: "disks of a VM",
        query: "{ vms(first: 1) { edges { node { id } } } disks(first: 2) { totalCount edges { cursor node { id } } } }",
        may_scan: &["vms", "disks"],
        may_sort: false,
    },
    Case {
        what: "a template's VMs",
        query: "{ templates(first: 1) { totalCount edges { node { id vms { id } } } } }",
        may_scan: &[],
        may_sort: false,
    },
    Case {
        what: "a network's NICs",
        query: "{ networks(first: 1) { totalCount edges { node { id nics { id } } } } }",
        may_scan: &[],
        may_sort: false,
    },
    Case {
        what: "operations (all of them: counted whole)",
        query: "{ operations(first: 2) { totalCount edges { cursor node { id } } } }",
        may_scan: &["operations"],
        may_sort: false,
    },
    Case {
        what: "operations of an actor",
        query: "{ operations(first: 2, actor: \"local\") { totalCount edges { cursor node { id } } } }",
        may_scan: &[],
        may_sort: false,
    },
    Case {
        what: "events (all of them: counted whole)",
        query: "{ events(first: 2) { totalCount edges { cursor node { sequence } } } }",
        may_scan: &["events"],
        may_sort: false,
    },
    Case {
        what: "open coherence issues",
        query: "{ coherenceIssues(open: true, first: 2) { totalCount edges { cursor node { id } } } }",
        may_scan: &[],
        may_sort: false,
    },
    Case {
        what: "hosts (a cluster's few, listed whole in name order)",
        query: "{ hosts { id name } }",
        may_scan: &["hosts"],
        may_sort: false,
    },
    Case {
        what: "the hosts of a page of VMs",
        query: "{ vms(first: 5) { edges { node { id host { id name } } } } }",
        may_scan: &["vms"],
        may_sort: false,
    },
    Case {
        what: "resolved coherence issues",
        query: "{ coherenceIssues(open: false, first: 2) { totalCount edges { cursor node { id } } } }",
        may_scan: &[],
        may_sort: false,
    },
];

/// Cases whose arguments name a row: run with the IDs the seed made.
/// None may scan or sort.
const NAMED_CASES: &[(&str, &str)] = &[
    (
        "disks of a VM",
        "query($v: ID!) { disks(vmId: $v, first: 2) { totalCount edges { cursor node { id } } } }",
    ),
    (
        "operations of a VM",
        "query($v: ID!) { operations(vmId: $v, first: 2) { totalCount edges { cursor node { id } } } }",
    ),
    (
        "operations of a VM, newest first",
        "query($v: ID!) { operations(vmId: $v, first: 2, newestFirst: true) { totalCount edges { cursor node { id } } } }",
    ),
    ("a vm by ID", "query($v: ID!) { vm(id: $v) { id } }"),
];

async fn seeded() -> (TestServer, String) {
    let server = TestServer::start().await;
    server.create_template("small").await;
    let mut first = None;
    for i in 0..3 {
        let id = server
            .ok(
                "mutation($n: String!) { createVm(input: {name: $n, templateName: \"small\", tags: [\"web\", \"eu\"]}) { vm { id } } }",
                json!({"n": format!("vm-{i}")}),
            )
            .await["createVm"]["vm"]["id"]
            .as_str()
            .unwrap()
            .to_string();
        first.get_or_insert(id);
    }
    server.create_network("lan", 10).await;
    server
        .ok(
            "mutation { attachNic(vmName: \"vm-0\", networkName: \"lan\") { nic { id } } }",
            json!({}),
        )
        .await;
    (server, first.unwrap())
}

/// The plan's lines for one statement.
async fn explain(server: &TestServer, statement: &Statement) -> Vec<String> {
    let db = &server.app.ctx.db;
    let explained = Statement {
        sql: format!("EXPLAIN QUERY PLAN {}", statement.sql),
        ..statement.clone()
    };
    db.query_all_raw(explained)
        .await
        .unwrap_or_else(|e| panic!("explaining {}: {e}", statement.sql))
        .iter()
        .map(|row| row.try_get_by::<String, _>("detail").unwrap())
        .collect()
}

/// Partial indexes: a walk of one reads only the rows it holds.
const PARTIAL: &[&str] = &["idx_coherence_issues_open"];

/// What a case allows.
#[derive(Clone, Copy)]
struct Allowed<'a> {
    scan: &'a [&'a str],
    sort: bool,
}

/// What is wrong with a plan line of a statement, if anything. A walk of an
/// index in its order under a LIMIT (a page by name, say) stops after the
/// page: that is no full scan.
fn fault(line: &str, limited: bool, allowed: Allowed) -> Option<String> {
    if line.contains("USE TEMP B-TREE FOR ORDER BY") {
        return (!allowed.sort).then(|| "sorts in a temporary b-tree".into());
    }
    let scanned = line.strip_prefix("SCAN ")?;
    let table = scanned.split_whitespace().next()?;
    let ordered_walk = limited && scanned.contains(" INDEX ");
    let partial = PARTIAL
        .iter()
        .any(|index| scanned.ends_with(&format!(" INDEX {index}")));
    (BIG.contains(&table) && !allowed.scan.contains(&table) && !ordered_walk && !partial)
        .then(|| format!("reads all of {table}"))
}

/// Runs `query` (and, when it has one, its next page), explains each SELECT
/// it sent and returns the faults found.
async fn check(
    server: &TestServer,
    what: &str,
    query: &str,
    variables: Value,
    allowed: Allowed<'_>,
) -> Vec<String> {
    let mut faults = Vec::new();
    let recording = server.app.statements.record();
    let data = server.ok(query, variables.clone()).await;
    // The next page, where the query has a cursor to follow: its SQL differs
    // (`… AND key > ?`).
    if let Some(cursor) = first_cursor(&data) {
        let paged = query.replacen("first: 2", "first: 2, after: $after", 1);
        let paged = match paged.strip_prefix("query(") {
            Some(rest) => format!("query($after: String, {rest}"),
            None => format!("query($after: String) {paged}"),
        };
        let mut variables = variables;
        variables["after"] = json!(cursor);
        server.ok(&paged, variables).await;
    }
    let statements = recording.finish();
    let selects: Vec<&Statement> = statements
        .iter()
        .filter(|s| s.sql.trim_start().to_uppercase().starts_with("SELECT"))
        // The node's heartbeat reads the hosts in the background.
        .filter(|s| query.contains("host") || !s.sql.contains("\"hosts\""))
        .collect();
    assert!(!selects.is_empty(), "{what}: no SELECT was recorded");
    for statement in selects {
        let plan = explain(server, statement).await;
        let limited = statement.sql.contains(" LIMIT ");
        for line in &plan {
            if let Some(fault) = fault(line, limited, allowed) {
                faults.push(format!(
                    "{what}: {fault}\n  sql: {}\n  plan: {plan:?}",
                    statement.sql
                ));
            }
        }
    }
    faults
}

fn first_cursor(data: &Value) -> Option<String> {
    data.as_object()?
        .values()
        .find_map(|list| list["edges"][0]["cursor"].as_str().map(str::to_string))
}

#[tokio::test]
async fn every_list_is_read_through_an_index() {
    let (server, vm) = seeded().await;
    let mut faults = Vec::new();
    for case in CASES {
        let allowed = Allowed {
            scan: case.may_scan,
            sort: case.may_sort,
        };
        faults.extend(check(&server, case.what, case.query, json!({}), allowed).await);
    }
    let strict = Allowed {
        scan: &[],
        sort: false,
    };
    for (what, query) in NAMED_CASES {
        faults.extend(check(&server, what, query, json!({"v": vm}), strict).await);
    }
    assert!(faults.is_empty(), "{}", faults.join("\n"));
}

#[test]
fn a_full_scan_of_a_big_table_is_a_fault_and_a_search_is_not() {
    let strict = Allowed {
        scan: &[],
        sort: false,
    };
    let vms = Allowed {
        scan: &["vms"],
        sort: false,
    };
    assert!(fault("SCAN vms", true, strict).is_some());
    assert!(fault("SCAN disks USING INDEX idx_disks_vm", false, strict).is_some());
    assert!(fault("SCAN vms USING INDEX sqlite_autoindex_vms_2", true, strict).is_none());
    assert!(fault("SCAN vms", false, vms).is_none());
    assert!(
        fault(
            "SEARCH vms USING INDEX idx_vms_state (state=?)",
            false,
            strict
        )
        .is_none()
    );
    assert!(fault("SCAN templates", false, strict).is_none());
    assert!(fault("USE TEMP B-TREE FOR ORDER BY", true, vms).is_some());
    let sorted = Allowed {
        scan: &[],
        sort: true,
    };
    assert!(fault("USE TEMP B-TREE FOR ORDER BY", true, sorted).is_none());
    let open = "SCAN coherence_issues USING INDEX idx_coherence_issues_open";
    assert!(fault(open, false, strict).is_none());
}
