//! The Control's [`AdmissionSettings`] from the node's `[admission]` section: the default
//! profile is read and checked here, so a broken file stops the node at start with the
//! file and the reason, not at the first admission.

use smart_admission::refine::RefineConfig;
use smart_config::{AdmissionConfig, ConfigError};

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
                let p = smart_proto::profile::ServiceProfile::from_json(&text).map_err(|e| {
                    ConfigError::Invalid {
                        path: path.clone(),
                        key: "admission.default_profile",
                        reason: e.to_string(),
                    }
                })?;
                Some(p)
            }
        };
        Ok(Self {
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
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The config's documented defaults are the engine's defaults: one set of numbers.
    #[test]
    fn config_defaults_are_the_engine_defaults() {
        let from_config = AdmissionSettings::from_config(&AdmissionConfig::default()).unwrap();
        let engine = AdmissionSettings::default();
        assert_eq!(from_config, engine);
    }
}
