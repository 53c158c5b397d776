//! How answers are printed: `-o json` prints the GraphQL data as the server
//! sent it (stable keys, for scripts); `-o table` prints columns for people.

use comfy_table::{Table, presets::NOTHING};
use serde_json::Value;

/// `-o`: the output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Columns with a header, for people.
    Table,
    /// The GraphQL `data`, pretty-printed; one object a line when following.
    Json,
}

/// One column: its header and the path to its value in a row (`template.name`).
pub type Column = (&'static str, &'static str);

/// The value at a dotted `path` in `row`, as text (`-` when absent); over a
/// list, the value in each item (`disks.name`).
pub fn cell(row: &Value, path: &str) -> String {
    let keys: Vec<&str> = path.split('.').collect();
    text(&lookup(row, &keys))
}

fn lookup(value: &Value, keys: &[&str]) -> Value {
    match (value, keys) {
        (_, []) => value.clone(),
        (Value::Array(items), _) => Value::Array(items.iter().map(|i| lookup(i, keys)).collect()),
        (_, [key, rest @ ..]) => value.get(key).map_or(Value::Null, |v| lookup(v, rest)),
    }
}

fn text(value: &Value) -> String {
    match value {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        Value::Array(items) if items.is_empty() => "-".into(),
        Value::Array(items) => items.iter().map(text).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

/// `rows` under a header of `columns`.
pub fn table(columns: &[Column], rows: &[Value]) -> String {
    let mut table = Table::new();
    table
        .load_preset(NOTHING)
        .set_header(columns.iter().map(|(header, _)| *header));
    for row in rows {
        table.add_row(columns.iter().map(|(_, path)| cell(row, path)));
    }
    table
        .lines()
        .map(|line| line.trim().to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

/// One object as `FIELD  value` lines.
pub fn fields(columns: &[Column], row: &Value) -> String {
    let mut table = Table::new();
    table.load_preset(NOTHING);
    for (header, path) in columns {
        table.add_row([header.to_string(), cell(row, path)]);
    }
    table
        .lines()
        .map(|line| line.trim().to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Prints `data` as JSON, or as `render` makes it a table.
pub fn print(format: Format, data: &Value, render: impl FnOnce(&Value) -> String) {
    match format {
        Format::Json => println!(
            "{}",
            serde_json::to_string_pretty(data).expect("JSON values serialize")
        ),
        Format::Table => println!("{}", render(data)),
    }
}
