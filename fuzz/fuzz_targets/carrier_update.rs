//! The carrier update on `carrier.events` as the normalizer reads it: any bytes give an update or an error, and an
//! update that reads serializes back to JSON that reads to the same update.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use tracking_domain::CarrierUpdate;

fuzz_target!(|data: &[u8]| {
    if let Ok(update) = serde_json::from_slice::<CarrierUpdate>(data) {
        common::assert_round_trip(&update, "the carrier update");
    }
});
