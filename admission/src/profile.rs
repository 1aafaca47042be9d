//! Resource profiles: the format is `smart_proto::profile` (profiles cross sockets: an
//! operator stores one in the Control's registry); re-exported here for the engine and the
//! simulator.

pub use smart_proto::profile::*;
