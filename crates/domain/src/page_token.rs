//! The customer's tracking page (`GET /t/{token}`) is reached through a token instead of a login: the order id,
//! signed with HMAC-SHA256 under `TRACKING_PAGE_SECRET`. The email publisher signs it for the email's button, and
//! `tracking-api` checks it before it reads anything: a token it did not sign names no order, so order ids cannot
//! be enumerated and an altered token is as unknown as a random one.
//!
//! The token is `base64url(tag ‖ order id)` without padding, where `tag` is the first [`TAG_LEN`] bytes of
//! HMAC-SHA256 over `tracking-page/v1 ‖ 0x00 ‖ order id` (the prefix keeps these MACs apart from any other use of
//! the same key). 128 bits of tag is far beyond guessing over HTTP; the order id inside keeps the token stateless
//! (nothing to store, nothing to look up before the check). The tag is compared in constant time. Tokens do not
//! expire: an email stays useful as long as the order is kept. Changing the secret invalidates every link sent.
//!
//! Stores: a token of the default store signs the order id alone (so tokens sent before stores existed stay
//! valid); another store's signs `store ‖ 0x00 ‖ order id` ([`PageKey::token_for`]). No order id holds a NUL, so
//! the two never collide, and the tag covers the store: a token opens its own store's order only
//! ([`PageKey::open`]).

use crate::OrderId;
use crate::store::StoreName;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::fmt;

/// Bytes of the HMAC kept in a token.
pub const TAG_LEN: usize = 16;
/// The shortest secret accepted, in characters.
pub const MIN_SECRET_LEN: usize = 32;
/// The longest token read: a 100-character order id is at most 400 bytes, plus the tag, in base64.
const MAX_TOKEN_LEN: usize = 4 * (TAG_LEN + 400).div_ceil(3);
const CONTEXT: &[u8] = b"tracking-page/v1\0";
/// The longest token of a store's order: a store name (64) and its NUL more than [`MAX_TOKEN_LEN`].
const MAX_STORE_TOKEN_LEN: usize = 4 * (TAG_LEN + 65 + 400).div_ceil(3);

/// The key that signs and checks tracking-page tokens. Its `Debug` shows nothing of the secret.
#[derive(Clone)]
pub struct PageKey {
    mac: Hmac<Sha256>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "must be at least {MIN_SECRET_LEN} characters (it signs the customers' tracking-page links)"
)]
pub struct ShortSecret;

impl PageKey {
    pub fn new(secret: &str) -> Result<Self, ShortSecret> {
        if secret.chars().count() < MIN_SECRET_LEN {
            return Err(ShortSecret);
        }
        let mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).map_err(|_| ShortSecret)?;
        Ok(Self { mac })
    }

    fn tagged(&self, order_id: &[u8]) -> Hmac<Sha256> {
        let mut mac = self.mac.clone();
        mac.update(CONTEXT);
        mac.update(order_id);
        mac
    }

    /// The order's token: the same order always gets the same token.
    pub fn token(&self, order_id: &OrderId) -> String {
        let id = order_id.as_str().as_bytes();
        let tag = self.tagged(id).finalize().into_bytes();
        let mut raw = Vec::with_capacity(TAG_LEN + id.len());
        raw.extend_from_slice(&tag[..TAG_LEN]);
        raw.extend_from_slice(id);
        URL_SAFE_NO_PAD.encode(raw)
    }

    /// The token of `store`'s order: [`PageKey::token`] for the default store.
    pub fn token_for(&self, store: &StoreName, order_id: &OrderId) -> String {
        if store.is_default() {
            return self.token(order_id);
        }
        let mut payload = Vec::with_capacity(store.as_str().len() + 1 + order_id.as_str().len());
        payload.extend_from_slice(store.as_str().as_bytes());
        payload.push(0);
        payload.extend_from_slice(order_id.as_str().as_bytes());
        let tag = self.tagged(&payload).finalize().into_bytes();
        let mut raw = Vec::with_capacity(TAG_LEN + payload.len());
        raw.extend_from_slice(&tag[..TAG_LEN]);
        raw.extend_from_slice(&payload);
        URL_SAFE_NO_PAD.encode(raw)
    }

    /// The store and order a token names, if this key signed it ([`PageKey::token_for`]); `None` otherwise.
    pub fn open(&self, token: &str) -> Option<(StoreName, OrderId)> {
        if token.len() > MAX_STORE_TOKEN_LEN {
            return None;
        }
        let raw = URL_SAFE_NO_PAD.decode(token).ok()?;
        if raw.len() <= TAG_LEN {
            return None;
        }
        let (tag, payload) = raw.split_at(TAG_LEN);
        self.tagged(payload).verify_truncated_left(tag).ok()?;
        let payload = std::str::from_utf8(payload).ok()?;
        let (store, id) = match payload.split_once('\0') {
            Some((store, id)) => (StoreName::parse(store).ok()?, id),
            None => (StoreName::default_store(), payload),
        };
        let order = OrderId::parse(id)
            .ok()
            .filter(|parsed| parsed.as_str() == id)?;
        Some((store, order))
    }

    /// The order a token names, if this key signed it; `None` for anything else (altered, truncated, signed with
    /// another secret, not base64url), without saying which.
    pub fn verify(&self, token: &str) -> Option<OrderId> {
        if token.len() > MAX_TOKEN_LEN {
            return None;
        }
        let raw = URL_SAFE_NO_PAD.decode(token).ok()?;
        if raw.len() <= TAG_LEN {
            return None;
        }
        let (tag, id) = raw.split_at(TAG_LEN);
        self.tagged(id).verify_truncated_left(tag).ok()?;
        let id = std::str::from_utf8(id).ok()?;
        OrderId::parse(id)
            .ok()
            .filter(|parsed| parsed.as_str() == id)
    }
}

impl fmt::Debug for PageKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PageKey(..)")
    }
}

/// Where emails send customers: `{base_url}/t/{token}` (`TRACKING_PAGE_URL` and `TRACKING_PAGE_SECRET`).
#[derive(Debug, Clone)]
pub struct PageLinks {
    /// The page's public base URL, without a trailing slash.
    base_url: String,
    key: PageKey,
}

impl PageLinks {
    /// `base_url` must be an absolute `http://` or `https://` URL without query or fragment.
    pub fn new(base_url: &str, key: PageKey) -> Result<Self, String> {
        let base = base_url.trim().trim_end_matches('/');
        let rest = base
            .strip_prefix("https://")
            .or_else(|| base.strip_prefix("http://"))
            .ok_or("must start with https:// (or http://)")?;
        if rest.is_empty() || rest.starts_with('/') {
            return Err("has no host".into());
        }
        if base.contains(['?', '#']) || base.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err("must be a base URL without query, fragment or spaces".into());
        }
        Ok(Self {
            base_url: base.to_owned(),
            key,
        })
    }

    /// The same links under another base URL (a store's `tracking_page_url`).
    pub fn with_base(&self, base_url: &str) -> Result<Self, String> {
        Self::new(base_url, self.key.clone())
    }

    /// The tracking page of `store`'s order.
    pub fn url_for(&self, store: &StoreName, order_id: &OrderId) -> String {
        format!(
            "{}/t/{}",
            self.base_url,
            self.key.token_for(store, order_id)
        )
    }

    /// The order's tracking page.
    pub fn url(&self, order_id: &OrderId) -> String {
        format!("{}/t/{}", self.base_url, self.key.token(order_id))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const SECRET: &str = "a-test-secret-of-at-least-32-characters";

    fn order(s: &str) -> OrderId {
        OrderId::parse(s).unwrap()
    }

    #[test]
    fn a_token_names_its_order_and_only_under_its_key() {
        let key = PageKey::new(SECRET).unwrap();
        for id in [
            "1",
            "1385310000001-01",
            "pedido ção/?#&",
            &"x".repeat(100),
            &"é".repeat(100),
        ] {
            let token = key.token(&order(id));
            assert_eq!(token, key.token(&order(id)), "stable");
            assert!(
                token
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            );
            assert_eq!(key.verify(&token), Some(order(id)));
            let other = PageKey::new(&format!("{SECRET}!")).unwrap();
            assert_eq!(other.verify(&token), None);
        }
    }

    #[test]
    fn any_change_to_a_token_is_refused() {
        let key = PageKey::new(SECRET).unwrap();
        let token = key.token(&order("ORDER-1"));
        for i in 0..token.len() {
            let mut bytes = token.clone().into_bytes();
            bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
            let altered = String::from_utf8(bytes).unwrap();
            if altered != token {
                assert_eq!(key.verify(&altered), None, "position {i}");
            }
        }
        // Another order id behind the same tag, a cut token, padding, junk.
        let raw = URL_SAFE_NO_PAD.decode(&token).unwrap();
        let mut swapped = raw[..TAG_LEN].to_vec();
        swapped.extend_from_slice(b"ORDER-2");
        assert_eq!(key.verify(&URL_SAFE_NO_PAD.encode(swapped)), None);
        assert_eq!(key.verify(&URL_SAFE_NO_PAD.encode(&raw[..TAG_LEN])), None);
        for junk in [
            "",
            "ORDER-1",
            "%%%",
            &format!("{token}="),
            &"A".repeat(5000),
        ] {
            assert_eq!(key.verify(junk), None, "{junk}");
        }
    }

    #[test]
    fn a_stores_token_opens_its_stores_order_only_and_old_tokens_are_the_default_stores() {
        let key = PageKey::new(SECRET).unwrap();
        let a = StoreName::parse("loja-a").unwrap();
        let b = StoreName::parse("loja-b").unwrap();
        let old = key.token(&order("A-1"));
        assert_eq!(
            key.open(&old),
            Some((StoreName::default_store(), order("A-1")))
        );
        assert_eq!(
            key.token_for(&StoreName::default_store(), &order("A-1")),
            old
        );
        let token_a = key.token_for(&a, &order("A-1"));
        assert_ne!(token_a, old);
        assert_eq!(key.open(&token_a), Some((a.clone(), order("A-1"))));
        assert_ne!(key.open(&token_a).unwrap().0, b);
        // The store cannot be swapped under the tag.
        let raw = URL_SAFE_NO_PAD.decode(&token_a).unwrap();
        let mut swapped = raw[..TAG_LEN].to_vec();
        swapped.extend_from_slice(b"loja-b\0A-1");
        assert_eq!(key.open(&URL_SAFE_NO_PAD.encode(swapped)), None);
        assert_eq!(
            key.verify(&token_a),
            None,
            "the old check never reads a store's token as an order"
        );
        let links = PageLinks::new("https://a.example", key.clone()).unwrap();
        let url = links
            .with_base("https://rastreio.loja-a.example/")
            .unwrap()
            .url_for(&a, &order("A-1"));
        assert!(
            url.starts_with("https://rastreio.loja-a.example/t/"),
            "{url}"
        );
    }

    #[test]
    fn short_secrets_are_refused_and_never_shown() {
        assert_eq!(PageKey::new(&"s".repeat(31)).unwrap_err(), ShortSecret);
        let key = PageKey::new(SECRET).unwrap();
        assert!(!format!("{key:?}").contains("secret"));
    }

    #[test]
    fn links_join_the_base_and_the_token() {
        let key = PageKey::new(SECRET).unwrap();
        let links = PageLinks::new("https://track.example/shop/", key.clone()).unwrap();
        let url = links.url(&order("A-1"));
        let token = url.strip_prefix("https://track.example/shop/t/").unwrap();
        assert_eq!(key.verify(token), Some(order("A-1")));
        for bad in [
            "track.example",
            "ftp://x",
            "https://",
            "https://x/?a=1",
            "https://x y",
        ] {
            assert!(PageLinks::new(bad, key.clone()).is_err(), "{bad}");
        }
    }
}
