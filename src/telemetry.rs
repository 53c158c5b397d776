//! Logging and metrics.
//!
//! Logs go to stderr and to size-rotated files in the log directory (via
//! `file-rotate`, written off the request path by `tracing-appender`'s
//! non-blocking writer). Metrics are recorded with the `metrics` facade; with
//! no exporter installed the calls cost next to nothing.

use std::{path::Path, sync::OnceLock, time::Instant};

use async_graphql::{
    Response, ServerResult, Variables,
    extensions::{Extension, ExtensionContext, ExtensionFactory, NextExecute, NextParseQuery},
    parser::types::{ExecutableDocument, OperationType},
};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use file_rotate::{ContentLimit, FileRotate, compression::Compression, suffix::AppendCount};
use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::{EnvFilter, fmt, layer::SubscriberExt, util::SubscriberInitExt};

use crate::config::LogConfig;

/// Installs the global subscriber. Keep the guard alive: dropping it flushes the file writer.
pub fn init_logging(config: &LogConfig, log_dir: Option<&Path>) -> Option<WorkerGuard> {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.level));
    // Colours only for a person at a terminal (not in a journal or a pipe),
    // and not when NO_COLOR asks for none.
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let stderr = fmt::layer()
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(colour);
    let (file, guard) = match log_dir {
        Some(dir) => {
            let rotating = FileRotate::new(
                dir.join("vman.log"),
                AppendCount::new(config.keep_files),
                ContentLimit::BytesSurpassed(config.max_bytes as usize),
                Compression::None,
                None,
            );
            let (writer, guard) =
                tracing_appender::non_blocking(LogFile::new(rotating, dir.to_path_buf()));
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

/// The log file's writer: a rotating file that never fails its caller. A
/// line that cannot be written (a full disk, a log directory removed) is
/// dropped and counted; the next line that can be written is preceded by
/// one that says how many were lost. Logging thus never stops vman, and
/// resumes by itself once there is room again (`file-rotate` reopens its
/// file at the next rotation or write).
pub struct LogFile<W> {
    inner: W,
    dir: std::path::PathBuf,
    dropped: u64,
}

impl<W: std::io::Write> LogFile<W> {
    pub fn new(inner: W, dir: std::path::PathBuf) -> Self {
        LogFile {
            inner,
            dir,
            dropped: 0,
        }
    }

    fn try_write(&mut self, line: &[u8]) -> std::io::Result<()> {
        // `file-rotate` panics when it must make a missing log directory and
        // cannot: make it here first, or drop the line.
        if !self.dir.is_dir() {
            std::fs::create_dir_all(&self.dir)?;
        }
        if self.dropped > 0 {
            let notice = format!(
                "{} WARN vman: {} log lines were dropped: they could not be written to {}\n",
                chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
                self.dropped,
                self.dir.display()
            );
            self.inner.write_all(notice.as_bytes())?;
            self.dropped = 0;
        }
        self.inner.write_all(line)
    }
}

impl<W: std::io::Write> std::io::Write for LogFile<W> {
    fn write(&mut self, line: &[u8]) -> std::io::Result<usize> {
        if self.try_write(line).is_err() {
            self.dropped += 1;
        }
        Ok(line.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = self.inner.flush();
        Ok(())
    }
}

/// The process-wide Prometheus recorder (installed once, on first use).
pub fn prometheus() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets(&[
                0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
            ])
            .expect("static buckets")
            .build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!(
                "a metrics recorder was already installed; /metrics shows only vman's own"
            );
        }
        handle
    })
}

/// Gauges read from the database at scrape time, by their label value:
/// one `(gauge name, label name, [(label value, count)])` per gauge.
pub type Gauges = Vec<(&'static str, &'static str, Vec<(&'static str, u64)>)>;

/// The text a Prometheus scrape gets. The gauges that mirror the database
/// are read by the caller (the services own those counts) and set now.
pub fn render(gauges: Gauges) -> String {
    let handle = prometheus();
    for (name, label, values) in gauges {
        for (value, count) in values {
            metrics::gauge!(name, label => value).set(count as f64);
        }
    }
    handle.render()
}

/// Counts GraphQL requests by operation type, with their duration.
pub struct GraphqlMetrics;

impl ExtensionFactory for GraphqlMetrics {
    fn create(&self) -> std::sync::Arc<dyn Extension> {
        std::sync::Arc::new(GraphqlMetricsExtension {
            operation: std::sync::Mutex::new("unknown"),
        })
    }
}

struct GraphqlMetricsExtension {
    operation: std::sync::Mutex<&'static str>,
}

#[async_trait::async_trait]
impl Extension for GraphqlMetricsExtension {
    async fn parse_query(
        &self,
        ctx: &ExtensionContext<'_>,
        query: &str,
        variables: &Variables,
        next: NextParseQuery<'_>,
    ) -> ServerResult<ExecutableDocument> {
        let document = next.run(ctx, query, variables).await?;
        let kind = match document.operations.iter().next().map(|(_, op)| op.node.ty) {
            Some(OperationType::Query) => "query",
            Some(OperationType::Mutation) => "mutation",
            Some(OperationType::Subscription) => "subscription",
            None => "unknown",
        };
        *self.operation.lock().expect("operation type") = kind;
        Ok(document)
    }

    async fn execute(
        &self,
        ctx: &ExtensionContext<'_>,
        operation_name: Option<&str>,
        next: NextExecute<'_>,
    ) -> Response {
        let started = Instant::now();
        let response = next.run(ctx, operation_name).await;
        let kind = *self.operation.lock().expect("operation type");
        graphql_request(kind, response.errors.is_empty(), started);
        response
    }
}

/// Counts one executed GraphQL request of `kind` (`query`, `mutation`,
/// `subscription`) that began at `started`.
pub fn graphql_request(kind: &'static str, ok: bool, started: Instant) {
    let result = if ok { "ok" } else { "error" };
    metrics::counter!("vman_graphql_requests_total", "operation" => kind, "result" => result)
        .increment(1);
    metrics::histogram!("vman_graphql_request_duration_seconds", "operation" => kind)
        .record(started.elapsed().as_secs_f64());
}

pub fn qmp_command(command: &'static str, took: std::time::Duration, timed_out: bool) {
    metrics::histogram!("vman_qmp_command_duration_seconds", "command" => command)
        .record(took.as_secs_f64());
    if timed_out {
        metrics::counter!("vman_qmp_timeouts_total", "command" => command).increment(1);
    }
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

/// `succeeded` is the outcome: the counter's `result` label.
pub fn operation_finished(kind: &str, succeeded: bool, took: chrono::TimeDelta) {
    let result = if succeeded { "succeeded" } else { "failed" };
    metrics::counter!("vman_operations_total", "kind" => kind.to_string(), "result" => result)
        .increment(1);
    metrics::histogram!("vman_operation_duration_seconds", "kind" => kind.to_string())
        .record(took.num_microseconds().unwrap_or(0) as f64 / 1e6);
}

pub fn coherence_finding(kind: &'static str) {
    metrics::counter!("vman_coherence_findings_total", "kind" => kind).increment(1);
}

pub fn coherence_sweep(took: std::time::Duration, failed: bool) {
    metrics::counter!("vman_coherence_sweeps_total").increment(1);
    metrics::histogram!("vman_coherence_sweep_duration_seconds").record(took.as_secs_f64());
    if failed {
        metrics::counter!("vman_coherence_sweeps_failed_total").increment(1);
    }
}

pub fn coherence_repair(kind: &'static str) {
    metrics::counter!("vman_coherence_repairs_total", "kind" => kind).increment(1);
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

    /// A tmpfs of `mib` MiB on a temp dir, unmounted when dropped; None
    /// (the test is skipped) where mounting is not allowed.
    struct Tmpfs(tempfile::TempDir);

    impl Tmpfs {
        fn mount(mib: u64) -> Option<Tmpfs> {
            let dir = tempfile::tempdir().unwrap();
            let mounted = std::process::Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
                .arg(dir.path())
                .output()
                .is_ok_and(|out| out.status.success());
            mounted.then_some(Tmpfs(dir))
        }
    }

    impl Drop for Tmpfs {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(self.0.path())
                .status();
        }
    }

    /// On a full disk the log file's writer drops lines (counting them) and
    /// never fails its caller, through rotations too; once there is room
    /// again, the next line is written after one that says how many were
    /// lost.
    #[test]
    fn log_lines_a_full_disk_refuses_are_dropped_counted_and_logging_resumes() {
        let Some(fs) = Tmpfs::mount(1) else {
            println!("SKIPPED: mount -t tmpfs is not permitted here");
            return;
        };
        let logs = fs.0.path().join("logs");
        std::fs::create_dir(&logs).unwrap();
        let rotating = FileRotate::new(
            logs.join("vman.log"),
            AppendCount::new(2),
            ContentLimit::BytesSurpassed(4096),
            Compression::None,
            None,
        );
        let mut file = LogFile::new(rotating, logs.clone());
        writeln!(file, "before").unwrap();
        let filler = fs.0.path().join("filler");
        let mut fill = std::fs::File::create(&filler).unwrap();
        let block = vec![0u8; 4096];
        while fill.write_all(&block).is_ok() {}
        while fill.write_all(&block[..1]).is_ok() {}
        drop(fill);

        for n in 0..500 {
            writeln!(file, "line {n} {}", "x".repeat(100)).unwrap();
        }
        file.flush().unwrap();
        assert!(file.dropped > 0, "lines were dropped on the full disk");

        std::fs::remove_file(&filler).unwrap();
        writeln!(file, "after").unwrap();
        file.flush().unwrap();
        let mut text = String::new();
        for name in ["vman.log.2", "vman.log.1", "vman.log"] {
            text += &std::fs::read_to_string(logs.join(name)).unwrap_or_default();
        }
        assert!(text.contains("before"), "{text}");
        assert!(text.contains("log lines were dropped"), "{text}");
        assert!(text.trim_end().ends_with("after"), "{text}");
    }
}

#[cfg(test)]
mod export_tests {
    use std::time::Duration;

    use super::*;

    /// The metrics dashboards read are exported under their names, with
    /// their labels. (Labels unique to this test: the recorder is global.)
    #[test]
    fn helpers_export_their_metrics() {
        let handle = prometheus();
        qmp_command("export-test-command", Duration::from_millis(3), true);
        qmp_command("export-test-command", Duration::from_millis(4), false);
        lagged_subscriber();
        events_published(3);
        operation_started("EXPORT_TEST");
        operation_finished("EXPORT_TEST", false, chrono::TimeDelta::milliseconds(20));
        operation_finished("EXPORT_TEST", true, chrono::TimeDelta::milliseconds(20));
        coherence_finding("export-test-kind");
        coherence_repair("export-test-kind");
        coherence_sweep(Duration::from_millis(2), true);

        let text = handle.render();
        for line in [
            r#"vman_qmp_timeouts_total{command="export-test-command"} 1"#,
            r#"vman_qmp_command_duration_seconds_count{command="export-test-command"} 2"#,
            r#"vman_operations_started_total{kind="EXPORT_TEST"} 1"#,
            r#"vman_operations_total{kind="EXPORT_TEST",result="failed"} 1"#,
            r#"vman_operations_total{kind="EXPORT_TEST",result="succeeded"} 1"#,
            r#"vman_operation_duration_seconds_count{kind="EXPORT_TEST"} 2"#,
            r#"vman_coherence_findings_total{kind="export-test-kind"} 1"#,
            r#"vman_coherence_repairs_total{kind="export-test-kind"} 1"#,
        ] {
            assert!(text.lines().any(|l| l == line), "no {line} in\n{text}");
        }
        for name in [
            "vman_event_subscriber_lagged_total ",
            "vman_events_published_total ",
            "vman_coherence_sweeps_total ",
            "vman_coherence_sweeps_failed_total ",
            "vman_coherence_sweep_duration_seconds_bucket{le=\"0.005\"} ",
        ] {
            assert!(
                text.lines().any(|l| l.starts_with(name)),
                "no {name} in\n{text}"
            );
        }
    }

    /// `vman serve` logs to a rotated file in the log directory too.
    #[test]
    fn logs_go_to_a_file_in_the_log_directory() {
        let dir = tempfile::tempdir().unwrap();
        let config = LogConfig {
            // Only this test's events: the subscriber is process-wide.
            level: "vman_log_file_test=info".into(),
            max_bytes: 4096,
            keep_files: 1,
        };
        let guard = init_logging(&config, Some(dir.path())).expect("a file writer");
        tracing::info!(target: "vman_log_file_test", "into the file");
        // Dropping the guard flushes the writer's queue.
        drop(guard);
        if std::env::var_os("RUST_LOG").is_some() {
            println!("SKIPPED the log file's content: RUST_LOG replaces the filter");
            return;
        }
        let text = std::fs::read_to_string(dir.path().join("vman.log")).unwrap();
        assert!(text.contains("into the file"), "{text:?}");
        assert!(!text.contains('\u{1b}'), "no colours in a file: {text:?}");
        // Without a log directory there is no file writer to keep.
        assert!(init_logging(&config, None).is_none());
    }
}
