//! Secrets out of everything a carrier client keeps or says. The redaction itself is `tracking-redact`'s (shared
//! with the marketplace relay); this module adds what only a carrier client returns: [`RedactFetch`] redacts a
//! call's answer body and every reason and body of a [`FetchError`].

use crate::FetchError;
pub use tracking_redact::*;

/// What a carrier client returns, redacted by the [`Redactor`] that knows its secrets.
pub trait RedactFetch {
    /// A call's result with its body or its error redacted ([`Redactor::body`], [`RedactFetch::error`]).
    fn answered(
        &self,
        result: Result<crate::Answered, FetchError>,
    ) -> Result<crate::Answered, FetchError>;

    /// The same error with every reason and body redacted: what a client returns, so nothing downstream (logs,
    /// health, `carrier_responses`, dead-letter reasons) ever sees a secret.
    fn error(&self, e: FetchError) -> FetchError;
}

impl RedactFetch for Redactor {
    fn answered(
        &self,
        result: Result<crate::Answered, FetchError>,
    ) -> Result<crate::Answered, FetchError> {
        match result {
            Ok(a) => Ok(crate::Answered {
                body: self.body(&a.body),
                answers: a.answers,
            }),
            Err(e) => Err(self.error(e)),
        }
    }

    fn error(&self, e: FetchError) -> FetchError {
        match e {
            FetchError::Transient {
                reason,
                retry_after,
            } => FetchError::Transient {
                reason: self.reason(&reason),
                retry_after,
            },
            FetchError::Timeout(reason) => FetchError::Timeout(self.reason(&reason)),
            FetchError::Auth(reason) => FetchError::Auth(self.reason(&reason)),
            FetchError::Malformed {
                reason,
                http_status,
                body,
            } => FetchError::Malformed {
                reason: self.reason(&reason),
                http_status,
                body: self.body(&body),
            },
            FetchError::Schema { reason, body } => FetchError::Schema {
                reason: self.reason(&reason),
                body: self.body(&body),
            },
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use secrecy::SecretString;

    #[test]
    fn the_redactor_redacts_errors_with_what_it_knows() {
        let r = Redactor::new([SecretString::from("the-access-code".to_owned())]);
        r.remember("opaque-token-1");
        let e = r.error(FetchError::Malformed {
            reason: "token answer: bad expiraEm for opaque-token-1".into(),
            http_status: Some(201),
            body: "raw\0 opaque-token-1 the-access-code".into(),
        });
        let FetchError::Malformed { reason, body, .. } = e else {
            panic!()
        };
        assert!(!reason.contains("opaque-token-1"));
        assert_eq!(body, "raw\u{FFFD} [redacted] [redacted]");
    }
}
