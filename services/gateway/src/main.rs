//! `gateway serve`: the load balancer of stage 4, configured by `GATEWAY_…` variables or a file.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use gateway::GatewaySettings;

/// mimalloc instead of glibc's allocator: a proxy allocates and frees small buffers for every
/// request (headers, body chunks), and glibc's malloc and free were prominent in a profile of
/// the gateway under load (a diagnostic, not a recorded result).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// archlab's gateway: a pingora load balancer in front of the app hosts.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve until SIGTERM (graceful: requests in flight finish) or SIGINT (at once).
    Serve {
        /// A TOML settings file; `GATEWAY_…` variables override it.
        #[arg(long, env = "GATEWAY_CONFIG")]
        config: Option<PathBuf>,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,pingora=warn".into()),
        )
        .with_ansi(false)
        .init();
    match cli.command {
        Command::Serve { config } => {
            let settings = GatewaySettings::load(config.as_deref())
                .map_err(|e| anyhow::anyhow!("loading settings: {e}"))?;
            tracing::info!(
                listen = %settings.listen,
                upstreams = ?settings.upstreams,
                selection = ?settings.selection,
                "gateway starting"
            );
            let server = gateway::server::build(settings)?;
            server.run_forever()
        }
    }
}
