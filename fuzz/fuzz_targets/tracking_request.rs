//! The tracking request as the fetcher and tracking-api read it (`TrackingRequest::parse`): any bytes give a
//! request or an error, and a request that parses serializes back to JSON that parses to the same request.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use tracking_domain::TrackingRequest;

fuzz_target!(|data: &[u8]| {
    let Ok(request) = TrackingRequest::parse(data) else {
        return;
    };
    let bytes = serde_json::to_vec(&request).expect("a request serializes");
    match TrackingRequest::parse(&bytes) {
        Ok(again) => assert_eq!(
            again,
            request,
            "the request changed through a round trip: {}",
            String::from_utf8_lossy(&bytes)
        ),
        Err(e) => panic!(
            "a parsed request does not parse back ({e}): {}",
            String::from_utf8_lossy(&bytes)
        ),
    }
    // The derived serde reading (a request inside a carrier update) must agree with `parse`.
    common::assert_round_trip(&request, "the request (serde)");
});
