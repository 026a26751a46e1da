//! Domain types: values that can only be made by parsing, so the rest of the
//! pipeline never sees an unnormalised email or an oversized name; and what a run
//! is and how it ended (`Outcome`, `Trigger`, `Stage`, `Counts`), shared by every module.

mod email;
mod full_name;
mod ids;
mod run;

pub use email::{Email, EmailError};
pub use full_name::{FullName, FullNameError};
pub use ids::{ContentHash, LoadId};
pub use run::{Counts, Outcome, Stage, Trigger};

/// Longest value the `VARCHAR(255)` columns accept, in characters.
pub const MAX_FIELD_CHARS: usize = 255;
