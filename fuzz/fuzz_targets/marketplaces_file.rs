//! The `MARKETPLACES_FILE` (crates/marketplaces/src/lib.rs, `Marketplaces::parse`, which `Marketplaces::load`
//! calls): any text gives marketplaces or an error, never a panic, and what the marketplace publisher does with a
//! loaded file at start-up (a `Pace` per marketplace) must not panic either.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tracking_marketplaces::{Marketplaces, Pace};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(marketplaces) = Marketplaces::parse(text) else {
        return;
    };
    for m in marketplaces.iter() {
        assert!(marketplaces.get(&m.name).is_some());
        // As in crates/workers/src/marketplace_publisher.rs at start-up.
        let _pace = Pace::new(m.rate_per_second);
    }
});
