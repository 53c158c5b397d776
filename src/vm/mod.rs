//! VMs: creation from templates, the lifecycle mutations and the one function
//! that moves a VM between states ([`transition`]).
//!
//! Every lifecycle mutation takes the VM's lock, checks the state, records an
//! operation, moves the VM to the in-between state, asks the hypervisor port,
//! and records where it ended up. With `dry_run` it stops after the checks and
//! returns the plan.

pub mod adopt;
pub mod clone;
pub mod cloud_init;
pub mod graphql;
pub mod lock;
pub mod media;
pub mod model;
pub mod state;
pub mod tag;
pub mod update;

use std::path::PathBuf;

use chrono::Utc;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, IntoActiveModel, ModelTrait,
    QueryFilter, QueryOrder, Set,
};

use crate::{
    context::Ctx,
    disk::{
        self,
        model::{self as disk_model, Attachment, DiskFormat},
    },
    error::{ApiError, ApiResult},
    events::{NewEvent, Payload, Writer, find_in},
    host::{DirectBoot, DiskSpec, HostStep, StopRequest, StopRung, VmAction, VmSpec},
    image::model as image,
    operation::{self, Change, Envelope, HostAction, OperationKind, Request, SubjectType},
    template::{self, Template},
    validate,
};
pub use model::Model as Vm;
pub use state::VmState;

/// Moves a VM to `to` inside a write, journaling the change.
///
/// The only writer of `vms.state`: it refuses what [`VmState::can_become`]
/// refuses. A VM already in `to` is left as it is (no event): the observer
/// and a mutation may both see the same change, and the first one records it.
pub async fn transition(
    w: &mut Writer<'_>,
    vm_id: &str,
    to: VmState,
    reason: &str,
    operation_id: Option<&str>,
) -> ApiResult<Vm> {
    transition_with(w, vm_id, to, reason, operation_id, serde_json::Value::Null).await
}

/// [`transition`] with more facts in the event payload (e.g. crash forensics).
pub async fn transition_with(
    w: &mut Writer<'_>,
    vm_id: &str,
    to: VmState,
    reason: &str,
    operation_id: Option<&str>,
    detail: serde_json::Value,
) -> ApiResult<Vm> {
    let vm = find_in::<model::Entity, _>(w.txn(), "VM", vm_id).await?;
    let from = vm.state;
    if from == to {
        return Ok(vm);
    }
    if !from.can_become(to) {
        return Err(ApiError::InvalidState(format!(
            "VM {:?} cannot go from {from} to {to}",
            vm.name
        )));
    }
    let mut row = vm.into_active_model();
    row.state = Set(to);
    row.state_reason = Set(Some(reason.to_string()));
    row.updated_at = Set(Utc::now());
    let vm = row.update(w.txn()).await?;
    w.record(NewEvent::new(
        &vm.id,
        operation_id,
        Payload::VmStateChanged {
            from,
            to,
            reason: reason.to_string(),
            detail: (!detail.is_null()).then_some(detail),
        },
    ))
    .await?;
    Ok(vm)
}

/// [`transition`] in its own write.
pub async fn set_state(
    app: &Ctx,
    vm_id: &str,
    to: VmState,
    reason: &str,
    operation_id: Option<&str>,
) -> ApiResult<Vm> {
    let mut w = app.bus.writer().await?;
    let vm = transition(&mut w, vm_id, to, reason, operation_id).await?;
    w.commit().await?;
    Ok(vm)
}

async fn set_reason(app: &Ctx, vm_id: &str, reason: &str) -> ApiResult<()> {
    let w = app.bus.writer().await?;
    model::ActiveModel {
        id: Set(vm_id.to_string()),
        state_reason: Set(Some(reason.to_string())),
        updated_at: Set(Utc::now()),
        ..Default::default()
    }
    .update(w.txn())
    .await?;
    w.commit().await?;
    Ok(())
}

async fn set_desired(app: &Ctx, vm: &Vm, desired: VmState) -> ApiResult<()> {
    if vm.desired_state != desired {
        let w = app.bus.writer().await?;
        model::ActiveModel {
            id: Set(vm.id.clone()),
            desired_state: Set(desired),
            ..Default::default()
        }
        .update(w.txn())
        .await?;
        w.commit().await?;
    }
    Ok(())
}

pub struct CreateVm {
    pub name: String,
    pub template_id: Option<String>,
    pub template_name: Option<String>,
    pub vcpus: Option<i32>,
    pub memory_mib: Option<i64>,
    pub disk_size_bytes: Option<i64>,
    pub description: Option<String>,
    pub tags: Option<Vec<String>>,
    /// cloud-init NoCloud data: a seed the guest finds at each boot.
    pub cloud_init: Option<cloud_init::CloudInit>,
    /// Defaults to the template's.
    pub boot_order: Option<Vec<crate::host::BootDevice>>,
    /// An ISO image for its CD-ROM drive.
    pub cdrom_image_id: Option<String>,
    /// The host to make it on: this node's (routing carries a request for
    /// another host to its node). None: placed (`cluster::place`), and so
    /// this node's when the request reached it.
    pub host_id: Option<String>,
}

pub fn run_dir(app: &Ctx, vm_id: &str) -> PathBuf {
    app.config.run_dir().join(vm_id)
}

fn root_disk_name(vm_name: &str) -> String {
    format!("{vm_name}-root")
}

pub async fn create(app: &Ctx, input: CreateVm, dry_run: bool) -> ApiResult<Change<Vm>> {
    let limits = &app.config.limits;
    validate::name("name", &input.name)?;
    if let Some(host_id) = &input.host_id {
        crate::cluster::check_host(app, &validate::id("hostId", host_id)?).await?;
    }
    let template = match (&input.template_id, &input.template_name) {
        (None, None) => None,
        (id, name) => Some(
            template::find(app, id.as_deref(), name.as_deref())
                .await?
                .ok_or_else(|| {
                    ApiError::not_found("template", id.clone().or(name.clone()).unwrap_or_default())
                })?,
        ),
    };
    let vcpus = input
        .vcpus
        .or(template.as_ref().map(|t| t.vcpus))
        .ok_or_else(|| ApiError::bad_input("vcpus is required without a template"))?;
    let memory_mib = input
        .memory_mib
        .or(template.as_ref().map(|t| t.memory_mib))
        .ok_or_else(|| ApiError::bad_input("memoryMib is required without a template"))?;
    validate::vcpus(limits, vcpus)?;
    validate::memory_mib(limits, memory_mib)?;
    if let Some(description) = &input.description {
        validate::text("description", description, update::MAX_DESCRIPTION)?;
    }
    let tags = update::check_tags(input.tags.as_deref().unwrap_or_default())?;
    if let Some(data) = &input.cloud_init {
        data.check()?;
    }
    let boot_order = match &input.boot_order {
        Some(order) => media::store(order)?,
        None => template.as_ref().and_then(|t| t.boot_order.clone()),
    };
    let cdrom = match &input.cdrom_image_id {
        Some(id) => Some(media::iso(app, id).await?),
        None => None,
    };
    if let Some(size) = input.disk_size_bytes {
        validate::size_bytes(limits, "diskSizeBytes", size)?;
    }
    let base_image = match template.as_ref().and_then(|t| t.base_image_id.clone()) {
        Some(id) => Some(find_in::<image::Entity, _>(&app.db, "image", &id).await?),
        None => None,
    };
    // Its images' files must be in this host's storage.
    let needed = crate::cluster::place::needed_images(
        app,
        template.as_ref(),
        cdrom.as_ref().map(|i| i.id.as_str()),
    )
    .await?;
    crate::cluster::place::ensure_images_on(app, &app.host_id, &needed, input.host_id.is_none())
        .await?;
    let root_size = input
        .disk_size_bytes
        .or(template.as_ref().and_then(|t| t.default_disk_size_bytes))
        .or(base_image.as_ref().map(|i| i.size_bytes));
    let vm_id = uuid::Uuid::now_v7().to_string();
    let root = root_size.map(|size| disk_model::Model {
        id: uuid::Uuid::now_v7().to_string(),
        name: root_disk_name(&input.name),
        format: DiskFormat::Qcow2,
        size_bytes: size,
        vm_id: Some(vm_id.clone()),
        attachment: Attachment::Attached,
        backing_template_id: base_image
            .as_ref()
            .and(template.as_ref().map(|t| t.id.clone())),
        base_id: None,
        host_id: Some(app.host_id.to_string()),
        created_at: Utc::now(),
        updated_at: Utc::now(),
    });
    ensure_vm_name_free(&app.db, &input.name).await?;
    if let Some(root) = &root {
        disk::ensure_name_free(&app.db, &root.name).await?;
        crate::storage::ensure_room(
            &app.config,
            &app.config.storage_dir(),
            0,
            "the VM's root disk",
        )?;
    }
    let now = Utc::now();
    let vm = Vm {
        id: vm_id.clone(),
        name: input.name.clone(),
        template_id: template.as_ref().map(|t| t.id.clone()),
        vcpus,
        memory_mib,
        desired_state: VmState::Stopped,
        state: VmState::Stopped,
        state_reason: Some("created".into()),
        description: input.description.clone().unwrap_or_default(),
        pending_changes: None,
        cdrom_image_id: cdrom.map(|image| image.id),
        boot_order,
        host_id: Some(app.host_id.to_string()),
        created_at: now,
        updated_at: now,
    };
    let root_spec = root.as_ref().map(|root| {
        let mut spec = disk::spec(app, root);
        spec.backing = base_image.as_ref().map(|i| crate::host::Backing {
            path: crate::image::path(app, i),
            format: i.format.unwrap_or(DiskFormat::Qcow2),
        });
        spec
    });
    if dry_run {
        let plan = root_spec
            .iter()
            .flat_map(|spec| app.hypervisor.plan(&VmAction::CreateDisk(spec.clone())))
            .collect();
        return Ok(Change::planned(vm, plan));
    }
    let request = Request::new(OperationKind::CreateVm, SubjectType::Vm, &vm_id);
    operation::run(app, request, async |env| {
        if let Some(spec) = &root_spec {
            env.vm(&VmAction::CreateDisk(spec.clone())).await?;
            env.undo_with(HostAction::Vm(VmAction::DeleteDisk(spec.clone())));
        }
        env.commit(async |w, op| {
            let vm = insert_new(w, &vm, &tags, op).await?;
            cloud_init::set(w.txn(), &vm.id, input.cloud_init.as_ref()).await?;
            if let Some(root) = &root {
                disk::ensure_name_free(w.txn(), &root.name).await?;
                let root = disk_model::ActiveModel::from(root.clone())
                    .insert(w.txn())
                    .await?;
                w.record(disk::created_event(&root, Some(op))).await?;
            }
            Ok(vm)
        })
        .await
    })
    .await
}

/// Writes a new VM's row and tags (its name checked again in the write) and
/// journals VM_CREATED.
async fn insert_new(w: &mut Writer<'_>, vm: &Vm, tags: &[String], op: &str) -> ApiResult<Vm> {
    ensure_vm_name_free(w.txn(), &vm.name).await?;
    let vm = model::ActiveModel::from(vm.clone()).insert(w.txn()).await?;
    tag::set(w.txn(), &vm.id, tags).await?;
    w.record(NewEvent::new(
        &vm.id,
        Some(op),
        Payload::VmCreated {
            name: vm.name.clone(),
            template_id: vm.template_id.clone(),
        },
    ))
    .await?;
    Ok(vm)
}

async fn ensure_vm_name_free(db: &impl ConnectionTrait, name: &str) -> ApiResult<()> {
    crate::db::ensure_free::<model::Entity>(db, model::Column::Name, name, "a VM").await
}

/// The host's view of a VM: its attached disks in creation order and its boot files.
pub async fn spec(app: &Ctx, vm: &Vm) -> ApiResult<VmSpec> {
    let disks = disk_model::Entity::find()
        .filter(disk_model::Column::VmId.eq(&vm.id))
        .filter(disk_model::Column::Attachment.ne(Attachment::Detached))
        .order_by_asc(disk_model::Column::Id)
        .all(&app.db)
        .await?;
    let template: Option<Template> = match &vm.template_id {
        Some(id) => {
            template::model::Entity::find_by_id(id.clone())
                .one(&app.db)
                .await?
        }
        None => None,
    };
    let boot = match template.as_ref().and_then(|t| t.kernel_image_id.clone()) {
        Some(kernel_id) => {
            let template = template.as_ref().expect("template with a kernel");
            let kernel = find_in::<image::Entity, _>(&app.db, "image", &kernel_id).await?;
            let initrd = match &template.initrd_image_id {
                Some(id) => Some(find_in::<image::Entity, _>(&app.db, "image", id).await?),
                None => None,
            };
            Some(DirectBoot {
                kernel: crate::image::path(app, &kernel),
                initrd: initrd.map(|i| crate::image::path(app, &i)),
                cmdline: template.cmdline.clone(),
            })
        }
        None => None,
    };
    Ok(VmSpec {
        id: vm.id.clone(),
        name: vm.name.clone(),
        vcpus: vm.vcpus as u32,
        memory_mib: vm.memory_mib as u64,
        disks: disks
            .iter()
            .map(|d| disk::spec(app, d))
            .collect::<Vec<DiskSpec>>(),
        nics: crate::network::nic::specs(app, &vm.id).await?,
        boot,
        cdrom: match &vm.cdrom_image_id {
            Some(id) => Some(crate::image::path(
                app,
                &find_in::<image::Entity, _>(&app.db, "image", id).await?,
            )),
            None => None,
        },
        boot_order: media::parse(vm.boot_order.as_deref()).unwrap_or_default(),
        run_dir: run_dir(app, &vm.id),
        loadvm: None,
        seed: cloud_init::of(&app.db, &vm.id)
            .await?
            .map(|row| Box::new(cloud_init::seed(&row, &vm.name))),
    })
}

/// A lifecycle request on one VM.
#[derive(Debug, Clone, Copy)]
pub enum Lifecycle {
    Start,
    Stop(StopRequest),
    Restart { hard: bool },
    Pause,
    Resume,
}

impl Lifecycle {
    fn kind(self) -> OperationKind {
        match self {
            Lifecycle::Start => OperationKind::StartVm,
            Lifecycle::Stop(_) => OperationKind::StopVm,
            Lifecycle::Restart { .. } => OperationKind::RestartVm,
            Lifecycle::Pause => OperationKind::PauseVm,
            Lifecycle::Resume => OperationKind::ResumeVm,
        }
    }

    /// What the request does, in an error message ("cannot start VM …").
    fn verb(self) -> &'static str {
        match self {
            Lifecycle::Start => "start",
            Lifecycle::Stop(_) => "stop",
            Lifecycle::Restart { .. } => "restart",
            Lifecycle::Pause => "pause",
            Lifecycle::Resume => "resume",
        }
    }

    /// States this request may be made in.
    fn allowed_from(self) -> &'static [VmState] {
        use VmState::*;
        match self {
            Lifecycle::Start => &[Stopped, Crashed],
            Lifecycle::Stop(StopRequest { force: true, .. }) => {
                &[Starting, Running, Paused, Stopping, Unknown]
            }
            Lifecycle::Stop(_) => &[Running, Paused],
            Lifecycle::Restart { .. } => &[Running, Paused],
            Lifecycle::Pause => &[Running],
            Lifecycle::Resume => &[Paused],
        }
    }
}

pub async fn lifecycle(
    app: &Ctx,
    id: &str,
    request: Lifecycle,
    dry_run: bool,
) -> ApiResult<Change<Vm>> {
    let id = validate::id("id", id)?;
    let op_id = operation::new_id();
    let _guard = app.locks.lock(&id, &op_id, request.kind()).await?;
    let vm = find_in::<model::Entity, _>(&app.db, "VM", &id).await?;
    crate::cluster::check_local(app, &vm).await?;
    if !request.allowed_from().contains(&vm.state) {
        return Err(ApiError::InvalidState(format!(
            "cannot {} VM {:?}: it is {}",
            request.verb(),
            vm.name,
            vm.state
        )));
    }
    // A start gives QEMU the changes that waited for it (`updateVm`).
    let start =
        || async { Ok::<_, ApiError>(VmAction::Start(spec(app, &update::effective(&vm)).await?)) };
    let stop_action = |request| VmAction::Stop {
        vm_id: vm.id.clone(),
        request,
    };
    let graceful = StopRequest {
        force: false,
        timeout_ms: app.config.qemu.stop_timeout.as_millis() as u64,
    };
    let actions: Vec<VmAction> = match request {
        Lifecycle::Start => vec![start().await?],
        Lifecycle::Stop(stop) => vec![stop_action(stop)],
        Lifecycle::Restart { hard: true } => vec![VmAction::Reset {
            vm_id: vm.id.clone(),
        }],
        Lifecycle::Restart { hard: false } => vec![stop_action(graceful), start().await?],
        Lifecycle::Pause => vec![VmAction::Pause {
            vm_id: vm.id.clone(),
        }],
        Lifecycle::Resume => vec![VmAction::Resume {
            vm_id: vm.id.clone(),
        }],
    };
    if dry_run {
        let nics = crate::network::nic::specs(app, &vm.id).await?;
        let plan = actions
            .iter()
            .flat_map(|a| plan_with_taps(app, a, &nics))
            .collect();
        return Ok(Change::planned(vm, plan));
    }
    let desired = match request {
        Lifecycle::Stop(_) => VmState::Stopped,
        Lifecycle::Pause => VmState::Paused,
        Lifecycle::Start | Lifecycle::Restart { .. } | Lifecycle::Resume => VmState::Running,
    };
    let request = Request::with_id(op_id, request.kind(), SubjectType::Vm, &vm.id);
    operation::run(app, request, async |env| {
        set_desired(app, &vm, desired).await?;
        let Landing { to, reason } = run_actions(env, &vm, &actions).await?;
        let started = actions.iter().any(|a| matches!(a, VmAction::Start(_)));
        env.commit(async |w, op| {
            if started {
                update::apply_pending(w, &vm, op).await?;
            }
            transition(w, &vm.id, to, reason, Some(op)).await
        })
        .await
    })
    .await
}

/// Starts a STOPPED or CRASHED VM from `spec` inside another operation (a
/// restore that loads a snapshot's memory): the steps and in-between states
/// of `startVm`. The caller records where it landed ([`transition`]) and the
/// changes that waited for the start ([`update::apply_pending`]) in its commit.
pub(crate) async fn start_within(
    env: &mut Envelope<'_>,
    vm: &Vm,
    spec: VmSpec,
) -> ApiResult<(VmState, &'static str)> {
    set_desired(env.ctx(), vm, VmState::Running).await?;
    let Landing { to, reason } = run_actions(env, vm, &[VmAction::Start(spec)]).await?;
    Ok((to, reason))
}

/// What [`start_within`] would do: the start's plan with its taps.
pub(crate) fn start_plan(app: &Ctx, spec: VmSpec) -> Vec<HostStep> {
    plan_with_taps(app, &VmAction::Start(spec), &[])
}

/// A lifecycle action's plan with its NICs' taps: made before a start,
/// removed after a stop.
fn plan_with_taps(app: &Ctx, action: &VmAction, nics: &[crate::host::NicSpec]) -> Vec<HostStep> {
    use crate::network::nic::{start_actions, stop_actions};
    let mut plan = Vec::new();
    if let VmAction::Start(spec) = action {
        for tap in start_actions(&spec.nics) {
            plan.extend(app.network.plan(&tap));
        }
    }
    plan.extend(app.hypervisor.plan(action));
    if let VmAction::Stop { .. } = action {
        for tap in stop_actions(nics) {
            plan.extend(app.network.plan(&tap));
        }
    }
    plan
}

/// Where a run of lifecycle actions leaves the VM: the state its operation
/// records with its success, and why.
struct Landing {
    to: VmState,
    reason: &'static str,
}

/// How one lifecycle action moves a VM: what it is (in a state reason), the
/// in-between state it records first (if any), where it lands, and where a
/// failure leaves it.
struct Moves {
    doing: &'static str,
    before: Option<VmState>,
    after: VmState,
    failed: VmState,
}

fn moves(action: &VmAction, current: VmState) -> Moves {
    let (doing, before, after, failed) = match action {
        VmAction::Start(_) => (
            "start requested",
            Some(VmState::Starting),
            VmState::Running,
            VmState::Stopped,
        ),
        VmAction::Stop { request, .. } => (
            if request.force {
                "forced stop requested"
            } else {
                "stop requested"
            },
            Some(VmState::Stopping),
            VmState::Stopped,
            VmState::Unknown,
        ),
        VmAction::Pause { .. } => ("paused", None, VmState::Paused, current),
        VmAction::Resume { .. } => ("resumed", None, VmState::Running, current),
        VmAction::Reset { .. } => ("reset", None, current, current),
        VmAction::CreateDisk(_)
        | VmAction::DeleteDisk(_)
        | VmAction::AttachDisk { .. }
        | VmAction::DetachDisk { .. }
        | VmAction::AttachNic { .. }
        | VmAction::ChangeMedium { .. }
        | VmAction::DownloadImage { .. }
        | VmAction::DetachNic { .. }
        | VmAction::Destroy { .. }
        | VmAction::ResizeDisk { .. }
        | VmAction::InspectImage { .. }
        | VmAction::ImportImage { .. }
        | VmAction::DeleteImage { .. }
        | VmAction::CreateSnapshot { .. }
        | VmAction::RestoreSnapshot { .. }
        | VmAction::DeleteSnapshot { .. }
        | VmAction::CopyDisk { .. }
        | VmAction::MoveFile { .. } => {
            unreachable!("only lifecycle actions move a VM between states")
        }
    };
    Moves {
        doing,
        before,
        after,
        failed,
    }
}

/// Executes lifecycle actions in order, recording the in-between states as
/// they happen; the last landing is for the caller to record (with its
/// operation's success). A failure records where it left the VM.
async fn run_actions(env: &mut Envelope<'_>, vm: &Vm, actions: &[VmAction]) -> ApiResult<Landing> {
    let app = env.ctx();
    let mut current = vm.state;
    let mut landing = Landing {
        to: current,
        reason: "no action",
    };
    for (i, action) in actions.iter().enumerate() {
        // The previous action's landing, now that another follows it.
        if i > 0 && landing.to != current {
            set_state(app, &vm.id, landing.to, landing.reason, Some(env.id())).await?;
            current = landing.to;
        }
        let Moves {
            doing,
            before,
            after,
            failed,
        } = moves(action, current);
        if let Some(before) = before.filter(|b| *b != current) {
            set_state(app, &vm.id, before, doing, Some(env.id())).await?;
            current = before;
        }
        let executed = async {
            // A start's taps exist before QEMU opens them.
            if let VmAction::Start(spec) = action {
                make_taps(env, spec).await?;
            }
            env.vm(action).await
        }
        .await;
        match executed {
            Ok(outcome) => {
                landing = Landing {
                    to: after,
                    reason: landed(action, outcome.stop_rung, doing),
                };
                if after == VmState::Stopped {
                    let steps = qemu_gone(app, &vm.id).await?;
                    env.took(steps);
                }
            }
            Err(e) => {
                // A QEMU that does not answer leaves the VM's real state unknown
                // (and its taps in use).
                let failed = if matches!(e, ApiError::Timeout(_)) {
                    VmState::Unknown
                } else {
                    failed
                };
                if let VmAction::Start(_) = action
                    && failed != VmState::Unknown
                {
                    let steps = qemu_gone(app, &vm.id).await?;
                    env.took(steps);
                }
                if failed != current {
                    let reason = format!("{doing} failed: {e}");
                    set_state(app, &vm.id, failed, &reason, Some(env.id())).await?;
                }
                return Err(e);
            }
        }
    }
    Ok(landing)
}

/// Makes the taps a start needs, before QEMU opens them.
async fn make_taps(env: &mut Envelope<'_>, spec: &VmSpec) -> ApiResult<()> {
    for action in crate::network::nic::start_actions(&spec.nics) {
        env.network(&action).await?;
    }
    Ok(())
}

/// The reason a VM's state records once an action succeeded.
fn landed(action: &VmAction, rung: Option<StopRung>, doing: &'static str) -> &'static str {
    match (action, rung) {
        (_, Some(StopRung::GuestShutdown)) => "guest shutdown",
        (_, Some(StopRung::Quit)) => "stopped by QEMU quit",
        (_, Some(StopRung::Kill)) => "QEMU killed",
        (VmAction::Stop { .. }, None) => "QEMU was not running",
        (VmAction::Start(_), None) => "started",
        (_, None) => doing,
    }
}

/// Where a device change on a VM goes: into its running QEMU now, or into
/// its next start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plug {
    Hot,
    Cold,
}

/// The one hot/cold decision for disks and NICs: a running or paused VM
/// takes the change live, a stopped or crashed one at its next start; in
/// any other state `doing` (say "attach a disk to") is refused.
pub fn plug(vm: &Vm, doing: &str) -> ApiResult<Plug> {
    match vm.state {
        VmState::Running | VmState::Paused => Ok(Plug::Hot),
        VmState::Stopped | VmState::Crashed => Ok(Plug::Cold),
        VmState::Starting | VmState::Stopping | VmState::Unknown => Err(ApiError::InvalidState(
            format!("cannot {doing} VM {:?} while it is {}", vm.name, vm.state),
        )),
    }
}

/// Call when a VM's QEMU is gone (a stop, a failed start, a crash, a guest
/// power-off): its DETACHING disks are detached, the taps of its NICs
/// removed and its DETACHING NICs forgotten. Returns the host steps taken.
pub async fn qemu_gone(app: &Ctx, vm_id: &str) -> ApiResult<Vec<HostStep>> {
    crate::disk::release_detaching(app, vm_id).await?;
    crate::network::release_taps(app, vm_id).await
}

/// Deletes a VM, stopping it first; its disks go with it unless `delete_disks` is false,
/// in which case they are detached and kept.
pub async fn delete(
    app: &Ctx,
    id: &str,
    delete_disks: bool,
    dry_run: bool,
) -> ApiResult<Change<Vm>> {
    let id = validate::id("id", id)?;
    let op_id = operation::new_id();
    let _guard = app.locks.lock(&id, &op_id, OperationKind::DeleteVm).await?;
    let vm = find_in::<model::Entity, _>(&app.db, "VM", &id).await?;
    crate::cluster::check_local(app, &vm).await?;
    let disks = disk_model::Entity::find()
        .filter(disk_model::Column::VmId.eq(&id))
        .all(&app.db)
        .await?;
    if delete_disks {
        for d in &disks {
            disk::base::ensure_no_clones(&app.db, d, &format!("delete VM {:?}", vm.name)).await?;
        }
    }
    let stop =
        (vm.state != VmState::Stopped && vm.state != VmState::Crashed).then(|| VmAction::Stop {
            vm_id: id.clone(),
            request: StopRequest {
                force: true,
                timeout_ms: app.config.qemu.stop_timeout.as_millis() as u64,
            },
        });
    let mut removals = vec![VmAction::Destroy {
        vm_id: id.clone(),
        run_dir: run_dir(app, &id),
    }];
    if delete_disks {
        removals.extend(
            disks
                .iter()
                .map(|d| VmAction::DeleteDisk(disk::spec(app, d))),
        );
    }
    let nics = crate::network::model::nic::Entity::find()
        .filter(crate::network::model::nic::Column::VmId.eq(&id))
        .all(&app.db)
        .await?;
    if dry_run {
        let nic_specs = crate::network::nic::specs(app, &vm.id).await?;
        let plan = stop
            .iter()
            .chain(&removals)
            .flat_map(|a| plan_with_taps(app, a, &nic_specs))
            .collect();
        return Ok(Change::planned(vm, plan));
    }
    let request = Request::with_id(op_id, OperationKind::DeleteVm, SubjectType::Vm, &id);
    operation::run(app, request, async |env| {
        if let Some(stop) = &stop {
            let Landing { to, reason } = run_actions(env, &vm, std::slice::from_ref(stop)).await?;
            set_state(app, &id, to, reason, Some(env.id())).await?;
        }
        for action in &removals {
            env.vm(action).await?;
        }
        let (current, unused_bases) = env
            .commit(async |w, op| {
                for d in &disks {
                    if delete_disks {
                        d.clone().delete(w.txn()).await?;
                        w.record(disk::deleted_event(d, Some(op))).await?;
                    } else {
                        let mut row = d.clone().into_active_model();
                        row.vm_id = Set(None);
                        row.attachment = Set(Attachment::Detached);
                        row.updated_at = Set(Utc::now());
                        row.update(w.txn()).await?;
                        w.record(disk::detached_event(d, &id, Some(op))).await?;
                    }
                }
                crate::snapshot::forget_of_vm(w, &id, op).await?;
                for nic in &nics {
                    nic.clone().delete(w.txn()).await?;
                    w.record(crate::network::nic::detached_event(nic, Some(op)))
                        .await?;
                }
                let current = find_in::<model::Entity, _>(w.txn(), "VM", &id).await?;
                current.clone().delete(w.txn()).await?;
                w.record(NewEvent::new(
                    &id,
                    Some(op),
                    Payload::VmDeleted {
                        name: current.name.clone(),
                        deleted_disks: delete_disks,
                    },
                ))
                .await?;
                let unused = match delete_disks {
                    true => {
                        let bases = disks.iter().filter_map(|d| d.base_id.clone());
                        disk::base::release(app, w.txn(), bases).await?
                    }
                    false => Vec::new(),
                };
                Ok((current, unused))
            })
            .await?;
        disk::base::remove_files(env, &unused_bases).await;
        Ok(current)
    })
    .await
}

/// How many VMs are in each state (every state, zeros included).
pub async fn count_by_state(ctx: &Ctx) -> ApiResult<Vec<(&'static str, u64)>> {
    use sea_orm::Iterable;
    let vms = model::Entity::find().all(&ctx.db).await?;
    Ok(VmState::iter()
        .map(|state| {
            let count = vms.iter().filter(|vm| vm.state == state).count();
            (state.as_str(), count as u64)
        })
        .collect())
}
