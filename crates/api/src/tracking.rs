//! Bounds on what `GET /v1/orders/{order_id}/tracking` answers: a shipment polled for months, or an order with
//! very many shipments, must not make one answer arbitrarily large. The newest are kept, and the answer says how
//! many there were.

/// `API_TRACKING_MAX_EVENTS` and `API_TRACKING_MAX_SHIPMENTS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// The most events, and the most status changes, answered per shipment.
    pub max_events: usize,
    /// The most shipments answered per order.
    pub max_shipments: usize,
}

/// The newest items of a list kept oldest first, and how many the whole list had.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kept<T> {
    pub items: Vec<T>,
    pub total: usize,
}

impl<T> Kept<T> {
    pub fn truncated(&self) -> bool {
        self.items.len() < self.total
    }
}

/// The last (newest) `max` of `items`, in their order.
pub fn newest<T>(mut items: Vec<T>, max: usize) -> Kept<T> {
    let total = items.len();
    items.drain(..total.saturating_sub(max));
    Kept { items, total }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_are_kept_in_order() {
        let kept = newest((1..=5).collect(), 2);
        assert_eq!(kept.items, [4, 5]);
        assert_eq!(kept.total, 5);
        assert!(kept.truncated());
        let all = newest(vec![1, 2], 2);
        assert_eq!((all.items, all.total), (vec![1, 2], 2));
        assert!(!newest(Vec::<u8>::new(), 1).truncated());
    }
}
