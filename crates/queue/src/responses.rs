//! The Responses API's stored responses: one string key per response (`P:{resp:<id>}`), written
//! once with its TTL, read by id, deleted by id. Single-key commands: no script is needed.

use std::time::Duration;

use crate::{QueueError, Redis};

impl Redis {
    /// Stores response `id` (the gateway's record of it) for `ttl`.
    pub async fn store_response(
        &self,
        id: &str,
        record: &[u8],
        ttl: Duration,
    ) -> Result<(), QueueError> {
        let key = self.keys().response(id);
        self.query(
            redis::cmd("SET")
                .arg(&key)
                .arg(record)
                .arg("PX")
                .arg(ttl.as_millis().max(1) as u64),
        )
        .await
    }

    /// Response `id`'s record, if it is stored.
    pub async fn load_response(&self, id: &str) -> Result<Option<Vec<u8>>, QueueError> {
        self.query(redis::cmd("GET").arg(self.keys().response(id)))
            .await
    }

    /// Forgets response `id`; whether it was stored.
    pub async fn delete_response(&self, id: &str) -> Result<bool, QueueError> {
        let n: u64 = self
            .query(redis::cmd("DEL").arg(self.keys().response(id)))
            .await?;
        Ok(n > 0)
    }
}
