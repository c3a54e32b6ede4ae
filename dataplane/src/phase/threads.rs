//! The light threads of one handler run (`ngx.thread.spawn`, `wait`,
//! `kill`): which Lua threads exist, which may run, which wait on I/O, and
//! the results nobody has waited for yet. The driver (`run_handler`)
//! resumes what this table says is ready and feeds back how each resume
//! ended.
//!
//! lua-nginx-module's rules, kept here:
//! - a spawned thread runs first, until it yields; then its parent goes on;
//! - a thread waiting on I/O lets every other thread of the request run;
//! - only a thread's parent may wait on it or kill it, and only once;
//! - the handler ends when the entry thread and every user thread have
//!   ended (an `ngx.exit` or an entry thread error ends it at once: the
//!   driver drops this table, which cancels all parked I/O).
//!
//! Thread 0 is the entry thread.

use std::collections::VecDeque;
use std::task::Poll;

use mlua::{Lua, MultiValue, Thread, Value};

use crate::lua::api::pending::{Answer, Parked};

pub(super) type Id = usize;

pub(super) const ENTRY: Id = 0;

enum State {
    /// In the ready queue, or running now.
    Running,
    /// Its I/O is in `parked`.
    Parked,
    /// In `ngx.thread.wait` on these threads.
    Waiting(Vec<Id>),
    /// Ended; the result is kept for the parent's `wait`.
    Ended(Result<MultiValue, String>),
    /// Waited for or killed.
    Reaped,
}

struct Light {
    co: Thread,
    parent: Option<Id>,
    state: State,
}

/// What `wait` or `kill` answers the caller.
pub(super) enum Verdict {
    /// Resume the caller with these values now.
    Now(MultiValue),
    /// The caller waits.
    Later,
    /// Raise this error in the caller.
    Raise(&'static str),
}

pub(super) struct LightThreads {
    threads: Vec<Light>,
    /// Who runs next, and whether that run is a spawned thread's first one.
    ready: VecDeque<(Id, MultiValue, bool)>,
    parked: Vec<(Id, Parked)>,
    /// The thread the current run started from: not a spawned thread's
    /// first run. A spawned thread that yields hands control back to it.
    root: Id,
}

impl LightThreads {
    pub fn new(entry: Thread) -> LightThreads {
        LightThreads {
            threads: vec![Light {
                co: entry,
                parent: None,
                state: State::Running,
            }],
            ready: VecDeque::from([(ENTRY, MultiValue::new(), false)]),
            parked: Vec::new(),
            root: ENTRY,
        }
    }

    pub fn co(&self, id: Id) -> &Thread {
        &self.threads[id].co
    }

    pub fn next_ready(&mut self) -> Option<(Id, MultiValue)> {
        let (id, values, first_run) = self.ready.pop_front()?;
        if !first_run {
            self.root = id;
        }
        Some((id, values))
    }

    /// `id` goes on now (its op was served in place).
    pub fn resume_now(&mut self, id: Id, values: MultiValue) {
        self.ready.push_front((id, values, false));
    }

    /// `id` goes on after every thread ready now (a plain yield).
    pub fn resume_later(&mut self, id: Id) {
        self.ready.push_back((id, MultiValue::new(), false));
    }

    pub fn park(&mut self, id: Id, op: Parked) {
        self.threads[id].state = State::Parked;
        self.parked.push((id, op));
    }

    pub fn has_parked(&self) -> bool {
        !self.parked.is_empty()
    }

    /// The first parked operation to complete, and whose it is.
    pub async fn next_answer(&mut self) -> (Id, Answer) {
        std::future::poll_fn(|cx| {
            for i in 0..self.parked.len() {
                if let Poll::Ready(answer) = self.parked[i].1.as_mut().poll(cx) {
                    let (id, _) = self.parked.swap_remove(i);
                    return Poll::Ready((id, answer));
                }
            }
            Poll::Pending
        })
        .await
    }

    /// A parked thread's answer arrived.
    pub fn answered(&mut self, id: Id, values: MultiValue) {
        if matches!(self.threads[id].state, State::Parked) {
            self.threads[id].state = State::Running;
            self.ready.push_back((id, values, false));
        }
    }

    /// `parent` spawned `co` with `args`: it runs first; then `parent` goes
    /// on with the thread object as `spawn`'s result, at once if it started
    /// this run, else after the threads ready now (lua-nginx-module returns
    /// to the run's first thread and posts a nested spawner).
    pub fn spawn(&mut self, parent: Id, co: Thread, args: MultiValue) {
        let id = self.threads.len();
        self.threads.push(Light {
            co: co.clone(),
            parent: Some(parent),
            state: State::Running,
        });
        let resumed = (parent, MultiValue::from_vec(vec![Value::Thread(co)]), false);
        if parent == self.root {
            self.ready.push_front(resumed);
        } else {
            self.ready.push_back(resumed);
        }
        self.ready.push_front((id, args, true));
    }

    /// `id` ended with `result`; a parent waiting on it goes on.
    pub fn ended(&mut self, lua: &Lua, id: Id, result: Result<MultiValue, String>) -> mlua::Result<()> {
        self.threads[id].state = State::Ended(result);
        let Some(parent) = self.threads[id].parent else {
            return Ok(());
        };
        if let State::Waiting(on) = &self.threads[parent].state
            && on.contains(&id)
        {
            let values = self.reap(lua, id)?;
            self.threads[parent].state = State::Running;
            self.ready.push_back((parent, values, false));
        }
        Ok(())
    }

    fn find(&self, v: &Value) -> Option<Id> {
        let Value::Thread(t) = v else { return None };
        self.threads.iter().position(|l| l.co.to_pointer() == t.to_pointer())
    }

    /// `wait`'s result for an ended thread, which it reaps: `true, ...` or
    /// `false, err`.
    fn reap(&mut self, lua: &Lua, id: Id) -> mlua::Result<MultiValue> {
        let state = std::mem::replace(&mut self.threads[id].state, State::Reaped);
        // First the thread reaped, which the prelude strips (`coroutine.status`
        // says "zombie" until then).
        let mut out = MultiValue::from_vec(vec![Value::Thread(self.threads[id].co.clone())]);
        match state {
            State::Ended(Ok(values)) => {
                out.push_back(Value::Boolean(true));
                out.extend(values);
            }
            State::Ended(Err(msg)) => {
                out.push_back(Value::Boolean(false));
                out.push_back(Value::String(lua.create_string(msg)?));
            }
            _ => {}
        }
        Ok(out)
    }

    /// `ngx.thread.wait(...)` by `caller` on `targets`.
    pub fn wait(&mut self, lua: &Lua, caller: Id, targets: &[Value]) -> mlua::Result<Verdict> {
        if targets.is_empty() {
            return Ok(Verdict::Raise("at least one coroutine should be specified"));
        }
        let mut ids = Vec::with_capacity(targets.len());
        for t in targets {
            let Some(id) = self.find(t) else {
                return Ok(Verdict::Raise(if matches!(t, Value::Thread(_)) {
                    "only the parent coroutine can wait on the thread"
                } else {
                    "bad argument #1 to 'wait' (coroutine expected)"
                }));
            };
            if id == ENTRY || self.threads[id].parent != Some(caller) {
                return Ok(Verdict::Raise("only the parent coroutine can wait on the thread"));
            }
            if matches!(self.threads[id].state, State::Reaped) {
                return Ok(Verdict::Now(nil_err(lua, "already waited or killed")?));
            }
            ids.push(id);
        }
        if let Some(&done) = ids
            .iter()
            .find(|&&id| matches!(self.threads[id].state, State::Ended(_)))
        {
            return Ok(Verdict::Now(self.reap(lua, done)?));
        }
        self.threads[caller].state = State::Waiting(ids);
        Ok(Verdict::Later)
    }

    /// `ngx.thread.kill(t)` by `caller`: `1`, or `nil, err`.
    pub fn kill(&mut self, lua: &Lua, caller: Id, target: &Value) -> mlua::Result<Verdict> {
        let Some(id) = self.find(target) else {
            return Ok(Verdict::Raise("bad argument #1 to 'kill' (coroutine expected)"));
        };
        if id == ENTRY || self.threads[id].parent != Some(caller) {
            return Ok(Verdict::Now(nil_err(lua, "killer not parent")?));
        }
        match self.threads[id].state {
            State::Reaped => return Ok(Verdict::Now(nil_err(lua, "already waited or killed")?)),
            State::Ended(_) => return Ok(Verdict::Now(nil_err(lua, "already terminated")?)),
            _ => {}
        }
        self.threads[id].state = State::Reaped;
        // Dropping its parked I/O cancels it.
        self.parked.retain(|(p, _)| *p != id);
        self.ready.retain(|(r, _, _)| *r != id);
        let co = Value::Thread(self.threads[id].co.clone());
        Ok(Verdict::Now(MultiValue::from_vec(vec![co, Value::Integer(1)])))
    }
}

/// `nil, msg` after the "no thread reaped" slot.
fn nil_err(lua: &Lua, msg: &str) -> mlua::Result<MultiValue> {
    Ok(MultiValue::from_vec(vec![
        Value::Nil,
        Value::Nil,
        Value::String(lua.create_string(msg)?),
    ]))
}
