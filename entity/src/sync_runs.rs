//! `etl_info_schema.sync_runs`: one row per run, `running` while in flight and then
//! its outcome with the counts and, for refused and failed runs, the reason.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(schema_name = "etl_info_schema", table_name = "sync_runs")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub load_id: Uuid,
    /// `cron`, `watch`, `start`, `manual` or `revert`.
    pub trigger: String,
    pub file: String,
    pub content_hash: Option<String>,
    pub started_at: DateTime,
    pub finished_at: Option<DateTime>,
    /// `running`, then `synced`, `reverted`, `skipped`, `refused`, `failed` or `dry_run`.
    pub outcome: String,
    pub rows_read: i64,
    pub inserted: i64,
    pub updated: i64,
    pub deleted: i64,
    pub unchanged: i64,
    pub rejected: i64,
    pub duplicates: i64,
    pub error: Option<String>,
    /// Rows this run holds in `sync_journal`; None when it has no journal
    /// (not a synced or reverting run, the journal was off, or it was pruned).
    pub journaled: Option<i64>,
    /// The run inserted into an empty table (its journal has no rows).
    pub filled: bool,
    /// The revert run that undid this run.
    pub reverted_by: Option<Uuid>,
    /// The mirror the run synced (docs/mirrors.md#runs): `followers`, the
    /// built-in mirror, or a configured mirror's name.
    pub mirror: String,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
