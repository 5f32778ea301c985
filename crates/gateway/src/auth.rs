//! API keys: read from a file, compared in constant time.

use std::path::Path;

use subtle::ConstantTimeEq;

/// The configured keys.
pub struct ApiKeys {
    keys: Vec<Vec<u8>>,
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
    /// Reads one key per line; blank lines and `#` comments are skipped.
    pub fn load(path: &Path) -> std::io::Result<Self> {
        let text = std::fs::read_to_string(path)?;
        let keys: Vec<Vec<u8>> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|l| l.as_bytes().to_vec())
            .collect();
        if keys.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{} holds no API key", path.display()),
            ));
        }
        Ok(Self { keys })
    }

    /// Keys given directly (tests).
    pub fn from_keys(keys: impl IntoIterator<Item = String>) -> Self {
        Self {
            keys: keys.into_iter().map(String::into_bytes).collect(),
        }
    }

    /// Checks an `Authorization` header value. Every key is compared, so the time taken does
    /// not tell which key (or how much of one) matched.
    pub fn check(&self, authorization: Option<&[u8]>) -> Result<(), AuthError> {
        let token = authorization
            .and_then(|h| {
                let (scheme, rest) = h.split_at_checked(7)?;
                scheme.eq_ignore_ascii_case(b"bearer ").then_some(rest)
            })
            .map(<[u8]>::trim_ascii)
            .filter(|t| !t.is_empty())
            .ok_or(AuthError::Missing)?;
        let mut found = subtle::Choice::from(0);
        for key in &self.keys {
            found |= key.as_slice().ct_eq(token);
        }
        if bool::from(found) {
            Ok(())
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
        let keys = ApiKeys::from_keys(["k1".to_owned(), "secret-2".to_owned()]);
        assert_eq!(keys.check(Some(b"Bearer k1")), Ok(()));
        assert_eq!(keys.check(Some(b"bearer secret-2")), Ok(()));
        assert_eq!(keys.check(Some(b"Bearer k2")), Err(AuthError::Invalid));
        assert_eq!(keys.check(Some(b"Bearer k")), Err(AuthError::Invalid));
        assert_eq!(keys.check(Some(b"Basic k1")), Err(AuthError::Missing));
        assert_eq!(keys.check(Some(b"Bearer ")), Err(AuthError::Missing));
        assert_eq!(keys.check(None), Err(AuthError::Missing));
    }
}
