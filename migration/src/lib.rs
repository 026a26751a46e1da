//! Database migrations of followers-etl (sea-orm-migration), one per file.
//! Callers apply them through `followers_etl::db::migrate`, which holds an advisory
//! lock so that two agents starting at once cannot race.

pub use sea_orm_migration::prelude::*;

mod m20261124_000001_create_followers;
mod m20261124_000002_create_staging_followers;
mod m20261124_000003_create_etl_info_schema;

pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261124_000001_create_followers::Migration),
            Box::new(m20261124_000002_create_staging_followers::Migration),
            Box::new(m20261124_000003_create_etl_info_schema::Migration),
        ]
    }
}
