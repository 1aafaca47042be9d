//! The Control's [`AdmissionSettings`] from the node's `[admission]` section: the default
//! profile is read and checked here, so a broken file stops the node at start with the
//! file and the reason, not at the first admission.

use smart_admission::refine::RefineConfig;
use smart_config::{AdmissionConfig, ConfigError};
use smart_proto::profile::ServiceProfile;

use crate::AdmissionSettings;

impl AdmissionSettings {
    /// The settings `[admission]` describes.
    pub fn from_config(cfg: &AdmissionConfig) -> Result<Self, ConfigError> {
        let default_profile = match &cfg.default_profile {
            None => None,
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.clone(),
                    source,
                })?;
                let p = ServiceProfile::from_json(&text).map_err(|e| ConfigError::Invalid {
                    path: path.clone(),
                    key: "admission.default_profile",
                    reason: e.to_string(),
                })?;
                Some(p)
            }
        };
        Ok(Self::from_parts(cfg, default_profile))
    }

    /// The settings `[admission]` describes, with its default profile already read.
    pub(crate) fn from_parts(
        cfg: &AdmissionConfig,
        default_profile: Option<ServiceProfile>,
    ) -> Self {
        Self {
            estimator: cfg.estimator,
            confidence: cfg.confidence,
            vr: cfg.vr,
            policy: cfg.policy,
            grid: cfg.grid,
            reserve_quantile: cfg.reserve_quantile,
            cpu_headroom: cfg.cpu_headroom,
            mem_headroom: cfg.mem_headroom,
            default_profile,
            idle_stop_after: (!cfg.idle_stop_after.is_zero()).then_some(cfg.idle_stop_after),
            refine: RefineConfig {
                window: cfg.refine_window,
                min_samples: cfg.refine_min_samples,
                change_ratio: cfg.refine_change,
            },
            copy_rate_bps: (cfg.copy_rate_bps > 0).then_some(cfg.copy_rate_bps),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A broken default profile stops the node at start, naming the key.
    #[test]
    fn a_broken_default_profile_is_refused_with_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.json");
        std::fs::write(&path, "{not json").unwrap();
        let cfg = AdmissionConfig {
            default_profile: Some(path),
            ..AdmissionConfig::default()
        };
        match AdmissionSettings::from_config(&cfg) {
            Err(ConfigError::Invalid { key, .. }) => assert_eq!(key, "admission.default_profile"),
            other => panic!("expected an invalid-profile error, got {other:?}"),
        }
    }
}
