//! Sending a rendered email over SMTP, and deciding whether a failure is worth retrying.

use crate::render::RenderedEmail;
use crate::unsubscribe::ListUnsubscribe;
use lettre::message::header::{ContentType, HeaderName, HeaderValue};
use lettre::message::{Mailbox, MultiPart, SinglePart};
use lettre::{Address, Message};
use secrecy::{ExposeSecret, SecretString};
use std::sync::Arc;
use std::time::Duration;
use tracking_domain::EmailAddress;
use uuid::Uuid;

use crate::connections::Connections;
use crate::smtp::{Server, ServerError};
use tracking_settings::tls::{PemFile, certificate_blocks};

/// How to reach the SMTP server and whom emails come from.
#[derive(Debug, Clone)]
pub struct MailerSettings {
    /// `smtp://host:port` (plain, for a local relay or a test server), `smtp://host:587?tls=required`
    /// (STARTTLS) or `smtps://user:password@host:465` (TLS from the start). A secret because it may hold
    /// a password: it never appears in `Debug` output or in errors.
    pub smtp_url: SecretString,
    /// The sender, `Store <noreply@store.example>` or a bare address. Its domain also names the
    /// Message-IDs, so that they are unique to this sender.
    pub from: String,
    /// The limit for one send, from connecting (or taking a pooled connection) to the server's
    /// acceptance of the message; a send that hits it is a transient failure. Short enough that a hung
    /// server is noticed and the email retried, long enough for a loaded server to answer.
    pub timeout: Duration,
    /// The most idle SMTP connections kept open for reuse. It does not limit concurrency: a send that
    /// finds no idle connection opens one, closed afterwards if as many are idle already. Concurrency is the
    /// worker's prefetch.
    pub pool_max_size: u32,
    /// `SMTP_CA_FILE`: the CAs trusted besides the system's roots for `smtps://` and STARTTLS (a server whose
    /// certificate a private CA signed). Refused with a URL that asks for no TLS.
    pub ca: Option<PemFile>,
    /// How long after the server refused the credentials no connection is opened (every send fails at once as
    /// transient): providers lock an account, and firewalls ban an address, after a few failed logins.
    pub auth_retry: Duration,
}

/// Why [`Mailer::new`] refused its settings. Messages name what is wrong without showing the URL's password.
#[derive(Debug, thiserror::Error)]
pub enum MailerConfigError {
    #[error(
        "the SMTP URL is not usable: {0} (expected smtp://host:port, smtp://host:587?tls=required or smtps://user:password@host:465)"
    )]
    SmtpUrl(String),
    #[error("the sender address {value:?} is not valid: {reason}")]
    From { value: String, reason: String },
    #[error("the SMTP pool size must be at least 1")]
    PoolSize,
    #[error("the SMTP timeout must be longer than zero")]
    Timeout,
    #[error("SMTP_CA_FILE {0}")]
    Ca(String),
}

/// Why an email was not accepted. Decided once, here: the worker retries transient failures and parks
/// permanent ones.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// 4xx answers, refused connections, timeouts, TLS and I/O errors, and every failure while a connection is
    /// opened (refused credentials included) or `530` (authentication required): the same email may go through
    /// later, once the server or the settings are right.
    #[error("transient SMTP failure: {0}")]
    Transient(String),
    /// 5xx answers to the email itself (e.g. 550 mailbox unavailable) and addresses SMTP cannot carry: sending
    /// again will fail again. The message holds the server's answer (code and text).
    #[error("permanent SMTP failure: {0}")]
    Permanent(String),
}

impl SendError {
    pub fn is_transient(&self) -> bool {
        matches!(self, SendError::Transient(_))
    }

    pub(crate) fn from_smtp(err: &lettre::transport::smtp::Error) -> SendError {
        // lettre's Display for an SMTP answer is "permanent error (550): <the server's text>".
        if err.status().is_some_and(|code| code.to_string() == "530") {
            // Authentication required: SMTP_URL has no credentials for a server that wants them.
            SendError::Transient(format!(
                "the SMTP server asks for a user and password, which SMTP_URL does not give: {err}"
            ))
        } else if err.is_permanent() {
            SendError::Permanent(err.to_string())
        } else if err.is_timeout() {
            SendError::Transient(format!("timed out: {err}"))
        } else {
            // 4xx answers (is_transient), and everything that is not an answer: connection, TLS, I/O,
            // an unparseable response, a pool that was shut down.
            SendError::Transient(err.to_string())
        }
    }
}

/// Sends emails through SMTP connections kept open for reuse ([`crate::smtp`]). Cheap to clone: clones share
/// the connections.
#[derive(Clone)]
pub struct Mailer {
    inner: Arc<Inner>,
}

struct Inner {
    connections: Connections,
    from: Mailbox,
    timeout: Duration,
}

impl std::fmt::Debug for Mailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The transport's Debug would show the server's credentials.
        f.debug_struct("Mailer")
            .field("from", &self.inner.from.to_string())
            .field("timeout", &self.inner.timeout)
            .finish_non_exhaustive()
    }
}

impl Mailer {
    /// Checks the settings (connections are opened on the first send).
    pub fn new(settings: &MailerSettings) -> Result<Mailer, MailerConfigError> {
        let from: Mailbox =
            settings
                .from
                .trim()
                .parse()
                .map_err(|e: lettre::address::AddressError| MailerConfigError::From {
                    value: settings.from.clone(),
                    reason: e.to_string(),
                })?;
        if settings.pool_max_size == 0 {
            return Err(MailerConfigError::PoolSize);
        }
        if settings.timeout.is_zero() {
            return Err(MailerConfigError::Timeout);
        }
        let url = settings.smtp_url.expose_secret();
        let ca = settings
            .ca
            .as_ref()
            .map(|ca| String::from_utf8_lossy(&ca.pem).into_owned())
            .unwrap_or_default();
        let server = Server::new(url, &certificate_blocks(&ca)).map_err(|e| match e {
            ServerError::Url(e) => MailerConfigError::SmtpUrl(redact(&e, url)),
            ServerError::Ca(e) => MailerConfigError::Ca(e),
        })?;
        Ok(Mailer {
            inner: Arc::new(Inner {
                connections: Connections::new(
                    server,
                    settings.pool_max_size as usize,
                    settings.auth_retry,
                ),
                from,
                timeout: settings.timeout,
            }),
        })
    }

    /// The Message-ID for a change's email: `<{change_id}@{domain of the from address}>`. The same change
    /// always gets the same id, so a resent email can be recognised as the same one.
    pub fn message_id(&self, change_id: Uuid) -> String {
        format!("<{change_id}@{}>", self.inner.from.email.domain())
    }

    /// Sends one email (multipart/alternative: text and HTML, UTF-8) and returns once the SMTP server has
    /// accepted it. `message_id` comes from [`Mailer::message_id`]. The whole send (connecting included)
    /// is bounded by [`MailerSettings::timeout`].
    pub async fn send(
        &self,
        to: &EmailAddress,
        to_name: Option<&str>,
        email: &RenderedEmail,
        message_id: &str,
    ) -> Result<(), SendError> {
        self.send_with(to, to_name, email, message_id, None).await
    }

    /// [`Mailer::send`], with the unsubscribe headers ([`crate::unsubscribe::list_unsubscribe`]) when given.
    pub async fn send_with(
        &self,
        to: &EmailAddress,
        to_name: Option<&str>,
        email: &RenderedEmail,
        message_id: &str,
        unsubscribe: Option<&ListUnsubscribe>,
    ) -> Result<(), SendError> {
        let address: Address =
            to.as_str()
                .parse()
                .map_err(|e: lettre::address::AddressError| {
                    SendError::Permanent(format!(
                        "the recipient address {} cannot be used: {e}",
                        to.masked()
                    ))
                })?;
        let name = to_name
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map(str::to_owned);
        let mut builder = Message::builder()
            .from(self.inner.from.clone())
            .to(Mailbox::new(name, address))
            .subject(email.subject.clone())
            .message_id(Some(message_id.to_owned()));
        for header in unsubscribe.map(unsubscribe_headers).unwrap_or_default() {
            builder = builder.raw_header(header);
        }
        let message = builder
            .multipart(
                MultiPart::alternative()
                    .singlepart(
                        SinglePart::builder()
                            .header(ContentType::TEXT_PLAIN)
                            .body(email.text.clone()),
                    )
                    .singlepart(
                        SinglePart::builder()
                            .header(ContentType::TEXT_HTML)
                            .body(email.html.clone()),
                    ),
            )
            .map_err(|e| SendError::Permanent(format!("the message could not be built: {e}")))?;

        let envelope = message.envelope().clone();
        let bytes = message.formatted();
        let send = async {
            let mut conn = self.inner.connections.take().await?;
            let response = conn
                .send(&envelope, &bytes)
                .await
                .map_err(|e| SendError::from_smtp(&e))?;
            // Only a connection whose last send went through is reused: after a refusal lettre has closed it.
            self.inner.connections.give_back(conn);
            Ok(response)
        };
        // The whole send is bounded. A send abandoned mid-conversation drops its connection with it: its late
        // answer can never be read as the answer to another email's command.
        match tokio::time::timeout(self.inner.timeout, send).await {
            Ok(Ok(response)) => {
                tracing::debug!(
                    to = %to.masked(),
                    message_id,
                    code = %response.code(),
                    "The SMTP server accepted the email."
                );
                Ok(())
            }
            Ok(Err(err)) => Err(err),
            Err(_elapsed) => Err(SendError::Transient(format!(
                "the SMTP server did not complete the send within {:?}",
                self.inner.timeout
            ))),
        }
    }
}

/// `List-Unsubscribe`, and `List-Unsubscribe-Post` for a one-click link, as lettre's raw headers.
fn unsubscribe_headers(headers: &ListUnsubscribe) -> Vec<HeaderValue> {
    let mut out = vec![HeaderValue::new(
        HeaderName::new_from_ascii_str("List-Unsubscribe"),
        headers.value.clone(),
    )];
    if let Some(post) = headers.post {
        out.push(HeaderValue::new(
            HeaderName::new_from_ascii_str("List-Unsubscribe-Post"),
            post.to_owned(),
        ));
    }
    out
}

/// Removes the URL's password, as written in the URL, from a message, should a parser ever echo it.
fn redact(message: &str, url: &str) -> String {
    let mut out = message.to_owned();
    if let Some((userinfo, _)) = url
        .split_once("://")
        .and_then(|(_, rest)| rest.rsplit_once('@'))
        && let Some((_, password)) = userinfo.split_once(':')
        && !password.is_empty()
    {
        out = out.replace(password, "***");
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_unsubscribe_headers_go_out_as_built() {
        let mailto = crate::unsubscribe::Mailto::parse("sair@loja.example").unwrap();
        let link = format!("https://track.example/u/{}", "A".repeat(75));
        let headers = crate::unsubscribe::list_unsubscribe(Some(&link), Some(&mailto)).unwrap();
        let mut builder = Message::builder()
            .from("Loja <noreply@loja.example>".parse().unwrap())
            .to("ana@example.com".parse().unwrap())
            .subject("Pedido");
        for h in unsubscribe_headers(&headers) {
            builder = builder.raw_header(h);
        }
        let formatted =
            String::from_utf8(builder.body("x".to_owned()).unwrap().formatted()).unwrap();
        let head = formatted.split("\r\n\r\n").next().unwrap();
        // Unfolded (a long value may be folded between its URIs, as RFC 2369 allows), the values are exact.
        let unfolded = head.replace("\r\n ", " ").replace("\r\n\t", " ");
        let line = |name: &str| {
            unfolded
                .split("\r\n")
                .find_map(|l| l.strip_prefix(&format!("{name}: ")))
                .map(str::to_owned)
        };
        assert_eq!(
            line("List-Unsubscribe")
                .unwrap()
                .split_whitespace()
                .collect::<Vec<_>>(),
            vec![
                format!("<{link}>,"),
                "<mailto:sair@loja.example?subject=unsubscribe>".to_owned()
            ]
        );
        assert_eq!(
            line("List-Unsubscribe-Post").as_deref(),
            Some("List-Unsubscribe=One-Click")
        );
        assert!(
            head.split("\r\n").all(|l| l.len() <= 998),
            "RFC 5322 line length"
        );
        // Without the link: the mailto alone, and no List-Unsubscribe-Post.
        let only_mailto = crate::unsubscribe::list_unsubscribe(None, Some(&mailto)).unwrap();
        let values = unsubscribe_headers(&only_mailto);
        assert_eq!(values.len(), 1);
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact("bad smtps://u:hunter2@h", "smtps://u:hunter2@h"),
            "bad smtps://u:***@h"
        );
        assert_eq!(
            redact("no password here", "smtp://h:25"),
            "no password here"
        );
    }
}
