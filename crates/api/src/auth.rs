//! `Authorization: Bearer {API_TOKEN}` on every `/v1` call. The token is kept only as its SHA-256, and the
//! comparison is constant-time over the digests (so neither the content nor the length of the token leaks
//! through timing).
//!
//! A store's `api_token` (`STORES_FILE`) is accepted too, and scopes the call to that store ([`Scope`]): handlers
//! pass [`Scope::store`] to the store layer, so another store's orders are not found (404).

use crate::AppState;
use crate::error::ApiError;
use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

pub(crate) fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// What a token may see: every store's orders (the operator's `API_TOKEN`), or one store's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    Operator,
    Store(tracking_domain::StoreName),
}

impl Scope {
    /// The store filter for the store layer: `None` for the operator (every store).
    pub fn store(&self) -> Option<&tracking_domain::StoreName> {
        match self {
            Scope::Operator => None,
            Scope::Store(s) => Some(s),
        }
    }
}

/// A handler argument that proves the caller sent a valid token, and says its [`Scope`]; it is extracted before
/// the body.
pub struct Authorized(pub Scope);

impl FromRequestParts<AppState> for Authorized {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let Some(value) = parts.headers.get(header::AUTHORIZATION) else {
            return Err(ApiError::unauthorized(
                "missing Authorization header: send Authorization: Bearer {API_TOKEN}",
            ));
        };
        let value = value.to_str().unwrap_or_default().trim();
        let token = match value.split_once(' ') {
            Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => token.trim(),
            _ => {
                return Err(ApiError::unauthorized(
                    "the Authorization header is not a bearer token: send Authorization: Bearer {API_TOKEN}",
                ));
            }
        };
        let operator = bool::from(digest(token).ct_eq(&state.inner.token_digest));
        let store = state.inner.stores.store_of_token(token);
        if operator {
            Ok(Authorized(Scope::Operator))
        } else if let Some(store) = store {
            Ok(Authorized(Scope::Store(store.clone())))
        } else {
            Err(ApiError::unauthorized("invalid API token"))
        }
    }
}

/// The store a tracking request sent with `scope`'s token is for. `named` is the request's `store` field (`None`
/// when absent). The operator's token sends for any store of `stores` (absent: the default store); a store's token
/// sends for its own store only: its requests get that store, and naming another is refused with 422 naming
/// `store` (not 403: the token is valid, the field is what is wrong, as for every other field).
pub fn request_store(
    scope: &Scope,
    named: Option<&tracking_domain::StoreName>,
    stores: &tracking_domain::Stores,
) -> Result<tracking_domain::StoreName, tracking_domain::FieldError> {
    let refuse = |message: String| tracking_domain::FieldError {
        field: "store".into(),
        message,
    };
    match (scope, named) {
        (Scope::Store(own), Some(other)) if other != own => Err(refuse(format!(
            "{:?} is not this token's store: a store's token sends requests for its own store only",
            other.as_str()
        ))),
        (Scope::Store(own), _) => Ok(own.clone()),
        (Scope::Operator, named) => {
            let store = named.cloned().unwrap_or_default();
            if stores.contains(&store) {
                Ok(store)
            } else {
                Err(refuse(format!(
                    "{:?} is not a store of STORES_FILE",
                    store.as_str()
                )))
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use tracking_domain::{StoreName, Stores};

    #[test]
    fn a_stores_token_sends_for_its_store_and_the_operators_for_any_known_store() {
        let stores = Stores::parse(
            "[[store]]\nname = \"loja-a\"\n[[store]]\nname = \"loja-b\"\n",
            None,
        )
        .unwrap();
        let a = StoreName::parse("loja-a").unwrap();
        let b = StoreName::parse("loja-b").unwrap();
        let z = StoreName::parse("loja-z").unwrap();
        let store_a = Scope::Store(a.clone());
        assert_eq!(request_store(&store_a, None, &stores).unwrap(), a);
        assert_eq!(request_store(&store_a, Some(&a), &stores).unwrap(), a);
        let e = request_store(&store_a, Some(&b), &stores).unwrap_err();
        assert_eq!(e.field, "store");
        assert!(e.message.contains("loja-b"), "{}", e.message);
        assert_eq!(
            request_store(&Scope::Operator, Some(&b), &stores).unwrap(),
            b
        );
        assert!(
            request_store(&Scope::Operator, None, &stores)
                .unwrap()
                .is_default()
        );
        let e = request_store(&Scope::Operator, Some(&z), &stores).unwrap_err();
        assert!(
            e.message.contains("not a store of STORES_FILE"),
            "{}",
            e.message
        );
        assert!(
            request_store(&Scope::Operator, None, &Stores::single())
                .unwrap()
                .is_default()
        );
        assert!(request_store(&Scope::Operator, Some(&a), &Stores::single()).is_err());
        assert_eq!(Scope::Operator.store(), None);
        assert_eq!(store_a.store(), Some(&a));
    }
}
