//! Keeps the routing settings in force current without a restart: the version published in
//! Redis (`ssw routes apply`), polled every [`POLL`], and the configuration file, re-read on
//! SIGHUP ([`AppState::reload_file`]).
//!
//! The settings in force are the file's, with the published version (if any) applied on top
//! (`ssw_config::Config::with_routing`). Each new version is validated here, against this
//! gateway's own file, before it is put in force; one that fails keeps the current version in
//! force, and the failure is logged, counted and written to this gateway's status in Redis
//! (`ssw routes show`). The swap is one pointer: a request is routed by exactly one version.

use std::time::Duration;

use ssw_config::routing::{GatewayStatus, Published};
use ssw_config::{Config, Routing};
use ssw_queue::routing::Publish;
use ssw_telemetry::names;
use tokio_util::sync::CancellationToken;

use crate::routing::Version;
use crate::state::AppState;

/// How often the published version is checked.
pub const POLL: Duration = Duration::from_secs(1);

/// How often a gateway writes its status even when nothing changed (`ssw routes show` treats
/// older ones as gone).
pub const STATUS_EVERY: Duration = Duration::from_secs(10);

/// What the poller remembers between checks.
#[derive(Default)]
pub struct Watcher {
    /// The latest version this gateway refused, and why.
    refused: Option<(u64, String)>,
    /// What it last wrote to its status, and when.
    reported: Option<(u64, Option<u64>, tokio::time::Instant)>,
}

impl Watcher {
    /// Polls Redis for the published routing version every [`POLL`] until `shutdown`.
    pub async fn run(mut self, state: AppState, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            self.check(&state).await;
        }
    }

    /// One check: takes a new published version (or restores the one held if Redis lost
    /// it), and writes this gateway's status when it changed or every [`STATUS_EVERY`].
    pub async fn check(&mut self, state: &AppState) {
        let published = match state.redis.routing_version().await {
            Ok(v) => v,
            Err(e) => {
                tracing::debug!(error = %e, "cannot read the routing version");
                return;
            }
        };
        let current = state.routing();
        if published == 0 && current.number > 0 {
            restore(state, &current).await;
        } else if published != current.number
            && self.refused.as_ref().is_none_or(|(v, _)| *v != published)
        {
            match apply(state, published).await {
                Ok(()) => self.refused = None,
                Err(Failure::Redis(e)) => {
                    tracing::debug!(error = %e, "cannot read routing version {published}");
                }
                Err(Failure::Invalid(why)) => {
                    tracing::error!(
                        version = published,
                        in_force = current.number,
                        "routing version {published} cannot be used here; keeping version {}: {why}",
                        current.number
                    );
                    reload_counted("invalid");
                    self.refused = Some((published, why));
                }
            }
        }
        let number = state.routing().number;
        let now = tokio::time::Instant::now();
        let refused = self.refused.as_ref().map(|r| r.0);
        let due = self
            .reported
            .as_ref()
            .is_none_or(|(v, r, at)| *v != number || *r != refused || now - *at >= STATUS_EVERY);
        if due {
            let status = GatewayStatus {
                version: number,
                refused: self.refused.clone(),
                at_ms: ssw_queue::now_ms(),
            };
            let json = serde_json::to_string(&status).unwrap_or_default();
            if state
                .redis
                .set_routing_status(&state.instance, &json)
                .await
                .is_ok()
            {
                self.reported = Some((number, refused, now));
            }
        }
    }
}

enum Failure {
    Redis(ssw_queue::QueueError),
    Invalid(String),
}

/// Reads version `number` from Redis, validates it against this gateway's file, and puts it
/// in force.
async fn apply(state: &AppState, number: u64) -> Result<(), Failure> {
    let document = state
        .redis
        .routing_document(number)
        .await
        .map_err(Failure::Redis)?
        .ok_or_else(|| Failure::Invalid(format!("Redis no longer keeps version {number}")))?;
    let published: Published = serde_json::from_str(&document)
        .map_err(|e| Failure::Invalid(format!("unreadable document: {e}")))?;
    let file = state.file();
    let config = file
        .with_routing(&published.routing)
        .map_err(|e| Failure::Invalid(e.to_string()))?;
    state.set_routing(Version::new(number, &config).with_document(document));
    reload_counted("applied");
    tracing::info!(
        version = number,
        author = %published.author,
        reason = %published.reason,
        "routing version {number} in force"
    );
    Ok(())
}

/// Redis holds no version (it restarted empty) but this gateway has one in force: writes it
/// back under its number, so gateways that start now get it too and numbering goes on.
async fn restore(state: &AppState, current: &Version) {
    let Some(document) = current.document.as_deref() else {
        return;
    };
    match state.redis.restore_routing(current.number, document).await {
        Ok(Publish::Published(v)) => {
            tracing::warn!(
                version = v,
                "Redis had lost the routing version; wrote it back"
            );
        }
        Ok(Publish::Conflict { .. }) => {}
        Err(e) => tracing::debug!(error = %e, "cannot restore the routing version"),
    }
}

fn reload_counted(result: &'static str) {
    metrics::counter!(names::GATEWAY_ROUTING_RELOADS, "result" => result).increment(1);
}

impl AppState {
    /// The configuration file's settings, as last read (at start or on SIGHUP); the routing
    /// settings in force are these with the published version applied.
    pub fn file(&self) -> Config {
        self.file.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Takes the reloadable settings of a configuration file read again (on SIGHUP): routes,
    /// pools' aliases and defaults, tenants' tiers and limits. Logs and returns the settings
    /// that differ but need a restart (left as they are), or why the file cannot be used
    /// (nothing changes then).
    pub fn reload_file(&self, new: Result<Config, String>) -> Result<Vec<String>, String> {
        let outcome = new.and_then(|new| self.take_file(&new));
        match &outcome {
            Ok(restart) if restart.is_empty() => tracing::info!("configuration file reloaded"),
            Ok(restart) => tracing::warn!(
                "configuration file reloaded; these settings changed but need a restart and stay as they were: {}",
                restart.join(", ")
            ),
            Err(e) => {
                tracing::error!("configuration file not reloaded, the settings in force stay: {e}");
                reload_counted("file_invalid");
            }
        }
        outcome
    }

    fn take_file(&self, new: &Config) -> Result<Vec<String>, String> {
        let restart = ssw_config::routing::restart_fields(&self.config, new);
        let file = self
            .config
            .with_routing(&new.routing())
            .map_err(|e| e.to_string())?;
        let current = self.routing();
        let document = current.document.clone();
        let routing: Option<Routing> = document
            .as_deref()
            .and_then(|d| serde_json::from_str::<Published>(d).ok())
            .map(|p| p.routing);
        let config = match &routing {
            Some(r) => file.with_routing(r).map_err(|e| {
                format!(
                    "the published routing version {} does not fit the new file: {e}",
                    current.number
                )
            })?,
            None => file.clone(),
        };
        let version = Version::new(current.number, &config);
        let version = match document {
            Some(d) => version.with_document(d),
            None => version,
        };
        *self.file.write().unwrap_or_else(|e| e.into_inner()) = file;
        self.set_routing(version);
        reload_counted("file");
        Ok(restart)
    }
}
