//! CPU fairness between the routes on one worker.
//!
//! Lua that runs past a slice is yielded by the count hook (`lua::budget`);
//! its execution (request, subrequest tree or timer run) is then *demoted*:
//! from there on each of its handler runs and resumes waits in this worker's
//! **background lane**. The lane releases one waiting slice at a time, and
//! holds the background to one part in `FOREGROUND_SHARE + 1` of the worker
//! while others are being served: each slice moves a virtual clock on by
//! `FOREGROUND_SHARE + 1` times its length, and the next slice waits until
//! the clock is less than [`TICK`] ahead of now (the timer's granularity; a
//! tick's worth of tiny slices may run back to back). Once no foreground
//! work has run for [`QUIET`], slices follow freely. So a CPU-bound handler
//! gets the whole worker when nothing else runs, and its share while others
//! run, however many such handlers there are. Foreground work of an
//! execution that has a slice waiting is not "others": a subrequest tree
//! cannot hold its own branches back. (Releasing whenever the scheduler has
//! nothing ready hands the background far more: between two requests of a
//! busy client the worker is briefly idle, and that CPU is the client's.)
//!
//! A route whose code was aborted for CPU (budget or unpreemptible stretch)
//! is **penalized** for [`PENALTY`]: its handlers start in the background
//! lane, so a stream of hostile requests cannot keep taking the foreground.
//!
//! Timers draw on a **per-route bucket**: a route's timers together may spend
//! at most its budget at once, refilled at its budget per [`REFILL`], so a
//! timer that sleeps between bursts cannot burn CPU forever.
//!
//! **Where the state lives.** One [`Sched`] per worker, created by the
//! worker when it starts (`Worker::sched`) and handed on explicitly as an
//! `Rc`: to its VMs (for `init`/`init_worker` code), to its timers (through
//! `lua::api::timer::Timers` and `durable_timer::DurableTimers`) and to the
//! requests it serves. Nothing here is ambient, and this module imports none
//! of its users.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::time::{Duration, Instant};

use tokio::sync::{Notify, oneshot};

/// The foreground's share of the worker against one background slice.
pub const FOREGROUND_SHARE: u32 = 9;
/// How long the foreground must be quiet for the worker to count as idle.
pub const QUIET: Duration = Duration::from_millis(10);
/// The dispatcher's timer granularity: how far the background's virtual
/// clock may run ahead of now.
const TICK: Duration = Duration::from_millis(1);
/// How long a route aborted for CPU starts its handlers in the background.
pub const PENALTY: Duration = Duration::from_secs(1);
/// A route's timers regain their whole budget over this time.
pub const REFILL: Duration = Duration::from_secs(10);

/// The background lane and CPU state of one worker.
#[derive(Default)]
pub struct Sched {
    /// Waiting slices (and the execution each belongs to), oldest first.
    queue: RefCell<VecDeque<(u64, oneshot::Sender<()>)>>,
    /// How many slices of each execution are in `queue`: asked at every
    /// foreground resume, so it must not cost a walk of a queue that
    /// hostile requests can make long.
    waiting: RefCell<HashMap<u64, usize>>,
    /// Bumped whenever foreground work runs for an execution with no slice
    /// waiting: only that is someone else being served. (A subrequest tree
    /// whose other branches wait in the lane is not.)
    progress: Cell<u64>,
    /// A released slice has not finished yet.
    busy: Cell<bool>,
    /// Wakes the dispatcher: a slice was queued or finished.
    wake: Notify,
    /// The background's virtual clock: where its slices so far would end if
    /// each had taken `FOREGROUND_SHARE + 1` times its length.
    clock: Cell<Option<Instant>>,
    penalized: RefCell<HashMap<Rc<str>, Instant>>,
    buckets: RefCell<HashMap<Rc<str>, Bucket>>,
}

/// A running background slice; dropping it ends the slice.
pub struct Slice {
    sched: Rc<Sched>,
    started: Instant,
}

impl Drop for Slice {
    fn drop(&mut self) {
        let took = self.started.elapsed();
        let from = self.sched.clock.get().map_or(self.started, |c| c.max(self.started));
        self.sched.clock.set(Some(from + took * (FOREGROUND_SHARE + 1)));
        self.sched.busy.set(false);
        self.sched.wake.notify_one();
    }
}

struct Bucket {
    tokens: u64,
    updated: Instant,
}

impl Sched {
    /// Foreground work of `execution` (an account id; 0 for a request
    /// before it runs any Lua) is about to run.
    pub fn foreground(&self, execution: u64) {
        if !self.waiting.borrow().contains_key(&execution) {
            self.progress.set(self.progress.get().wrapping_add(1));
        }
    }

    /// Waits for this worker's next background slice, for `execution`.
    pub async fn background(self: &Rc<Self>, execution: u64) -> Slice {
        let (tx, rx) = oneshot::channel();
        self.queue.borrow_mut().push_back((execution, tx));
        *self.waiting.borrow_mut().entry(execution).or_default() += 1;
        self.wake.notify_one();
        // The dispatcher never drops a sender without sending.
        let _ = rx.await;
        Slice {
            sched: self.clone(),
            started: Instant::now(),
        }
    }

    /// Releases background slices, one at a time; runs for the worker's life.
    pub async fn dispatch(self: Rc<Self>) {
        // The foreground progress last seen, and when it last moved.
        let mut seen = self.progress.get();
        let mut active_at = Instant::now();
        loop {
            if self.busy.get() || self.queue.borrow().is_empty() {
                self.wake.notified().await;
                continue;
            }
            let now = Instant::now();
            if self.progress.get() != seen {
                seen = self.progress.get();
                active_at = now;
            }
            let quiet = now - active_at >= QUIET;
            if quiet {
                // An idle worker's CPU is no one's: it leaves no debt.
                self.clock.set(None);
            } else if let Some(due) = self
                .clock
                .get()
                .and_then(|c| c.checked_sub(TICK))
                .filter(|due| *due > now)
            {
                tokio::time::sleep_until(due.into()).await;
                continue;
            }
            while let Some((execution, tx)) = self.queue.borrow_mut().pop_front() {
                let mut waiting = self.waiting.borrow_mut();
                if let Some(n) = waiting.get_mut(&execution) {
                    *n -= 1;
                    if *n == 0 {
                        waiting.remove(&execution);
                    }
                }
                drop(waiting);
                // A waiter whose request went away is skipped.
                if tx.send(()).is_ok() {
                    self.busy.set(true);
                    break;
                }
            }
        }
    }

    /// Records that `route`'s code was aborted for CPU.
    pub fn penalize(&self, route: &Rc<str>) {
        self.penalized
            .borrow_mut()
            .insert(route.clone(), Instant::now() + PENALTY);
    }

    /// Whether `route`'s handlers must start in the background lane.
    pub fn is_penalized(&self, route: &str) -> bool {
        let mut penalized = self.penalized.borrow_mut();
        match penalized.get(route) {
            Some(until) if Instant::now() < *until => true,
            Some(_) => {
                penalized.remove(route);
                false
            }
            None => false,
        }
    }

    /// What `route`'s timers may still spend now, out of `budget`.
    pub fn timer_allowance(&self, route: &Rc<str>, budget: u64) -> u64 {
        let mut buckets = self.buckets.borrow_mut();
        let bucket = buckets.entry(route.clone()).or_insert(Bucket {
            tokens: budget,
            updated: Instant::now(),
        });
        let elapsed = bucket.updated.elapsed();
        let refill = (budget as f64 * elapsed.as_secs_f64() / REFILL.as_secs_f64()) as u64;
        if refill > 0 {
            bucket.tokens = bucket.tokens.saturating_add(refill).min(budget);
            bucket.updated = Instant::now();
        }
        bucket.tokens
    }

    /// Takes `spent` from `route`'s timer bucket.
    pub fn timer_spent(&self, route: &Rc<str>, spent: u64) {
        if let Some(bucket) = self.buckets.borrow_mut().get_mut(route) {
            bucket.tokens = bucket.tokens.saturating_sub(spent);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn background_slices_run_one_at_a_time_in_order() {
        let local = tokio::task::LocalSet::new();
        local
            .run_until(async {
                let sched = Rc::new(Sched::default());
                tokio::task::spawn_local(sched.clone().dispatch());
                let order = Rc::new(RefCell::new(Vec::new()));
                let mut tasks = Vec::new();
                for i in 0..3 {
                    let (sched, order) = (sched.clone(), order.clone());
                    tasks.push(tokio::task::spawn_local(async move {
                        let slice = sched.background(i).await;
                        assert!(sched.busy.get(), "a released slice is the only one running");
                        order.borrow_mut().push(i);
                        tokio::task::yield_now().await;
                        drop(slice);
                    }));
                }
                for t in tasks {
                    t.await.unwrap();
                }
                assert_eq!(*order.borrow(), vec![0, 1, 2]);
            })
            .await;
    }

    #[test]
    fn only_executions_with_no_waiting_slice_count_as_foreground() {
        let sched = Rc::new(Sched::default());
        let (tx, _rx) = oneshot::channel();
        sched.queue.borrow_mut().push_back((7, tx));
        sched.waiting.borrow_mut().insert(7, 1);
        let before = sched.progress.get();
        sched.foreground(7);
        assert_eq!(
            sched.progress.get(),
            before,
            "a waiting execution's own work is not someone else's turn"
        );
        sched.foreground(8);
        assert_ne!(sched.progress.get(), before);
    }

    #[test]
    fn a_timer_bucket_empties_and_does_not_exceed_its_budget() {
        let sched = Sched::default();
        let route: Rc<str> = Rc::from("a/b");
        assert_eq!(sched.timer_allowance(&route, 1000), 1000);
        sched.timer_spent(&route, 600);
        assert!(sched.timer_allowance(&route, 1000) <= 1000);
        sched.timer_spent(&route, 1000);
        assert!(sched.timer_allowance(&route, 1000) < 1000);
    }

    #[test]
    fn penalties_name_a_route() {
        let sched = Sched::default();
        let a: Rc<str> = Rc::from("a/x");
        sched.penalize(&a);
        assert!(sched.is_penalized("a/x"));
        assert!(!sched.is_penalized("b/y"));
    }
}
