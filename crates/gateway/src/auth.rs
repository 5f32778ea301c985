//! API keys: read from files, compared in constant time; each key names its tenant.

use std::path::Path;
use std::sync::Arc;

use subtle::{ConditionallySelectable, ConstantTimeEq};

/// The configured keys, with the tenant of each.
#[derive(Default)]
pub struct ApiKeys {
    keys: Vec<(Vec<u8>, u32)>,
    tenants: Vec<Arc<str>>,
}

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiKeys({} keys)", self.keys.len())
    }
}

/// Outcome of checking a request's credentials.
#[derive(Debug, PartialEq, Eq)]
pub enum AuthError {
    /// No `Authorization: Bearer` header.
    Missing,
    /// A token that matches no key.
    Invalid,
}

impl ApiKeys {
    /// Adds the keys of `path` (one per line; blank lines and `#` comments are skipped) for
    /// `tenant`. A file without a key is an error: a tenant nobody can be is a mistake.
    pub fn load(&mut self, path: &Path, tenant: &str) -> std::io::Result<()> {
        let text = std::fs::read_to_string(path)?;
        let before = self.keys.len();
        self.add(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(str::to_owned),
            tenant,
        );
        if self.keys.len() == before {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{} holds no API key", path.display()),
            ));
        }
        Ok(())
    }

    /// Adds keys given directly for `tenant`.
    pub fn add(&mut self, keys: impl IntoIterator<Item = String>, tenant: &str) {
        let t = match self.tenants.iter().position(|t| &**t == tenant) {
            Some(i) => i,
            None => {
                self.tenants.push(tenant.into());
                self.tenants.len() - 1
            }
        } as u32;
        self.keys
            .extend(keys.into_iter().map(|k| (k.into_bytes(), t)));
    }

    /// Keys given directly, all of the tenant `default` (tests).
    pub fn from_keys(keys: impl IntoIterator<Item = String>) -> Self {
        let mut k = Self::default();
        k.add(keys, ssw_protocol::tier::DEFAULT_TENANT);
        k
    }

    /// Whether no key has been added.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Checks an `Authorization` header value; returns the key's tenant. Every key is
    /// compared, so the time taken does not tell which key (or how much of one) matched.
    pub fn check(&self, authorization: Option<&[u8]>) -> Result<Arc<str>, AuthError> {
        let token = authorization
            .and_then(|h| {
                let (scheme, rest) = h.split_at_checked(7)?;
                scheme.eq_ignore_ascii_case(b"bearer ").then_some(rest)
            })
            .map(<[u8]>::trim_ascii)
            .filter(|t| !t.is_empty())
            .ok_or(AuthError::Missing)?;
        let mut found = subtle::Choice::from(0);
        let mut tenant = 0u32;
        for (key, t) in &self.keys {
            let eq = key.as_slice().ct_eq(token);
            tenant.conditional_assign(t, eq);
            found |= eq;
        }
        if bool::from(found) {
            Ok(self.tenants[tenant as usize].clone())
        } else {
            Err(AuthError::Invalid)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_are_checked() {
        let mut keys = ApiKeys::from_keys(["k1".to_owned(), "secret-2".to_owned()]);
        keys.add(["studio-key".to_owned()], "studio-a");
        assert_eq!(keys.check(Some(b"Bearer k1")).as_deref(), Ok("default"));
        assert_eq!(
            keys.check(Some(b"bearer secret-2")).as_deref(),
            Ok("default")
        );
        assert_eq!(
            keys.check(Some(b"Bearer studio-key")).as_deref(),
            Ok("studio-a")
        );
        assert_eq!(keys.check(Some(b"Bearer k2")), Err(AuthError::Invalid));
        assert_eq!(keys.check(Some(b"Bearer k")), Err(AuthError::Invalid));
        assert_eq!(keys.check(Some(b"Basic k1")), Err(AuthError::Missing));
        assert_eq!(keys.check(Some(b"Bearer ")), Err(AuthError::Missing));
        assert_eq!(keys.check(None), Err(AuthError::Missing));
    }
}
