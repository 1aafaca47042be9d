//! Resource profiles: what a service uses, interval by interval (thesis §4.1,
//! docs/DESIGN.md §3), and a class's profile as the Control's registry keeps it.
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
    /// For a video distributor: the video it was profiled with, so that admission can
    /// scale the profile to another video's bitrate and duration.
    #[serde(default)]
    pub video: Option<VideoRef>,
}

/// The video a distributor's profile was measured with.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct VideoRef {
    /// Bitrate, bits/s.
    pub bitrate_bps: u64,
    /// Duration, milliseconds.
    pub duration_ms: u64,
    /// Fraction of the video the distributor's cache holds (0.2 by default).
    pub window_fraction: f64,
}

impl VideoRef {
    /// Bytes the distributor's cache holds for this video.
    pub fn cache_bytes(&self) -> u64 {
        (self.window_fraction.clamp(0.0, 1.0) * self.bitrate_bps as f64 / 8.0
            * self.duration_ms as f64
            / 1000.0) as u64
    }
}

/// Where a class's profile comes from.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProfileSource {
    /// Measured by Agent99 (`smart profile`) and stored by an operator or a profiling job.
    Measured,
    /// Refined online from the samples of running instances.
    Refined,
    /// The node configuration's default profile (the class has none of its own).
    Default,
}

/// A class's profile as the Control keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassProfile {
    /// The service class.
    pub class: String,
    /// Where it comes from.
    pub source: ProfileSource,
    /// Grows with every change (a store, a refinement).
    pub version: u64,
    /// The profile.
    pub profile: ServiceProfile,
}

/// A profile's headline figures, for listings.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProfileSummary {
    /// The service class.
    pub class: String,
    /// Where it comes from.
    pub source: ProfileSource,
    /// Its version.
    pub version: u64,
    /// Intervals in the base series.
    pub intervals: u64,
    /// Mean base CPU, cores.
    pub cpu_mean: f64,
    /// 95th percentile of base CPU, cores.
    pub cpu_p95: f64,
    /// Mean base network, bits/s.
    pub net_mean_bps: f64,
    /// Mean per-client network increment, bits/s (distributors).
    pub per_client_net_bps: Option<f64>,
    /// Working set, bytes.
    pub working_set_bytes: u64,
    /// The reference video (distributors).
    pub video: Option<VideoRef>,
}

impl ClassProfile {
    /// Its headline figures.
    pub fn summary(&self) -> ProfileSummary {
        let b = &self.profile.base;
        let mean = |v: &[f64]| {
            if v.is_empty() {
                0.0
            } else {
                v.iter().sum::<f64>() / v.len() as f64
            }
        };
        let mut cpu = b.cpu_cores.clone();
        let p95 = crate::stats::percentile(&mut cpu, 0.95).unwrap_or(0.0);
        ProfileSummary {
            class: self.class.clone(),
            source: self.source,
            version: self.version,
            intervals: b.len() as u64,
            cpu_mean: mean(&b.cpu_cores),
            cpu_p95: p95,
            net_mean_bps: mean(&b.net_bps),
            per_client_net_bps: self.profile.per_client.as_ref().map(|p| mean(&p.net_bps)),
            working_set_bytes: self.profile.working_set_bytes,
            video: self.profile.video,
        }
    }
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
            video: None,
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
