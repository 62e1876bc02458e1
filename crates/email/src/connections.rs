//! The SMTP connections of one mailer: idle ones kept for reuse, and a pause after the server refused the
//! credentials.

use crate::mailer::SendError;
use crate::smtp::{OpenFailure, Server};
use lettre::transport::smtp::client::AsyncSmtpConnection;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How long an idle connection is kept: servers close idle connections after a few minutes, and one they closed
/// costs a failed NOOP before a fresh one is opened.
const IDLE_FOR: Duration = Duration::from_secs(60);

/// What the server last answered the credentials, while they are not to be tried again.
struct Refusal {
    until: Instant,
    answer: String,
}

/// Connections to one server: idle ones are reused (checked with NOOP first), at most `max_idle` kept.
///
/// Once the server refused the credentials, no connection is opened for `auth_retry`: every email would try
/// them again, and providers lock an account (or a firewall bans an address) after a few failed logins.
pub(crate) struct Connections {
    server: Server,
    max_idle: usize,
    idle: Mutex<Vec<(AsyncSmtpConnection, Instant)>>,
    auth_retry: Duration,
    refused: Mutex<Option<Refusal>>,
}

impl Connections {
    pub(crate) fn new(server: Server, max_idle: usize, auth_retry: Duration) -> Connections {
        Connections {
            server,
            max_idle,
            idle: Mutex::new(Vec::new()),
            auth_retry,
            refused: Mutex::new(None),
        }
    }

    /// An idle connection that still answers, or a new one.
    pub(crate) async fn take(&self) -> Result<AsyncSmtpConnection, SendError> {
        loop {
            let next = self
                .idle
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .pop();
            let Some((mut conn, since)) = next else {
                return self.open().await;
            };
            if since.elapsed() < IDLE_FOR && !conn.has_broken() && conn.test_connected().await {
                return Ok(conn);
            }
        }
    }

    /// A new connection, unless the credentials were refused less than `auth_retry` ago.
    async fn open(&self) -> Result<AsyncSmtpConnection, SendError> {
        if let Some(refusal) = &*self.refused.lock().unwrap_or_else(PoisonError::into_inner) {
            let left = refusal.until.saturating_duration_since(Instant::now());
            if !left.is_zero() {
                return Err(SendError::Transient(format!(
                    "{}; they are tried again in {} s (SMTP_AUTH_RETRY_SECS)",
                    refusal.answer,
                    left.as_secs().max(1)
                )));
            }
        }
        match self.server.open().await {
            Ok(conn) => Ok(conn),
            Err(OpenFailure::Other(e)) => Err(e),
            Err(OpenFailure::CredentialsRefused(answer)) => {
                tracing::error!(answer = %answer, retry_in_secs = self.auth_retry.as_secs(),
                    "The SMTP server refused the credentials of SMTP_URL; no email is sent until they are tried again.");
                *self.refused.lock().unwrap_or_else(PoisonError::into_inner) = Some(Refusal {
                    until: Instant::now() + self.auth_retry,
                    answer: answer.clone(),
                });
                Err(SendError::Transient(answer))
            }
        }
    }

    /// Gives back a connection whose last send went through; beyond `max_idle` it is closed.
    pub(crate) fn give_back(&self, conn: AsyncSmtpConnection) {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < self.max_idle && !conn.has_broken() {
            idle.push((conn, Instant::now()));
        }
    }
}
