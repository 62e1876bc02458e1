//! The RabbitMQ nodes `AMQP_URL` lists (a comma-separated list: the nodes of one cluster), and which one a
//! connection tries first.
//!
//! Every connection of a process (its consumers' and its publisher's) shares one [`Brokers`]: a connection
//! tries the node that answered last first, then the others in the list's order; when a connection to a node is
//! lost, the next connection starts with the node after it. So a process moves to the next node as soon as its
//! node goes away, and its consumers and publisher end up on the same node. The topology is cluster-wide and
//! quorum queues keep working while a majority of nodes is up, so any node that answers will do.
//!
//! The URLs hold passwords: only [`endpoint`]s (`host:port`) are ever shown.

use secrecy::{ExposeSecret, SecretString};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Where a connection is: the index of its node in the list.
pub type BrokerIndex = usize;

pub struct Brokers {
    urls: Vec<SecretString>,
    /// `host:port` of each URL, for logs and errors.
    endpoints: Vec<String>,
    /// The node connections try first: the last one that answered, moved on when a connection to it is lost.
    first: AtomicUsize,
}

impl std::fmt::Debug for Brokers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(&self.endpoints).finish()
    }
}

impl Brokers {
    /// The nodes of `list` (see [`parse_url_list`]); `Err` says what is wrong without showing any URL.
    pub fn parse(list: &str) -> Result<Brokers, String> {
        let urls = parse_url_list(list)?;
        Ok(Brokers {
            endpoints: urls.iter().map(|u| endpoint(u)).collect(),
            urls: urls.into_iter().map(SecretString::from).collect(),
            first: AtomicUsize::new(0),
        })
    }

    /// One URL as given, unchecked (for tests that pass whatever they like).
    pub(crate) fn one(url: &str) -> Brokers {
        Brokers {
            endpoints: vec![endpoint(url)],
            urls: vec![SecretString::from(url.to_owned())],
            first: AtomicUsize::new(0),
        }
    }

    pub fn len(&self) -> usize {
        self.urls.len()
    }

    pub fn is_empty(&self) -> bool {
        self.urls.is_empty()
    }

    /// The URL of node `i` (a secret: for the connection only).
    pub(crate) fn url(&self, i: BrokerIndex) -> &str {
        self.urls[i % self.urls.len()].expose_secret()
    }

    /// `host:port` of node `i`, for logs.
    pub fn endpoint(&self, i: BrokerIndex) -> &str {
        &self.endpoints[i % self.endpoints.len()]
    }

    /// The nodes in the order a new connection tries them.
    pub fn try_order(&self) -> impl Iterator<Item = BrokerIndex> + use<> {
        try_order(self.len(), self.first.load(Ordering::Relaxed))
    }

    /// Node `i` answered: the next connections try it first.
    pub(crate) fn answered(&self, i: BrokerIndex) {
        self.first.store(i, Ordering::Relaxed);
    }

    /// A connection to node `i` was lost: unless another connection already moved on, the next connections
    /// start with the node after it. Returns the node they will try first.
    pub(crate) fn lost(&self, i: BrokerIndex) -> BrokerIndex {
        let n = self.len();
        match self
            .first
            .compare_exchange(i, after(i, n), Ordering::Relaxed, Ordering::Relaxed)
        {
            Ok(_) => after(i, n),
            Err(current) => current,
        }
    }
}

/// The URLs of a comma-separated `AMQP_URL`, in order, each `amqp://` or `amqps://`. A comma inside a URL (in a
/// password) must be written `%2C`. The error names the entry by its position, never its text (it may hold a
/// password).
pub fn parse_url_list(list: &str) -> Result<Vec<String>, String> {
    let mut urls = Vec::new();
    let parts: Vec<&str> = list.split(',').map(str::trim).collect();
    for (n, part) in parts.iter().enumerate() {
        let which = if parts.len() == 1 {
            String::new()
        } else {
            format!("entry {} of the list ", n + 1)
        };
        if part.is_empty() {
            return Err(format!(
                "{which}is empty (a comma-separated list of amqp:// or amqps:// URLs)"
            ));
        }
        if !(part.starts_with("amqp://") || part.starts_with("amqps://")) {
            return Err(format!("{which}must start with amqp:// or amqps://"));
        }
        urls.push((*part).to_owned());
    }
    Ok(urls)
}

/// `host:port` of an AMQP URL, without credentials, vhost or query (the scheme's port when the URL names none).
pub fn endpoint(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("amqp", url));
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let has_port = match host_port.rfind(']') {
        // [v6]:port
        Some(close) => host_port[close..].contains(':'),
        None => host_port.contains(':'),
    };
    if has_port {
        host_port.to_owned()
    } else {
        let port = if scheme == "amqps" { 5671 } else { 5672 };
        let host = if host_port.is_empty() {
            "localhost"
        } else {
            host_port
        };
        format!("{host}:{port}")
    }
}

/// The order in which a connection tries `n` nodes, starting with `first`: every node once.
pub fn try_order(n: usize, first: BrokerIndex) -> impl Iterator<Item = BrokerIndex> {
    let start = if n == 0 { 0 } else { first % n };
    (0..n).map(move |k| (start + k) % n)
}

/// The node after `i` among `n`.
pub fn after(i: BrokerIndex, n: usize) -> BrokerIndex {
    if n == 0 { 0 } else { (i + 1) % n }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_list_is_split_on_commas_and_trimmed() {
        assert_eq!(
            parse_url_list("amqp://u:p@a:5701/v, amqp://u:p@b:5702/v ,amqps://c/v").unwrap(),
            ["amqp://u:p@a:5701/v", "amqp://u:p@b:5702/v", "amqps://c/v"]
        );
        assert_eq!(
            parse_url_list("amqp://guest:guest@127.0.0.1:5672/%2f").unwrap(),
            ["amqp://guest:guest@127.0.0.1:5672/%2f"]
        );
    }

    #[test]
    fn a_bad_entry_is_named_by_position_without_its_text() {
        let e = parse_url_list("amqp://u:secret@a/v,,amqp://b/v").unwrap_err();
        assert!(e.contains("entry 2 of the list is empty"), "{e}");
        let e = parse_url_list("amqp://u:secret@a/v, http://u:pw2@b/v").unwrap_err();
        assert!(
            e.contains("entry 2 of the list must start with amqp://"),
            "{e}"
        );
        assert!(!e.contains("secret") && !e.contains("pw2"), "{e}");
        let e = parse_url_list("postgres://u:pw@h/db").unwrap_err();
        assert_eq!(e, "must start with amqp:// or amqps://");
        assert!(parse_url_list("amqp://a/v,").is_err());
    }

    #[test]
    fn endpoints_show_host_and_port_only() {
        assert_eq!(endpoint("amqp://u:p@w@10.0.0.1:5701/%2f"), "10.0.0.1:5701");
        assert_eq!(
            endpoint("amqps://u:pw@mq.example/vh?heartbeat=5"),
            "mq.example:5671"
        );
        assert_eq!(endpoint("amqp://mq.example"), "mq.example:5672");
        assert_eq!(endpoint("amqp://u:pw@[::1]:5700/v"), "[::1]:5700");
        assert_eq!(endpoint("amqp://[::1]/v"), "[::1]:5672");
        assert_eq!(endpoint("amqp:///v"), "localhost:5672");
    }

    #[test]
    fn every_node_is_tried_once_starting_with_the_first() {
        assert_eq!(try_order(3, 0).collect::<Vec<_>>(), [0, 1, 2]);
        assert_eq!(try_order(3, 1).collect::<Vec<_>>(), [1, 2, 0]);
        assert_eq!(try_order(3, 5).collect::<Vec<_>>(), [2, 0, 1]);
        assert_eq!(try_order(1, 0).collect::<Vec<_>>(), [0]);
        assert_eq!(try_order(0, 0).count(), 0);
    }

    #[test]
    fn a_lost_node_moves_connections_to_the_next_once() {
        let b = Brokers::parse("amqp://a/v,amqp://b/v,amqp://c/v").unwrap();
        assert_eq!(b.try_order().collect::<Vec<_>>(), [0, 1, 2]);
        // The consumer and the publisher of one process both lose node 0: they move on once, not twice.
        assert_eq!(b.lost(0), 1);
        assert_eq!(b.lost(0), 1);
        assert_eq!(b.try_order().collect::<Vec<_>>(), [1, 2, 0]);
        // Node 2 answered (1 did not): connections stay there, and losing it wraps to the first.
        b.answered(2);
        assert_eq!(b.lost(2), 0);
        let single = Brokers::parse("amqp://a/v").unwrap();
        assert_eq!(single.lost(0), 0);
        assert_eq!(format!("{b:?}"), r#"["a:5672", "b:5672", "c:5672"]"#);
    }
}
