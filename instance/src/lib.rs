//! # smart-instance
//!
//! Service instances under isolation (process groups, cgroup v1/v2), per-interval resource
//! sampling, and the Agent99 profiler behind `smart profile`.
