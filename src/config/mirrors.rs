//! The mirrors of the settings (docs/mirrors.md): the built-in `followers`
//! mirror (from `CSV_FILE`, present whenever it is set) first, then the config
//! file's `[[mirror]]` tables, each parsed and validated once at load
//! (docs/configuration.md#mirrors).

use super::*;
use crate::mirror::{MirrorError, MirrorSpec};

/// The built-in mirror, when `CSV_FILE` is set (as given; `resolve_csv_file`
/// confines it when a command reads it).
pub(super) fn builtin(csv: &CsvSettings) -> Vec<MirrorSpec> {
    csv.file.as_deref().map(MirrorSpec::followers).into_iter().collect()
}

/// The config file's `[[mirror]]` array (none: no key `mirror`), validated with
/// the built-in mirror: names unique and one table per mirror, `public.followers`
/// being the built-in mirror's also when `CSV_FILE` is unset.
pub(super) fn configured(file: &toml::Table) -> Result<Vec<MirrorSpec>, MirrorError> {
    let Some(value) = file.get(MIRROR_KEY) else {
        return Ok(Vec::new());
    };
    let specs = crate::mirror::parse_mirrors(value)?;
    let mut all = vec![MirrorSpec::followers(Path::new(""))];
    all.extend(specs.iter().cloned());
    crate::mirror::validate_set(&all)?;
    Ok(specs)
}

/// The config file's key of the mirrors' array of tables (`[[mirror]]`).
pub(super) const MIRROR_KEY: &str = "mirror";
