//! Carrier event codes → canonical status, as data. The tables live in `crates/domain/data/*.toml`
//! (compiled in as defaults) and can be replaced at start from a directory (`EVENT_TABLES_DIR`),
//! so a new pair is a data change, not a code change.

use crate::code::Carrier;
use crate::status::Status;
use serde::Deserialize;
use std::collections::HashMap;
use std::path::Path;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mapping {
    /// The event puts the shipment in this status (with a reason for some, e.g. customs).
    Status {
        status: Status,
        reason: Option<String>,
    },
    /// The event undoes the event before it (Correios `EST`).
    Reverse,
}

#[derive(Debug, thiserror::Error)]
pub enum TableError {
    #[error("event table {name}: {source}")]
    Toml {
        name: String,
        source: toml::de::Error,
    },
    #[error("event table {name}: rule {index}: {message}")]
    Rule {
        name: String,
        index: usize,
        message: String,
    },
    #[error("event table {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    rule: Vec<Rule>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Rule {
    codes: Vec<String>,
    types: Vec<String>,
    status: Option<String>,
    reason: Option<String>,
    effect: Option<String>,
}

/// One carrier's table.
#[derive(Debug, Clone, Default)]
pub struct EventTable {
    exact: HashMap<(String, String), Mapping>,
    any_type: HashMap<String, Mapping>,
}

impl EventTable {
    pub fn parse(name: &str, text: &str) -> Result<Self, TableError> {
        let file: File = toml::from_str(text).map_err(|source| TableError::Toml {
            name: name.into(),
            source,
        })?;
        let mut table = EventTable::default();
        for (index, rule) in file.rule.into_iter().enumerate() {
            let bad = |message: String| TableError::Rule {
                name: name.into(),
                index: index + 1,
                message,
            };
            let mapping = match (rule.status.as_deref(), rule.effect.as_deref()) {
                (Some(s), None) => Mapping::Status {
                    status: s.parse().map_err(bad)?,
                    reason: rule.reason.clone(),
                },
                (None, Some("reverse")) => Mapping::Reverse,
                (None, Some(other)) => return Err(bad(format!("unknown effect {other:?}"))),
                _ => return Err(bad("needs exactly one of status or effect".into())),
            };
            if rule.codes.is_empty() || rule.types.is_empty() {
                return Err(bad("codes and types must not be empty".into()));
            }
            for code in &rule.codes {
                for types in &rule.types {
                    if types == "*" {
                        if table
                            .any_type
                            .insert(code.clone(), mapping.clone())
                            .is_some()
                        {
                            return Err(bad(format!("{code} * is mapped twice")));
                        }
                        continue;
                    }
                    for t in expand(types).map_err(bad)? {
                        if table
                            .exact
                            .insert((code.clone(), t.clone()), mapping.clone())
                            .is_some()
                        {
                            return Err(bad(format!("{code} {t} is mapped twice")));
                        }
                    }
                }
            }
        }
        Ok(table)
    }

    /// The mapping of an event, or `None` for a pair nobody mapped.
    pub fn lookup(&self, code: &str, kind: Option<&str>) -> Option<&Mapping> {
        kind.and_then(|k| self.exact.get(&(code.to_owned(), k.to_owned())))
            .or_else(|| self.any_type.get(code))
    }

    pub fn len(&self) -> usize {
        self.exact.len() + self.any_type.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn expand(types: &str) -> Result<Vec<String>, String> {
    match types.split_once('-') {
        None if types.len() == 2 => Ok(vec![types.to_owned()]),
        Some((a, b)) => {
            let (a, b): (u8, u8) = (
                a.parse().map_err(|_| format!("bad range {types:?}"))?,
                b.parse().map_err(|_| format!("bad range {types:?}"))?,
            );
            if a > b {
                return Err(format!("bad range {types:?}"));
            }
            Ok((a..=b).map(|n| format!("{n:02}")).collect())
        }
        None => Err(format!(
            "type {types:?} must be two characters, a range like 10-42, or *"
        )),
    }
}

/// Every carrier's table.
#[derive(Debug, Clone)]
pub struct EventTables {
    tables: HashMap<Carrier, EventTable>,
}

impl EventTables {
    /// The tables compiled into the binary from `crates/domain/data/`.
    pub fn builtin() -> Self {
        let mut tables = HashMap::new();
        for carrier in Carrier::ALL {
            let table = EventTable::parse(carrier.as_str(), builtin_text(carrier))
                .unwrap_or_else(|e| panic!("the built-in event table is invalid: {e}"));
            tables.insert(carrier, table);
        }
        Self { tables }
    }

    /// Tables from `dir/{carrier}.toml`; a carrier without a file keeps its built-in table.
    pub fn load(dir: &Path) -> Result<Self, TableError> {
        let mut tables = Self::builtin();
        for carrier in Carrier::ALL {
            let path = dir.join(format!("{}.toml", carrier.as_str()));
            if !path.exists() {
                continue;
            }
            let text = std::fs::read_to_string(&path).map_err(|source| TableError::Io {
                path: path.display().to_string(),
                source,
            })?;
            tables.tables.insert(
                carrier,
                EventTable::parse(&path.display().to_string(), &text)?,
            );
        }
        Ok(tables)
    }

    pub fn lookup(&self, carrier: Carrier, code: &str, kind: Option<&str>) -> Option<&Mapping> {
        self.tables.get(&carrier).and_then(|t| t.lookup(code, kind))
    }
}

fn builtin_text(carrier: Carrier) -> &'static str {
    match carrier {
        Carrier::Correios => include_str!("../data/correios.toml"),
        Carrier::Jadlog => include_str!("../data/jadlog.toml"),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn status(t: &EventTables, code: &str, kind: &str) -> Option<Status> {
        match t.lookup(Carrier::Correios, code, Some(kind)) {
            Some(Mapping::Status { status, .. }) => Some(*status),
            _ => None,
        }
    }

    #[test]
    fn builtin_tables_follow_the_carrier_notes() {
        let t = EventTables::builtin();
        assert_eq!(status(&t, "PO", "01"), Some(Status::Posted));
        assert_eq!(status(&t, "RO", "01"), Some(Status::InTransit));
        assert_eq!(status(&t, "OEC", "01"), Some(Status::OutForDelivery));
        assert_eq!(status(&t, "OEC", "09"), Some(Status::Returning));
        for bd in ["BDE", "BDI", "BDR"] {
            assert_eq!(status(&t, bd, "01"), Some(Status::Delivered));
            assert_eq!(status(&t, bd, "20"), Some(Status::DeliveryFailed));
            assert_eq!(status(&t, bd, "23"), Some(Status::Returned));
            assert_eq!(status(&t, bd, "24"), Some(Status::AwaitingPickup));
        }
        assert_eq!(status(&t, "PAR", "31"), Some(Status::Exception));
        assert_eq!(status(&t, "BLQ", "77"), Some(Status::Exception));
        assert_eq!(
            t.lookup(Carrier::Correios, "EST", Some("01")),
            Some(&Mapping::Reverse)
        );
        assert_eq!(status(&t, "XYZ", "01"), None);
        assert_eq!(status(&t, "BDE", "99"), None);
        assert!(matches!(
            t.lookup(Carrier::Jadlog, "ENTREGUE", None),
            Some(Mapping::Status {
                status: Status::Delivered,
                ..
            })
        ));
    }

    #[test]
    fn a_pair_mapped_twice_or_a_bad_rule_is_refused() {
        let twice = "[[rule]]\ncodes=[\"A\"]\ntypes=[\"01\"]\nstatus=\"posted\"\n[[rule]]\ncodes=[\"A\"]\ntypes=[\"00-02\"]\nstatus=\"delivered\"\n";
        assert!(
            EventTable::parse("t", twice)
                .unwrap_err()
                .to_string()
                .contains("A 01 is mapped twice")
        );
        let bad = "[[rule]]\ncodes=[\"A\"]\ntypes=[\"01\"]\nstatus=\"lost\"\n";
        assert!(EventTable::parse("t", bad).is_err());
        let both =
            "[[rule]]\ncodes=[\"A\"]\ntypes=[\"01\"]\nstatus=\"posted\"\neffect=\"reverse\"\n";
        assert!(EventTable::parse("t", both).is_err());
    }
}
