//! `edge serve`: a CDN point of presence of stage 6, configured by `EDGE_…` variables or a file.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use edge::EdgeSettings;

/// mimalloc, as in the gateway: a proxy allocates and frees small buffers for every request.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// archlab's CDN edge: a pingora reverse proxy with a shared cache in front of the origin.
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
        /// A TOML settings file; `EDGE_…` variables override it.
        #[arg(long, env = "EDGE_CONFIG")]
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
            let settings = EdgeSettings::load(config.as_deref())
                .map_err(|e| anyhow::anyhow!("loading settings: {e}"))?;
            tracing::info!(
                listen = %settings.listen,
                name = %settings.name,
                origin = %settings.origin,
                origin_delay_ms = settings.origin_delay_ms,
                max_bytes = settings.store.max_bytes,
                "edge starting"
            );
            let (server, _store) = edge::server::build(settings)?;
            server.run_forever()
        }
    }
}
