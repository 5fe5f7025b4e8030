//! The scheduling loop around the pure [`Scheduler`]: watches nodes, pods and namespaces
//! into a [`Snapshot`], schedules pending pods one at a time (each decision sees the previous
//! ones through [`Snapshot::assume`]), binds them through the `binding` subresource with many
//! binds in flight, and explains the pods that fit nowhere with a `PodScheduled=False`
//! condition and a `FailedScheduling` event. Unschedulable pods are retried, with backoff,
//! only after a cluster change one of the filters that rejected them says can help
//! (the `queueing` module), as kube-scheduler's queue does with queueing hints.
//!
//! A failed bind is handled as kube-scheduler's failure handler does, whatever the error
//! (a conflict, a 5xx, a timeout): the assumption is forgotten (its node's resources given
//! back) and the pod waits out a backoff, unless the pod watch already shows it bound or
//! gone. A pod that was in fact bound (a conflict because somebody else bound it, a timeout
//! whose write landed) leaves the backoff queue when the watch shows its `spec.nodeName`.
//! A pod whose bind succeeded stays assumed until the watch shows it bound, so a stale
//! update of it (still pending) is never decided again.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, HashSet, VecDeque};
use std::time::Duration;

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Binding, Namespace, Node, ObjectReference, Pod, PodCondition};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Resource, ResourceExt};
use shoal_controllers::events::{EventType, Recorder};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::filters::FilterKind;
use crate::node_info::NodeInfo;
use crate::pod_info::PodInfo;
use crate::queueing::{should_requeue, ClusterEvent, Requeue};
use crate::{needs_scheduling, Scheduler, SchedulerConfig, Snapshot, DEFAULT_SCHEDULER_NAME};

/// Binds in flight at once: binding is an API round trip, deciding is microseconds.
const MAX_BINDS_IN_FLIGHT: usize = 256;
/// Decisions between two looks at the watches and bind results: a pod that fits nowhere
/// costs a pass over every node, and ten thousand of them would keep the loop away from its
/// events for seconds.
const DECISIONS_PER_TURN: usize = 64;
/// Events handled in a row, at most, before a slice of decisions is taken anyway.
const EVENTS_PER_TURN: usize = 256;
/// `PodScheduled=False` writes in flight at once.
const MAX_EXPLANATIONS_IN_FLIGHT: usize = 128;
/// kube-scheduler's pod backoff: 1 s doubling to 10 s.
const INITIAL_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// Unschedulable pods are retried at least this often even if nothing seems to change.
const UNSCHEDULABLE_FLUSH: Duration = Duration::from_secs(60);
/// A bind that has not answered by then is taken as failed (the pod is retried after its
/// backoff; if the write landed after all, the watch shows the pod bound).
const BIND_TIMEOUT: Duration = Duration::from_secs(30);
/// Bind failures are summed up in one log line per this long at most.
const BIND_FAILURE_SUMMARY: Duration = Duration::from_secs(5);

type PodKey = (String, String);

fn key_of(pod: &Pod) -> PodKey {
    (pod.namespace().unwrap_or_default(), pod.name_any())
}

/// Why a bind failed. Every kind is handled alike (forget the assumption, retry after a
/// backoff); the kind only sets how loudly it is logged.
#[derive(Debug, thiserror::Error)]
enum BindError {
    #[error(transparent)]
    Api(#[from] kube::Error),
    #[error("no answer within {BIND_TIMEOUT:?}")]
    TimedOut,
}

impl BindError {
    /// A refusal that is part of normal operation: the pod was bound by somebody else,
    /// deleted, or written meanwhile.
    fn is_routine(&self) -> bool {
        matches!(self, BindError::Api(kube::Error::Api(s)) if s.code == 404 || s.code == 409)
    }

    /// What the summary counts it as: the API's status code, or how it failed without one.
    fn kind(&self) -> String {
        match self {
            BindError::Api(kube::Error::Api(status)) => status.code.to_string(),
            BindError::Api(_) => "transport".into(),
            BindError::TimedOut => "timeout".into(),
        }
    }
}

/// Bind failures counted by kind and logged as one line per [`BIND_FAILURE_SUMMARY`] at
/// most: under a failing API every bind fails, and a line each would flood the log, while
/// routine conflicts are logged only at debug level and would otherwise not show at all.
#[derive(Debug, Default)]
struct BindFailureTally {
    counts: BTreeMap<String, u32>,
    since: Option<Instant>,
}

impl BindFailureTally {
    fn record(&mut self, kind: String, now: Instant) {
        *self.counts.entry(kind).or_default() += 1;
        self.since.get_or_insert(now);
    }

    /// When the summary of what is counted is due.
    fn due(&self) -> Option<Instant> {
        self.since.map(|since| since + BIND_FAILURE_SUMMARY)
    }

    /// The summary ("3× 409, 1× timeout") once due; counting then starts over.
    fn take_due(&mut self, now: Instant) -> Option<String> {
        if self.due()? > now {
            return None;
        }
        self.since = None;
        let counts = std::mem::take(&mut self.counts);
        Some(
            counts
                .iter()
                .map(|(kind, n)| format!("{n}× {kind}"))
                .collect::<Vec<_>>()
                .join(", "),
        )
    }
}

/// What the loop's tasks report back.
#[derive(Debug)]
enum Report {
    /// The outcome of one bind.
    Bound {
        key: PodKey,
        node: String,
        result: Result<(), BindError>,
    },
    /// A `PodScheduled=False` write is done (whatever its outcome).
    Explained(PodKey),
}

/// When a pod may be tried again.
#[derive(Debug, Clone, Copy)]
struct Retry {
    not_before: Instant,
}

/// The backoff after the `attempts`th failed attempt: 1 s after the first, doubling, as
/// kube-scheduler's `calculateBackoffDuration`.
fn backoff(attempts: u32) -> Duration {
    let doublings = attempts.saturating_sub(1).min(10);
    INITIAL_BACKOFF
        .saturating_mul(1u32.checked_shl(doublings).unwrap_or(u32::MAX))
        .min(MAX_BACKOFF)
}

/// Pods waiting out a backoff, with the earliest end found in O(log n): the loop asks for it
/// after every event, and thousands of pods may be backing off at once.
#[derive(Debug, Default)]
struct Backoff {
    retries: HashMap<PodKey, Retry>,
    /// Every (end, pod) inserted; entries whose pod left or got a new end are skipped when
    /// they surface.
    timeline: BinaryHeap<Reverse<(Instant, PodKey)>>,
}

impl Backoff {
    fn insert(&mut self, key: PodKey, retry: Retry) {
        self.timeline.push(Reverse((retry.not_before, key.clone())));
        self.retries.insert(key, retry);
    }

    fn remove(&mut self, key: &PodKey) -> Option<Retry> {
        self.retries.remove(key)
    }

    fn contains_key(&self, key: &PodKey) -> bool {
        self.retries.contains_key(key)
    }

    /// Whether the timeline entry (end, key) is still the pod's current backoff.
    fn is_current(&self, end: Instant, key: &PodKey) -> bool {
        self.retries.get(key).is_some_and(|r| r.not_before == end)
    }

    /// Takes out the pods whose backoff ended by `now`.
    fn pop_due(&mut self, now: Instant) -> Vec<PodKey> {
        let mut due = Vec::new();
        while let Some(Reverse((end, _))) = self.timeline.peek() {
            if *end > now {
                break;
            }
            let Some(Reverse((end, key))) = self.timeline.pop() else {
                break;
            };
            if self.is_current(end, &key) {
                self.retries.remove(&key);
                due.push(key);
            }
        }
        due
    }

    /// Takes out the pod whose backoff ends first, ended or not: kube-scheduler pops the
    /// backoff queue when nothing else is waiting (`SchedulerPopFromBackoffQ`), since the
    /// backoff is there to let other pods go first, not to keep the scheduler idle.
    fn pop_earliest(&mut self) -> Option<PodKey> {
        while let Some(Reverse((end, key))) = self.timeline.pop() {
            if self.is_current(end, &key) {
                self.retries.remove(&key);
                return Some(key);
            }
        }
        None
    }

    /// When the next backoff ends.
    fn next_due(&mut self) -> Option<Instant> {
        while let Some(Reverse((end, key))) = self.timeline.peek() {
            if self.is_current(*end, key) {
                return Some(*end);
            }
            self.timeline.pop();
        }
        None
    }
}

/// `PodScheduled=False` writes to make: the newest per pod, at most one per pod in flight
/// and [`MAX_EXPLANATIONS_IN_FLIGHT`] in all. Coalescing matters when thousands of pods fail
/// at once: a write queued behind thousands of others would otherwise land after the pod
/// was bound and turn its `PodScheduled` back to False.
#[derive(Debug, Default)]
struct Explanations {
    waiting: VecDeque<PodKey>,
    pending: HashMap<PodKey, PodCondition>,
    in_flight: HashSet<PodKey>,
}

impl Explanations {
    /// Replaces any write of the pod not started yet.
    fn push(&mut self, key: PodKey, condition: PodCondition) {
        if self.pending.insert(key.clone(), condition).is_none() && !self.in_flight.contains(&key) {
            self.waiting.push_back(key);
        }
    }

    /// The pod was bound or deleted: nothing left to write.
    fn cancel(&mut self, key: &PodKey) {
        self.pending.remove(key);
    }

    /// The next write to start, while fewer than the limit are in flight.
    fn next(&mut self) -> Option<(PodKey, PodCondition)> {
        if self.in_flight.len() >= MAX_EXPLANATIONS_IN_FLIGHT {
            return None;
        }
        while let Some(key) = self.waiting.pop_front() {
            if self.in_flight.contains(&key) {
                continue; // requeued when that write is done
            }
            if let Some(condition) = self.pending.remove(&key) {
                self.in_flight.insert(key.clone());
                return Some((key, condition));
            }
        }
        None
    }

    fn done(&mut self, key: &PodKey) {
        self.in_flight.remove(key);
        if self.pending.contains_key(key) {
            self.waiting.push_back(key.clone());
        }
    }
}

/// An unschedulable pod waiting for a change that can help it.
#[derive(Debug)]
struct Parked {
    retry: Retry,
    /// The pod as read for its last attempt.
    pod: PodInfo,
    /// The filters that rejected a node in that attempt (kube-scheduler's
    /// `UnschedulablePlugins`).
    rejected: BTreeSet<FilterKind>,
}

impl Parked {
    /// Rejected by a filter that looks beyond one node: bound pods anywhere may concern it.
    fn is_wide(&self) -> bool {
        self.rejected.iter().any(|f| !f.is_node_local())
    }
}

/// Everything the loop knows.
struct State {
    scheduler: Scheduler,
    snapshot: Snapshot,
    nodes: HashMap<String, Node>,
    /// Every pod, as last seen (bound or not): needed to rebuild the snapshot after a re-list.
    pods: HashMap<PodKey, Pod>,
    queue: VecDeque<PodKey>,
    queued: HashSet<PodKey>,
    /// Binds in flight.
    binding: HashSet<PodKey>,
    /// Pods accounted on a node in the snapshot before the watch showed them bound (kube-
    /// scheduler's assumed pods), with that node: binding, or bound but not seen yet. Never
    /// decided again while here; a failed bind forgets the assumption.
    assumed: HashMap<PodKey, String>,
    /// Pods that fit nowhere, waiting for a change in the cluster.
    unschedulable: HashMap<PodKey, Parked>,
    /// Those of them a cluster-wide filter (PodTopologySpread, InterPodAffinity) rejected.
    wide: HashSet<PodKey>,
    /// Failed attempts of each pod not bound yet, which set its backoff.
    attempts: HashMap<PodKey, u32>,
    /// Pods a cluster event sent back while their backoff was not over.
    backing_off: Backoff,
    /// Pods whose binding failed, waiting out their backoff; never taken early, so an API
    /// that keeps failing is not retried as fast as it answers.
    erred: Backoff,
    bind_failures: BindFailureTally,
    /// The message last written to each unschedulable pod (to avoid rewriting it).
    explained: HashMap<PodKey, String>,
    /// `PodScheduled=False` writes waiting or in flight.
    explanations: Explanations,
    pod_init: Option<Vec<Pod>>,
    node_init: Option<Vec<Node>>,
    last_flush: Instant,
}

impl State {
    fn new() -> Self {
        State {
            scheduler: Scheduler::new(SchedulerConfig {
                percentage_of_nodes_to_score: None,
                tie_break_seed: u64::from(std::process::id()),
            }),
            snapshot: Snapshot::new(),
            nodes: HashMap::new(),
            pods: HashMap::new(),
            queue: VecDeque::new(),
            queued: HashSet::new(),
            binding: HashSet::new(),
            assumed: HashMap::new(),
            unschedulable: HashMap::new(),
            wide: HashSet::new(),
            attempts: HashMap::new(),
            backing_off: Backoff::default(),
            erred: Backoff::default(),
            bind_failures: BindFailureTally::default(),
            explained: HashMap::new(),
            explanations: Explanations::default(),
            pod_init: None,
            node_init: None,
            last_flush: Instant::now(),
        }
    }

    fn enqueue(&mut self, key: PodKey) {
        if self.binding.contains(&key)
            || self.assumed.contains_key(&key)
            || self.backing_off.contains_key(&key)
            || self.erred.contains_key(&key)
        {
            return;
        }
        if self.queued.insert(key.clone()) {
            self.queue.push_back(key);
        }
    }

    /// Retries every unschedulable pod once its backoff has passed (after a re-list, and
    /// periodically in case a change was missed).
    fn flush_unschedulable(&mut self) {
        self.wide.clear();
        for (key, parked) in std::mem::take(&mut self.unschedulable) {
            self.unpark(key, parked.retry);
        }
    }

    fn unpark(&mut self, key: PodKey, retry: Retry) {
        if retry.not_before <= Instant::now() {
            self.enqueue(key);
        } else {
            self.backing_off.insert(key, retry);
        }
    }

    fn forget(&mut self, key: &PodKey) {
        self.attempts.remove(key);
        self.unschedulable.remove(key);
        self.wide.remove(key);
        self.backing_off.remove(key);
        self.erred.remove(key);
        self.explained.remove(key);
        self.explanations.cancel(key);
    }

    /// Sends back to the queue the unschedulable pods `event` may help, as their rejecting
    /// filters' queueing hints say.
    fn cluster_event(&mut self, event: ClusterEvent<'_>) {
        // Every parked pod is walked as it is stored rather than looked up again by key: an
        // uncordon of 1,000 nodes with 10,000 pods parked is 20 million hashed lookups
        // otherwise (SipHash was 4% of the server's samples during one).
        let candidates: Box<dyn Iterator<Item = (&PodKey, &Parked)>> =
            if event.concerns_node_local_filters() {
                Box::new(self.unschedulable.iter())
            } else {
                let parked = &self.unschedulable;
                Box::new(
                    self.wide
                        .iter()
                        .filter_map(move |key| parked.get(key).map(|p| (key, p))),
                )
            };
        let decided: Vec<(PodKey, Requeue)> = candidates
            .filter_map(|(key, parked)| {
                match should_requeue(&self.snapshot, &parked.pod, &parked.rejected, &event) {
                    Requeue::No => None,
                    requeue => Some((key.clone(), requeue)),
                }
            })
            .collect();
        for (key, requeue) in decided {
            match requeue {
                Requeue::RejectedBy(filter) => {
                    if let Some(parked) = self.unschedulable.get_mut(&key) {
                        parked.rejected.insert(filter);
                    }
                }
                Requeue::Yes | Requeue::No => {
                    self.wide.remove(&key);
                    if let Some(parked) = self.unschedulable.remove(&key) {
                        self.unpark(key, parked.retry);
                    }
                }
            }
        }
    }

    fn park(&mut self, key: PodKey, pod: PodInfo, rejected: BTreeSet<FilterKind>) {
        let retry = self.next_retry(&key);
        let parked = Parked {
            retry,
            pod,
            rejected,
        };
        if parked.is_wide() {
            self.wide.insert(key.clone());
        } else {
            self.wide.remove(&key);
        }
        self.unschedulable.insert(key, parked);
    }

    fn rebuild(&mut self) {
        let bound: Vec<Pod> = self
            .pods
            .values()
            .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some())
            .cloned()
            .collect();
        let nodes: Vec<Node> = self.nodes.values().cloned().collect();
        self.snapshot = Snapshot::from_objects(&nodes, &bound);
        // Assumptions the listed objects do not confirm yet still hold: a bind in flight,
        // or done but not listed, keeps its node's resources.
        let pods = &self.pods;
        self.assumed.retain(|key, _| {
            pods.get(key)
                .is_some_and(|p| needs_scheduling(p, DEFAULT_SCHEDULER_NAME))
        });
        for (key, node) in &self.assumed {
            if let Some(pod) = self.pods.get(key) {
                self.snapshot.assume_info(PodInfo::from_pod(pod), node);
            }
        }
        let pending: Vec<PodKey> = self
            .pods
            .values()
            .filter(|p| needs_scheduling(p, DEFAULT_SCHEDULER_NAME))
            .map(key_of)
            .collect();
        for key in pending {
            self.enqueue(key);
        }
    }

    fn on_pod(&mut self, pod: Pod) {
        let key = key_of(&pod);
        let bound = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.as_ref())
            .is_some();
        if bound {
            self.forget(&key);
            // Confirmed: the snapshot's entry is the bound pod's from here on.
            self.assumed.remove(&key);
            let old = self.snapshot.pod_info(&key.0, &key.1).cloned();
            self.snapshot.upsert_pod(&pod);
            let new = self.snapshot.pod_info(&key.0, &key.1).cloned();
            match (&old, &new) {
                (None, Some(new)) => self.cluster_event(ClusterEvent::AssignedPodAdded(new)),
                (Some(old), None) => self.cluster_event(ClusterEvent::AssignedPodRemoved(old)),
                (Some(old), Some(new))
                    if old.labels != new.labels
                        || old.requests.requested != new.requests.requested =>
                {
                    self.cluster_event(ClusterEvent::AssignedPodUpdated { old, new })
                }
                _ => {}
            }
        } else if needs_scheduling(&pod, DEFAULT_SCHEDULER_NAME) {
            // A parked pod is only retried for a change to itself that can matter (not,
            // say, the PodScheduled condition this loop wrote).
            let changed = self.pods.get(&key).is_none_or(|old| {
                old.spec != pod.spec || old.metadata.labels != pod.metadata.labels
            });
            if changed {
                if let Some(parked) = self.unschedulable.remove(&key) {
                    self.wide.remove(&key);
                    self.unpark(key.clone(), parked.retry);
                }
            }
            if !self.unschedulable.contains_key(&key) {
                self.enqueue(key.clone());
            }
        }
        self.pods.insert(key, pod);
    }

    fn on_pod_deleted(&mut self, pod: &Pod) {
        let key = key_of(pod);
        self.pods.remove(&key);
        self.forget(&key);
        self.assumed.remove(&key);
        if let Some(gone) = self.snapshot.take_pod(&key.0, &key.1) {
            self.cluster_event(ClusterEvent::AssignedPodRemoved(&gone));
        }
    }

    fn on_pod_event(&mut self, event: watcher::Event<Pod>) {
        match event {
            watcher::Event::Apply(pod) => self.on_pod(pod),
            watcher::Event::Delete(pod) => self.on_pod_deleted(&pod),
            watcher::Event::Init => self.pod_init = Some(Vec::new()),
            watcher::Event::InitApply(pod) => self.pod_init.get_or_insert_with(Vec::new).push(pod),
            watcher::Event::InitDone => {
                let pods = self.pod_init.take().unwrap_or_default();
                self.pods = pods.into_iter().map(|p| (key_of(&p), p)).collect();
                self.rebuild();
            }
        }
    }

    fn on_node_event(&mut self, event: watcher::Event<Node>) {
        match event {
            watcher::Event::Apply(node) => {
                // Only a change the scheduler reads is an event: with a thousand nodes,
                // heartbeats alone would retry every pending pod many times a second.
                let name = node.name_any();
                let (upsert, old) = self.snapshot.replace_node(&node);
                self.nodes.insert(name.clone(), node);
                if upsert.changed {
                    let new: Option<NodeInfo> =
                        self.snapshot.node_with_usage(&name).map(|(n, _)| n.clone());
                    match (&old, &new) {
                        (None, Some(new)) => self.cluster_event(ClusterEvent::NodeAdded(new)),
                        (Some(old), Some(new)) => {
                            self.cluster_event(ClusterEvent::NodeUpdated { old, new })
                        }
                        _ => {}
                    }
                }
            }
            watcher::Event::Delete(node) => {
                let name = node.name_any();
                self.nodes.remove(&name);
                if let Some(gone) = self.snapshot.take_node(&name) {
                    self.cluster_event(ClusterEvent::NodeRemoved(&gone));
                }
            }
            watcher::Event::Init => self.node_init = Some(Vec::new()),
            watcher::Event::InitApply(node) => {
                self.node_init.get_or_insert_with(Vec::new).push(node)
            }
            watcher::Event::InitDone => {
                let nodes = self.node_init.take().unwrap_or_default();
                self.nodes = nodes.into_iter().map(|n| (n.name_any(), n)).collect();
                self.rebuild();
                self.flush_unschedulable();
            }
        }
    }

    fn on_namespace_event(&mut self, event: watcher::Event<Namespace>) {
        match event {
            watcher::Event::Apply(ns) | watcher::Event::InitApply(ns) => {
                let name = ns.name_any();
                let changed = self.snapshot.namespace_labels(&name)
                    != ns.metadata.labels.as_ref().unwrap_or(&Default::default());
                self.snapshot.upsert_namespace(&ns);
                if changed {
                    self.cluster_event(ClusterEvent::NamespaceChanged);
                }
            }
            watcher::Event::Delete(ns) => self.snapshot.remove_namespace(&ns.name_any()),
            watcher::Event::Init | watcher::Event::InitDone => {}
        }
    }

    /// Moves pods whose backoff is over back into the queue; flushes unschedulable pods
    /// periodically.
    fn requeue_due(&mut self) {
        let now = Instant::now();
        let due = [self.backing_off.pop_due(now), self.erred.pop_due(now)];
        for key in due.into_iter().flatten() {
            self.enqueue(key);
        }
        if self.last_flush.elapsed() >= UNSCHEDULABLE_FLUSH {
            self.last_flush = now;
            self.flush_unschedulable();
        }
        if let Some(summary) = self.bind_failures.take_due(now) {
            tracing::info!(
                "binds failed in the last {}s: {summary}",
                BIND_FAILURE_SUMMARY.as_secs()
            );
        }
    }

    fn next_wakeup(&mut self) -> Instant {
        let flush = self.last_flush + UNSCHEDULABLE_FLUSH;
        [
            self.backing_off.next_due(),
            self.erred.next_due(),
            self.bind_failures.due(),
        ]
        .into_iter()
        .flatten()
        .fold(flush, Instant::min)
    }

    /// The backoff after one more failed attempt.
    fn next_retry(&mut self, key: &PodKey) -> Retry {
        let attempts = self.attempts.entry(key.clone()).or_default();
        *attempts = attempts.saturating_add(1);
        let attempts = *attempts;
        Retry {
            not_before: Instant::now() + backoff(attempts),
        }
    }

    /// A bind failed, for whatever reason: kube-scheduler's `handleBindingCycleError` —
    /// forget the assumption (unless the watch has confirmed the pod bound meanwhile, or
    /// seen it deleted, either of which ended it), then its failure handler — retry the pod
    /// after a backoff if the watch still shows it pending, and drop it if the watch shows it
    /// bound or gone. A pod the watch shows pending because the news has not arrived yet
    /// (bound by somebody else, or by this very bind before it timed out) leaves the backoff
    /// queue when the watch shows it bound ([`State::on_pod`] forgets it).
    fn bind_failed(&mut self, key: PodKey) {
        if self.assumed.remove(&key).is_some() {
            if let Some(assumed) = self.snapshot.take_pod(&key.0, &key.1) {
                self.cluster_event(ClusterEvent::AssignedPodRemoved(&assumed));
            }
        }
        let pending = self
            .pods
            .get(&key)
            .is_some_and(|p| needs_scheduling(p, DEFAULT_SCHEDULER_NAME));
        if pending {
            self.retry_later(key);
        }
    }

    /// After a bind answered: a pod of the same name that the watch shows pending and that
    /// is not assumed (deleted and created again while the bind was in flight) was kept out
    /// of the queue by the bind; queue it now.
    fn requeue_if_unassumed_pending(&mut self, key: PodKey) {
        let pending = self
            .pods
            .get(&key)
            .is_some_and(|p| needs_scheduling(p, DEFAULT_SCHEDULER_NAME));
        if pending && !self.assumed.contains_key(&key) && !self.unschedulable.contains_key(&key) {
            self.enqueue(key);
        }
    }

    /// Retries the pod after a backoff (its binding failed).
    fn retry_later(&mut self, key: PodKey) {
        let retry = self.next_retry(&key);
        self.erred.insert(key, retry);
    }
}

fn pod_reference(pod: &Pod) -> ObjectReference {
    pod.object_ref(&())
}

/// Runs the scheduler until `drain` turns true.
pub async fn run(client: kube::Client, mut drain: watch::Receiver<bool>) {
    let recorder = Recorder::new(client.clone(), "default-scheduler");
    let mut pod_events = watch_all::<Pod>(&client);
    let mut node_events = watch_all::<Node>(&client);
    let mut namespace_events = watch_all::<Namespace>(&client);
    let (report_tx, mut report_rx) = mpsc::unbounded_channel::<Report>();
    let mut state = State::new();
    // Whether a slice of decisions may find work: after any event (it may have queued a pod
    // or freed a bind slot), and while the last slice stopped short of the queue's end.
    let mut may_decide = true;
    let mut events_in_a_row = 0usize;
    loop {
        // Waiting events first, then decisions: a decision made on a view the waiting events
        // would change is wasted work at best: with a slice after every event, a burst of a
        // thousand node uncordons interleaved up to 64,000 decisions against a view that
        // still showed most nodes cordoned. After EVENTS_PER_TURN events in a row a slice is
        // taken anyway, so a flood of events cannot starve the queue.
        let turn_due = may_decide && events_in_a_row >= EVENTS_PER_TURN;
        let wakeup = state.next_wakeup();
        tokio::select! {
            biased;
            _ = drain.wait_for(|d| *d) => break,
            () = std::future::ready(()), if turn_due => {
                events_in_a_row = 0;
                may_decide = schedule_queued(&mut state, &client, &recorder, &report_tx);
                continue;
            }
            Some(report) = report_rx.recv() => on_report(&mut state, report),
            Some(event) = node_events.next() => state.on_node_event(event),
            Some(event) = pod_events.next() => state.on_pod_event(event),
            Some(event) = namespace_events.next() => state.on_namespace_event(event),
            _ = tokio::time::sleep_until(wakeup) => state.requeue_due(),
            () = std::future::ready(()), if may_decide => {
                events_in_a_row = 0;
                may_decide = schedule_queued(&mut state, &client, &recorder, &report_tx);
                continue;
            }
        }
        events_in_a_row += 1;
        may_decide = true;
    }
}

fn watch_all<K>(client: &kube::Client) -> impl Stream<Item = watcher::Event<K>> + Unpin
where
    K: Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + 'static,
{
    let api: Api<K> = Api::all(client.clone());
    watcher(api, watcher::Config::default())
        .default_backoff()
        .filter_map(|event| async move {
            match event {
                Ok(event) => Some(event),
                Err(e) => {
                    tracing::warn!(error = %e, "scheduler watch");
                    None
                }
            }
        })
        .boxed()
}

/// Decides for up to [`DECISIONS_PER_TURN`] queued pods while binds may be started; true if
/// more could be decided right away.
fn schedule_queued(
    state: &mut State,
    client: &kube::Client,
    recorder: &Recorder,
    bound_tx: &mpsc::UnboundedSender<Report>,
) -> bool {
    let more = decide_queued(state, client, recorder, bound_tx);
    start_explanations(state, client, bound_tx);
    more
}

/// Starts the `PodScheduled=False` writes there is room for, skipping pods bound since.
fn start_explanations(
    state: &mut State,
    client: &kube::Client,
    done: &mpsc::UnboundedSender<Report>,
) {
    while let Some((key, condition)) = state.explanations.next() {
        let still_pending = !state.binding.contains(&key)
            && state
                .pods
                .get(&key)
                .is_some_and(|pod| needs_scheduling(pod, DEFAULT_SCHEDULER_NAME));
        if !still_pending {
            state.explanations.done(&key);
            continue;
        }
        let (client, done) = (client.clone(), done.clone());
        tokio::spawn(async move {
            explain(client, &key, condition).await;
            let _ = done.send(Report::Explained(key));
        });
    }
}

/// What one decision asks of the loop's IO.
#[derive(Debug)]
enum Decision {
    /// Bind the pod (already assumed on the node). What the bind and its event need, not
    /// the pod: copying every pod decided would be the loop's largest allocation.
    Bind {
        key: PodKey,
        uid: Option<String>,
        reference: ObjectReference,
        node: String,
    },
    /// The pod fits nowhere and this is news: record a `FailedScheduling` event.
    FailedScheduling {
        reference: ObjectReference,
        message: String,
    },
    /// Nothing to do outside the loop (a repeated failure, a pod gone meanwhile).
    None,
}

/// Decides for the next queued pod — or, with none queued, the next backing-off one — and
/// updates the state (assumed pod, parked pod, explanation to write). `None` when there is
/// nothing to decide or the binds in flight are at their limit.
fn decide_next(state: &mut State) -> Option<Decision> {
    if state.binding.len() >= MAX_BINDS_IN_FLIGHT {
        return None; // a bind result frees a slot and wakes the loop
    }
    let key = match state.queue.pop_front() {
        Some(key) => {
            state.queued.remove(&key);
            key
        }
        None => state.backing_off.pop_earliest()?,
    };
    let Some(pod) = state.pods.get(&key) else {
        return Some(Decision::None);
    };
    // An assumed pod is bound or binding, whatever a stale update of it says
    // (kube-scheduler's `skipPodSchedule`).
    if !needs_scheduling(pod, DEFAULT_SCHEDULER_NAME) || state.assumed.contains_key(&key) {
        return Some(Decision::None);
    }
    let info = PodInfo::from_pod(pod);
    let reference = pod_reference(pod);
    match state.scheduler.schedule_info(&state.snapshot, &info, false) {
        Ok(placement) => {
            state.snapshot.assume_info(info, &placement.node_name);
            if let Some(assumed) = state.snapshot.pod_info(&key.0, &key.1).cloned() {
                state.cluster_event(ClusterEvent::AssignedPodAdded(&assumed));
            }
            state
                .assumed
                .insert(key.clone(), placement.node_name.clone());
            state.binding.insert(key.clone());
            Some(Decision::Bind {
                key,
                uid: reference.uid.clone(),
                reference,
                node: placement.node_name,
            })
        }
        Err(unschedulable) => {
            let message = unschedulable.message.clone();
            let news = state.explained.get(&key) != Some(&message);
            if news {
                state
                    .explanations
                    .push(key.clone(), unschedulable.pod_scheduled_condition());
                state.explained.insert(key.clone(), message.clone());
            }
            state.park(key, info, unschedulable.failed_filters);
            Some(if news {
                Decision::FailedScheduling { reference, message }
            } else {
                Decision::None
            })
        }
    }
}

/// Makes up to [`DECISIONS_PER_TURN`] decisions and starts what they ask for; true if more
/// could be decided right away.
fn decide_queued(
    state: &mut State,
    client: &kube::Client,
    recorder: &Recorder,
    report: &mpsc::UnboundedSender<Report>,
) -> bool {
    for _ in 0..DECISIONS_PER_TURN {
        match decide_next(state) {
            None => return false,
            Some(Decision::Bind {
                key,
                uid,
                reference,
                node,
            }) => {
                tokio::spawn(bind(
                    client.clone(),
                    recorder.clone(),
                    Bound {
                        key,
                        uid,
                        reference,
                    },
                    node,
                    report.clone(),
                ));
            }
            Some(Decision::FailedScheduling { reference, message }) => {
                recorder.record(reference, EventType::Warning, "FailedScheduling", &message)
            }
            Some(Decision::None) => {}
        }
    }
    !state.queue.is_empty() || state.backing_off.next_due().is_some()
}

/// The pod a bind is for.
struct Bound {
    key: PodKey,
    uid: Option<String>,
    reference: ObjectReference,
}

async fn bind(
    client: kube::Client,
    recorder: Recorder,
    pod: Bound,
    node: String,
    report: mpsc::UnboundedSender<Report>,
) {
    let Bound {
        key,
        uid,
        reference,
    } = pod;
    let pods: Api<Pod> = Api::namespaced(client, &key.0);
    let binding = Binding {
        metadata: ObjectMeta {
            name: Some(key.1.clone()),
            namespace: Some(key.0.clone()),
            uid,
            ..ObjectMeta::default()
        },
        target: ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Node".into()),
            name: Some(node.clone()),
            ..ObjectReference::default()
        },
    };
    let params = PostParams::default();
    let request =
        pods.create_subresource::<Binding, serde_json::Value>("binding", &key.1, &params, &binding);
    let result = match tokio::time::timeout(BIND_TIMEOUT, request).await {
        Ok(answer) => answer.map(|_| ()).map_err(BindError::from),
        Err(_) => Err(BindError::TimedOut),
    };
    if result.is_ok() {
        recorder.record(
            reference,
            EventType::Normal,
            "Scheduled",
            &format!("Successfully assigned {}/{} to {node}", key.0, key.1),
        );
    }
    let _ = report.send(Report::Bound { key, node, result });
}

fn on_report(state: &mut State, report: Report) {
    match report {
        Report::Bound { key, node, result } => on_bound(state, key, node, result),
        Report::Explained(key) => state.explanations.done(&key),
    }
}

fn on_bound(state: &mut State, key: PodKey, node: String, result: Result<(), BindError>) {
    state.binding.remove(&key);
    match result {
        Ok(()) => {
            // Stays assumed until the watch shows it bound.
            state.forget(&key);
            state.requeue_if_unassumed_pending(key);
        }
        Err(e) => {
            if e.is_routine() {
                tracing::debug!(pod = ?key, node = %node, error = %e, "binding failed");
            } else {
                tracing::info!(pod = ?key, node = %node, error = %e, "binding failed");
            }
            state.bind_failures.record(e.kind(), Instant::now());
            state.bind_failed(key);
        }
    }
}

/// Writes `PodScheduled=False` with kube-scheduler's reason and message.
async fn explain(client: kube::Client, key: &PodKey, condition: PodCondition) {
    let (namespace, name) = key;
    let pods: Api<Pod> = Api::namespaced(client, namespace);
    let mut condition = condition;
    condition.last_transition_time = Some(Time(Timestamp::now()));
    let patch = serde_json::json!({"status": {"conditions": [condition]}});
    if let Err(e) = pods
        .patch_status(name, &PatchParams::default(), &Patch::Strategic(patch))
        .await
    {
        tracing::debug!(pod = %name, error = %e, "writing PodScheduled");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{bound_pod, pending_pod, ready_node};

    fn key(name: &str) -> PodKey {
        ("default".into(), name.into())
    }

    #[test]
    fn backoff_queue_yields_pods_when_their_backoff_ends_and_skips_stale_entries() {
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        let retry = |ms: u64| Retry { not_before: at(ms) };
        let mut queue = Backoff::default();
        queue.insert(key("a"), retry(300));
        queue.insert(key("b"), retry(100));
        queue.insert(key("c"), retry(200));
        assert_eq!(queue.next_due(), Some(at(100)));
        // b backs off again, longer; c leaves (bound, deleted): their old entries are stale.
        queue.insert(key("b"), retry(400));
        assert!(queue.remove(&key("c")).is_some());
        assert_eq!(queue.next_due(), Some(at(300)));
        assert_eq!(queue.pop_due(at(250)), Vec::<PodKey>::new());
        assert_eq!(queue.pop_due(at(300)), vec![key("a")]);
        assert!(!queue.contains_key(&key("a")));
        assert!(queue.contains_key(&key("b")));
        assert_eq!(queue.pop_due(at(1_000)), vec![key("b")]);
        assert_eq!(queue.next_due(), None);
    }

    fn cordoned(name: &str, cordon: bool, taint: bool) -> Node {
        let mut node = ready_node(name, "4", "8Gi", serde_json::json!({}));
        let taints = if taint {
            serde_json::json!([{"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}])
        } else {
            serde_json::json!([])
        };
        node.spec =
            serde_json::from_value(serde_json::json!({"unschedulable": cordon, "taints": taints}))
                .ok();
        node
    }

    /// A loop state that has listed `nodes` and `pods`.
    fn listed(nodes: Vec<Node>, pods: Vec<Pod>) -> State {
        let mut state = State::new();
        state.on_node_event(watcher::Event::Init);
        for node in nodes {
            state.on_node_event(watcher::Event::InitApply(node));
        }
        state.on_node_event(watcher::Event::InitDone);
        state.on_pod_event(watcher::Event::Init);
        for pod in pods {
            state.on_pod_event(watcher::Event::InitApply(pod));
        }
        state.on_pod_event(watcher::Event::InitDone);
        state
    }

    /// Decides until there is nothing to decide; the pods bound (to which node) and the
    /// pods newly found unschedulable.
    fn decide_all(state: &mut State) -> (Vec<(String, String)>, Vec<String>) {
        let (mut bound, mut failed) = (Vec::new(), Vec::new());
        while let Some(decision) = decide_next(state) {
            match decision {
                Decision::Bind { key, node, .. } => {
                    state.binding.remove(&key);
                    bound.push((key.1, node));
                }
                Decision::FailedScheduling { reference, .. } => {
                    failed.push(reference.name.unwrap_or_default())
                }
                Decision::None => {}
            }
        }
        bound.sort();
        failed.sort();
        (bound, failed)
    }

    #[test]
    fn pending_pods_wait_through_an_uncordon_until_the_taint_is_gone() {
        let pods: Vec<Pod> = (0..3)
            .map(|i| pending_pod(&format!("p{i}"), "100m", "64Mi"))
            .collect();
        let nodes = vec![cordoned("n1", true, true), cordoned("n2", true, true)];
        let mut state = listed(nodes, pods);
        let (bound, failed) = decide_all(&mut state);
        assert!(bound.is_empty());
        assert_eq!(failed, ["p0", "p1", "p2"]);
        assert_eq!(
            state.explanations.pending.len(),
            3,
            "PodScheduled=False to write"
        );

        // Uncordoned; the node lifecycle controller has not removed its taint yet.
        state.on_node_event(watcher::Event::Apply(cordoned("n1", false, true)));
        assert_eq!(decide_all(&mut state), (vec![], vec![]), "nothing retried");
        // A heartbeat is no change.
        state.on_node_event(watcher::Event::Apply(cordoned("n1", false, true)));
        assert_eq!(decide_all(&mut state), (vec![], vec![]));

        state.on_node_event(watcher::Event::Apply(cordoned("n1", false, false)));
        let (bound, failed) = decide_all(&mut state);
        assert!(failed.is_empty());
        let on = |node: &str| bound.iter().filter(|(_, n)| n == node).count();
        assert_eq!((on("n1"), on("n2")), (3, 0), "{bound:?}");
        assert!(state.unschedulable.is_empty());
    }

    #[test]
    fn a_pod_waiting_for_room_is_retried_when_a_pod_leaves_its_node() {
        let mut state = listed(
            vec![ready_node("n1", "1", "8Gi", serde_json::json!({}))],
            vec![
                bound_pod("big", "n1", "1", "1Gi"),
                pending_pod("waiting", "500m", "64Mi"),
            ],
        );
        assert_eq!(decide_all(&mut state), (vec![], vec!["waiting".into()]));
        state.on_pod_event(watcher::Event::Apply(bound_pod("tiny", "n1", "0", "0")));
        state.on_pod_event(watcher::Event::Delete(bound_pod("tiny", "n1", "0", "0")));
        assert_eq!(decide_all(&mut state), (vec![], vec![]), "no room made");
        state.on_pod_event(watcher::Event::Delete(bound_pod("big", "n1", "1", "1Gi")));
        assert_eq!(
            decide_all(&mut state),
            (vec![("waiting".into(), "n1".into())], vec![])
        );
    }

    #[test]
    fn a_failed_binding_frees_its_node_and_waits_out_its_backoff() {
        let mut state = one_pod_per_node(&["a", "b"]);
        let Some(Decision::Bind { key: pod, node, .. }) = decide_next(&mut state) else {
            panic!("the first pod fits");
        };
        let other = if pod.1 == "a" { "b" } else { "a" };
        assert_eq!(
            decide_all(&mut state),
            (vec![], vec![other.into()]),
            "n1 is full"
        );
        on_bound(&mut state, pod.clone(), node, Err(api_error(500)));
        // The other pod was waiting for room on n1, which the forgotten assumption gave
        // back; the pod whose binding failed waits out its backoff, idle loop or not.
        assert_eq!(
            decide_all(&mut state),
            (vec![(other.into(), "n1".into())], vec![])
        );
        assert!(state.erred.contains_key(&pod));
        assert!(decide_next(&mut state).is_none());
        assert!(state.next_wakeup() <= Instant::now() + INITIAL_BACKOFF);
    }

    /// A loop state that has listed one node `n1` with room for one of the pending `pods`.
    fn one_pod_per_node(pods: &[&str]) -> State {
        listed(
            vec![ready_node("n1", "1", "8Gi", serde_json::json!({}))],
            pods.iter().map(|p| pending_pod(p, "1", "64Mi")).collect(),
        )
    }

    fn api_error(code: u16) -> BindError {
        BindError::Api(kube::Error::Api(Box::new(kube::core::Status {
            code,
            ..Default::default()
        })))
    }

    /// The one pod `decide_next` binds now, with its node.
    fn bind_one(state: &mut State) -> (PodKey, String) {
        match decide_next(state) {
            Some(Decision::Bind { key, node, .. }) => (key, node),
            other => panic!("expected a bind, got {other:?}"),
        }
    }

    #[test]
    fn a_conflicting_bind_forgets_the_assumption_and_requeues_until_the_watch_shows_it_bound() {
        let mut state = one_pod_per_node(&["a", "b"]);
        let (key, node) = bind_one(&mut state);
        let other = if key.1 == "a" { "b" } else { "a" };
        assert_eq!(decide_all(&mut state), (vec![], vec![other.into()]));

        // 409 (say, somebody else bound it, and the watch has not shown it yet).
        on_bound(&mut state, key.clone(), node, Err(api_error(409)));
        assert!(!state.assumed.contains_key(&key), "assumption forgotten");
        assert!(state.snapshot.pod_info(&key.0, &key.1).is_none());
        assert!(state.erred.contains_key(&key), "requeued with backoff");
        assert!(state.next_wakeup() <= Instant::now() + INITIAL_BACKOFF);
        // Its node's room went to the other pod; the pod itself waits out its backoff.
        assert_eq!(
            decide_all(&mut state),
            (vec![(other.into(), "n1".into())], vec![])
        );
        assert!(decide_next(&mut state).is_none());

        // The watch shows it bound (to n1, beside the other, say by another scheduler):
        // out of every queue, accounted as bound, never decided again.
        state.on_pod_event(watcher::Event::Apply(bound_pod(&key.1, "n1", "1", "64Mi")));
        assert!(!state.erred.contains_key(&key));
        assert!(!state.attempts.contains_key(&key));
        assert_eq!(
            state
                .snapshot
                .pod_info(&key.0, &key.1)
                .and_then(|p| p.node_name.as_deref()),
            Some("n1")
        );
        state.requeue_due();
        assert!(state.erred.pop_earliest().is_none());
        assert!(decide_next(&mut state).is_none());
    }

    #[test]
    fn every_bind_error_retries_a_pod_the_watch_still_shows_pending() {
        for error in [
            api_error(409),
            api_error(404),
            api_error(500),
            api_error(504),
            BindError::TimedOut,
        ] {
            let mut state = one_pod_per_node(&["a"]);
            let (pod, node) = bind_one(&mut state);
            let text = error.to_string();
            on_bound(&mut state, pod.clone(), node, Err(error));
            assert!(state.erred.contains_key(&key("a")), "{text}");
            assert!(state.snapshot.pod_info("default", "a").is_none(), "{text}");
            // Past its backoff it is decided and bound again.
            let due = state.erred.pop_earliest();
            assert_eq!(due, Some(key("a")), "{text}");
            state.enqueue(key("a"));
            assert!(
                matches!(decide_next(&mut state), Some(Decision::Bind { .. })),
                "{text}"
            );
        }
    }

    #[test]
    fn a_failed_bind_of_a_pod_the_watch_shows_bound_or_gone_is_not_retried() {
        // Bound (by this bind, which then timed out): the watch's pod stays accounted.
        let mut state = one_pod_per_node(&["a"]);
        let (pod, node) = bind_one(&mut state);
        state.on_pod_event(watcher::Event::Apply(bound_pod("a", "n1", "1", "64Mi")));
        on_bound(&mut state, pod.clone(), node, Err(BindError::TimedOut));
        assert!(
            state.snapshot.pod_info("default", "a").is_some(),
            "still on n1"
        );
        assert!(!state.erred.contains_key(&key("a")));

        // Deleted while binding: nothing to retry; created again: retried.
        let mut state = one_pod_per_node(&["a"]);
        let (pod, node) = bind_one(&mut state);
        state.on_pod_event(watcher::Event::Delete(pending_pod("a", "1", "64Mi")));
        on_bound(&mut state, pod.clone(), node.clone(), Err(api_error(404)));
        assert!(!state.erred.contains_key(&key("a")));
        assert!(state.snapshot.pod_info("default", "a").is_none());
        let (pod, _) = bind_one_after(&mut state, pending_pod("a", "1", "64Mi"));
        state.on_pod_event(watcher::Event::Delete(pending_pod("a", "1", "64Mi")));
        state.on_pod_event(watcher::Event::Apply(pending_pod("a", "1", "64Mi")));
        on_bound(&mut state, pod.clone(), node, Err(api_error(409)));
        assert!(
            state.erred.contains_key(&key("a")),
            "the new pod is retried"
        );
    }

    /// Lets the watch show `pod` and binds it.
    fn bind_one_after(state: &mut State, pod: Pod) -> (PodKey, String) {
        state.on_pod_event(watcher::Event::Apply(pod));
        bind_one(state)
    }

    #[test]
    fn a_bound_pod_stays_assumed_until_the_watch_shows_it_bound() {
        let mut state = one_pod_per_node(&["a", "b"]);
        let (key, node) = bind_one(&mut state);
        on_bound(&mut state, key.clone(), node, Ok(()));
        // A stale update (the pod as it was before the bind) is not decided again, and the
        // node stays full for the other pod.
        state.on_pod_event(watcher::Event::Apply(pending_pod(&key.1, "1", "64Mi")));
        let other = if key.1 == "a" { "b" } else { "a" };
        assert_eq!(decide_all(&mut state), (vec![], vec![other.into()]));
        // A re-list that does not show the bind yet keeps the assumption too.
        let pods = vec![pending_pod("a", "1", "64Mi"), pending_pod("b", "1", "64Mi")];
        state.on_pod_event(watcher::Event::Init);
        for pod in pods {
            state.on_pod_event(watcher::Event::InitApply(pod));
        }
        state.on_pod_event(watcher::Event::InitDone);
        assert!(state.snapshot.pod_info(&key.0, &key.1).is_some());
        state.flush_unschedulable();
        assert_eq!(decide_all(&mut state), (vec![], vec![]));
        state.on_pod_event(watcher::Event::Apply(bound_pod(&key.1, "n1", "1", "64Mi")));
        assert!(state.assumed.is_empty());
    }

    #[test]
    fn explanations_keep_the_newest_per_pod_one_in_flight_and_skip_cancelled_ones() {
        let condition = |message: &str| PodCondition {
            message: Some(message.into()),
            ..PodCondition::default()
        };
        let message = |next: Option<(PodKey, PodCondition)>| {
            next.map(|(key, c)| (key.1, c.message.unwrap_or_default()))
        };
        let mut writes = Explanations::default();
        writes.push(key("a"), condition("a1"));
        writes.push(key("b"), condition("b1"));
        writes.push(key("a"), condition("a2"));
        writes.push(key("c"), condition("c1"));
        writes.cancel(&key("c"));
        assert_eq!(message(writes.next()), Some(("a".into(), "a2".into())));
        // A newer message while a's write is in flight waits for it to finish.
        writes.push(key("a"), condition("a3"));
        assert_eq!(message(writes.next()), Some(("b".into(), "b1".into())));
        assert_eq!(
            message(writes.next()),
            None,
            "c was cancelled, a is in flight"
        );
        writes.done(&key("a"));
        assert_eq!(message(writes.next()), Some(("a".into(), "a3".into())));
        writes.done(&key("a"));
        writes.done(&key("b"));
        assert_eq!(message(writes.next()), None);
        for i in 0..=MAX_EXPLANATIONS_IN_FLIGHT {
            writes.push(key(&format!("p{i}")), condition("x"));
        }
        let started = std::iter::from_fn(|| writes.next()).count();
        assert_eq!(started, MAX_EXPLANATIONS_IN_FLIGHT);
        writes.done(&key("p0"));
        assert_eq!(
            message(writes.next()),
            Some((format!("p{MAX_EXPLANATIONS_IN_FLIGHT}"), "x".into()))
        );
    }

    #[test]
    fn an_idle_loop_takes_the_pod_whose_backoff_ends_first_before_it_ends() {
        let start = Instant::now();
        let retry = |ms: u64| Retry {
            not_before: start + Duration::from_secs(60) + Duration::from_millis(ms),
        };
        let mut queue = Backoff::default();
        queue.insert(key("late"), retry(300));
        queue.insert(key("early"), retry(100));
        queue.insert(key("gone"), retry(50));
        assert!(queue.remove(&key("gone")).is_some());
        assert_eq!(queue.pop_earliest(), Some(key("early")));
        assert!(!queue.contains_key(&key("early")));
        assert_eq!(queue.pop_earliest(), Some(key("late")));
        assert_eq!(queue.pop_earliest(), None);
    }

    #[test]
    fn backoff_doubles_to_its_cap() {
        assert_eq!(backoff(1), Duration::from_secs(1));
        assert_eq!(backoff(2), Duration::from_secs(2));
        assert_eq!(backoff(4), Duration::from_secs(8));
        assert_eq!(backoff(5), MAX_BACKOFF);
        assert_eq!(backoff(40), MAX_BACKOFF);
        assert_eq!(
            backoff(0),
            Duration::from_secs(1),
            "never below the initial backoff"
        );
    }

    #[test]
    fn bind_failures_are_summed_up_once_per_period_by_kind() {
        let start = Instant::now();
        let mut tally = BindFailureTally::default();
        assert_eq!(tally.due(), None, "nothing to say");
        let conflict = BindError::Api(kube::Error::Api(Box::new(kube::core::Status {
            code: 409,
            ..Default::default()
        })));
        tally.record(conflict.kind(), start);
        tally.record(BindError::TimedOut.kind(), start + Duration::from_secs(1));
        tally.record(conflict.kind(), start + Duration::from_secs(2));
        assert_eq!(tally.due(), Some(start + BIND_FAILURE_SUMMARY));
        assert_eq!(tally.take_due(start + Duration::from_secs(4)), None);
        assert_eq!(
            tally.take_due(start + BIND_FAILURE_SUMMARY).as_deref(),
            Some("2× 409, 1× timeout")
        );
        assert_eq!(tally.due(), None, "counting starts over");
        assert_eq!(tally.take_due(start + Duration::from_secs(60)), None);
    }
}
