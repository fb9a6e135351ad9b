//! Finding the one credential of a request in its headers: shared by the server (forward auth,
//! proxy, management API) and the tower layer, so every way in reads credentials alike. HTTP-free:
//! the caller hands over the header values as bytes.

use crate::error::{AuthReason, Error};

/// The credential a request presents. Its `Debug` shows the kind, never the credential.
#[derive(PartialEq, Eq)]
pub enum Credential<'a> {
    /// A JWT from `Authorization: Bearer`.
    Token(&'a str),
    /// A secret key (`kgsk_…`), from `X-Api-Key` or `Authorization: Bearer`.
    SecretKey(&'a str),
}

impl std::fmt::Debug for Credential<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Token(_) => f.write_str("Token(<redacted>)"),
            Self::SecretKey(_) => f.write_str("SecretKey(<redacted>)"),
        }
    }
}

/// One header's values: the first, and whether there were more.
#[derive(Debug, Clone, Copy, Default)]
pub struct HeaderValues<'a> {
    pub first: Option<&'a [u8]>,
    pub repeated: bool,
}

impl<'a> HeaderValues<'a> {
    pub fn of<I: IntoIterator<Item = &'a [u8]>>(values: I) -> Self {
        let mut it = values.into_iter();
        let first = it.next();
        Self {
            first,
            repeated: it.next().is_some(),
        }
    }
}

/// Reads the one credential of a request from its `Authorization` and `X-Api-Key` headers.
/// Several `Authorization` headers, or a credential in both, are refused rather than guessed
/// between.
pub fn credential<'a>(
    authorization: HeaderValues<'a>,
    api_key: HeaderValues<'a>,
) -> Result<Credential<'a>, Error> {
    if authorization.repeated {
        return Err(Error::auth(
            AuthReason::TokenMalformed,
            "The request has more than one Authorization header.",
        ));
    }
    if api_key.repeated {
        return Err(Error::auth(
            AuthReason::TokenMalformed,
            "The request has more than one X-Api-Key header.",
        ));
    }
    let text = |v: &'a [u8]| std::str::from_utf8(v).ok().filter(|s| s.is_ascii());
    match (authorization.first, api_key.first) {
        (Some(_), Some(_)) => Err(Error::auth(
            AuthReason::TokenMalformed,
            "The request has both an Authorization and an X-Api-Key header; send one credential.",
        )),
        (None, None) => Err(Error::auth(
            AuthReason::TokenMissing,
            "Send Authorization: Bearer <token>.",
        )),
        (None, Some(v)) => {
            let v = text(v).ok_or_else(|| {
                Error::auth(
                    AuthReason::UnknownSecretKey,
                    "The X-Api-Key header is not a keygate secret key.",
                )
            })?;
            Ok(Credential::SecretKey(v.trim()))
        }
        (Some(v), None) => {
            let v = text(v).ok_or_else(|| {
                Error::auth(
                    AuthReason::TokenMalformed,
                    "The Authorization header holds non-ASCII bytes.",
                )
            })?;
            let (scheme, rest) = v.trim().split_once(' ').unwrap_or((v, ""));
            if !scheme.eq_ignore_ascii_case("bearer") {
                return Err(Error::auth(
                    AuthReason::TokenMissing,
                    "The Authorization header must use the Bearer scheme.",
                ));
            }
            let token = rest.trim();
            if token.is_empty() {
                return Err(Error::auth(
                    AuthReason::TokenMissing,
                    "The bearer token is empty.",
                ));
            }
            if token.starts_with("kgsk_") {
                Ok(Credential::SecretKey(token))
            } else {
                Ok(Credential::Token(token))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> Result<Credential<'static>, Error> {
        let values = |name: &str| {
            HeaderValues::of(
                pairs
                    .iter()
                    .filter(|(k, _)| *k == name)
                    .map(|(_, v)| v.as_bytes()),
            )
        };
        credential(values("authorization"), values("x-api-key"))
    }

    fn reason(r: Result<Credential<'_>, Error>) -> AuthReason {
        match r {
            Err(Error::Unauthenticated(f)) => f.reason,
            other => panic!("expected an auth failure, got {other:?}"),
        }
    }

    #[test]
    fn credential_table() {
        assert_eq!(
            headers(&[("authorization", "Bearer a.b.c")]).unwrap(),
            Credential::Token("a.b.c")
        );
        assert_eq!(
            headers(&[("authorization", "bEaReR   a.b.c ")]).unwrap(),
            Credential::Token("a.b.c")
        );
        assert_eq!(
            headers(&[("x-api-key", "kgsk_x")]).unwrap(),
            Credential::SecretKey("kgsk_x")
        );
        assert_eq!(
            headers(&[("authorization", "Bearer kgsk_x")]).unwrap(),
            Credential::SecretKey("kgsk_x")
        );
        assert_eq!(reason(headers(&[])), AuthReason::TokenMissing);
        assert_eq!(
            reason(headers(&[("authorization", "Basic dXNlcjpwdw==")])),
            AuthReason::TokenMissing
        );
        assert_eq!(
            reason(headers(&[("authorization", "Bearer")])),
            AuthReason::TokenMissing
        );
        assert_eq!(
            reason(headers(&[
                ("authorization", "Bearer a.b.c"),
                ("authorization", "Bearer d.e.f")
            ])),
            AuthReason::TokenMalformed
        );
        assert_eq!(
            reason(headers(&[
                ("authorization", "Bearer a.b.c"),
                ("x-api-key", "kgsk_x")
            ])),
            AuthReason::TokenMalformed
        );
        assert_eq!(
            reason(headers(&[("x-api-key", "kgsk_x"), ("x-api-key", "kgsk_y")])),
            AuthReason::TokenMalformed
        );
    }
}
