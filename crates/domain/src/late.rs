//! The "your parcel is late" notice as it travels on the email queue (`email.order-status`), beside the status
//! changes: a pointer to a notice the scheduler recorded (`late_notices`), never the email itself. The email publisher
//! sends only what is recorded, so a forged notice cannot email anybody.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The `kind` of a late notice message. Status changes carry no `kind`.
pub const LATE_NOTICE_KIND: &str = "late_notice";

/// `{"kind": "late_notice", "notice_id": "..."}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LateNotice {
    pub kind: String,
    pub notice_id: Uuid,
}

impl LateNotice {
    pub fn new(notice_id: Uuid) -> Self {
        Self {
            kind: LATE_NOTICE_KIND.to_owned(),
            notice_id,
        }
    }

    /// The notice in a message body, when the body is one (a message with `"kind": "late_notice"`); `Err` for a
    /// body that says it is one but does not hold a notice id.
    pub fn from_body(body: &[u8]) -> Option<Result<Self, String>> {
        #[derive(Deserialize)]
        struct Kind {
            kind: Option<serde_json::Value>,
        }
        let kind: Kind = serde_json::from_slice(body).ok()?;
        if kind.kind.as_ref().and_then(|k| k.as_str()) != Some(LATE_NOTICE_KIND) {
            return None;
        }
        Some(
            serde_json::from_slice::<LateNotice>(body)
                .map_err(|e| format!("not a late notice: {e}")),
        )
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn notices_are_told_from_status_changes() {
        let id = Uuid::new_v4();
        let body = serde_json::to_vec(&LateNotice::new(id)).unwrap();
        assert_eq!(LateNotice::from_body(&body).unwrap().unwrap().notice_id, id);
        assert!(LateNotice::from_body(br#"{"change_id": "x", "status": "posted"}"#).is_none());
        assert!(LateNotice::from_body(b"not json").is_none());
        assert!(
            LateNotice::from_body(br#"{"kind": "late_notice"}"#)
                .unwrap()
                .is_err()
        );
    }
}
