//! Service tiers and tenants: who a request is for and how urgent it is.
//!
//! A request's tier is OpenAI's `service_tier` (`priority`, `default`, `flex`; `auto` or absent
//! means the tenant's default), or the header `x-ssw-tier: gold|silver|bronze` for clients that
//! cannot set body fields. The game's names map onto OpenAI's: Gold NPCs (a player is talking
//! to them) are `priority`, Silver are `default`, Bronze (ambient chatter) are `flex`.

use serde::{Deserialize, Serialize};

/// How urgent a request is; the queue serves higher tiers first (with a minimum share for the
/// lower ones, so none starves).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    /// Gold: interactive dialogue.
    Priority,
    /// Silver: normal.
    #[default]
    Default,
    /// Bronze: background work that may wait, and is shed first.
    Flex,
    /// A route's shadow copies (never a client's choice): served only when no job of another
    /// tier waits, refused before any other when the pool is busy, answers discarded.
    Shadow,
}

impl Tier {
    /// Every tier a client may ask for, highest first.
    pub const ALL: [Self; 3] = [Self::Priority, Self::Default, Self::Flex];

    /// Every lane class of a pool's queue: the clients' tiers, then shadow copies.
    pub const LANES: [Self; 4] = [Self::Priority, Self::Default, Self::Flex, Self::Shadow];

    /// OpenAI's name, as in `service_tier` and in Redis keys.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Priority => "priority",
            Self::Default => "default",
            Self::Flex => "flex",
            Self::Shadow => "shadow",
        }
    }

    /// The game's name (`x-ssw-tier`).
    pub fn game_name(self) -> &'static str {
        match self {
            Self::Priority => "gold",
            Self::Default => "silver",
            Self::Flex => "bronze",
            Self::Shadow => "shadow",
        }
    }

    /// Parses OpenAI's name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == s)
    }

    /// Parses a lane class's name as jobs carry it (the clients' tiers and `shadow`).
    pub fn parse_lane(s: &str) -> Option<Self> {
        Self::LANES.into_iter().find(|t| t.as_str() == s)
    }

    /// A `service_tier` value: `None` for `auto` (the tenant's default).
    pub fn from_service_tier(s: &str) -> Result<Option<Self>, UnknownTier> {
        match s {
            "auto" => Ok(None),
            other => Self::parse(other).map(Some).ok_or(UnknownTier),
        }
    }

    /// An `x-ssw-tier` value: the game's names, or OpenAI's (case-insensitive).
    pub fn from_header(s: &str) -> Option<Self> {
        let s = s.trim().to_ascii_lowercase();
        Self::ALL
            .into_iter()
            .find(|t| t.game_name() == s || t.as_str() == s)
    }

    /// vLLM's `priority` for `--scheduling-policy priority` (lower runs earlier).
    pub fn engine_priority(self) -> i32 {
        match self {
            Self::Priority => 0,
            Self::Default => 1,
            Self::Flex => 2,
            Self::Shadow => 3,
        }
    }

    /// `self`, lowered to `max` if above it.
    pub fn at_most(self, max: Self) -> Self {
        // Higher tiers sort first.
        self.max(max)
    }
}

/// A `service_tier` that is none of OpenAI's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnknownTier;

impl std::fmt::Display for Tier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The tenant every request belongs to when no tenant is configured for its key.
pub const DEFAULT_TENANT: &str = "default";

/// Whether `name` may name a tenant (it becomes part of Redis keys and metric labels).
pub fn valid_tenant(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiers_parse_from_openai_and_game_names() {
        assert_eq!(
            Tier::from_service_tier("priority"),
            Ok(Some(Tier::Priority))
        );
        assert_eq!(Tier::from_service_tier("flex"), Ok(Some(Tier::Flex)));
        assert_eq!(Tier::from_service_tier("auto"), Ok(None));
        assert_eq!(Tier::from_service_tier("scale"), Err(UnknownTier));
        assert_eq!(Tier::from_header(" Gold "), Some(Tier::Priority));
        assert_eq!(Tier::from_header("bronze"), Some(Tier::Flex));
        assert_eq!(Tier::from_header("default"), Some(Tier::Default));
        assert_eq!(Tier::from_header("platinum"), None);
    }

    #[test]
    fn a_tier_is_lowered_to_a_ceiling_never_raised() {
        assert_eq!(Tier::Priority.at_most(Tier::Default), Tier::Default);
        assert_eq!(Tier::Flex.at_most(Tier::Default), Tier::Flex);
        assert_eq!(Tier::Default.at_most(Tier::Priority), Tier::Default);
    }

    #[test]
    fn tenant_names_are_key_safe() {
        assert!(valid_tenant("studio-a_2"));
        assert!(!valid_tenant(""));
        assert!(!valid_tenant("a:b"));
        assert!(!valid_tenant("a}b"));
        assert!(!valid_tenant(&"x".repeat(65)));
    }
}
