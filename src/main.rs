//! The `vman` command: serve, migrate, schema, config check, tokens, and the
//! database's care: backup, restore, doctor. `vm`, `disk`, `net`, `events`,
//! `ops` and `console` are a client of a running server (src/cli/).

mod cli;

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
    /// The client commands' options (`--server`, `--token`, `-o`,
    /// `--timeout`): global, so they go before or after the command group
    /// or the command; the other commands ignore them.
    #[command(flatten)]
    connection: cli::Connection,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the API server.
    Serve {
        /// Address and port to serve HTTP and websockets on [default:
        /// 127.0.0.1:8080; or `listen` in vman.toml, VMAN_LISTEN]. Beyond
        /// loopback it needs auth.mode = "token".
        #[arg(long, value_name = "ADDR")]
        listen: Option<SocketAddr>,
        /// Where the database, disks, images, VM run and log files live
        /// [default: ./vman-data; or `data_dir` in vman.toml, VMAN_DATA_DIR].
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
        /// Plan host steps and record them, never touch the host: no QEMU, no
        /// qemu-img, no bridges or taps (also `dry_run`, VMAN_DRY_RUN).
        #[arg(long)]
        dry_run: bool,
    },
    /// Apply database migrations and exit.
    Migrate {
        /// The data directory whose database to migrate [default: ./vman-data;
        /// or `data_dir` in vman.toml, VMAN_DATA_DIR].
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
    },
    /// Print the GraphQL schema (SDL).
    Schema,
    /// Configuration commands.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Copy the database to FILE, consistently, also while vman serves
    /// (SQLite `VACUUM INTO`; writes go on meanwhile). FILE must not exist.
    Backup {
        /// Where to write the copy (a new file; an existing one is refused).
        file: PathBuf,
        /// The data directory whose database this is [default: ./vman-data;
        /// or `data_dir` in vman.toml, VMAN_DATA_DIR].
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
    },
    /// Put the backup FILE in place as the database. Refused while a vman
    /// serves the data directory: stop it first. The database it replaces is
    /// kept as `vman.db.before-restore-<time>`. The next start reconciles the
    /// host with the restored rows (see docs/OPERATIONS.md).
    Restore {
        /// The backup to restore (made by `vman backup` or a scheduled backup).
        file: PathBuf,
        /// The data directory whose database this is [default: ./vman-data;
        /// or `data_dir` in vman.toml, VMAN_DATA_DIR].
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
    },
    /// Check the database in full (PRAGMA integrity_check) and summarise it;
    /// exits 1 when it is damaged. Only reads: works while vman serves.
    Doctor {
        /// The data directory whose database this is [default: ./vman-data;
        /// or `data_dir` in vman.toml, VMAN_DATA_DIR].
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
    },
    /// API tokens (for `auth.mode = "token"`); works while vman serves.
    Token {
        /// The data directory whose database holds the tokens [default:
        /// ./vman-data; or `data_dir` in vman.toml, VMAN_DATA_DIR].
        #[arg(long, global = true, value_name = "DIR")]
        data_dir: Option<PathBuf>,
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// VMs on a running server: list, show, create, start, stop, pause,
    /// resume, delete, clone.
    Vm {
        #[command(subcommand)]
        command: cli::VmCommand,
    },
    /// Disks on a running server: list, create, delete.
    Disk {
        #[command(subcommand)]
        command: cli::DiskCommand,
    },
    /// Networks on a running server: list, create, delete.
    Net {
        #[command(subcommand)]
        command: cli::NetCommand,
    },
    /// The server's event journal; `--follow` keeps printing new events.
    Events {
        #[command(flatten)]
        args: cli::EventsArgs,
    },
    /// The server's operations; `--follow` prints their events as they come.
    Ops {
        #[command(flatten)]
        args: cli::OpsArgs,
    },
    /// A VM's serial console, interactive (Ctrl-] leaves).
    Console {
        #[command(flatten)]
        args: cli::ConsoleArgs,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Make a token and print its secret (to stdout, alone, this once).
    Create {
        /// Unique among tokens; what operations record as their actor.
        #[arg(long)]
        name: String,
        /// viewer, operator or admin.
        #[arg(long)]
        role: vman::auth::Role,
        /// How long it works (`30d`, `12h`); default: until revoked.
        #[arg(long, value_parser = humantime::parse_duration)]
        expires: Option<std::time::Duration>,
    },
    /// List the tokens (never their secrets).
    List,
    /// Revoke a token: a serving vman refuses it at once and closes its
    /// websockets within a second.
    Revoke {
        /// The token's name, as given to `vman token create`.
        name: String,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate and print the effective config, with where each value came from.
    Check {
        /// Check with this data directory, as `vman serve --data-dir` would
        /// use it.
        #[arg(long, value_name = "DIR")]
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
        Command::Vm { command } => cli::run(cli.connection, cli::Request::Vm(command)),
        Command::Disk { command } => cli::run(cli.connection, cli::Request::Disk(command)),
        Command::Net { command } => cli::run(cli.connection, cli::Request::Net(command)),
        Command::Events { args } => cli::run(cli.connection, cli::Request::Events(args)),
        Command::Ops { args } => cli::run(cli.connection, cli::Request::Ops(args)),
        Command::Console { args } => cli::run(cli.connection, cli::Request::Console(args)),
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
        Command::Token { data_dir, command } => {
            let overrides = CliOverrides {
                data_dir,
                ..Default::default()
            };
            token(&sources, &overrides, command)
        }
        Command::Backup { file, data_dir } => care(&sources, data_dir, Care::Backup(file)),
        Command::Restore { file, data_dir } => care(&sources, data_dir, Care::Restore(file)),
        Command::Doctor { data_dir } => care(&sources, data_dir, Care::Doctor),
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

/// The config (checked as `vman serve` needs it when `serve`) and a runtime,
/// or the exit code that says why not (2: a bad config).
fn prepare(
    sources: &Sources,
    overrides: &CliOverrides,
    serve: bool,
) -> Result<(Config, tokio::runtime::Runtime), ExitCode> {
    let config = Config::load(sources, overrides)
        .and_then(|config| {
            serve
                .then(|| config.check_serving())
                .transpose()
                .map(|_| config)
        })
        .map_err(|e| {
            eprintln!("vman: {e}");
            ExitCode::from(2)
        })?;
    let runtime = tokio::runtime::Runtime::new().map_err(|e| {
        eprintln!("vman: cannot start the async runtime: {e}");
        ExitCode::FAILURE
    })?;
    Ok((config, runtime))
}

fn run(sources: &Sources, overrides: &CliOverrides, serve: bool) -> ExitCode {
    let (config, runtime) = match prepare(sources, overrides, serve) {
        Ok(prepared) => prepared,
        Err(code) => return code,
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

fn token(sources: &Sources, overrides: &CliOverrides, command: TokenCommand) -> ExitCode {
    use vman::auth::token;
    let (config, runtime) = match prepare(sources, overrides, false) {
        Ok(prepared) => prepared,
        Err(code) => return code,
    };
    runtime.block_on(async move {
        if let Err(e) = vman::app::App::migrate(&config).await {
            eprintln!("vman: {e}");
            return ExitCode::FAILURE;
        }
        let db = match vman::db::connect(config.database(), config.database.busy_timeout).await {
            Ok(db) => db,
            Err(e) => {
                eprintln!("vman: opening the database: {e}");
                return ExitCode::FAILURE;
            }
        };
        let done = match command {
            TokenCommand::Create {
                name,
                role,
                expires,
            } => {
                let new = token::NewToken {
                    name,
                    role,
                    expires_in: expires,
                };
                token::create_local(&db, &new).await.map(|(token, secret)| {
                    eprintln!(
                        "vman: created API token {} (role {}, {}); send it as `Authorization: Bearer <token>`. It is shown only now:",
                        token.name,
                        token.role.as_str(),
                        token
                            .expires_at
                            .map_or("no expiry".to_string(), |at| format!("expires {at}"))
                    );
                    println!("{secret}");
                })
            }
            TokenCommand::List => token::list(&db).await.map(|tokens| {
                println!("{:<24} {:<9} {:<26} {:<26} CREATED BY", "NAME", "ROLE", "CREATED", "EXPIRES");
                for t in tokens {
                    println!(
                        "{:<24} {:<9} {:<26} {:<26} {}",
                        t.name,
                        t.role.as_str(),
                        t.created_at.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
                        t.expires_at
                            .map_or("never".into(), |at| at.format("%Y-%m-%d %H:%M:%S UTC").to_string()),
                        t.created_by
                    );
                }
            }),
            TokenCommand::Revoke { name } => token::revoke_local(&db, &name)
                .await
                .map(|t| eprintln!("vman: revoked API token {}", t.name)),
        };
        match done {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("vman: {e} ({})", e.code());
                ExitCode::FAILURE
            }
        }
    })
}

enum Care {
    Backup(PathBuf),
    Restore(PathBuf),
    Doctor,
}

/// `vman backup`, `vman restore`, `vman doctor`: exit 0 when done (doctor:
/// when the database is sound), 1 otherwise, 2 for a bad config.
fn care(sources: &Sources, data_dir: Option<PathBuf>, care: Care) -> ExitCode {
    let overrides = CliOverrides {
        data_dir,
        ..Default::default()
    };
    let (config, runtime) = match prepare(sources, &overrides, false) {
        Ok(prepared) => prepared,
        Err(code) => return code,
    };
    if let Some(why) = vman::backup::not_ours(&config) {
        eprintln!("vman: {why}");
        return ExitCode::FAILURE;
    }
    runtime.block_on(async move {
        let done = match care {
            Care::Backup(file) => backup(&config, &file).await,
            Care::Restore(file) => vman::backup::restore(&config, &file)
                .await
                .map(|restored| {
                    if let Some(aside) = &restored.kept_aside {
                        eprintln!("vman: the database it replaces is kept as {}", aside.display());
                    }
                    eprintln!(
                        "vman: restored {} as {} (journal up to event {}); the next `vman serve` re-adopts the VMs it says run and its coherence sweep reports the rest",
                        file.display(),
                        config.db_path().display(),
                        restored.head
                    );
                })
                .map_err(|e| e.to_string()),
            Care::Doctor => match vman::doctor::examine(&config).await {
                Ok(report) => {
                    print!("{report}");
                    if report.sound {
                        Ok(())
                    } else {
                        Err("the database is damaged".to_string())
                    }
                }
                Err(e) => Err(e.to_string()),
            },
        };
        match done {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("vman: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

async fn backup(config: &Config, file: &std::path::Path) -> Result<(), String> {
    let path = config.db_path();
    if !path.exists() {
        return Err(format!("no database at {}", path.display()));
    }
    let db = vman::db::connect(&path, config.database.busy_timeout)
        .await
        .map_err(|e| format!("opening the database: {e}"))?;
    let made = vman::backup::backup(&db, file).await;
    let _ = db.close().await;
    let made = made.map_err(|e| e.to_string())?;
    eprintln!(
        "vman: backed up {} to {} ({} bytes, journal up to event {})",
        path.display(),
        made.path.display(),
        made.bytes,
        made.head
    );
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::Cli;

    /// `vman <command> --help` describes every option and argument.
    #[test]
    fn every_option_and_argument_is_described() {
        fn check(command: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in command.get_arguments() {
                if arg.get_help().is_none() {
                    missing.push(format!("{path} {}", arg.get_id()));
                }
            }
            for sub in command.get_subcommands() {
                check(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut command = Cli::command();
        command.build();
        let mut missing = Vec::new();
        check(&command, "vman", &mut missing);
        assert!(missing.is_empty(), "no help text: {missing:?}");

        let help = command
            .find_subcommand_mut("serve")
            .unwrap()
            .render_help()
            .to_string();
        assert!(help.contains("--listen <ADDR>"), "{help}");
        assert!(help.contains("--data-dir <DIR>"), "{help}");
        assert!(help.contains("VMAN_DATA_DIR"), "{help}");
    }
}
