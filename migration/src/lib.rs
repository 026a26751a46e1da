//! Database migrations of followers-etl (sea-orm-migration), one per file.
//! Callers apply them through `followers_etl::db::migrate`, which holds an advisory
//! lock so that two agents starting at once cannot race. On PostgreSQL,
//! sea-orm-migration applies all pending migrations in one transaction.

pub use sea_orm_migration::prelude::*;

mod canonical;
pub mod email_rule;
pub mod followers_shape;
mod m20261124_000001_create_followers;
mod m20261124_000002_create_staging_followers;
mod m20261124_000003_create_etl_info_schema;
mod m20261130_000004_canonical_follower_emails;
mod m20261130_000006_sync_runs_stages;
mod m20261130_000007_create_sync_rejects;
mod m20261130_000009_staging_without_index;
mod m20261130_000010_create_sync_journal;
mod m20261201_000011_canonical_followers_again;
mod m20261201_000020_followers_write_counter;
mod m20261201_000030_sync_runs_refusal_key;
mod m20261201_000040_exact_runs;
mod m20261202_000050_mirror_journal;
mod m20261202_000060_mirror_status;
mod m20261202_000065_sync_runs_mirror;
mod m20261202_000070_exact_mirror_runs;
mod m20261202_000080_sync_runs_mirror_table;
mod m20261202_000085_followers_counter_always;

pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261124_000001_create_followers::Migration),
            Box::new(m20261124_000002_create_staging_followers::Migration),
            Box::new(m20261124_000003_create_etl_info_schema::Migration),
            Box::new(m20261130_000004_canonical_follower_emails::Migration),
            Box::new(m20261130_000006_sync_runs_stages::Migration),
            Box::new(m20261130_000007_create_sync_rejects::Migration),
            Box::new(m20261130_000009_staging_without_index::Migration),
            Box::new(m20261130_000010_create_sync_journal::Migration),
            Box::new(m20261201_000011_canonical_followers_again::Migration),
            Box::new(m20261201_000020_followers_write_counter::Migration),
            Box::new(m20261201_000030_sync_runs_refusal_key::Migration),
            Box::new(m20261201_000040_exact_runs::Migration),
            Box::new(m20261202_000050_mirror_journal::Migration),
            Box::new(m20261202_000060_mirror_status::Migration),
            Box::new(m20261202_000065_sync_runs_mirror::Migration),
            Box::new(m20261202_000070_exact_mirror_runs::Migration),
            Box::new(m20261202_000080_sync_runs_mirror_table::Migration),
            Box::new(m20261202_000085_followers_counter_always::Migration),
        ]
    }
}
