//! The tracking domain: the types every worker shares, parsed where data enters the system.
//!
//! Layout:
//! - [`code`]: tracking codes (UPU S10 check digit) and carrier detection.
//! - [`status`]: the canonical statuses and which of them are final.
//! - [`request`]: the tracking request operators publish, validated field by field.
//! - [`event`]: what the fetcher publishes on `carrier.events` (a carrier's events, parsed but untouched).
//! - [`change`]: the status change published on `order.status`.
//! - [`table`]: carrier event codes → canonical status, loaded from a data file.
//! - [`rules`]: which status a shipment is in, given its events.
//! - [`page_token`]: the signed token that names an order in the customer's tracking page link.
//! - [`store`]: the store (shop) an order belongs to.
//! - [`notify`]: which status changes email the customer.
//! - [`unsubscribe`]: the signed one-click unsubscribe link and the keyed hash that names an opted-out address.
//! - [`stores`]: the stores file (`STORES_FILE`): each store's sender, branding, API token and carrier accounts.
//! - [`text`]: what text we refuse (people's) and what we clean (carriers'), on every path in.
//!
//! Nothing here does I/O; every type that crosses a queue is serde-serializable and
//! can only hold valid values once parsed.

pub mod carrier_state;
pub mod change;
pub mod code;
pub mod event;
pub mod late;
pub mod notify;
pub mod page_token;
pub mod request;
pub mod rules;
pub mod status;
pub mod store;
pub mod stores;
pub mod table;
pub mod text;
pub mod unsubscribe;

pub use carrier_state::CarrierState;
pub use change::{ChangeEvent, OrderProgress, OrderStatus, StatusChange};
pub use code::{Carrier, TrackingCode};
pub use event::{CarrierEvent, CarrierUpdate, Location, Source};
pub use late::LateNotice;
pub use page_token::{PageKey, PageLinks};
pub use request::{
    Customer, EmailAddress, FieldError, InvalidRequest, Locale, MarketplaceRef, OrderId,
    TrackingRequest,
};
pub use status::Status;
pub use store::StoreName;
pub use stores::{Store, Stores, StoresError};
pub use unsubscribe::{AddressHash, OptOut, UnsubscribeKey, UnsubscribeLinks};
