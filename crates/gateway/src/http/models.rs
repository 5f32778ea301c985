//! `/v1/models`: pools, then routes.

use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use ssw_protocol::error::ErrorCode;
use std::collections::HashMap;
use std::sync::Arc;

use ssw_protocol::models::{ModelCard, ModelList, ReplicaCard, VariantCard};

use crate::error::ApiError;
use crate::routing::{Pool, Route, Target};
use crate::state::AppState;

/// The pools' live replicas, read at most once a second; empty where Redis cannot be read
/// (`/v1/models` still answers).
async fn replicas(state: &AppState) -> Arc<HashMap<String, Vec<ReplicaCard>>> {
    let mut cached = state.replicas.lock().await;
    if let Some((at, r)) = cached.as_ref()
        && at.elapsed() < std::time::Duration::from_secs(1)
    {
        return r.clone();
    }
    let now = ssw_queue::now_ms();
    let mut out = HashMap::new();
    for pool in state.pools.iter() {
        if let Ok(stats) = state.redis.pool_stats(pool, now).await {
            let mut cards: Vec<ReplicaCard> = stats
                .workers
                .iter()
                .map(|w| ReplicaCard {
                    worker: w.worker.clone(),
                    model: w.served_model.clone(),
                    revision: w.revision.clone(),
                    state: w.state().to_owned(),
                })
                .collect();
            cards.sort_by(|a, b| a.worker.cmp(&b.worker));
            out.insert(pool.to_string(), cards);
        }
    }
    let out = Arc::new(out);
    *cached = Some((tokio::time::Instant::now(), out.clone()));
    out
}

fn card(state: &AppState, pool: &Pool, replicas: &HashMap<String, Vec<ReplicaCard>>) -> ModelCard {
    ModelCard {
        id: pool.name.to_string(),
        object: "model".into(),
        created: state.started_s,
        owned_by: "ssw".into(),
        root: pool.served_model.clone(),
        aliases: pool.aliases.clone(),
        max_model_len: pool.max_model_len,
        variants: Vec::new(),
        replicas: replicas.get(&*pool.name).cloned().unwrap_or_default(),
        parent: None,
    }
}

/// A LoRA adapter's card: `parent` is its pool (as vLLM names the base model).
fn adapter_card(state: &AppState, pool: &Pool, adapter: &str) -> ModelCard {
    ModelCard {
        id: adapter.to_owned(),
        object: "model".into(),
        created: state.started_s,
        owned_by: "ssw".into(),
        root: adapter.to_owned(),
        aliases: vec![format!("{}:{adapter}", pool.name)],
        max_model_len: pool.max_model_len,
        variants: Vec::new(),
        replicas: Vec::new(),
        parent: Some(pool.name.to_string()),
    }
}

fn route_card(state: &AppState, route: &Route) -> ModelCard {
    ModelCard {
        id: route.name.to_string(),
        object: "model".into(),
        created: state.started_s,
        owned_by: "ssw".into(),
        root: match &route.variants[0].adapter {
            Some(a) => a.to_string(),
            None => route.variants[0].pool.served_model.clone(),
        },
        aliases: Vec::new(),
        max_model_len: route
            .variants
            .iter()
            .map(|v| v.pool.max_model_len)
            .min()
            .flatten(),
        variants: route
            .variants
            .iter()
            .map(|v| VariantCard {
                name: v.name.to_string(),
                pool: v.pool.name.to_string(),
                adapter: v.adapter.as_deref().map(str::to_owned),
                weight: v.weight,
            })
            .collect(),
        replicas: Vec::new(),
        parent: None,
    }
}

/// Every pool and route as a model card.
pub async fn list(State(state): State<AppState>) -> Json<ModelList> {
    let replicas = replicas(&state).await;
    let routing = state.routing();
    let pools = routing
        .router
        .pools()
        .iter()
        .map(|p| card(&state, p, &replicas));
    let adapters = routing.router.pools().iter().flat_map(|p| {
        p.adapters
            .iter()
            .map(|a| adapter_card(&state, p, a))
            .collect::<Vec<_>>()
    });
    let routes = routing
        .router
        .routes()
        .iter()
        .map(|r| route_card(&state, r));
    Json(ModelList {
        object: "list".into(),
        data: pools.chain(adapters).chain(routes).collect(),
    })
}

/// One pool or route, by any name that routes to it.
pub async fn get(
    State(state): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<ModelCard>, ApiError> {
    // A name that does not decode (`%FF`) names no model either.
    let id = id.map(|Path(id)| id).unwrap_or_default();
    let replicas = replicas(&state).await;
    let routing = state.routing();
    match routing.router.by_model(&id) {
        Some(Target::Pool(p)) => Ok(Json(card(&state, p, &replicas))),
        Some(Target::Route(r)) => Ok(Json(route_card(&state, r))),
        Some(Target::Adapter(p, a)) => Ok(Json(adapter_card(&state, p, a))),
        None => Err(ApiError::new(
            ErrorCode::ModelNotFound,
            format!("model `{}` does not exist", ssw_protocol::chat::quote(&id)),
        )),
    }
}
