//! `/v1/models` response types.

use serde::{Deserialize, Serialize};

/// `{"object":"list","data":[...]}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ModelList {
    /// Always `list`.
    pub object: String,
    /// One card per pool.
    pub data: Vec<ModelCard>,
}

/// One model card; `id` is the pool name, `root` the served model, like vLLM's own cards.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ModelCard {
    /// Pool name, usable as `model`.
    pub id: String,
    /// Always `model`.
    pub object: String,
    /// Unix seconds of the gateway's start.
    pub created: u64,
    /// Always `ssw`.
    pub owned_by: String,
    /// The served model name the engines answer with.
    pub root: String,
    /// Other names that route to this pool.
    pub aliases: Vec<String>,
    /// Context length, when configured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_model_len: Option<u32>,
}
