//! The whole platform on one machine: Redis, engines, workers, gateway.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use ssw_config::{Config, StubConfig};

use crate::process::Child;
use crate::redis::{RedisOptions, RedisServer};
use crate::{UpError, io};

/// What serves a replica's requests.
#[derive(Clone, Debug)]
pub enum EngineSpec {
    /// An `ssw stub` child with these settings (its `served_model` is set to the pool's).
    Stub(Box<StubConfig>),
    /// A running engine (a real vLLM) at this base URL.
    External(String),
}

/// One replica: an engine and the worker in front of it.
#[derive(Clone, Debug)]
pub struct ReplicaSpec {
    /// Worker id (`heavy-0`).
    pub id: String,
    /// Pool it serves.
    pub pool: String,
    /// Its engine.
    pub engine: EngineSpec,
    /// GPU indices (reported in status).
    pub gpus: Vec<u32>,
}

/// What to start.
#[derive(Clone, Debug)]
pub struct PlatformSpec {
    /// The `ssw` binary.
    pub ssw: PathBuf,
    /// Base configuration: pools, gateway and worker settings.
    pub config: Config,
    /// Use this Redis instead of starting one.
    pub redis_url: Option<String>,
    /// Where the gateway listens (port 0: any free port).
    pub gateway_listen: SocketAddr,
    /// The replicas.
    pub replicas: Vec<ReplicaSpec>,
    /// Extra environment for every child (e.g. `RUST_LOG`).
    pub env: Vec<(String, String)>,
}

impl PlatformSpec {
    /// The A40 layout with stub engines: for every pool, one replica on each of GPUs 0 and 1.
    pub fn a40_stubs(ssw: PathBuf, config: Config, stub: StubConfig) -> Self {
        let mut replicas = Vec::new();
        for gpu in 0..2u32 {
            for pool in config.pools.keys() {
                replicas.push(ReplicaSpec {
                    id: format!("{pool}-{gpu}"),
                    pool: pool.clone(),
                    engine: EngineSpec::Stub(Box::new(stub.clone())),
                    gpus: vec![gpu],
                });
            }
        }
        Self {
            ssw,
            gateway_listen: config.gateway.listen,
            config,
            redis_url: None,
            replicas,
            env: Vec::new(),
        }
    }
}

/// A directory removed on drop.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    /// A fresh directory under the system temp dir, readable by its owner only (it holds the
    /// platform's configs and secrets). Its name is unpredictable and the directory is created
    /// exclusively, so another local user cannot plant it or a symlink in its place beforehand.
    pub fn new(prefix: &str) -> Result<Self, UpError> {
        use std::hash::{BuildHasher, RandomState};
        use std::os::unix::fs::DirBuilderExt;
        static N: AtomicU32 = AtomicU32::new(0);
        let mut attempts = 0;
        loop {
            // RandomState is seeded from the OS's random source.
            let nonce = RandomState::new().hash_one(N.fetch_add(1, Ordering::Relaxed));
            let path =
                std::env::temp_dir().join(format!("{prefix}-{}-{nonce:016x}", std::process::id()));
            match std::fs::DirBuilder::new().mode(0o700).create(&path) {
                Ok(()) => return Ok(Self(path)),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && attempts < 8 => {
                    attempts += 1
                }
                Err(e) => return Err(io(format!("creating {}", path.display()))(e)),
            }
        }
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The running platform. Dropping it kills every child.
#[derive(Debug)]
pub struct Platform {
    // Fields drop in order: clients of Redis go before Redis.
    /// The gateway process.
    pub gateway: Option<Child>,
    /// Worker processes by id.
    pub workers: BTreeMap<String, Child>,
    /// Stub processes and their URLs, by replica id.
    pub stubs: BTreeMap<String, (Child, String)>,
    /// Each worker's metrics URL (`http://127.0.0.1:PORT`), by id.
    pub worker_metrics: BTreeMap<String, String>,
    /// The started Redis, unless an external one is used.
    pub redis: Option<RedisServer>,
    /// The Redis URL everything uses.
    pub redis_url: String,
    /// Gateway base URL (`http://127.0.0.1:PORT`).
    pub gateway_url: String,
    /// The gateway's operators' listener (`gateway.ops_listen` set in the spec's config).
    pub ops_url: Option<String>,
    spec: PlatformSpec,
    /// Copies of the gateway's listeners, handed to it again when it is restarted (clients
    /// that connect meanwhile wait in the kernel's queue).
    gateway_listeners: Vec<(&'static str, TcpListener)>,
    /// Each replica's engine URL.
    engine_urls: BTreeMap<String, String>,
    /// Restart bookkeeping per child name.
    restarts: BTreeMap<String, Restarts>,
    dir: TempDir,
}

/// How often a child was restarted, and when it may be next.
#[derive(Debug)]
struct Restarts {
    count: u32,
    not_before: tokio::time::Instant,
    started: tokio::time::Instant,
}

/// Restart back-off: 100 ms doubling to 5 s, reset after a child ran for a minute (as
/// systemd's `RestartSec` with `RestartSteps` does on the appliance).
fn backoff(count: u32) -> Duration {
    (Duration::from_millis(100) * 2u32.saturating_pow(count.min(6))).min(Duration::from_secs(5))
}

/// Binds with a deep accept queue: a burst of thousands of connections must not overflow it
/// (std's default backlog is 128; the kernel caps the value at `net.core.somaxconn`).
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    let std: TcpListener = socket.listen(65_535)?.into_std()?;
    std.set_nonblocking(false)?;
    Ok(std)
}

fn bind_loopback() -> Result<(TcpListener, String), UpError> {
    let l =
        bind(SocketAddr::from(([127, 0, 0, 1], 0))).map_err(io("binding a loopback listener"))?;
    let addr = l.local_addr().map_err(io("reading a listener's address"))?;
    Ok((l, format!("http://{addr}")))
}

impl Platform {
    /// Starts everything (Redis first, then engines, workers, the gateway); does not wait for
    /// readiness (see [`Platform::wait_ready`]).
    pub async fn start(spec: PlatformSpec) -> Result<Self, UpError> {
        let dir = TempDir::new("ssw-up")?;
        let (redis, redis_url) = match &spec.redis_url {
            Some(url) => (None, url.clone()),
            None => {
                let options = RedisOptions {
                    max_memory: spec.config.redis_max_memory().bytes(),
                    aof: spec.config.redis.persistence == ssw_config::Persistence::Aof,
                };
                let r = RedisServer::start_with(dir.path(), options).await?;
                let url = r.url();
                (Some(r), url)
            }
        };
        let gateway_listener = bind(spec.gateway_listen).map_err(io(format!(
            "binding the gateway to {}",
            spec.gateway_listen
        )))?;
        let gateway_url = format!(
            "http://{}",
            gateway_listener
                .local_addr()
                .map_err(io("gateway address"))?
        );
        let ops = match spec.config.gateway.ops_listen {
            Some(addr) => {
                let l = bind(addr).map_err(io(format!("binding the ops listener to {addr}")))?;
                let url = format!("http://{}", l.local_addr().map_err(io("ops address"))?);
                Some((l, url))
            }
            None => None,
        };
        let ops_url = ops.as_ref().map(|(_, u)| u.clone());
        let mut platform = Self {
            redis,
            redis_url,
            gateway_url,
            ops_url,
            gateway: None,
            workers: BTreeMap::new(),
            stubs: BTreeMap::new(),
            worker_metrics: BTreeMap::new(),
            spec,
            gateway_listeners: Vec::new(),
            engine_urls: BTreeMap::new(),
            restarts: BTreeMap::new(),
            dir,
        };
        for replica in platform.spec.replicas.clone() {
            let engine_url = match &replica.engine {
                EngineSpec::External(url) => url.clone(),
                EngineSpec::Stub(stub) => platform.spawn_stub(&replica, (**stub).clone())?,
            };
            platform
                .engine_urls
                .insert(replica.id.clone(), engine_url.clone());
            platform.spawn_worker(
                &replica.id,
                &replica.pool,
                &engine_url,
                replica.gpus.clone(),
            )?;
        }
        let mut listeners = vec![("gateway", gateway_listener)];
        listeners.extend(ops.map(|(l, _)| ("ops", l)));
        platform.gateway_listeners = listeners
            .iter()
            .map(|(n, l)| Ok((*n, l.try_clone()?)))
            .collect::<std::io::Result<_>>()
            .map_err(io("keeping the gateway's listeners"))?;
        platform.gateway = Some(platform.spawn_gateway(listeners)?);
        Ok(platform)
    }

    fn spawn_gateway(&self, listeners: Vec<(&str, TcpListener)>) -> Result<Child, UpError> {
        let cfg = self.base_config();
        let path = self.write_config("gateway", &cfg)?;
        self.spawn_ssw("gateway", "gateway", &path, listeners)
    }

    /// Starts one more gateway, with the platform's configuration, on a loopback port of its
    /// own; returns it and its URL. Several gateways share Redis and the workers, as on a
    /// multi-host deployment.
    pub fn add_gateway(&self, name: &str) -> Result<(Child, String), UpError> {
        let (listener, url) = bind_loopback()?;
        let path = self.write_config(&format!("gateway-{name}"), &self.base_config())?;
        let child = self.spawn_ssw("gateway", name, &path, vec![("gateway", listener)])?;
        Ok((child, url))
    }

    /// Starts the gateway again on the same listeners (after it exited or was killed).
    pub async fn restart_gateway(&mut self) -> Result<(), UpError> {
        if let Some(mut g) = self.gateway.take() {
            g.signal(libc::SIGKILL);
            let _ = g.wait().await;
        }
        let listeners = self
            .gateway_listeners
            .iter()
            .map(|(n, l)| Ok((*n, l.try_clone()?)))
            .collect::<std::io::Result<_>>()
            .map_err(io("handing the gateway its listeners"))?;
        self.gateway = Some(self.spawn_gateway(listeners)?);
        Ok(())
    }

    /// Restarts, with back-off, every child that has exited (Redis included, on its port;
    /// stubs on theirs, the gateway on its listeners), as systemd does on the appliance.
    /// Returns a line for each restart and for each child waiting for its back-off.
    pub async fn supervise(&mut self) -> Vec<String> {
        let mut exited: Vec<(String, String)> = Vec::new();
        if let Some(r) = self.redis.as_mut()
            && let Some(status) = r.exited()
        {
            exited.push(("redis-server".into(), status));
        }
        if let Some(g) = self.gateway.as_mut()
            && let Some(status) = g.try_wait()
        {
            exited.push(("gateway".into(), status.to_string()));
        }
        for (id, (c, _)) in &mut self.stubs {
            if let Some(status) = c.try_wait() {
                exited.push((format!("stub {id}"), status.to_string()));
            }
        }
        for (id, c) in &mut self.workers {
            if let Some(status) = c.try_wait() {
                exited.push((format!("worker {id}"), status.to_string()));
            }
        }
        let now = tokio::time::Instant::now();
        let mut out = Vec::new();
        for (name, status) in exited {
            let r = self.restarts.entry(name.clone()).or_insert(Restarts {
                count: 0,
                not_before: now,
                started: now,
            });
            if now.duration_since(r.started) > Duration::from_secs(60) {
                r.count = 0;
            }
            if now < r.not_before {
                continue;
            }
            let result = self.restart_child(&name).await;
            let r = self.restarts.get_mut(&name).expect("inserted above");
            r.count += 1;
            r.started = now;
            r.not_before = now + backoff(r.count);
            out.push(match result {
                Ok(()) => format!("restarted {name} ({status}; restart {})", r.count),
                Err(e) => format!("{name} exited ({status}); restart failed: {e}"),
            });
        }
        out
    }

    async fn restart_child(&mut self, name: &str) -> Result<(), UpError> {
        if name == "redis-server" {
            if let Some(r) = self.redis.as_mut() {
                r.restart().await?;
            }
            return Ok(());
        }
        if name == "gateway" {
            return self.restart_gateway().await;
        }
        if let Some(id) = name.strip_prefix("stub ") {
            return self.restart_stub(id).await;
        }
        if let Some(id) = name.strip_prefix("worker ") {
            let replica = self.replica(id)?;
            let url = self.engine_urls.get(id).cloned().unwrap_or_default();
            return self.spawn_worker(id, &replica.pool, &url, replica.gpus);
        }
        Ok(())
    }

    /// The spec of replica `id`.
    fn replica(&self, id: &str) -> Result<ReplicaSpec, UpError> {
        self.spec
            .replicas
            .iter()
            .find(|r| r.id == id)
            .cloned()
            .ok_or_else(|| UpError::NotReady(format!("no replica {id}")))
    }

    /// Starts a replica's stub engine again on its port.
    pub async fn restart_stub(&mut self, id: &str) -> Result<(), UpError> {
        let replica = self.replica(id)?;
        let EngineSpec::Stub(stub) = replica.engine.clone() else {
            return Ok(());
        };
        let Some((mut old, url)) = self.stubs.remove(id) else {
            return Ok(());
        };
        old.signal(libc::SIGKILL);
        let _ = old.wait().await;
        let addr: SocketAddr = url
            .trim_start_matches("http://")
            .parse()
            .map_err(|_| UpError::NotReady(format!("stub url {url}")))?;
        let listener = bind(addr).map_err(io(format!("binding {addr} again")))?;
        self.spawn_stub_on(&replica, *stub, listener, url)?;
        Ok(())
    }

    /// The configuration every child starts from (Redis URL filled in).
    pub fn base_config(&self) -> Config {
        let mut cfg = self.spec.config.clone();
        cfg.redis.url = self.redis_url.clone();
        cfg
    }

    /// The working directory (config files, Redis data).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn write_config(&self, name: &str, cfg: &Config) -> Result<PathBuf, UpError> {
        let path = self.dir.path().join(format!("{name}.toml"));
        std::fs::write(&path, cfg.to_toml()?).map_err(io(format!("writing {}", path.display())))?;
        Ok(path)
    }

    fn spawn_ssw(
        &self,
        role: &str,
        name: &str,
        config: &Path,
        listeners: Vec<(&str, TcpListener)>,
    ) -> Result<Child, UpError> {
        let env: Vec<(&str, String)> = self
            .spec
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.clone()))
            .collect();
        let config = config.to_string_lossy();
        Child::spawn(
            format!("{role} {name}"),
            &self.spec.ssw,
            &[role, "--config", &config],
            &env,
            listeners,
            None,
        )
    }

    /// Starts a stub engine for `pool` with no worker in front of it; returns its URL.
    pub fn add_stub(&mut self, id: &str, pool: &str, stub: StubConfig) -> Result<String, UpError> {
        let replica = ReplicaSpec {
            id: id.to_owned(),
            pool: pool.to_owned(),
            engine: EngineSpec::Stub(Box::new(stub.clone())),
            gpus: Vec::new(),
        };
        self.spawn_stub(&replica, stub)
    }

    fn spawn_stub(
        &mut self,
        replica: &ReplicaSpec,
        mut stub: StubConfig,
    ) -> Result<String, UpError> {
        if let Some(pool) = self.spec.config.pools.get(&replica.pool) {
            stub.served_model = pool.served_model.clone();
            stub.scheduling_policy = pool.scheduling_policy;
            // The engine's context length is the pool's (as `--max-model-len` is on vLLM).
            if let Some(len) = pool.max_model_len {
                stub.max_model_len = len;
            }
            // The pool's adapters, as `--lora-modules` and `--max-loras` give them to vLLM.
            if !pool.adapters.is_empty() && stub.lora_modules.is_empty() {
                stub.lora_modules = pool
                    .adapters
                    .iter()
                    .map(|(name, a)| (name.clone(), a.source.clone()))
                    .collect();
                stub.max_loras = pool.max_loras;
            }
        }
        let (listener, url) = bind_loopback()?;
        self.spawn_stub_on(replica, stub, listener, url.clone())?;
        Ok(url)
    }

    fn spawn_stub_on(
        &mut self,
        replica: &ReplicaSpec,
        stub: StubConfig,
        listener: TcpListener,
        url: String,
    ) -> Result<(), UpError> {
        let mut cfg = self.base_config();
        cfg.stub = stub;
        let path = self.write_config(&format!("stub-{}", replica.id), &cfg)?;
        let child = self.spawn_ssw("stub", &replica.id, &path, vec![("stub", listener)])?;
        self.stubs.insert(replica.id.clone(), (child, url));
        Ok(())
    }

    /// Starts (or restarts) a worker process.
    pub fn spawn_worker(
        &mut self,
        id: &str,
        pool: &str,
        engine_url: &str,
        gpus: Vec<u32>,
    ) -> Result<(), UpError> {
        let mut cfg = self.base_config();
        cfg.worker.pool = Some(pool.to_owned());
        cfg.worker.id = Some(id.to_owned());
        cfg.worker.engine_url = engine_url.to_owned();
        cfg.worker.gpus = gpus;
        let path = self.write_config(&format!("worker-{id}"), &cfg)?;
        let (listener, url) = bind_loopback()?;
        let child = self.spawn_ssw("worker", id, &path, vec![("worker", listener)])?;
        self.workers.insert(id.to_owned(), child);
        self.worker_metrics.insert(id.to_owned(), url);
        Ok(())
    }

    /// The URL of a replica's stub engine.
    pub fn stub_url(&self, id: &str) -> Option<&str> {
        self.stubs.get(id).map(|(_, u)| u.as_str())
    }

    /// Waits until the gateway's `/readyz` answers 200.
    pub async fn wait_ready(&mut self, timeout: Duration) -> Result<(), UpError> {
        let client = reqwest::Client::new();
        let base = self.ops_url.as_deref().unwrap_or(&self.gateway_url);
        let url = format!("{base}/readyz");
        let deadline = tokio::time::Instant::now() + timeout;
        let mut last = String::from("no answer");
        while tokio::time::Instant::now() < deadline {
            if let Some(name) = self.exited() {
                return Err(UpError::NotReady(format!("{name} exited during start-up")));
            }
            match client
                .get(&url)
                .timeout(Duration::from_secs(2))
                .send()
                .await
            {
                Ok(r) if r.status().is_success() => return Ok(()),
                Ok(r) => last = r.text().await.unwrap_or_default(),
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(UpError::NotReady(format!(
            "the platform was not ready after {timeout:?}: {last}"
        )))
    }

    /// The name of a child that has exited, if any.
    pub fn exited(&mut self) -> Option<String> {
        let gateway = self.gateway.iter_mut();
        let workers = self.workers.values_mut();
        let stubs = self.stubs.values_mut().map(|(c, _)| c);
        for c in gateway.chain(workers).chain(stubs) {
            if let Some(status) = c.try_wait() {
                return Some(format!("{} ({status})", c.name));
            }
        }
        None
    }

    /// Stops everything in order: gateway, workers (they drain), engines, Redis.
    pub async fn shutdown(mut self, grace: Duration) {
        if let Some(mut g) = self.gateway.take() {
            g.stop(grace).await;
        }
        let mut workers: Vec<Child> = std::mem::take(&mut self.workers).into_values().collect();
        for w in &workers {
            w.signal(libc::SIGTERM);
        }
        for w in &mut workers {
            w.stop(grace).await;
        }
        for (_, (mut s, _)) in std::mem::take(&mut self.stubs) {
            s.stop(grace).await;
        }
        if let Some(mut r) = self.redis.take() {
            r.kill().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::TempDir;

    #[test]
    fn temp_dirs_are_private_unpredictable_and_removed() {
        let a = TempDir::new("ssw-test").unwrap();
        let b = TempDir::new("ssw-test").unwrap();
        assert_ne!(a.path(), b.path());
        let mode = std::fs::metadata(a.path()).unwrap().permissions().mode();
        assert_eq!(
            mode & 0o777,
            0o700,
            "configs and secrets are the owner's only"
        );
        // The name does not follow from the pid and a counter.
        let name = a.path().file_name().unwrap().to_str().unwrap().to_owned();
        let nonce = name.rsplit('-').next().unwrap();
        assert_eq!(nonce.len(), 16, "{name}");
        let path = a.path().to_owned();
        drop(a);
        assert!(!path.exists());
    }
}
