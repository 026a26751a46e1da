//! Identifiers of a run: `LoadId` (a UUID v7, so ids sort by start time) and
//! `ContentHash` (blake3 of the parse settings and the file bytes, hex).

use std::fmt;
use uuid::Uuid;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct LoadId(Uuid);

impl LoadId {
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }

    pub fn uuid(&self) -> Uuid {
        self.0
    }
}

impl Default for LoadId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for LoadId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContentHash(String);

impl ContentHash {
    pub fn from_hasher(hasher: &blake3::Hasher) -> Self {
        Self(hasher.finalize().to_hex().to_string())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A hash already in its hex form (a configured mirror's run, which
    /// combines its files' hashes itself).
    pub fn from_hex(hex: &str) -> Self {
        Self(hex.to_owned())
    }
}

impl fmt::Display for ContentHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
