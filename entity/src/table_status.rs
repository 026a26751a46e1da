//! `etl_info_schema.table_status`: one row per target table, with the time, content
//! hash and load of its last successful sync.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(schema_name = "etl_info_schema", table_name = "table_status")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i32,
    #[sea_orm(unique)]
    pub table_name: String,
    pub last_activity: Option<DateTime>,
    /// Hash of the file bytes and parse settings of the last successful sync.
    pub content_hash: Option<String>,
    pub load_id: Option<Uuid>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
