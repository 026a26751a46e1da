//! Applies the file rows' rules of this version to the followers already stored
//! (docs/sync.md#taking-over-the-old-services-database), once:
//!
//! - emails: stricter than when 000004 ran or the rows were loaded (UTS #46 with
//!   the STD3 and hyphen checks on every domain, a root dot dropped, the local
//!   part in NFC): `dee@x.io.` and `dee@x.io` become one row as 000004 merges
//!   variants (`canonical::emails`). A stored email the rules now refuse
//!   (`q@x..io`, loaded by an earlier version) is left as it is and named in a
//!   warning: stopping every start for it would help no one, and the next sync
//!   treats it as absent (its file row is a reject);
//! - names: trimmed as the reader trims a file's (`canonical::names`): the old
//!   service stored `'Cy '` as it came, so a file equal to the table would
//!   otherwise rewrite those rows. `modified_at` is kept.
//!
//! 000004 is not changed: it has run on real databases and keeps its meaning.
//! On a database created by the agent this usually finds nothing to do.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        if crate::followers_shape::leave_alone(db).await? {
            return Ok(());
        }
        crate::followers_shape::check(db).await?;
        let emails = crate::canonical::emails(db, crate::canonical::Invalid::Keep).await?;
        let names = crate::canonical::names(db).await?;
        if emails.rewritten + emails.merged + names > 0 {
            tracing::warn!(
                rewritten = emails.rewritten,
                merged = emails.merged,
                merged_into = emails.merged_into,
                names_trimmed = names,
                "followers takeover: stored followers canonicalised as file rows are (emails by the current rules, names trimmed)"
            );
        }
        Ok(())
    }

    async fn down(&self, _manager: &SchemaManager) -> Result<(), DbErr> {
        Ok(())
    }
}
