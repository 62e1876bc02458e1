//! Enums in TEXT columns. The domain's enums (`Status`, `Carrier`, `Source`, `CarrierState`) know nothing of
//! sqlx: `tracking-domain` is shared by crates that never touch a database (carriers, emails, marketplaces), and
//! deriving `sqlx::Type` there would pull sqlx into all of them (or need a feature flag that every build ends up
//! turning on anyway, as Cargo unifies features). Instead the store maps them with two wrappers:
//!
//! - [`Text`]: written and read by its spelling; a stored value that is not one of them is a decode error naming
//!   it (where one unreadable row may fail the statement: lists an operator asked for).
//! - [`Stored`]: read without ever failing: an unknown spelling is kept as [`Stored::Unknown`], so that one row
//!   written by hand or by another version cannot stop a scan of many (the scheduler quarantines such a shipment:
//!   `rows_quarantined_total{table}`), and never a panic.

use sqlx::encode::IsNull;
use sqlx::error::BoxDynError;
use sqlx::postgres::{PgArgumentBuffer, PgTypeInfo, PgValueRef};
use sqlx::{Decode, Encode, Postgres, Type};
use std::fmt;
use tracking_domain::{Carrier, CarrierState, Source, Status};

/// An enum stored in a TEXT column by its spelling.
pub trait Spelled: Sized + Copy {
    /// What the column holds, for error messages ("status", "carrier").
    const WHAT: &'static str;
    fn spelling(self) -> &'static str;
    fn from_spelling(s: &str) -> Option<Self>;
}

macro_rules! spelled {
    ($t:ty, $what:literal) => {
        impl Spelled for $t {
            const WHAT: &'static str = $what;
            fn spelling(self) -> &'static str {
                self.as_str()
            }
            fn from_spelling(s: &str) -> Option<Self> {
                s.parse().ok()
            }
        }
    };
}

spelled!(Status, "status");
spelled!(Carrier, "carrier");
spelled!(Source, "source");
spelled!(CarrierState, "carrier state");

impl<T: Spelled> serde::Serialize for Stored<T> {
    /// As its spelling, known or not.
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

fn text_type() -> PgTypeInfo {
    <&str as Type<Postgres>>::type_info()
}

fn text_compatible(ty: &PgTypeInfo) -> bool {
    <&str as Type<Postgres>>::compatible(ty)
}

/// A value of `T` in a TEXT column; an unknown stored spelling is a decode error naming it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Text<T>(pub T);

impl<T: Spelled> Text<T> {
    /// The stored spelling.
    pub fn as_str(&self) -> &'static str {
        self.0.spelling()
    }
}

/// Formats as the stored spelling (padded as a `str` is, for tables).
impl<T: Spelled> fmt::Display for Text<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.0.spelling())
    }
}

/// Serializes as `T` does (the same spelling for every enum here).
impl<T: serde::Serialize> serde::Serialize for Text<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<T: Spelled> Type<Postgres> for Text<T> {
    fn type_info() -> PgTypeInfo {
        text_type()
    }
    fn compatible(ty: &PgTypeInfo) -> bool {
        text_compatible(ty)
    }
}

impl<T: Spelled> Encode<'_, Postgres> for Text<T> {
    fn encode_by_ref(&self, buf: &mut PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
        <&str as Encode<Postgres>>::encode(self.0.spelling(), buf)
    }
}

impl<'r, T: Spelled> Decode<'r, Postgres> for Text<T> {
    fn decode(value: PgValueRef<'r>) -> Result<Self, BoxDynError> {
        let s = <&str as Decode<Postgres>>::decode(value)?;
        T::from_spelling(s)
            .map(Text)
            .ok_or_else(|| format!("unknown {} {s:?} stored", T::WHAT).into())
    }
}

/// A value of `T` read from a TEXT column, or what was there instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stored<T> {
    Known(T),
    /// A spelling this version does not know.
    Unknown(String),
}

impl<T: Spelled> Stored<T> {
    /// The value, or an error naming what was stored instead (for the quarantine's reason).
    pub fn known(&self) -> Result<T, crate::StoreError> {
        match self {
            Stored::Known(t) => Ok(*t),
            Stored::Unknown(s) => Err(crate::StoreError::Corrupt(format!(
                "unknown {} {s:?}",
                T::WHAT
            ))),
        }
    }

    /// What the column holds, known or not.
    pub fn as_str(&self) -> &str {
        match self {
            Stored::Known(t) => t.spelling(),
            Stored::Unknown(s) => s,
        }
    }
}

impl<T: Spelled> From<T> for Stored<T> {
    fn from(t: T) -> Self {
        Stored::Known(t)
    }
}

impl<T: Spelled> fmt::Display for Stored<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl<T: Spelled> Type<Postgres> for Stored<T> {
    fn type_info() -> PgTypeInfo {
        text_type()
    }
    fn compatible(ty: &PgTypeInfo) -> bool {
        text_compatible(ty)
    }
}

impl<'r, T: Spelled> Decode<'r, Postgres> for Stored<T> {
    fn decode(value: PgValueRef<'r>) -> Result<Self, BoxDynError> {
        let s = <&str as Decode<Postgres>>::decode(value)?;
        Ok(T::from_spelling(s).map_or_else(|| Stored::Unknown(s.to_owned()), Stored::Known))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_spelling_is_kept_and_named_not_a_panic() {
        let s: Stored<Status> = Stored::Unknown("teleported".into());
        assert_eq!(s.as_str(), "teleported");
        assert!(
            s.known()
                .unwrap_err()
                .to_string()
                .contains("unknown status \"teleported\"")
        );
        let k: Stored<Status> = Status::Delivered.into();
        assert_eq!(k.known().ok(), Some(Status::Delivered));
        assert_eq!(k.to_string(), "delivered");
    }

    #[test]
    fn every_spelling_reads_back() {
        for s in Status::ALL {
            assert_eq!(Status::from_spelling(s.spelling()), Some(s));
        }
        for c in Carrier::ALL {
            assert_eq!(Carrier::from_spelling(c.spelling()), Some(c));
        }
        for c in CarrierState::ALL {
            assert_eq!(CarrierState::from_spelling(c.spelling()), Some(c));
        }
    }
}
