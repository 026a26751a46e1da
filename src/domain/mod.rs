//! Domain types: values that can only be made by parsing, so the rest of the
//! pipeline never sees an unnormalised email or an oversized name.

mod email;
mod full_name;
mod ids;

pub use email::{Email, EmailError};
pub use full_name::{FullName, FullNameError};
pub use ids::{ContentHash, LoadId};

/// Longest value the `VARCHAR(255)` columns accept, in characters.
pub const MAX_FIELD_CHARS: usize = 255;
