//! Streams: the journal (`events`, `ops --follow`) and a long operation's
//! progress bar. Following the journal survives a server restart: it
//! reconnects with back-off and resumes after the last sequence printed, so
//! nothing is printed twice and nothing is missed.

use std::time::Duration;

use futures_util::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;

use super::{
    client::{Client, Failure, server_error},
    output::{Column, Format, cell, table},
    queries::*,
    to_json,
};

const EVENT_COLUMNS: &[Column] = &[
    ("SEQ", "sequence"),
    ("AT", "at"),
    ("KIND", "kind"),
    ("SUBJECT", "subjectType"),
    ("SUBJECT_ID", "subjectId"),
    ("OPERATION", "operationId"),
];

/// Prints one event: a JSON object a line, or a table row (the header
/// before the first).
struct EventPrinter {
    format: Format,
    printed_header: bool,
}

impl EventPrinter {
    fn print(&mut self, event: &Value) {
        match self.format {
            Format::Json => println!("{event}"),
            // Fixed widths: rows come one at a time.
            Format::Table => {
                if !self.printed_header {
                    let headers: Vec<&str> = EVENT_COLUMNS.iter().map(|(h, _)| *h).collect();
                    println!("{}", row(&headers));
                    self.printed_header = true;
                }
                let cells: Vec<String> =
                    EVENT_COLUMNS.iter().map(|(_, p)| cell(event, p)).collect();
                println!("{}", row(&cells));
            }
        }
    }
}

fn row(cells: &[impl AsRef<str>]) -> String {
    let widths = [8, 35, 22, 10, 36, 0];
    cells
        .iter()
        .zip(widths)
        .map(|(c, w)| format!("{:<w$}", c.as_ref()))
        .collect::<Vec<_>>()
        .join(" ")
        .trim_end()
        .to_string()
}

/// `events` without `--follow`: the journal after `after`, a page at a time.
pub async fn journal(
    client: &Client,
    format: Format,
    after: Option<String>,
) -> Result<(), Failure> {
    let mut after = after;
    let mut printer = EventPrinter {
        format,
        printed_header: false,
    };
    // The table aligns its columns over the whole journal.
    let mut all = Vec::new();
    loop {
        let variables = event_page::Variables {
            after: after.clone(),
            first: Some(500),
        };
        let page = to_json(client.run::<EventPage>(variables).await?);
        let events = page["events"]["nodes"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if let Some(last) = events.last() {
            after = last["sequence"].as_str().map(str::to_string);
        }
        match format {
            Format::Json => events.iter().for_each(|e| printer.print(e)),
            Format::Table => all.extend(events),
        }
        if page["events"]["pageInfo"]["hasNextPage"] != Value::Bool(true) {
            break;
        }
    }
    if format == Format::Table {
        println!("{}", table(EVENT_COLUMNS, &all));
    }
    Ok(())
}

/// `events --follow` (and `ops --follow`, `operations_only`): live events
/// after `after`, across reconnections, until interrupted.
pub async fn events(
    client: &Client,
    format: Format,
    after: Option<String>,
    operations_only: bool,
) -> Result<(), Failure> {
    // Without `--after`, from the journal's head now: a connection that
    // drops before the first event then resumes from there, missing nothing.
    let after = match after {
        Some(after) => after,
        None => {
            client
                .run::<JournalHead>(journal_head::Variables)
                .await?
                .journal_head
        }
    };
    let mut last: Option<u64> = after.parse().ok();
    let mut printer = EventPrinter {
        format,
        printed_header: false,
    };
    let mut backoff = Duration::from_millis(100);
    loop {
        let variables = event_feed::Variables {
            after: last.map(|n| n.to_string()),
        };
        match client.subscribe::<EventFeed>(variables).await {
            Ok(mut stream) => {
                while let Some(item) = stream.next().await {
                    let Ok(response) = item else { break };
                    if let Some(error) = response.errors.unwrap_or_default().first() {
                        return Err(server_error(error));
                    }
                    let Some(data) = response.data else { continue };
                    let event = to_json(data.events);
                    let Some(sequence) = event["sequence"].as_str().and_then(|s| s.parse().ok())
                    else {
                        continue;
                    };
                    // A resumed stream starts after `last`; never print twice.
                    if last.is_some_and(|last| sequence <= last) {
                        continue;
                    }
                    last = Some(sequence);
                    backoff = Duration::from_millis(100);
                    if !operations_only || !event["operationId"].is_null() {
                        printer.print(&event);
                    }
                }
            }
            Err(Failure::Unreachable(why)) => {
                note(&format!("{why}; retrying in {backoff:?}"));
            }
            Err(other) => return Err(other),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// A note on stderr (stdout stays the data).
fn note(text: &str) {
    eprintln!("vman: {text}");
}

/// Waits for the end of an operation a mutation answered with (`operation`,
/// updated to how it ended), with a progress bar on stderr while it runs;
/// whether it ran on after the answer. An operation that FAILED is the
/// command's failure, with the operation's error code.
pub async fn operation_end(client: &Client, operation: &mut Value) -> Result<bool, Failure> {
    let Some(id) = operation["id"].as_str().map(str::to_string) else {
        return Ok(false);
    };
    let ran_on = matches!(operation["status"].as_str(), Some("RUNNING" | "PENDING"));
    if ran_on {
        let bar = ProgressBar::new(0).with_style(
            ProgressStyle::with_template(
                "{spinner} {msg} [{bar:30}] {bytes}/{total_bytes} ({eta} left)",
            )
            .expect("a valid template"),
        );
        bar.set_message(
            operation["kind"]
                .as_str()
                .unwrap_or("operation")
                .to_string(),
        );
        bar.enable_steady_tick(Duration::from_millis(200));
        let variables = operation_feed::Variables { id: id.clone() };
        let mut stream = client.subscribe::<OperationFeed>(variables).await?;
        while let Some(item) = stream.next().await {
            let Ok(response) = item else { break };
            if let Some(item) = response.data.map(|d| d.operation_progress) {
                if let Some(progress) = &item.progress {
                    bar.set_length(progress.bytes_total.as_u64().unwrap_or(0));
                    bar.set_position(progress.bytes_done.as_u64().unwrap_or(0));
                }
                operation["progress"] = to_json(item.progress);
            }
        }
        bar.finish_and_clear();
    }
    let variables = operation_show::Variables { id: id.clone() };
    let Some(ended) = client.run::<OperationShow>(variables).await?.operation else {
        return Ok(ran_on);
    };
    operation["status"] = to_json(&ended.status);
    let operation = ended;
    match operation.status {
        operation_show::OperationStatus::FAILED | operation_show::OperationStatus::CANCELLED => {
            Err(Failure::Server {
                code: operation.error_code.unwrap_or_else(|| "HOST_ERROR".into()),
                message: format!(
                    "{} {}: {}{}",
                    operation.kind,
                    operation.id,
                    operation.error.unwrap_or_default(),
                    operation
                        .failed_step
                        .map(|s| format!(" (at {s})"))
                        .unwrap_or_default()
                ),
            })
        }
        _ => Ok(ran_on),
    }
}
