//! The rule that turns a stored email into the form the agent stores and compares:
//! `followers_etl::domain::Email::parse` (trimmed, lower-cased, validated, the
//! domain in one IDNA form; docs/sync.md#4-validate). The takeover
//! migration applies exactly that function to every stored email, so the table's
//! emails and the file's rows can never be canonicalised differently (no second
//! copy of the rule in SQL to drift from it). The agent installs it before it
//! applies migrations (`followers_etl::db::migrate`); the migration crate cannot
//! depend on the agent's crate, which depends on it.

use sea_orm_migration::prelude::DbErr;
use std::sync::OnceLock;

/// `Ok(canonical email)`, or `Err(why it is not a valid email)`.
pub type Rule = fn(&str) -> Result<String, String>;

static RULE: OnceLock<Rule> = OnceLock::new();
static NAME_RULE: OnceLock<Rule> = OnceLock::new();

/// Installs the agent's email rule (the first call wins).
pub fn install(rule: Rule) {
    let _ = RULE.set(rule);
}

/// Installs the agent's name rule, `FullName::parse` (the first call wins).
pub fn install_name_rule(rule: Rule) {
    let _ = NAME_RULE.set(rule);
}

pub(crate) fn name_rule() -> Result<Rule, DbErr> {
    NAME_RULE.get().copied().ok_or_else(missing)
}

pub(crate) fn rule() -> Result<Rule, DbErr> {
    RULE.get().copied().ok_or_else(missing)
}

fn missing() -> DbErr {
    DbErr::Migration(
        "the followers takeover migrations need the agent's email and name rules: apply the \
         migrations with `followers-etl migrate` (or sync/serve), not another migration tool"
            .into(),
    )
}
