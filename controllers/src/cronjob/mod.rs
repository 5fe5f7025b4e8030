//! The CronJob controller's decisions (kube-controller-manager's `pkg/controller/cronjob`,
//! the v2 controller): which finished Jobs to delete beyond the history limits, which Jobs
//! left `status.active`, whether a schedule time is due (the most recent one since
//! `status.lastScheduleTime` or the creation, within `startingDeadlineSeconds`), what the
//! concurrency policy allows, the Job to create, and when to sync again.
//!
//! Schedules follow [`schedule`]'s cron dialect and are read in `spec.timeZone`: any IANA
//! zone, from the database bundled with jiff (kube-controller-manager embeds Go's
//! tzdata the same way). Without `spec.timeZone` Kubernetes uses the controller process'
//! local zone; here that is UTC, so a plan never depends on the host. A zone that is
//! empty, `Local` or unknown (names are case-sensitive, as in Go) is an error, as is any
//! `TZ=`/`CRON_TZ=` in the schedule.
//!
//! Jobs are the CronJob's when their controller reference carries its UID (Kubernetes
//! matches the owner's name only).

pub mod schedule;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use jiff::tz::TimeZone;
use jiff::Timestamp;
use k8s_openapi::api::batch::v1::{CronJob, CronJobStatus, Job};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

use crate::owner;
use crate::time::duration_from_nanos;

pub use crate::job::{ObjectToDelete, PlannedEvent};
pub use schedule::{Schedule, ScheduleError};

/// When the Job was scheduled, RFC 3339 in the CronJob's zone.
pub const SCHEDULED_TIMESTAMP_ANNOTATION: &str = "batch.kubernetes.io/cronjob-scheduled-timestamp";
pub const DEFAULT_SUCCESSFUL_JOBS_HISTORY_LIMIT: i32 = 3;
pub const DEFAULT_FAILED_JOBS_HISTORY_LIMIT: i32 = 1;
/// Added to every requeue so clock skew does not wake the controller just before the
/// schedule time (`nextScheduleDelta`).
pub const NEXT_SCHEDULE_DELTA: Duration = Duration::from_millis(100);
/// More missed start times than this earn a warning (`TooManyMissedTimes`).
pub const TOO_MANY_MISSED: i64 = 100;

/// The CronJob cannot be scheduled as written. The loop records a Warning event with
/// [`CronJobError::reason`] and the error's text, and does not requeue (a change to the
/// CronJob triggers the next sync).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CronJobError {
    #[error("unparseable schedule: {schedule:?} : {source}")]
    UnparseableSchedule {
        schedule: String,
        source: ScheduleError,
    },
    #[error("invalid timeZone: {0:?}: unknown time zone {0}")]
    UnknownTimeZone(String),
    /// A schedule that parses but never (or always) fires, like `0 0 30 2 *`.
    #[error("invalid schedule: {0} : time difference between two schedules is less than 1 second")]
    InvalidSchedule(String),
}

impl CronJobError {
    /// The event reason Kubernetes records.
    pub fn reason(&self) -> &'static str {
        match self {
            CronJobError::UnparseableSchedule { .. } => "UnparseableSchedule",
            CronJobError::UnknownTimeZone(_) => "UnknownTimeZone",
            CronJobError::InvalidSchedule(_) => "InvalidSchedule",
        }
    }
}

/// What one CronJob sync should do. The loop, in order:
/// 1. deletes `delete` (propagation `Background`, `uid` precondition): old finished Jobs
///    beyond the history limits, and under `Replace` the Jobs still running;
/// 2. creates `create` (a fixed name, so a schedule time never runs twice). On success
///    — or on AlreadyExists when the existing Job is controlled by this CronJob and not
///    yet in `status.active` — it writes [`CronJobPlan::status_after_create`] and records
///    [`CronJobPlan::created_event`]; on any other error it records `FailedCreate`
///    ("Error creating job: <err>"), writes `status` if `status_changed` and retries with
///    backoff;
/// 3. otherwise writes `status` if `status_changed`;
/// 4. records `events` (they assume the deletes succeed; a failed delete is recorded as
///    `FailedDelete` instead) and syncs again after `requeue_after`.
#[derive(Debug, Clone, PartialEq)]
pub struct CronJobPlan {
    pub delete: Vec<ObjectToDelete>,
    pub create: Option<Job>,
    /// The status without the Job to create.
    pub status: CronJobStatus,
    pub status_changed: bool,
    pub events: Vec<PlannedEvent>,
    /// Until the next schedule time (plus [`NEXT_SCHEDULE_DELTA`]), assuming `create`
    /// succeeds; `None` when suspended, being deleted or nothing will ever fire.
    pub requeue_after: Option<Duration>,
    scheduled_time: Option<Time>,
}

impl CronJobPlan {
    /// True when the plan writes nothing.
    pub fn is_noop(&self) -> bool {
        self.delete.is_empty() && self.create.is_none() && !self.status_changed
    }

    /// The status once `created` (the Job as the API returned it, with its UID) exists:
    /// it joins `status.active` and its schedule time becomes `lastScheduleTime`.
    pub fn status_after_create(&self, created: &Job) -> CronJobStatus {
        let mut status = self.status.clone();
        let meta = &created.metadata;
        let mut active = status.active.take().unwrap_or_default();
        active.push(ObjectReference {
            api_version: Some("batch/v1".to_string()),
            kind: Some("Job".to_string()),
            name: meta.name.clone(),
            namespace: meta.namespace.clone(),
            uid: meta.uid.clone(),
            resource_version: meta.resource_version.clone(),
            field_path: None,
        });
        status.active = Some(active);
        if let Some(time) = &self.scheduled_time {
            status.last_schedule_time = Some(time.clone());
        }
        status
    }

    /// The event for a created Job.
    pub fn created_event(created: &Job) -> PlannedEvent {
        PlannedEvent::normal(
            "SuccessfulCreate",
            format!(
                "Created job {}",
                created.metadata.name.as_deref().unwrap_or("")
            ),
        )
    }
}

/// The zone `spec.timeZone` names (UTC when unset).
pub fn time_zone(name: Option<&str>) -> Result<TimeZone, CronJobError> {
    let Some(name) = name else {
        return Ok(TimeZone::UTC);
    };
    let unknown = || CronJobError::UnknownTimeZone(name.to_string());
    if name.is_empty() || name.eq_ignore_ascii_case("local") {
        return Err(unknown());
    }
    let zone = TimeZone::get(name).map_err(|_| unknown())?;
    // jiff matches names case-insensitively; Go's LoadLocation does not.
    if zone.iana_name() != Some(name) {
        return Err(unknown());
    }
    Ok(zone)
}

/// How many start times were missed (`missedSchedulesType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Missed {
    None,
    Few,
    Many,
}

/// The inputs of the schedule arithmetic.
#[derive(Debug, Clone, Copy)]
struct Window<'a> {
    schedule: &'a Schedule,
    zone: &'a TimeZone,
    created: Timestamp,
    last_scheduled: Option<Timestamp>,
    starting_deadline_seconds: Option<i64>,
}

fn timestamp_plus_nanos(t: Timestamp, nanos: i128) -> Option<Timestamp> {
    Timestamp::from_nanosecond(t.as_nanosecond().checked_add(nanos)?).ok()
}

const NANOS_PER_SECOND: i128 = 1_000_000_000;

impl Window<'_> {
    fn next(&self, after: Timestamp) -> Option<Timestamp> {
        self.schedule.next(after, self.zone)
    }

    /// `mostRecentScheduleTime`: the time counted from (last schedule or creation, moved
    /// up to the starting deadline when `with_deadline`), the most recent schedule time
    /// after it that is not after `now`, and how many were missed. `Err` for a schedule
    /// whose consecutive times are not at least a second apart (or that never fires).
    ///
    /// Kubernetes estimates the number of missed times from the first interval and walks
    /// only the last two intervals before `now`; kept as is, so irregular schedules
    /// (`30 6-16/4 * * 1-5`) may not see a start missed longer ago, as in Kubernetes.
    #[allow(clippy::type_complexity)]
    fn most_recent(
        &self,
        now: Timestamp,
        with_deadline: bool,
    ) -> Result<(Timestamp, Option<Timestamp>, Missed), ()> {
        let mut earliest = self.last_scheduled.unwrap_or(self.created);
        if let (true, Some(seconds)) = (with_deadline, self.starting_deadline_seconds) {
            let deadline =
                timestamp_plus_nanos(now, -i128::from(seconds) * NANOS_PER_SECOND).ok_or(())?;
            if deadline > earliest {
                earliest = deadline;
            }
        }
        let t1 = self.next(earliest).ok_or(())?;
        let t2 = self.next(t1).ok_or(())?;
        if now < t1 {
            return Ok((earliest, None, Missed::None));
        }
        if now < t2 {
            return Ok((earliest, Some(t1), Missed::None));
        }
        let gap = t2.as_nanosecond() - t1.as_nanosecond();
        // Rounded to the second, half away from zero (Go's Duration.Round).
        let between = (gap + NANOS_PER_SECOND / 2).div_euclid(NANOS_PER_SECOND);
        if between < 1 {
            return Err(());
        }
        let elapsed = (now.as_nanosecond() - t1.as_nanosecond()) / NANOS_PER_SECOND;
        let missed = elapsed / between + 1;
        // Start one interval before the estimate so the walk finds the true most recent
        // time of schedules whose intervals vary.
        let start = timestamp_plus_nanos(t1, (missed - 2) * between * NANOS_PER_SECOND).ok_or(())?;
        let mut most_recent = None;
        let mut t = self.next(start);
        // The walk covers about two intervals; the bound only guards against surprises.
        for _ in 0..10_000 {
            match t {
                Some(time) if time <= now => {
                    most_recent = Some(time);
                    t = self.next(time);
                }
                _ => break,
            }
        }
        let missed = if i64::try_from(missed).unwrap_or(i64::MAX) > TOO_MANY_MISSED {
            Missed::Many
        } else if missed > 0 {
            Missed::Few
        } else {
            Missed::None
        };
        Ok((earliest, most_recent, missed))
    }

    /// `nextScheduleTimeDuration`: until the schedule time after the most recent one
    /// (ignoring the starting deadline), plus [`NEXT_SCHEDULE_DELTA`].
    fn requeue_after(&self, now: Timestamp) -> Option<Duration> {
        let base = match self.most_recent(now, false) {
            Err(()) => now,
            Ok((earliest, None, Missed::None)) => earliest,
            Ok((_, None, _)) => now,
            Ok((_, Some(recent), _)) => recent,
        };
        let next = self.next(base)?;
        let delta = i128::try_from(NEXT_SCHEDULE_DELTA.as_nanos()).unwrap_or(0);
        Some(duration_from_nanos(
            next.as_nanosecond() + delta - now.as_nanosecond(),
        ))
    }
}

/// The finished condition of a Job, `Complete` or `Failed` (`getFinishedStatus`).
fn finished_type(job: &Job) -> Option<&str> {
    job.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
        .map(|c| c.type_.as_str())
}

fn succeeded(job: &Job) -> bool {
    job.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| {
            c.iter()
                .any(|c| c.type_ == "Complete" && c.status == "True")
        })
}

fn name_of(job: &Job) -> &str {
    job.metadata.name.as_deref().unwrap_or("")
}

fn uid_of(job: &Job) -> &str {
    job.metadata.uid.as_deref().unwrap_or("")
}

fn start_time(job: &Job) -> Option<&Time> {
    job.status.as_ref()?.start_time.as_ref()
}

/// `<cronjob>-<scheduled time in minutes since the epoch>`.
pub fn job_name(cron_job_name: &str, scheduled: &Time) -> String {
    format!("{cron_job_name}-{}", scheduled.0.as_second().div_euclid(60))
}

/// Go's `time.RFC3339` in `zone` ("Z" for a zero offset).
fn rfc3339(t: Timestamp, zone: &TimeZone) -> String {
    let local = t.to_zoned(zone.clone());
    let base = local.strftime("%Y-%m-%dT%H:%M:%S").to_string();
    let offset = local.offset().seconds();
    if offset == 0 {
        return format!("{base}Z");
    }
    let sign = if offset < 0 { '-' } else { '+' };
    let minutes = offset.unsigned_abs() / 60;
    format!("{base}{sign}{:02}:{:02}", minutes / 60, minutes % 60)
}

/// The Job for `scheduled` (`getJobFromTemplate2`): the template's labels, annotations
/// (plus the scheduled timestamp) and spec, the fixed name and the controller reference.
pub fn job_from_template(cron_job: &CronJob, scheduled: &Time, zone: &TimeZone) -> Job {
    let template = cron_job.spec.as_ref().map(|s| &s.job_template);
    let meta = template
        .and_then(|t| t.metadata.clone())
        .unwrap_or_default();
    let mut annotations = meta.annotations.unwrap_or_default();
    annotations.insert(
        SCHEDULED_TIMESTAMP_ANNOTATION.to_string(),
        rfc3339(scheduled.0, zone),
    );
    let name = cron_job.metadata.name.as_deref().unwrap_or("");
    Job {
        metadata: ObjectMeta {
            name: Some(job_name(name, scheduled)),
            namespace: cron_job.metadata.namespace.clone(),
            labels: meta.labels.filter(|l| !l.is_empty()),
            annotations: Some(annotations),
            owner_references: Some(vec![owner::controller_ref(
                "batch/v1",
                "CronJob",
                name,
                cron_job.metadata.uid.as_deref().unwrap_or(""),
            )]),
            ..ObjectMeta::default()
        },
        spec: template.and_then(|t| t.spec.clone()),
        status: None,
    }
}

fn normalized(status: &CronJobStatus) -> CronJobStatus {
    CronJobStatus {
        active: status.active.clone().filter(|a| !a.is_empty()),
        last_schedule_time: status.last_schedule_time.clone(),
        last_successful_time: status.last_successful_time.clone(),
    }
}

/// Plans one sync of `cron_job` given the Jobs of its namespace at `now`.
pub fn plan(cron_job: &CronJob, jobs: &[Job], now: &Time) -> Result<CronJobPlan, CronJobError> {
    let spec = cron_job.spec.clone().unwrap_or_default();
    let uid = cron_job.metadata.uid.as_deref().unwrap_or("");
    let children: Vec<&Job> = jobs
        .iter()
        .filter(|j| j.metadata.namespace == cron_job.metadata.namespace)
        .filter(|j| owner::is_controlled_by(&j.metadata, uid))
        .collect();
    let observed = cron_job.status.clone().unwrap_or_default();
    let mut status = observed.clone();
    let mut active = status.active.take().unwrap_or_default();
    let mut plan = CronJobPlan {
        delete: Vec::new(),
        create: None,
        status: CronJobStatus::default(),
        status_changed: false,
        events: Vec::new(),
        requeue_after: None,
        scheduled_time: None,
    };

    // History cleanup (`cleanupFinishedJobs`), oldest start first.
    let limits = [
        (
            "Complete",
            spec.successful_jobs_history_limit
                .unwrap_or(DEFAULT_SUCCESSFUL_JOBS_HISTORY_LIMIT),
        ),
        (
            "Failed",
            spec.failed_jobs_history_limit
                .unwrap_or(DEFAULT_FAILED_JOBS_HISTORY_LIMIT),
        ),
    ];
    for (kind, limit) in limits {
        let mut finished: Vec<&Job> = children
            .iter()
            .copied()
            .filter(|j| finished_type(j) == Some(kind))
            .collect();
        let excess = finished
            .len()
            .saturating_sub(usize::try_from(limit).unwrap_or(0));
        finished.sort_by(|a, b| match (start_time(a), start_time(b)) {
            (Some(x), Some(y)) if x != y => x.cmp(y),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            _ => name_of(a).cmp(name_of(b)),
        });
        for job in finished.into_iter().take(excess) {
            plan.delete.push(delete_job(job));
            active.retain(|r| r.uid.as_deref() != Some(uid_of(job)));
            plan.events.push(PlannedEvent::normal(
                "SuccessfulDelete",
                format!("Deleted job {}", name_of(job)),
            ));
        }
    }

    // Reconcile `status.active` with the Jobs that exist.
    for job in &children {
        let found = active.iter().any(|r| r.uid.as_deref() == Some(uid_of(job)));
        let finished = finished_type(job);
        if !found && finished.is_none() {
            plan.events.push(PlannedEvent::warning(
                "UnexpectedJob",
                format!(
                    "Saw a job that the controller did not create or forgot: {}",
                    name_of(job)
                ),
            ));
        } else if let (true, Some(kind)) = (found, finished) {
            active.retain(|r| r.uid.as_deref() != Some(uid_of(job)));
            plan.events.push(PlannedEvent::normal(
                "SawCompletedJob",
                format!("Saw completed job: {}, status: {kind}", name_of(job)),
            ));
        } else if succeeded(job) {
            let completed = job.status.as_ref().and_then(|s| s.completion_time.clone());
            match (&status.last_successful_time, &completed) {
                (None, _) => status.last_successful_time = completed,
                (Some(last), Some(time)) if time > last => status.last_successful_time = completed,
                _ => {}
            }
        }
    }
    let existing: BTreeSet<&str> = children.iter().map(|j| uid_of(j)).collect();
    active.retain(|reference| {
        let gone = !existing.contains(reference.uid.as_deref().unwrap_or(""));
        if gone {
            plan.events.push(PlannedEvent::normal(
                "MissingJob",
                format!(
                    "Active job went missing: {}",
                    reference.name.as_deref().unwrap_or("")
                ),
            ));
        }
        !gone
    });

    let finish =
        |mut plan: CronJobPlan, active: Vec<ObjectReference>, mut status: CronJobStatus| {
            status.active = Some(active).filter(|a| !a.is_empty());
            plan.status_changed = normalized(&status) != normalized(&observed);
            plan.status = status;
            plan
        };

    // Being deleted: only the status is kept up to date.
    if cron_job.metadata.deletion_timestamp.is_some() {
        return Ok(finish(plan, active, status));
    }
    let zone = time_zone(spec.time_zone.as_deref())?;
    if spec.suspend.unwrap_or(false) {
        return Ok(finish(plan, active, status));
    }
    let schedule =
        Schedule::parse(&spec.schedule).map_err(|source| CronJobError::UnparseableSchedule {
            schedule: spec.schedule.clone(),
            source,
        })?;
    let mut window = Window {
        schedule: &schedule,
        zone: &zone,
        created: cron_job
            .metadata
            .creation_timestamp
            .as_ref()
            .map_or(Timestamp::UNIX_EPOCH, |t| t.0),
        last_scheduled: status.last_schedule_time.as_ref().map(|t| t.0),
        starting_deadline_seconds: spec.starting_deadline_seconds,
    };
    let now = now.0;
    let invalid = || CronJobError::InvalidSchedule(spec.schedule.clone());
    let (_, most_recent, missed) = window.most_recent(now, true).map_err(|()| invalid())?;
    let Some(scheduled) = most_recent.filter(|t| *t <= now) else {
        plan.requeue_after = window.requeue_after(now);
        return Ok(finish(plan, active, status));
    };
    if missed == Missed::Many {
        plan.events.push(PlannedEvent::warning(
            "TooManyMissedTimes",
            "too many missed start times. Set or decrease .spec.startingDeadlineSeconds or check clock skew",
        ));
    }
    let scheduled_time = Time(scheduled);
    if let Some(seconds) = spec.starting_deadline_seconds {
        let latest = timestamp_plus_nanos(scheduled, i128::from(seconds) * NANOS_PER_SECOND);
        if latest.is_some_and(|latest| latest < now) {
            let utc = scheduled.to_zoned(TimeZone::UTC);
            plan.events.push(PlannedEvent::warning(
                "MissSchedule",
                format!(
                    "Missed scheduled time to start a job: {}",
                    utc.strftime("%a, %d %b %Y %H:%M:%S %z")
                ),
            ));
            plan.requeue_after = window.requeue_after(now);
            return Ok(finish(plan, active, status));
        }
    }
    let name = job_name(
        cron_job.metadata.name.as_deref().unwrap_or(""),
        &scheduled_time,
    );
    let already = active.iter().any(|r| {
        r.name.as_deref() == Some(name.as_str()) && r.namespace == cron_job.metadata.namespace
    }) || status.last_schedule_time.as_ref() == Some(&scheduled_time);
    if already {
        plan.requeue_after = window.requeue_after(now);
        return Ok(finish(plan, active, status));
    }
    match spec.concurrency_policy.as_deref() {
        Some("Forbid") if !active.is_empty() => {
            plan.events.push(PlannedEvent::normal(
                "JobAlreadyActive",
                "Not starting job because prior execution is running and concurrency policy is Forbid",
            ));
            plan.requeue_after = window.requeue_after(now);
            return Ok(finish(plan, active, status));
        }
        Some("Replace") => {
            let running: BTreeMap<&str, &Job> = children.iter().map(|j| (uid_of(j), *j)).collect();
            for reference in std::mem::take(&mut active) {
                match running.get(reference.uid.as_deref().unwrap_or("")) {
                    Some(job) => {
                        plan.delete.push(delete_job(job));
                        plan.events.push(PlannedEvent::normal(
                            "SuccessfulDelete",
                            format!("Deleted job {}", name_of(job)),
                        ));
                    }
                    None => active.push(reference),
                }
            }
        }
        _ => {}
    }
    plan.create = Some(job_from_template(cron_job, &scheduled_time, &zone));
    plan.scheduled_time = Some(scheduled_time);
    // The next wake-up counts from the time just scheduled.
    window.last_scheduled = Some(scheduled);
    plan.requeue_after = window.requeue_after(now);
    Ok(finish(plan, active, status))
}

fn delete_job(job: &Job) -> ObjectToDelete {
    ObjectToDelete {
        name: name_of(job).to_string(),
        uid: uid_of(job).to_string(),
        propagation_policy: "Background",
    }
}
