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

/// One model card; `id` is the pool name, `root` the served model, like vLLM's own cards. A
/// route's card has the route's name, its control's served model as `root`, and its variants.
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
    /// Context length, when configured (a route: its variants' smallest).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_model_len: Option<u32>,
    /// A route's variants (absent for a pool).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub variants: Vec<VariantCard>,
    /// A pool's live replicas and the model each one's engine serves (during a rollout, two
    /// models; absent when Redis cannot be read).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replicas: Vec<ReplicaCard>,
    /// A LoRA adapter's base: its pool (vLLM's `parent`, which names the base model).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
}

/// One replica of a pool on `/v1/models`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ReplicaCard {
    /// The worker's id.
    pub worker: String,
    /// The model its engine serves (its `/v1/models` id), once the worker has read it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// A hash of its engine's model card: changes with the model or its reported arguments.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// `serving`, `down`, `draining`, `drained` or `stopping`.
    pub state: String,
}

/// One variant of a route on `/v1/models`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct VariantCard {
    /// The variant's name (`x-ssw-variant`).
    pub name: String,
    /// The pool serving it.
    pub pool: String,
    /// The pool's LoRA adapter serving it, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adapter: Option<String>,
    /// Its weight.
    pub weight: u32,
}
