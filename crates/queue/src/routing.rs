//! Routing versions in Redis: documents published compare-and-swap, the version in force,
//! and each gateway's status. The documents are opaque here (`ssw_config::routing`).

use redis::Value;

use crate::scripts::{LEASE, PUBLISH_ROUTING};
use crate::{QueueError, Redis, resp};

/// Versions kept in Redis (older ones are deleted as new ones are published).
pub const KEEP_VERSIONS: u64 = 100;

/// What a publication did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Publish {
    /// The document is the version in force now.
    Published(u64),
    /// Another version was published meanwhile (or, restoring, Redis has one): nothing written.
    Conflict {
        /// The version in force.
        in_force: u64,
    },
}

impl Redis {
    /// The routing version in force (0: none published).
    pub async fn routing_version(&self) -> Result<u64, QueueError> {
        let v: Option<u64> = self
            .query(redis::cmd("GET").arg(self.keys().routing_version()))
            .await?;
        Ok(v.unwrap_or(0))
    }

    /// A routing version's document, if Redis still keeps it.
    pub async fn routing_document(&self, version: u64) -> Result<Option<String>, QueueError> {
        self.query(
            redis::cmd("HGET")
                .arg(self.keys().routing_versions())
                .arg(version),
        )
        .await
    }

    /// Every routing version Redis keeps, oldest first.
    pub async fn routing_documents(&self) -> Result<Vec<(u64, String)>, QueueError> {
        let all: Vec<(u64, String)> = self
            .query(redis::cmd("HGETALL").arg(self.keys().routing_versions()))
            .await?;
        let mut all = all;
        all.sort_by_key(|(v, _)| *v);
        Ok(all)
    }

    /// Publishes `document` as the next version if `based_on` is still in force
    /// (PUBLISH_ROUTING).
    pub async fn publish_routing(
        &self,
        based_on: u64,
        document: &str,
    ) -> Result<Publish, QueueError> {
        self.publish(based_on, document, "").await
    }

    /// Writes back version `version` that this process holds, when Redis has no version at all
    /// (it restarted empty).
    pub async fn restore_routing(
        &self,
        version: u64,
        document: &str,
    ) -> Result<Publish, QueueError> {
        self.publish(0, document, &version.to_string()).await
    }

    async fn publish(
        &self,
        based_on: u64,
        document: &str,
        restore: &str,
    ) -> Result<Publish, QueueError> {
        let keys = self.keys();
        let mut inv = PUBLISH_ROUTING.prepare_invoke();
        inv.key(keys.routing_version())
            .key(keys.routing_versions())
            .arg(based_on)
            .arg(document)
            .arg(KEEP_VERSIONS)
            .arg(restore);
        let v: Value = self.script(&inv).await?;
        let parts = resp::array(v)?;
        let int = |i: usize| parts.get(i).and_then(resp::int).unwrap_or(0).max(0) as u64;
        Ok(match int(0) {
            1 => Publish::Published(int(1)),
            _ => Publish::Conflict { in_force: int(1) },
        })
    }

    /// Records this gateway instance's routing status (JSON).
    pub async fn set_routing_status(&self, instance: &str, status: &str) -> Result<(), QueueError> {
        self.query(
            redis::cmd("HSET")
                .arg(self.keys().routing_status())
                .arg(instance)
                .arg(status),
        )
        .await
        .map(|_: i64| ())
    }

    /// Every gateway instance's routing status.
    pub async fn routing_statuses(&self) -> Result<Vec<(String, String)>, QueueError> {
        self.query(redis::cmd("HGETALL").arg(self.keys().routing_status()))
            .await
    }

    /// Forgets gateway instances' routing statuses.
    pub async fn forget_routing_statuses(&self, instances: &[String]) -> Result<(), QueueError> {
        if instances.is_empty() {
            return Ok(());
        }
        self.query(
            redis::cmd("HDEL")
                .arg(self.keys().routing_status())
                .arg(instances),
        )
        .await
        .map(|_: i64| ())
    }

    /// Adds counts to a guarded route's stats of one time slice (`fields`: field and amount),
    /// which expire after `ttl`.
    pub async fn add_route_stats(
        &self,
        route: &str,
        slice: u64,
        fields: &[(String, u64)],
        ttl: std::time::Duration,
    ) -> Result<(), QueueError> {
        if fields.is_empty() {
            return Ok(());
        }
        let key = self.keys().route_stats(route, slice);
        let mut pipe = redis::pipe();
        for (field, n) in fields {
            pipe.cmd("HINCRBY").arg(&key).arg(field).arg(*n).ignore();
        }
        pipe.cmd("PEXPIRE")
            .arg(&key)
            .arg(ttl.as_millis() as u64)
            .ignore();
        self.pipe(&pipe).await
    }

    /// A guarded route's stats of the slices `from..=to`, every field of each.
    pub async fn route_stats(
        &self,
        route: &str,
        from: u64,
        to: u64,
    ) -> Result<Vec<(String, u64)>, QueueError> {
        let mut pipe = redis::pipe();
        for s in from..=to {
            pipe.cmd("HGETALL").arg(self.keys().route_stats(route, s));
        }
        let all: Vec<Vec<(String, u64)>> = self.pipe(&pipe).await?;
        Ok(all.into_iter().flatten().collect())
    }

    /// Takes or renews the lease `key` for `holder` (LEASE); whether `holder` holds it now.
    pub async fn lease(
        &self,
        key: &str,
        holder: &str,
        length: std::time::Duration,
    ) -> Result<bool, QueueError> {
        let mut inv = LEASE.prepare_invoke();
        inv.key(key).arg(holder).arg(length.as_millis() as u64);
        let held: i64 = self.script(&inv).await?;
        Ok(held == 1)
    }
}
