//! # smart-supervision
//!
//! The cluster runtime that every SMART node runs underneath its actors: authenticated
//! heartbeats, failure detection, Control election with epochs and fencing, restart policy,
//! and the framed TCP transport between nodes.
