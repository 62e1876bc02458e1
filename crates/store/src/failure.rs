//! Database errors by kind: unavailable is not invalid.
//!
//! - [`Failure::Unavailable`]: the server is down, restarting, out of connections, or our pool could not get a
//!   connection in time. Nothing is wrong with the data: wait and try the same work again, spending no attempt.
//! - [`Failure::Conflict`]: a serialization failure or a deadlock. Try again soon.
//! - [`Failure::Data`]: the server refused these values (an encoding error, a constraint) or a row could not be
//!   read. Trying again can never work: park the work with the database's message.

use crate::StoreError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    Unavailable,
    Conflict,
    Data,
}

/// What kind of failure a sqlx error is.
pub fn classify(e: &sqlx::Error) -> Failure {
    use sqlx::Error as E;
    match e {
        E::Io(_) | E::Tls(_) | E::PoolTimedOut | E::PoolClosed | E::WorkerCrashed => {
            Failure::Unavailable
        }
        // The connection broke mid-conversation.
        E::Protocol(_) => Failure::Unavailable,
        E::Database(db) => {
            let code = db.code();
            let code = code.as_deref().unwrap_or("");
            match code {
                // Serialization failure, deadlock.
                "40001" | "40P01" => Failure::Conflict,
                // Admin shutdown, crash shutdown, cannot connect now (starting up or shutting down).
                "57P01" | "57P02" | "57P03" => Failure::Unavailable,
                // Connection exceptions; insufficient resources (too many connections, disk full, out of memory);
                // operator intervention such as a cancelled statement on shutdown.
                c if c.starts_with("08") || c.starts_with("53") => Failure::Unavailable,
                _ => Failure::Data,
            }
        }
        _ => Failure::Data,
    }
}

impl StoreError {
    pub fn failure(&self) -> Failure {
        match self {
            StoreError::Db(e) => classify(e),
            StoreError::Migrate(sqlx::migrate::MigrateError::Execute(e)) => classify(e),
            StoreError::Migrate(_) | StoreError::Corrupt(_) => Failure::Data,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_and_io_errors_are_unavailable_and_decoding_is_data() {
        assert_eq!(classify(&sqlx::Error::PoolTimedOut), Failure::Unavailable);
        assert_eq!(
            classify(&sqlx::Error::Io(std::io::Error::from(
                std::io::ErrorKind::ConnectionRefused
            ))),
            Failure::Unavailable
        );
        assert_eq!(classify(&sqlx::Error::RowNotFound), Failure::Data);
        assert_eq!(StoreError::Corrupt("x".into()).failure(), Failure::Data);
    }
}
