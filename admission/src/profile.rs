//! Resource profiles: what a service uses, interval by interval (thesis §4.1, docs/DESIGN.md §3).
//!
//! A profile is written by Agent99 (`smart profile`) and read by the admission engine. It is
//! stored as JSON (see [`ServiceProfile::to_json`]); the `version` field is checked on load so
//! that a future format change is refused with a clear error instead of being misread.
//!
//! Units are absolute so that nodes of different sizes can be compared at decision time:
//! CPU in cores (1.0 = one core busy for the whole interval), network in bits per second,
//! memory in bytes.

use serde::{Deserialize, Serialize};

/// The profile file format version this build reads and writes.
pub const PROFILE_FORMAT_VERSION: u32 = 1;

/// Per-interval samples of one resource set, all series of equal length.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Series {
    /// CPU used in each interval, in cores.
    pub cpu_cores: Vec<f64>,
    /// Network throughput in each interval, in bits per second (sent + received).
    pub net_bps: Vec<f64>,
    /// Resident memory at the end of each interval, in bytes.
    pub mem_bytes: Vec<u64>,
}

impl Series {
    /// Number of intervals (the length of the shortest series).
    pub fn len(&self) -> usize {
        self.cpu_cores
            .len()
            .min(self.net_bps.len())
            .min(self.mem_bytes.len())
    }

    /// True when there is no complete interval.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A service's profile: a base series, and for services whose usage grows with their clients
/// (video distributors) a per-client increment (docs/DESIGN.md §3).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceProfile {
    /// Must equal [`PROFILE_FORMAT_VERSION`].
    pub version: u32,
    /// Service (class) name.
    pub service: String,
    /// Sampling interval in milliseconds (1000 by default).
    pub interval_ms: u64,
    /// Usage with no clients (or of a service without clients).
    pub base: Series,
    /// Extra usage per client, when known.
    #[serde(default)]
    pub per_client: Option<Series>,
    /// Memory working set to reserve, in bytes (static: peak; dynamic: a high percentile).
    pub working_set_bytes: u64,
}

/// Why a profile could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    /// The JSON did not parse or lacked fields.
    #[error("profile is not valid JSON of the expected shape: {0}")]
    Parse(#[from] serde_json::Error),
    /// The file was written by an incompatible version.
    #[error("profile format version {found} is not supported (this build reads {expected})")]
    Version {
        /// Version found in the file.
        found: u32,
        /// Version this build reads.
        expected: u32,
    },
}

impl ServiceProfile {
    /// Serialise to pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("profile serialises")
    }

    /// Parse and check the version.
    pub fn from_json(s: &str) -> Result<Self, ProfileError> {
        let p: ServiceProfile = serde_json::from_str(s)?;
        if p.version != PROFILE_FORMAT_VERSION {
            return Err(ProfileError::Version {
                found: p.version,
                expected: PROFILE_FORMAT_VERSION,
            });
        }
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_version_check() {
        let p = ServiceProfile {
            version: PROFILE_FORMAT_VERSION,
            service: "distributor".into(),
            interval_ms: 1000,
            base: Series {
                cpu_cores: vec![0.01, 0.02],
                net_bps: vec![4.0e5, 4.1e5],
                mem_bytes: vec![1 << 20, 1 << 21],
            },
            per_client: None,
            working_set_bytes: 1 << 21,
        };
        let back = ServiceProfile::from_json(&p.to_json()).unwrap();
        assert_eq!(back, p);
        let bad = p.to_json().replace("\"version\": 1", "\"version\": 9");
        assert!(matches!(
            ServiceProfile::from_json(&bad),
            Err(ProfileError::Version { found: 9, .. })
        ));
    }
}
