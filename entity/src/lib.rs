//! SeaORM entities for the tables followers-etl owns: the mirrored `followers`,
//! the `staging_followers` load area, and the bookkeeping tables in `etl_info_schema`.
//! Bulk rows never move through these entities (that is COPY and set-based SQL);
//! they serve single-row bookkeeping and typed reads.

pub mod followers;
pub mod staging_followers;
pub mod sync_runs;
pub mod table_status;
