//! The `shoal` binary: parses the command line (with config file and environment), sets up
//! logging, and starts the part asked for. Wiring only; the work lives in the library crates.

mod agent;
mod cli;
mod config;
mod controller_manager;
mod node;
mod server;
mod server_nodes;
mod simulate;
mod store;

use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use crate::cli::{Cli, Command};

// glibc's allocator fragments and spends much of the store's write path in malloc/free;
// mimalloc measured 20-40% more store throughput (BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit code for bad usage: a bad flag, config file or flag combination (sysexits' EX_USAGE).
const EXIT_USAGE: u8 = 64;
/// Exit code for a failure while running.
const EXIT_FAILURE: u8 = 1;

fn main() -> ExitCode {
    // containerd runs this binary as the CNI plugin, by the name of the link it finds.
    let argv0 = std::env::args_os().next().unwrap_or_default();
    let invoked_as = std::path::Path::new(&argv0)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    if invoked_as == shoal_agent::node_agent::CNI_PLUGIN_NAME {
        return ExitCode::from(u8::try_from(shoal_net::cni::run_from_env()).unwrap_or(1));
    }
    if invoked_as == shoal_net::cni::loopback::LOOPBACK_PLUGIN {
        return ExitCode::from(
            u8::try_from(shoal_net::cni::loopback::loopback_from_env()).unwrap_or(1),
        );
    }
    let args = match config::with_config_file(std::env::args_os().collect()) {
        Ok(args) => args,
        Err(err) => return usage_error(&format!("{err:#}")),
    };
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(err) if !err.use_stderr() => {
            // --help and --version
            let _ = err.print();
            return ExitCode::SUCCESS;
        }
        Err(err) => {
            let rendered = err.render().to_string();
            let first = rendered.lines().next().unwrap_or("invalid arguments");
            return usage_error(first.trim_start_matches("error: "));
        }
    };
    init_logging(&cli);
    match cli.command {
        Command::Version => {
            println!(
                "shoal version v{} (kubernetes {})",
                shoal_common::VERSION,
                shoal_common::KUBERNETES_VERSION
            );
            ExitCode::SUCCESS
        }
        Command::Server(args) => {
            if let Err(err) = config::validate_server(&args) {
                return usage_error(&format!("{err:#}"));
            }
            run(server::run(args))
        }
        Command::Agent(args) => {
            let Some(server) = args.common.server.clone() else {
                return usage_error("agent needs --server https://HOST:6443 (or SHOAL_URL)");
            };
            let token = match config::read_token(&args.common.token, &args.common.token_file)
                .and_then(|t| {
                    t.ok_or_else(|| anyhow::anyhow!("agent needs --token or --token-file"))
                }) {
                Ok(token) => token,
                Err(err) => return usage_error(&format!("{err:#}")),
            };
            run(agent::run(args, server, token))
        }
        Command::Kubectl { data_dir, args } => node::kubectl(&data_dir, &args),
        Command::Pause => ExitCode::from(u8::try_from(shoal_agent::pause::run()).unwrap_or(1)),
        Command::Images(command) => run(node::images(command)),
        Command::Store(command) => run(store::run(command)),
        Command::SimulateNodes(args) => match simulate::config(&args) {
            Ok(config) => run(simulate::run(args, config)),
            Err(err) => usage_error(&format!("{err:#}")),
        },
    }
}

fn usage_error(message: &str) -> ExitCode {
    eprintln!("shoal: {message}");
    ExitCode::from(EXIT_USAGE)
}

fn init_logging(cli: &Cli) {
    let level = match cli.verbose {
        0 => cli.log_level.as_str(),
        1 => "debug",
        _ => "trace",
    };
    // Our own crates at the chosen level; dependencies one step quieter unless tracing.
    let deps = if level == "trace" { "debug" } else { "warn" };
    // The simulator sums up its failed requests; kube's client would log each one of a
    // thousand nodes' while the API is down.
    let simulator = if matches!(cli.command, Command::SimulateNodes(_)) && level != "trace" {
        ",kube_client=off"
    } else {
        ""
    };
    let filter = EnvFilter::try_new(format!(
        "{deps},shoal={level},shoal_store={level},shoal_common={level},shoal_agent={level},openraft=warn{simulator}"
    ))
    .unwrap_or_else(|_| EnvFilter::new("info"));
    // Colour only for a person at a terminal, never in journald or files.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr)
        .init();
}

fn run(future: impl std::future::Future<Output = anyhow::Result<()>>) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("shoal: cannot start the async runtime: {err}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    match runtime.block_on(future) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err:#}");
            eprintln!("shoal: {err:#}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}
