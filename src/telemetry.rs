//! Logging and metrics.
//!
//! Logs go to stderr and to size-rotated files in the log directory (via
//! `file-rotate`, written off the request path by `tracing-appender`'s
//! non-blocking writer). Metrics are recorded with the `metrics` facade; with
//! no exporter installed the calls cost next to nothing.

use std::path::Path;

use file_rotate::{ContentLimit, FileRotate, compression::Compression, suffix::AppendCount};
use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::{EnvFilter, fmt, layer::SubscriberExt, util::SubscriberInitExt};

use crate::{config::LogConfig, operation::OperationStatus};

/// Installs the global subscriber. Keep the guard alive: dropping it flushes the file writer.
pub fn init_logging(config: &LogConfig, log_dir: Option<&Path>) -> Option<WorkerGuard> {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.level));
    let stderr = fmt::layer().with_writer(std::io::stderr).with_target(false);
    let (file, guard) = match log_dir {
        Some(dir) => {
            let rotating = FileRotate::new(
                dir.join("vman.log"),
                AppendCount::new(config.keep_files),
                ContentLimit::BytesSurpassed(config.max_bytes as usize),
                Compression::None,
                None,
            );
            let (writer, guard) = tracing_appender::non_blocking(rotating);
            (
                Some(fmt::layer().with_writer(writer).with_ansi(false)),
                Some(guard),
            )
        }
        None => (None, None),
    };
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(stderr)
        .with(file)
        .try_init();
    guard
}

pub fn events_published(count: usize) {
    metrics::counter!("vman_events_published_total").increment(count as u64);
}

pub fn lagged_subscriber() {
    metrics::counter!("vman_event_subscriber_lagged_total").increment(1);
}

pub fn operation_started(kind: &str) {
    metrics::counter!("vman_operations_started_total", "kind" => kind.to_string()).increment(1);
}

pub fn operation_finished(kind: &str, status: OperationStatus, took: chrono::TimeDelta) {
    let result = match status {
        OperationStatus::Succeeded => "succeeded",
        _ => "failed",
    };
    metrics::counter!("vman_operations_total", "kind" => kind.to_string(), "result" => result)
        .increment(1);
    metrics::histogram!("vman_operation_duration_seconds", "kind" => kind.to_string())
        .record(took.num_microseconds().unwrap_or(0) as f64 / 1e6);
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    #[test]
    fn log_files_rotate_by_size_and_keep_n() {
        let dir = tempfile::tempdir().unwrap();
        let mut file = FileRotate::new(
            dir.path().join("vman.log"),
            AppendCount::new(2),
            ContentLimit::BytesSurpassed(1000),
            Compression::None,
            None,
        );
        for _ in 0..100 {
            writeln!(file, "{}", "x".repeat(99)).unwrap();
        }
        let mut names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["vman.log", "vman.log.1", "vman.log.2"]);
    }
}
