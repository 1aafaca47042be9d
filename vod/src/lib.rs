//! # smart-vod
//!
//! The Smart-GloVE data plane: MPEG-TS video generator, origin, distributor with a shared
//! block cache and paced streaming, viewers with QoE metrics, and the workload control API.
