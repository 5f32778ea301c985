//! A pooled Redis handle with a deadline on every command.
//!
//! deadpool-redis' own manager sends a PING on every checkout, which doubles the round trips of
//! a platform that does a handful of single commands per request. [`CheapRecycle`] wraps it:
//! connections are created by deadpool-redis and handed out without a PING. A checkout only
//! borrows a multiplexed connection's handle; after a connection error the pool's idle
//! connections are dropped, so a Redis restart costs one failed command and nothing after.

use std::time::Duration;

use deadpool::managed::{self, Metrics, Object, RecycleResult};
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, FromRedisValue, RedisError};
use ssw_config::RedisConfig;
use ssw_protocol::keys::Keys;

/// Why a queue operation failed.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// Redis cannot be reached or did not answer in time.
    #[error("redis unavailable: {0}")]
    Unavailable(String),
    /// Redis answered with an error.
    #[error("redis error: {0}")]
    Redis(String),
    /// Redis answered something this code does not understand.
    #[error("unexpected redis reply: {0}")]
    Malformed(String),
    /// Redis is at `maxmemory` and refused a write that needs memory.
    #[error("redis is out of memory: {0}")]
    OutOfMemory(String),
}

impl QueueError {
    fn from_redis(e: RedisError) -> Self {
        if e.code() == Some("OOM") {
            Self::OutOfMemory(e.to_string())
        } else if e.is_io_error()
            || e.is_connection_dropped()
            || e.is_connection_refusal()
            || e.is_timeout()
            || e.is_unrecoverable_error()
        {
            Self::Unavailable(e.to_string())
        } else {
            Self::Redis(e.to_string())
        }
    }

    /// Whether the error is Redis' `NOGROUP` (the consumer group does not exist, e.g. after a
    /// restart without persistence).
    pub fn is_nogroup(&self) -> bool {
        matches!(self, Self::Redis(m) if m.contains("NOGROUP"))
    }
}

/// deadpool manager: deadpool-redis' connection factory, recycling without a round trip.
pub struct CheapRecycle(deadpool_redis::Manager);

impl managed::Manager for CheapRecycle {
    type Type = MultiplexedConnection;
    type Error = RedisError;

    async fn create(&self) -> Result<MultiplexedConnection, RedisError> {
        managed::Manager::create(&self.0).await
    }

    async fn recycle(
        &self,
        _conn: &mut MultiplexedConnection,
        _: &Metrics,
    ) -> RecycleResult<RedisError> {
        // Broken connections never come back: `Redis::run` empties the pool after an error.
        Ok(())
    }
}

type Pool = managed::Pool<CheapRecycle>;

/// A cheap-to-clone handle on one Redis server.
#[derive(Clone)]
pub struct Redis {
    pool: Pool,
    client: redis::Client,
    conn_config: AsyncConnectionConfig,
    keys: Keys,
    op_timeout: Duration,
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redis").field("keys", &self.keys).finish()
    }
}

impl Redis {
    /// Builds the handle; connects lazily. `password` overrides any password in the URL.
    pub fn new(cfg: &RedisConfig, password: Option<String>) -> Result<Self, QueueError> {
        use redis::IntoConnectionInfo;
        let mut info = cfg
            .url
            .as_str()
            .into_connection_info()
            .map_err(|e| QueueError::Redis(format!("redis.url: {e}")))?;
        if let Some(pw) = password {
            let settings = info.redis_settings().clone().set_password(pw);
            info = info.set_redis_settings(settings);
        }
        // Our own deadline wraps every command (`op_timeout`, longer for blocking reads), so the
        // connection's response timeout is off.
        let conn_config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(cfg.op_timeout))
            .set_response_timeout(None);
        let manager = deadpool_redis::Manager::new_with_config(info.clone(), conn_config.clone())
            .map_err(|e| QueueError::Redis(e.to_string()))?;
        let pool = Pool::builder(CheapRecycle(manager))
            .max_size(cfg.pool_size)
            .wait_timeout(Some(cfg.op_timeout))
            .create_timeout(Some(cfg.op_timeout))
            .runtime(deadpool::Runtime::Tokio1)
            .build()
            .map_err(|e| QueueError::Redis(e.to_string()))?;
        let client = redis::Client::open(info).map_err(|e| QueueError::Redis(e.to_string()))?;
        Ok(Self {
            pool,
            client,
            conn_config,
            keys: Keys::new(cfg.key_prefix.clone()),
            op_timeout: cfg.op_timeout,
        })
    }

    /// The key schema.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// The per-command deadline.
    pub fn op_timeout(&self) -> Duration {
        self.op_timeout
    }

    async fn checkout(&self) -> Result<Object<CheapRecycle>, QueueError> {
        self.pool.get().await.map_err(|e| match e {
            managed::PoolError::Backend(e) => QueueError::from_redis(e),
            other => QueueError::Unavailable(other.to_string()),
        })
    }

    /// Runs one command (or pipeline, or script invocation) on a pooled connection within
    /// `op_timeout`. The pooled object goes back at once: a multiplexed connection carries any
    /// number of commands at a time, so the pool spreads load over its connections rather than
    /// limiting concurrency to its size. After a connection error every idle connection is
    /// dropped (a restarted Redis breaks them all) and new ones are made on demand; so are they
    /// after a timeout.
    pub async fn run<T, F, Fut>(&self, f: F) -> Result<T, QueueError>
    where
        F: FnOnce(MultiplexedConnection) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let conn = {
            let obj = self.checkout().await?;
            (*obj).clone()
        };
        match tokio::time::timeout(self.op_timeout, f(conn)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                let err = QueueError::from_redis(e);
                if matches!(err, QueueError::Unavailable(_)) {
                    self.pool.retain(|_, _| false);
                }
                Err(err)
            }
            Err(_) => {
                // A connection that stopped answering (a frozen or partitioned Redis) would
                // stall every command multiplexed on it: start over with fresh connections.
                self.pool.retain(|_, _| false);
                Err(QueueError::Unavailable(format!(
                    "no answer within {:?}",
                    self.op_timeout
                )))
            }
        }
    }

    /// Runs one plain command.
    pub async fn query<T: FromRedisValue + Send>(&self, cmd: &redis::Cmd) -> Result<T, QueueError> {
        self.run(|mut c| async move { cmd.query_async(&mut c).await })
            .await
    }

    /// Runs a pipeline.
    pub async fn pipe<T: FromRedisValue + Send>(
        &self,
        pipe: &redis::Pipeline,
    ) -> Result<T, QueueError> {
        self.run(|mut c| async move { pipe.query_async(&mut c).await })
            .await
    }

    /// Runs a pipeline that invokes `scripts` (EVALSHA); if Redis does not know one (it
    /// restarted, or never saw it), loads them and runs the pipeline once more. Whatever the
    /// first run executed before the failing call runs again: only for pipelines whose
    /// commands may repeat (a reply event carries its sequence number, so a gateway drops a
    /// second copy).
    pub async fn pipe_scripts<T: FromRedisValue + Send>(
        &self,
        pipe: &redis::Pipeline,
        scripts: &[&crate::scripts::Lua],
    ) -> Result<T, QueueError> {
        match self.pipe(pipe).await {
            Err(QueueError::Redis(m)) if m.contains("NOSCRIPT") || m.contains("NoScript") => {
                for s in scripts {
                    let _: String = self
                        .query(redis::cmd("SCRIPT").arg("LOAD").arg(s.code))
                        .await?;
                }
                self.pipe(pipe).await
            }
            other => other,
        }
    }

    /// Runs a Lua script (EVALSHA, loading it on NOSCRIPT).
    pub async fn script<T: FromRedisValue + Send>(
        &self,
        inv: &redis::ScriptInvocation<'_>,
    ) -> Result<T, QueueError> {
        self.run(|mut c| async move { inv.invoke_async(&mut c).await })
            .await
    }

    /// A connection of its own, outside the pool, for blocking reads (`XREAD BLOCK`), which
    /// would stall every other command multiplexed on a shared connection.
    pub async fn dedicated(&self) -> Result<Dedicated, QueueError> {
        let conn = tokio::time::timeout(
            self.op_timeout,
            self.client
                .get_multiplexed_async_connection_with_config(&self.conn_config),
        )
        .await
        .map_err(|_| QueueError::Unavailable("connect timed out".into()))?
        .map_err(QueueError::from_redis)?;
        Ok(Dedicated {
            conn,
            op_timeout: self.op_timeout,
        })
    }

    /// `PING`.
    pub async fn ping(&self) -> Result<(), QueueError> {
        let pong: String = self.query(&redis::cmd("PING")).await?;
        if pong == "PONG" {
            Ok(())
        } else {
            Err(QueueError::Malformed(pong))
        }
    }
}

/// A connection for blocking commands; drop it after any error.
pub struct Dedicated {
    conn: MultiplexedConnection,
    op_timeout: Duration,
}

impl Dedicated {
    /// Runs a command that may block server-side for up to `block`.
    pub async fn blocking<T: FromRedisValue + Send>(
        &mut self,
        cmd: &redis::Cmd,
        block: Duration,
    ) -> Result<T, QueueError> {
        match tokio::time::timeout(block + self.op_timeout, cmd.query_async(&mut self.conn)).await {
            Ok(r) => r.map_err(QueueError::from_redis),
            Err(_) => Err(QueueError::Unavailable("blocking read timed out".into())),
        }
    }

    /// Runs a pipeline whose first command may block server-side for up to `block`; the
    /// commands after it run as soon as it returns, without another round trip.
    pub async fn blocking_pipe<T: FromRedisValue + Send>(
        &mut self,
        pipe: &redis::Pipeline,
        block: Duration,
    ) -> Result<T, QueueError> {
        match tokio::time::timeout(block + self.op_timeout, pipe.query_async(&mut self.conn)).await
        {
            Ok(r) => r.map_err(QueueError::from_redis),
            Err(_) => Err(QueueError::Unavailable("blocking read timed out".into())),
        }
    }
}
