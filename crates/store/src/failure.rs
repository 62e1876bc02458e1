//! Database errors by kind: unavailable is not invalid.
//!
//! - [`Failure::Unavailable`]: the database cannot do this work now, whatever the work: the server is down,
//!   restarting, out of connections or resources, read-only (a failover to a replica), refuses our credentials
//!   (a rotated password, a role locked), cancelled the statement (`statement_timeout`, `lock_timeout`), or lacks
//!   a table or column (a deploy ran ahead of its migration); or our pool could not get a connection in time.
//!   Nothing is wrong with the data: wait and try the same work again, spending no attempt, until it answers.
//! - [`Failure::Conflict`]: a serialization failure or a deadlock. Try again soon.
//! - [`Failure::Data`]: the server refused these values (SQLSTATE classes 21, 22, 23, 27, 44, 54 and a
//!   PL/pgSQL `RAISE`) or a row could not be read. Trying again can never work: park the work with the database's
//!   message. Any other SQLSTATE is taken as unavailable: an error we do not know holds the work where an
//!   operator sees it (`/health` 503) instead of parking every message that meets it.

use crate::StoreError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    Unavailable,
    Conflict,
    Data,
}

/// What a SQLSTATE says, by its class (its first two characters) and the few codes that differ from their class.
pub fn classify_sqlstate(code: &str) -> Failure {
    match code {
        // Serialization failure, deadlock, statement completion unknown; snapshot too old.
        "40001" | "40P01" | "40003" | "72000" => Failure::Conflict,
        _ => match code.get(..2).unwrap_or("") {
            // Cardinality violation, data exception, integrity constraint violation, triggered data change
            // violation, WITH CHECK OPTION violation, program limit exceeded (a value too large for an index, too
            // many columns: this input's size), PL/pgSQL RAISE (a trigger refusing the values).
            "21" | "22" | "23" | "27" | "44" | "54" | "P0" => Failure::Data,
            // 08 connection, 25 invalid transaction state (25006 read-only), 28 authorization (28000, 28P01),
            // 3D/3F missing database or schema, 42 undefined table or column and privileges, 53 resources,
            // 55 object not in prerequisite state (55P03 lock not available), 57 operator intervention (57014
            // statement timeout, 57P01-57P05 shutdowns), 58 system error, XX internal error; and whatever else.
            _ => Failure::Unavailable,
        },
    }
}

/// What kind of failure a sqlx error is.
pub fn classify(e: &sqlx::Error) -> Failure {
    use sqlx::Error as E;
    match e {
        E::Database(db) => db
            .code()
            .as_deref()
            .map_or(Failure::Unavailable, classify_sqlstate),
        // Values we could not encode, rows we could not read: this work's data.
        E::Encode(_)
        | E::Decode(_)
        | E::ColumnDecode { .. }
        | E::RowNotFound
        | E::TypeNotFound { .. }
        | E::ColumnIndexOutOfBounds { .. }
        | E::InvalidArgument(_) => Failure::Data,
        // A column the query expects is missing: the schema is older or newer than this code (a deploy
        // between migrations), not this message's fault.
        E::ColumnNotFound(_) => Failure::Unavailable,
        // Connections, TLS, the pool, a broken conversation, settings: the database side, not the data.
        _ => Failure::Unavailable,
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

    #[test]
    fn only_data_classes_park_and_every_outage_kind_waits() {
        for outage in [
            "25006", // read-only transaction (a failover to a replica)
            "28000", // role not permitted to log in
            "28P01", // password refused (a rotated password)
            "57014", // statement_timeout
            "55P03", // lock_timeout
            "42P01", // table missing (a deploy ahead of its migration)
            "42703", // column missing
            "42501", // privilege revoked
            "3D000", // database missing
            "08006", "53300", "57P01", "57P03", "58030", "XX000",
        ] {
            assert_eq!(classify_sqlstate(outage), Failure::Unavailable, "{outage}");
        }
        for data in [
            "22021", "22P02", "23505", "23502", "23514", "54000", "P0001", "21000",
        ] {
            assert_eq!(classify_sqlstate(data), Failure::Data, "{data}");
        }
        for conflict in ["40001", "40P01"] {
            assert_eq!(classify_sqlstate(conflict), Failure::Conflict, "{conflict}");
        }
        assert_eq!(
            classify(&sqlx::Error::ColumnNotFound("estimated_delivery".into())),
            Failure::Unavailable
        );
    }
}
