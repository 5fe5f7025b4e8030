//! `shoal store`: the servers' replicated store seen from the command line — its members,
//! through any server's members endpoint with the cluster token (so it works on any machine
//! holding it) — and store snapshots, as k3s keeps etcd's: taken by the running server on
//! demand (its snapshot endpoint) or on a cron schedule keeping the newest N, listed from a
//! data dir, restored into a stopped server's data dir by a cluster reset
//! (`shoal_store::reset_cluster`), which `shoal server --cluster-reset` also runs.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use jiff::tz::TimeZone;
use jiff::Timestamp;
use shoal_agent::join::JoinClient;
use shoal_apiserver::join::{
    SnapshotRequest, SnapshotSaveError, StoreSnapshots, STORE_SNAPSHOTS_PATH,
};
use shoal_apiserver::sealed_bootstrap::{self, SEALED_BOOTSTRAP_KEY};
use shoal_common::join::{ServerBootstrap, StoreMember, MEMBERS_PATH, SERVER_USER};
use shoal_controllers::cronjob::Schedule;
use shoal_store::{Listed, RaftStore, RaftStoreConfig, ResetReport, SnapshotError, SnapshotInfo};

use crate::cli::{SnapshotCommand, StoreCommand, StoreTarget};

pub async fn run(command: StoreCommand) -> Result<()> {
    match command {
        StoreCommand::Members { target } => {
            let client = connect(&target).await?;
            let body = client.call("GET", MEMBERS_PATH, SERVER_USER, None).await?;
            let members: Vec<StoreMember> =
                serde_json::from_slice(&body).context("the server's member list")?;
            print!("{}", members_table(&members));
            Ok(())
        }
        StoreCommand::RemoveMember { target, id } => {
            let client = connect(&target).await?;
            client
                .call(
                    "DELETE",
                    &format!("{MEMBERS_PATH}?id={id}"),
                    SERVER_USER,
                    None,
                )
                .await?;
            println!("member {id} removed");
            Ok(())
        }
        StoreCommand::Snapshot(command) => snapshot(command).await,
    }
}

async fn snapshot(command: SnapshotCommand) -> Result<()> {
    match command {
        SnapshotCommand::Save { target, name } => {
            let client = connect(&target).await?;
            let request = serde_json::to_vec(&SnapshotRequest { name: Some(name) })?;
            let body = client
                .call("POST", STORE_SNAPSHOTS_PATH, SERVER_USER, Some(request))
                .await
                .context("saving a store snapshot")?;
            let info: SnapshotInfo =
                serde_json::from_slice(&body).context("the server's answer")?;
            println!("{}", info.path.display());
            Ok(())
        }
        SnapshotCommand::Ls {
            data_dir,
            store_snapshot_dir,
        } => {
            let dir = snapshot_dir(&data_dir, store_snapshot_dir.as_deref());
            let listed = shoal_store::list_snapshots(&dir)?;
            print!("{}", snapshots_table(&listed));
            Ok(())
        }
        SnapshotCommand::Restore {
            data_dir,
            file,
            token,
        } => {
            let mut config = RaftStoreConfig::new(data_dir.join("server").join("store"));
            // Only for a data dir without a store: one that has a store keeps the address
            // its membership records (what the server advertised).
            config.advertise = std::net::SocketAddr::new(
                crate::node::default_node_ip(),
                shoal_common::DEFAULT_HTTPS_PORT + 1,
            )
            .to_string();
            let keys = keys_to_restore(&data_dir.join("server"), &file, token.as_deref())?;
            let report = shoal_store::reset_cluster(&config, Some(&file))?;
            install_restored_keys(&data_dir.join("server"), keys.as_ref())?;
            println!("{}", reset_message(&report));
            Ok(())
        }
    }
}

/// `--cluster-reset`: makes the stopped store a one-member cluster (from `from`, else from
/// its own data) and says what to do next. The server exits after it, as k3s does.
/// A restore into a data dir that has no cluster keys yet (a new machine) takes them from the
/// snapshot, opened with `token`.
pub fn cluster_reset(
    config: &RaftStoreConfig,
    from: Option<&Path>,
    server_dir: &Path,
    token: Option<&str>,
) -> Result<()> {
    let keys = match from {
        Some(file) => keys_to_restore(server_dir, file, token)?,
        None => None,
    };
    let report = shoal_store::reset_cluster(config, from)
        .with_context(|| format!("resetting the store in {}", config.dir.display()))?;
    install_restored_keys(server_dir, keys.as_ref())?;
    for line in reset_message(&report).lines() {
        tracing::info!("{line}");
    }
    Ok(())
}

/// The cluster keys sealed in the snapshot `file`, when `server_dir` has none of its own
/// (checked before anything changes, so a wrong token leaves everything as it was).
fn keys_to_restore(
    server_dir: &Path,
    file: &Path,
    token: Option<&str>,
) -> Result<Option<ServerBootstrap>> {
    if shoal_apiserver::pki::has_cluster_ca(server_dir) {
        return Ok(None);
    }
    let sealed = shoal_store::snapshot_value(file, SEALED_BOOTSTRAP_KEY)?.with_context(|| {
        format!(
            "{} carries no cluster keys (taken before they were kept in the store); restore it \
             into the data dir of a server of its cluster",
            file.display()
        )
    })?;
    let token = token.context(
        "this data dir has no cluster keys yet: give --token (the cluster's) to take them from \
         the snapshot",
    )?;
    let secret = shoal_common::join::parse_join_token(token)?.secret;
    Ok(Some(sealed_bootstrap::open(&sealed, &secret)?))
}

fn install_restored_keys(server_dir: &Path, keys: Option<&ServerBootstrap>) -> Result<()> {
    if let Some(keys) = keys {
        shoal_apiserver::pki::install_bootstrap(server_dir, keys)?;
        tracing::info!("the cluster's keys were restored from the snapshot");
    }
    Ok(())
}

/// What a reset did and what the operator does next.
fn reset_message(report: &ResetReport) -> String {
    let mut out = format!(
        "store reset: node {} is the only member of the new store cluster {} (peer address \
         {}), at revision {} with {} keys",
        report.node_id, report.cluster_id, report.address, report.revision, report.keys
    );
    if let Some(snapshot) = &report.restored {
        out.push_str(&format!(
            ", restored from {} (taken {})",
            snapshot.path.display(),
            created(snapshot.header.created)
        ));
    }
    if report.applied_from_log > 0 {
        out.push_str(&format!(
            "; {} logged entries it had not applied were applied",
            report.applied_from_log
        ));
    }
    out.push('\n');
    if let Some(previous) = &report.previous {
        out.push_str(&format!(
            "the store it replaced is kept in {}: remove it once the server runs\n",
            previous.display()
        ));
    }
    out.push_str(
        "start the server again without --cluster-reset (and without --server: it leads a new \
         cluster); other servers of the old cluster must be stopped, their \
         <data-dir>/server/store removed, and joined again with --server\n",
    );
    out
}

/// The name prefix of on-demand snapshots.
pub const ON_DEMAND: &str = "on-demand";
/// The name prefix of scheduled snapshots, the ones retention deletes.
const SCHEDULED: &str = "scheduled";

/// Where snapshots go: `--store-snapshot-dir`, else `<data-dir>/server/store-snapshots`.
pub fn snapshot_dir(data_dir: &Path, flag: Option<&Path>) -> PathBuf {
    flag.map_or_else(
        || data_dir.join("server").join("store-snapshots"),
        Path::to_path_buf,
    )
}

/// A snapshot file's name: `<prefix>-<node name>-<unix seconds>`, as k3s names them.
fn snapshot_file_name(prefix: &str, node: &str, at: Timestamp) -> String {
    format!("{prefix}-{node}-{}", at.as_second())
}

fn is_scheduled(name: &str) -> bool {
    name == SCHEDULED || name.starts_with(&format!("{SCHEDULED}-"))
}

/// `--store-snapshot-schedule`: `None` for `""` (off).
pub fn parse_schedule(text: &str) -> Result<Option<Schedule>, String> {
    if text.trim().is_empty() {
        return Ok(None);
    }
    Schedule::parse(text)
        .map(Some)
        .map_err(|e| format!("{text:?} is not a cron schedule: {e}"))
}

/// Takes this server's store snapshots, on demand and on schedule.
#[derive(Debug, Clone)]
pub struct SnapshotTaker {
    store: RaftStore,
    dir: PathBuf,
    node_name: String,
}

impl SnapshotTaker {
    pub fn new(store: RaftStore, dir: PathBuf, node_name: String) -> Self {
        SnapshotTaker {
            store,
            dir,
            node_name,
        }
    }

    async fn take(&self, prefix: &str) -> Result<SnapshotInfo, SnapshotError> {
        let name = snapshot_file_name(prefix, &self.node_name, Timestamp::now());
        self.store.save_snapshot(&self.dir, &name).await
    }
}

#[async_trait::async_trait]
impl StoreSnapshots for SnapshotTaker {
    async fn save(&self, name: Option<&str>) -> Result<SnapshotInfo, SnapshotSaveError> {
        let prefix = name.unwrap_or(ON_DEMAND);
        if is_scheduled(prefix) {
            return Err(SnapshotSaveError::Invalid(format!(
                "snapshot name {prefix:?}: names starting with {SCHEDULED:?} are the scheduled \
                 snapshots', which retention deletes"
            )));
        }
        self.take(prefix).await.map_err(|e| match e {
            SnapshotError::InvalidName { .. } | SnapshotError::Exists { .. } => {
                SnapshotSaveError::Invalid(e.to_string())
            }
            other => SnapshotSaveError::Failed(other.to_string()),
        })
    }
}

/// Scheduled snapshots until `stop`: one each time `schedule` fires (in the local time
/// zone), then the scheduled snapshots beyond the newest `retention` are deleted.
pub async fn run_schedule(
    taker: SnapshotTaker,
    schedule: Schedule,
    retention: usize,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let zone = TimeZone::system();
    loop {
        let Some(next) = schedule.next(Timestamp::now(), &zone) else {
            tracing::warn!("the store snapshot schedule never fires");
            return;
        };
        // Checked again after each short sleep: tokio's timers follow the monotonic clock,
        // the schedule the wall clock, which may be set meanwhile.
        loop {
            let wait = duration_until(next, Timestamp::now());
            if wait.is_zero() {
                break;
            }
            tokio::select! {
                () = tokio::time::sleep(wait.min(Duration::from_secs(60))) => {}
                _ = stop.changed() => return,
            }
        }
        match taker.take(SCHEDULED).await {
            Ok(info) => tracing::info!(
                file = %info.path.display(),
                revision = info.header.revision,
                "saved a scheduled store snapshot"
            ),
            Err(err) => tracing::warn!(error = %err, "a scheduled store snapshot failed"),
        }
        match shoal_store::list_snapshots(&taker.dir) {
            Ok(listed) => {
                for path in beyond_retention(&listed, retention) {
                    match std::fs::remove_file(&path) {
                        Ok(()) => {
                            tracing::info!(file = %path.display(), "deleted an old scheduled store snapshot")
                        }
                        Err(err) => {
                            tracing::warn!(file = %path.display(), error = %err, "deleting an old store snapshot")
                        }
                    }
                }
            }
            Err(err) => tracing::warn!(error = %err, "listing the store snapshots"),
        }
    }
}

/// How long from `now` until `at` (zero once it passed).
fn duration_until(at: Timestamp, now: Timestamp) -> Duration {
    Duration::try_from(at.duration_since(now)).unwrap_or(Duration::ZERO)
}

/// The scheduled snapshots to delete so that only the newest `keep` remain (newest by the
/// time their header records, then by name). Other snapshots, and files whose header cannot
/// be read, are never deleted.
fn beyond_retention(listed: &[Listed], keep: usize) -> Vec<PathBuf> {
    let mut scheduled: Vec<&SnapshotInfo> = listed
        .iter()
        .filter_map(|l| match l {
            Listed::Snapshot(info) if is_scheduled(&info.name) => Some(info),
            _ => None,
        })
        .collect();
    scheduled.sort_by(|a, b| (b.header.created, &b.name).cmp(&(a.header.created, &a.name)));
    scheduled
        .into_iter()
        .skip(keep)
        .map(|info| info.path.clone())
        .collect()
}

fn created(unix: u64) -> String {
    i64::try_from(unix)
        .ok()
        .and_then(|s| Timestamp::from_second(s).ok())
        .map_or_else(|| unix.to_string(), |t| t.to_string())
}

/// The snapshots as a kubectl-style table, as `k3s etcd-snapshot ls` shows them.
fn snapshots_table(listed: &[Listed]) -> String {
    let mut out = format!(
        "{:<44}{:<12}{:<12}{:<22}{}\n",
        "NAME", "SIZE", "REVISION", "CREATED", "LOCATION"
    );
    for entry in listed {
        match entry {
            Listed::Snapshot(info) => out.push_str(&format!(
                "{:<44}{:<12}{:<12}{:<22}{}\n",
                info.name,
                info.size,
                info.header.revision,
                created(info.header.created),
                info.path.display()
            )),
            // The error names the file.
            Listed::Unreadable { name, error, .. } => out.push_str(&format!(
                "{name:<44}{:<12}{:<12}{:<22}{error}\n",
                "?", "?", "?"
            )),
        }
    }
    out
}

async fn connect(target: &StoreTarget) -> Result<JoinClient> {
    let url = target
        .server
        .clone()
        .unwrap_or_else(|| format!("https://127.0.0.1:{}", shoal_common::DEFAULT_HTTPS_PORT));
    let token = match &target.token {
        Some(token) => token.clone(),
        None => {
            let path = target.data_dir.join("server").join("token");
            std::fs::read_to_string(&path)
                .with_context(|| format!("no --token, and reading {}", path.display()))?
                .trim()
                .to_string()
        }
    };
    Ok(JoinClient::connect(&url, &token).await?)
}

/// The members as a kubectl-style table.
fn members_table(members: &[StoreMember]) -> String {
    let mut out = format!(
        "{:<22}{:<24}{:<9}{}\n",
        "ID", "PEER-ADDRESS", "ROLE", "LEADER"
    );
    for member in members {
        out.push_str(&format!(
            "{:<22}{:<24}{:<9}{}\n",
            member.id,
            member.peer_address,
            if member.voter { "voter" } else { "learner" },
            if member.leader { "*" } else { "" }
        ));
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use shoal_store::SnapshotHeader;

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    fn snapshot(name: &str, created: u64) -> Listed {
        Listed::Snapshot(SnapshotInfo {
            name: name.into(),
            path: PathBuf::from("/snapshots").join(name),
            size: 100,
            header: SnapshotHeader {
                cluster_id: None,
                node_id: 1,
                revision: 10,
                created,
                keys: 1,
            },
        })
    }

    #[test]
    fn the_default_schedule_fires_at_midnight_and_noon() {
        let schedule = parse_schedule("0 */12 * * *").unwrap().unwrap();
        let utc = TimeZone::UTC;
        let first = schedule.next(at("2024-03-01T05:17:00Z"), &utc).unwrap();
        assert_eq!(first, at("2024-03-01T12:00:00Z"));
        let second = schedule.next(first, &utc).unwrap();
        assert_eq!(second, at("2024-03-02T00:00:00Z"));
        // Read in the server's zone: noon there.
        let paris = TimeZone::get("Europe/Paris").unwrap();
        assert_eq!(
            schedule.next(at("2024-03-01T05:17:00Z"), &paris).unwrap(),
            at("2024-03-01T11:00:00Z")
        );
        assert_eq!(parse_schedule("").unwrap(), None);
        assert_eq!(parse_schedule("  ").unwrap(), None);
        for bad in ["0 */12 * *", "61 * * * *", "@fortnightly"] {
            let err = parse_schedule(bad).unwrap_err();
            assert!(err.contains("is not a cron schedule"), "{bad}: {err}");
        }
    }

    #[test]
    fn the_wait_ends_once_the_time_has_come() {
        let next = at("2024-03-01T12:00:00Z");
        assert_eq!(
            duration_until(next, at("2024-03-01T11:59:30Z")),
            Duration::from_secs(30)
        );
        assert_eq!(duration_until(next, next), Duration::ZERO);
        assert_eq!(
            duration_until(next, at("2024-03-01T12:05:00Z")),
            Duration::ZERO
        );
    }

    #[test]
    fn only_scheduled_snapshots_beyond_the_newest_n_are_deleted() {
        let listed = vec![
            snapshot("scheduled-n1-100", 100),
            snapshot("on-demand-n1-50", 50),
            snapshot("scheduled-n1-300", 300),
            snapshot("scheduled-n1-200", 200),
            snapshot("scheduled-n1-400", 400),
            snapshot("scheduledx-n1-1", 1),
            Listed::Unreadable {
                name: "scheduled-n1-0".into(),
                path: "/snapshots/scheduled-n1-0".into(),
                error: SnapshotError::NoStore { dir: "/x".into() },
            },
        ];
        let paths = |names: &[&str]| -> Vec<PathBuf> {
            names
                .iter()
                .map(|n| PathBuf::from("/snapshots").join(n))
                .collect()
        };
        assert_eq!(
            beyond_retention(&listed, 2),
            paths(&["scheduled-n1-200", "scheduled-n1-100"])
        );
        assert_eq!(beyond_retention(&listed, 4), paths(&[]));
        assert_eq!(
            beyond_retention(&listed, 1),
            paths(&["scheduled-n1-300", "scheduled-n1-200", "scheduled-n1-100"])
        );
    }

    #[test]
    fn snapshot_names_and_places() {
        let name = snapshot_file_name(ON_DEMAND, "node-1", at("2023-11-14T22:13:20Z"));
        assert_eq!(name, "on-demand-node-1-1700000000");
        shoal_store::validate_snapshot_name(&name).unwrap();
        assert!(is_scheduled(&snapshot_file_name(
            SCHEDULED,
            "n",
            Timestamp::now()
        )));
        assert!(!is_scheduled("on-demand-n-1") && !is_scheduled("scheduledx"));
        assert_eq!(
            snapshot_dir(Path::new("/var/lib/shoal"), None),
            Path::new("/var/lib/shoal/server/store-snapshots")
        );
        assert_eq!(
            snapshot_dir(Path::new("/var/lib/shoal"), Some(Path::new("/backup"))),
            Path::new("/backup")
        );
    }

    #[test]
    fn snapshots_print_as_a_table() {
        let table = snapshots_table(&[
            snapshot("scheduled-n1-1700000000", 1_700_000_000),
            Listed::Unreadable {
                name: "notes".into(),
                path: "/snapshots/notes".into(),
                error: SnapshotError::Foreign {
                    path: "/snapshots/notes".into(),
                    why: "it does not start with \"shoal-store-snapshot\"".into(),
                },
            },
        ]);
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].starts_with("NAME") && lines[0].contains("REVISION"));
        assert!(lines[1].starts_with("scheduled-n1-1700000000"));
        assert!(
            lines[1].contains("2023-11-14T22:13:20Z")
                && lines[1].ends_with("/snapshots/scheduled-n1-1700000000")
        );
        assert!(lines[2].starts_with("notes") && lines[2].contains("not a Shoal store snapshot"));
    }

    #[test]
    fn a_reset_says_what_to_do_next() {
        let report = ResetReport {
            dir: "/d/server/store".into(),
            node_id: 3,
            cluster_id: "abc".into(),
            address: "10.0.0.3:6444".into(),
            revision: 42,
            keys: 7,
            applied_from_log: 2,
            restored: None,
            previous: Some("/d/server/store.old-1".into()),
        };
        let message = reset_message(&report);
        assert!(message.contains("node 3 is the only member"), "{message}");
        assert!(message.contains("2 logged entries"), "{message}");
        assert!(message.contains("/d/server/store.old-1"), "{message}");
        assert!(message.contains("without --cluster-reset"), "{message}");
    }

    #[test]
    fn members_print_as_a_table() {
        let table = members_table(&[
            StoreMember {
                id: 1,
                peer_address: "10.0.0.1:6444".into(),
                voter: true,
                leader: true,
            },
            StoreMember {
                id: 77,
                peer_address: "10.0.0.2:6444".into(),
                voter: false,
                leader: false,
            },
        ]);
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].starts_with("ID") && lines[0].contains("PEER-ADDRESS"));
        assert!(
            lines[1].contains("10.0.0.1:6444")
                && lines[1].contains("voter")
                && lines[1].ends_with('*')
        );
        assert!(lines[2].starts_with("77") && lines[2].contains("learner"));
    }
}
