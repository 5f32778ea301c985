//! Decoding raw Redis replies: stream entries and mixed arrays from scripts.

use std::collections::HashMap;

use redis::Value;

use crate::QueueError;

/// One stream entry: its id and its fields.
#[derive(Debug)]
pub struct Entry {
    /// Stream entry id (`<ms>-<seq>`).
    pub id: String,
    /// Field → value.
    pub fields: HashMap<String, Vec<u8>>,
}

impl Entry {
    /// Removes and returns a field (the shape `from_fields` decoders take).
    pub fn take(&mut self, field: &str) -> Option<Vec<u8>> {
        self.fields.remove(field)
    }
}

/// Bytes of a string-like value.
pub fn bytes(v: Value) -> Option<Vec<u8>> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.into_bytes()),
        Value::Okay => Some(b"OK".to_vec()),
        Value::Int(i) => Some(i.to_string().into_bytes()),
        _ => None,
    }
}

/// A string-like value as text.
pub fn string(v: Value) -> Option<String> {
    bytes(v).and_then(|b| String::from_utf8(b).ok())
}

/// An integer, also from its string form.
pub fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        _ => None,
    }
}

/// The elements of an array (empty for nil).
pub fn array(v: Value) -> Result<Vec<Value>, QueueError> {
    match v {
        Value::Array(a) | Value::Set(a) => Ok(a),
        Value::Nil => Ok(Vec::new()),
        other => Err(QueueError::Malformed(format!(
            "expected an array, got {other:?}"
        ))),
    }
}

/// Decodes `[id, [field, value, ...]]`; `None` for an entry deleted while pending (nil body).
pub fn entry(v: Value) -> Result<Option<Entry>, QueueError> {
    let mut parts = array(v)?.into_iter();
    let id = parts
        .next()
        .and_then(string)
        .ok_or_else(|| QueueError::Malformed("entry without id".into()))?;
    let body = match parts.next() {
        None | Some(Value::Nil) => return Ok(None),
        Some(b) => array(b)?,
    };
    let mut fields = HashMap::with_capacity(body.len() / 2);
    let mut it = body.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        if let (Some(k), Some(v)) = (string(k), bytes(v)) {
            fields.insert(k, v);
        }
    }
    Ok(Some(Entry { id, fields }))
}

/// Decodes an array of entries.
pub fn entries(v: Value) -> Result<Vec<Entry>, QueueError> {
    let mut out = Vec::new();
    for e in array(v)? {
        if let Some(e) = entry(e)? {
            out.push(e);
        }
    }
    Ok(out)
}

/// Decodes an `XREAD`/`XREADGROUP` reply for a single stream into its entries.
pub fn read_reply(v: Value) -> Result<Vec<Entry>, QueueError> {
    let Some(stream) = array(v)?.into_iter().next() else {
        return Ok(Vec::new());
    };
    let (_key, list) = match stream {
        Value::Array(kv) => {
            let mut it = kv.into_iter();
            (it.next(), it.next())
        }
        // RESP3 answers a map of key → entries.
        Value::Map(mut kv) => match kv.pop() {
            Some((k, v)) => (Some(k), Some(v)),
            None => (None, None),
        },
        other => return Err(QueueError::Malformed(format!("stream reply {other:?}"))),
    };
    list.map(entries).unwrap_or_else(|| Ok(Vec::new()))
}

/// Property tests: whatever Redis (or something pretending to be Redis) answers, decoding ends
/// in entries or an error, never a panic.
#[cfg(test)]
mod props {
    use super::*;
    use proptest::collection::vec;
    use proptest::prelude::*;

    fn value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Nil),
            Just(Value::Okay),
            any::<i64>().prop_map(Value::Int),
            vec(any::<u8>(), 0..16).prop_map(Value::BulkString),
            "[ -~]{0,12}".prop_map(Value::SimpleString),
        ];
        leaf.prop_recursive(5, 64, 6, |inner| {
            prop_oneof![
                vec(inner.clone(), 0..6).prop_map(Value::Array),
                vec((inner.clone(), inner), 0..3).prop_map(Value::Map),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn any_reply_value_decodes_or_is_malformed(v in value()) {
            let _ = read_reply(v.clone());
            let _ = entries(v.clone());
            let _ = entry(v.clone());
            let _ = int(&v);
            let _ = string(v);
        }

        #[test]
        fn any_bytes_on_the_wire_parse_to_a_value_or_an_error(bytes in vec(any::<u8>(), 0..256)) {
            if let Ok(v) = redis::parse_redis_value(&bytes) {
                let _ = read_reply(v);
            }
        }

        #[test]
        fn a_well_formed_stream_read_yields_its_entries(
            fields in vec(("[a-z]{1,6}", vec(any::<u8>(), 0..12)), 0..5),
            n in 0usize..4,
        ) {
            let entry = |i: usize| Value::Array(vec![
                Value::BulkString(format!("{i}-0").into_bytes()),
                Value::Array(fields.iter().flat_map(|(k, v)| [Value::BulkString(k.clone().into_bytes()), Value::BulkString(v.clone())]).collect()),
            ]);
            let reply = Value::Array(vec![Value::Array(vec![
                Value::BulkString(b"key".to_vec()),
                Value::Array((0..n).map(entry).collect()),
            ])]);
            let got = read_reply(reply).expect("decodes");
            prop_assert_eq!(got.len(), n);
            for e in got {
                for (k, v) in &fields {
                    // The last value of a repeated field wins.
                    let last = fields.iter().rev().find(|(k2, _)| k2 == k).map(|(_, v)| v);
                    prop_assert_eq!(e.fields.get(k), last);
                    let _ = v;
                }
            }
        }
    }
}
