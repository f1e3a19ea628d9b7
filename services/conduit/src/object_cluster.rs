//! The object store cluster as the app sees it (stage 7): one S3 client per node, and a store
//! that moves to the next node when one cannot answer.
//!
//! Any node of the cluster answers for all of it (it forwards to the nodes holding an object's
//! copies), so the app needs no load balancer in front of the S3 API, only a list of nodes, as an
//! S3 SDK given several endpoints would have. Each app host starts at its own node, so the hosts
//! spread over the cluster; a request that fails because its node did not answer (connection
//! refused, a timeout, a 5xx) goes to the next node, once around the list at most. Answers about
//! the object itself (not found, already exists, not modified) come back at once: another node
//! would say the same.
//!
//! With two of three nodes down no node has a quorum; every node answers 5xx or times out, and
//! the app answers 503 (`ApiError::MediaStoreUnavailable`).

use std::{
    fmt,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use anyhow::Context;
use async_trait::async_trait;
use futures::stream::BoxStream;
use object_store::{
    aws::AmazonS3Builder, path::Path, ClientOptions, GetOptions, GetResult, ListResult,
    MultipartUpload, ObjectMeta, ObjectStore, PutMultipartOptions, PutOptions, PutPayload,
    PutResult, Result, RetryConfig,
};

use crate::settings::S3Settings;

/// One store per node, and which node this app host tries first.
pub struct NodeFailover {
    nodes: Vec<(String, Arc<dyn ObjectStore>)>,
    /// The node the next request starts at: this host's own, until one fails; then the one that
    /// answered, so a dead node is not tried first by every later request.
    preferred: AtomicUsize,
}

impl fmt::Debug for NodeFailover {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let urls: Vec<&str> = self.nodes.iter().map(|(url, _)| url.as_str()).collect();
        f.debug_struct("NodeFailover")
            .field("nodes", &urls)
            .finish()
    }
}

impl fmt::Display for NodeFailover {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeFailover({} nodes)", self.nodes.len())
    }
}

/// Whether `error` says the node could not answer (so another node may), rather than something
/// about the object every node would say alike.
fn node_failed(error: &object_store::Error) -> bool {
    use object_store::Error::*;
    !matches!(
        error,
        NotFound { .. }
            | AlreadyExists { .. }
            | Precondition { .. }
            | NotModified { .. }
            | InvalidPath { .. }
            | NotSupported { .. }
            | NotImplemented
    )
}

impl NodeFailover {
    /// A store over `nodes` (name, store), starting at node `first` (taken modulo their number).
    pub fn new(nodes: Vec<(String, Arc<dyn ObjectStore>)>, first: usize) -> Self {
        let first = if nodes.is_empty() {
            0
        } else {
            first % nodes.len()
        };
        Self {
            nodes,
            preferred: AtomicUsize::new(first),
        }
    }

    /// Runs `op` on the preferred node, then on each other node in turn while nodes fail.
    async fn each_node<T, F, Fut>(&self, op: F) -> Result<T>
    where
        F: Fn(Arc<dyn ObjectStore>) -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let start = self.preferred.load(Ordering::Relaxed);
        let mut last = None;
        for step in 0..self.nodes.len() {
            let i = (start + step) % self.nodes.len();
            let (name, node) = &self.nodes[i];
            match op(node.clone()).await {
                Err(e) if node_failed(&e) => {
                    tracing::warn!(node = %name, error = %e, "object-store node failed; trying the next");
                    last = Some(e);
                }
                answer => {
                    if step > 0 {
                        self.preferred.store(i, Ordering::Relaxed);
                    }
                    return answer;
                }
            }
        }
        Err(last.unwrap_or(object_store::Error::Generic {
            store: "NodeFailover",
            source: "no object-store node configured".into(),
        }))
    }
}

#[async_trait]
impl ObjectStore for NodeFailover {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        // A payload is reference-counted bytes: a copy per attempt costs a pointer.
        self.each_node(|node| {
            let (payload, opts) = (payload.clone(), opts.clone());
            async move { node.put_opts(location, payload, opts).await }
        })
        .await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        // Only its start fails over; the parts then go to the node that started it.
        self.each_node(|node| {
            let opts = opts.clone();
            async move { node.put_multipart_opts(location, opts).await }
        })
        .await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.each_node(|node| {
            let options = options.clone();
            async move { node.get_opts(location, options).await }
        })
        .await
    }

    async fn delete(&self, location: &Path) -> Result<()> {
        self.each_node(|node| async move { node.delete(location).await })
            .await
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        // A stream cannot fail over part-way; listing is for operators, not requests.
        let i = self.preferred.load(Ordering::Relaxed);
        self.nodes[i].1.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.each_node(|node| async move { node.list_with_delimiter(prefix).await })
            .await
    }

    async fn copy(&self, from: &Path, to: &Path) -> Result<()> {
        self.each_node(|node| async move { node.copy(from, to).await })
            .await
    }

    async fn copy_if_not_exists(&self, from: &Path, to: &Path) -> Result<()> {
        self.each_node(|node| async move { node.copy_if_not_exists(from, to).await })
            .await
    }
}

/// The cluster's store for the app host whose number is `host_index` (it starts at that node).
///
/// Each node's client: no retries of its own (the next node is the retry), bounded connect and
/// request times, and a fresh connection per request. Garage's S3 server does not set
/// `TCP_NODELAY`, so a small answer on a reused keep-alive connection can wait for the client's
/// delayed ACK (about 15 ms each here, against about 2 ms on a fresh connection: LAB-NOTES);
/// a loopback connect costs far less than that wait.
pub fn s3_cluster(
    settings: &S3Settings,
    host_index: usize,
) -> anyhow::Result<Arc<dyn ObjectStore>> {
    anyhow::ensure!(
        !settings.endpoints.is_empty(),
        "media.s3.endpoints is empty: name at least one node"
    );
    let client = ClientOptions::new()
        // Loopback lab hosts speak plain HTTP; a real deployment would use TLS.
        .with_allow_http(true)
        .with_connect_timeout(Duration::from_millis(settings.connect_timeout_ms))
        .with_timeout(Duration::from_millis(settings.request_timeout_ms))
        .with_pool_max_idle_per_host(0);
    let retry = RetryConfig {
        max_retries: 0,
        retry_timeout: Duration::from_millis(settings.request_timeout_ms),
        ..RetryConfig::default()
    };
    let nodes = settings
        .endpoints
        .iter()
        .map(|url| {
            let store = AmazonS3Builder::new()
                .with_endpoint(url)
                .with_bucket_name(&settings.bucket)
                .with_region(&settings.region)
                .with_access_key_id(&settings.access_key_id)
                .with_secret_access_key(settings.secret_access_key.expose())
                // Garage addresses buckets by path, not by host name.
                .with_virtual_hosted_style_request(false)
                .with_client_options(client.clone())
                .with_retry(retry.clone())
                .build()
                .with_context(|| format!("opening the object store node {url}"))?;
            Ok((url.clone(), Arc::new(store) as Arc<dyn ObjectStore>))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(Arc::new(NodeFailover::new(nodes, host_index)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;

    /// A node that is down: every call fails as an unreachable server does.
    #[derive(Debug)]
    struct Down;

    impl fmt::Display for Down {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("Down")
        }
    }

    fn down() -> object_store::Error {
        object_store::Error::Generic {
            store: "Down",
            source: "connection refused".into(),
        }
    }

    #[async_trait]
    impl ObjectStore for Down {
        async fn put_opts(&self, _: &Path, _: PutPayload, _: PutOptions) -> Result<PutResult> {
            Err(down())
        }
        async fn put_multipart_opts(
            &self,
            _: &Path,
            _: PutMultipartOptions,
        ) -> Result<Box<dyn MultipartUpload>> {
            Err(down())
        }
        async fn get_opts(&self, _: &Path, _: GetOptions) -> Result<GetResult> {
            Err(down())
        }
        async fn delete(&self, _: &Path) -> Result<()> {
            Err(down())
        }
        fn list(&self, _: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
            Box::pin(futures::stream::once(async { Err(down()) }))
        }
        async fn list_with_delimiter(&self, _: Option<&Path>) -> Result<ListResult> {
            Err(down())
        }
        async fn copy(&self, _: &Path, _: &Path) -> Result<()> {
            Err(down())
        }
        async fn copy_if_not_exists(&self, _: &Path, _: &Path) -> Result<()> {
            Err(down())
        }
    }

    fn cluster(nodes: Vec<Arc<dyn ObjectStore>>, first: usize) -> NodeFailover {
        let named = nodes
            .into_iter()
            .enumerate()
            .map(|(i, n)| (format!("node-{i}"), n))
            .collect();
        NodeFailover::new(named, first)
    }

    #[tokio::test]
    async fn a_down_node_is_skipped_and_the_answering_one_becomes_the_first() {
        let shared: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let store = cluster(vec![Arc::new(Down), shared.clone(), Arc::new(Down)], 0);
        let path = Path::from("media/1.png");
        store
            .put(&path, PutPayload::from_static(b"png"))
            .await
            .unwrap();
        assert_eq!(store.preferred.load(Ordering::Relaxed), 1);
        let bytes = store.get(&path).await.unwrap().bytes().await.unwrap();
        assert_eq!(&bytes[..], b"png");
    }

    #[tokio::test]
    async fn not_found_is_the_answer_not_a_reason_to_ask_another_node() {
        let empty: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let holder: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let path = Path::from("media/2.png");
        holder
            .put(&path, PutPayload::from_static(b"x"))
            .await
            .unwrap();
        // Asking the empty node first: its "not found" comes back, the holder is never asked.
        let store = cluster(vec![empty, holder], 0);
        assert!(matches!(
            store.get(&path).await,
            Err(object_store::Error::NotFound { .. })
        ));
        assert_eq!(store.preferred.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn every_node_down_is_an_error_after_one_round() {
        let store = cluster(vec![Arc::new(Down), Arc::new(Down)], 1);
        let err = store.get(&Path::from("media/3.png")).await.unwrap_err();
        assert!(node_failed(&err), "{err}");
    }

    #[test]
    fn each_host_starts_at_its_own_node() {
        let nodes = || -> Vec<Arc<dyn ObjectStore>> { vec![Arc::new(Down), Arc::new(Down)] };
        assert_eq!(cluster(nodes(), 0).preferred.load(Ordering::Relaxed), 0);
        assert_eq!(cluster(nodes(), 3).preferred.load(Ordering::Relaxed), 1);
    }
}
