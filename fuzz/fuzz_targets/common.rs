//! Helpers shared by the fuzz targets (each target uses some of them).
#![allow(dead_code)]

use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fmt::Debug;
use tracking_domain::TrackingCode;

/// Serializes `value` the way the workers publish it and reads it back: the message must come back equal.
pub fn assert_round_trip<T>(value: &T, what: &str)
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let bytes = serde_json::to_vec(value).expect("a parsed message serializes");
    match serde_json::from_slice::<T>(&bytes) {
        Ok(again) => assert_eq!(
            &again,
            value,
            "{what} changed through a JSON round trip: {}",
            String::from_utf8_lossy(&bytes)
        ),
        Err(e) => panic!(
            "{what} does not read back its own JSON ({e}): {}",
            String::from_utf8_lossy(&bytes)
        ),
    }
}

/// A carrier answer input: the first line lists the tracking codes asked (separated by spaces or commas; those
/// that do not parse are skipped), the rest is the answer body. Without a newline, no codes and all body.
pub fn codes_and_body(data: &[u8]) -> Option<(Vec<TrackingCode>, &str)> {
    let text = std::str::from_utf8(data).ok()?;
    let (first, body) = text.split_once('\n').unwrap_or(("", text));
    let codes = first
        .split([' ', ','])
        .filter_map(|c| TrackingCode::parse(c).ok())
        .take(100)
        .collect();
    Some((codes, body))
}

/// What the fetcher publishes for one answered code (crates/workers/src/fetcher.rs): the normalizer must be able to
/// read it back, so the parsed events and estimate have to survive the JSON round trip.
pub fn assert_publishable(carrier: tracking_domain::Carrier, answers: &tracking_carriers::Answers) {
    use tracking_carriers::ObjectResult;
    use tracking_domain::{CarrierUpdate, Source};
    let fetched_at = chrono::DateTime::from_timestamp(1_774_633_230, 0).expect("a fixed time");
    for (code, result) in answers {
        let (events, estimated_delivery, carrier_message) = match result {
            ObjectResult::Found {
                events,
                estimated_delivery,
            } => (events.clone(), *estimated_delivery, None),
            ObjectResult::NotYet { message }
            | ObjectResult::NotTrackable { message }
            | ObjectResult::Unrecognised { message } => (Vec::new(), None, Some(message.clone())),
            ObjectResult::Refused { .. } => continue,
        };
        let update = CarrierUpdate {
            carrier,
            tracking_code: code.clone(),
            store: Default::default(),
            source: Source::Carrier,
            request: None,
            fetched_at,
            estimated_delivery,
            carrier_message,
            events,
        };
        assert_round_trip(&update, "the carrier update built from the answer");
    }
}
