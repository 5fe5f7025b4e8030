//! The command line: subcommands and flags (named as k3s names them where they overlap), each
//! flag also settable from a `SHOAL_*` environment variable.

use std::net::IpAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use shoal_common::{
    CidrList, DEFAULT_CLUSTER_CIDR, DEFAULT_CLUSTER_DNS, DEFAULT_CLUSTER_DOMAIN,
    DEFAULT_CONFIG_FILE, DEFAULT_DATA_DIR,
};

/// Shoal: a Kubernetes-compatible cluster with a built-in service mesh, in one binary.
#[derive(Debug, Parser)]
#[command(name = "shoal", version = shoal_common::VERSION, args_override_self = true)]
pub struct Cli {
    /// More log output: -v for debug, -vv for trace.
    #[arg(short = 'v', action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,

    /// Log level: error, warn, info, debug or trace.
    #[arg(long, global = true, env = "SHOAL_LOG_LEVEL", default_value = "info",
          value_parser = ["error", "warn", "info", "debug", "trace"])]
    pub log_level: String,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a server: the store, the API, the control loops and (unless disabled) an agent.
    Server(ServerArgs),
    /// Run a node agent that joins a server.
    Agent(AgentArgs),
    /// Run simulated nodes (kwok-style) against a server, to test the control plane at scale.
    SimulateNodes(crate::simulate::SimulateNodesArgs),
    /// Images on this node: import archives, list what is present.
    #[command(subcommand)]
    Images(ImagesCommand),
    /// The servers' replicated store: its members.
    #[command(subcommand)]
    Store(StoreCommand),
    /// The pod sandbox process (the pause image's entrypoint).
    #[command(hide = true)]
    Pause,
    /// Run the system's kubectl against this machine's cluster (KUBECONFIG, else
    /// <data-dir>/kubeconfig.yaml).
    #[command(disable_help_flag = true)]
    Kubectl {
        /// Directory holding all state.
        #[arg(long, env = "SHOAL_DATA_DIR", default_value = DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
        /// kubectl's own arguments.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<std::ffi::OsString>,
    },
    /// Print the version.
    Version,
}

/// Flags both servers and agents take.
#[derive(Debug, Clone, Args)]
pub struct CommonArgs {
    /// YAML file with flag values (keys are flag names without dashes in front).
    #[arg(long, short = 'c', env = "SHOAL_CONFIG", default_value = DEFAULT_CONFIG_FILE)]
    pub config: PathBuf,

    /// Directory holding all state.
    #[arg(long, env = "SHOAL_DATA_DIR", default_value = DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,

    /// This node's name (default: the host name).
    #[arg(long, env = "SHOAL_NODE_NAME")]
    pub node_name: Option<String>,

    /// Shared secret nodes use to join.
    #[arg(long, short = 't', env = "SHOAL_TOKEN", hide_env_values = true)]
    pub token: Option<String>,

    /// File holding the token.
    #[arg(long, env = "SHOAL_TOKEN_FILE", conflicts_with = "token")]
    pub token_file: Option<PathBuf>,

    /// The server to connect to (https://HOST:6443).
    #[arg(long, short = 's', env = "SHOAL_URL")]
    pub server: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct ServerArgs {
    #[command(flatten)]
    pub common: CommonArgs,

    /// Start a new cluster (the first of several servers).
    #[arg(long, env = "SHOAL_CLUSTER_INIT")]
    pub cluster_init: bool,

    /// The API server's HTTPS port.
    #[arg(long, env = "SHOAL_HTTPS_LISTEN_PORT", default_value_t = shoal_common::DEFAULT_HTTPS_PORT,
          value_parser = clap::value_parser!(u16).range(1..))]
    pub https_listen_port: u16,

    /// Address the API server binds to.
    #[arg(long, env = "SHOAL_BIND_ADDRESS", default_value = "0.0.0.0")]
    pub bind_address: IpAddr,

    /// Address other nodes reach this server at (default: the node's address).
    #[arg(long, env = "SHOAL_ADVERTISE_ADDRESS")]
    pub advertise_address: Option<IpAddr>,

    /// The range pod IPs come from; two, comma-separated, one per IP family, for a dual-stack
    /// cluster (e.g. 10.42.0.0/16,fd00:42::/56).
    #[arg(long, env = "SHOAL_CLUSTER_CIDR", default_value = DEFAULT_CLUSTER_CIDR)]
    pub cluster_cidr: CidrList,

    /// The range Service cluster IPs come from; two, comma-separated, for a dual-stack
    /// cluster, in --cluster-cidr's family order (e.g. 10.43.0.0/16,fd00:43::/112).
    #[arg(long, env = "SHOAL_SERVICE_CIDR", default_value = shoal_common::DEFAULT_SERVICE_CIDR)]
    pub service_cidr: CidrList,

    /// The cluster DNS Service's address (inside the service CIDR).
    #[arg(long, env = "SHOAL_CLUSTER_DNS", default_value = DEFAULT_CLUSTER_DNS)]
    pub cluster_dns: IpAddr,

    /// The cluster's DNS domain.
    #[arg(long, env = "SHOAL_CLUSTER_DOMAIN", default_value = DEFAULT_CLUSTER_DOMAIN)]
    pub cluster_domain: String,

    /// Also write the admin kubeconfig here (it is always written to <data-dir>/kubeconfig.yaml).
    #[arg(long, short = 'o', env = "SHOAL_KUBECONFIG_OUTPUT")]
    pub write_kubeconfig: Option<PathBuf>,

    /// File mode of the written kubeconfigs, in octal (k3s's --write-kubeconfig-mode).
    #[arg(long, env = "SHOAL_KUBECONFIG_MODE", default_value = "600", value_parser = parse_mode)]
    pub write_kubeconfig_mode: u32,

    /// Run only the control plane, without a node agent.
    #[arg(long, env = "SHOAL_DISABLE_AGENT")]
    pub disable_agent: bool,

    /// A kube-controller-manager flag as KEY=VALUE (repeatable), e.g.
    /// node-monitor-grace-period=20s; the node lifecycle's flags are supported.
    #[arg(long = "kube-controller-manager-arg", value_name = "KEY=VALUE")]
    pub kube_controller_manager_args: Vec<String>,

    /// Scheduled store snapshots: a cron expression (five fields in local time, or a
    /// descriptor such as @daily); "" turns them off.
    #[arg(long, env = "SHOAL_STORE_SNAPSHOT_SCHEDULE", default_value = "0 */12 * * *",
          value_parser = parse_schedule)]
    pub store_snapshot_schedule: String,

    /// How many scheduled store snapshots to keep (the newest).
    #[arg(long, env = "SHOAL_STORE_SNAPSHOT_RETENTION", default_value_t = 5,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub store_snapshot_retention: u32,

    /// Where store snapshots are written (default: <data-dir>/server/store-snapshots).
    #[arg(long, env = "SHOAL_STORE_SNAPSHOT_DIR")]
    pub store_snapshot_dir: Option<PathBuf>,

    /// Make this server's store the only member of a new store cluster (after the cluster lost
    /// quorum for good), then exit: start it again without the flag.
    #[arg(long, env = "SHOAL_CLUSTER_RESET")]
    pub cluster_reset: bool,

    /// With --cluster-reset: replace the store's data with this snapshot file's.
    #[arg(
        long,
        env = "SHOAL_CLUSTER_RESET_RESTORE_PATH",
        requires = "cluster_reset"
    )]
    pub cluster_reset_restore_path: Option<PathBuf>,

    #[command(flatten)]
    pub node: NodeArgs,
}

fn parse_schedule(text: &str) -> Result<String, String> {
    crate::store::parse_schedule(text).map(|_| text.to_string())
}

/// Flags of the node part (the agent), for `shoal agent` and the server's own agent.
#[derive(Debug, Clone, Args)]
pub struct NodeArgs {
    /// The node's IP address to advertise (default: the address of the default route).
    #[arg(long, env = "SHOAL_NODE_IP")]
    pub node_ip: Option<IpAddr>,

    /// A label to register the node with, KEY=VALUE (repeatable).
    #[arg(long = "node-label", env = "SHOAL_NODE_LABEL", value_delimiter = ',', value_parser = parse_label)]
    pub node_labels: Vec<(String, String)>,

    /// A taint to register the node with, KEY=VALUE:EFFECT (repeatable).
    #[arg(long = "node-taint", env = "SHOAL_NODE_TAINT", value_delimiter = ',')]
    pub node_taints: Vec<String>,

    /// Use this CRI socket instead of starting containerd.
    #[arg(long, env = "SHOAL_CONTAINER_RUNTIME_ENDPOINT")]
    pub container_runtime_endpoint: Option<PathBuf>,

    /// Translate this node's pods' TCP connects to ClusterIPs at connect() (a cgroup BPF
    /// program on the pods' cgroup, as Cilium's socket LB) instead of per packet; nftables
    /// still handles everything else. `false`: nftables only.
    #[arg(long, env = "SHOAL_PROXY_SOCKET_LB", default_value_t = true, action = clap::ArgAction::Set)]
    pub proxy_socket_lb: bool,

    /// The cgroup (a path from the hierarchy's root) this node's pods go under, and the socket
    /// LB attaches to; default `/shoal/<node name>`. It must hold this node's pods only: set
    /// it when several nodes share one machine under the same name (test labs).
    #[arg(long, env = "SHOAL_POD_CGROUP_PARENT", value_parser = parse_cgroup_path)]
    pub pod_cgroup_parent: Option<String>,

    /// The node API's port (the kubelet's; 0 picks a free one).
    #[arg(long, env = "SHOAL_KUBELET_PORT", default_value_t = 10250)]
    pub kubelet_port: u16,

    /// Pressure thresholds, as the kubelet's --eviction-hard (memory.available, nodefs.available).
    #[arg(
        long,
        env = "SHOAL_EVICTION_HARD",
        default_value = "memory.available<100Mi,nodefs.available<10%"
    )]
    pub eviction_hard: shoal_agent::kubelet::node::Thresholds,

    /// Rotate a container's log once it is this big (a quantity, as the kubelet's flag).
    #[arg(long, env = "SHOAL_CONTAINER_LOG_MAX_SIZE", default_value = "10Mi", value_parser = parse_size)]
    pub container_log_max_size: u64,

    /// Log files kept per container, the current one included (at least 2).
    #[arg(long, env = "SHOAL_CONTAINER_LOG_MAX_FILES", default_value_t = 5,
          value_parser = clap::value_parser!(u16).range(2..))]
    pub container_log_max_files: u16,

    /// Registry mirrors and credentials, in k3s's registries.yaml format.
    #[arg(
        long,
        env = "SHOAL_PRIVATE_REGISTRY",
        default_value = "/etc/shoal/registries.yaml"
    )]
    pub private_registry: PathBuf,
}

fn parse_size(text: &str) -> Result<u64, String> {
    shoal_common::quantity::parse_value(text)
        .ok()
        .and_then(|v| u64::try_from(v).ok())
        .filter(|v| *v > 0)
        .ok_or_else(|| format!("{text:?} is not a size such as 10Mi"))
}

fn parse_label(text: &str) -> Result<(String, String), String> {
    shoal_agent::simulated::parse_label(text)
}

#[derive(Debug, Subcommand)]
pub enum ImagesCommand {
    /// Import image archives (OCI layout or `docker save` tars) into this node's containerd.
    Import {
        /// Directory holding all state.
        #[arg(long, env = "SHOAL_DATA_DIR", default_value = DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
        /// The archives.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// List the images on this node.
    List {
        /// Directory holding all state.
        #[arg(long, env = "SHOAL_DATA_DIR", default_value = DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
    },
}

/// Where a `shoal store` command finds a server: `--server` (default this machine's) and the
/// cluster token (default the one in the server's data dir).
#[derive(Debug, Clone, Args)]
pub struct StoreTarget {
    /// Directory holding all state.
    #[arg(long, env = "SHOAL_DATA_DIR", default_value = DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,
    /// A server of the cluster (default: this machine's, on the default port).
    #[arg(long, short = 's', env = "SHOAL_URL")]
    pub server: Option<String>,
    /// The cluster's token (default: <data-dir>/server/token).
    #[arg(long, short = 't', env = "SHOAL_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// List the store's members (id, peer address, voter or learner, leader).
    Members {
        #[command(flatten)]
        target: StoreTarget,
    },
    /// Remove a member from the store (it then refuses to start on its old data).
    RemoveMember {
        #[command(flatten)]
        target: StoreTarget,
        /// The member's id, as `shoal store members` shows it.
        id: u64,
    },
    /// Store snapshots: save one through the running server, list or restore them.
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
}

#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// Ask the running server for a snapshot of its store; prints the file it wrote.
    Save {
        #[command(flatten)]
        target: StoreTarget,
        /// How the file name starts (the server adds its node name and the time).
        #[arg(long, default_value = crate::store::ON_DEMAND)]
        name: String,
    },
    /// List the snapshots of a data dir (works with the server stopped).
    #[command(visible_alias = "list")]
    Ls {
        /// Directory holding all state.
        #[arg(long, env = "SHOAL_DATA_DIR", default_value = DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
        /// The snapshot directory (default: <data-dir>/server/store-snapshots).
        #[arg(long, env = "SHOAL_STORE_SNAPSHOT_DIR")]
        store_snapshot_dir: Option<PathBuf>,
    },
    /// Restore a stopped server's store from FILE, as the only member of a new store cluster
    /// (shoal server --cluster-reset --cluster-reset-restore-path FILE); the store it replaces
    /// is kept beside it.
    Restore {
        /// Directory holding all state.
        #[arg(long, env = "SHOAL_DATA_DIR", default_value = DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
        /// The snapshot file.
        file: PathBuf,
        /// The cluster's token: restoring into a data dir without the cluster's keys (a new
        /// machine) takes them from the snapshot, sealed with it.
        #[arg(long, env = "SHOAL_TOKEN")]
        token: Option<String>,
    },
}

#[derive(Debug, Clone, Args)]
pub struct AgentArgs {
    #[command(flatten)]
    pub common: CommonArgs,

    #[command(flatten)]
    pub node: NodeArgs,
}

fn parse_mode(text: &str) -> Result<u32, String> {
    match u32::from_str_radix(text, 8) {
        Ok(mode) if mode <= 0o777 => Ok(mode),
        _ => Err(format!(
            "{text:?} is not an octal file mode such as 600 or 644"
        )),
    }
}

/// Names of the subcommands that read a config file.
pub const CONFIGURABLE_SUBCOMMANDS: [&str; 2] = ["server", "agent"];

/// A cgroup path for `--pod-cgroup-parent`: absolute, below the root, no `.` or `..` parts.
fn parse_cgroup_path(value: &str) -> Result<String, String> {
    let parts: Vec<&str> = value.split('/').skip(1).collect();
    if !value.starts_with('/')
        || parts.iter().all(|p| p.is_empty())
        || parts.iter().any(|p| *p == "." || *p == "..")
    {
        return Err(format!(
            "{value:?}: expected an absolute cgroup path below the root, such as /shoal/node-1"
        ));
    }
    Ok(value.trim_end_matches('/').to_string())
}

#[cfg(test)]
mod tests {
    use super::parse_cgroup_path;

    #[test]
    fn pod_cgroup_parents_are_absolute_paths_below_the_root() {
        assert_eq!(
            parse_cgroup_path("/shoal/node-1/"),
            Ok("/shoal/node-1".to_string())
        );
        for bad in ["shoal/n1", "/", "//", "/shoal/../n1", "/shoal/./n1", ""] {
            assert!(parse_cgroup_path(bad).is_err(), "{bad:?} accepted");
        }
    }
}
