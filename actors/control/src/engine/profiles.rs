//! The QoS loop's profile side (thesis §4.1, §5.3; docs/DESIGN.md §3): class profiles as
//! cluster state, a service's profile scaled from its class's to its video, the reservation
//! and limits it implies, and online refinement from the samples of running instances.
//!
//! - A **class profile** is stored by an operator (`PutProfile`, what `smart profile`
//!   measured) or by a profiling job, kept in the registry (replicated, so it survives a
//!   failover), and versioned. A class without one uses the node configuration's default
//!   profile, if any; otherwise admission refuses it and says which class lacks a profile.
//! - A service's **admission profile** is its class profile scaled to the service's video
//!   (bitrate, duration: `smart_admission::scale::for_video`), registered once per
//!   (class, version, bitrate, duration) in the admission engine.
//! - Its **reservation** is a high percentile of base + clients × increment
//!   (`reserve_quantile`), and the **limits** Agent86 enforces are the reservation times a
//!   headroom: a limit is a guard against a runaway, not a second admission test.
//! - **Refinement**: every report round, each running instance's last sample (normalised to
//!   its class's reference video) enters its class's bounded window
//!   (`smart_admission::refine::ProfileRefiner`); when the window's p95 moves, the class
//!   profile becomes `Refined` at a new version: new admissions use it, and running services
//!   are re-checked against it (grown in place, moved, or reported).
//!
//! [`Profiles`] owns all of it: the engine asks it for a service's admission profile and
//! reservation, and hands it the admission engine only where a profile must be registered.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use smart_admission::refine::{ProfileRefiner, RefineConfig};
use smart_admission::scale;
use smart_admission::{AnyEngine, EstimatorKind, Policy, ProfileId};
use smart_proto::agent::{Reservation, UsageReading};
use smart_proto::api::{ApiError, ServiceSpec};
use smart_proto::node::Replica;
use smart_proto::profile::{
    ClassProfile, PROFILE_FORMAT_VERSION, ProfileSource, ServiceProfile, VideoRef,
};

/// How the Control admits, reserves and limits (the node's `[admission]` config).
#[derive(Debug, Clone, PartialEq)]
pub struct AdmissionSettings {
    /// The estimator of eq. 4.1 and of the per-node test.
    pub estimator: EstimatorKind,
    /// The confidence C.
    pub confidence: f64,
    /// The reference value VR: the fraction of a node's capacity admitted load may reach.
    pub vr: f64,
    /// The placement policy.
    pub policy: Policy,
    /// Grid of the estimators' time-aligned series.
    pub grid: usize,
    /// Reservations are this quantile of base + clients × increment.
    pub reserve_quantile: f64,
    /// CPU limit = reservation × this (at least [`MIN_CPU_LIMIT`]).
    pub cpu_headroom: f64,
    /// Memory limit = reservation × this + [`MEM_LIMIT_SLACK`].
    pub mem_headroom: f64,
    /// The profile of a class that has none of its own (none: such classes are refused).
    pub default_profile: Option<ServiceProfile>,
    /// A service with no clients for this long is stopped and its reservation released.
    pub idle_stop_after: Option<Duration>,
    /// Online refinement.
    pub refine: RefineConfig,
    /// A migration's copy is capped at this rate, and reserves it on both nodes while it
    /// runs.
    pub copy_rate_bps: Option<u64>,
}

/// The smallest CPU limit given to an instance, cores (a start-up needs some CPU).
pub const MIN_CPU_LIMIT: f64 = 0.1;
/// Slack added to every memory limit, bytes (allocator and kernel overheads).
pub const MEM_LIMIT_SLACK: u64 = 32 << 20;

impl Default for AdmissionSettings {
    /// The documented `[admission]` defaults (one set of numbers: `smart_config`'s).
    fn default() -> Self {
        Self::from_parts(&smart_config::AdmissionConfig::default(), None)
    }
}

impl AdmissionSettings {
    /// The limits Agent86 enforces for a reservation: `(cpu cores, memory bytes)`.
    pub(crate) fn limits_of(&self, r: &Reservation) -> (Option<f64>, Option<u64>) {
        let cpu = (r.cpu_cores * self.cpu_headroom).max(MIN_CPU_LIMIT);
        let mem = (r.mem_bytes as f64 * self.mem_headroom) as u64 + MEM_LIMIT_SLACK;
        (Some(cpu), Some(mem))
    }
}

/// Identifies an admission profile: a class profile's version scaled to one video.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ScaleKey {
    class: String,
    source: ProfileSource,
    version: u64,
    bitrate_bps: Option<u64>,
    duration_ms: Option<u64>,
}

/// The profile side of the engine's state.
pub(crate) struct Profiles {
    /// Class profiles (measured or refined).
    classes: BTreeMap<String, ClassProfile>,
    /// Admission profiles already registered.
    scaled: HashMap<ScaleKey, ProfileId>,
    /// Every registered admission profile (for reservations).
    by_id: HashMap<ProfileId, Arc<ServiceProfile>>,
    /// Refinement windows per class.
    refiners: HashMap<String, ProfileRefiner>,
    /// The profile of a migration's copy hold, once registered.
    copy_hold: Option<ProfileId>,
    /// The profile of a class that has none of its own.
    default_profile: Option<ServiceProfile>,
    /// Reservations are this quantile of base + clients × increment.
    reserve_quantile: f64,
    /// Online refinement.
    refine: RefineConfig,
    /// Length of the copy hold's series (the admission engine's grid).
    grid: usize,
}

/// A class profile just stored, for the `ProfileStored` event.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Stored {
    pub(crate) class: String,
    pub(crate) source: ProfileSource,
    pub(crate) version: u64,
}

impl Profiles {
    /// The class profiles a previous Control replicated (invalid ones dropped), used with
    /// these settings.
    pub(crate) fn new(r: &Replica, settings: &AdmissionSettings) -> Self {
        Self {
            classes: r
                .profiles
                .iter()
                .filter(|c| validate(&c.profile).is_ok())
                .map(|c| (c.class.clone(), c.clone()))
                .collect(),
            scaled: HashMap::new(),
            by_id: HashMap::new(),
            refiners: HashMap::new(),
            copy_hold: None,
            default_profile: settings.default_profile.clone(),
            reserve_quantile: settings.reserve_quantile,
            refine: settings.refine,
            grid: settings.grid,
        }
    }

    /// Every class profile, by class.
    pub(crate) fn classes(&self) -> impl Iterator<Item = &ClassProfile> {
        self.classes.values()
    }

    /// `class`'s stored profile.
    pub(crate) fn class(&self, class: &str) -> Option<&ClassProfile> {
        self.classes.get(class)
    }

    /// A registered admission profile.
    pub(crate) fn admission_profile(&self, id: ProfileId) -> Option<&Arc<ServiceProfile>> {
        self.by_id.get(&id)
    }

    /// The class profile `spec` is admitted with, and where it comes from.
    fn class_profile(&self, class: &str) -> Result<(ServiceProfile, ProfileSource, u64), String> {
        if let Some(c) = self.classes.get(class) {
            return Ok((c.profile.clone(), c.source, c.version));
        }
        match &self.default_profile {
            Some(p) => Ok((p.clone(), ProfileSource::Default, 0)),
            None => Err(format!(
                "no profile for service class `{class}`: store one with `smart profiles put {class} FILE` (or give the nodes an [admission] default_profile)"
            )),
        }
    }

    /// The admission profile of `spec` (registered in `admission` on first use) and its
    /// source.
    pub(crate) fn profile_of(
        &mut self,
        admission: &mut AnyEngine,
        spec: &ServiceSpec,
    ) -> Result<(ProfileId, ProfileSource), String> {
        let (class_profile, source, version) = self.class_profile(&spec.class)?;
        let key = ScaleKey {
            class: spec.class.clone(),
            source,
            version,
            bitrate_bps: spec.per_client_bps,
            duration_ms: spec.duration_ms,
        };
        if let Some(id) = self.scaled.get(&key) {
            return Ok((*id, source));
        }
        let scaled = match spec.per_client_bps {
            Some(b) => scale::for_video(&class_profile, b, spec.duration_ms),
            None => class_profile,
        };
        let id = self.register(admission, scaled)?;
        self.scaled.insert(key, id);
        Ok((id, source))
    }

    /// Registers an admission profile.
    pub(crate) fn register(
        &mut self,
        admission: &mut AnyEngine,
        p: ServiceProfile,
    ) -> Result<ProfileId, String> {
        let id = admission.register_profile(&p).map_err(|e| e.to_string())?;
        self.by_id.insert(id, Arc::new(p));
        Ok(id)
    }

    /// What a service of admission profile `profile` with `clients` clients reserves.
    pub(crate) fn reservation_of(&self, profile: ProfileId, clients: usize) -> Reservation {
        match self.by_id.get(&profile) {
            Some(p) => scale::reservation_of(p, clients, self.reserve_quantile),
            None => Reservation::default(),
        }
    }

    /// Stores a class profile (an operator's, a profiling job's, or a refinement); the
    /// caller announces it.
    pub(crate) fn store(
        &mut self,
        class: &str,
        profile: ServiceProfile,
        source: ProfileSource,
    ) -> Result<Stored, ApiError> {
        validate(&profile).map_err(|reason| ApiError::BadRequest {
            reason: format!("profile for `{class}`: {reason}"),
        })?;
        let version = self.classes.get(class).map_or(1, |c| c.version + 1);
        if source != ProfileSource::Refined {
            // A new measurement restarts refinement from it.
            self.refiners.remove(class);
        }
        self.classes.insert(
            class.to_string(),
            ClassProfile {
                class: class.to_string(),
                source,
                version,
                profile,
            },
        );
        tracing::info!(%class, ?source, version, "class profile stored");
        Ok(Stored {
            class: class.to_string(),
            source,
            version,
        })
    }

    /// One round of samples of running instances (`(class, bitrate, duration, reading)`)
    /// into their classes' refinement windows; returns the class profiles refined (and
    /// stored), in the order their classes were first sampled.
    pub(crate) fn refine_round(
        &mut self,
        samples: Vec<(String, Option<u64>, Option<u64>, UsageReading)>,
    ) -> Vec<Stored> {
        let cfg = self.refine;
        let mut touched = Vec::new();
        for (class, bitrate, duration, reading) in samples {
            let Some(cp) = self.classes.get(&class) else {
                // Classes on the default profile are not refined: the default is shared.
                continue;
            };
            let reference = cp.profile.video;
            let video = match (bitrate, reference) {
                (Some(b), Some(r)) => Some(VideoRef {
                    bitrate_bps: b,
                    duration_ms: duration.unwrap_or(r.duration_ms),
                    window_fraction: r.window_fraction,
                }),
                _ => None,
            };
            let reading = normalise(reading, video, reference);
            let refiner = self
                .refiners
                .entry(class.clone())
                .or_insert_with(|| ProfileRefiner::new(cp.profile.clone(), cfg));
            refiner.push(&reading);
            if !touched.contains(&class) {
                touched.push(class);
            }
        }
        let mut refined = Vec::new();
        for class in touched {
            let Some(r) = self.refiners.get_mut(&class) else {
                continue;
            };
            if r.changed() {
                let p = r.refined();
                if let Ok(stored) = self.store(&class, p, ProfileSource::Refined) {
                    refined.push(stored);
                }
            }
        }
        refined
    }

    /// The profile of a migration's copy hold: `rate` bits/s of network and a little CPU
    /// for as long as the copy runs (registered in `admission` once).
    pub(crate) fn copy_hold(&mut self, admission: &mut AnyEngine, rate: u64) -> Option<ProfileId> {
        if let Some(id) = self.copy_hold {
            return Some(id);
        }
        let n = self.grid.max(2);
        let p = ServiceProfile {
            version: PROFILE_FORMAT_VERSION,
            service: "migration-copy".into(),
            interval_ms: 1000,
            base: smart_proto::profile::Series {
                cpu_cores: vec![COPY_CPU_CORES; n],
                net_bps: vec![rate as f64; n],
                mem_bytes: vec![0; n],
            },
            per_client: None,
            working_set_bytes: 0,
            video: None,
        };
        let id = self.register(admission, p).ok()?;
        self.copy_hold = Some(id);
        Some(id)
    }
}

/// Most intervals in a stored profile's series (5.5 hours at 1 s).
pub(super) const MAX_PROFILE_INTERVALS: usize = 20_000;

/// Checks a profile before it is stored: a hostile or broken one is refused with a reason.
pub(crate) fn validate(p: &ServiceProfile) -> Result<(), String> {
    if p.version != PROFILE_FORMAT_VERSION {
        return Err(format!(
            "profile format version {} is not supported (this build reads {PROFILE_FORMAT_VERSION})",
            p.version
        ));
    }
    let series_ok = |s: &smart_proto::profile::Series| {
        !s.is_empty()
            && s.cpu_cores.iter().all(|x| x.is_finite() && *x >= 0.0)
            && s.net_bps.iter().all(|x| x.is_finite() && *x >= 0.0)
    };
    if !series_ok(&p.base) {
        return Err("the base series is empty or has negative or non-finite values".into());
    }
    if p.per_client.as_ref().is_some_and(|pc| !series_ok(pc)) {
        return Err("the per-client series is empty or has negative or non-finite values".into());
    }
    // Profiles travel in the replica and in node frames (1 MiB): bounded here.
    if p.base.len() > MAX_PROFILE_INTERVALS
        || p.per_client
            .as_ref()
            .is_some_and(|pc| pc.len() > MAX_PROFILE_INTERVALS)
    {
        return Err(format!(
            "more than {MAX_PROFILE_INTERVALS} intervals (profile at a coarser interval)"
        ));
    }
    if let Some(v) = p.video
        && (v.bitrate_bps == 0 || !(0.0..=1.0).contains(&v.window_fraction))
    {
        return Err("the reference video needs a bitrate and a window fraction in [0, 1]".into());
    }
    Ok(())
}

/// CPU a migration's copy costs on each side, cores.
const COPY_CPU_CORES: f64 = 0.05;

/// A sample of an instance serving `video`, as if it served the class's `reference` video
/// (the refiner compares like with like): network scaled by the bitrates' ratio, memory
/// less the difference of the two caches.
fn normalise(
    mut r: UsageReading,
    video: Option<VideoRef>,
    reference: Option<VideoRef>,
) -> UsageReading {
    if let (Some(v), Some(reference)) = (video, reference)
        && v.bitrate_bps > 0
    {
        let k = reference.bitrate_bps as f64 / v.bitrate_bps as f64;
        r.net_bps = r.net_bps.map(|n| n * k);
        r.mem_bytes = r
            .mem_bytes
            .saturating_sub(v.cache_bytes())
            .saturating_add(reference.cache_bytes());
    }
    r
}

#[cfg(test)]
mod tests {
    use smart_admission::EngineConfig;
    use smart_proto::profile::Series;

    use super::*;

    fn flat(cpu: f64, mem: u64) -> ServiceProfile {
        ServiceProfile {
            version: PROFILE_FORMAT_VERSION,
            service: "t".into(),
            interval_ms: 1000,
            base: Series {
                cpu_cores: vec![cpu; 8],
                net_bps: vec![1e6; 8],
                mem_bytes: vec![mem; 8],
            },
            per_client: None,
            working_set_bytes: mem,
            video: None,
        }
    }

    fn spec(class: &str) -> ServiceSpec {
        ServiceSpec {
            name: "s".into(),
            class: class.into(),
            command: vec!["t".into()],
            env: vec![],
            per_client_bps: None,
            duration_ms: None,
        }
    }

    fn setup(default: Option<ServiceProfile>) -> (Profiles, AnyEngine) {
        let settings = AdmissionSettings {
            default_profile: default,
            ..AdmissionSettings::default()
        };
        let admission = AnyEngine::new(
            settings.estimator,
            EngineConfig {
                grid: settings.grid,
                ..EngineConfig::default()
            },
        )
        .unwrap();
        (Profiles::new(&Replica::default(), &settings), admission)
    }

    #[test]
    fn an_admission_profile_is_registered_once_per_class_version() {
        let (mut p, mut a) = setup(Some(flat(0.1, 1_000_000)));
        let (id, source) = p.profile_of(&mut a, &spec("x")).unwrap();
        assert_eq!(source, ProfileSource::Default);
        assert_eq!(p.profile_of(&mut a, &spec("x")).unwrap().0, id);
        // A stored profile is a new version: a new admission profile, at its size.
        let stored = p
            .store("x", flat(0.7, 100_000_000), ProfileSource::Measured)
            .unwrap();
        assert_eq!(
            (stored.version, stored.source),
            (1, ProfileSource::Measured)
        );
        let (measured, source) = p.profile_of(&mut a, &spec("x")).unwrap();
        assert_ne!(measured, id);
        assert_eq!(source, ProfileSource::Measured);
        let r = p.reservation_of(measured, 0);
        assert_eq!((r.cpu_cores, r.mem_bytes), (0.7, 100_000_000));
        assert_eq!(p.class("x").map(|c| c.version), Some(1));
        assert_eq!(
            p.store("x", flat(0.8, 1), ProfileSource::Measured)
                .unwrap()
                .version,
            2
        );
    }

    #[test]
    fn without_a_default_a_class_without_a_profile_is_refused_by_name() {
        let (mut p, mut a) = setup(None);
        let e = p.profile_of(&mut a, &spec("transcoder")).unwrap_err();
        assert!(
            e.starts_with("no profile for service class `transcoder`"),
            "{e}"
        );
        // An unknown admission profile reserves nothing.
        assert_eq!(p.reservation_of(ProfileId(999), 3), Reservation::default());
    }

    #[test]
    fn broken_profiles_are_refused_and_replicated_ones_checked() {
        let (mut p, _) = setup(None);
        let mut bad = flat(0.1, 1);
        bad.base.net_bps[0] = -1.0;
        assert!(matches!(
            p.store("x", bad.clone(), ProfileSource::Measured),
            Err(ApiError::BadRequest { .. })
        ));
        assert_eq!(p.classes().count(), 0);
        let replica = Replica {
            profiles: vec![
                ClassProfile {
                    class: "bad".into(),
                    source: ProfileSource::Measured,
                    version: 1,
                    profile: bad,
                },
                ClassProfile {
                    class: "good".into(),
                    source: ProfileSource::Refined,
                    version: 4,
                    profile: flat(0.1, 1),
                },
            ],
            ..Replica::default()
        };
        let p = Profiles::new(&replica, &AdmissionSettings::default());
        assert_eq!(
            p.classes().map(|c| c.class.as_str()).collect::<Vec<_>>(),
            vec!["good"]
        );
    }

    #[test]
    fn limits_add_the_documented_headroom_and_the_copy_hold_is_registered_once() {
        let r = Reservation {
            cpu_cores: 0.01,
            net_bps: 0.0,
            mem_bytes: 100,
        };
        assert_eq!(
            AdmissionSettings::default().limits_of(&r),
            (Some(MIN_CPU_LIMIT), Some(150 + MEM_LIMIT_SLACK))
        );
        let (mut p, mut a) = setup(None);
        let id = p.copy_hold(&mut a, 1_000).unwrap();
        assert_eq!(p.copy_hold(&mut a, 1_000), Some(id));
        assert_eq!(p.reservation_of(id, 0).net_bps, 1_000.0);
    }
}
