//! `conduit`: serve the API, seed a database, or probe a health endpoint.
//!
//! ```text
//! conduit serve [--config FILE]        # settings: defaults, FILE, then APP_* variables
//! conduit seed --users 1000 --articles 10000
//! conduit healthcheck http://127.0.0.1:8080/readyz   # exit 0 on HTTP 200 (for containers)
//! ```

use std::{path::PathBuf, time::Duration};

use anyhow::Context;
use clap::{Parser, Subcommand};
use conduit::{seed::SeedSpec, Application, Settings};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Parser)]
#[command(version, about = "The RealWorld Conduit API of archlab")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the API (the default).
    Serve {
        /// A TOML settings file; `APP_SECTION__KEY` variables override it.
        #[arg(long, env = "APP_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Migrate the configured database and write the deterministic benchmark data set.
    Seed {
        /// A TOML settings file, as for `serve`.
        #[arg(long, env = "APP_CONFIG")]
        config: Option<PathBuf>,
        /// Users to create.
        #[arg(long, default_value_t = 1_000)]
        users: usize,
        /// Articles to create.
        #[arg(long, default_value_t = 10_000)]
        articles: usize,
        /// Images (20-200 KB each), written to the media store.
        #[arg(long, default_value_t = 2_000)]
        images: usize,
        /// Seed of the generator: same seed, same data.
        #[arg(long, default_value_t = 42)]
        seed: u64,
    },
    /// GET a URL on a loopback/plain-HTTP address; exit 0 on 200 (container health checks).
    Healthcheck {
        /// For example http://127.0.0.1:8080/readyz
        url: String,
    },
}

fn init_tracing() {
    // Quiet by default so logging does not skew benchmarks; RUST_LOG overrides.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn,tower_http=warn"));
    tracing_subscriber::fmt().with_env_filter(filter).init();
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Serve { config: None }) {
        Command::Serve { config } => {
            init_tracing();
            let settings = Settings::load(config.as_deref()).context("loading settings")?;
            let app = Application::build(settings).await?;
            tracing::info!(address = %app.local_addr(), "conduit listening");
            app.run_until_stopped().await
        }
        Command::Seed {
            config,
            users,
            articles,
            images,
            seed,
        } => {
            init_tracing();
            let mut settings = Settings::load(config.as_deref()).context("loading settings")?;
            // Seeding is not a request: its bulk statements (filling lists, VACUUM) may take
            // longer than any request may on a small database host (0.1 core: over the 5 s
            // bound), so its connections have no statement timeout.
            settings.database.statement_timeout_ms = 0;
            let shards = conduit::db::Shards::connect(
                &settings.database,
                &settings.cache,
                conduit::metrics::DbMetrics::default(),
            )
            .await?;
            let spec = SeedSpec {
                users,
                articles,
                images,
                seed,
                ..SeedSpec::default()
            };
            let media = conduit::api::media::store(&settings.media, 0)?;
            let report =
                conduit::seed::seed(&shards, media.as_ref(), &settings.media, spec).await?;
            if !report.already_seeded {
                // The rows were written straight into the database: nothing cached is current.
                let cache = conduit::cache::Cache::new(&settings.cache, Default::default())?;
                cache.clear().await?;
            }
            println!(
                "{}",
                serde_json::to_string(&serde_json::json!({
                    "users": report.users, "articles": report.articles, "follows": report.follows,
                    "favorites": report.favorites, "comments": report.comments, "images": report.images,
                    "already_seeded": report.already_seeded,
                }))?
            );
            Ok(())
        }
        Command::Healthcheck { url } => healthcheck(&url).await,
    }
}

/// A minimal HTTP/1.0 GET, so slim container images need no curl.
async fn healthcheck(url: &str) -> anyhow::Result<()> {
    let rest = url
        .strip_prefix("http://")
        .context("only http:// URLs are supported")?;
    let (authority, path) = rest
        .split_once('/')
        .map_or((rest, "/".to_owned()), |(a, p)| (a, format!("/{p}")));
    let probe = async {
        let mut stream = tokio::net::TcpStream::connect(authority).await?;
        stream
            .write_all(format!("GET {path} HTTP/1.0\r\nHost: {authority}\r\n\r\n").as_bytes())
            .await?;
        let mut head = vec![0u8; 64];
        let n = stream.read(&mut head).await?;
        anyhow::Ok(String::from_utf8_lossy(&head[..n]).into_owned())
    };
    let head = tokio::time::timeout(Duration::from_secs(3), probe)
        .await
        .context("timed out")??;
    let status = head.split_whitespace().nth(1).unwrap_or("");
    if status == "200" {
        Ok(())
    } else {
        anyhow::bail!("unhealthy: {}", head.lines().next().unwrap_or(""))
    }
}
