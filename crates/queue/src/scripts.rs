//! The Lua scripts: every multi-step change to the queue, each atomic in Redis.
//!
//! Each script is its own file under `crates/queue/lua/`, headed by its contract (KEYS, ARGV,
//! return value); `crates/queue/tests/scripts.rs` tests each against a real redis-server,
//! races included. All keys of one call share a hash tag (`{pool}` or `{gw:…}`), so a pool
//! can live on its own Redis Cluster shard.
//!
//! Scripts that free memory or write a few bytes the platform cannot do without (claims,
//! cancellations, heartbeats, the replies of running jobs) carry `flags=allow-oom`: at `maxmemory` Redis still runs them.
//! ENQUEUE does not, so a full Redis refuses new jobs, and only new jobs. The shebang flags
//! need Redis 7.

use std::sync::LazyLock;

use redis::Script;

/// A script and its source (pipelines load it by source when Redis does not know it).
pub struct Lua {
    /// The source.
    pub code: &'static str,
    script: Script,
}

impl Lua {
    fn new(code: &'static str) -> Self {
        Self {
            code,
            script: Script::new(code),
        }
    }
}

impl std::ops::Deref for Lua {
    type Target = Script;

    fn deref(&self) -> &Script {
        &self.script
    }
}

macro_rules! script {
    ($name:ident, $file:literal) => {
        #[doc = concat!("`crates/queue/lua/", $file, "`.")]
        pub static $name: LazyLock<Lua> =
            LazyLock::new(|| Lua::new(include_str!(concat!("../lua/", $file))));
    };
    ($name:ident, $file:literal, with lanes) => {
        #[doc = concat!("`crates/queue/lua/", $file, "`, with `lanes.lua` after its first line.")]
        pub static $name: LazyLock<Lua> =
            LazyLock::new(|| Lua::new(with_lanes(include_str!(concat!("../lua/", $file)))));
    };
}

/// `code` with the LANES library (`crates/queue/lua/lanes.lua`) inserted after its first line
/// (the shebang must stay first).
fn with_lanes(code: &'static str) -> &'static str {
    let (shebang, body) = code.split_once('\n').unwrap_or((code, ""));
    let lanes = include_str!("../lua/lanes.lua");
    // Once per script per process: the scripts live as long as the process.
    String::leak(format!("{shebang}\n{lanes}{body}"))
}

script!(ENQUEUE, "enqueue.lua", with lanes);
script!(CANCEL, "cancel.lua", with lanes);
script!(EXPIRE, "expire.lua", with lanes);
script!(CLAIM, "claim.lua");
script!(MARK_OUTPUT, "mark_output.lua");
script!(FINISH, "finish.lua");
script!(DROP, "drop.lua");
script!(REQUEUE, "requeue.lua", with lanes);
script!(PULL, "pull.lua");
script!(ALLOWANCE, "allowance.lua");
script!(RECLAIM, "reclaim.lua");
script!(HEARTBEAT, "heartbeat.lua");
script!(KEEP_REPLIES, "keep_replies.lua");
script!(POOL_STATS, "pool_stats.lua");
script!(REPLY, "reply.lua");
script!(PUBLISH_ROUTING, "publish_routing.lua");
script!(LEASE, "lease.lua");
script!(FAST_PUSH, "fast_push.lua");
