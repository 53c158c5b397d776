//! Docs that cannot drift. The schema is documentation (GraphiQL shows its
//! descriptions), so every type, field, argument, enum value and input field
//! has one.

use std::{
    io::Write,
    path::Path,
    process::{Command, Stdio},
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
