//! Resolves a location's upstream Service reference to ready endpoints, from
//! EndpointSlices (`discovery.k8s.io/v1`).
//!
//! An [`UpstreamSpec`](moongate_route::crd::UpstreamSpec) names a Service and one of the
//! Service's *port numbers*. EndpointSlices do not carry Service port numbers: each
//! slice port carries the Service port's *name* and the *target* port number
//! (which may differ between slices when the Service's `targetPort` is a named
//! container port). So resolving goes Service port number → Service port name
//! ([`port_name`], needs the Service object) → the slices' ports of that name.
//! When the caller does not know the Service, it passes `None` and the index uses
//! the slices' port if they have exactly one.
//!
//! Invariants:
//! - The index holds at most one entry per (namespace, slice name); [`EndpointIndex::apply`]
//!   replaces it, also when the slice's `kubernetes.io/service-name` label changed
//!   or was removed (a slice without the label belongs to no service).
//! - An endpoint is used when `conditions.ready` is not `Some(false)` (absent counts
//!   as ready, as the API documents). Terminating endpoints report ready=false.
//! - Of an endpoint's addresses only the first is used: the API declares them
//!   fungible, and using them all would give one pod extra weight.
//! - [`Resolution::Endpoints`] is never empty; it is sorted and deduplicated (an
//!   endpoint may briefly sit in two slices while it moves between them), IPv6
//!   addresses bracketed (`[::1]:80`). Dual-stack Services give both families.
//! - [`Resolution::NoSuchService`] means no slice is labelled with the service, not
//!   that the Service does not exist: the caller checks the Service itself.

use std::collections::{BTreeSet, HashMap};
use std::net::Ipv6Addr;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

/// The label an EndpointSlice names its Service with.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// What an upstream reference resolves to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resolution {
    /// Ready `ip:port` endpoints, sorted, deduplicated, never empty.
    Endpoints(Vec<String>),
    /// No EndpointSlice belongs to the service (it may not exist, or its slices
    /// have not been created yet).
    NoSuchService,
    /// The service has slices but no ready endpoint on that port: no pods, none
    /// ready, no slice port of that name, or `port_name` was `None` while the
    /// slices carry several ports (ambiguous).
    NoReadyEndpoints,
}

/// The name of `service`'s TCP port numbered `port`, as EndpointSlices name it:
/// `Some("")` for an unnamed port (a Service may leave its only port unnamed),
/// `None` when the Service has no such TCP port. The caller should report that
/// `None` as a bad reference rather than pass it on to [`EndpointIndex::resolve`],
/// which would then fall back to the slices' only port.
pub fn port_name(service: &Service, port: u16) -> Option<String> {
    service
        .spec
        .as_ref()?
        .ports
        .as_ref()?
        .iter()
        .find(|p| p.port == i32::from(port) && p.protocol.as_deref().is_none_or(|proto| proto == "TCP"))
        .map(|p| p.name.clone().unwrap_or_default())
}

/// One slice, reduced to what resolving needs.
#[derive(Clone, Debug, Default)]
struct Slice {
    /// (port name, target port) of the slice's TCP ports.
    ports: Vec<(String, u16)>,
    /// The first address of each ready endpoint.
    ready: Vec<String>,
}

impl Slice {
    fn from(slice: &EndpointSlice) -> Slice {
        let ports = slice
            .ports
            .iter()
            .flatten()
            .filter(|p| p.protocol.as_deref().is_none_or(|proto| proto == "TCP"))
            .filter_map(|p| {
                let port = u16::try_from(p.port?).ok().filter(|&n| n != 0)?;
                Some((p.name.clone().unwrap_or_default(), port))
            })
            .collect();
        let ready = slice
            .endpoints
            .iter()
            .flatten()
            .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) != Some(false))
            .filter_map(|e| e.addresses.first().filter(|a| !a.is_empty()).cloned())
            .collect();
        Slice { ports, ready }
    }
}

type Key = (String, String);

/// EndpointSlices indexed by (namespace, service name), from the
/// `kubernetes.io/service-name` label.
#[derive(Clone, Debug, Default)]
pub struct EndpointIndex {
    /// (namespace, service) -> slice name -> slice.
    services: HashMap<Key, HashMap<String, Slice>>,
    /// (namespace, slice name) -> service, to find a slice again when its label changes.
    owners: HashMap<Key, String>,
}

impl EndpointIndex {
    /// Inserts or replaces `slice` (by namespace and name).
    pub fn apply(&mut self, slice: &EndpointSlice) {
        let Some((namespace, name)) = slice_key(slice) else {
            return;
        };
        let service = slice
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME_LABEL))
            .filter(|s| !s.is_empty());
        self.remove(&namespace, &name);
        if let Some(service) = service {
            self.services
                .entry((namespace.clone(), service.clone()))
                .or_default()
                .insert(name.clone(), Slice::from(slice));
            self.owners.insert((namespace, name), service.clone());
        }
    }

    /// Removes `slice` (by namespace and name).
    pub fn delete(&mut self, slice: &EndpointSlice) {
        if let Some((namespace, name)) = slice_key(slice) {
            self.remove(&namespace, &name);
        }
    }

    /// Forgets the slices of `namespace`, or all slices with `None`; e.g. before
    /// a watcher's re-list of that scope.
    pub fn clear(&mut self, namespace: Option<&str>) {
        match namespace {
            None => {
                self.services.clear();
                self.owners.clear();
            }
            Some(ns) => {
                self.services.retain(|(n, _), _| n != ns);
                self.owners.retain(|(n, _), _| n != ns);
            }
        }
    }

    fn remove(&mut self, namespace: &str, name: &str) {
        let Some(service) = self.owners.remove(&(namespace.to_string(), name.to_string())) else {
            return;
        };
        let key = (namespace.to_string(), service);
        if let Some(slices) = self.services.get_mut(&key) {
            slices.remove(name);
            if slices.is_empty() {
                self.services.remove(&key);
            }
        }
    }

    /// Ready endpoints of `namespace/service` on the Service port named
    /// `port_name` (from [`port_name`]; `Some("")` for an unnamed port). With
    /// `None`, the slices' port is used if they carry exactly one port name.
    pub fn resolve(&self, namespace: &str, service: &str, port_name: Option<&str>) -> Resolution {
        let Some(slices) = self.services.get(&(namespace.to_string(), service.to_string())) else {
            return Resolution::NoSuchService;
        };
        let wanted = match port_name {
            Some(name) => name,
            None => {
                let names: BTreeSet<&str> = slices
                    .values()
                    .flat_map(|s| s.ports.iter().map(|(n, _)| n.as_str()))
                    .collect();
                match names.first() {
                    Some(&name) if names.len() == 1 => name,
                    // No port at all, or several and we cannot tell which.
                    _ => return Resolution::NoReadyEndpoints,
                }
            }
        };
        let mut endpoints: Vec<String> = slices
            .values()
            .filter_map(|s| Some((s, s.ports.iter().find(|(n, _)| n == wanted)?.1)))
            .flat_map(|(s, port)| s.ready.iter().map(move |addr| join(addr, port)))
            .collect();
        if endpoints.is_empty() {
            return Resolution::NoReadyEndpoints;
        }
        endpoints.sort_unstable();
        endpoints.dedup();
        Resolution::Endpoints(endpoints)
    }

    /// How many slices the index holds.
    pub fn len(&self) -> usize {
        self.owners.len()
    }

    pub fn is_empty(&self) -> bool {
        self.owners.is_empty()
    }
}

fn slice_key(slice: &EndpointSlice) -> Option<Key> {
    let name = slice.metadata.name.clone()?;
    Some((slice.metadata.namespace.clone().unwrap_or_default(), name))
}

/// `ip:port`, or `[ip]:port` for IPv6.
fn join(addr: &str, port: u16) -> String {
    if addr.parse::<Ipv6Addr>().is_ok() {
        format!("[{addr}]:{port}")
    } else {
        format!("{addr}:{port}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{ServicePort, ServiceSpec};
    use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn ep(addr: &str, ready: Option<bool>) -> Endpoint {
        Endpoint {
            addresses: vec![addr.to_string()],
            conditions: Some(EndpointConditions {
                ready,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn port(name: Option<&str>, number: i32) -> EndpointPort {
        EndpointPort {
            name: name.map(str::to_string),
            port: Some(number),
            protocol: Some("TCP".into()),
            ..Default::default()
        }
    }

    fn slice(
        ns: &str,
        name: &str,
        service: Option<&str>,
        ports: Vec<EndpointPort>,
        endpoints: Vec<Endpoint>,
    ) -> EndpointSlice {
        EndpointSlice {
            address_type: "IPv4".into(),
            metadata: ObjectMeta {
                namespace: Some(ns.into()),
                name: Some(name.into()),
                labels: service.map(|s| [(SERVICE_NAME_LABEL.to_string(), s.to_string())].into()),
                ..Default::default()
            },
            ports: Some(ports),
            endpoints: Some(endpoints),
        }
    }

    fn endpoints(list: &[&str]) -> Resolution {
        Resolution::Endpoints(list.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn unknown_service_and_namespace_scoping() {
        let mut idx = EndpointIndex::default();
        idx.apply(&slice(
            "a",
            "web-1",
            Some("web"),
            vec![port(Some(""), 80)],
            vec![ep("10.0.0.1", None)],
        ));
        assert_eq!(idx.resolve("a", "web", Some("")), endpoints(&["10.0.0.1:80"]));
        assert_eq!(idx.resolve("b", "web", Some("")), Resolution::NoSuchService);
        assert_eq!(idx.resolve("a", "other", None), Resolution::NoSuchService);
    }

    #[test]
    fn only_ready_endpoints_sorted_and_deduplicated_across_slices() {
        let mut idx = EndpointIndex::default();
        idx.apply(&slice(
            "ns",
            "web-1",
            Some("web"),
            vec![port(Some("http"), 8080)],
            vec![
                ep("10.0.0.9", Some(true)),
                ep("10.0.0.2", None),
                ep("10.0.0.3", Some(false)),
            ],
        ));
        // 10.0.0.2 also appears in a second slice (moving between slices).
        idx.apply(&slice(
            "ns",
            "web-2",
            Some("web"),
            vec![port(Some("http"), 8080)],
            vec![ep("10.0.0.2", Some(true)), ep("10.0.0.10", Some(true))],
        ));
        assert_eq!(
            idx.resolve("ns", "web", Some("http")),
            endpoints(&["10.0.0.10:8080", "10.0.0.2:8080", "10.0.0.9:8080"])
        );
    }

    #[test]
    fn target_port_comes_from_each_slice_by_port_name() {
        let mut idx = EndpointIndex::default();
        // A named targetPort resolving to different numbers in different pods.
        idx.apply(&slice(
            "ns",
            "s1",
            Some("svc"),
            vec![port(Some("http"), 8080), port(Some("metrics"), 9090)],
            vec![ep("10.0.0.1", None)],
        ));
        idx.apply(&slice(
            "ns",
            "s2",
            Some("svc"),
            vec![port(Some("metrics"), 9191), port(Some("http"), 8181)],
            vec![ep("10.0.0.2", None)],
        ));
        assert_eq!(
            idx.resolve("ns", "svc", Some("http")),
            endpoints(&["10.0.0.1:8080", "10.0.0.2:8181"])
        );
        assert_eq!(
            idx.resolve("ns", "svc", Some("metrics")),
            endpoints(&["10.0.0.1:9090", "10.0.0.2:9191"])
        );
        // Several ports and no name: ambiguous. A name the slices lack: none.
        assert_eq!(idx.resolve("ns", "svc", None), Resolution::NoReadyEndpoints);
        assert_eq!(idx.resolve("ns", "svc", Some("grpc")), Resolution::NoReadyEndpoints);
    }

    #[test]
    fn single_port_used_without_a_name() {
        let mut idx = EndpointIndex::default();
        idx.apply(&slice(
            "ns",
            "s1",
            Some("svc"),
            vec![port(None, 3000)],
            vec![ep("10.0.0.1", None)],
        ));
        idx.apply(&slice(
            "ns",
            "s2",
            Some("svc"),
            vec![port(Some(""), 3001)],
            vec![ep("10.0.0.2", None)],
        ));
        // An absent name and "" are the same unnamed port.
        assert_eq!(
            idx.resolve("ns", "svc", None),
            endpoints(&["10.0.0.1:3000", "10.0.0.2:3001"])
        );
        assert_eq!(
            idx.resolve("ns", "svc", Some("")),
            endpoints(&["10.0.0.1:3000", "10.0.0.2:3001"])
        );
    }

    #[test]
    fn ipv6_is_bracketed_and_only_first_address_used() {
        let mut idx = EndpointIndex::default();
        let mut s = slice(
            "ns",
            "v6",
            Some("svc"),
            vec![port(Some("http"), 80)],
            vec![ep("fd00::1", None)],
        );
        s.address_type = "IPv6".into();
        s.endpoints.as_mut().unwrap()[0].addresses.push("fd00::2".into());
        idx.apply(&s);
        assert_eq!(idx.resolve("ns", "svc", Some("http")), endpoints(&["[fd00::1]:80"]));
    }

    #[test]
    fn no_ready_endpoints() {
        let mut idx = EndpointIndex::default();
        // The placeholder slice of a Service without pods: no ports, no endpoints.
        idx.apply(&slice("ns", "empty", Some("svc"), vec![], vec![]));
        assert_eq!(idx.resolve("ns", "svc", Some("http")), Resolution::NoReadyEndpoints);
        assert_eq!(idx.resolve("ns", "svc", None), Resolution::NoReadyEndpoints);
        // Pods exist but none is ready.
        idx.apply(&slice(
            "ns",
            "empty",
            Some("svc"),
            vec![port(Some("http"), 80)],
            vec![ep("10.0.0.1", Some(false))],
        ));
        assert_eq!(idx.resolve("ns", "svc", Some("http")), Resolution::NoReadyEndpoints);
    }

    #[test]
    fn apply_replaces_and_delete_removes() {
        let mut idx = EndpointIndex::default();
        idx.apply(&slice(
            "ns",
            "s1",
            Some("svc"),
            vec![port(Some(""), 80)],
            vec![ep("10.0.0.1", None)],
        ));
        idx.apply(&slice(
            "ns",
            "s1",
            Some("svc"),
            vec![port(Some(""), 80)],
            vec![ep("10.0.0.2", None)],
        ));
        assert_eq!(idx.resolve("ns", "svc", None), endpoints(&["10.0.0.2:80"]));
        assert_eq!(idx.len(), 1);
        idx.delete(&slice("ns", "s1", None, vec![], vec![]));
        assert_eq!(idx.resolve("ns", "svc", None), Resolution::NoSuchService);
        assert!(idx.is_empty());
    }

    #[test]
    fn clear_forgets_one_namespace_or_all() {
        let mut idx = EndpointIndex::default();
        let s = |ns: &str| {
            slice(
                ns,
                "s1",
                Some("svc"),
                vec![port(Some(""), 80)],
                vec![ep("10.0.0.1", None)],
            )
        };
        idx.apply(&s("a"));
        idx.apply(&s("b"));
        idx.clear(Some("a"));
        assert_eq!(idx.resolve("a", "svc", None), Resolution::NoSuchService);
        assert_eq!(idx.resolve("b", "svc", None), endpoints(&["10.0.0.1:80"]));
        assert_eq!(idx.len(), 1);
        // A slice forgotten by clear can come back.
        idx.apply(&s("a"));
        assert_eq!(idx.resolve("a", "svc", None), endpoints(&["10.0.0.1:80"]));
        idx.clear(None);
        assert!(idx.is_empty());
        assert_eq!(idx.resolve("b", "svc", None), Resolution::NoSuchService);
    }

    #[test]
    fn relabelled_slice_moves_between_services() {
        let mut idx = EndpointIndex::default();
        let s = |svc: Option<&str>| slice("ns", "s1", svc, vec![port(Some(""), 80)], vec![ep("10.0.0.1", None)]);
        idx.apply(&s(Some("old")));
        idx.apply(&s(Some("new")));
        assert_eq!(idx.resolve("ns", "old", None), Resolution::NoSuchService);
        assert_eq!(idx.resolve("ns", "new", None), endpoints(&["10.0.0.1:80"]));
        idx.apply(&s(None));
        assert_eq!(idx.resolve("ns", "new", None), Resolution::NoSuchService);
        assert!(idx.is_empty());
    }

    #[test]
    fn udp_ports_are_ignored() {
        let mut idx = EndpointIndex::default();
        let mut udp = port(Some("dns-udp"), 53);
        udp.protocol = Some("UDP".into());
        idx.apply(&slice(
            "ns",
            "dns",
            Some("dns"),
            vec![udp, port(Some("dns-tcp"), 53)],
            vec![ep("10.0.0.1", None)],
        ));
        assert_eq!(idx.resolve("ns", "dns", None), endpoints(&["10.0.0.1:53"]));
    }

    #[test]
    fn port_name_maps_service_port_numbers() {
        let svc = |ports: Vec<ServicePort>| Service {
            spec: Some(ServiceSpec {
                ports: Some(ports),
                ..Default::default()
            }),
            ..Default::default()
        };
        let sp = |name: Option<&str>, port: i32, proto: Option<&str>| ServicePort {
            name: name.map(str::to_string),
            port,
            protocol: proto.map(str::to_string),
            ..Default::default()
        };
        let s = svc(vec![
            sp(Some("dns-udp"), 53, Some("UDP")),
            sp(Some("dns-tcp"), 53, Some("TCP")),
            sp(Some("http"), 80, None),
        ]);
        assert_eq!(port_name(&s, 53).as_deref(), Some("dns-tcp"));
        assert_eq!(port_name(&s, 80).as_deref(), Some("http"));
        assert_eq!(port_name(&s, 8080), None);
        assert_eq!(port_name(&svc(vec![sp(None, 80, None)]), 80).as_deref(), Some(""));
        assert_eq!(port_name(&Service::default(), 80), None);
    }
}
