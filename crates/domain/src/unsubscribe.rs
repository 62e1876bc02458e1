//! One-click unsubscribe (RFC 8058): the signed link in every status email's `List-Unsubscribe` header
//! (`{TRACKING_PAGE_URL}/u/{token}`), and the keyed hash that names an address in the opt-out table.
//!
//! Everything here is keyed by `UNSUBSCRIBE_SECRET` ([`UnsubscribeKey`]), with a context prefix per use so that
//! the two MACs never meet:
//! - the **address hash** ([`AddressHash`]): HMAC-SHA256 over `opt-out-address/v1 ‖ 0x00 ‖ normalised address`
//!   (trimmed, lower-cased: mailbox providers treat `Ana@x` and `ana@x` as one person, and erring that way sends
//!   fewer emails, never more). The opt-out table stores this hash, never the address: a copy of the database
//!   alone does not say who opted out, and one cannot test a guessed address against it without the secret.
//! - the **token**: `base64url(version ‖ address hash ‖ tag ‖ store name)` without padding, where `tag` is the
//!   first [`TAG_LEN`] bytes of HMAC-SHA256 over `unsubscribe-link/v1 ‖ 0x00 ‖ address hash ‖ store name`. It is
//!   an opaque reference: what it carries of the person is the keyed hash (nothing readable); the store name is
//!   the shop's, not personal. It is stateless (nothing stored when an email is sent; the opt-out row is written
//!   only when the customer uses the link) and does not expire: an old email's link still works, as RFC 8058
//!   expects (the opt-out is the customer's standing request). 128 bits of tag cannot be guessed over HTTP; the
//!   tag is compared in constant time.
//!
//! The same secret keys both, so **changing `UNSUBSCRIBE_SECRET` invalidates every link already emailed and
//! forgets every opt-out recorded** (their hashes no longer match): it is set once per deployment.

use crate::{EmailAddress, StoreName};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::fmt;

/// Bytes of the HMAC kept in a token.
pub const TAG_LEN: usize = 16;
/// Bytes of an address hash (a whole HMAC-SHA256).
pub const HASH_LEN: usize = 32;
/// The shortest secret accepted, in characters.
pub const MIN_SECRET_LEN: usize = 32;
/// The token format's version byte: a later format can be told apart.
const VERSION: u8 = 1;
/// The longest token read: version, hash, tag and a 64-byte store name, in base64.
const MAX_TOKEN_LEN: usize = 4 * (1 + HASH_LEN + TAG_LEN + 64).div_ceil(3);
const LINK_CONTEXT: &[u8] = b"unsubscribe-link/v1\0";
const ADDRESS_CONTEXT: &[u8] = b"opt-out-address/v1\0";

/// The keyed hash of a normalised email address: how the opt-out table names a person without holding the
/// address. Its `Debug` shows a short prefix only.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct AddressHash([u8; HASH_LEN]);

impl AddressHash {
    pub fn as_bytes(&self) -> &[u8; HASH_LEN] {
        &self.0
    }

    /// A hash read back from the database; `None` unless it has exactly [`HASH_LEN`] bytes.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        bytes.try_into().ok().map(Self)
    }
}

impl fmt::Debug for AddressHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "AddressHash({:02x}{:02x}{:02x}{:02x}…)",
            self.0[0], self.0[1], self.0[2], self.0[3]
        )
    }
}

/// Whom an unsubscribe link is for: an address (by its hash) and the store whose status emails it stops.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OptOut {
    pub store: StoreName,
    pub address: AddressHash,
}

/// `UNSUBSCRIBE_SECRET`: signs and checks unsubscribe tokens and keys the address hashes. Its `Debug` shows
/// nothing of the secret.
#[derive(Clone)]
pub struct UnsubscribeKey {
    mac: Hmac<Sha256>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "must be at least {MIN_SECRET_LEN} characters (it signs the unsubscribe links and keys the stored opt-outs)"
)]
pub struct ShortSecret;

/// An address as the opt-outs compare it: trimmed and lower-cased.
pub fn normalise(address: &EmailAddress) -> String {
    address.as_str().trim().to_lowercase()
}

impl UnsubscribeKey {
    pub fn new(secret: &str) -> Result<Self, ShortSecret> {
        if secret.chars().count() < MIN_SECRET_LEN {
            return Err(ShortSecret);
        }
        let mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).map_err(|_| ShortSecret)?;
        Ok(Self { mac })
    }

    /// The keyed hash of `address` (normalised: `Ana@Example.com` and `ana@example.com` are the same).
    pub fn address_hash(&self, address: &EmailAddress) -> AddressHash {
        let mut mac = self.mac.clone();
        mac.update(ADDRESS_CONTEXT);
        mac.update(normalise(address).as_bytes());
        AddressHash(mac.finalize().into_bytes().into())
    }

    fn tagged(&self, address: &AddressHash, store: &[u8]) -> Hmac<Sha256> {
        let mut mac = self.mac.clone();
        mac.update(LINK_CONTEXT);
        mac.update(&address.0);
        mac.update(store);
        mac
    }

    /// The opt-out's token: the same address and store always get the same token.
    pub fn token(&self, opt_out: &OptOut) -> String {
        let store = opt_out.store.as_str().as_bytes();
        let tag = self.tagged(&opt_out.address, store).finalize().into_bytes();
        let mut raw = Vec::with_capacity(1 + HASH_LEN + TAG_LEN + store.len());
        raw.push(VERSION);
        raw.extend_from_slice(&opt_out.address.0);
        raw.extend_from_slice(&tag[..TAG_LEN]);
        raw.extend_from_slice(store);
        URL_SAFE_NO_PAD.encode(raw)
    }

    /// The token of `address` for `store`.
    pub fn token_for(&self, store: &StoreName, address: &EmailAddress) -> String {
        self.token(&OptOut {
            store: store.clone(),
            address: self.address_hash(address),
        })
    }

    /// The opt-out a token names, if this key signed it; `None` for anything else (altered, truncated, another
    /// store's name put in, signed with another secret, not base64url), without saying which.
    pub fn verify(&self, token: &str) -> Option<OptOut> {
        if token.len() > MAX_TOKEN_LEN {
            return None;
        }
        let raw = URL_SAFE_NO_PAD.decode(token).ok()?;
        let (&version, rest) = raw.split_first()?;
        if version != VERSION || rest.len() <= HASH_LEN + TAG_LEN {
            return None;
        }
        let (hash, rest) = rest.split_at(HASH_LEN);
        let (tag, store) = rest.split_at(TAG_LEN);
        let address = AddressHash::from_slice(hash)?;
        self.tagged(&address, store)
            .verify_truncated_left(tag)
            .ok()?;
        let store = std::str::from_utf8(store).ok()?;
        let store = StoreName::parse(store).ok()?;
        Some(OptOut { store, address })
    }
}

impl fmt::Debug for UnsubscribeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("UnsubscribeKey(..)")
    }
}

/// Where a link must point for RFC 8058: an `https://` base URL, or `http://` on a loopback host (this machine's
/// tests and `make demo`, which no mailbox provider reaches anyway).
pub fn link_base_is_acceptable(base_url: &str) -> bool {
    if base_url.starts_with("https://") {
        return true;
    }
    let Some(rest) = base_url.strip_prefix("http://") else {
        return false;
    };
    let host = rest.split('/').next().unwrap_or_default();
    let host = match host.rsplit_once(':') {
        Some((h, port)) if !h.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    };
    host == "localhost"
        || host == "[::1]"
        || host
            .parse::<std::net::Ipv4Addr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The unsubscribe links of emails: `{base_url}/u/{token}` (`TRACKING_PAGE_URL`, `UNSUBSCRIBE_SECRET`).
#[derive(Debug, Clone)]
pub struct UnsubscribeLinks {
    /// The public base URL of tracking-api, without a trailing slash.
    base_url: String,
    key: UnsubscribeKey,
}

impl UnsubscribeLinks {
    /// `base_url` must be an absolute `https://` URL (or `http://` on a loopback host) without query or fragment.
    pub fn new(base_url: &str, key: UnsubscribeKey) -> Result<Self, String> {
        let base = base_url.trim().trim_end_matches('/');
        if !link_base_is_acceptable(base) {
            return Err(
                "must start with https:// for the one-click unsubscribe link (RFC 8058); http:// is accepted for a loopback host only"
                    .into(),
            );
        }
        let rest = base.split_once("://").map(|(_, r)| r).unwrap_or_default();
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

    pub fn key(&self) -> &UnsubscribeKey {
        &self.key
    }

    /// The link that opts `address` out of `store`'s status emails.
    pub fn url(&self, store: &StoreName, address: &EmailAddress) -> String {
        format!("{}/u/{}", self.base_url, self.key.token_for(store, address))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const SECRET: &str = "an-unsubscribe-secret-of-at-least-32-chars";

    fn address(s: &str) -> EmailAddress {
        EmailAddress::parse(s).unwrap()
    }

    fn store(s: &str) -> StoreName {
        StoreName::parse(s).unwrap()
    }

    #[test]
    fn a_token_names_its_address_and_store_and_only_under_its_key() {
        let key = UnsubscribeKey::new(SECRET).unwrap();
        for (who, shop) in [
            ("ana@example.com", "default"),
            ("ana@example.com", "loja-a"),
            ("bruno.díaz+tag@correo.example", &"s".repeat(64)),
        ] {
            let token = key.token_for(&store(shop), &address(who));
            assert_eq!(token, key.token_for(&store(shop), &address(who)), "stable");
            assert!(token.len() <= MAX_TOKEN_LEN);
            assert!(
                token
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            );
            let opt_out = key.verify(&token).unwrap();
            assert_eq!(opt_out.store, store(shop));
            assert_eq!(opt_out.address, key.address_hash(&address(who)));
            let other = UnsubscribeKey::new(&format!("{SECRET}!")).unwrap();
            assert_eq!(other.verify(&token), None);
        }
    }

    #[test]
    fn nothing_readable_of_the_address_is_in_the_token() {
        let key = UnsubscribeKey::new(SECRET).unwrap();
        let token = key.token_for(&store("loja-a"), &address("ana.souza@example.com"));
        let raw = URL_SAFE_NO_PAD.decode(&token).unwrap();
        let text = String::from_utf8_lossy(&raw).to_lowercase();
        for part in ["ana", "souza", "example"] {
            assert!(!text.contains(part), "{part} readable in the token");
        }
        assert!(text.ends_with("loja-a"), "the store is named");
    }

    #[test]
    fn the_same_address_in_another_case_is_the_same_person() {
        let key = UnsubscribeKey::new(SECRET).unwrap();
        assert_eq!(
            key.address_hash(&address(" Ana@Example.COM")),
            key.address_hash(&address("ana@example.com"))
        );
        assert_ne!(
            key.address_hash(&address("ana@example.com")),
            key.address_hash(&address("ana2@example.com"))
        );
        // Another key, another hash: the table cannot be matched without the secret.
        let other = UnsubscribeKey::new(&format!("{SECRET}!")).unwrap();
        assert_ne!(
            key.address_hash(&address("ana@example.com")),
            other.address_hash(&address("ana@example.com"))
        );
    }

    #[test]
    fn any_change_to_a_token_is_refused() {
        let key = UnsubscribeKey::new(SECRET).unwrap();
        let token = key.token_for(&store("loja-a"), &address("ana@example.com"));
        for i in 0..token.len() {
            let mut bytes = token.clone().into_bytes();
            bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
            let altered = String::from_utf8(bytes).unwrap();
            if altered != token {
                assert_eq!(key.verify(&altered), None, "position {i}");
            }
        }
        let raw = URL_SAFE_NO_PAD.decode(&token).unwrap();
        // The same tag with another store (the wrong store), or another address's hash.
        let mut other_store = raw[..1 + HASH_LEN + TAG_LEN].to_vec();
        other_store.extend_from_slice(b"loja-b");
        assert_eq!(key.verify(&URL_SAFE_NO_PAD.encode(other_store)), None);
        let mut other_address = raw.clone();
        other_address[1..1 + HASH_LEN]
            .copy_from_slice(key.address_hash(&address("bia@example.com")).as_bytes());
        assert_eq!(key.verify(&URL_SAFE_NO_PAD.encode(other_address)), None);
        // Another version, a cut token, no store, padding, junk.
        let mut version = raw.clone();
        version[0] = 2;
        assert_eq!(key.verify(&URL_SAFE_NO_PAD.encode(version)), None);
        assert_eq!(
            key.verify(&URL_SAFE_NO_PAD.encode(&raw[..1 + HASH_LEN + TAG_LEN])),
            None
        );
        for junk in [
            "",
            "ana@example.com",
            "%%%",
            &format!("{token}="),
            &"A".repeat(5000),
        ] {
            assert_eq!(key.verify(junk), None, "{junk}");
        }
        // A page token's key is not an unsubscribe key: the same secret, another context.
        let page = crate::PageKey::new(SECRET).unwrap();
        let page_token = page.token(&crate::OrderId::parse("ORDER-1").unwrap());
        assert_eq!(key.verify(&page_token), None);
    }

    #[test]
    fn short_secrets_are_refused_and_never_shown() {
        assert_eq!(
            UnsubscribeKey::new(&"s".repeat(31)).unwrap_err(),
            ShortSecret
        );
        let key = UnsubscribeKey::new(SECRET).unwrap();
        assert!(!format!("{key:?}").contains(SECRET));
        let hash = key.address_hash(&address("ana@example.com"));
        assert!(format!("{hash:?}").len() < 30);
    }

    #[test]
    fn links_are_https_except_on_this_machine() {
        let key = UnsubscribeKey::new(SECRET).unwrap();
        let links = UnsubscribeLinks::new("https://track.example/shop/", key.clone()).unwrap();
        let url = links.url(&store("default"), &address("ana@example.com"));
        let token = url.strip_prefix("https://track.example/shop/u/").unwrap();
        assert_eq!(key.verify(token).unwrap().store, store("default"));
        for ok in [
            "http://127.0.0.1:8080",
            "http://localhost:1",
            "http://[::1]:80/x",
        ] {
            assert!(UnsubscribeLinks::new(ok, key.clone()).is_ok(), "{ok}");
        }
        for bad in [
            "http://track.example",
            "http://127.0.0.1.example.com",
            "track.example",
            "ftp://x",
            "https://",
            "https://x/?a=1",
            "https://x y",
        ] {
            assert!(UnsubscribeLinks::new(bad, key.clone()).is_err(), "{bad}");
        }
    }
}
