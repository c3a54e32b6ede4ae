//! Keep-alive pools of cosocket connections (`setkeepalive`), per route and
//! pool name, on one worker.
//!
//! Invariants:
//! - a connection handed out was idle, unexpired, and showed no sign of the
//!   peer having closed it or sent anything unasked (checked without
//!   blocking just before it is handed out);
//! - a pool holds at most its size; the oldest idle connection makes room;
//! - a key includes the route, so routes never share connections;
//! - a pool first connected with the `backlog` option counts its open
//!   connections (in use or idle) with a `Slot` each, never more than its
//!   size; a connect that finds none free waits in a queue of at most
//!   `backlog`, woken when a slot is freed or a connection is pooled.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, ReadBuf};
use tokio::sync::oneshot;

use super::tcp::Stream;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PoolKey {
    pub route: Rc<str>,
    pub name: String,
}

struct Idle {
    conn: Pooled,
    expires: Option<Instant>,
}

/// What a pool with a backlog counts: its open connections and the
/// connects waiting for one.
pub struct Slots {
    size: usize,
    backlog: usize,
    open: Cell<usize>,
    waiters: RefCell<VecDeque<oneshot::Sender<()>>>,
}

/// One open connection counted against its pool's size; freed on drop
/// (close, an I/O error, garbage collection, eviction from the pool).
pub struct Slot(Rc<Slots>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.open.set(self.0.open.get() - 1);
        self.0.wake_one();
    }
}

impl Slots {
    /// A slot, if fewer than `size` connections are open.
    pub fn try_acquire(self: &Rc<Self>) -> Option<Slot> {
        (self.open.get() < self.size).then(|| {
            self.open.set(self.open.get() + 1);
            Slot(self.clone())
        })
    }

    /// Joins the queue of waiting connects, or refuses when it holds
    /// `backlog` already (lua-nginx-module's words).
    pub fn wait(&self) -> Result<oneshot::Receiver<()>, &'static str> {
        let mut waiters = self.waiters.borrow_mut();
        waiters.retain(|w| !w.is_closed());
        if waiters.len() >= self.backlog {
            return Err("too many waiting connect operations");
        }
        let (tx, rx) = oneshot::channel();
        waiters.push_back(tx);
        Ok(rx)
    }

    /// Waits again at the head of the queue: a connect that was woken but
    /// lost the race for what freed up keeps its turn.
    pub fn wait_again(&self) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        self.waiters.borrow_mut().push_front(tx);
        rx
    }

    /// Wakes the longest-waiting connect still waiting.
    fn wake_one(&self) {
        let mut waiters = self.waiters.borrow_mut();
        while let Some(w) = waiters.pop_front() {
            if w.send(()).is_ok() {
                break;
            }
        }
    }

    fn unused(self: &Rc<Self>) -> bool {
        Rc::strong_count(self) == 1 && self.waiters.borrow().is_empty()
    }
}

#[derive(Default)]
pub struct Pools {
    pools: HashMap<PoolKey, VecDeque<Idle>>,
    slots: HashMap<PoolKey, Rc<Slots>>,
}

impl Pools {
    /// The most recently pooled live connection of `key`; dead and expired
    /// ones are closed on the way.
    pub fn take(&mut self, key: &PoolKey) -> Option<Pooled> {
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

    /// Pools `stream` under `key`, for `timeout` (None: no limit), in a pool
    /// of at most `size`, and wakes a connect waiting for this pool.
    pub fn put(&mut self, key: PoolKey, idle: Pooled, timeout: Option<Duration>, size: usize) {
        let now = Instant::now();
        self.prune(now);
        let slots = self.slots.get(&key).cloned();
        let queue = self.pools.entry(key).or_default();
        while queue.len() >= size.max(1) {
            queue.pop_front();
        }
        queue.push_back(Idle {
            conn: idle,
            expires: timeout.map(|t| now + t),
        });
        if let Some(slots) = slots {
            slots.wake_one();
        }
    }

    /// The counting of pool `key`, made by the first connect with a backlog
    /// (whose size and backlog it keeps, as nginx keeps the first
    /// connect's).
    pub fn slots(&mut self, key: &PoolKey, size: usize, backlog: usize) -> Rc<Slots> {
        self.slots.retain(|_, s| !s.unused());
        self.slots
            .entry(key.clone())
            .or_insert_with(|| {
                Rc::new(Slots {
                    size,
                    backlog,
                    open: Cell::new(0),
                    waiters: RefCell::new(VecDeque::new()),
                })
            })
            .clone()
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

/// A connection going into or out of a pool.
pub struct Pooled {
    pub stream: Stream,
    /// Times it was taken from a pool before.
    pub reused: u32,
    /// Its place in a pool that counts connections (`backlog`).
    pub slot: Option<Slot>,
    /// TLS is set up on it (`sslhandshake` succeeded): a reuser's handshake
    /// returns at once, as lua-nginx-module's does for a handshaked connection.
    pub tls: bool,
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

    fn pooled(s: tokio::io::DuplexStream, reused: u32) -> Pooled {
        Pooled {
            stream: Box::new(s),
            reused,
            slot: None,
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
        pools.put(key("r"), pooled(c, 0), None, 10);
        pools.put(key("r"), pooled(b, 1), None, 10);
        pools.put(key("r"), pooled(a, 2), None, 10);
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
            pools.put(key("a"), pooled(s, i), None, 2);
        }
        assert_eq!(pools.len(), 2, "the oldest made room");
        assert!(pools.take(&key("b")).is_none());
        assert_eq!(pools.take(&key("a")).map(|c| (c.reused, c.tls)), Some((2, false)));
        // The TLS flag comes back with its connection.
        assert_eq!(pools.take(&key("a")).map(|c| (c.reused, c.tls)), Some((1, true)));
    }

    #[tokio::test]
    async fn a_backlog_queues_connects_until_a_slot_frees_or_a_connection_is_pooled() {
        let mut pools = Pools::default();
        let slots = pools.slots(&key("r"), 1, 1);
        let first = slots.try_acquire().expect("a free slot");
        assert!(slots.try_acquire().is_none(), "size 1 is taken");
        let mut waiting = slots.wait().expect("room in the backlog");
        assert_eq!(slots.wait().unwrap_err(), "too many waiting connect operations");
        // Pooling the connection keeps its slot and wakes the waiter, which
        // then finds it idle.
        let (s, _peer) = tokio::io::duplex(64);
        let idle = Pooled {
            stream: Box::new(s),
            reused: 0,
            slot: Some(first),
            tls: false,
        };
        pools.put(key("r"), idle, None, 1);
        assert!(waiting.try_recv().is_ok(), "woken by the pooled connection");
        let slot = pools.take(&key("r")).expect("the idle connection").slot;
        assert!(slots.try_acquire().is_none(), "the slot went with it");
        // Closing it frees the slot and wakes the next waiter.
        let mut next = slots.wait().unwrap();
        drop(slot);
        assert!(next.try_recv().is_ok(), "woken by the freed slot");
        assert!(slots.try_acquire().is_some());
    }
}
