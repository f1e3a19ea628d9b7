//! The file host of stage 2: a real nginx serving a folder over HTTP, with WebDAV `PUT` and
//! `DELETE` for the app hosts (and only them), started and stopped by the lab like any service.
//!
//! The app writes media through `object_store`'s HTTP store; clients read the files straight from
//! here. nginx picks `Content-Type` from the file extension (the app names files `<id>.<ext>`) and
//! sends `ETag` and a year of `immutable` caching: file names are never reused.

use std::{fs, path::PathBuf, time::Duration};

use anyhow::Context;
use nix::sys::signal::Signal;

use crate::process::{self, PidRecord, Spawn};

/// nginx's own port on the file host. Not 80: a system nginx often holds 0.0.0.0:80, which every
/// loopback address shares.
pub const FILES_PORT: u16 = 8081;
/// Largest upload nginx accepts; above the app's own 5 MiB media limit, so the app's limit is the
/// one clients meet.
const MAX_BODY: &str = "8m";
/// nginx answers at once; 10 s only trips on a broken start.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// One nginx file server: its folder, address and the app hosts allowed to write.
#[derive(Debug, Clone)]
pub struct FileServer {
    /// Holds `files/`, the config, the log and the PID file.
    pub dir: PathBuf,
    /// Its loopback address.
    pub address: String,
    /// The key a writer (an app host) must send in `x-file-write-key`. On one machine every
    /// connection comes from 127.0.0.1 whatever host it belongs to, so writers cannot be told
    /// apart by address; a shared key can.
    pub write_key: String,
    /// The CPU group (host budget) it runs in, if budgets are enforced.
    pub cpu_group: Option<PathBuf>,
}

fn nginx_bin() -> anyhow::Result<PathBuf> {
    for candidate in ["/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/bin/nginx"] {
        if std::path::Path::new(candidate).exists() {
            return Ok(PathBuf::from(candidate));
        }
    }
    anyhow::bail!("nginx not found: run scripts/setup.sh (Debian/Ubuntu: apt-get install nginx)")
}

impl FileServer {
    /// The folder whose files are served (`<dir>/www/media/<id>.<ext>`).
    pub fn root(&self) -> PathBuf {
        self.dir.join("www")
    }

    /// The server log.
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("nginx.log")
    }

    pub(crate) fn pid_path(&self) -> PathBuf {
        self.dir.join("nginx.pid.json")
    }

    /// Its base URL.
    pub fn url(&self) -> String {
        format!("http://{}:{FILES_PORT}", self.address)
    }

    fn config(&self) -> String {
        let key = &self.write_key;
        let dir = self.dir.display();
        // As root, nginx would switch its worker to `nobody`, which could not write our folder.
        let user = if nix::unistd::geteuid().is_root() {
            "user root root;\n"
        } else {
            ""
        };
        format!(
            r#"# Written by archlab: the file host. Regenerated at every start.
{user}daemon off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/nginx.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 100000;
    client_body_temp_path {dir}/tmp;
    client_max_body_size {MAX_BODY};
    types {{ image/png png; image/jpeg jpg; image/gif gif; image/webp webp; }}
    # Reads for everyone; writes only with the app hosts' key.
    map_hash_bucket_size 128;
    map "$request_method:$http_x_file_write_key" $write_refused {{
        default 1;
        "~^(GET|HEAD):" 0;
        "PUT:{key}" 0;
        "DELETE:{key}" 0;
        "MKCOL:{key}" 0;
    }}
    default_type application/octet-stream;
    server {{
        listen {address}:{FILES_PORT};
        root {root};
        location /media/ {{
            if ($write_refused) {{ return 403; }}
            dav_methods PUT DELETE MKCOL;
            create_full_put_path on;
            dav_access user:rw group:r all:r;
            add_header Cache-Control "public, max-age=31536000, immutable";
            add_header X-Content-Type-Options nosniff;
        }}
    }}
}}
"#,
            address = self.address,
            root = self.root().display(),
        )
    }

    /// The running server's record, if running (a stale PID file is removed).
    pub fn running(&self) -> anyhow::Result<Option<PidRecord>> {
        PidRecord::running(&self.pid_path())
    }

    /// Starts nginx (idempotent) and waits until it answers.
    pub async fn start(&self) -> anyhow::Result<PidRecord> {
        if let Some(record) = self.running()? {
            return Ok(record);
        }
        process::ensure_free("the file server", &self.address, FILES_PORT)?;
        fs::create_dir_all(self.root().join("media"))?;
        fs::create_dir_all(self.dir.join("tmp"))?;
        let conf = self.dir.join("nginx.conf");
        fs::write(&conf, self.config()).context("writing nginx.conf")?;
        let args = vec![
            "-p".into(),
            self.dir.display().to_string(),
            "-c".into(),
            conf.display().to_string(),
        ];
        let (program, args, user) =
            crate::budget::wrap(self.cpu_group.as_deref(), None, &nginx_bin()?, args);
        let service = Spawn {
            program: &program,
            args,
            env: vec![],
            log: self.log_path(),
            user,
            cwd: Some(self.dir.clone()),
        };
        let client = crate::lab::http_client()?;
        let url = format!("{}/", self.url());
        process::launch("nginx", service, &self.pid_path(), START_TIMEOUT, || {
            let request = client.get(&url).send();
            async move { request.await.is_ok() }
        })
        .await
    }

    /// Graceful stop (SIGQUIT lets workers finish their requests).
    pub fn stop(&self) -> anyhow::Result<()> {
        if let Some(record) = self.running()? {
            record.stop(Signal::SIGQUIT, Duration::from_secs(10))?;
        }
        let _ = fs::remove_file(self.pid_path());
        Ok(())
    }
}
