//! The one place that decides what a role may do: an async-graphql extension
//! that checks every root field against [`required_role`] before the field's
//! resolver runs. A refused field errors with `FORBIDDEN` (or
//! `UNAUTHENTICATED` when no principal came with the request) and its
//! resolver never runs, so nothing changes.

use std::sync::Arc;

use async_graphql::{
    ErrorExtensions, PathSegment, ServerResult, Value,
    extensions::{Extension, ExtensionContext, ExtensionFactory, NextResolve, ResolveInfo},
};

use super::{Principal, Role};

/// What each mutation needs. Every mutation is named here; one that is not
/// needs `admin` (and a test fails until it is named).
pub const MUTATIONS: &[(&str, Role)] = &[
    // The lifecycle of VMs, disks and NICs.
    ("createVm", Role::Operator),
    ("startVm", Role::Operator),
    ("stopVm", Role::Operator),
    ("restartVm", Role::Operator),
    ("pauseVm", Role::Operator),
    ("resumeVm", Role::Operator),
    ("deleteVm", Role::Operator),
    ("updateVm", Role::Operator),
    ("clearPendingChanges", Role::Operator),
    ("attachCdrom", Role::Operator),
    ("ejectCdrom", Role::Operator),
    ("createDisk", Role::Operator),
    ("attachDisk", Role::Operator),
    ("detachDisk", Role::Operator),
    ("resizeDisk", Role::Operator),
    ("deleteDisk", Role::Operator),
    ("attachNic", Role::Operator),
    ("detachNic", Role::Operator),
    ("createSnapshot", Role::Operator),
    ("restoreSnapshot", Role::Operator),
    ("deleteSnapshot", Role::Operator),
    // Stopping a long operation (a full clone): as much as starting one.
    ("cancelOperation", Role::Operator),
    ("cloneVm", Role::Operator),
    // Typing into a VM's console: as much as a lifecycle mutation.
    ("sendConsoleInput", Role::Operator),
    // What many VMs share, who may use the API, and the host's coherence.
    ("createTemplate", Role::Admin),
    ("deleteTemplate", Role::Admin),
    ("updateTemplate", Role::Admin),
    ("importImage", Role::Admin),
    ("deleteImage", Role::Admin),
    ("createNetwork", Role::Admin),
    ("deleteNetwork", Role::Admin),
    ("runCoherenceSweep", Role::Admin),
    ("createApiToken", Role::Admin),
    ("revokeApiToken", Role::Admin),
];

/// Queries that need more than `viewer`.
pub const QUERIES: &[(&str, Role)] = &[("apiTokens", Role::Admin)];

/// The role a root field of `root` (`Query`, `Mutation`, `Subscription`) needs.
pub fn required_role(root: &str, field: &str) -> Role {
    let table = match root {
        "Mutation" => MUTATIONS,
        "Query" => QUERIES,
        _ => return Role::Viewer,
    };
    match table.iter().find(|(name, _)| *name == field) {
        Some((_, role)) => *role,
        None if root == "Mutation" => Role::Admin,
        None => Role::Viewer,
    }
}

/// Whether `principal` may resolve root field `field` of `root`: the one
/// role check, made by [`RoleGuard`] before each root field resolves and by
/// `api::executor` up front for a query it runs without the extension.
pub fn allows(principal: &Principal, root: &str, field: &str) -> bool {
    principal.role >= required_role(root, field)
}

/// The extension to put on the schema.
pub struct RoleGuard;

impl ExtensionFactory for RoleGuard {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(RoleGuard)
    }
}

#[async_trait::async_trait]
impl Extension for RoleGuard {
    async fn resolve(
        &self,
        ctx: &ExtensionContext<'_>,
        info: ResolveInfo<'_>,
        next: NextResolve<'_>,
    ) -> ServerResult<Option<Value>> {
        if info.path_node.parent.is_none() && !info.is_for_introspection {
            let principal = ctx.data_opt::<Principal>();
            if principal.is_none_or(|p| !allows(p, info.parent_type, info.name)) {
                let needs = required_role(info.parent_type, info.name);
                let mut error = super::forbidden(principal, info.name, needs)
                    .extend()
                    .into_server_error(Default::default());
                error.locations.clear();
                error.path = vec![PathSegment::Field(
                    info.alias.unwrap_or(info.name).to_string(),
                )];
                return Err(error);
            }
        }
        next.run(ctx, info).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_mutation_of_the_schema_is_in_the_table() {
        let schema = crate::api::schema_builder().finish();
        let response = schema
            .execute(r#"{ __type(name: "Mutation") { fields { name } } }"#)
            .await
            .into_result()
            .expect("introspection");
        let json = response.data.into_json().expect("json");
        let fields: Vec<&str> = json["__type"]["fields"]
            .as_array()
            .expect("fields")
            .iter()
            .filter_map(|field| field["name"].as_str())
            .collect();
        assert!(fields.len() >= 20, "{fields:?}");
        for field in &fields {
            assert!(
                MUTATIONS.iter().any(|(name, _)| name == field),
                "mutation {field} is not in auth::guard::MUTATIONS: say which role it needs"
            );
        }
        for (name, _) in MUTATIONS {
            assert!(fields.contains(name), "{name} is not a mutation any more");
        }
    }

    #[test]
    fn roles_are_ordered_and_unknown_mutations_need_admin() {
        assert!(Role::Viewer < Role::Operator && Role::Operator < Role::Admin);
        assert_eq!(required_role("Mutation", "startVm"), Role::Operator);
        assert_eq!(required_role("Mutation", "somethingNew"), Role::Admin);
        assert_eq!(required_role("Query", "vms"), Role::Viewer);
        assert_eq!(required_role("Query", "apiTokens"), Role::Admin);
        assert_eq!(required_role("Subscription", "events"), Role::Viewer);
    }
}
