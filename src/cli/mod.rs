//! The client half of `vman`: `vm`, `disk`, `net`, `events`, `ops` and
//! `console` talk to a running server through its public GraphQL API only
//! (HTTP POST for queries and mutations, graphql-transport-ws for
//! subscriptions). It never opens the database or touches the host.
//!
//! Exit codes are part of the interface (docs/CLI.md): see
//! [`client::Failure::exit_code`].

mod client;
mod console;
mod follow;
mod output;
mod queries;

use std::{path::PathBuf, process::ExitCode, time::Duration};

use clap::{Args, Subcommand};
use serde_json::{Value, json};

use client::{Client, Failure};
use output::{Column, Format, fields, print, table};
use queries::*;

/// How to reach the server: flags, then `VMAN_SERVER`/`VMAN_TOKEN`, then the
/// client config file, then the defaults. Global options of `vman`: they go
/// anywhere on the command line (`vman --server URL vm list`, `vman vm list
/// --server URL`).
#[derive(Args, Debug)]
#[command(next_help_heading = "Client options (vm, disk, net, events, ops, console)")]
pub struct Connection {
    /// The server's URL [default: http://127.0.0.1:8080; or VMAN_SERVER, or
    /// `server` in the client config file].
    #[arg(long, global = true, env = "VMAN_SERVER", value_name = "URL")]
    server: Option<String>,
    /// An API token, sent as `Authorization: Bearer` [or VMAN_TOKEN, or
    /// `token` in the client config file].
    #[arg(long, global = true, env = "VMAN_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// The output format: a table for people, or the GraphQL data as JSON.
    #[arg(short = 'o', long = "output", global = true, value_enum, default_value_t = Format::Table)]
    output: Format,
    /// The longest wait for one answer from the server, in seconds.
    #[arg(long, global = true, default_value_t = 30, value_name = "SECS")]
    timeout: u64,
}

/// `server` and `token` from the client config file (TOML).
#[derive(serde::Deserialize, Default)]
struct ClientFile {
    server: Option<String>,
    token: Option<String>,
}

/// The client config file: `VMAN_CLIENT_CONFIG`, else
/// `$XDG_CONFIG_HOME/vman/client.toml`, else `~/.config/vman/client.toml`.
fn client_file_path() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("VMAN_CLIENT_CONFIG") {
        return Some(path.into());
    }
    let config_home = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".config")))?;
    Some(config_home.join("vman/client.toml"))
}

impl Connection {
    fn client(&self) -> Result<Client, Failure> {
        let file = match client_file_path().filter(|path| path.exists()) {
            Some(path) => {
                use figment::providers::Format as _;
                figment::Figment::from(figment::providers::Toml::file(&path))
                    .extract::<ClientFile>()
                    .map_err(|e| Failure::Other(format!("{}: {e}", path.display())))?
            }
            None => ClientFile::default(),
        };
        let server = self
            .server
            .clone()
            .or(file.server)
            .unwrap_or_else(|| "http://127.0.0.1:8080".into());
        let token = self.token.clone().or(file.token).filter(|t| !t.is_empty());
        Client::new(&server, token, Duration::from_secs(self.timeout.max(1)))
    }
}

#[derive(Subcommand, Debug)]
pub enum VmCommand {
    /// List the VMs.
    List {
        /// Only VMs in this state (stopped, running, paused, …).
        #[arg(long)]
        state: Option<String>,
    },
    /// Show one VM.
    Show {
        /// The VM's name or ID.
        vm: String,
    },
    /// Create a VM from a template.
    Create {
        /// The new VM's name.
        name: String,
        /// The template's name.
        #[arg(long)]
        template: String,
        /// vCPUs [default: the template's].
        #[arg(long)]
        vcpus: Option<i64>,
        /// Memory in MiB [default: the template's].
        #[arg(long)]
        memory_mib: Option<i64>,
        /// The root disk's size (bytes, or with K, M, G, T) [default: the template's].
        #[arg(long, value_parser = parse_size)]
        disk_size: Option<u64>,
        /// The ID of the host to make it on (`{ hosts { id name } }`)
        /// [default: the online host with the most memory available].
        #[arg(long)]
        host_id: Option<String>,
    },
    /// Start a VM.
    Start {
        /// The VM's name or ID.
        vm: String,
    },
    /// Stop a VM (ACPI shutdown; `--force` pulls the plug).
    Stop {
        /// The VM's name or ID.
        vm: String,
        /// Stop at once instead of asking the guest.
        #[arg(long)]
        force: bool,
    },
    /// Pause a running VM.
    Pause {
        /// The VM's name or ID.
        vm: String,
    },
    /// Resume a paused VM.
    Resume {
        /// The VM's name or ID.
        vm: String,
    },
    /// Delete a stopped VM and its disks.
    Delete {
        /// The VM's name or ID.
        vm: String,
        /// Detach the VM's disks and keep them.
        #[arg(long)]
        keep_disks: bool,
    },
    /// Clone a stopped VM, with a progress bar while its disks are copied.
    Clone {
        /// The VM to clone (name or ID).
        vm: String,
        /// The clone's name.
        name: String,
        /// Overlays on the source's disks instead of full copies.
        #[arg(long)]
        linked: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum DiskCommand {
    /// List the disks.
    List,
    /// Create a detached disk.
    Create {
        /// The new disk's name.
        name: String,
        /// Its size (bytes, or with K, M, G, T).
        #[arg(long, value_parser = parse_size)]
        size: u64,
        /// Its format: qcow2 or raw.
        #[arg(long, default_value = "qcow2", value_parser = ["qcow2", "raw"])]
        format: String,
    },
    /// Delete a detached disk.
    Delete {
        /// The disk's name.
        name: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum NetCommand {
    /// List the networks.
    List,
    /// Create a network on a VLAN.
    Create {
        /// The new network's name.
        name: String,
        /// Its VLAN id.
        #[arg(long)]
        vlan: i64,
    },
    /// Delete a network no NIC uses.
    Delete {
        /// The network's name.
        name: String,
    },
}

#[derive(Args, Debug)]
pub struct EventsArgs {
    /// Keep printing events as they happen; reconnect when the connection
    /// drops and resume after the last event printed.
    #[arg(long)]
    follow: bool,
    /// Only events after this sequence (without --follow: all of them).
    #[arg(long, value_name = "N")]
    after: Option<u64>,
}

#[derive(Args, Debug)]
pub struct OpsArgs {
    /// Keep printing the events of operations as they happen (reconnecting
    /// as `events --follow` does).
    #[arg(long)]
    follow: bool,
    /// With --follow: first the operations' events after this sequence.
    #[arg(long, value_name = "N", requires = "follow")]
    after: Option<u64>,
}

#[derive(Args, Debug)]
pub struct ConsoleArgs {
    /// The VM's name or ID.
    vm: String,
    /// How much of the recent output to show first, in bytes.
    #[arg(long, default_value_t = 4096, value_name = "BYTES")]
    replay: i64,
}

/// One client command.
pub enum Request {
    Vm(VmCommand),
    Disk(DiskCommand),
    Net(NetCommand),
    Events(EventsArgs),
    Ops(OpsArgs),
    Console(ConsoleArgs),
}

/// Runs a client command; its exit code (docs/CLI.md).
pub fn run(connection: Connection, request: Request) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("vman: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let format = connection.output;
    let done = connection
        .client()
        .and_then(|client| runtime.block_on(dispatch(&client, format, request)));
    match done {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("vman: {failure}");
            failure.exit_code()
        }
    }
}

async fn dispatch(client: &Client, format: Format, request: Request) -> Result<(), Failure> {
    match request {
        Request::Vm(command) => vm(client, format, command).await,
        Request::Disk(command) => disk(client, format, command).await,
        Request::Net(command) => net(client, format, command).await,
        Request::Events(args) => {
            let after = args.after.map(|n| n.to_string());
            if args.follow {
                follow::events(client, format, after, false).await
            } else {
                follow::journal(client, format, after).await
            }
        }
        Request::Ops(args) if args.follow => {
            let after = args.after.map(|n| n.to_string());
            follow::events(client, format, after, true).await
        }
        Request::Ops(_) => {
            let data = to_json(
                client
                    .run::<OperationList>(operation_list::Variables { first: Some(500) })
                    .await?,
            );
            print(format, &data, |d| {
                table(OPERATION_COLUMNS, &nodes(&d["operations"]))
            });
            Ok(())
        }
        Request::Console(args) => {
            let id = resolve_vm(client, &args.vm).await?;
            console::attach(client, &id, &args.vm, args.replay).await
        }
    }
}

const VM_COLUMNS: &[Column] = &[
    ("NAME", "name"),
    ("STATE", "state"),
    ("VCPUS", "vcpus"),
    ("MEMORY_MIB", "memoryMib"),
    ("TEMPLATE", "template.name"),
    ("ID", "id"),
];
const VM_FIELDS: &[Column] = &[
    ("NAME", "name"),
    ("ID", "id"),
    ("STATE", "state"),
    ("STATE_REASON", "stateReason"),
    ("DESIRED_STATE", "desiredState"),
    ("TEMPLATE", "template.name"),
    ("VCPUS", "vcpus"),
    ("MEMORY_MIB", "memoryMib"),
    ("DISKS", "disks.name"),
    ("NICS", "nics.network.name"),
    ("TAGS", "tags"),
    ("DESCRIPTION", "description"),
    ("CREATED", "createdAt"),
];
/// What a VM mutation prints as a table.
const VM_CHANGED: &[Column] = &[
    ("NAME", "vm.name"),
    ("STATE", "vm.state"),
    ("OPERATION", "operation.status"),
    ("ID", "vm.id"),
];
const DISK_COLUMNS: &[Column] = &[
    ("NAME", "name"),
    ("FORMAT", "format"),
    ("SIZE_BYTES", "sizeBytes"),
    ("ATTACHMENT", "attachment"),
    ("VM", "vm.name"),
    ("ID", "id"),
];
const NETWORK_COLUMNS: &[Column] = &[
    ("NAME", "name"),
    ("VLAN", "vlanId"),
    ("BRIDGE", "bridge"),
    ("BRIDGE_UP", "status.bridgeUp"),
    ("ID", "id"),
];
const OPERATION_COLUMNS: &[Column] = &[
    ("ID", "id"),
    ("KIND", "kind"),
    ("STATUS", "status"),
    ("TARGET", "targetType"),
    ("TARGET_ID", "targetId"),
    ("ACTOR", "actor"),
    ("STARTED", "startedAt"),
    ("ERROR", "errorCode"),
];

fn to_json(data: impl serde::Serialize) -> Value {
    serde_json::to_value(data).expect("GraphQL data serializes")
}

/// A connection's `nodes`.
fn nodes(connection: &Value) -> Vec<Value> {
    connection["nodes"].as_array().cloned().unwrap_or_default()
}

/// The VM's ID: `vm` is an ID (when it is a UUID) or a name.
async fn resolve_vm(client: &Client, vm: &str) -> Result<String, Failure> {
    let (id, name) = if uuid::Uuid::parse_str(vm).is_ok() {
        (Some(vm.to_string()), None)
    } else {
        (None, Some(vm.to_string()))
    };
    client
        .run::<VmLookup>(vm_lookup::Variables { id, name })
        .await?
        .vm
        .map(|vm| vm.id)
        .ok_or_else(|| Failure::not_found(format!("VM {vm:?}")))
}

async fn vm(client: &Client, format: Format, command: VmCommand) -> Result<(), Failure> {
    // The mutations answer `{<field>: {vm, operation}}`: follow a long one
    // to its end, then print the VM.
    let mut clone_name = None;
    let (field, data) = match command {
        VmCommand::List { state } => {
            let state = state.map(|s| vm_list::VmState::Other(s.to_uppercase()));
            let data = to_json(client.run::<VmList>(vm_list::Variables { state }).await?);
            print(format, &data, |d| table(VM_COLUMNS, &nodes(&d["vms"])));
            return Ok(());
        }
        VmCommand::Show { vm } => {
            let id = resolve_vm(client, &vm).await?;
            let data = to_json(client.run::<VmShow>(vm_show::Variables { id }).await?);
            if data["vm"].is_null() {
                return Err(Failure::not_found(format!("VM {vm:?}")));
            }
            print(format, &data, |d| fields(VM_FIELDS, &d["vm"]));
            return Ok(());
        }
        VmCommand::Create {
            name,
            template,
            vcpus,
            memory_mib,
            disk_size,
            host_id,
        } => {
            let input = vm_create::CreateVmInput {
                name,
                template_id: None,
                template_name: Some(template),
                vcpus,
                memory_mib,
                disk_size_bytes: disk_size.map(|n| json!(n)),
                description: None,
                tags: None,
                boot_order: None,
                cdrom_image_id: None,
                cloud_init: None,
                host_id,
            };
            let data = client
                .run::<VmCreate>(vm_create::Variables { input })
                .await?;
            ("createVm", to_json(data))
        }
        VmCommand::Start { vm } => {
            let id = resolve_vm(client, &vm).await?;
            let data = client.run::<VmStart>(vm_start::Variables { id }).await?;
            ("startVm", to_json(data))
        }
        VmCommand::Stop { vm, force } => {
            let id = resolve_vm(client, &vm).await?;
            let data = client
                .run::<VmStop>(vm_stop::Variables { id, force })
                .await?;
            ("stopVm", to_json(data))
        }
        VmCommand::Pause { vm } => {
            let id = resolve_vm(client, &vm).await?;
            let data = client.run::<VmPause>(vm_pause::Variables { id }).await?;
            ("pauseVm", to_json(data))
        }
        VmCommand::Resume { vm } => {
            let id = resolve_vm(client, &vm).await?;
            let data = client.run::<VmResume>(vm_resume::Variables { id }).await?;
            ("resumeVm", to_json(data))
        }
        VmCommand::Delete { vm, keep_disks } => {
            let id = resolve_vm(client, &vm).await?;
            let variables = vm_delete::Variables {
                id,
                delete_disks: !keep_disks,
            };
            (
                "deleteVm",
                to_json(client.run::<VmDelete>(variables).await?),
            )
        }
        VmCommand::Clone { vm, name, linked } => {
            let id = resolve_vm(client, &vm).await?;
            clone_name = Some(name.clone());
            let variables = vm_clone::Variables { id, name, linked };
            ("cloneVm", to_json(client.run::<VmClone>(variables).await?))
        }
    };
    let mut data = data;
    let ran_on = follow::operation_end(client, &mut data[field]["operation"]).await?;
    if ran_on && let Some(name) = clone_name {
        // A full clone answers before its VM exists: show it as it is now.
        let variables = vm_lookup::Variables {
            id: None,
            name: Some(name),
        };
        data[field]["vm"] = to_json(client.run::<VmLookup>(variables).await?.vm);
    }
    print(format, &data, |d| table(VM_CHANGED, &[d[field].clone()]));
    Ok(())
}

async fn disk(client: &Client, format: Format, command: DiskCommand) -> Result<(), Failure> {
    match command {
        DiskCommand::List => {
            let data = to_json(client.run::<DiskList>(disk_list::Variables).await?);
            print(format, &data, |d| table(DISK_COLUMNS, &nodes(&d["disks"])));
        }
        DiskCommand::Create {
            name,
            size,
            format: disk_format,
        } => {
            let input = disk_create::CreateDiskInput {
                name,
                size_bytes: json!(size),
                format: if disk_format == "raw" {
                    disk_create::DiskFormat::RAW
                } else {
                    disk_create::DiskFormat::QCOW2
                },
            };
            let data = to_json(
                client
                    .run::<DiskCreate>(disk_create::Variables { input })
                    .await?,
            );
            print(format, &data, |d| {
                table(DISK_COLUMNS, &[d["createDisk"]["disk"].clone()])
            });
        }
        DiskCommand::Delete { name } => {
            let data = to_json(
                client
                    .run::<DiskDelete>(disk_delete::Variables { name })
                    .await?,
            );
            print(format, &data, |d| {
                table(
                    &[("DELETED", "name"), ("ID", "id")],
                    &[d["deleteDisk"]["disk"].clone()],
                )
            });
        }
    }
    Ok(())
}

async fn net(client: &Client, format: Format, command: NetCommand) -> Result<(), Failure> {
    match command {
        NetCommand::List => {
            let data = to_json(client.run::<NetworkList>(network_list::Variables).await?);
            print(format, &data, |d| {
                table(NETWORK_COLUMNS, &nodes(&d["networks"]))
            });
        }
        NetCommand::Create { name, vlan } => {
            let variables = network_create::Variables {
                name,
                vlan_id: vlan,
            };
            let data = to_json(client.run::<NetworkCreate>(variables).await?);
            print(format, &data, |d| {
                table(NETWORK_COLUMNS, &[d["createNetwork"]["network"].clone()])
            });
        }
        NetCommand::Delete { name } => {
            let variables = network_delete::Variables { name };
            let data = to_json(client.run::<NetworkDelete>(variables).await?);
            print(format, &data, |d| {
                table(
                    &[("DELETED", "name"), ("ID", "id")],
                    &[d["deleteNetwork"]["network"].clone()],
                )
            });
        }
    }
    Ok(())
}

/// A size: bytes, or a number with K, M, G or T (powers of 1024).
fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (digits, unit) = match text.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((at, _)) => text.split_at(at),
        None => (text, ""),
    };
    let shift = match unit
        .trim_end_matches(['i', 'B'])
        .to_ascii_uppercase()
        .as_str()
    {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        _ => {
            return Err(format!(
                "{text:?}: give bytes, or a number with K, M, G or T"
            ));
        }
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(1 << shift))
        .ok_or_else(|| format!("{text:?} is not a size"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn sizes_take_binary_suffixes() {
        assert_eq!(super::parse_size("1048576"), Ok(1 << 20));
        assert_eq!(super::parse_size("1M"), Ok(1 << 20));
        assert_eq!(super::parse_size("2GiB"), Ok(2 << 30));
        assert!(super::parse_size("1X").is_err());
        assert!(super::parse_size("G").is_err());
    }
}
