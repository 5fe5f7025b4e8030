//! The cron dialect (every syntax form and its errors, next times across month, year and
//! daylight-saving boundaries) and CronJob plans on fixtures.
#![allow(clippy::unwrap_used)]

use super::*;
use crate::testing::{cron_job, job};

/// An instant from RFC 3339 text.
fn ts(text: &str) -> Timestamp {
    text.parse().unwrap()
}

fn t(text: &str) -> Time {
    Time(ts(text))
}

/// The next `count` times after `after`, in UTC.
fn next_times(spec: &str, after: &str, count: usize) -> Vec<String> {
    next_times_in(spec, after, count, &TimeZone::UTC)
}

fn next_times_in(spec: &str, after: &str, count: usize, zone: &TimeZone) -> Vec<String> {
    let schedule = Schedule::parse(spec).unwrap();
    let mut result = Vec::new();
    let mut at = ts(after);
    for _ in 0..count {
        at = schedule.next(at, zone).unwrap();
        result.push(at.to_string());
    }
    result
}

#[test]
fn fields_lists_ranges_steps_and_names() {
    assert_eq!(
        next_times("*/20 * * * *", "2024-01-01T00:00:00Z", 3),
        [
            "2024-01-01T00:20:00Z",
            "2024-01-01T00:40:00Z",
            "2024-01-01T01:00:00Z"
        ]
    );
    assert_eq!(
        next_times("5,10-11 9 * * *", "2024-01-01T09:06:00Z", 3),
        [
            "2024-01-01T09:10:00Z",
            "2024-01-01T09:11:00Z",
            "2024-01-02T09:05:00Z"
        ]
    );
    // "N/step" runs from N to the maximum.
    assert_eq!(
        next_times("50/5 * * * *", "2024-01-01T00:00:00Z", 3),
        [
            "2024-01-01T00:50:00Z",
            "2024-01-01T00:55:00Z",
            "2024-01-01T01:50:00Z"
        ]
    );
    assert_eq!(
        next_times("0 8-18/5 * * *", "2024-01-01T00:00:00Z", 4),
        [
            "2024-01-01T08:00:00Z",
            "2024-01-01T13:00:00Z",
            "2024-01-01T18:00:00Z",
            "2024-01-02T08:00:00Z"
        ]
    );
    // Names, any case; 2024-01-01 is a Monday.
    assert_eq!(
        next_times("0 12 * jan,Mar sat,Sun", "2024-01-01T00:00:00Z", 3),
        [
            "2024-01-06T12:00:00Z",
            "2024-01-07T12:00:00Z",
            "2024-01-13T12:00:00Z"
        ]
    );
    assert_eq!(
        Schedule::parse("0 0 * * 0").unwrap(),
        Schedule::parse("0 0 * * SUN").unwrap()
    );
    // "?" is "*".
    assert_eq!(
        Schedule::parse("0 0 ? * ?").unwrap(),
        Schedule::parse("0 0 * * *").unwrap()
    );
    // Whitespace between fields is free.
    assert_eq!(
        Schedule::parse("  0\t0  *  * * ").unwrap(),
        Schedule::parse("0 0 * * *").unwrap()
    );
}

#[test]
fn day_of_month_and_day_of_week_combine_as_in_cron() {
    // Both restricted: either matches (the 13th, or any Friday).
    assert_eq!(
        next_times("0 0 13 * 5", "2024-09-01T00:00:00Z", 4),
        [
            "2024-09-06T00:00:00Z",
            "2024-09-13T00:00:00Z",
            "2024-09-20T00:00:00Z",
            "2024-09-27T00:00:00Z"
        ]
    );
    // One a star: both must match (every Friday).
    assert_eq!(
        next_times("0 0 * * 5", "2024-09-01T00:00:00Z", 2),
        ["2024-09-06T00:00:00Z", "2024-09-13T00:00:00Z"]
    );
    // "*/2" is restricted (a step above 1 clears the star): odd days OR Fridays.
    assert_eq!(
        next_times("0 0 */2 * 5", "2024-09-01T12:00:00Z", 3),
        [
            "2024-09-03T00:00:00Z",
            "2024-09-05T00:00:00Z",
            "2024-09-06T00:00:00Z"
        ]
    );
    // "*/1" keeps the star: every day AND Friday.
    assert_eq!(
        next_times("0 0 */1 * 5", "2024-09-01T12:00:00Z", 1),
        ["2024-09-06T00:00:00Z"]
    );
}

#[test]
fn descriptors() {
    let from = "2024-05-15T10:30:00Z";
    assert_eq!(next_times("@yearly", from, 1), ["2025-01-01T00:00:00Z"]);
    assert_eq!(next_times("@annually", from, 1), ["2025-01-01T00:00:00Z"]);
    assert_eq!(next_times("@monthly", from, 1), ["2024-06-01T00:00:00Z"]);
    // 2024-05-15 is a Wednesday: the next Sunday is the 19th.
    assert_eq!(next_times("@weekly", from, 1), ["2024-05-19T00:00:00Z"]);
    assert_eq!(next_times("@daily", from, 1), ["2024-05-16T00:00:00Z"]);
    assert_eq!(next_times("@midnight", from, 1), ["2024-05-16T00:00:00Z"]);
    assert_eq!(
        next_times("@hourly", from, 2),
        ["2024-05-15T11:00:00Z", "2024-05-15T12:00:00Z"]
    );
    assert_eq!(
        next_times("@every 1h30m", "2024-05-15T10:30:00.700Z", 2),
        ["2024-05-15T12:00:00Z", "2024-05-15T13:30:00Z"]
    );
    // Below a second rounds up to one; fractions of a second are dropped.
    assert_eq!(next_times("@every 10ms", from, 1), ["2024-05-15T10:30:01Z"]);
    assert_eq!(next_times("@every 1.5s", from, 1), ["2024-05-15T10:30:01Z"]);
}

#[test]
fn next_crosses_month_and_year_boundaries() {
    assert_eq!(
        next_times("0 0 1 * *", "2024-12-15T08:00:00Z", 2),
        ["2025-01-01T00:00:00Z", "2025-02-01T00:00:00Z"]
    );
    assert_eq!(
        next_times("59 23 31 12 *", "2024-12-31T23:59:00Z", 1),
        ["2025-12-31T23:59:00Z"]
    );
    // The 31st skips the months without one.
    assert_eq!(
        next_times("0 0 31 * *", "2024-01-31T00:00:00Z", 3),
        [
            "2024-03-31T00:00:00Z",
            "2024-05-31T00:00:00Z",
            "2024-07-31T00:00:00Z"
        ]
    );
    // Leap days come every four years (2100 is not one, but that is past the horizon).
    assert_eq!(
        next_times("0 0 29 2 *", "2024-03-01T00:00:00Z", 2),
        ["2028-02-29T00:00:00Z", "2032-02-29T00:00:00Z"]
    );
    // A time exactly on the schedule is not its own next time.
    assert_eq!(
        next_times("30 * * * *", "2024-01-01T10:30:00Z", 1),
        ["2024-01-01T11:30:00Z"]
    );
    // A date that never exists: nothing within five years.
    let never = Schedule::parse("0 0 30 2 *").unwrap();
    assert_eq!(never.next(ts("2024-01-01T00:00:00Z"), &TimeZone::UTC), None);
}

#[test]
fn next_in_a_time_zone_follows_daylight_saving() {
    let new_york = time_zone(Some("America/New_York")).unwrap();
    // 09:00 local is 14:00 UTC in winter and 13:00 UTC in summer.
    assert_eq!(
        next_times_in("0 9 * * *", "2024-03-09T00:00:00Z", 3, &new_york),
        [
            "2024-03-09T14:00:00Z",
            "2024-03-10T13:00:00Z",
            "2024-03-11T13:00:00Z"
        ]
    );
    // 02:30 does not exist on 2024-03-10 in New York: that day is skipped.
    assert_eq!(
        next_times_in("30 2 * * *", "2024-03-09T12:00:00Z", 2, &new_york),
        ["2024-03-11T06:30:00Z", "2024-03-12T06:30:00Z"]
    );
    // 01:30 happens twice on 2024-11-03: once on each offset.
    assert_eq!(
        next_times_in("30 1 * * *", "2024-11-03T04:00:00Z", 2, &new_york),
        ["2024-11-03T05:30:00Z", "2024-11-03T06:30:00Z"]
    );
    assert_eq!(
        time_zone(Some("Etc/UTC")).unwrap().iana_name(),
        Some("Etc/UTC")
    );
    assert_eq!(time_zone(Some("UTC")).unwrap().iana_name(), Some("UTC"));
    assert_eq!(time_zone(None).unwrap(), TimeZone::UTC);
    for bad in ["", "Local", "local", "Mars/Olympus", "america/new_york"] {
        assert_eq!(
            time_zone(Some(bad)),
            Err(CronJobError::UnknownTimeZone(bad.to_string())),
            "{bad:?}"
        );
    }
}

#[test]
fn invalid_schedules_are_errors() {
    use ScheduleError::*;
    let err = |spec: &str| Schedule::parse(spec).unwrap_err();
    assert_eq!(err(""), Empty);
    assert_eq!(err("TZ=UTC 0 0 * * *"), TimeZoneInSchedule);
    assert_eq!(err("CRON_TZ=Europe/Paris 0 0 * * *"), TimeZoneInSchedule);
    assert_eq!(
        err("0 0 * *"),
        FieldCount {
            found: 4,
            spec: "0 0 * *".into()
        }
    );
    assert!(matches!(err("0 0 0 * * *"), FieldCount { found: 6, .. }));
    assert_eq!(
        err("@fortnightly"),
        UnknownDescriptor("@fortnightly".into())
    );
    assert_eq!(err("@Daily"), UnknownDescriptor("@Daily".into()));
    assert_eq!(err("@every soon"), InvalidDuration("@every soon".into()));
    assert_eq!(err("@every 5"), InvalidDuration("@every 5".into()));
    assert_eq!(err("x 0 * * *"), NotANumber("x".into()));
    assert_eq!(err("0 0 * foo *"), NotANumber("foo".into()));
    assert!(matches!(
        err("60 * * * *"),
        AboveMaximum {
            end: 60,
            max: 59,
            ..
        }
    ));
    assert!(matches!(err("0 24 * * *"), AboveMaximum { end: 24, .. }));
    assert!(matches!(
        err("0 0 0 * *"),
        BelowMinimum {
            start: 0,
            min: 1,
            ..
        }
    ));
    assert!(matches!(err("0 0 * 13 *"), AboveMaximum { .. }));
    // Sunday is 0 only.
    assert!(matches!(
        err("0 0 * * 7"),
        AboveMaximum { end: 7, max: 6, .. }
    ));
    assert!(matches!(
        err("0 0 * * 5-2"),
        Reversed {
            start: 5,
            end: 2,
            ..
        }
    ));
    // Ranges do not wrap around the week.
    assert!(matches!(
        err("0 0 * * sat-sun"),
        Reversed {
            start: 6,
            end: 0,
            ..
        }
    ));
    assert_eq!(err("*/0 * * * *"), ZeroStep("*/0".into()));
    assert_eq!(err("1-2-3 * * * *"), TooManyHyphens("1-2-3".into()));
    assert_eq!(err("*/2/3 * * * *"), TooManySlashes("*/2/3".into()));
    assert_eq!(err("-1 * * * *"), NotANumber("".into()));
    assert_eq!(
        err("60 * * * *").to_string(),
        "end of range (60) above maximum (59): 60"
    );
}

const NS: &str = "default";

/// `hello` in `default`, created at `created`, on `schedule`, with `spec` merged in.
fn hello(schedule: &str, created: &str, spec: serde_json::Value) -> CronJob {
    let mut base = serde_json::json!({
        "schedule": schedule,
        "jobTemplate": {
            "metadata": {"labels": {"app": "hello"}, "annotations": {"team": "a"}},
            "spec": {"template": {"spec": {"restartPolicy": "OnFailure",
                "containers": [{"name": "hello", "image": "busybox"}]}}}
        }
    });
    for (key, value) in spec.as_object().unwrap() {
        base[key] = value.clone();
    }
    cron_job(serde_json::json!({
        "metadata": {"name": "hello", "namespace": NS, "uid": "cj-uid", "creationTimestamp": created},
        "spec": base
    }))
}

fn with_status(mut cj: CronJob, status: serde_json::Value) -> CronJob {
    cj.status = Some(serde_json::from_value(status).unwrap());
    cj
}

/// A Job of `hello`; `finished` is `None`, `Some("Complete")` or `Some("Failed")`.
fn child(name: &str, started: &str, finished: Option<&str>) -> Job {
    let conditions = match finished {
        Some(kind) => serde_json::json!([{"type": kind, "status": "True"}]),
        None => serde_json::json!([]),
    };
    let completion = if finished == Some("Complete") {
        serde_json::json!(started)
    } else {
        serde_json::Value::Null
    };
    job(serde_json::json!({
        "metadata": {"name": name, "namespace": NS, "uid": format!("uid-{name}"),
            "ownerReferences": [{"apiVersion": "batch/v1", "kind": "CronJob", "name": "hello",
                "uid": "cj-uid", "controller": true}]},
        "spec": {"template": {}},
        "status": {"startTime": started, "completionTime": completion, "conditions": conditions}
    }))
}

fn reference(name: &str) -> serde_json::Value {
    serde_json::json!({"apiVersion": "batch/v1", "kind": "Job", "name": name,
        "namespace": NS, "uid": format!("uid-{name}")})
}

fn reasons(plan: &CronJobPlan) -> Vec<&str> {
    plan.events.iter().map(|e| e.reason.as_str()).collect()
}

fn deleted(plan: &CronJobPlan) -> Vec<&str> {
    plan.delete.iter().map(|d| d.name.as_str()).collect()
}

#[test]
fn creates_the_job_for_the_due_time_and_requeues_for_the_next() {
    let cj = hello("*/5 * * * *", "2024-01-01T10:01:00Z", serde_json::json!({}));
    // Nothing due yet: wait for 10:05 (+100 ms).
    let early = plan(&cj, &[], &t("2024-01-01T10:03:00Z")).unwrap();
    assert!(early.is_noop());
    assert_eq!(early.requeue_after, Some(Duration::from_millis(120_100)));

    let plan = plan(&cj, &[], &t("2024-01-01T10:05:00.200Z")).unwrap();
    let created = plan.create.clone().unwrap();
    let scheduled = ts("2024-01-01T10:05:00Z");
    let name = format!("hello-{}", scheduled.as_second() / 60);
    assert_eq!(created.metadata.name.as_deref(), Some(name.as_str()));
    assert_eq!(created.metadata.namespace.as_deref(), Some(NS));
    assert_eq!(created.metadata.labels.as_ref().unwrap()["app"], "hello");
    let annotations = created.metadata.annotations.as_ref().unwrap();
    assert_eq!(annotations["team"], "a");
    assert_eq!(
        annotations[SCHEDULED_TIMESTAMP_ANNOTATION],
        "2024-01-01T10:05:00Z"
    );
    let owner = &created.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.uid.as_str(), owner.controller),
        ("CronJob", "cj-uid", Some(true))
    );
    assert_eq!(
        created
            .spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .as_ref()
            .unwrap()
            .containers[0]
            .image
            .as_deref(),
        Some("busybox")
    );
    // Next is 10:10, counted from the time just scheduled.
    assert_eq!(plan.requeue_after, Some(Duration::from_millis(299_900)));
    assert!(!plan.status_changed);

    let mut made = created.clone();
    made.metadata.uid = Some("new-uid".into());
    made.metadata.resource_version = Some("7".into());
    let status = plan.status_after_create(&made);
    assert_eq!(status.last_schedule_time, Some(Time(scheduled)));
    let active = status.active.unwrap();
    assert_eq!(active.len(), 1);
    assert_eq!(active[0].uid.as_deref(), Some("new-uid"));
    assert_eq!(active[0].kind.as_deref(), Some("Job"));
    assert_eq!(active[0].resource_version.as_deref(), Some("7"));
    assert_eq!(
        CronJobPlan::created_event(&made).message,
        format!("Created job {name}")
    );

    // Once recorded, the same time is not scheduled again.
    let recorded = with_status(
        cj.clone(),
        serde_json::json!({"lastScheduleTime": "2024-01-01T10:05:00Z",
            "active": [reference(&name)]}),
    );
    let mut running = child(&name, "2024-01-01T10:05:01Z", None);
    running.metadata.uid = Some(format!("uid-{name}"));
    let again = super::plan(&recorded, &[running], &t("2024-01-01T10:06:00Z")).unwrap();
    assert!(again.is_noop(), "{again:?}");
    assert_eq!(again.requeue_after, Some(Duration::from_millis(240_100)));
}

#[test]
fn the_scheduled_timestamp_is_written_in_the_time_zone() {
    let cj = hello(
        "0 9 * * *",
        "2024-07-01T00:00:00Z",
        serde_json::json!({"timeZone": "Europe/Paris"}),
    );
    let plan = plan(&cj, &[], &t("2024-07-01T07:00:30Z")).unwrap();
    let created = plan.create.unwrap();
    assert_eq!(
        created.metadata.annotations.unwrap()[SCHEDULED_TIMESTAMP_ANNOTATION],
        "2024-07-01T09:00:00+02:00"
    );
    // The next 09:00 Paris time is 07:00 UTC tomorrow.
    assert_eq!(
        plan.requeue_after,
        Some(Duration::from_secs(24 * 3600 - 30) + NEXT_SCHEDULE_DELTA)
    );
}

#[test]
fn concurrency_policies() {
    let status = serde_json::json!({"lastScheduleTime": "2024-01-01T10:00:00Z",
        "active": [reference("hello-old")]});
    let running = child("hello-old", "2024-01-01T10:00:01Z", None);
    let now = t("2024-01-01T11:00:10Z");
    let policy = |name: &str| {
        with_status(
            hello(
                "0 * * * *",
                "2024-01-01T09:30:00Z",
                serde_json::json!({"concurrencyPolicy": name}),
            ),
            status.clone(),
        )
    };

    let allow = plan(&policy("Allow"), std::slice::from_ref(&running), &now).unwrap();
    assert!(allow.create.is_some());
    assert!(allow.delete.is_empty());
    let made = allow.create.clone().unwrap();
    assert_eq!(allow.status_after_create(&made).active.unwrap().len(), 2);

    let forbid = plan(&policy("Forbid"), std::slice::from_ref(&running), &now).unwrap();
    assert!(forbid.create.is_none());
    assert_eq!(reasons(&forbid), ["JobAlreadyActive"]);
    // Not scheduled, so the due time stays due; wake at the next one.
    assert_eq!(
        forbid.requeue_after,
        Some(Duration::from_secs(3590) + NEXT_SCHEDULE_DELTA)
    );
    // Forbid starts once the running Job finished.
    let done = child("hello-old", "2024-01-01T10:00:01Z", Some("Complete"));
    let free = plan(&policy("Forbid"), &[done], &now).unwrap();
    assert!(free.create.is_some());
    assert_eq!(reasons(&free), ["SawCompletedJob"]);

    let replace = plan(&policy("Replace"), &[running], &now).unwrap();
    assert_eq!(deleted(&replace), ["hello-old"]);
    assert_eq!(replace.delete[0].propagation_policy, "Background");
    assert!(replace.create.is_some());
    assert_eq!(reasons(&replace), ["SuccessfulDelete"]);
    let made = replace.create.clone().unwrap();
    assert_eq!(replace.status_after_create(&made).active.unwrap().len(), 1);
}

#[test]
fn missed_schedules_run_only_the_most_recent() {
    let cj = with_status(
        hello("0 * * * *", "2024-01-01T00:00:00Z", serde_json::json!({})),
        serde_json::json!({"lastScheduleTime": "2024-01-01T05:00:00Z"}),
    );
    // Down from 05:00 to 09:30: 06:00, 07:00, 08:00 and 09:00 were missed; only 09:00 runs.
    let plan = plan(&cj, &[], &t("2024-01-01T09:30:00Z")).unwrap();
    let scheduled = ts("2024-01-01T09:00:00Z");
    assert_eq!(
        plan.create.unwrap().metadata.name,
        Some(format!("hello-{}", scheduled.as_second() / 60))
    );
    assert!(plan.events.is_empty());

    // More than 100 missed: still the most recent, with a warning.
    let stale = with_status(
        hello("0 * * * *", "2024-01-01T00:00:00Z", serde_json::json!({})),
        serde_json::json!({"lastScheduleTime": "2024-01-01T00:00:00Z"}),
    );
    let plan = super::plan(&stale, &[], &t("2024-01-10T00:30:00Z")).unwrap();
    assert_eq!(reasons(&plan), ["TooManyMissedTimes"]);
    assert_eq!(
        plan.create.unwrap().metadata.annotations.unwrap()[SCHEDULED_TIMESTAMP_ANNOTATION],
        "2024-01-10T00:00:00Z"
    );
}

#[test]
fn starting_deadline_skips_times_missed_too_long_ago() {
    let cj = with_status(
        hello(
            "0 * * * *",
            "2024-01-01T00:00:00Z",
            serde_json::json!({"startingDeadlineSeconds": 600}),
        ),
        serde_json::json!({"lastScheduleTime": "2024-01-01T10:00:00Z"}),
    );
    // 12:00 was 30 minutes ago, past the 10-minute deadline: nothing starts.
    let late = plan(&cj, &[], &t("2024-01-01T12:30:00Z")).unwrap();
    assert!(late.create.is_none());
    assert_eq!(
        late.requeue_after,
        Some(Duration::from_secs(1800) + NEXT_SCHEDULE_DELTA)
    );
    // 5 minutes late is within the deadline.
    let in_time = plan(&cj, &[], &t("2024-01-01T12:05:00Z")).unwrap();
    assert!(in_time.create.is_some());
    // With >100 missed times, the deadline also spares the warning.
    let stale = with_status(
        hello(
            "* * * * *",
            "2024-01-01T00:00:00Z",
            serde_json::json!({"startingDeadlineSeconds": 120}),
        ),
        serde_json::json!({"lastScheduleTime": "2024-01-01T00:00:00Z"}),
    );
    let plan = super::plan(&stale, &[], &t("2024-01-02T00:00:30Z")).unwrap();
    assert!(plan.create.is_some());
    assert!(plan.events.is_empty());
}

#[test]
fn history_limits_delete_the_oldest_finished_jobs() {
    let cj = hello(
        "0 0 1 1 *",
        "2024-01-01T00:00:00Z",
        serde_json::json!({"successfulJobsHistoryLimit": 2}),
    );
    let jobs = vec![
        child("ok-3", "2024-03-01T00:00:00Z", Some("Complete")),
        child("ok-1", "2024-01-01T00:00:00Z", Some("Complete")),
        child("ok-4", "2024-04-01T00:00:00Z", Some("Complete")),
        child("ok-2", "2024-02-01T00:00:00Z", Some("Complete")),
        child("bad-2", "2024-02-15T00:00:00Z", Some("Failed")),
        child("bad-1", "2024-01-15T00:00:00Z", Some("Failed")),
        child("bad-3", "2024-03-15T00:00:00Z", Some("Failed")),
    ];
    let plan = plan(&cj, &jobs, &t("2024-05-01T00:00:00Z")).unwrap();
    // Keep 2 successful (default 3 overridden) and 1 failed (the default).
    assert_eq!(deleted(&plan), ["ok-1", "ok-2", "bad-1", "bad-2"]);
    assert!(plan.delete.iter().all(|d| d.uid.starts_with("uid-")));
    assert_eq!(
        reasons(&plan),
        [
            "SuccessfulDelete",
            "SuccessfulDelete",
            "SuccessfulDelete",
            "SuccessfulDelete"
        ]
    );
    // The latest completion is remembered.
    assert_eq!(
        plan.status.last_successful_time,
        Some(t("2024-04-01T00:00:00Z"))
    );
    assert!(plan.status_changed);

    // A limit of 0 keeps none; Jobs of another owner are never touched.
    let mut stranger = child("stranger", "2023-01-01T00:00:00Z", Some("Complete"));
    stranger.metadata.owner_references.as_mut().unwrap()[0].uid = "other".into();
    let none = hello(
        "0 0 1 1 *",
        "2024-01-01T00:00:00Z",
        serde_json::json!({"successfulJobsHistoryLimit": 0, "failedJobsHistoryLimit": 0}),
    );
    let plan = super::plan(
        &none,
        &[jobs[0].clone(), jobs[4].clone(), stranger],
        &t("2024-05-01T00:00:00Z"),
    )
    .unwrap();
    assert_eq!(deleted(&plan), ["ok-3", "bad-2"]);
}

#[test]
fn active_list_follows_the_jobs() {
    let cj = with_status(
        hello("0 0 1 1 *", "2024-01-01T00:00:00Z", serde_json::json!({})),
        serde_json::json!({"lastScheduleTime": "2024-01-01T00:00:00Z",
            "active": [reference("done"), reference("gone"), reference("running")]}),
    );
    let jobs = vec![
        child("done", "2024-01-01T00:00:00Z", Some("Complete")),
        child("running", "2024-01-01T00:00:00Z", None),
        child("stray", "2024-01-01T00:00:00Z", None),
    ];
    let plan = plan(&cj, &jobs, &t("2024-02-01T00:00:00Z")).unwrap();
    let active: Vec<String> = plan
        .status
        .active
        .clone()
        .unwrap()
        .into_iter()
        .map(|r| r.name.unwrap())
        .collect();
    assert_eq!(active, ["running"]);
    assert_eq!(
        reasons(&plan),
        ["SawCompletedJob", "UnexpectedJob", "MissingJob"]
    );
    assert_eq!(
        plan.events[0].message,
        "Saw completed job: done, status: Complete"
    );
    assert!(plan.status_changed);
    // Only noticed as successful once it left the active list.
    assert_eq!(plan.status.last_successful_time, None);
}

#[test]
fn suspended_or_deleted_cron_jobs_only_keep_their_status() {
    let suspended = hello(
        "* * * * *",
        "2024-01-01T00:00:00Z",
        serde_json::json!({"suspend": true}),
    );
    let plan = plan(&suspended, &[], &t("2024-01-01T01:00:00Z")).unwrap();
    assert!(plan.is_noop());
    assert_eq!(plan.requeue_after, None);
    // Even an unparseable schedule is not looked at while suspended.
    let mut broken = suspended.clone();
    broken.spec.as_mut().unwrap().schedule = "nonsense".into();
    assert!(super::plan(&broken, &[], &t("2024-01-01T01:00:00Z")).is_ok());

    let mut deleting = hello("* * * * *", "2024-01-01T00:00:00Z", serde_json::json!({}));
    deleting.metadata.deletion_timestamp = Some(t("2024-01-01T00:30:00Z"));
    let plan = super::plan(&deleting, &[], &t("2024-01-01T01:00:00Z")).unwrap();
    assert!(plan.create.is_none());
    assert_eq!(plan.requeue_after, None);
}

#[test]
fn schedules_and_zones_that_cannot_run_are_errors() {
    let now = t("2024-01-01T01:00:00Z");
    let with = |schedule: &str, spec: serde_json::Value| {
        plan(&hello(schedule, "2024-01-01T00:00:00Z", spec), &[], &now)
    };
    let err = with("61 * * * *", serde_json::json!({})).unwrap_err();
    assert_eq!(err.reason(), "UnparseableSchedule");
    assert!(err
        .to_string()
        .starts_with("unparseable schedule: \"61 * * * *\" : end of range"));
    assert_eq!(
        with("TZ=UTC * * * * *", serde_json::json!({}))
            .unwrap_err()
            .reason(),
        "UnparseableSchedule"
    );
    let err = with("0 0 30 2 *", serde_json::json!({})).unwrap_err();
    assert_eq!(err, CronJobError::InvalidSchedule("0 0 30 2 *".into()));
    let err = with("* * * * *", serde_json::json!({"timeZone": "Nowhere/Land"})).unwrap_err();
    assert_eq!(err.reason(), "UnknownTimeZone");
    assert!(with("* * * * *", serde_json::json!({"timeZone": "Etc/UTC"})).is_ok());
}
