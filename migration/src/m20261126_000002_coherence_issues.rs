//! Coherence issues: each drift the observer's sweep finds between the
//! database and the host, from when it was first seen until it is gone.
//!
//! One open issue per (kind, subject): a drift seen again is the same issue,
//! kept by a partial unique index, so two sweeps can never open it twice.
//! `subject_id` is deliberately not a foreign key: the subject may be an
//! orphan run directory, or a VM deleted since (its issues then resolve).

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table(CoherenceIssues::Table)
                .col(string(CoherenceIssues::Id).primary_key())
                .col(string(CoherenceIssues::Kind))
                .col(string(CoherenceIssues::SubjectType))
                .col(string(CoherenceIssues::SubjectId))
                .col(string_null(CoherenceIssues::VmId))
                .col(text(CoherenceIssues::Expected))
                .col(text(CoherenceIssues::Observed))
                .col(timestamp_with_time_zone(CoherenceIssues::DetectedAt))
                .col(timestamp_with_time_zone_null(CoherenceIssues::ResolvedAt))
                .col(text_null(CoherenceIssues::Action))
                .to_owned(),
        )
        .await?;
        // Partial unique index: plain SQL, the same on SQLite and PostgreSQL.
        m.get_connection()
            .execute_unprepared(
                "CREATE UNIQUE INDEX idx_coherence_issues_open \
                 ON coherence_issues (kind, subject_id) WHERE resolved_at IS NULL",
            )
            .await?;
        m.create_index(
            Index::create()
                .name("idx_coherence_issues_vm")
                .table(CoherenceIssues::Table)
                .col(CoherenceIssues::VmId)
                .to_owned(),
        )
        .await?;
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_table(Table::drop().table(CoherenceIssues::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
enum CoherenceIssues {
    Table,
    Id,
    Kind,
    SubjectType,
    SubjectId,
    VmId,
    Expected,
    Observed,
    DetectedAt,
    ResolvedAt,
    Action,
}
