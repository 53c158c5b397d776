use async_graphql::{Context, ID, InputObject, Object, SimpleObject};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};

use super::{CreateVm, Lifecycle, Vm, VmState, model};
use crate::{
    api::{
        self, PlanStep,
        loaders::{self, DisksOfVm, IssuesOfVm, NicsOfVm, TagsOfVm},
        pagination::{Page, id_cursor, page, page_by_key},
    },
    disk::graphql::DiskObject,
    error::ResultExt,
    host::{BootDevice, StopRequest},
    image::graphql::ImageObject,
    network::graphql::NicObject,
    operation::{Change, graphql::OperationObject},
    template::graphql::TemplateObject,
    validate,
};

#[derive(Clone)]
pub struct VmObject(pub Vm);

/// A virtual machine.
#[Object(name = "Vm")]
impl VmObject {
    /// A UUID, unique across all objects.
    pub async fn id(&self) -> ID {
        ID(self.0.id.clone())
    }
    /// Unique among VMs.
    async fn name(&self) -> &str {
        &self.0.name
    }
    /// The host that runs it.
    async fn host(
        &self,
        ctx: &Context<'_>,
    ) -> async_graphql::Result<Option<crate::cluster::graphql::HostObject>> {
        crate::cluster::graphql::by_id(ctx, self.0.host_id.as_deref()).await
    }
    /// The template it was made from; null when made without one.
    async fn template(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<TemplateObject>> {
        let template =
            api::load::<crate::template::model::Entity>(ctx, self.0.template_id.as_deref()).await?;
        Ok(template.map(TemplateObject))
    }
    /// Virtual CPUs.
    async fn vcpus(&self) -> i32 {
        self.0.vcpus
    }
    /// Memory in MiB.
    async fn memory_mib(&self) -> i64 {
        self.0.memory_mib
    }
    /// What the host was last seen doing.
    async fn state(&self) -> VmState {
        self.0.state
    }
    /// Why the VM is in its state (e.g. "guest shutdown").
    async fn state_reason(&self) -> Option<&str> {
        self.0.state_reason.as_deref()
    }
    /// What the user last asked for.
    async fn desired_state(&self) -> VmState {
        self.0.desired_state
    }
    /// Drifts the coherence sweep found for this VM, oldest first; `open: true`
    /// for the current ones only.
    async fn coherence_issues(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "True: open ones only; false: resolved ones only; omitted: all.")]
        open: Option<bool>,
    ) -> async_graphql::Result<Vec<crate::coherence::graphql::CoherenceIssueObject>> {
        let issues = loaders::of(ctx)
            .rows(IssuesOfVm(self.0.id.clone(), open))
            .await?;
        Ok(issues
            .into_iter()
            .map(crate::coherence::graphql::CoherenceIssueObject)
            .collect())
    }
    /// The disks attached to it (DETACHING ones included), oldest first.
    async fn disks(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<DiskObject>> {
        let disks = loaders::of(ctx).rows(DisksOfVm(self.0.id.clone())).await?;
        Ok(disks.into_iter().map(DiskObject).collect())
    }
    /// Its snapshots, oldest first.
    async fn snapshots(
        &self,
        ctx: &Context<'_>,
    ) -> async_graphql::Result<Vec<crate::snapshot::graphql::SnapshotObject>> {
        let snapshots = crate::snapshot::of_vm(&api::services(ctx).db, &self.0.id)
            .await
            .gql()?;
        Ok(snapshots
            .into_iter()
            .map(crate::snapshot::graphql::SnapshotObject)
            .collect())
    }
    /// Its NICs, by `position`.
    async fn nics(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<NicObject>> {
        let nics = loaders::of(ctx).rows(NicsOfVm(self.0.id.clone())).await?;
        Ok(nics.into_iter().map(NicObject).collect())
    }
    /// What its QEMU has used so far (CPU, memory, disks, NICs); null when
    /// no QEMU of it runs. `cpuPercent` is null here: the `vmStats`
    /// subscription has it.
    async fn stats(
        &self,
        ctx: &Context<'_>,
    ) -> async_graphql::Result<Option<crate::stats::graphql::VmStatsObject>> {
        crate::stats::graphql::of_vm(ctx, &self.0).await
    }
    /// Free text; empty when none was given.
    async fn description(&self) -> &str {
        &self.0.description
    }
    /// Its tags, sorted.
    async fn tags(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<String>> {
        loaders::of(ctx).rows(TagsOfVm(self.0.id.clone())).await
    }
    /// Changes waiting for its next start; null when none wait.
    /// `clearPendingChanges` drops them.
    async fn pending_changes(&self) -> Option<PendingChanges> {
        let pending = super::update::Pending::of(&self.0);
        (!pending.is_empty()).then_some(PendingChanges {
            vcpus: pending.vcpus,
            memory_mib: pending.memory_mib,
            boot_order: pending
                .boot_order
                .as_deref()
                .map(|order| super::media::parse(Some(order)).unwrap_or_default()),
        })
    }
    /// Its cloud-init NoCloud data; null when it has none.
    async fn cloud_init(
        &self,
        ctx: &Context<'_>,
    ) -> async_graphql::Result<Option<CloudInitObject>> {
        let row = super::cloud_init::of(&api::services(ctx).db, &self.0.id)
            .await
            .gql()?;
        Ok(row.map(CloudInitObject))
    }
    /// The devices it boots from, first first; null: the firmware's own
    /// order. A change on a running VM waits for its next start.
    async fn boot_order(&self) -> Option<Vec<BootDevice>> {
        super::media::parse(self.0.boot_order.as_deref())
    }
    /// The ISO image in its CD-ROM drive; null when the drive is empty.
    async fn cdrom(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<ImageObject>> {
        ImageObject::load(ctx, self.0.cdrom_image_id.as_deref()).await
    }
    /// When the VM was created.
    async fn created_at(&self) -> chrono::DateTime<chrono::Utc> {
        self.0.created_at
    }
    /// When the VM's record last changed (its state, say).
    async fn updated_at(&self) -> chrono::DateTime<chrono::Utc> {
        self.0.updated_at
    }
}

/// A new VM.
#[derive(InputObject)]
pub struct CreateVmInput {
    /// 1 to 63 characters: a lowercase letter, then lowercase letters, digits
    /// or `-`. Unique among VMs; its root disk is named `<name>-root`.
    pub name: String,
    /// The template by ID; or give `templateName`.
    pub template_id: Option<ID>,
    /// The template by name; or give `templateId`.
    pub template_name: Option<String>,
    /// Defaults to the template's; required without a template.
    pub vcpus: Option<i32>,
    /// Defaults to the template's; required without a template.
    pub memory_mib: Option<i64>,
    /// Root disk size; defaults to the template's default disk size.
    pub disk_size_bytes: Option<api::Bytes>,
    /// Free text, at most 1024 bytes.
    pub description: Option<String>,
    /// Labels to find it by (`vms(tag:)`): at most 32, each 1 to 63 lowercase
    /// letters, digits, `-`, `_`, `.`, `:` or `/`, a letter or digit first.
    pub tags: Option<Vec<String>>,
    /// The devices it boots from, first first, each at most once; defaults
    /// to the template's; empty or absent without one: the firmware's order.
    pub boot_order: Option<Vec<BootDevice>>,
    /// An ISO image (kind `ISO`) to put in its CD-ROM drive.
    pub cdrom_image_id: Option<ID>,
    /// cloud-init NoCloud data: a seed volume labelled `cidata`, attached
    /// read-only, that the guest's cloud-init reads at boot.
    pub cloud_init: Option<CloudInitInput>,
    /// The host to make it on (`hosts`): the request goes to that host's
    /// node, which refuses it (CONFLICT) when an image the VM needs (its
    /// template's base, kernel, initrd; its CD-ROM's ISO) is on another
    /// host. Without it, the online host with the most memory available of
    /// those holding every such image (none: CONFLICT, or HOST_UNAVAILABLE
    /// when their one host is offline).
    pub host_id: Option<ID>,
}

/// cloud-init NoCloud data (see `Vm.cloudInit`).
#[derive(InputObject)]
pub struct CloudInitInput {
    /// The guest's hostname (`local-hostname`); defaults to the VM's name.
    pub hostname: Option<String>,
    /// SSH public keys (`public-keys`), one `authorized_keys` line each: at
    /// most 100.
    pub ssh_authorized_keys: Option<Vec<String>>,
    /// The `user-data` file (a `#cloud-config` document or a script), at
    /// most 64 KiB; `#cloud-config` with nothing in it when left out. Never
    /// shown back, logged or journaled: `Vm.cloudInit` gives its size.
    pub user_data: Option<String>,
    /// The `network-config` file (network config version 1 or 2), at most
    /// 64 KiB; none when left out.
    pub network_config: Option<String>,
}

impl From<CloudInitInput> for super::cloud_init::CloudInit {
    fn from(input: CloudInitInput) -> Self {
        super::cloud_init::CloudInit {
            hostname: input.hostname,
            ssh_authorized_keys: input.ssh_authorized_keys.unwrap_or_default(),
            user_data: input.user_data,
            network_config: input.network_config,
        }
    }
}

pub struct CloudInitObject(super::cloud_init::Model);

/// A VM's cloud-init NoCloud data, as its seed gives it at the next boot.
#[Object(name = "CloudInit")]
impl CloudInitObject {
    /// `instance-id` in `meta-data`: new with every change, so that
    /// cloud-init in the guest runs again.
    async fn instance_id(&self) -> &str {
        &self.0.instance_id
    }
    /// `local-hostname` (the VM's name unless one was given).
    async fn hostname(&self) -> Option<String> {
        super::cloud_init::data(&self.0).hostname
    }
    /// The SSH public keys.
    async fn ssh_authorized_keys(&self) -> Vec<String> {
        super::cloud_init::data(&self.0).ssh_authorized_keys
    }
    /// The size of the user data, in bytes (0: none was given); the data
    /// itself is never shown.
    async fn user_data_bytes(&self) -> i32 {
        let data = super::cloud_init::data(&self.0);
        data.user_data.map_or(0, |u| u.len() as i32)
    }
    /// The `network-config` file, if one was given.
    async fn network_config(&self) -> Option<String> {
        super::cloud_init::data(&self.0).network_config
    }
}

/// What to change on a VM; what is left out stays as it is.
#[derive(InputObject)]
pub struct UpdateVmInput {
    /// A new name (the rules of `createVm`); changes at once.
    pub name: Option<String>,
    /// A new description; changes at once.
    pub description: Option<String>,
    /// A new CPU count: at once on a STOPPED or CRASHED VM, else at its next
    /// start (see `pendingChanges`).
    pub vcpus: Option<i32>,
    /// A new memory size: at once on a STOPPED or CRASHED VM, else at its
    /// next start.
    pub memory_mib: Option<i64>,
    /// The whole new set of tags (the rules of `createVm`); changes at once.
    pub tags: Option<Vec<String>>,
    /// A new boot order (empty: the firmware's own): at once on a STOPPED or
    /// CRASHED VM, else at its next start.
    pub boot_order: Option<Vec<BootDevice>>,
    /// New cloud-init data, replacing the old (null: none any more). The
    /// guest sees it at its next boot, with a new instance-id.
    pub cloud_init: async_graphql::MaybeUndefined<CloudInitInput>,
}

/// Changes that wait for a VM's next start (a running QEMU cannot take
/// them); null fields do not wait.
#[derive(SimpleObject)]
pub struct PendingChanges {
    /// The CPU count the next start gives it.
    pub vcpus: Option<i32>,
    /// The memory size the next start gives it, in MiB.
    pub memory_mib: Option<i64>,
    /// The boot order the next start gives it (empty: the firmware's own).
    pub boot_order: Option<Vec<BootDevice>>,
}

/// How `vms` orders its list.
#[derive(async_graphql::Enum, Clone, Copy, PartialEq, Eq, Debug)]
pub enum VmOrder {
    /// Oldest first (the default).
    Created,
    /// By name.
    Name,
    /// By state, oldest first within one.
    State,
}

/// The result of a VM mutation. With `dryRun: true`, `vm` is what would be,
/// `operation` is null and `plan` lists the host steps that would run.
#[derive(SimpleObject)]
pub struct VmPayload {
    /// The VM after the mutation (as it was, for `deleteVm`).
    pub vm: VmObject,
    /// The record of the host work; null with `dryRun: true`.
    pub operation: Option<OperationObject>,
    /// The host steps taken, or with `dryRun: true` those that would be.
    pub plan: Vec<PlanStep>,
}

impl From<Change<Vm>> for VmPayload {
    fn from(change: Change<Vm>) -> Self {
        VmPayload {
            vm: VmObject(change.object),
            operation: change.operation.map(OperationObject),
            plan: api::plan(&change.plan),
        }
    }
}

/// The result of `cloneVm`. A linked clone is made within the mutation:
/// `vm` is the clone. A full clone's copies go on after it answers: `vm` is
/// null, `operation` is RUNNING and its `targetId` is the clone's ID (see
/// `operationProgress`, `cancelOperation`). With `dryRun: true`, `vm` is
/// what would be, `operation` is null and `plan` lists the host steps.
#[derive(SimpleObject)]
pub struct CloneVmPayload {
    /// The clone; null while a full clone's copies run.
    pub vm: Option<VmObject>,
    /// The record of the host work; null with `dryRun: true`.
    pub operation: Option<OperationObject>,
    /// The host steps taken (none yet for a full clone that runs), or with
    /// `dryRun: true` those that would be.
    pub plan: Vec<PlanStep>,
}

#[derive(Default)]
pub struct VmQuery;

#[Object]
impl VmQuery {
    /// VMs, oldest first (or as `orderBy` says).
    // Each argument is a filter or a paging control of the API.
    #[allow(clippy::too_many_arguments)]
    async fn vms(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "Only VMs in this state.")] state: Option<VmState>,
        #[graphql(desc = "Only VMs whose name contains this text.")] name_contains: Option<String>,
        #[graphql(desc = "Only VMs with this tag.")] tag: Option<String>,
        #[graphql(
            default_with = "VmOrder::Created",
            desc = "The order: CREATED (oldest first), NAME or STATE. A cursor is good only for the order it came from."
        )]
        order_by: VmOrder,
        #[graphql(desc = "At most this many (default 50, at most 500).")] first: Option<i32>,
        #[graphql(desc = "Only those after this cursor (an `endCursor`).")] after: Option<String>,
    ) -> async_graphql::Result<Page<VmObject>> {
        let mut select = model::Entity::find();
        if let Some(tag) = tag {
            use sea_orm::{QuerySelect, QueryTrait};
            let tagged = super::tag::Entity::find()
                .select_only()
                .column(super::tag::Column::VmId)
                .filter(super::tag::Column::Tag.eq(tag))
                .into_query();
            select = select.filter(model::Column::Id.in_subquery(tagged));
        }
        if let Some(state) = state {
            select = select.filter(model::Column::State.eq(state));
        }
        if let Some(part) = name_contains {
            validate::text("nameContains", &part, 63).gql()?;
            // Names are lower case; SQLite's LIKE ignores ASCII case and
            // PostgreSQL's does not: lowering the text makes both match alike.
            select = select.filter(model::Column::Name.contains(part.to_ascii_lowercase()));
        }
        let db = &api::services(ctx).db;
        match order_by {
            VmOrder::Created => {
                let after = id_cursor(after).gql()?;
                page(
                    db,
                    select,
                    model::Column::Id,
                    after,
                    first,
                    |v| v.id.clone(),
                    VmObject,
                )
                .await
            }
            VmOrder::Name => {
                page(
                    db,
                    select,
                    model::Column::Name,
                    after,
                    first,
                    |v| v.name.clone(),
                    VmObject,
                )
                .await
            }
            VmOrder::State => {
                page_by_key(
                    db,
                    select,
                    (model::Column::State, model::Column::Id),
                    after,
                    first,
                    |v| (v.state.as_str().to_string(), v.id.clone()),
                    VmObject,
                )
                .await
            }
        }
        .gql()
    }

    /// A VM by ID or by name.
    async fn vm(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The VM's ID; or give `name`.")] id: Option<ID>,
        #[graphql(desc = "The VM's name; or give `id`.")] name: Option<String>,
    ) -> async_graphql::Result<Option<VmObject>> {
        let found = api::by_id_or_name::<model::Entity>(ctx, id, name, model::Column::Name).await?;
        Ok(found.map(VmObject))
    }
}

#[derive(Default)]
pub struct VmMutation;

#[Object]
impl VmMutation {
    /// Creates a VM (and its root disk when the template or input asks for one). It starts STOPPED.
    async fn create_vm(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "What the VM is.")] input: CreateVmInput,
        #[graphql(
            default = false,
            desc = "Check and plan only: change nothing, record no operation; `plan` lists the host steps that would run."
        )]
        dry_run: bool,
    ) -> async_graphql::Result<VmPayload> {
        let input = CreateVm {
            name: input.name,
            template_id: input.template_id.map(|i| i.0),
            template_name: input.template_name,
            vcpus: input.vcpus,
            memory_mib: input.memory_mib,
            disk_size_bytes: input.disk_size_bytes.map(|b| b.0),
            description: input.description,
            tags: input.tags,
            boot_order: input.boot_order,
            cdrom_image_id: input.cdrom_image_id.map(|i| i.0),
            cloud_init: input.cloud_init.map(Into::into),
            host_id: input.host_id.map(|i| i.0),
        };
        Ok(super::create(api::services(ctx), input, dry_run)
            .await
            .gql()?
            .into())
    }

    /// Changes a VM's name, description, tags, CPU count, memory or boot
    /// order. On a STOPPED or CRASHED VM all apply at once; otherwise the CPU
    /// count, memory and boot order wait for its next start
    /// (`Vm.pendingChanges`).
    async fn update_vm(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The VM's ID; or give `name`.")] id: Option<ID>,
        #[graphql(desc = "The VM's name; or give `id`.")] name: Option<String>,
        #[graphql(desc = "What to change.")] input: UpdateVmInput,
    ) -> async_graphql::Result<VmPayload> {
        let id = vm_id(ctx, ("id", id), ("name", name)).await?;
        let input = super::update::UpdateVm {
            name: input.name,
            description: input.description,
            vcpus: input.vcpus,
            memory_mib: input.memory_mib,
            tags: input.tags,
            boot_order: input.boot_order,
            cloud_init: match input.cloud_init {
                async_graphql::MaybeUndefined::Undefined => None,
                async_graphql::MaybeUndefined::Null => Some(None),
                async_graphql::MaybeUndefined::Value(data) => Some(Some(data.into())),
            },
        };
        Ok(super::update::update(api::services(ctx), &id, input)
            .await
            .gql()?
            .into())
    }

    /// Puts an ISO image into a VM's CD-ROM drive, read-only, replacing what
    /// is in it: at once on a RUNNING or PAUSED VM, and kept for its next
    /// starts. An image of another host than the VM's is CONFLICT.
    async fn attach_cdrom(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The VM's ID; or give `name`.")] id: Option<ID>,
        #[graphql(desc = "The VM's name; or give `id`.")] name: Option<String>,
        #[graphql(desc = "The ISO image's ID (an image of kind `ISO`).")] image_id: ID,
    ) -> async_graphql::Result<VmPayload> {
        let id = vm_id(ctx, ("id", id), ("name", name)).await?;
        Ok(
            super::media::set_cdrom(api::services(ctx), &id, Some(&image_id))
                .await
                .gql()?
                .into(),
        )
    }

    /// Empties a VM's CD-ROM drive (at once on a RUNNING or PAUSED VM). An
    /// empty drive stays empty and nothing is recorded as changed.
    async fn eject_cdrom(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The VM's ID; or give `name`.")] id: Option<ID>,
        #[graphql(desc = "The VM's name; or give `id`.")] name: Option<String>,
    ) -> async_graphql::Result<VmPayload> {
        let id = vm_id(ctx, ("id", id), ("name", name)).await?;
        Ok(super::media::set_cdrom(api::services(ctx), &id, None)
            .await
            .gql()?
            .into())
    }

    /// Drops the changes waiting for a VM's next start.
    async fn clear_pending_changes(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The VM's ID; or give `name`.")] id: Option<ID>,
        #[graphql(desc = "The VM's name; or give `id`.")] name: Option<String>,
    ) -> async_graphql::Result<VmPayload> {
        let id = vm_id(ctx, ("id", id), ("name", name)).await?;
        Ok(super::update::clear_pending(api::services(ctx), &id)
            .await
            .gql()?
            .into())
    }

    /// Starts QEMU for a STOPPED or CRASHED VM: STARTING, then RUNNING.
    async fn start_vm(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The VM's ID; or give `name`.")] id: Option<ID>,
        #[graphql(desc = "The VM's name; or give `id`.")] name: Option<String>,
        #[graphql(
            default = false,
            desc = "Check and plan only: change nothing, record no operation; `plan` lists the host steps that would run."
        )]
        dry_run: bool,
    ) -> async_graphql::Result<VmPayload> {
        lifecycle(ctx, (id, name), Lifecycle::Start, dry_run).await
    }

    /// Asks the guest to power off (ACPI), waits up to `timeoutSeconds`, then ends QEMU.
    /// `force: true` skips asking the guest.
    async fn stop_vm(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The VM's ID; or give `name`.")] id: Option<ID>,
        #[graphql(desc = "The VM's name; or give `id`.")] name: Option<String>,
        #[graphql(default = false, desc = "End QEMU without asking the guest.")] force: bool,
        #[graphql(desc = "1 to 3600; default `qemu.stop_timeout`.")] timeout_seconds: Option<i32>,
        #[graphql(
            default = false,
            desc = "Check and plan only: change nothing, record no operation; `plan` lists the host steps that would run."
        )]
        dry_run: bool,
    ) -> async_graphql::Result<VmPayload> {
        let app = api::services(ctx);
        let timeout_ms = match timeout_seconds {
            Some(s) => validate::timeout_seconds(s).gql()? * 1000,
            None => app.config.qemu.stop_timeout.as_millis() as u64,
        };
        lifecycle(
            ctx,
            (id, name),
            Lifecycle::Stop(StopRequest { force, timeout_ms }),
            dry_run,
        )
        .await
    }

    /// A graceful stop and a start; `hard: true` resets the machine instead.
    async fn restart_vm(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The VM's ID; or give `name`.")] id: Option<ID>,
        #[graphql(desc = "The VM's name; or give `id`.")] name: Option<String>,
        #[graphql(
            default = false,
            desc = "Reset the machine (QMP `system_reset`) instead."
        )]
        hard: bool,
        #[graphql(
            default = false,
            desc = "Check and plan only: change nothing, record no operation; `plan` lists the host steps that would run."
        )]
        dry_run: bool,
    ) -> async_graphql::Result<VmPayload> {
        lifecycle(ctx, (id, name), Lifecycle::Restart { hard }, dry_run).await
    }

    /// Pauses a RUNNING VM (QMP `stop`): PAUSED.
    async fn pause_vm(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The VM's ID; or give `name`.")] id: Option<ID>,
        #[graphql(desc = "The VM's name; or give `id`.")] name: Option<String>,
        #[graphql(
            default = false,
            desc = "Check and plan only: change nothing, record no operation; `plan` lists the host steps that would run."
        )]
        dry_run: bool,
    ) -> async_graphql::Result<VmPayload> {
        lifecycle(ctx, (id, name), Lifecycle::Pause, dry_run).await
    }

    /// Makes a new STOPPED VM from a STOPPED one: a new ID and new MACs, the
    /// same template link, settings, tags and networks, and its own disks.
    /// `linked: true` makes qcow2 overlays on read-only bases frozen from
    /// the source's disks (quick; the source then cannot be deleted while
    /// clones use them); `linked: false` copies every disk (a long
    /// operation: the mutation answers with it RUNNING).
    async fn clone_vm(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The source VM's ID; or give `sourceName`.")] id: Option<ID>,
        #[graphql(desc = "The source VM's name; or give `id`.")] source_name: Option<String>,
        #[graphql(desc = "The clone's name, unique among VMs.")] name: String,
        #[graphql(
            default = false,
            desc = "Overlays on frozen bases (qcow2 disks only) instead of full copies."
        )]
        linked: bool,
        #[graphql(
            default = false,
            desc = "Check and plan only: change nothing, record no operation; `plan` lists the host steps that would run."
        )]
        dry_run: bool,
    ) -> async_graphql::Result<CloneVmPayload> {
        let id = vm_id(ctx, ("id", id), ("sourceName", source_name)).await?;
        let change = super::clone::clone(
            api::services(ctx),
            &id,
            super::clone::CloneVm { name, linked },
            dry_run,
        )
        .await
        .gql()?;
        Ok(CloneVmPayload {
            vm: change.object.map(VmObject),
            operation: change.operation.map(OperationObject),
            plan: api::plan(&change.plan),
        })
    }

    /// Resumes a PAUSED VM (QMP `cont`): RUNNING.
    async fn resume_vm(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The VM's ID; or give `name`.")] id: Option<ID>,
        #[graphql(desc = "The VM's name; or give `id`.")] name: Option<String>,
        #[graphql(
            default = false,
            desc = "Check and plan only: change nothing, record no operation; `plan` lists the host steps that would run."
        )]
        dry_run: bool,
    ) -> async_graphql::Result<VmPayload> {
        lifecycle(ctx, (id, name), Lifecycle::Resume, dry_run).await
    }

    /// Stops the VM if needed and deletes it. Its disks are deleted too unless
    /// `deleteDisks: false`, which detaches and keeps them.
    async fn delete_vm(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The VM's ID; or give `name`.")] id: Option<ID>,
        #[graphql(desc = "The VM's name; or give `id`.")] name: Option<String>,
        #[graphql(default = true, desc = "False: detach the VM's disks and keep them.")]
        delete_disks: bool,
        #[graphql(
            default = false,
            desc = "Check and plan only: change nothing, record no operation; `plan` lists the host steps that would run."
        )]
        dry_run: bool,
    ) -> async_graphql::Result<VmPayload> {
        let id = vm_id(ctx, ("id", id), ("name", name)).await?;
        Ok(
            super::delete(api::services(ctx), &id, delete_disks, dry_run)
                .await
                .gql()?
                .into(),
        )
    }
}

/// The VM a mutation names by an ID argument or a name argument
/// (`("id", id)` and `("name", name)`, or `vmId` and `vmName`).
pub(crate) async fn vm_id(
    ctx: &Context<'_>,
    id: (&str, Option<ID>),
    name: (&str, Option<String>),
) -> async_graphql::Result<String> {
    api::target::<super::model::Entity>(
        ctx,
        "VM",
        id,
        name,
        (super::model::Column::Id, super::model::Column::Name),
    )
    .await
}

async fn lifecycle(
    ctx: &Context<'_>,
    (id, name): (Option<ID>, Option<String>),
    request: Lifecycle,
    dry_run: bool,
) -> async_graphql::Result<VmPayload> {
    let id = vm_id(ctx, ("id", id), ("name", name)).await?;
    Ok(super::lifecycle(api::services(ctx), &id, request, dry_run)
        .await
        .gql()?
        .into())
}
