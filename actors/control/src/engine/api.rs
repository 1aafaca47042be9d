//! The message API as the Control answers it: admissions (services and the Smart-GloVE
//! client rule), releases, locations, stops, drains and profiles. A request that needs a
//! running instance waits for it in the service table and is answered when the instance
//! runs (or the service is lost).

use std::time::Instant;

use smart_admission::{ClientId, Evicted};
use smart_proto::NodeId;
use smart_proto::ServiceName;
use smart_proto::api::{ApiError, Event, Placement, Request, Response, ServiceSpec, ServiceStatus};
use smart_proto::profile::ProfileSource;

use super::moves::Why;
use super::{ApiId, ControlEngine, node_spec};

impl ControlEngine {
    pub(crate) fn api(&mut self, id: ApiId, req: Request, now: Instant) {
        let resp = match req {
            // Answered by the node asked (`Nodes`: by the Control's node, from `status()`).
            Request::Status | Request::Subscribe | Request::Version | Request::Nodes => {
                Response::Error(ApiError::BadRequest {
                    reason: "answered by the node runtime, not the Control engine".into(),
                })
            }
            Request::AdmitService(spec) => match self.admit_service(spec, now) {
                Ok(name) => match self.placement(&name) {
                    Some(p) => Response::Placed(p),
                    None => return self.wait_for(&name, id, None),
                },
                Err(e) => Response::Error(e),
            },
            Request::AdmitClient { service, spec, key } => {
                // A repeat of a keyed admission (a retry, a forward after a timeout): the
                // client the first one admitted, answered as the first would have been.
                if let Some(k) = key
                    && let Some(client) = self.table.get(&service).and_then(|s| s.client_of_key(k))
                {
                    return match self.placement(&service) {
                        Some(p) => self.reply(
                            id,
                            Response::Placed(Placement {
                                client: Some(client.0),
                                ..p
                            }),
                        ),
                        None => self.wait_for(&service, id, Some(client)),
                    };
                }
                if !self.table.contains(&service) {
                    match spec {
                        // The first viewer of a video: admit its service, then the client,
                        // in one request.
                        Some(spec) if spec.name == service => {
                            if let Err(e) = self.admit_service(spec, now) {
                                return self.reply(id, Response::Error(e));
                            }
                        }
                        Some(_) => {
                            return self.reply(
                                id,
                                Response::Error(ApiError::BadRequest {
                                    reason: "spec.name differs from the service".into(),
                                }),
                            );
                        }
                        None => {
                            return self.reply(
                                id,
                                Response::Error(ApiError::NotFound {
                                    what: format!("service {service}"),
                                }),
                            );
                        }
                    }
                }
                match self.admit_client(&service, key, now) {
                    Err(e) => Response::Error(e),
                    Ok(client) => match self.placement(&service) {
                        Some(p) => Response::Placed(Placement {
                            client: Some(client.0),
                            ..p
                        }),
                        None => return self.wait_for(&service, id, Some(client)),
                    },
                }
            }
            Request::ReleaseClient { service, client } => match self.table.get_mut(&service) {
                None => Response::Error(ApiError::NotFound {
                    what: format!("service {service}"),
                }),
                Some(s) => {
                    let gone = s.release_client(client);
                    match gone {
                        Some(c) => {
                            let _ = self.admission.release_client(c);
                            Response::Ok
                        }
                        None => Response::Error(ApiError::NotFound {
                            what: match client {
                                Some(c) => format!("client {c} of {service}"),
                                None => format!("a client of {service}"),
                            },
                        }),
                    }
                }
            },
            Request::StopService { service } => {
                if self.stop_service(&service, "stopped by an operator".into()) {
                    Response::Ok
                } else {
                    Response::Error(ApiError::NotFound {
                        what: format!("service {service}"),
                    })
                }
            }
            Request::Locate { service } => match self.placement(&service) {
                Some(p) => Response::Placed(p),
                // Starting or restarting: answered once it runs.
                None if self.table.contains(&service) => {
                    return self.wait_for(&service, id, None);
                }
                None => Response::Error(ApiError::NotFound {
                    what: format!("service {service}"),
                }),
            },
            Request::Services => Response::Services(
                self.table
                    .values()
                    .filter_map(|s| {
                        let info = s.info()?;
                        Some(ServiceStatus {
                            placement: s.placement()?,
                            instance: info.instance.clone(),
                            clients: s.client_count() as u64,
                            reservation: self
                                .profiles
                                .reservation_of(s.profile(), s.client_count()),
                            usage: self
                                .registry
                                .get(&s.node())
                                .and_then(|r| r.instance(&info.instance))
                                .and_then(|i| i.usage.clone()),
                            profile: s.source(),
                            limits_enforced: info.limits_enforced,
                        })
                    })
                    .collect(),
            ),
            Request::PutProfile { class, profile } => {
                match self
                    .profiles
                    .store(&class, *profile, ProfileSource::Measured)
                {
                    Ok(stored) => {
                        self.profile_stored(&stored);
                        self.replicate();
                        Response::Ok
                    }
                    Err(e) => Response::Error(e),
                }
            }
            Request::Profiles => {
                Response::Profiles(self.profiles.classes().map(|c| c.summary()).collect())
            }
            Request::Profile { class } => match self.profiles.class(&class) {
                Some(c) => Response::Profile(Box::new(c.clone())),
                None => Response::Error(ApiError::NotFound {
                    what: format!("a profile for class {class}"),
                }),
            },
            Request::Undrain { node } => match self.undrain(node) {
                Ok(()) => Response::Ok,
                Err(e) => Response::Error(e),
            },
            Request::Drain { node } => {
                if !self.nodes.contains_key(&node) {
                    Response::Error(ApiError::NotFound {
                        what: format!("node {node}"),
                    })
                } else {
                    match self.drain_node(node, Why::Drain) {
                        Ok(()) => Response::Ok,
                        Err(reason) => Response::Error(ApiError::Rejected { reason }),
                    }
                }
            }
        };
        self.reply(id, resp);
    }

    fn wait_for(&mut self, service: &str, id: ApiId, client: Option<ClientId>) {
        if let Some(s) = self.table.get_mut(service) {
            s.wait(id, client);
        }
    }

    /// A drained node comes back into placement (with its last reported capacity).
    pub(crate) fn undrain(&mut self, node: NodeId) -> Result<(), ApiError> {
        if !self.drained.contains(&node) {
            return Err(ApiError::BadRequest {
                reason: format!("{node} is not drained"),
            });
        }
        let spec = self
            .registry
            .get(&node)
            .map(|r| node_spec(r, &self.tuning.admission))
            .ok_or_else(|| ApiError::NotFound {
                what: format!("a report from {node} (is it alive?)"),
            })?;
        self.admission
            .add_node(node, spec)
            .map_err(|e| ApiError::Internal {
                reason: e.to_string(),
            })?;
        self.drained.remove(&node);
        tracing::info!(%node, "node back in placement");
        self.publish(Event::Notice {
            service: String::new(),
            node,
            reason: "undrained: back in placement".into(),
        });
        Ok(())
    }

    /// Admits and starts a new service (or finds the one of that name).
    fn admit_service(&mut self, spec: ServiceSpec, now: Instant) -> Result<ServiceName, ApiError> {
        if self.table.contains(&spec.name) {
            return Ok(spec.name);
        }
        if spec.command.is_empty() {
            return Err(ApiError::BadRequest {
                reason: "service spec has an empty command".into(),
            });
        }
        let (profile, source) = self
            .profiles
            .profile_of(&mut self.admission, &spec)
            .map_err(|reason| ApiError::Rejected { reason })?;
        let d = self
            .admission
            .admit_service(profile, 0)
            .map_err(|r| ApiError::Rejected {
                reason: r.to_string(),
            })?;
        for m in &d.migrations {
            self.migrate(m.service, m.from, m.to, Why::Ms);
        }
        let admitted = Evicted {
            service: d.service,
            profile,
            clients: Vec::new(),
        };
        let name = self.insert_service(spec, admitted, source, d.node, 0, now);
        self.start(&name, None, Why::Ms);
        Ok(name)
    }

    /// Admits one client of a known service (Smart-GloVE rule), remembering `key` (when
    /// given) as the one that admitted it.
    fn admit_client(
        &mut self,
        service: &str,
        key: Option<u64>,
        now: Instant,
    ) -> Result<ClientId, ApiError> {
        let sid = self.table[service].sid();
        let d = self
            .admission
            .admit_client(sid)
            .map_err(|r| ApiError::Rejected {
                reason: r.to_string(),
            })?;
        for m in &d.migrations {
            self.migrate(m.service, m.from, m.to, Why::Ms);
        }
        let s = self.table.get_mut(service).expect("checked by the caller");
        match key {
            Some(k) => s.add_keyed_client(d.client, k, now),
            None => s.add_client(d.client, now),
        }
        self.qos.admitted(service, now);
        Ok(d.client)
    }
}
