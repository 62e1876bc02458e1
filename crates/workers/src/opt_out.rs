//! The email publisher's side of the one-click unsubscribe: the headers every email carries, and whether its
//! recipient opted out of the store's status emails (`email_opt_outs`, by keyed hash of the address).
//!
//! | `UNSUBSCRIBE_SECRET` | `TRACKING_PAGE_URL` | `UNSUBSCRIBE_MAILTO` | emails carry | opt-outs honoured |
//! | --- | --- | --- | --- | --- |
//! | set | set (`https://`) | any | `<https://…/u/{token}>` (+ `mailto:`), and `List-Unsubscribe-Post` | yes |
//! | set | unset | any | the `mailto:` alone, if set (a warning at start: no one-click link) | yes |
//! | unset | any | set | the `mailto:` alone (a warning at start) | none can be recorded |
//! | unset | any | unset | no `List-Unsubscribe` (a warning at start) | none can be recorded |
//!
//! `TRACKING_PAGE_URL` over `http://` is refused with `UNSUBSCRIBE_SECRET` (exit code 2), except on a loopback
//! host (tests, `make demo`).

use tracking_domain::{EmailAddress, OptOut, StoreName, UnsubscribeKey, UnsubscribeLinks};
use tracking_email::{ListUnsubscribe, Mailto, list_unsubscribe};
use tracking_runtime::settings::SettingsError;
use tracking_store::Db;
use tracking_store::StoreError;

/// The detail recorded in `deliveries` for an email not sent because its recipient opted out.
pub const SKIPPED_UNSUBSCRIBED: &str = "skipped: unsubscribed";

/// What the email publisher knows of unsubscribing.
#[derive(Debug, Clone, Default)]
pub struct Unsubscribe {
    /// `UNSUBSCRIBE_SECRET`: hashes recipients to look their opt-out up.
    key: Option<UnsubscribeKey>,
    /// `{TRACKING_PAGE_URL}/u/{token}` under the same key.
    links: Option<UnsubscribeLinks>,
    /// `UNSUBSCRIBE_MAILTO`.
    mailto: Option<Mailto>,
}

impl Unsubscribe {
    pub fn from_env() -> Result<Self, SettingsError> {
        let key = tracking_email::env::unsubscribe_key()?;
        let links = match &key {
            Some(key) => tracking_email::env::unsubscribe_links(key)?,
            None => None,
        };
        Ok(Self {
            key,
            links,
            mailto: tracking_email::env::unsubscribe_mailto()?,
        })
    }

    /// Says at start what the emails will carry, and warns when it is less than a one-click link.
    pub fn log_start(&self) {
        match (&self.links, &self.key, &self.mailto) {
            (Some(_), _, mailto) => tracing::info!(
                mailto = mailto.is_some(),
                "Emails carry a one-click unsubscribe link (List-Unsubscribe, List-Unsubscribe-Post)."
            ),
            (None, Some(_), mailto) => tracing::warn!(
                mailto = mailto.is_some(),
                "TRACKING_PAGE_URL is not set: emails carry no one-click unsubscribe link (only UNSUBSCRIBE_MAILTO, if set); recorded opt-outs are honoured."
            ),
            (None, None, mailto) => tracing::warn!(
                mailto = mailto.is_some(),
                "UNSUBSCRIBE_SECRET is not set: emails carry no one-click unsubscribe link (only UNSUBSCRIBE_MAILTO, if set)."
            ),
        }
    }

    /// The unsubscribe headers of an email to `address` from `store`.
    pub fn headers(&self, store: &StoreName, address: &EmailAddress) -> Option<ListUnsubscribe> {
        let link = self.links.as_ref().map(|l| l.url(store, address));
        list_unsubscribe(link.as_deref(), self.mailto.as_ref())
    }

    /// Whether `address` opted out of `store`'s status emails (never without `UNSUBSCRIBE_SECRET`: none can be
    /// recorded then).
    pub async fn opted_out(
        &self,
        pool: &Db,
        store: &StoreName,
        address: &EmailAddress,
    ) -> Result<bool, StoreError> {
        let Some(key) = &self.key else {
            return Ok(false);
        };
        let opt_out = OptOut {
            store: store.clone(),
            address: key.address_hash(address),
        };
        Ok(tracking_store::opt_outs::since(pool, &opt_out)
            .await?
            .is_some())
    }
}
