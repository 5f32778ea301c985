//! `/v1/models`: pools, then routes.

use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use ssw_protocol::error::ErrorCode;
use ssw_protocol::models::{ModelCard, ModelList, VariantCard};

use crate::error::ApiError;
use crate::routing::{Pool, Route, Target};
use crate::state::AppState;

fn card(state: &AppState, pool: &Pool) -> ModelCard {
    ModelCard {
        id: pool.name.to_string(),
        object: "model".into(),
        created: state.started_s,
        owned_by: "ssw".into(),
        root: pool.served_model.clone(),
        aliases: pool.aliases.clone(),
        max_model_len: pool.max_model_len,
        variants: Vec::new(),
    }
}

fn route_card(state: &AppState, route: &Route) -> ModelCard {
    ModelCard {
        id: route.name.to_string(),
        object: "model".into(),
        created: state.started_s,
        owned_by: "ssw".into(),
        root: route.variants[0].pool.served_model.clone(),
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
                weight: v.weight,
            })
            .collect(),
    }
}

/// Every pool and route as a model card.
pub async fn list(State(state): State<AppState>) -> Json<ModelList> {
    let routing = state.routing();
    let pools = routing.router.pools().iter().map(|p| card(&state, p));
    let routes = routing
        .router
        .routes()
        .iter()
        .map(|r| route_card(&state, r));
    Json(ModelList {
        object: "list".into(),
        data: pools.chain(routes).collect(),
    })
}

/// One pool or route, by any name that routes to it.
pub async fn get(
    State(state): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<ModelCard>, ApiError> {
    // A name that does not decode (`%FF`) names no model either.
    let id = id.map(|Path(id)| id).unwrap_or_default();
    let routing = state.routing();
    match routing.router.by_model(&id) {
        Some(Target::Pool(p)) => Ok(Json(card(&state, p))),
        Some(Target::Route(r)) => Ok(Json(route_card(&state, r))),
        None => Err(ApiError::new(
            ErrorCode::ModelNotFound,
            format!("model `{}` does not exist", ssw_protocol::chat::quote(&id)),
        )),
    }
}
