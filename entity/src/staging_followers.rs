//! `public.staging_followers`: rows of a load in flight, keyed by the run's `load_id`.
//! The table has no primary key in the database; SeaORM needs one, so the entity
//! declares `(load_id, line_no)`, which is unique per load by construction.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "staging_followers")]
pub struct Model {
    pub email: String,
    pub full_name: String,
    #[sea_orm(primary_key, auto_increment = false)]
    pub load_id: Uuid,
    /// Line of the CSV file the row came from; decides which duplicate wins.
    #[sea_orm(primary_key, auto_increment = false)]
    pub line_no: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
