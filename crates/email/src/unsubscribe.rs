//! The unsubscribe headers of every customer email: `List-Unsubscribe` (RFC 2369) and, for a one-click link,
//! `List-Unsubscribe-Post: List-Unsubscribe=One-Click` (RFC 8058), built by one pure function
//! ([`list_unsubscribe`]) from the signed link (`tracking_domain::UnsubscribeLinks`) and `UNSUBSCRIBE_MAILTO`.
//!
//! The rules kept (RFC 8058 section 3.1, RFC 2369 section 2):
//! - each URI is enclosed in angle brackets, the list separated by commas, in order of preference (the
//!   one-click link first);
//! - `List-Unsubscribe` holds exactly one HTTPS URI (no other `http:`/`https:` one); it may hold a `mailto:`;
//! - `List-Unsubscribe-Post` is sent only with that HTTPS URI, and holds exactly `List-Unsubscribe=One-Click`
//!   (the body a mailbox provider POSTs to the link);
//! - a `mailto:` alone is a plain RFC 2369 header: no `List-Unsubscribe-Post`.
//!
//! RFC 8058 section 4 also asks for a DKIM signature that covers both fields (`h=`): this publisher does not sign
//! (the SMTP relay or provider does, for the sender's domain); the relay's DKIM setup must list
//! `List-Unsubscribe` and `List-Unsubscribe-Post` among the signed headers (docs/privacy.md).

use tracking_domain::EmailAddress;

/// The only value RFC 8058 allows in `List-Unsubscribe-Post`, and the body of the POST.
pub const ONE_CLICK: &str = "List-Unsubscribe=One-Click";

/// `UNSUBSCRIBE_MAILTO`: an address that takes unsubscribe requests by email (the store's staff read it), as
/// `mailto:{address}?subject=unsubscribe`. Only characters that need no escaping in a URI are accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mailto(String);

impl Mailto {
    pub fn parse(address: &str) -> Result<Self, String> {
        let address = EmailAddress::parse(address)?;
        let plain = address
            .as_str()
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b'+' | b'@'));
        if !plain {
            return Err(format!(
                "{} has characters a mailto: link would have to escape (use letters, digits, '.', '-', '_', '+')",
                address.masked()
            ));
        }
        Ok(Self(format!(
            "mailto:{}?subject=unsubscribe",
            address.as_str()
        )))
    }

    pub fn uri(&self) -> &str {
        &self.0
    }
}

/// The header values of one email.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListUnsubscribe {
    /// The value of `List-Unsubscribe`: `<https://…/u/{token}>, <mailto:…>`.
    pub value: String,
    /// `Some(ONE_CLICK)` for `List-Unsubscribe-Post`: only when `value` holds the HTTPS link.
    pub post: Option<&'static str>,
}

/// The unsubscribe headers for an email whose one-click link is `https_link` (when the link can be made) and
/// `mailto` (when configured); `None` when there is neither. A link that is not `https://` is left out, except
/// `http://` on a loopback host (this machine's tests and demo, which no mailbox provider reaches; see
/// [`tracking_domain::unsubscribe::link_base_is_acceptable`]), and so is one with characters that would break
/// the header.
pub fn list_unsubscribe(
    https_link: Option<&str>,
    mailto: Option<&Mailto>,
) -> Option<ListUnsubscribe> {
    let link = https_link.filter(|l| {
        tracking_domain::unsubscribe::link_base_is_acceptable(l)
            && !l.contains(['<', '>', ',', ' ', '\r', '\n'])
    });
    let uris: Vec<&str> = link.into_iter().chain(mailto.map(Mailto::uri)).collect();
    if uris.is_empty() {
        return None;
    }
    Some(ListUnsubscribe {
        value: uris
            .iter()
            .map(|u| format!("<{u}>"))
            .collect::<Vec<_>>()
            .join(", "),
        post: link.map(|_| ONE_CLICK),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const LINK: &str = "https://track.example/u/AbC-_123";

    /// The URIs of a `List-Unsubscribe` value, read as RFC 2369 readers do.
    fn uris(value: &str) -> Vec<String> {
        value
            .split(',')
            .map(|part| {
                let part = part.trim();
                assert!(
                    part.starts_with('<') && part.ends_with('>'),
                    "each URI in angle brackets: {part}"
                );
                part[1..part.len() - 1].to_owned()
            })
            .collect()
    }

    /// RFC 8058 section 3.1, as a mailbox provider checks it.
    fn one_click_is_valid(headers: &ListUnsubscribe) -> bool {
        let uris = uris(&headers.value);
        let https = uris.iter().filter(|u| u.starts_with("https://")).count();
        let http = uris.iter().filter(|u| u.starts_with("http://")).count();
        headers.post == Some("List-Unsubscribe=One-Click") && https == 1 && http == 0
    }

    #[test]
    fn the_link_and_the_mailto_make_a_one_click_header() {
        let mailto = Mailto::parse("sair@loja.example").unwrap();
        let h = list_unsubscribe(Some(LINK), Some(&mailto)).unwrap();
        assert_eq!(
            h.value,
            "<https://track.example/u/AbC-_123>, <mailto:sair@loja.example?subject=unsubscribe>"
        );
        assert_eq!(h.post, Some(ONE_CLICK));
        assert!(one_click_is_valid(&h));
        let h = list_unsubscribe(Some(LINK), None).unwrap();
        assert_eq!(h.value, "<https://track.example/u/AbC-_123>");
        assert!(one_click_is_valid(&h));
    }

    #[test]
    fn a_mailto_alone_is_no_one_click() {
        let mailto = Mailto::parse("sair@loja.example").unwrap();
        let h = list_unsubscribe(None, Some(&mailto)).unwrap();
        assert_eq!(h.value, "<mailto:sair@loja.example?subject=unsubscribe>");
        assert_eq!(h.post, None, "List-Unsubscribe-Post needs an HTTPS URI");
        assert!(list_unsubscribe(None, None).is_none());
    }

    #[test]
    fn a_link_that_is_not_https_never_gets_the_one_click_header() {
        for bad in [
            "http://track.example/u/x",
            "ftp://track.example/u/x",
            "https://track.example/u/x>, <https://evil.example",
            "https://track.example/u/x\r\nBcc: a@b.c",
        ] {
            let h = list_unsubscribe(Some(bad), None);
            assert!(h.is_none(), "{bad}: {h:?}");
        }
        // A loopback test server is listed (tests follow it) but is not HTTPS: mailbox providers never see it.
        let h = list_unsubscribe(Some("http://127.0.0.1:8080/u/x"), None).unwrap();
        assert_eq!(h.value, "<http://127.0.0.1:8080/u/x>");
        assert_eq!(h.post, Some(ONE_CLICK));
    }

    #[test]
    fn mailto_addresses_that_need_escaping_are_refused() {
        assert!(Mailto::parse("sair+lista@loja.example").is_ok());
        for bad in [
            "not-an-address",
            "a?b@loja.example",
            "a%40@loja.example",
            "ação@loja.example",
        ] {
            assert!(Mailto::parse(bad).is_err(), "{bad}");
        }
    }
}
