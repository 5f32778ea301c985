//! The chat-completions request as the gateway accepts it.
//!
//! Parsing reads the body's top level into borrowed raw values, in order, without building a
//! tree of it: a request costs about its own size in memory, whatever its shape (a body of a
//! million tiny messages is validated by walking it, not by materialising it). The fields the
//! platform relies on (`messages`, `model`, `stream`, `stream_options`, the token and choice
//! counts, the sampling numbers) are checked; every field must be one the platform knows
//! ([`crate::fields`]); every other byte reaches the engine as the client sent it, apart from
//! `model` and the pool's defaults. [`ChatRequest::check`] applies a pool's limits once the
//! request is routed.

use std::borrow::Cow;
use std::fmt;

use serde::Deserializer;
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::error::{ErrorCode, ErrorEnvelope};
use crate::fields::{self, Owner};

/// A validated chat-completions (or completions) request, borrowing the body it was parsed
/// from.
#[derive(Clone, Debug)]
pub struct ChatRequest<'a> {
    /// The endpoint it came to.
    pub endpoint: crate::job::Endpoint,
    /// The body's top-level fields in the order sent (the last of duplicate keys wins, in the
    /// first one's place), values untouched.
    fields: Vec<(Cow<'a, str>, &'a RawValue)>,
    /// The requested model, if the client named one.
    pub model: Option<String>,
    /// Whether the client asked for an SSE stream.
    pub stream: bool,
    /// `max_tokens`, or else `max_completion_tokens`.
    pub max_tokens: Option<u64>,
    /// `n`.
    pub n: Option<u64>,
    best_of: Option<u64>,
    /// Fields the platform sets or removes in the engine's body (a Responses request's
    /// expanded `input`, its `request_id`, `store`), in place of the client's.
    overrides: Vec<(&'static str, Option<Box<RawValue>>)>,
}

/// A pool's limits on what a request may ask for.
#[derive(Clone, Copy, Debug)]
pub struct Limits<'p> {
    /// Largest `max_tokens` / `max_completion_tokens`; none: no ceiling.
    pub max_tokens: Option<u32>,
    /// Largest `n` and `best_of`.
    pub max_n: u32,
    /// vLLM extension fields this pool accepts.
    pub allowed_fields: &'p [String],
}

/// Why a body was refused; always a 400.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestError {
    /// [`ErrorCode::InvalidJson`] or [`ErrorCode::InvalidRequest`].
    pub code: ErrorCode,
    /// What is wrong, naming the field.
    pub message: String,
    /// The offending field, if one.
    pub param: Option<String>,
}

impl RequestError {
    fn field(param: &str, message: impl Into<String>) -> Self {
        Self {
            code: ErrorCode::InvalidRequest,
            message: message.into(),
            param: Some(param.to_owned()),
        }
    }

    fn json(message: impl fmt::Display) -> Self {
        Self {
            code: ErrorCode::InvalidJson,
            message: format!("request body is not valid JSON: {message}"),
            param: None,
        }
    }

    /// The OpenAI envelope for this error.
    pub fn envelope(&self) -> ErrorEnvelope {
        let env = ErrorEnvelope::new(self.code, self.message.clone());
        match &self.param {
            Some(p) => env.with_param(p.clone()),
            None => env,
        }
    }
}

impl fmt::Display for RequestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for RequestError {}

/// Longest excerpt of a client's value quoted back in an error message.
const QUOTE_MAX: usize = 40;

/// `s` for an error message: at most [`QUOTE_MAX`] characters, printable.
pub fn quote(s: &str) -> String {
    let mut out: String = s
        .chars()
        .take(QUOTE_MAX)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    if s.chars().count() > QUOTE_MAX {
        out.push('…');
    }
    out
}

/// What kind of JSON value a raw value is, from its first byte.
fn kind(raw: &RawValue) -> &'static str {
    match raw.get().as_bytes().first() {
        Some(b'n') => "null",
        Some(b't' | b'f') => "a boolean",
        Some(b'"') => "a string",
        Some(b'[') => "an array",
        Some(b'{') => "an object",
        _ => "a number",
    }
}

fn is_null(raw: &RawValue) -> bool {
    raw.get() == "null"
}

/// A top-level key, borrowed from the body unless it holds escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de> de::Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string key")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_str(V)
    }
}

/// The body's top level: an object of known fields, read in order.
struct TopLevel<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

/// The first field no one knows, reported instead of a JSON error.
#[derive(Debug)]
struct UnknownField(String);

impl fmt::Display for UnknownField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\u{0}unknown:{}", self.0)
    }
}

/// Reads a [`TopLevel`], refusing the first field the endpoint does not know.
struct TopLevelOf(crate::job::Endpoint);

impl<'de> de::DeserializeSeed<'de> for TopLevelOf {
    type Value = TopLevel<'de>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        struct V(crate::job::Endpoint);
        impl<'de> Visitor<'de> for V {
            type Value = TopLevel<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out: Vec<(Cow<'de, str>, &'de RawValue)> = Vec::new();
                while let Some(Key(key)) = map.next_key()? {
                    if fields::owner_for(&key, self.0) == Owner::Unknown {
                        // Refused whatever the pool: stop before reading further.
                        return Err(de::Error::custom(UnknownField(quote(&key))));
                    }
                    let value: &'de RawValue = map.next_value()?;
                    // Known keys are a few dozen, so the search is short; the last duplicate
                    // wins, as in any JSON object reader.
                    match out.iter_mut().find(|(k, _)| *k == key) {
                        Some(slot) => slot.1 = value,
                        None => out.push((key, value)),
                    }
                }
                Ok(TopLevel(out))
            }
        }
        d.deserialize_map(V(self.0))
    }
}

/// Checks a completions `prompt`: a string, or a non-empty array of strings, of token ids, or
/// of arrays of token ids (what the OpenAI API and vLLM accept).
fn prompt(raw: &RawValue) -> Result<(), RequestError> {
    let bad = || {
        RequestError::field(
            "prompt",
            "`prompt` must be a string, an array of strings, an array of token ids or an array of arrays of token ids",
        )
    };
    let v: Value = serde_json::from_str(raw.get()).map_err(|_| bad())?;
    let ids = |v: &Value| {
        v.as_array()
            .is_some_and(|a| !a.is_empty() && a.iter().all(|t| t.as_u64().is_some()))
    };
    let ok = match &v {
        Value::String(_) => true,
        Value::Array(a) if !a.is_empty() => {
            a.iter().all(Value::is_string)
                || a.iter().all(|t| t.as_u64().is_some())
                || a.iter().all(ids)
        }
        _ => false,
    };
    if ok { Ok(()) } else { Err(bad()) }
}

/// Checks a Responses `input`: a string, or an array of items (objects); the items' shapes are
/// the engine's to check (vLLM answers a malformed one with its own 400).
fn input(raw: &RawValue) -> Result<(), RequestError> {
    let bad = |m: String| RequestError::field("input", m);
    match raw.get().as_bytes().first() {
        Some(b'"') => Ok(()),
        Some(b'[') => {
            let items: Vec<&RawValue> = serde_json::from_str(raw.get())
                .map_err(|e| bad(format!("`input` is not an array of items: {e}")))?;
            match items.iter().position(|i| !i.get().starts_with('{')) {
                Some(i) => Err(RequestError::field(
                    &format!("input[{i}]"),
                    format!("`input[{i}]` must be an object (an input item)"),
                )),
                None => Ok(()),
            }
        }
        _ => Err(bad(format!(
            "`input` must be a string or an array of input items, got {}",
            kind(raw)
        ))),
    }
}

/// Walks `messages` without keeping it: an array of objects, each with a string `role`.
struct Messages;

/// Why `messages` is not acceptable: its index, or the array itself.
const NOT_AN_OBJECT: &str = "\u{0}not-an-object";

impl<'de> Visitor<'de> for Messages {
    type Value = usize;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of messages")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<usize, A::Error> {
        let mut n = 0usize;
        while seq.next_element_seed(Message { index: n })?.is_some() {
            n += 1;
        }
        Ok(n)
    }
}

struct Message {
    index: usize,
}

impl<'de> DeserializeSeed<'de> for Message {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Message {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a message object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut role = false;
        while let Some(Key(key)) = map.next_key()? {
            if key == "role" {
                role = map.next_value_seed(IsString)?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        if role {
            Ok(())
        } else {
            Err(de::Error::custom(format!("{NOT_AN_OBJECT}:{}", self.index)))
        }
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Err(E::custom(format!("{NOT_AN_OBJECT}:{}", self.index)))
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        self.visit_unit()
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        self.visit_unit()
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        self.visit_unit()
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        self.visit_unit()
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        self.visit_unit()
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Err(de::Error::custom(format!("{NOT_AN_OBJECT}:{}", self.index)))
    }
}

/// Reads any value; true if it was a string.
struct IsString;

impl<'de> DeserializeSeed<'de> for IsString {
    type Value = bool;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for IsString {
    type Value = bool;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any value")
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<bool, E> {
        Ok(true)
    }
    fn visit_unit<E: de::Error>(self) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<bool, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(false)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<bool, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(false)
    }
}

fn messages(raw: &RawValue) -> Result<(), RequestError> {
    let mut de = serde_json::Deserializer::from_str(raw.get());
    let bad_message = |i: &str| {
        RequestError::field(
            &format!("messages[{i}]"),
            format!("`messages[{i}]` must be an object with a string `role`"),
        )
    };
    match de.deserialize_any(MessagesOrOther) {
        Ok(Some(0)) => Err(RequestError::field(
            "messages",
            "`messages` must hold at least one message",
        )),
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err(RequestError::field(
            "messages",
            format!("`messages` must be an array, got {}", kind(raw)),
        )),
        Err(e) => {
            let text = e.to_string();
            match text
                .find(NOT_AN_OBJECT)
                .map(|at| &text[at + NOT_AN_OBJECT.len() + 1..])
            {
                Some(rest) => Err(bad_message(
                    rest.split(|c: char| !c.is_ascii_digit())
                        .next()
                        .unwrap_or("0"),
                )),
                None => Err(RequestError::json(e)),
            }
        }
    }
}

/// `messages` as an array (Some(count)) or anything else (None).
struct MessagesOrOther;

impl<'de> Visitor<'de> for MessagesOrOther {
    type Value = Option<usize>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of messages")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        Messages.visit_seq(seq).map(Some)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(None)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
        Ok(None)
    }
}

fn boolean(key: &str, raw: &RawValue) -> Result<bool, RequestError> {
    match raw.get() {
        "null" | "false" => Ok(false),
        "true" => Ok(true),
        _ => Err(RequestError::field(
            key,
            format!("`{key}` must be a boolean, got {}", kind(raw)),
        )),
    }
}

fn positive_int(key: &str, raw: &RawValue) -> Result<Option<u64>, RequestError> {
    if is_null(raw) {
        return Ok(None);
    }
    match raw.get().parse::<u64>() {
        Ok(n) if n >= 1 => Ok(Some(n)),
        _ => Err(RequestError::field(
            key,
            format!(
                "`{key}` must be a positive integer, got {}",
                quote(raw.get())
            ),
        )),
    }
}

fn number(key: &str, raw: &RawValue) -> Result<(), RequestError> {
    if is_null(raw) || serde_json::from_str::<f64>(raw.get()).is_ok() {
        return Ok(());
    }
    Err(RequestError::field(
        key,
        format!("`{key}` must be a number, got {}", kind(raw)),
    ))
}

fn string(key: &str, raw: &RawValue) -> Result<Option<String>, RequestError> {
    if is_null(raw) {
        return Ok(None);
    }
    serde_json::from_str::<String>(raw.get())
        .map(Some)
        .map_err(|_| {
            RequestError::field(key, format!("`{key}` must be a string, got {}", kind(raw)))
        })
}

/// Deepest nesting of arrays and objects accepted, as serde_json's own limit: engines parse
/// the body recursively (vLLM's Python `json` would exhaust its stack on a body of 100 000
/// nested brackets), so it is refused here.
pub const MAX_DEPTH: usize = 128;

/// Whether `text` nests arrays and objects deeper than [`MAX_DEPTH`]; strings are skipped.
fn too_deep(text: &[u8]) -> bool {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &b in text {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

impl<'a> ChatRequest<'a> {
    /// Parses and validates a chat-completions request body.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, RequestError> {
        Self::parse_for(bytes, crate::job::Endpoint::Chat)
    }

    /// Parses and validates a request body sent to `endpoint`.
    pub fn parse_for(
        bytes: &'a [u8],
        endpoint: crate::job::Endpoint,
    ) -> Result<Self, RequestError> {
        use crate::job::Endpoint;
        let text = std::str::from_utf8(bytes).map_err(RequestError::json)?;
        if too_deep(bytes) {
            return Err(RequestError::json(format_args!(
                "nested deeper than {MAX_DEPTH} levels"
            )));
        }
        let mut de = serde_json::Deserializer::from_str(text);
        let top = match de::DeserializeSeed::deserialize(TopLevelOf(endpoint), &mut de) {
            Ok(TopLevel(f)) => f,
            Err(e) => {
                let msg = e.to_string();
                if let Some(at) = msg.find("\u{0}unknown:") {
                    let name = msg[at + "\u{0}unknown:".len()..]
                        .split(" at line ")
                        .next()
                        .unwrap_or_default()
                        .to_owned();
                    return Err(RequestError::field(
                        &name,
                        format!("unrecognized request argument supplied: `{name}`"),
                    ));
                }
                if e.is_data() && msg.starts_with("invalid type") {
                    return Err(RequestError {
                        code: ErrorCode::InvalidRequest,
                        message: "request body must be a JSON object".into(),
                        param: None,
                    });
                }
                return Err(RequestError::json(e));
            }
        };
        de.end().map_err(RequestError::json)?;
        let get = |k: &str| top.iter().find(|(key, _)| key == k).map(|(_, v)| *v);
        match endpoint {
            Endpoint::Chat => match get("messages") {
                None => return Err(RequestError::field("messages", "`messages` is required")),
                Some(raw) => messages(raw)?,
            },
            Endpoint::Completions => match get("prompt") {
                None => return Err(RequestError::field("prompt", "`prompt` is required")),
                Some(raw) => prompt(raw)?,
            },
            Endpoint::Tokenize => {
                match (get("prompt"), get("messages")) {
                    (Some(raw), None) => prompt(raw)?,
                    (None, Some(raw)) => messages(raw)?,
                    _ => {
                        return Err(RequestError::field(
                            "prompt",
                            "exactly one of `prompt` and `messages` is required",
                        ));
                    }
                }
                for key in [
                    "add_special_tokens",
                    "add_generation_prompt",
                    "continue_final_message",
                    "return_token_strs",
                ] {
                    if let Some(raw) = get(key) {
                        boolean(key, raw)?;
                    }
                }
            }
            Endpoint::Detokenize => {
                let ok = get("tokens").is_some_and(|raw| {
                    serde_json::from_str::<Vec<u32>>(raw.get()).is_ok_and(|t| {
                        // Vocabulary indices: the document says int32.
                        !t.is_empty() && t.iter().all(|&id| id <= i32::MAX as u32)
                    })
                });
                if !ok {
                    return Err(RequestError::field(
                        "tokens",
                        "`tokens` must be a non-empty array of token ids",
                    ));
                }
            }
            Endpoint::Responses => {
                match get("input") {
                    None => return Err(RequestError::field("input", "`input` is required")),
                    Some(raw) => input(raw)?,
                }
                for (key, why) in [
                    (
                        "background",
                        "background responses are not supported: stream, or wait for the answer",
                    ),
                    (
                        "conversation",
                        "conversation objects are not supported: use `previous_response_id`",
                    ),
                    ("prompt", "prompt templates are not supported"),
                ] {
                    if get(key).is_some_and(|r| !is_null(r) && r.get() != "false") {
                        return Err(RequestError::field(key, why));
                    }
                }
                if let Some(raw) = get("store") {
                    boolean("store", raw)?;
                }
                // vLLM refuses these shapes with its own 400; refused here, named.
                if let Some(raw) = get("tools").filter(|r| !is_null(r)) {
                    let ok = serde_json::from_str::<Vec<Map<String, Value>>>(raw.get()).is_ok_and(
                        |tools| {
                            tools
                                .iter()
                                .all(|t| t.get("type").is_some_and(Value::is_string))
                        },
                    );
                    if !ok {
                        return Err(RequestError::field(
                            "tools",
                            "`tools` must be an array of tools, each an object with a string `type`",
                        ));
                    }
                }
                if let Some(raw) = get("tool_choice").filter(|r| !is_null(r))
                    && !(raw.get().starts_with('{')
                        || matches!(raw.get(), "\"none\"" | "\"auto\"" | "\"required\""))
                {
                    return Err(RequestError::field(
                        "tool_choice",
                        "`tool_choice` must be `none`, `auto`, `required` or an object naming a tool",
                    ));
                }
                if let Some(raw) = get("metadata").filter(|r| !is_null(r))
                    && serde_json::from_str::<Map<String, Value>>(raw.get()).is_err()
                {
                    return Err(RequestError::field(
                        "metadata",
                        "`metadata` must be an object",
                    ));
                }
                for key in ["instructions", "previous_response_id"] {
                    if let Some(raw) = get(key) {
                        string(key, raw)?;
                    }
                }
            }
        }
        let model = match get("model") {
            None => None,
            Some(raw) if is_null(raw) => {
                return Err(RequestError::field(
                    "model",
                    "`model` must be a string, got null",
                ));
            }
            Some(raw) => string("model", raw)?,
        };
        let stream = match get("stream") {
            Some(raw) => boolean("stream", raw)?,
            None => false,
        };
        if let Some(raw) = get("stream_options").filter(|r| !is_null(r)) {
            let opts: std::collections::BTreeMap<&str, &RawValue> = serde_json::from_str(raw.get())
                .map_err(|_| {
                    RequestError::field(
                        "stream_options",
                        format!("`stream_options` must be an object, got {}", kind(raw)),
                    )
                })?;
            for (key, v) in opts {
                match key {
                    // OpenAI's, and vLLM's running usage on every chunk.
                    "include_usage" | "continuous_usage_stats" => {
                        boolean(&format!("stream_options.{key}"), v)?;
                    }
                    // Others pass on, as vLLM takes them (its StreamOptions allows extra
                    // keys; OpenAI adds some, like `include_obfuscation`).
                    _ => {}
                }
            }
        }
        let int = |k: &str| get(k).map(|r| positive_int(k, r)).transpose();
        // A completion with `echo` may generate nothing (prompt scoring, as vLLM allows).
        let scoring = endpoint == Endpoint::Completions
            && get("echo").is_some_and(|r| r.get() == "true")
            && get("max_tokens").is_some_and(|r| r.get() == "0");
        let max_tokens = if scoring {
            Some(0)
        } else {
            int("max_tokens")?.flatten()
        };
        let max_completion_tokens = int("max_completion_tokens")?
            .flatten()
            .or(int("max_output_tokens")?.flatten());
        let n = int("n")?.flatten();
        let best_of = int("best_of")?.flatten();
        for k in [
            "temperature",
            "top_p",
            "presence_penalty",
            "frequency_penalty",
        ] {
            if let Some(raw) = get(k) {
                number(k, raw)?;
            }
        }
        match (endpoint, get("logprobs").filter(|r| !is_null(r))) {
            (_, None) => {}
            (
                Endpoint::Chat | Endpoint::Responses | Endpoint::Tokenize | Endpoint::Detokenize,
                Some(raw),
            ) => {
                boolean("logprobs", raw)?;
            }
            // Completions: how many log probabilities per token (OpenAI allows 5, vLLM its
            // `--max-logprobs`, 20 by default).
            (Endpoint::Completions, Some(raw)) => match raw.get().parse::<u64>() {
                Ok(0..=20) => {}
                _ => {
                    return Err(RequestError::field(
                        "logprobs",
                        "`logprobs` must be an integer from 0 to 20",
                    ));
                }
            },
        }
        if let Some(raw) = get("echo") {
            boolean("echo", raw)?;
        }
        // vLLM refuses these with its own 400 (pydantic); refused here, the field is named and
        // the request never queues.
        if let Some(raw) = get("stop").filter(|r| !is_null(r)) {
            let ok = match serde_json::from_str::<Value>(raw.get()) {
                Ok(Value::String(_)) => true,
                // No count limit: vLLM takes any number (OpenAI's 4 is its own).
                Ok(Value::Array(a)) => a.iter().all(Value::is_string),
                _ => false,
            };
            if !ok {
                return Err(RequestError::field(
                    "stop",
                    "`stop` must be a string or an array of strings",
                ));
            }
        }
        if let Some(raw) = get("user").filter(|r| !is_null(r)) {
            string("user", raw)?;
        }
        if let Some(raw) = get("seed").filter(|r| !is_null(r))
            && raw.get().parse::<i64>().is_err()
            && !raw
                .get()
                .parse::<f64>()
                .is_ok_and(|f| f.fract() == 0.0 && f.abs() < 9.2e18)
        {
            return Err(RequestError::field("seed", "`seed` must be an integer"));
        }
        if let Some(raw) = get("suffix").filter(|r| !is_null(r)) {
            string("suffix", raw)?;
        }
        if let Some(raw) = get("top_logprobs").filter(|r| !is_null(r)) {
            // The OpenAI API's range.
            match raw.get().parse::<u64>() {
                Ok(0..=20) => {}
                _ => {
                    return Err(RequestError::field(
                        "top_logprobs",
                        "`top_logprobs` must be an integer from 0 to 20",
                    ));
                }
            }
        }
        Ok(Self {
            endpoint,
            fields: top,
            model,
            stream,
            max_tokens: max_tokens.or(max_completion_tokens),
            n,
            best_of,
            overrides: Vec::new(),
        })
    }

    /// Sets `key` in the engine's body to `value` (`None`: leaves it out), whatever the client
    /// sent.
    pub fn set(&mut self, key: &'static str, value: Option<Box<RawValue>>) {
        self.overrides.retain(|(k, _)| *k != key);
        self.overrides.push((key, value));
    }

    /// Whether the client sent `key` (with any value).
    pub fn has(&self, key: &str) -> bool {
        self.raw(key).is_some()
    }

    /// Applies a pool's limits: extension fields it does not accept, and token and choice
    /// counts above its ceilings, are refused naming the field.
    pub fn check(&self, limits: &Limits<'_>) -> Result<(), RequestError> {
        for (key, _) in &self.fields {
            match fields::owner_for(key, self.endpoint) {
                Owner::OpenAi | Owner::Unknown => {}
                owner @ (Owner::Vllm | Owner::Platform) => {
                    if !limits.allowed_fields.iter().any(|a| a == key) {
                        let why = if owner == Owner::Platform {
                            "is set by the platform, not by clients"
                        } else {
                            "is not accepted by this model"
                        };
                        return Err(RequestError::field(key, format!("`{key}` {why}")));
                    }
                }
            }
        }
        if let Some(limit) = limits.max_tokens {
            for key in ["max_tokens", "max_completion_tokens", "max_output_tokens"] {
                let asked = self
                    .raw(key)
                    .and_then(|r| r.get().parse::<u64>().ok())
                    .unwrap_or(0);
                if asked > u64::from(limit) {
                    return Err(RequestError::field(
                        key,
                        format!("`{key}` is {asked}; this model allows at most {limit}"),
                    ));
                }
            }
        }
        for (key, asked) in [("n", self.n), ("best_of", self.best_of)] {
            if let Some(asked) = asked
                && asked > u64::from(limits.max_n)
            {
                return Err(RequestError::field(
                    key,
                    format!(
                        "`{key}` is {asked}; this model allows at most {}",
                        limits.max_n
                    ),
                ));
            }
        }
        // A list of prompts is a sequence each (times `n`): the same ceiling.
        let prompts = self.prompts();
        let choices = prompts * self.n.unwrap_or(1).max(self.best_of.unwrap_or(1));
        if prompts > 1 && choices > u64::from(limits.max_n) {
            return Err(RequestError::field(
                "prompt",
                format!(
                    "{prompts} prompts make {choices} sequences; this model allows at most {}",
                    limits.max_n
                ),
            ));
        }
        Ok(())
    }

    /// How many prompts the request holds: 1, or a completions list's length.
    pub fn prompts(&self) -> u64 {
        let Some(raw) = self.raw("prompt") else {
            return 1;
        };
        match serde_json::from_str::<Value>(raw.get()) {
            // A list of strings, or of token-id lists; a flat list of ids is one prompt.
            Ok(Value::Array(a)) if a.first().is_some_and(|x| !x.is_u64()) => a.len() as u64,
            _ => 1,
        }
    }

    /// A top-level field's raw JSON.
    pub fn raw(&self, key: &str) -> Option<&'a RawValue> {
        self.fields.iter().find(|(k, _)| k == key).map(|(_, v)| *v)
    }

    /// A top-level field's value when it is a string (`user`, `safety_identifier`, …).
    pub fn string_field(&self, key: &str) -> Option<String> {
        self.raw(key)
            .and_then(|r| serde_json::from_str::<String>(r.get()).ok())
    }

    /// The body for the engine: `model` first, set to the pool's served name (a worker whose
    /// engine serves another name rewrites it in place: [`with_model`]), the client's other
    /// fields as sent, and every pool default the client did not set merged in (objects merge key by key;
    /// the client's value wins).
    ///
    /// `service_tier` is the platform's (it chose the queue lane) and not sent on; `priority`,
    /// when given, is vLLM's scheduling priority from the tier (`--scheduling-policy priority`).
    pub fn into_engine_body(
        self,
        served_model: &str,
        defaults: &Map<String, Value>,
        priority: Option<i32>,
    ) -> Vec<u8> {
        let size: usize = self
            .fields
            .iter()
            .map(|(k, v)| k.len() + v.get().len() + 4)
            .sum();
        let overridden: usize = self
            .overrides
            .iter()
            .map(|(k, v)| k.len() + v.as_ref().map_or(0, |v| v.get().len()) + 4)
            .sum();
        let mut out = Vec::with_capacity(size + overridden + served_model.len() + 32);
        out.push(b'{');
        let mut first = true;
        let mut sep = |out: &mut Vec<u8>| {
            if !first {
                out.push(b',');
            }
            first = false;
        };
        let mut write_key = |out: &mut Vec<u8>, key: &str| {
            sep(out);
            // A key is a JSON string; serialising one cannot fail.
            let _ = serde_json::to_writer(&mut *out, key);
            out.push(b':');
        };
        write_key(&mut out, "model");
        let _ = serde_json::to_writer(&mut out, served_model);
        for (key, raw) in &self.fields {
            if key == "service_tier" || key == "model" || (key == "priority" && priority.is_some())
            {
                continue;
            }
            if let Some((_, value)) = self.overrides.iter().find(|(k, _)| k == key) {
                if let Some(v) = value {
                    write_key(&mut out, key);
                    out.extend_from_slice(v.get().as_bytes());
                }
                continue;
            }
            write_key(&mut out, key);
            match defaults.get(key.as_ref()) {
                Some(Value::Object(d)) if raw.get().starts_with('{') => {
                    // Both objects: merge the defaults under the client's keys.
                    match serde_json::from_str::<Map<String, Value>>(raw.get()) {
                        Ok(mut obj) => {
                            merge_defaults(&mut obj, d);
                            let _ = serde_json::to_writer(&mut out, &obj);
                        }
                        Err(_) => out.extend_from_slice(raw.get().as_bytes()),
                    }
                }
                _ => out.extend_from_slice(raw.get().as_bytes()),
            }
        }
        let mut written: Vec<&str> = Vec::new();
        for (key, default) in defaults {
            // A pool's defaults are written for chat: its token ceiling is the Responses API's
            // `max_output_tokens` there; those another endpoint does not know
            // (`chat_template_kwargs` on completions) stay out of its requests.
            let key = match key.as_str() {
                "max_tokens" | "max_completion_tokens"
                    if self.endpoint == crate::job::Endpoint::Responses =>
                {
                    "max_output_tokens"
                }
                k => k,
            };
            if self.fields.iter().any(|(k, _)| k == key)
                || self.overrides.iter().any(|(k, _)| *k == key)
                || written.contains(&key)
                || (self.endpoint != crate::job::Endpoint::Chat
                    && fields::owner_for(key, self.endpoint) == Owner::Unknown)
            {
                continue;
            }
            written.push(key);
            write_key(&mut out, key);
            let _ = serde_json::to_writer(&mut out, default);
        }
        for (key, value) in &self.overrides {
            if let Some(v) = value
                && !self.fields.iter().any(|(k, _)| k == key)
            {
                write_key(&mut out, key);
                out.extend_from_slice(v.get().as_bytes());
            }
        }
        if let Some(p) = priority {
            write_key(&mut out, "priority");
            let _ = serde_json::to_writer(&mut out, &p);
        }
        out.push(b'}');
        out
    }

    /// The tier the body asks for: `Ok(None)` when it has no `service_tier` (or `null`, or
    /// `auto`); an error naming the field for any value but OpenAI's tiers.
    pub fn service_tier(&self) -> Result<Option<crate::tier::Tier>, RequestError> {
        let Some(raw) = self.raw("service_tier").filter(|r| !is_null(r)) else {
            return Ok(None);
        };
        let bad = || {
            RequestError::field(
                "service_tier",
                "`service_tier` must be one of `auto`, `default`, `flex`, `priority`",
            )
        };
        let s: String = serde_json::from_str(raw.get()).map_err(|_| bad())?;
        crate::tier::Tier::from_service_tier(&s).map_err(|_| bad())
    }
}

/// An engine body (from [`ChatRequest::into_engine_body`]) with `model` set to `model`, or
/// `None` if it names that model already. The gateway writes `model` first, so the usual case
/// splices the new name over the old one without parsing the rest; any other object is
/// rewritten through a parse of its top level. During a rollout the replicas of one pool serve
/// two names, and each worker sends its engine's own.
pub fn with_model(body: &[u8], model: &str) -> Option<Vec<u8>> {
    const HEAD: &[u8] = b"{\"model\":";
    if let Some(rest) = body.strip_prefix(HEAD) {
        let mut names = serde_json::Deserializer::from_slice(rest).into_iter::<String>();
        if let Some(Ok(old)) = names.next() {
            if old == model {
                return None;
            }
            let end = HEAD.len() + names.byte_offset();
            let mut out = Vec::with_capacity(body.len() + model.len());
            out.extend_from_slice(HEAD);
            // A string serialises infallibly.
            let _ = serde_json::to_writer(&mut out, model);
            out.extend_from_slice(&body[end..]);
            return Some(out);
        }
    }
    let mut top: Map<String, Value> = serde_json::from_slice(body).ok()?;
    if top.get("model").and_then(Value::as_str) == Some(model) {
        return None;
    }
    top.insert("model".into(), Value::String(model.into()));
    serde_json::to_vec(&top).ok()
}

/// `body` (a JSON object) with its top-level `service_tier` set to `tier`, as OpenAI's
/// responses carry the tier that served them. A body that has none gets it spliced in after
/// its `{` (no parse); one that has a `service_tier` somewhere is rewritten through a parse of
/// its top level. Anything else is returned unchanged.
pub fn with_service_tier(body: &[u8], tier: &str) -> Vec<u8> {
    const KEY: &[u8] = b"\"service_tier\"";
    let Some(open) = body.iter().position(|b| !b.is_ascii_whitespace()) else {
        return body.to_vec();
    };
    if body[open] != b'{' {
        return body.to_vec();
    }
    if body.windows(KEY.len()).any(|w| w == KEY) {
        let Ok(mut top) =
            serde_json::from_slice::<std::collections::BTreeMap<Cow<'_, str>, &RawValue>>(body)
        else {
            return body.to_vec();
        };
        let value = format!("\"{tier}\"");
        let raw: Box<RawValue> = RawValue::from_string(value).expect("a JSON string");
        top.insert(Cow::Borrowed("service_tier"), &raw);
        return serde_json::to_vec(&top).unwrap_or_else(|_| body.to_vec());
    }
    let rest = &body[open + 1..];
    let empty = rest.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'}');
    let mut out = Vec::with_capacity(body.len() + tier.len() + 20);
    out.extend_from_slice(&body[..=open]);
    out.extend_from_slice(b"\"service_tier\":\"");
    out.extend_from_slice(tier.as_bytes());
    out.extend_from_slice(if empty { b"\"" } else { b"\"," });
    out.extend_from_slice(rest);
    out
}

/// An SSE chunk with `service_tier` set in each of its `data: {…}` events (see
/// [`with_service_tier`]); `[DONE]`, comments and events split across chunks pass unchanged.
pub fn with_service_tier_sse(chunk: &[u8], tier: &str) -> Vec<u8> {
    const DATA: &[u8] = b"data: ";
    let mut out = Vec::with_capacity(chunk.len() + 32 * sse_events(chunk).max(1));
    let mut rest = chunk;
    while let Some(at) = rest.windows(DATA.len()).position(|w| w == DATA) {
        let start = at + DATA.len();
        out.extend_from_slice(&rest[..start]);
        let line_end = rest[start..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(rest.len(), |i| start + i);
        let event = &rest[start..line_end];
        // A whole event ends its line with `}` (a cut one is passed on as it is).
        if event.first() == Some(&b'{') && event.trim_ascii_end().last() == Some(&b'}') {
            out.extend_from_slice(&with_service_tier(event, tier));
        } else {
            out.extend_from_slice(event);
        }
        rest = &rest[line_end..];
    }
    out.extend_from_slice(rest);
    out
}

/// Token counts of an answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
pub struct Usage {
    /// Prompt tokens (the Responses API's `input_tokens`).
    #[serde(alias = "input_tokens")]
    pub prompt_tokens: u64,
    /// Completion tokens (`output_tokens`).
    #[serde(default, alias = "output_tokens")]
    pub completion_tokens: u64,
}

/// The `usage` of a non-streaming answer body.
pub fn usage_of_body(body: &[u8]) -> Option<Usage> {
    #[derive(serde::Deserialize)]
    struct Answer {
        usage: Option<Usage>,
    }
    serde_json::from_slice::<Answer>(body).ok()?.usage
}

/// The `usage` carried by an SSE chunk (chat's final chunk with
/// `stream_options.include_usage`, or the `response` of a Responses stream's
/// `response.completed`), found without parsing the other events. Model output cannot hold the
/// needle: quotes inside JSON strings are escaped.
pub fn usage_of_sse(chunk: &[u8]) -> Option<Usage> {
    const NEEDLE: &[u8] = b"\"usage\":{";
    let at = chunk.windows(NEEDLE.len()).rposition(|w| w == NEEDLE)?;
    let object = &chunk[at + NEEDLE.len() - 1..];
    serde_json::Deserializer::from_slice(object)
        .into_iter::<Usage>()
        .next()?
        .ok()
}

/// How many SSE events a chunk carries.
pub fn sse_events(chunk: &[u8]) -> usize {
    chunk.windows(6).filter(|w| *w == b"data: ").count()
}

/// Adds every key of `defaults` missing from `target`, recursing where both sides are objects.
pub fn merge_defaults(target: &mut Map<String, Value>, defaults: &Map<String, Value>) {
    for (key, default) in defaults {
        match (target.get_mut(key), default) {
            (None, _) => {
                target.insert(key.clone(), default.clone());
            }
            (Some(Value::Object(t)), Value::Object(d)) => merge_defaults(t, d),
            (Some(_), _) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn err(body: &str) -> RequestError {
        ChatRequest::parse(body.as_bytes()).unwrap_err()
    }

    #[test]
    fn a_pools_token_ceiling_default_is_max_output_tokens_for_responses() {
        use crate::job::Endpoint::Responses;
        let defaults: Map<String, Value> =
            serde_json::from_value(json!({"max_tokens": 64, "chat_template_kwargs": {"a": 1}}))
                .unwrap();
        let body = br#"{"model":"light","input":"hi"}"#;
        let out = ChatRequest::parse_for(body, Responses)
            .unwrap()
            .into_engine_body("m", &defaults, None);
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["max_output_tokens"], 64, "{v}");
        assert!(
            v.get("max_tokens").is_none() && v.get("chat_template_kwargs").is_none(),
            "{v}"
        );
        let body = br#"{"model":"light","input":"hi","max_output_tokens":5}"#;
        let out = ChatRequest::parse_for(body, Responses)
            .unwrap()
            .into_engine_body("m", &defaults, None);
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["max_output_tokens"], 5, "the client's value wins: {v}");
    }

    const M: &str = r#""messages":[{"role":"user","content":"x"}]"#;

    fn open(allowed: &[&str]) -> Vec<String> {
        allowed.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn valid_request_puts_model_first_and_keeps_other_fields_in_order_and_bytes_untouched() {
        let raw = r#"{"top_k":1,"model":"heavy","messages":[{"role":"user","content":"hi \u00e9"}],"stream":true,"metadata":{"a":[1, 2.50]},"tools":[]}"#;
        let req = ChatRequest::parse(raw.as_bytes()).unwrap();
        assert_eq!(req.model.as_deref(), Some("heavy"));
        assert!(req.stream);
        let out = req.into_engine_body("Qwen/X", &Map::new(), None);
        let text = std::str::from_utf8(&out).unwrap();
        assert_eq!(
            text,
            r#"{"model":"Qwen/X","top_k":1,"messages":[{"role":"user","content":"hi \u00e9"}],"stream":true,"metadata":{"a":[1, 2.50]},"tools":[]}"#
        );
    }

    #[test]
    fn a_worker_rewrites_the_model_in_place_and_only_when_it_differs() {
        let req = ChatRequest::parse(
            br#"{"messages":[{"role":"user","content":"\"model\":"}],"model":"heavy"}"#,
        )
        .unwrap();
        let body = req.into_engine_body("old \"q\"", &Map::new(), None);
        assert_eq!(with_model(&body, "old \"q\""), None);
        let out = with_model(&body, "new/m").unwrap();
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            r#"{"model":"new/m","messages":[{"role":"user","content":"\"model\":"}]}"#
        );
        // A body written otherwise (an older gateway) goes through a parse.
        let other = br#"{"messages":[],"model":"old"}"#;
        let v: Value = serde_json::from_slice(&with_model(other, "new").unwrap()).unwrap();
        assert_eq!(v["model"], "new");
        assert_eq!(v["messages"], serde_json::json!([]));
        assert_eq!(with_model(br#"{"model":"new","messages":[]}"#, "new"), None);
        assert_eq!(with_model(b"not json", "new"), None);
    }

    #[test]
    fn completions_and_shared_fields_are_checked_per_endpoint() {
        use crate::job::Endpoint::Completions;
        let param = |body: &str, endpoint| {
            ChatRequest::parse_for(body.as_bytes(), endpoint)
                .err()
                .and_then(|e| e.param)
        };
        let ok = |body: &str| ChatRequest::parse_for(body.as_bytes(), Completions).is_ok();
        assert!(ok(
            r#"{"model":"m","prompt":"x","echo":true,"logprobs":3,"suffix":null}"#
        ));
        assert!(ok(r#"{"model":"m","prompt":["a","b"]}"#));
        assert!(ok(r#"{"model":"m","prompt":[1,2,3]}"#));
        assert!(ok(r#"{"model":"m","prompt":[[1],[2,3]]}"#));
        // What vLLM takes: any number of stop strings, unknown stream_options, an integral
        // float seed, and max_tokens 0 with echo (prompt scoring).
        assert!(ok(
            r#"{"prompt":"x","stop":["a","b","c","d","e"],"seed":1.0}"#
        ));
        assert!(ok(
            r#"{"prompt":"x","stream_options":{"include_obfuscation":false}}"#
        ));
        assert!(ok(r#"{"prompt":"x","echo":true,"max_tokens":0}"#));
        assert_eq!(
            param(r#"{"prompt":"x","max_tokens":0}"#, Completions).as_deref(),
            Some("max_tokens")
        );
        let limits = Limits {
            max_tokens: None,
            max_n: 2,
            allowed_fields: &[],
        };
        let three = ChatRequest::parse_for(br#"{"prompt":["a","b","c"]}"#, Completions).unwrap();
        assert_eq!(three.prompts(), 3);
        assert_eq!(
            three.check(&limits).unwrap_err().param.as_deref(),
            Some("prompt")
        );
        let ids = ChatRequest::parse_for(br#"{"prompt":[1,2,3]}"#, Completions).unwrap();
        assert_eq!(ids.prompts(), 1);
        assert!(ids.check(&limits).is_ok());
        for (body, field) in [
            (r#"{"model":"m"}"#, "prompt"),
            (r#"{"prompt":[]}"#, "prompt"),
            (r#"{"prompt":[1,"a"]}"#, "prompt"),
            (r#"{"prompt":"x","logprobs":21}"#, "logprobs"),
            (r#"{"prompt":"x","messages":[]}"#, "messages"),
            (r#"{"prompt":"x","suffix":3}"#, "suffix"),
            (r#"{"prompt":"x","user":{}}"#, "user"),
            (r#"{"prompt":"x","seed":1.5}"#, "seed"),
            (r#"{"prompt":"x","stop":[null]}"#, "stop"),
            (
                r#"{"prompt":"x","stream_options":{"include_usage":1}}"#,
                "stream_options.include_usage",
            ),
        ] {
            assert_eq!(param(body, Completions).as_deref(), Some(field), "{body}");
        }
        // A pool's defaults: all of them on chat (a field no list knows included); on
        // completions, not chat's own.
        let defaults: Map<String, Value> = serde_json::from_str(
            r#"{"include_reasoning":true,"chat_template_kwargs":{"enable_thinking":false}}"#,
        )
        .unwrap();
        let body = |raw: &[u8], endpoint| -> Value {
            let req = ChatRequest::parse_for(raw, endpoint).unwrap();
            serde_json::from_slice(&req.into_engine_body("m", &defaults, None)).unwrap()
        };
        let chat_body = body(
            br#"{"messages":[{"role":"user"}]}"#,
            crate::job::Endpoint::Chat,
        );
        assert_eq!(chat_body["include_reasoning"], true);
        assert!(chat_body.get("chat_template_kwargs").is_some());
        let text_body = body(br#"{"prompt":"x"}"#, Completions);
        assert!(
            text_body.get("chat_template_kwargs").is_none(),
            "{text_body}"
        );
        let chat = crate::job::Endpoint::Chat;
        assert_eq!(
            param(r#"{"messages":[{"role":"user"}],"prompt":"x"}"#, chat).as_deref(),
            Some("prompt")
        );
        assert_eq!(
            param(r#"{"messages":[{"role":"user"}],"user":5}"#, chat).as_deref(),
            Some("user")
        );
    }

    #[test]
    fn each_bad_field_is_named() {
        assert_eq!(err("{nope").code, ErrorCode::InvalidJson);
        assert_eq!(err("[1]").code, ErrorCode::InvalidRequest);
        assert_eq!(err("\"x\"").code, ErrorCode::InvalidRequest);
        assert_eq!(err("{} x").code, ErrorCode::InvalidJson);
        assert_eq!(err(r#"{"model":"m"}"#).param.as_deref(), Some("messages"));
        assert_eq!(
            err(r#"{"messages":"hi"}"#).param.as_deref(),
            Some("messages")
        );
        assert_eq!(err(r#"{"messages":[]}"#).param.as_deref(), Some("messages"));
        assert_eq!(
            err(r#"{"messages":[{"content":"x"}]}"#).param.as_deref(),
            Some("messages[0]")
        );
        assert_eq!(
            err(r#"{"messages":[{"role":"user"},{"role":5}]}"#)
                .param
                .as_deref(),
            Some("messages[1]")
        );
        assert_eq!(
            err(r#"{"messages":[{"role":"user"},[1]]}"#)
                .param
                .as_deref(),
            Some("messages[1]")
        );
        for (field, bad) in [
            ("model", "5"),
            ("model", "null"),
            ("stream", "\"yes\""),
            ("max_tokens", "-1"),
            ("max_tokens", "1.5"),
            ("max_tokens", "1e3"),
            ("max_tokens", "\"10\""),
            ("max_tokens", "18446744073709551616"),
            ("max_tokens", "true"),
            ("max_completion_tokens", "0"),
            ("temperature", "\"hot\""),
            ("top_p", "[]"),
            ("n", "0"),
            ("stream_options", "1"),
            ("top_logprobs", "21"),
            ("logprobs", "1"),
        ] {
            let e = err(&format!("{{{M},\"{field}\":{bad}}}"));
            assert_eq!(e.code, ErrorCode::InvalidRequest, "{field}={bad}");
            assert_eq!(e.param.as_deref(), Some(field), "{field}={bad}");
        }
        let e = err(&format!(
            "{{{M},\"stream_options\":{{\"include_usage\":3}}}}"
        ));
        assert_eq!(e.param.as_deref(), Some("stream_options.include_usage"));
    }

    #[test]
    fn unknown_fields_are_refused_naming_them_as_openai_does() {
        let e = err(&format!("{{{M},\"zeta\":1}}"));
        assert_eq!(e.param.as_deref(), Some("zeta"));
        assert!(
            e.message.contains("unrecognized request argument"),
            "{}",
            e.message
        );
        let long = "k".repeat(500);
        let e = err(&format!("{{\"{long}\":1,{M}}}"));
        assert!(
            e.message.len() < 200,
            "the name is quoted, cut: {}",
            e.message
        );
    }

    #[test]
    fn pools_decide_extensions_and_ceilings() {
        let allowed = open(ssw_default_allowed());
        let limits = Limits {
            max_tokens: Some(32768),
            max_n: 1,
            allowed_fields: &allowed,
        };
        let ok = |extra: &str| {
            ChatRequest::parse(format!("{{{M}{extra}}}").as_bytes())
                .unwrap()
                .check(&limits)
        };
        assert!(
            ok(r#","top_k":5,"min_p":0.1,"chat_template_kwargs":{"enable_thinking":true}"#).is_ok()
        );
        assert!(ok(r#","max_tokens":32768,"n":1"#).is_ok());
        for (extra, param) in [
            (r#","max_tokens":32769"#, "max_tokens"),
            (
                r#","max_completion_tokens":100000000"#,
                "max_completion_tokens",
            ),
            (r#","n":2"#, "n"),
            (r#","n":18446744073709551615"#, "n"),
            (r#","priority":-1000"#, "priority"),
            (r#","request_id":"victim""#, "request_id"),
            (r#","chat_template":"{% for x in y %}""#, "chat_template"),
            (r#","guided_regex":"(a+)+$""#, "guided_regex"),
            (r#","ignore_eos":true"#, "ignore_eos"),
            (r#","prompt_logprobs":20"#, "prompt_logprobs"),
            (r#","vllm_xargs":{}"#, "vllm_xargs"),
            (r#","kv_transfer_params":{}"#, "kv_transfer_params"),
        ] {
            let e = match ChatRequest::parse(format!("{{{M}{extra}}}").as_bytes()) {
                Ok(r) => r.check(&limits).unwrap_err(),
                Err(e) => e,
            };
            assert_eq!(e.param.as_deref(), Some(param), "{extra}");
        }
        let owned = open(&["priority"]);
        let trusted = Limits {
            allowed_fields: &owned,
            ..limits
        };
        let body = format!("{{{M},\"priority\":3}}");
        let req = ChatRequest::parse(body.as_bytes()).unwrap();
        assert!(
            req.check(&trusted).is_ok(),
            "a pool may allow an owned field"
        );
    }

    fn ssw_default_allowed() -> &'static [&'static str] {
        crate::fields::DEFAULT_ALLOWED
    }

    #[test]
    fn nulls_mean_absent_where_sdks_send_them() {
        let req = ChatRequest::parse(
            br#"{"messages":[{"role":"user","content":"x"}],"stream":null,"max_tokens":null,"temperature":null,"n":null}"#,
        )
        .unwrap();
        assert!(!req.stream);
        assert_eq!(req.model, None);
        assert_eq!(req.max_tokens, None);
    }

    #[test]
    fn duplicate_keys_keep_the_last_value_as_json_readers_do() {
        let body =
            format!(r#"{{"model":"light",{M},"model":"heavy","stream":true,"stream":false}}"#);
        let req = ChatRequest::parse(body.as_bytes()).unwrap();
        assert_eq!(req.model.as_deref(), Some("heavy"));
        assert!(!req.stream);
        let out: Value =
            serde_json::from_slice(&req.into_engine_body("served", &Map::new(), None)).unwrap();
        assert_eq!(out["stream"], false);
        assert_eq!(out.as_object().unwrap().len(), 3);
    }

    #[test]
    fn escaped_keys_are_read_and_written_back_escaped() {
        let body = format!(r#"{{"\u006dodel":"x",{M}}}"#);
        let req = ChatRequest::parse(body.as_bytes()).unwrap();
        assert_eq!(req.model.as_deref(), Some("x"));
        let out: Value =
            serde_json::from_slice(&req.into_engine_body("served", &Map::new(), None)).unwrap();
        assert_eq!(out["model"], "served");
    }

    #[test]
    fn a_flood_of_messages_is_walked_not_built() {
        // 200 000 tiny messages: validated by walking them; the engine body is the input
        // plus the model, nothing more.
        let mut body = String::from(r#"{"messages":["#);
        for i in 0..200_000 {
            if i > 0 {
                body.push(',');
            }
            body.push_str(r#"{"role":"u"}"#);
        }
        body.push_str("]}");
        let req = ChatRequest::parse(body.as_bytes()).unwrap();
        let out = req.into_engine_body("m", &Map::new(), None);
        assert!(out.len() < body.len() + 32);
    }

    #[test]
    fn deep_nesting_and_bad_bytes_are_json_errors() {
        let deep = format!(
            "{{{M},\"metadata\":{}{}}}",
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        assert_eq!(err(&deep).code, ErrorCode::InvalidJson);
        assert_eq!(
            ChatRequest::parse(b"\xff\xfe").unwrap_err().code,
            ErrorCode::InvalidJson
        );
        assert_eq!(
            err(r#"{"messages":[{"role":"\ud800"}]}"#).code,
            ErrorCode::InvalidJson
        );
    }

    #[test]
    fn defaults_fill_only_what_the_client_left_out() {
        let defaults =
            json!({"chat_template_kwargs": {"enable_thinking": false}, "temperature": 0.7});
        let defaults = defaults.as_object().unwrap();
        let body = |extra: &str| {
            let text = format!("{{{M}{extra}}}");
            let req = ChatRequest::parse(text.as_bytes()).unwrap();
            serde_json::from_slice::<Value>(&req.into_engine_body("m", defaults, None)).unwrap()
        };
        let a = body("");
        assert_eq!(a["chat_template_kwargs"]["enable_thinking"], false);
        assert_eq!(a["temperature"], 0.7);
        let b = body(r#","chat_template_kwargs":{"enable_thinking":true,"x":1},"temperature":0"#);
        assert_eq!(
            b["chat_template_kwargs"],
            json!({"enable_thinking": true, "x": 1})
        );
        assert_eq!(b["temperature"], 0);
        let c = body(r#","chat_template_kwargs":{"other":2}"#);
        assert_eq!(
            c["chat_template_kwargs"],
            json!({"other": 2, "enable_thinking": false})
        );
    }

    #[test]
    fn usage_is_found_in_bodies_and_stream_chunks() {
        let body = br#"{"id":"x","choices":[],"usage":{"prompt_tokens":7,"total_tokens":10,"completion_tokens":3}}"#;
        assert_eq!(
            usage_of_body(body),
            Some(Usage {
                prompt_tokens: 7,
                completion_tokens: 3
            })
        );
        assert_eq!(usage_of_body(b"{\"usage\":null}"), None);
        let chunk = b"data: {\"choices\":[{\"delta\":{}}],\"usage\":null}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":16,\"total_tokens\":21}}\n\ndata: [DONE]\n\n";
        assert_eq!(
            usage_of_sse(chunk),
            Some(Usage {
                prompt_tokens: 5,
                completion_tokens: 16
            })
        );
        assert_eq!(usage_of_sse(b"data: {\"usage\":null}\n\n"), None);
        assert_eq!(sse_events(chunk), 3);
    }

    #[test]
    fn answers_say_which_tier_served_them() {
        let tiered =
            |b: &[u8]| -> Value { serde_json::from_slice(&with_service_tier(b, "flex")).unwrap() };
        assert_eq!(
            tiered(br#"{"id":"x","choices":[]}"#)["service_tier"],
            "flex"
        );
        assert_eq!(tiered(b" {}")["service_tier"], "flex");
        // An engine's own value is replaced, not duplicated.
        let v = tiered(br#"{"service_tier":null,"choices":[{"text":"service_tier"}]}"#);
        assert_eq!(v["service_tier"], "flex");
        assert_eq!(v["choices"][0]["text"], "service_tier");
        assert_eq!(with_service_tier(b"[1]", "flex"), b"[1]");
        let chunk =
            b"data: {\"a\":1}\n\ndata: {\"b\":2,\"service_tier\":\"default\"}\n\ndata: [DONE]\n\n";
        let out = String::from_utf8(with_service_tier_sse(chunk, "priority")).unwrap();
        assert_eq!(
            out,
            "data: {\"service_tier\":\"priority\",\"a\":1}\n\ndata: {\"b\":2,\"service_tier\":\"priority\"}\n\ndata: [DONE]\n\n"
        );
        // A cut event passes as it is.
        assert_eq!(
            with_service_tier_sse(b"data: {\"a\":", "flex"),
            b"data: {\"a\":"
        );
    }
}

/// Property tests: whatever bytes a client sends, parsing ends in a value or a typed error.
#[cfg(test)]
mod props {
    use super::*;
    use proptest::collection::{btree_map, vec};
    use proptest::prelude::*;

    fn json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            (-1e12f64..1e12).prop_map(Value::from),
            ".{0,12}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                vec(inner.clone(), 0..6).prop_map(Value::Array),
                btree_map("[a-z_]{1,10}", inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// A field the platform knows, with any value.
    fn known_field() -> impl Strategy<Value = (String, Value)> {
        let names: Vec<&'static str> = crate::fields::OPENAI_CHAT
            .iter()
            .chain(crate::fields::VLLM_EXTENSIONS)
            .copied()
            .collect();
        (proptest::sample::select(names), json()).prop_map(|(k, v)| (k.to_owned(), v))
    }

    fn limits(allowed: &[String]) -> Limits<'_> {
        Limits {
            max_tokens: Some(32_768),
            max_n: 1,
            allowed_fields: allowed,
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn arbitrary_bytes_end_in_a_request_or_a_typed_error(bytes in vec(any::<u8>(), 0..400)) {
            match ChatRequest::parse(&bytes) {
                Ok(r) => {
                    let _ = r.check(&limits(&[]));
                }
                Err(e) => prop_assert!(matches!(e.code, ErrorCode::InvalidJson | ErrorCode::InvalidRequest)),
            }
        }

        #[test]
        fn arbitrary_json_parses_or_names_what_is_wrong(v in json()) {
            let text = v.to_string();
            match ChatRequest::parse(text.as_bytes()) {
                Ok(r) => {
                    let body = r.into_engine_body("served", &Map::new(), None);
                    let out: Value = serde_json::from_slice(&body).expect("the engine body is JSON");
                    prop_assert_eq!(&out["model"], "served");
                }
                Err(e) => prop_assert!(matches!(e.code, ErrorCode::InvalidJson | ErrorCode::InvalidRequest)),
            }
        }

        #[test]
        fn requests_of_known_fields_keep_every_field_for_the_engine(
            fields in vec(known_field(), 0..8),
            defaults in btree_map("[a-z_]{1,8}", json(), 0..3),
        ) {
            let mut obj = Map::new();
            obj.insert("messages".into(), serde_json::json!([{"role": "user", "content": "x"}]));
            for (k, v) in fields {
                if k != "messages" {
                    obj.insert(k, v);
                }
            }
            let text = Value::Object(obj).to_string();
            // The client's fields as a JSON reader sees the text sent (floats read back the same
            // way on both sides).
            let obj: Map<String, Value> = serde_json::from_str(&text).expect("JSON");
            let allowed: Vec<String> = crate::fields::VLLM_EXTENSIONS.iter().map(|s| (*s).to_owned()).collect();
            if let Ok(r) = ChatRequest::parse(text.as_bytes()) {
                let _ = r.check(&limits(&allowed));
                let defaults: Map<String, Value> = defaults.into_iter().collect();
                let out: Value = serde_json::from_slice(&r.into_engine_body("m", &defaults, None)).expect("JSON");
                for k in obj.keys() {
                    if k == "service_tier" {
                        // The platform's: it chose the queue lane.
                        prop_assert!(out.get(k).is_none());
                        continue;
                    }
                    prop_assert!(out.get(k).is_some(), "{} lost", k);
                    if k != "model" && !defaults.contains_key(k) {
                        prop_assert_eq!(&out[k], &obj[k]);
                    }
                }
            }
        }

        #[test]
        fn engine_stream_bytes_never_break_the_usage_reader(bytes in vec(any::<u8>(), 0..400)) {
            let _ = with_service_tier_sse(&bytes, "flex");
            let _ = with_service_tier(&bytes, "flex");
            let _ = usage_of_sse(&bytes);
            let _ = usage_of_body(&bytes);
            let _ = sse_events(&bytes);
        }

        #[test]
        fn usage_is_found_in_any_framing_of_a_final_chunk(
            prompt in 0u64..100_000,
            completion in 0u64..100_000,
            before in vec("[a-z ]{0,20}", 0..4),
        ) {
            let mut chunk = String::new();
            for b in &before {
                chunk.push_str(&format!("data: {{\"choices\":[{{\"delta\":{{\"content\":\"{b}\"}}}}],\"usage\":null}}\n\n"));
            }
            chunk.push_str(&format!(
                "data: {{\"choices\":[],\"usage\":{{\"prompt_tokens\":{prompt},\"completion_tokens\":{completion}}}}}\n\ndata: [DONE]\n\n"
            ));
            prop_assert_eq!(
                usage_of_sse(chunk.as_bytes()),
                Some(Usage { prompt_tokens: prompt, completion_tokens: completion })
            );
            prop_assert_eq!(sse_events(chunk.as_bytes()), before.len() + 2);
        }
    }
}
