//! Leader election over a `coordination.k8s.io/v1` Lease, as client-go's `leaderelection` does
//! it: whoever holds an unexpired Lease leads; the leader renews it every retry period and
//! steps down (stopping its work) when it has not renewed within the renew deadline; others
//! take over once the Lease has expired. With one server there is no contest; with several,
//! only one runs the scheduler and the controllers.
//!
//! [`decide`] is the pure part (what to do with the Lease as observed); [`LeaderElector`]
//! carries it out against the API.

use std::future::Future;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, PostParams};
use tokio::sync::watch;

/// Timings, with client-go's defaults.
#[derive(Debug, Clone)]
pub struct Timings {
    /// How long a Lease stays valid after its last renewal.
    pub lease_duration: Duration,
    /// How long the leader keeps leading without a successful renewal.
    pub renew_deadline: Duration,
    /// How often the leader renews and the others retry.
    pub retry_period: Duration,
}

impl Default for Timings {
    fn default() -> Self {
        Timings {
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// What to do with the Lease as observed.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Nobody holds it: create it with us as holder.
    Create(LeaseSpec),
    /// Take it over or renew it (a write guarded by the observed resourceVersion).
    Write(LeaseSpec),
    /// Somebody else holds a valid Lease.
    Wait,
}

fn micro(now: Timestamp) -> MicroTime {
    MicroTime(now)
}

/// The pure election step: `lease` as read (None if it does not exist), our `identity`, the
/// current time.
pub fn decide(
    lease: Option<&Lease>,
    identity: &str,
    now: Timestamp,
    timings: &Timings,
) -> Decision {
    let duration_seconds = i32::try_from(timings.lease_duration.as_secs()).unwrap_or(i32::MAX);
    let fresh = |transitions: i32| LeaseSpec {
        holder_identity: Some(identity.to_string()),
        lease_duration_seconds: Some(duration_seconds),
        acquire_time: Some(micro(now)),
        renew_time: Some(micro(now)),
        lease_transitions: Some(transitions),
        ..LeaseSpec::default()
    };
    let Some(lease) = lease else {
        return Decision::Create(fresh(0));
    };
    let spec = lease.spec.clone().unwrap_or_default();
    let holder = spec.holder_identity.as_deref().unwrap_or_default();
    let transitions = spec.lease_transitions.unwrap_or(0);
    if holder == identity {
        return Decision::Write(LeaseSpec {
            renew_time: Some(micro(now)),
            lease_duration_seconds: Some(duration_seconds),
            ..spec
        });
    }
    if holder.is_empty() || expired(&spec, now) {
        return Decision::Write(fresh(transitions.saturating_add(1)));
    }
    Decision::Wait
}

/// Has the holder failed to renew within its own lease duration?
fn expired(spec: &LeaseSpec, now: Timestamp) -> bool {
    let Some(renewed) = spec.renew_time.as_ref().or(spec.acquire_time.as_ref()) else {
        return true;
    };
    let duration = SignedDuration::from_secs(i64::from(spec.lease_duration_seconds.unwrap_or(15)));
    renewed
        .0
        .checked_add(duration)
        .map_or(true, |until| until < now)
}

/// Runs work only while this process holds a Lease.
#[derive(Clone)]
pub struct LeaderElector {
    leases: Api<Lease>,
    name: String,
    identity: String,
    timings: Timings,
}

impl std::fmt::Debug for LeaderElector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaderElector")
            .field("name", &self.name)
            .field("identity", &self.identity)
            .finish()
    }
}

impl LeaderElector {
    /// Elects over the Lease `namespace/name` as `identity` (unique per process: the node name
    /// plus something random, as client-go uses hostname + UUID).
    pub fn new(
        client: kube::Client,
        namespace: &str,
        name: &str,
        identity: &str,
        timings: Timings,
    ) -> Self {
        LeaderElector {
            leases: Api::namespaced(client, namespace),
            name: name.to_string(),
            identity: identity.to_string(),
            timings,
        }
    }

    /// One election step; true if we hold the Lease afterwards.
    async fn try_acquire_or_renew(&self) -> Result<bool, kube::Error> {
        let current = self.leases.get_opt(&self.name).await?;
        let resource_version = current
            .as_ref()
            .and_then(|l| l.metadata.resource_version.clone());
        match decide(
            current.as_ref(),
            &self.identity,
            Timestamp::now(),
            &self.timings,
        ) {
            Decision::Wait => Ok(false),
            Decision::Create(spec) => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.name.clone()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(spec),
                };
                match self.leases.create(&PostParams::default(), &lease).await {
                    Ok(_) => Ok(true),
                    // Somebody created it first: they lead.
                    Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                    Err(e) => Err(e),
                }
            }
            Decision::Write(spec) => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.name.clone()),
                        resource_version,
                        ..ObjectMeta::default()
                    },
                    spec: Some(spec),
                };
                match self
                    .leases
                    .replace(&self.name, &PostParams::default(), &lease)
                    .await
                {
                    Ok(_) => Ok(true),
                    // Somebody wrote it since we read it: re-read next round.
                    Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                    Err(e) => Err(e),
                }
            }
        }
    }

    /// Lets the Lease go (expired at once) so another server can take over without waiting.
    async fn release(&self) {
        let Ok(Some(mut lease)) = self.leases.get_opt(&self.name).await else {
            return;
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        if let Err(e) = self
            .leases
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            tracing::debug!(lease = %self.name, error = %e, "releasing the lease");
        }
    }

    /// Runs `work` whenever this process leads, until `shutdown` turns true. `work` gets a
    /// drain receiver that turns true when leadership is lost or on shutdown; it must return
    /// soon after. It may be started again when leadership is regained, and is started again
    /// (with an error logged) if it returns or panics on its own while this process leads.
    pub async fn run<F, Fut>(self, mut shutdown: watch::Receiver<bool>, work: F)
    where
        F: Fn(watch::Receiver<bool>) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let mut ticker = tokio::time::interval(self.timings.retry_period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut leading: Option<(watch::Sender<bool>, tokio::task::JoinHandle<()>)> = None;
        let mut last_renewal = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = shutdown.changed() => {}
            }
            if *shutdown.borrow() {
                break;
            }
            // Work that ended on its own while we lead (an error, a panic) would leave the
            // cluster without its loops while the Lease says they run: say so, and start it
            // again below (at most once per retry period).
            if let Some((_, task)) = leading.take_if(|(_, task)| task.is_finished()) {
                match task.await {
                    Ok(()) => {
                        tracing::error!(lease = %self.name, "work ended while leading; restarting it")
                    }
                    Err(e) => {
                        tracing::error!(lease = %self.name, error = %e, "work failed while leading; restarting it")
                    }
                }
            }
            let held = match self.try_acquire_or_renew().await {
                Ok(held) => held,
                Err(e) => {
                    tracing::warn!(lease = %self.name, error = %e, "leader election");
                    // Keep leading through short API trouble, up to the renew deadline.
                    leading.is_some() && last_renewal.elapsed() < self.timings.renew_deadline
                }
            };
            match (held, leading.is_some()) {
                (true, true) => last_renewal = tokio::time::Instant::now(),
                (true, false) => {
                    tracing::info!(lease = %self.name, identity = %self.identity, "became leader");
                    last_renewal = tokio::time::Instant::now();
                    let (drain, drained) = watch::channel(false);
                    leading = Some((drain, tokio::spawn(work(drained))));
                }
                (false, true) => {
                    tracing::warn!(lease = %self.name, "lost leadership; stopping");
                    if let Some((drain, task)) = leading.take() {
                        let _ = drain.send(true);
                        let _ = task.await;
                    }
                }
                (false, false) => {}
            }
        }
        if let Some((drain, task)) = leading.take() {
            let _ = drain.send(true);
            let _ = task.await;
            self.release().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(holder: &str, renewed: Timestamp, seconds: i32) -> Lease {
        Lease {
            metadata: ObjectMeta::default(),
            spec: Some(LeaseSpec {
                holder_identity: Some(holder.to_string()),
                renew_time: Some(MicroTime(renewed)),
                acquire_time: Some(MicroTime(renewed)),
                lease_duration_seconds: Some(seconds),
                lease_transitions: Some(3),
                ..LeaseSpec::default()
            }),
        }
    }

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + seconds).unwrap_or(Timestamp::UNIX_EPOCH)
    }

    #[test]
    fn a_missing_lease_is_created_with_us_as_holder() {
        let Decision::Create(spec) = decide(None, "a", at(0), &Timings::default()) else {
            panic!("expected create");
        };
        assert_eq!(spec.holder_identity.as_deref(), Some("a"));
        assert_eq!(spec.lease_duration_seconds, Some(15));
        assert_eq!(spec.lease_transitions, Some(0));
    }

    #[test]
    fn a_valid_lease_of_another_holder_is_left_alone() {
        let held = lease("b", at(0), 15);
        assert_eq!(
            decide(Some(&held), "a", at(14), &Timings::default()),
            Decision::Wait
        );
    }

    #[test]
    fn an_expired_lease_is_taken_over_with_one_more_transition() {
        let held = lease("b", at(0), 15);
        let Decision::Write(spec) = decide(Some(&held), "a", at(16), &Timings::default()) else {
            panic!("expected takeover");
        };
        assert_eq!(spec.holder_identity.as_deref(), Some("a"));
        assert_eq!(spec.lease_transitions, Some(4));
        assert_eq!(spec.acquire_time, Some(MicroTime(at(16))));
    }

    #[test]
    fn our_own_lease_is_renewed_keeping_its_acquire_time() {
        let held = lease("a", at(0), 15);
        let Decision::Write(spec) = decide(Some(&held), "a", at(5), &Timings::default()) else {
            panic!("expected renewal");
        };
        assert_eq!(spec.renew_time, Some(MicroTime(at(5))));
        assert_eq!(spec.acquire_time, Some(MicroTime(at(0))));
        assert_eq!(spec.lease_transitions, Some(3));
    }

    #[test]
    fn a_released_lease_is_free_at_once() {
        let mut released = lease("b", at(0), 1);
        if let Some(spec) = released.spec.as_mut() {
            spec.holder_identity = None;
        }
        assert!(matches!(
            decide(Some(&released), "a", at(0), &Timings::default()),
            Decision::Write(_)
        ));
    }
}

#[cfg(test)]
mod election_tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use shoal_apiserver::rest::Api as Server;
    use shoal_store::MemStore;

    use super::*;

    /// A client of an in-memory API server.
    async fn api_client() -> Result<kube::Client, Box<dyn std::error::Error>> {
        let server = Arc::new(Server::new(
            Arc::new(MemStore::new(Default::default())),
            "127.0.0.1:6443".into(),
        ));
        server.bootstrap().await.map_err(|e| e.message)?;
        Ok(shoal_apiserver::in_process::client(server, "test", &[]))
    }

    fn quick() -> Timings {
        Timings {
            lease_duration: Duration::from_secs(2),
            renew_deadline: Duration::from_millis(1500),
            retry_period: Duration::from_millis(100),
        }
    }

    /// Two electors on one API: exactly one works; when it shuts down (releasing the Lease)
    /// the other takes over.
    #[tokio::test]
    async fn one_leader_at_a_time_and_a_handover_on_release(
    ) -> Result<(), Box<dyn std::error::Error>> {
        let client = api_client().await?;
        let working = Arc::new(AtomicUsize::new(0));
        let max_working = Arc::new(AtomicUsize::new(0));
        let started = Arc::new(AtomicUsize::new(0));
        let mut stops = Vec::new();
        let mut tasks = Vec::new();
        for identity in ["a", "b"] {
            let elector = LeaderElector::new(
                client.clone(),
                "kube-system",
                "test-lease",
                identity,
                quick(),
            );
            let (stop, stopped) = watch::channel(false);
            let (working, max_working, started) =
                (working.clone(), max_working.clone(), started.clone());
            tasks.push(tokio::spawn(elector.run(stopped, move |mut drain| {
                let (working, max_working, started) =
                    (working.clone(), max_working.clone(), started.clone());
                async move {
                    started.fetch_add(1, Ordering::SeqCst);
                    let now = working.fetch_add(1, Ordering::SeqCst) + 1;
                    max_working.fetch_max(now, Ordering::SeqCst);
                    let _ = drain.wait_for(|d| *d).await;
                    working.fetch_sub(1, Ordering::SeqCst);
                }
            })));
            stops.push(stop);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(started.load(Ordering::SeqCst), 1, "exactly one leader");
        let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-system");
        let holder = leases
            .get("test-lease")
            .await?
            .spec
            .and_then(|s| s.holder_identity);
        let first = holder.clone().ok_or("no holder")?;
        let index = usize::from(first == "b");
        let _ = stops[index].send(true);
        // The other takes over well before the 2 s lease would have expired on its own.
        tokio::time::sleep(Duration::from_millis(800)).await;
        assert_eq!(started.load(Ordering::SeqCst), 2, "the other took over");
        let holder = leases
            .get("test-lease")
            .await?
            .spec
            .and_then(|s| s.holder_identity);
        assert_ne!(holder, Some(first));
        assert_eq!(max_working.load(Ordering::SeqCst), 1, "never two at once");
        for stop in &stops {
            let _ = stop.send(true);
        }
        for task in tasks {
            task.await?;
        }
        Ok(())
    }

    /// Work that returns, or panics, while its elector leads is started again: a control loop
    /// must never stop silently while the Lease says it runs.
    #[tokio::test]
    async fn work_that_ends_or_panics_while_leading_is_restarted(
    ) -> Result<(), Box<dyn std::error::Error>> {
        let client = api_client().await?;
        let elector = LeaderElector::new(client, "kube-system", "restart-lease", "a", quick());
        let started = Arc::new(AtomicUsize::new(0));
        let (stop, stopped) = watch::channel(false);
        let counter = started.clone();
        let task = tokio::spawn(elector.run(stopped, move |mut drain| {
            let counter = counter.clone();
            async move {
                match counter.fetch_add(1, Ordering::SeqCst) {
                    0 => {}                                      // returns at once
                    1 => panic!("a loop panicked (on purpose)"), // panics
                    _ => {
                        let _ = drain.wait_for(|d| *d).await;
                    }
                }
            }
        }));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while started.load(Ordering::SeqCst) < 3 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(
            started.load(Ordering::SeqCst),
            3,
            "restarted after ending and panicking"
        );
        // Work that keeps running is not started again.
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(started.load(Ordering::SeqCst), 3);
        let _ = stop.send(true);
        task.await?;
        Ok(())
    }
}
