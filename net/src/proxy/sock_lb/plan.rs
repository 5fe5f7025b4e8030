//! Which Service addresses the connect-time program translates, and the map writes that take
//! the maps from what they hold to that, with no IO.
//!
//! A [`ServicePort`] (the nftables renderer's model) goes in the maps when it is TCP, has no
//! ClientIP affinity (the program has no memory of a client) and has endpoints for ClusterIP
//! traffic: `internal` is already the model's choice — ready endpoints, else serving
//! terminating ones, only this node's under `internalTrafficPolicy: Local`. Each of its
//! ClusterIPs becomes a [`Frontend`]. The rest (UDP, SCTP, affinity, no endpoints, NodePorts,
//! external addresses) stays with nftables alone, which is programmed as without the maps.
//!
//! Writes never break a pick in flight (the program reads the count, then a slot): new slots
//! are written before the count grows, the count shrinks before slots go. An endpoint keeps
//! its slot while it stays; a removed one's slot takes an added one, or the last one when the
//! set shrinks, so one change is a few writes whatever the Service's size. Service ids are
//! never reused within a run, so a pick in flight never reads another Service's slot.

use std::collections::{BTreeMap, BTreeSet};

use super::layout::Frontend;
use crate::proxy::model::{Endpoint, Protocol, ServicePort};

/// One map write, in the order given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    PutEndpoint {
        id: u32,
        slot: u32,
        endpoint: Endpoint,
    },
    DeleteEndpoint {
        id: u32,
        slot: u32,
    },
    PutService {
        frontend: Frontend,
        id: u32,
        count: u32,
    },
    DeleteService {
        frontend: Frontend,
    },
}

/// The Service addresses to translate, each with its endpoints.
pub type Desired = BTreeMap<Frontend, BTreeSet<Endpoint>>;

/// What `ports` put in the maps (see the module docs), added to `desired`.
pub fn add_frontends<'a>(desired: &mut Desired, ports: impl IntoIterator<Item = &'a ServicePort>) {
    for port in ports {
        if port.protocol != Protocol::Tcp
            || port.affinity_seconds.is_some()
            || port.internal.is_empty()
        {
            continue;
        }
        for &ip in &port.cluster_ips {
            desired
                .entry(Frontend {
                    ip,
                    port: port.port,
                })
                .or_default()
                .extend(port.internal.iter().copied());
        }
    }
}

/// The frontends `ports` would put in the maps.
pub fn frontends<'a>(ports: impl IntoIterator<Item = &'a ServicePort>) -> Desired {
    let mut desired = Desired::new();
    add_frontends(&mut desired, ports);
    desired
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Slots {
    id: u32,
    endpoints: Vec<Endpoint>,
}

/// What the maps hold (after the writes planned so far).
#[derive(Debug, Clone, Default)]
pub struct Programmed {
    next_id: u32,
    services: BTreeMap<Frontend, Slots>,
}

impl Programmed {
    /// Forgets the maps' contents (they were emptied), keeping ids unique.
    pub fn clear(&mut self) {
        self.services.clear();
    }

    pub fn frontends(&self) -> impl Iterator<Item = Frontend> + '_ {
        self.services.keys().copied()
    }

    /// The writes that make every frontend in `scope` hold what `desired` says (absent:
    /// nothing), as they are planned.
    pub fn plan<'a>(
        &mut self,
        desired: &Desired,
        scope: impl IntoIterator<Item = &'a Frontend>,
    ) -> Vec<Op> {
        let none = BTreeSet::new();
        let mut ops = Vec::new();
        for frontend in scope {
            self.set(*frontend, desired.get(frontend).unwrap_or(&none), &mut ops);
        }
        ops
    }

    /// Every frontend programmed or desired: the scope of a full sync.
    pub fn full_scope(&self, desired: &Desired) -> BTreeSet<Frontend> {
        self.frontends().chain(desired.keys().copied()).collect()
    }

    fn set(&mut self, frontend: Frontend, want: &BTreeSet<Endpoint>, ops: &mut Vec<Op>) {
        let Some(slots) = self.services.get_mut(&frontend) else {
            if want.is_empty() {
                return;
            }
            let id = self.next_id;
            self.next_id = self.next_id.wrapping_add(1);
            let endpoints: Vec<Endpoint> = want.iter().copied().collect();
            for (slot, &endpoint) in (0u32..).zip(&endpoints) {
                ops.push(Op::PutEndpoint { id, slot, endpoint });
            }
            ops.push(Op::PutService {
                frontend,
                id,
                count: len32(&endpoints),
            });
            self.services.insert(frontend, Slots { id, endpoints });
            return;
        };
        let id = slots.id;
        if want.is_empty() {
            ops.push(Op::DeleteService { frontend });
            for slot in 0..len32(&slots.endpoints) {
                ops.push(Op::DeleteEndpoint { id, slot });
            }
            self.services.remove(&frontend);
            return;
        }
        let old = &mut slots.endpoints;
        let old_len = old.len();
        let present: BTreeSet<Endpoint> = old.iter().copied().collect();
        let mut added = want.difference(&present).copied();
        let mut holes = Vec::new();
        for (slot, endpoint) in old.iter_mut().enumerate() {
            if want.contains(endpoint) {
                continue;
            }
            match added.next() {
                Some(new) => {
                    *endpoint = new;
                    ops.push(Op::PutEndpoint {
                        id,
                        slot: slot as u32,
                        endpoint: new,
                    });
                }
                None => holes.push(slot),
            }
        }
        for new in added {
            ops.push(Op::PutEndpoint {
                id,
                slot: len32(old),
                endpoint: new,
            });
            old.push(new);
        }
        let new_len = want.len();
        if old.len() > old_len {
            ops.push(Op::PutService {
                frontend,
                id,
                count: len32(old),
            });
        }
        if holes.is_empty() {
            return;
        }
        // More went than came: lower the count, then move the endpoints that stay from beyond
        // it into the holes below it, then delete the slots beyond it.
        ops.push(Op::PutService {
            frontend,
            id,
            count: new_len as u32,
        });
        let hole_set: BTreeSet<usize> = holes.iter().copied().collect();
        let tail: Vec<usize> = (new_len..old.len())
            .filter(|slot| !hole_set.contains(slot))
            .collect();
        for (&hole, &from) in holes.iter().filter(|&&h| h < new_len).zip(&tail) {
            let endpoint = old[from];
            old[hole] = endpoint;
            ops.push(Op::PutEndpoint {
                id,
                slot: hole as u32,
                endpoint,
            });
        }
        for slot in new_len..old.len() {
            ops.push(Op::DeleteEndpoint {
                id,
                slot: slot as u32,
            });
        }
        old.truncate(new_len);
    }

    /// The endpoints a frontend's slots hold, in slot order (tests and diagnostics).
    pub fn slots(&self, frontend: &Frontend) -> Option<&[Endpoint]> {
        self.services.get(frontend).map(|s| s.endpoints.as_slice())
    }
}

fn len32(v: &[Endpoint]) -> u32 {
    u32::try_from(v.len()).unwrap_or(u32::MAX)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::net::IpAddr;

    use super::*;
    use crate::proxy::model::ServiceName;
    use crate::proxy::ruleset::Family;

    fn ep(last: u8) -> Endpoint {
        Endpoint {
            ip: IpAddr::from([10, 42, 0, last]),
            port: 8080,
        }
    }

    fn fe() -> Frontend {
        Frontend {
            ip: IpAddr::from([10, 43, 0, 10]),
            port: 80,
        }
    }

    fn port(internal: Vec<Endpoint>) -> ServicePort {
        ServicePort {
            service: ServiceName::new("default", "web"),
            family: Family::V4,
            port_name: "http".into(),
            protocol: Protocol::Tcp,
            port: 80,
            cluster_ips: vec![IpAddr::from([10, 43, 0, 10])],
            node_port: Some(30080),
            external_ips: vec![IpAddr::from([192, 0, 2, 1])],
            affinity_seconds: None,
            internal,
            external: vec![ep(9)],
            any_endpoints: true,
            external_local: false,
            local_ips: Vec::new(),
        }
    }

    fn want(eps: &[u8]) -> Desired {
        let mut d = Desired::new();
        d.insert(fe(), eps.iter().map(|&e| ep(e)).collect());
        d
    }

    /// The two maps: services → (id, count), (id, slot) → endpoint.
    type Maps = (
        BTreeMap<Frontend, (u32, u32)>,
        BTreeMap<(u32, u32), Endpoint>,
    );

    /// Replays `ops` on a model of the maps, checking after every write that every count
    /// covers only written slots (a pick in flight finds an endpoint).
    fn replay(maps: &mut Maps, ops: &[Op]) {
        for op in ops {
            match *op {
                Op::PutEndpoint { id, slot, endpoint } => {
                    maps.1.insert((id, slot), endpoint);
                }
                Op::DeleteEndpoint { id, slot } => {
                    maps.1.remove(&(id, slot));
                }
                Op::PutService {
                    frontend,
                    id,
                    count,
                } => {
                    maps.0.insert(frontend, (id, count));
                }
                Op::DeleteService { frontend } => {
                    maps.0.remove(&frontend);
                }
            }
            for &(id, count) in maps.0.values() {
                for slot in 0..count {
                    assert!(
                        maps.1.contains_key(&(id, slot)),
                        "{op:?} left {id}/{slot} empty"
                    );
                }
            }
        }
    }

    fn picks(maps: &Maps) -> BTreeSet<Endpoint> {
        let Some(&(id, count)) = maps.0.get(&fe()) else {
            return BTreeSet::new();
        };
        (0..count).map(|slot| maps.1[&(id, slot)]).collect()
    }

    #[test]
    fn only_tcp_cluster_ips_with_endpoints_and_no_affinity_are_translated() {
        let plain = port(vec![ep(1), ep(2)]);
        assert_eq!(frontends([&plain]), want(&[1, 2]));
        let mut udp = plain.clone();
        udp.protocol = Protocol::Udp;
        let mut sticky = plain.clone();
        sticky.affinity_seconds = Some(10_800);
        // Local policy with no endpoint on this node: the model's `internal` is empty and
        // nftables rejects.
        let local_none = port(Vec::new());
        assert!(frontends([&udp, &sticky, &local_none]).is_empty());
        let mut dual = plain.clone();
        dual.cluster_ips.push(IpAddr::from([10, 43, 0, 11]));
        assert_eq!(frontends([&dual]).len(), 2);
    }

    #[test]
    fn changes_keep_slots_and_never_expose_an_empty_slot() {
        let mut programmed = Programmed::default();
        let mut maps = Default::default();
        let steps: &[&[u8]] = &[
            &[1, 2, 3],
            &[1, 2, 3, 4, 5],
            &[1, 3, 5],    // two holes, nothing added: 5 moves down
            &[1, 3, 5, 6], // grows again
            &[2, 6],       // swaps and shrinks at once
            &[7],
            &[],
            &[8, 9],
        ];
        for step in steps {
            let desired = want(step);
            let scope = programmed.full_scope(&desired);
            let ops = programmed.plan(&desired, &scope);
            replay(&mut maps, &ops);
            let expected: BTreeSet<Endpoint> = step.iter().map(|&e| ep(e)).collect();
            assert_eq!(picks(&maps), expected, "after {step:?}");
            assert_eq!(
                maps.1.len(),
                step.len(),
                "no slot left behind after {step:?}"
            );
        }
    }

    #[test]
    fn one_endpoint_changing_is_one_or_two_writes() {
        let mut programmed = Programmed::default();
        let big: Vec<u8> = (1..=50).collect();
        programmed.plan(&want(&big), &[fe()]);
        let before = programmed.slots(&fe()).unwrap().to_vec();
        // One replaced by another: its slot is rewritten, nothing else.
        let mut swapped = big.clone();
        swapped[10] = 200;
        let ops = programmed.plan(&want(&swapped), &[fe()]);
        assert_eq!(ops.len(), 1);
        // One goes: the count drops, the last moves into its slot, the last slot goes.
        let ops = programmed.plan(&want(&swapped[1..]), &[fe()]);
        assert_eq!(ops.len(), 3, "{ops:?}");
        assert_eq!(programmed.slots(&fe()).unwrap()[0], before[49]);
        // Unchanged: nothing.
        assert!(programmed.plan(&want(&swapped[1..]), &[fe()]).is_empty());
    }

    #[test]
    fn ids_are_not_reused() {
        let mut programmed = Programmed::default();
        let ops1 = programmed.plan(&want(&[1]), &[fe()]);
        programmed.plan(&Desired::new(), &[fe()]);
        let ops2 = programmed.plan(&want(&[1]), &[fe()]);
        let id = |ops: &[Op]| match ops.last() {
            Some(Op::PutService { id, .. }) => *id,
            other => panic!("{other:?}"),
        };
        assert_ne!(id(&ops1), id(&ops2));
    }
}
