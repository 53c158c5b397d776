//! The `vman` command: serve, migrate, schema, config check.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use vman::config::{CliOverrides, Config, Sources};

#[derive(Parser)]
#[command(
    name = "vman",
    version,
    about = "A virtual-machine manager with one GraphQL API"
)]
struct Cli {
    /// The config file (default ./vman.toml; a missing file is fine).
    #[arg(long, global = true, env = "VMAN_CONFIG", default_value = "vman.toml")]
    config: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the API server.
    Serve {
        #[arg(long)]
        listen: Option<SocketAddr>,
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Plan host steps and record them, never touch the host.
        #[arg(long)]
        dry_run: bool,
    },
    /// Apply database migrations and exit.
    Migrate {
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Print the GraphQL schema (SDL).
    Schema,
    /// Configuration commands.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate and print the effective config, with where each value came from.
    Check {
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let sources = Sources {
        config_file: cli.config.clone(),
        ..Sources::default()
    };
    match cli.command {
        Command::Schema => {
            print!("{}", vman::api::sdl());
            ExitCode::SUCCESS
        }
        Command::Config {
            command: ConfigCommand::Check { data_dir },
        } => {
            let overrides = CliOverrides {
                data_dir,
                ..Default::default()
            };
            match vman::config::describe(&sources, &overrides) {
                Ok(text) => {
                    println!("{text}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("vman: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Migrate { data_dir } => {
            let overrides = CliOverrides {
                data_dir,
                ..Default::default()
            };
            run(&sources, &overrides, false)
        }
        Command::Serve {
            listen,
            data_dir,
            dry_run,
        } => {
            let overrides = CliOverrides {
                listen,
                data_dir,
                dry_run,
            };
            run(&sources, &overrides, true)
        }
    }
}

fn run(sources: &Sources, overrides: &CliOverrides, serve: bool) -> ExitCode {
    let config = match Config::load(sources, overrides) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("vman: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("vman: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        if let Err(e) = vman::config::ensure_dirs(&config) {
            eprintln!("vman: creating {}: {e}", config.data_dir.display());
            return ExitCode::FAILURE;
        }
        let _log_guard =
            vman::telemetry::init_logging(&config.log, serve.then(|| config.log_dir()).as_deref());
        let listen = config.listen;
        if !serve {
            return match vman::app::App::migrate(&config).await {
                Ok(()) => {
                    println!("migrations applied");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("vman: {e}");
                    ExitCode::FAILURE
                }
            };
        }
        let app = match vman::app::App::start(config).await {
            Ok(app) => app,
            Err(e) => {
                tracing::error!("{e}");
                eprintln!("vman: {e}");
                return ExitCode::FAILURE;
            }
        };
        let cancel = app.ctx.cancel.clone();
        tokio::spawn(async move {
            shutdown_signal().await;
            tracing::info!("shutting down; running VMs keep running");
            cancel.cancel();
        });
        match vman::server::serve(app, listen).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(%listen, "serving: {e}");
                eprintln!("vman: serving on {listen}: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
