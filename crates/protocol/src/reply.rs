//! Reply events: what a worker sends back on the owning gateway's reply stream.
//!
//! A streaming job produces `Head` (with the first SSE bytes), then `Data`…, then `End` (or
//! `Fail` once the head is out).
//! A non-streaming job, or any job that fails before its head, produces one `Full` or `Fail`.
//! `KeepAlive` proves a worker still owns a job that has nothing to say yet; `Requeued` says the
//! job went back to the queue for another worker. Events of one job are
//! written by one worker task in order, and a Redis stream keeps that order.

use crate::EpochMillis;
use crate::error::{ErrorCode, ErrorEnvelope};
use crate::job::{DecodeError, number, text};

/// One event for one job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// The job id.
    pub job: String,
    /// The run that sent it: the fence its claim took (0 from workers before 0.2, which sent
    /// none). A gateway ignores events of a run older than one it has heard from.
    pub fence: u32,
    /// The event's place in its run, from 0: a gap means events were lost, a repeat that an
    /// event was sent twice.
    pub seq: u32,
    /// What happened.
    pub event: ReplyEvent,
}

/// The event kinds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReplyEvent {
    /// The engine accepted a streaming request and produced output: the gateway sends its
    /// response head and these first bytes together. One entry, because Redis hands a blocked
    /// reader each entry as soon as it is added: a separate first `Data` would reach the gateway
    /// one read later.
    Head {
        /// Worker that runs the job.
        worker: String,
        /// When the worker claimed the job.
        claimed_ms: EpochMillis,
        /// The first raw SSE bytes (may be empty; absent from entries of older workers).
        data: Vec<u8>,
    },
    /// Raw SSE bytes from the engine, one or more whole events.
    Data(Vec<u8>),
    /// The stream is complete.
    End,
    /// A complete response: the non-streaming answer, or an engine 4xx as an OpenAI error
    /// (code `engine_rejected`).
    Full {
        /// HTTP status.
        status: u16,
        /// Worker that ran the job.
        worker: String,
        /// When the worker claimed the job.
        claimed_ms: EpochMillis,
        /// The response body (JSON).
        body: Vec<u8>,
    },
    /// The platform failed the job; `body` is an OpenAI error envelope.
    Fail {
        /// HTTP status (used only if no head was sent).
        status: u16,
        /// Worker that reports it.
        worker: String,
        /// The error's code, carried typed so no reader parses the body for it.
        code: ErrorCode,
        /// OpenAI error envelope, JSON.
        body: Vec<u8>,
    },
    /// Nothing new, but the job is alive.
    KeepAlive,
    /// The engine refused the job before any output; it is back on the queue under a new entry
    /// with a new deadline, waiting for another worker.
    Requeued {
        /// The new stream entry id.
        entry_id: String,
        /// The new start deadline.
        deadline_ms: EpochMillis,
    },
}

impl ReplyEvent {
    /// A failure with `code`'s status and an envelope saying `message`.
    pub fn fail(code: ErrorCode, worker: impl Into<String>, message: &str) -> Self {
        Self::Fail {
            status: code.status(),
            worker: worker.into(),
            code,
            body: ErrorEnvelope::new(code, message).to_json(),
        }
    }

    /// The event's kind, for logs (its bytes may be model output).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Head { .. } => "head",
            Self::Data(_) => "data",
            Self::End => "end",
            Self::Full { .. } => "full",
            Self::Fail { .. } => "fail",
            Self::KeepAlive => "keep-alive",
            Self::Requeued { .. } => "requeued",
        }
    }

    /// The code of a finished request: `None` for a successful answer.
    pub fn error_code(&self) -> Option<ErrorCode> {
        match self {
            Self::Fail { code, .. } => Some(*code),
            Self::Full { status, .. } if *status >= 400 => Some(ErrorCode::EngineRejected),
            _ => None,
        }
    }

    /// A complete answer's status, worker and body (`Full` or `Fail`); any other event back.
    pub fn into_answer(self) -> Result<(u16, String, Vec<u8>), Self> {
        match self {
            Self::Full {
                status,
                worker,
                body,
                ..
            }
            | Self::Fail {
                status,
                worker,
                body,
                ..
            } => Ok((status, worker, body)),
            other => Err(other),
        }
    }
}

impl Reply {
    /// The stream fields.
    pub fn to_fields(&self) -> Vec<(&'static str, Vec<u8>)> {
        let mut f = vec![
            ("job", self.job.clone().into_bytes()),
            ("f", self.fence.to_string().into_bytes()),
            ("n", self.seq.to_string().into_bytes()),
        ];
        match &self.event {
            ReplyEvent::Head {
                worker,
                claimed_ms,
                data,
            } => {
                f.push(("k", b"h".to_vec()));
                f.push(("worker", worker.clone().into_bytes()));
                f.push(("claimed", claimed_ms.to_string().into_bytes()));
                if !data.is_empty() {
                    f.push(("data", data.clone()));
                }
            }
            ReplyEvent::Data(d) => {
                f.push(("k", b"d".to_vec()));
                f.push(("data", d.clone()));
            }
            ReplyEvent::End => f.push(("k", b"e".to_vec())),
            ReplyEvent::Full {
                status,
                worker,
                claimed_ms,
                body,
            } => {
                f.push(("k", b"f".to_vec()));
                f.push(("status", status.to_string().into_bytes()));
                f.push(("worker", worker.clone().into_bytes()));
                f.push(("claimed", claimed_ms.to_string().into_bytes()));
                f.push(("data", body.clone()));
            }
            ReplyEvent::Fail {
                status,
                worker,
                code,
                body,
            } => {
                f.push(("k", b"x".to_vec()));
                f.push(("status", status.to_string().into_bytes()));
                f.push(("worker", worker.clone().into_bytes()));
                f.push(("code", code.as_str().as_bytes().to_vec()));
                f.push(("data", body.clone()));
            }
            ReplyEvent::KeepAlive => f.push(("k", b"k".to_vec())),
            ReplyEvent::Requeued {
                entry_id,
                deadline_ms,
            } => {
                f.push(("k", b"r".to_vec()));
                f.push(("entry", entry_id.clone().into_bytes()));
                f.push(("deadline", deadline_ms.to_string().into_bytes()));
            }
        }
        f
    }

    /// Decodes an entry; `take` removes and returns one field's value.
    pub fn from_fields(mut take: impl FnMut(&str) -> Option<Vec<u8>>) -> Result<Self, DecodeError> {
        let job = text("job", take("job"))?;
        let counter =
            |take: &mut dyn FnMut(&str) -> Option<Vec<u8>>, name: &'static str| match take(name) {
                Some(v) => number(name, Some(v)),
                None => Ok(0),
            };
        let fence = counter(&mut take, "f")?;
        let seq = counter(&mut take, "n")?;
        let kind = take("k").ok_or_else(|| DecodeError("missing field `k`".into()))?;
        let data = |take: &mut dyn FnMut(&str) -> Option<Vec<u8>>| {
            take("data").ok_or_else(|| DecodeError("missing field `data`".into()))
        };
        let event = match kind.as_slice() {
            b"h" => ReplyEvent::Head {
                worker: text("worker", take("worker"))?,
                claimed_ms: number("claimed", take("claimed"))?,
                data: take("data").unwrap_or_default(),
            },
            b"d" => ReplyEvent::Data(data(&mut take)?),
            b"e" => ReplyEvent::End,
            b"f" => ReplyEvent::Full {
                status: number("status", take("status"))?,
                worker: text("worker", take("worker"))?,
                claimed_ms: number("claimed", take("claimed"))?,
                body: data(&mut take)?,
            },
            b"x" => {
                let status = number("status", take("status"))?;
                let worker = text("worker", take("worker"))?;
                let code = take("code");
                let body = data(&mut take)?;
                // Workers before 0.1.1 sent no `code`: read it from the envelope once.
                let code = match code {
                    Some(c) => ErrorCode::parse(&String::from_utf8_lossy(&c)),
                    None => serde_json::from_slice::<ErrorEnvelope>(&body)
                        .ok()
                        .and_then(|e| ErrorCode::parse(e.error.code.as_deref()?)),
                }
                .unwrap_or(ErrorCode::UpstreamError);
                ReplyEvent::Fail {
                    status,
                    worker,
                    code,
                    body,
                }
            }
            b"k" => ReplyEvent::KeepAlive,
            b"r" => ReplyEvent::Requeued {
                entry_id: text("entry", take("entry"))?,
                deadline_ms: number("deadline", take("deadline"))?,
            },
            other => {
                return Err(DecodeError(format!(
                    "unknown reply kind {:?}",
                    String::from_utf8_lossy(other)
                )));
            }
        };
        Ok(Self {
            job,
            fence,
            seq,
            event,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn every_event_round_trips() {
        let events = [
            ReplyEvent::Head {
                worker: "w".into(),
                claimed_ms: 5,
                data: b"data: {}\n\n".to_vec(),
            },
            ReplyEvent::Head {
                worker: "w".into(),
                claimed_ms: 5,
                data: Vec::new(),
            },
            ReplyEvent::Data(b"data: {}\n\n".to_vec()),
            ReplyEvent::End,
            ReplyEvent::Full {
                status: 200,
                worker: "w".into(),
                claimed_ms: 7,
                body: b"{}".to_vec(),
            },
            ReplyEvent::Fail {
                status: 502,
                worker: "w".into(),
                code: ErrorCode::ResponseTooLarge,
                body: b"{\"error\":{}}".to_vec(),
            },
            ReplyEvent::KeepAlive,
            ReplyEvent::Requeued {
                entry_id: "1-0".into(),
                deadline_ms: 9,
            },
        ];
        for (i, event) in events.into_iter().enumerate() {
            let r = Reply {
                job: "j".into(),
                fence: 2,
                seq: i as u32,
                event,
            };
            let mut map: HashMap<&str, Vec<u8>> = r.to_fields().into_iter().collect();
            assert_eq!(Reply::from_fields(|k| map.remove(k)).unwrap(), r);
        }
    }

    #[test]
    fn a_failure_from_an_older_worker_gets_its_code_from_the_envelope() {
        let body = ErrorEnvelope::new(ErrorCode::QueueTimeout, "late").to_json();
        let mut map: HashMap<&str, Vec<u8>> = [
            ("job", b"j".to_vec()),
            ("k", b"x".to_vec()),
            ("status", b"503".to_vec()),
            ("worker", b"w".to_vec()),
            ("data", body),
        ]
        .into_iter()
        .collect();
        let r = Reply::from_fields(|k| map.remove(k)).unwrap();
        assert_eq!(r.event.error_code(), Some(ErrorCode::QueueTimeout));
        assert_eq!(
            (r.fence, r.seq),
            (0, 0),
            "an older worker's events carry no run"
        );
    }

    #[test]
    fn unknown_kind_is_an_error() {
        let mut map: HashMap<&str, Vec<u8>> = [("job", b"j".to_vec()), ("k", b"?".to_vec())]
            .into_iter()
            .collect();
        assert!(Reply::from_fields(|k| map.remove(k)).is_err());
    }
}

/// Property tests: whatever a Redis entry holds, decoding ends in a value or an error.
#[cfg(test)]
mod props {
    use super::*;
    use crate::job::Job;
    use proptest::collection::{hash_map, vec};
    use proptest::prelude::*;
    use std::collections::HashMap;

    fn field() -> impl Strategy<Value = String> {
        prop_oneof![
            proptest::sample::select(vec![
                "job", "k", "worker", "claimed", "data", "status", "code", "entry", "deadline",
                "id", "rid", "reply", "enq", "stream", "attempt", "body", "f", "n", "crashes",
            ])
            .prop_map(str::to_owned),
            "[a-z]{1,6}",
        ]
    }

    fn value() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            vec(any::<u8>(), 0..24),
            proptest::sample::select(vec!["h", "d", "e", "f", "x", "k", "r", "200", "1", "0"])
                .prop_map(|s| s.as_bytes().to_vec()),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn any_entry_decodes_or_is_refused(entry in hash_map(field(), value(), 0..10)) {
            let mut a: HashMap<String, Vec<u8>> = entry.clone();
            let _ = Reply::from_fields(|k| a.remove(k));
            let mut b = entry;
            let _ = Job::from_fields(|k| b.remove(k));
        }

        #[test]
        fn every_event_survives_its_fields(job in "[a-z0-9-]{1,12}", data in vec(any::<u8>(), 0..64), status in 100u16..600, n in any::<u64>(), fence in any::<u32>(), seq in any::<u32>()) {
            for event in [
                ReplyEvent::Head { worker: job.clone(), claimed_ms: n, data: data.clone() },
                ReplyEvent::Data(data.clone()),
                ReplyEvent::Full { status, worker: job.clone(), claimed_ms: n, body: data.clone() },
                ReplyEvent::Fail { status, worker: job.clone(), code: ErrorCode::UpstreamError, body: data.clone() },
                ReplyEvent::Requeued { entry_id: job.clone(), deadline_ms: n },
            ] {
                let r = Reply { job: job.clone(), fence, seq, event };
                let mut map: HashMap<&str, Vec<u8>> = r.to_fields().into_iter().collect();
                let back = Reply::from_fields(|k| map.remove(k));
                prop_assert_eq!(back.map(|b| (b.job, b.fence, b.seq)), Ok((job.clone(), fence, seq)));
            }
        }
    }
}
