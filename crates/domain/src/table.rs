//! Carrier event codes → canonical status, as data. The tables live in `crates/domain/data/*.toml`
//! (compiled in as defaults) and can be replaced at start from a directory (`EVENT_TABLES_DIR`),
//! so a new pair is a data change, not a code change.

use crate::code::Carrier;
use crate::status::Status;
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
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
    /// The carrier's description of each type of the rule (keys: the rule's types, or `*`).
    #[serde(default)]
    descriptions: BTreeMap<String, String>,
}

/// One carrier's table.
#[derive(Debug, Clone, Default)]
pub struct EventTable {
    exact: HashMap<(String, String), Mapping>,
    any_type: HashMap<String, Mapping>,
    /// (code, type or `*`) -> the carrier's description of the pair.
    descriptions: HashMap<(String, String), String>,
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
            let mut types_of_rule = Vec::new();
            for types in &rule.types {
                if types == "*" {
                    types_of_rule.push("*".to_owned());
                } else {
                    types_of_rule.extend(expand(types).map_err(bad)?);
                }
            }
            for (kind, text) in &rule.descriptions {
                if !types_of_rule.contains(kind) {
                    return Err(bad(format!(
                        "a description for type {kind:?}, which the rule does not list"
                    )));
                }
                if text.trim().is_empty() {
                    return Err(bad(format!("the description of type {kind:?} is empty")));
                }
                for code in &rule.codes {
                    table
                        .descriptions
                        .insert((code.clone(), kind.clone()), text.clone());
                }
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

    /// Every pair of the table, as (code, type), with `*` for a rule on any type.
    pub fn pairs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.exact
            .keys()
            .map(|(c, t)| (c.as_str(), t.as_str()))
            .chain(self.any_type.keys().map(|c| (c.as_str(), "*")))
    }

    /// The carrier's description of a pair as the table gives it (`kind` `*` for a rule on any type).
    pub fn description(&self, code: &str, kind: &str) -> Option<&str> {
        self.descriptions
            .get(&(code.to_owned(), kind.to_owned()))
            .map(String::as_str)
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

    /// One carrier's table.
    pub fn table(&self, carrier: Carrier) -> Option<&EventTable> {
        self.tables.get(&carrier)
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
        assert_eq!(status(&t, "PAR", "21"), Some(Status::Exception));
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

    /// Every (code, type) pair of olist/correios `correios/models/data.py` `TRACKING_STATUS` (commit 5494d74),
    /// the most complete public list found, except its own `ERROR 00`.
    const OLIST_PAIRS: &str = "\
        BDE 00 BDE 01 BDE 02 BDE 03 BDE 04 BDE 05 BDE 06 BDE 07 BDE 08 BDE 09 BDE 10 BDE 12 BDE 13 BDE 14 BDE 15\n        BDE 18 BDE 19 BDE 20 BDE 21 BDE 22 BDE 23 BDE 24 BDE 25 BDE 26 BDE 28 BDE 29 BDE 30 BDE 32 BDE 33 BDE 34\n        BDE 35 BDE 36 BDE 37 BDE 38 BDE 39 BDE 40 BDE 41 BDE 42 BDE 43 BDE 44 BDE 45 BDE 46 BDE 47 BDE 48 BDE 49\n        BDE 50 BDE 51 BDE 52 BDE 53 BDE 54 BDE 55 BDE 56 BDE 57 BDE 58 BDE 59 BDE 60 BDE 61 BDE 62 BDE 66 BDE 67\n        BDE 68 BDE 69 BDE 70 BDE 71 BDE 72 BDE 73 BDE 74 BDE 75 BDE 76 BDE 77 BDE 79 BDE 80 BDE 81 BDE 82 BDE 83\n        BDE 84 BDE 85 BDE 86 BDE 87 BDE 89 BDE 98 BDI 00 BDI 01 BDI 02 BDI 03 BDI 04 BDI 05 BDI 06 BDI 07 BDI 08\n        BDI 09 BDI 10 BDI 12 BDI 13 BDI 14 BDI 15 BDI 18 BDI 19 BDI 20 BDI 21 BDI 22 BDI 23 BDI 24 BDI 25 BDI 26\n        BDI 28 BDI 29 BDI 30 BDI 32 BDI 33 BDI 34 BDI 35 BDI 36 BDI 37 BDI 38 BDI 39 BDI 40 BDI 41 BDI 42 BDI 43\n        BDI 44 BDI 45 BDI 46 BDI 47 BDI 48 BDI 49 BDI 50 BDI 51 BDI 52 BDI 53 BDI 54 BDI 55 BDI 56 BDI 57 BDI 58\n        BDI 59 BDI 60 BDI 61 BDI 62 BDI 66 BDI 67 BDI 68 BDI 69 BDI 70 BDI 71 BDI 72 BDI 73 BDI 74 BDI 75 BDI 76\n        BDI 77 BDI 79 BDI 80 BDI 81 BDI 82 BDI 83 BDI 84 BDI 85 BDI 86 BDI 87 BDI 89 BDI 98 BDR 00 BDR 01 BDR 02\n        BDR 03 BDR 04 BDR 05 BDR 06 BDR 07 BDR 08 BDR 09 BDR 10 BDR 12 BDR 13 BDR 14 BDR 15 BDR 18 BDR 19 BDR 20\n        BDR 21 BDR 22 BDR 23 BDR 24 BDR 25 BDR 26 BDR 28 BDR 29 BDR 30 BDR 31 BDR 32 BDR 33 BDR 34 BDR 35 BDR 36\n        BDR 37 BDR 38 BDR 39 BDR 40 BDR 41 BDR 42 BDR 43 BDR 44 BDR 45 BDR 46 BDR 47 BDR 48 BDR 49 BDR 50 BDR 51\n        BDR 52 BDR 53 BDR 54 BDR 55 BDR 56 BDR 57 BDR 58 BDR 59 BDR 60 BDR 61 BDR 62 BDR 63 BDR 64 BDR 66 BDR 67\n        BDR 68 BDR 69 BDR 70 BDR 71 BDR 72 BDR 73 BDR 74 BDR 75 BDR 76 BDR 77 BDR 79 BDR 80 BDR 81 BDR 82 BDR 83\n        BDR 84 BDR 85 BDR 86 BDR 87 BDR 89 BLQ 01 BLQ 02 BLQ 04 BLQ 05 BLQ 11 BLQ 21 BLQ 22 BLQ 24 BLQ 30 BLQ 31\n        BLQ 41 BLQ 42 BLQ 44 BLQ 51 BLQ 54 BLQ 61 CAR 01 CD 00 CD 01 CD 02 CD 03 CMR 01 CMT 00 CO 01 CO 02 CO 03 CO 04\n        CO 05 CO 06 CO 07 CO 08 CO 09 CO 10 CO 11 CO 12 CO 13 CO 14 CUN 00 CUN 01 DO 00 DO 01 DO 02 EST 01 EST 02\n        EST 03 EST 04 EST 05 EST 06 EST 09 FC 01 FC 02 FC 03 FC 04 FC 05 FC 07 FC 08 FC 09 FC 10 FC 11 FC 12 FC 13\n        FC 19 FC 24 FC 26 FC 27 FC 29 FC 31 FC 32 FC 33 FC 34 FC 35 FC 37 FC 41 FC 42 FC 47 FC 51 FC 55 IDC 01 IDC 02\n        IDC 03 IDC 04 IDC 05 IDC 06 IDC 07 LDE 00 LDE 09 LDI 00 LDI 01 LDI 02 LDI 03 LDI 04 LDI 11 LDI 13 LDI 14\n        OEC 00 OEC 01 OEC 09 PAR 10 PAR 11 PAR 12 PAR 13 PAR 14 PAR 15 PAR 16 PAR 17 PAR 18 PAR 19 PAR 20 PAR 21\n        PAR 22 PAR 23 PAR 24 PAR 25 PAR 26 PAR 27 PAR 28 PAR 29 PAR 30 PAR 31 PAR 32 PAR 33 PAR 34 PAR 40 PAR 41\n        PAR 42 PMT 01 PO 00 PO 01 PO 09 RO 00 RO 01 TRI 00";

    #[test]
    fn every_pair_of_the_public_list_is_mapped() {
        let t = EventTables::builtin();
        let unmapped: Vec<&str> = OLIST_PAIRS
            .split_whitespace()
            .collect::<Vec<_>>()
            .chunks(2)
            .filter(|p| t.lookup(Carrier::Correios, p[0], Some(p[1])).is_none())
            .map(|p| p[0])
            .collect();
        assert_eq!(OLIST_PAIRS.split_whitespace().count(), 2 * 377);
        assert!(unmapped.is_empty(), "unmapped: {unmapped:?}");
    }

    #[test]
    fn the_known_gaps_and_corrections_of_issue_13() {
        let t = EventTables::builtin();
        let reason = |code: &str, kind: &str| match t.lookup(Carrier::Correios, code, Some(kind)) {
            Some(Mapping::Status { reason, .. }) => reason.clone(),
            _ => None,
        };
        assert_eq!(status(&t, "OEC", "03"), Some(Status::OutForDelivery));
        for fc in ["03", "04", "07", "10"] {
            assert!(status(&t, "FC", fc).is_some(), "FC {fc}");
        }
        for bd in ["BDE", "BDI", "BDR"] {
            for kind in ["15", "38", "39", "45", "82"] {
                assert!(status(&t, bd, kind).is_some(), "{bd} {kind}");
            }
        }
        // "Objeto ainda não chegou à unidade": late, not lost.
        assert_eq!(status(&t, "BDE", "09"), Some(Status::InTransit));
        assert_eq!(reason("BDE", "09").as_deref(), Some("delayed"));
        // Released, received, payment confirmed: customs going well is no exception.
        for par in ["10", "16", "17", "19", "31", "34", "42"] {
            assert_eq!(status(&t, "PAR", par), Some(Status::InTransit), "PAR {par}");
        }
        assert_eq!(status(&t, "PAR", "13"), Some(Status::Returning));
        assert_eq!(status(&t, "PAR", "11"), Some(Status::Exception));
        assert_eq!(reason("PAR", "11").as_deref(), Some("customs"));
        // An exact pair wins over the code's "*" rule.
        assert_eq!(status(&t, "BLQ", "61"), Some(Status::InTransit));
        assert_eq!(status(&t, "BLQ", "99"), Some(Status::Exception));
    }

    #[test]
    fn every_pair_of_the_builtin_tables_has_a_description() {
        let t = EventTables::builtin();
        for carrier in Carrier::ALL {
            let table = t.table(carrier).unwrap();
            let missing: Vec<String> = table
                .pairs()
                .filter(|(code, kind)| {
                    table
                        .description(code, kind)
                        .is_none_or(|d| d.trim().is_empty())
                })
                .map(|(code, kind)| format!("{code} {kind}"))
                .collect();
            assert!(
                missing.is_empty(),
                "{carrier}: no description for {missing:?}"
            );
        }
        assert_eq!(
            t.table(Carrier::Correios).unwrap().description("OEC", "03"),
            Some("Objeto em rota de entrega")
        );
        let stray = "[[rule]]\ncodes=[\"A\"]\ntypes=[\"01\"]\nstatus=\"posted\"\n[rule.descriptions]\n\"02\"=\"x\"\n";
        assert!(EventTable::parse("t", stray).is_err());
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
