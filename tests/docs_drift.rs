//! Docs that cannot drift. The schema is documentation (GraphiQL shows its
//! descriptions), so every type, field, argument, enum value and input field
//! has one. And every value of vman's vocabularies (error codes, coherence
//! kinds, event kinds, VM states, config keys) is documented in `docs/`. The
//! values are read from the code, so a new one fails here until it is
//! documented.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::Write,
    path::Path,
    process::{Command, Stdio},
};

use sea_orm::{ActiveEnum, Iterable};
use vman::{
    coherence::CoherenceKind,
    error::{ApiError, RequestError},
    events::EventKind,
    vm::VmState,
};

/// Runs graphql-schema-linter over the built schema (what `schema.graphql`
/// holds). Its rules and ignore list are in `tests/js/package.json`: the
/// description rules only. The ignored `…Connection` types are async-graphql's
/// `Connection`, which has no place for a description (its fields, its edges
/// and `PageInfo` have theirs).
#[test]
fn every_schema_element_has_a_description() {
    let js = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/js");
    let linter = Path::new(js).join("node_modules/graphql-schema-linter/lib/cli.js");
    assert!(
        linter.is_file(),
        "{} is missing: run `make deps` (or `npm ci --prefix tests/js`)",
        linter.display()
    );
    let mut child = Command::new("node")
        .arg(&linter)
        .args(["--stdin", "--format", "compact"])
        .current_dir(js)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("node runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(vman::api::sdl().as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "graphql-schema-linter ({}): give each of these a doc comment (or, for an \
         argument, #[graphql(desc = \"...\")]), then `make schema`:\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn doc(name: &str) -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("docs")
            .join(name),
    )
    .unwrap_or_else(|e| panic!("docs/{name}: {e}"))
}

/// The text under `heading` (a whole line such as `## Errors`), up to the
/// next heading of the same or a higher level. Lines in code blocks are not
/// headings.
fn section<'a>(markdown: &'a str, heading: &str) -> &'a str {
    let level = heading.chars().take_while(|c| *c == '#').count();
    let mut start = None;
    let mut offset = 0;
    let mut in_code = false;
    for line in markdown.split_inclusive('\n') {
        let text = line.trim_end();
        if text.starts_with("```") {
            in_code = !in_code;
        } else if !in_code && text.starts_with('#') {
            let this = text.chars().take_while(|c| *c == '#').count();
            if let Some(start) = start {
                if this <= level {
                    return &markdown[start..offset];
                }
            } else if text == heading {
                start = Some(offset + line.len());
            }
        }
        offset += line.len();
    }
    match start {
        Some(start) => &markdown[start..],
        None => panic!("no heading {heading:?}"),
    }
}

/// The rows of the tables in `text`, by what their first cell names: each
/// name in backticks there (`A`, `B`), or the whole cell when it has none.
fn table_rows(text: &str) -> BTreeMap<String, String> {
    let mut rows = BTreeMap::new();
    for line in text.lines().filter(|l| l.starts_with('|')) {
        let first = line.split('|').nth(1).unwrap_or("").trim();
        let quoted: Vec<&str> = first.split('`').skip(1).step_by(2).collect();
        let names = if quoted.is_empty() {
            vec![first]
        } else {
            quoted
        };
        for name in names {
            rows.insert(name.to_string(), line.to_string());
        }
    }
    rows
}

/// Fails, naming them all, unless every value has a row in the tables under
/// `heading` in `docs/<file>`.
fn assert_documented(values: &[String], file: &str, heading: &str) {
    let text = doc(file);
    let rows = table_rows(section(&text, heading));
    let missing: Vec<&String> = values.iter().filter(|v| !rows.contains_key(*v)).collect();
    assert!(
        missing.is_empty(),
        "docs/{file}, under {heading:?}, has no table row for {missing:?}"
    );
}

/// Every variant of [`ApiError`]. The match has no `_` arm, so a new variant
/// does not compile until it is added here too.
fn every_api_error() -> Vec<ApiError> {
    let text = String::new;
    let all = vec![
        ApiError::BadUserInput(text()),
        ApiError::NotFound {
            kind: "VM",
            id: text(),
        },
        ApiError::Conflict(text()),
        ApiError::InvalidState(text()),
        ApiError::VmBusy {
            vm_id: text(),
            operation_id: text(),
            kind: text(),
        },
        ApiError::Host(text()),
        ApiError::Timeout(text()),
        ApiError::NotSupported(text()),
        ApiError::DatabaseBusy(text()),
        ApiError::StorageFull {
            path: Default::default(),
            free_bytes: 0,
            detail: text(),
        },
        ApiError::DatabaseFull(text()),
        ApiError::Unauthenticated(text()),
        ApiError::Forbidden(text()),
        ApiError::CursorAhead { after: 2, head: 1 },
        ApiError::Cancelled(text()),
        ApiError::HostUnavailable(text()),
        ApiError::Internal(Box::new(std::io::Error::other("x"))),
    ];
    for error in &all {
        match error {
            ApiError::BadUserInput(_)
            | ApiError::NotFound { .. }
            | ApiError::Conflict(_)
            | ApiError::InvalidState(_)
            | ApiError::VmBusy { .. }
            | ApiError::Host(_)
            | ApiError::Timeout(_)
            | ApiError::NotSupported(_)
            | ApiError::DatabaseBusy(_)
            | ApiError::StorageFull { .. }
            | ApiError::DatabaseFull(_)
            | ApiError::Unauthenticated(_)
            | ApiError::Forbidden(_)
            | ApiError::CursorAhead { .. }
            | ApiError::Cancelled(_)
            | ApiError::HostUnavailable(_)
            | ApiError::Internal(_) => {}
        }
    }
    all
}

/// Every variant of [`RequestError`] (the codes of requests refused before
/// they run), held to the code the same way as [`every_api_error`].
fn every_request_error() -> Vec<RequestError> {
    let all = vec![
        RequestError::ParseFailed,
        RequestError::ValidationFailed,
        RequestError::QueryTooDeep,
        RequestError::QueryTooComplex,
        RequestError::TooManyAliases,
        RequestError::TooManyRootFields,
        RequestError::BatchNotSupported,
        RequestError::IntrospectionDisabled,
    ];
    for error in &all {
        match error {
            RequestError::ParseFailed
            | RequestError::ValidationFailed
            | RequestError::QueryTooDeep
            | RequestError::QueryTooComplex
            | RequestError::TooManyAliases
            | RequestError::TooManyRootFields
            | RequestError::BatchNotSupported
            | RequestError::IntrospectionDisabled => {}
        }
    }
    all
}

#[test]
fn every_error_code_is_documented() {
    let codes: Vec<String> = every_api_error()
        .iter()
        .map(|e| e.code().to_string())
        .chain(every_request_error().iter().map(|e| e.code().to_string()))
        .collect();
    assert_documented(&codes, "API.md", "## Errors");
}

#[test]
fn every_coherence_kind_is_documented() {
    let kinds: Vec<String> = CoherenceKind::iter()
        .map(|k| k.as_str().to_string())
        .collect();
    assert_documented(&kinds, "API.md", "## Coherence issues");
    assert_documented(&kinds, "OPERATIONS.md", "### What to do about each kind");
}

#[test]
fn every_event_kind_is_documented() {
    let kinds: Vec<String> = EventKind::iter().map(|k| k.to_value()).collect();
    assert_documented(&kinds, "API.md", "## Events and subscriptions");
}

#[test]
fn every_operation_kind_is_documented() {
    let kinds: Vec<String> = vman::operation::OperationKind::iter()
        .map(|k| k.as_str().to_string())
        .collect();
    assert_documented(&kinds, "API.md", "### Operation kinds");
}

#[test]
fn every_vm_state_is_documented() {
    let states: Vec<String> = VmState::iter().map(|s| s.as_str().to_string()).collect();
    assert_documented(&states, "API.md", "### VM states");
    assert_documented(&states, "ARCHITECTURE.md", "## The VM state machine");
}

/// The dotted keys of a config serialized to JSON (`observer.interval`);
/// keys that are unset by default (`import_dir`) serialize as null, so none
/// is missed.
fn config_keys(prefix: &str, value: &serde_json::Value, keys: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, value) in map {
                let path = match prefix {
                    "" => key.clone(),
                    _ => format!("{prefix}.{key}"),
                };
                config_keys(&path, value, keys);
            }
        }
        _ => keys.push(prefix.to_string()),
    }
}

#[test]
fn every_config_key_is_documented_with_its_environment_name() {
    let config = serde_json::to_value(vman::config::Config::default()).unwrap();
    let mut keys = Vec::new();
    config_keys("", &config, &mut keys);
    assert!(keys.contains(&"observer.interval".to_string()), "{keys:?}");
    assert_documented(&keys, "CONFIGURATION.md", "## All keys");

    let text = doc("CONFIGURATION.md");
    let rows = table_rows(section(&text, "## All keys"));
    for key in &keys {
        let env = format!("`VMAN_{}`", key.replace('.', "_").to_uppercase());
        assert!(
            rows[key].contains(&env),
            "docs/CONFIGURATION.md: the row of `{key}` does not name {env}"
        );
    }
    let known: BTreeSet<&str> = keys.iter().map(String::as_str).collect();
    let stale: Vec<&String> = rows
        .keys()
        .filter(|k| *k != "key" && !k.starts_with("---") && !known.contains(k.as_str()))
        .collect();
    assert!(
        stale.is_empty(),
        "docs/CONFIGURATION.md lists keys the config does not have: {stale:?}"
    );
}
