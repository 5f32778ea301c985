//! `/v1/models`.

use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use ssw_protocol::error::ErrorCode;
use ssw_protocol::models::{ModelCard, ModelList};

use crate::error::ApiError;
use crate::routing::Pool;
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
    }
}

/// Every pool as a model card.
pub async fn list(State(state): State<AppState>) -> Json<ModelList> {
    Json(ModelList {
        object: "list".into(),
        data: state
            .router
            .pools()
            .iter()
            .map(|p| card(&state, p))
            .collect(),
    })
}

/// One pool, by any name that routes to it.
pub async fn get(
    State(state): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<ModelCard>, ApiError> {
    // A name that does not decode (`%FF`) names no model either.
    let id = id.map(|Path(id)| id).unwrap_or_default();
    state
        .router
        .by_model(&id)
        .map(|p| Json(card(&state, p)))
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::ModelNotFound,
                format!("model `{}` does not exist", ssw_protocol::chat::quote(&id)),
            )
        })
}
