//! Keep-alive pools of cosocket connections (`setkeepalive`), per route and
//! pool name, on one worker.
//!
//! Invariants:
//! - a connection handed out was idle, unexpired, and showed no sign of the
//!   peer having closed it or sent anything unasked (checked without
//!   blocking just before it is handed out);
//! - a pool holds at most its size; the oldest idle connection makes room;
//! - a key includes the route, so routes never share connections.

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, ReadBuf};

use super::tcp::Stream;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PoolKey {
    pub route: Rc<str>,
    pub name: String,
}

/// A connection going into or out of a pool.
pub struct Reusable {
    pub stream: Stream,
    /// Times it was taken from a pool before.
    pub reused: u32,
    /// TLS is set up on it (`sslhandshake` succeeded): a reuser's handshake
    /// returns at once, as lua-nginx-module's does for a handshaked connection.
    pub tls: bool,
}

struct Idle {
    conn: Reusable,
    expires: Option<Instant>,
}

#[derive(Default)]
pub struct Pools {
    pools: HashMap<PoolKey, VecDeque<Idle>>,
}

impl Pools {
    /// The most recently pooled live connection of `key`; dead and expired
    /// ones are closed on the way.
    pub fn take(&mut self, key: &PoolKey) -> Option<Reusable> {
        let now = Instant::now();
        let queue = self.pools.get_mut(key)?;
        let mut found = None;
        while let Some(mut idle) = queue.pop_back() {
            if idle.expires.is_some_and(|t| t <= now) || !still_idle(&mut idle.conn.stream) {
                continue;
            }
            found = Some(idle.conn);
            break;
        }
        if queue.is_empty() {
            self.pools.remove(key);
        }
        found
    }

    /// Pools `conn` under `key`, for `timeout` (None: no limit), in a pool
    /// of at most `size`.
    pub fn put(&mut self, key: PoolKey, conn: Reusable, timeout: Option<Duration>, size: usize) {
        let now = Instant::now();
        self.prune(now);
        let queue = self.pools.entry(key).or_default();
        while queue.len() >= size.max(1) {
            queue.pop_front();
        }
        queue.push_back(Idle {
            conn,
            expires: timeout.map(|t| now + t),
        });
    }

    /// Idle connections held.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.pools.values().map(VecDeque::len).sum()
    }

    /// Closes expired connections of every pool.
    fn prune(&mut self, now: Instant) {
        self.pools.retain(|_, q| {
            q.retain(|i| i.expires.is_none_or(|t| t > now));
            !q.is_empty()
        });
    }
}

/// Whether an idle connection is still open with nothing unread: one
/// non-blocking read must find no data and no end of stream.
fn still_idle(stream: &mut Stream) -> bool {
    let mut byte = [0u8; 1];
    let mut buf = ReadBuf::new(&mut byte);
    let mut cx = Context::from_waker(Waker::noop());
    matches!(Pin::new(stream).poll_read(&mut cx, &mut buf), Poll::Pending)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(stream: tokio::io::DuplexStream, reused: u32) -> Reusable {
        Reusable {
            stream: Box::new(stream),
            reused,
            tls: reused == 1,
        }
    }

    fn key(route: &str) -> PoolKey {
        PoolKey {
            route: Rc::from(route),
            name: "127.0.0.1:6379".into(),
        }
    }

    #[tokio::test]
    async fn a_closed_or_chatty_idle_connection_is_never_handed_out() {
        use tokio::io::AsyncWriteExt;
        let (a, mut a_peer) = tokio::io::duplex(64);
        let (b, b_peer) = tokio::io::duplex(64);
        let (c, _c_peer) = tokio::io::duplex(64);
        let mut pools = Pools::default();
        pools.put(key("r"), conn(c, 0), None, 10);
        pools.put(key("r"), conn(b, 1), None, 10);
        pools.put(key("r"), conn(a, 2), None, 10);
        a_peer.write_all(b"unasked").await.unwrap();
        drop(b_peer);
        let quiet = pools.take(&key("r")).expect("the quiet one");
        assert_eq!((quiet.reused, quiet.tls), (0, false));
        assert!(pools.take(&key("r")).is_none());
    }

    #[tokio::test]
    async fn routes_never_share_and_size_is_bounded() {
        let mut pools = Pools::default();
        let mut peers = Vec::new();
        for i in 0..3 {
            let (s, peer) = tokio::io::duplex(64);
            peers.push(peer);
            pools.put(key("a"), conn(s, i), None, 2);
        }
        assert_eq!(pools.len(), 2, "the oldest made room");
        assert!(pools.take(&key("b")).is_none());
        assert_eq!(pools.take(&key("a")).map(|c| (c.reused, c.tls)), Some((2, false)));
        // The TLS flag comes back with its connection.
        assert_eq!(pools.take(&key("a")).map(|c| (c.reused, c.tls)), Some((1, true)));
    }
}
