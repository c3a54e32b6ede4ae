//! `moongate.durable`: the sequence numbers of durable writes (see
//! `shdict::seq`), and waiting for their commit.
//!
//! In route code:
//! - `moongate.durable.last_seq()`: the sequence number of the latest durable
//!   write (durable dict change, durable timer create/complete) this worker
//!   made, 0 if none. Read right after a write, before anything yields, it
//!   is that write's number; after a sync write (which yields, so other
//!   requests may write meanwhile) it is that sync write's number.
//! - `moongate.durable.committed_seq()`: the committed watermark: every
//!   durable write numbered at or below it is in a completed commit.
//! - `moongate.durable.sync()`: waits until every durable write made so far,
//!   on any worker, is committed; returns the watermark, or `nil, err` when
//!   the commit failed, the store closed, or there is no data dir. Yields
//!   like `ngx.sleep`, so only where that may: rewrite, access, content and
//!   timers; elsewhere it raises "API disabled in the context of …".
//!
//! The `{sync = true}` option of the dict writes (`shared.lua`) uses the same
//! two steps: a Rust primitive makes a ticket ([`Ticket`], after the write,
//! so it covers it), a Lua function yields `(marker, OP_DURABLE_SYNC,
//! ticket)` to the driver, and the driver ([`wait`]) awaits the watermark —
//! a `tokio::sync::watch`, no polling — and resumes the coroutine with
//! `true, watermark` or `false, message`.
//!
//! Tenancy: the functions hold no state of their own; each route gets a new
//! `moongate.durable` table, and the Lua wrappers run with an empty
//! environment, so `getfenv` on them reveals nothing.

use std::sync::Arc;

use mlua::{Function, Lua, MultiValue, Table, UserData, Value};

use super::OP_DURABLE_SYNC;
use crate::shdict::{DictStore, SyncTicket, seq};

/// Registry slot of the function that yields a ticket to the driver.
const AWAIT_KEY: &str = "moongate.durable.await";

/// A pending wait, handed to the driver through the yield.
pub struct Ticket(pub SyncTicket);

impl UserData for Ticket {}

/// Per VM, in `api::build` (before any user code runs): the Lua function
/// `await(ticket)` that yields a ticket to the driver and returns its
/// answer.
pub fn register(lua: &Lua, yield_marker: &Table) -> mlua::Result<()> {
    let coroutine: Table = lua.globals().get("coroutine")?;
    let co_yield: Function = coroutine.get("yield")?;
    let wait: Function = lua
        .load("local yield, YIELD, OP = ...\nreturn function(ticket) return yield(YIELD, OP, ticket) end")
        .set_name("=moongate.durable")
        .set_environment(lua.create_table()?)
        .call((co_yield, yield_marker.clone(), OP_DURABLE_SYNC))?;
    lua.set_named_registry_value(AWAIT_KEY, wait)
}

/// `await(ticket)` (see `register`).
pub fn await_function(lua: &Lua) -> mlua::Result<Function> {
    lua.named_registry_value(AWAIT_KEY)
}

/// The driver's side of `OP_DURABLE_SYNC`: awaits the ticket and returns
/// what the yield returns in Lua, `true, watermark` or `false, message`.
pub async fn wait(lua: &Lua, ticket: Option<Value>) -> MultiValue {
    let ticket = match ticket {
        Some(Value::UserData(ud)) => ud.take::<Ticket>().ok(),
        _ => None,
    };
    let outcome = match ticket {
        Some(Ticket(ticket)) => ticket.wait().await.map_err(|e| e.to_string()),
        None => Err("bad sync ticket".to_string()),
    };
    let mut values = MultiValue::new();
    match outcome {
        Ok(committed) => {
            values.push_back(Value::Boolean(true));
            values.push_back(Value::Number(committed as f64));
        }
        Err(message) => {
            values.push_back(Value::Boolean(false));
            // Creating a short string only fails out of memory; then nil.
            values.push_back(lua.create_string(message).map_or(Value::Nil, Value::String));
        }
    }
    values
}

/// The functions of `moongate.durable`, created once per VM.
pub struct Api {
    last_seq: Function,
    committed_seq: Function,
    ticket: Function,
    wait: Function,
}

impl Api {
    pub fn new(lua: &Lua, dicts: &Arc<DictStore>) -> mlua::Result<Api> {
        let last_seq = lua.create_function(|_, ()| Ok(seq::last_on_thread() as f64))?;
        let committed = dicts.sequencer().cloned();
        let committed_seq =
            lua.create_function(move |_, ()| Ok(committed.as_ref().map_or(0.0, |s| s.committed() as f64)))?;
        let sequencer = dicts.sequencer().cloned();
        let ticket = lua.create_function(move |lua, ()| {
            super::check_may_yield("moongate.durable.sync")?;
            match &sequencer {
                Some(seq) => Ok((Some(lua.create_userdata(Ticket(seq.ticket()))?), None)),
                None => Ok((None, Some("durable writes are not persisted: no data dir"))),
            }
        })?;
        Ok(Api {
            last_seq,
            committed_seq,
            ticket,
            wait: await_function(lua)?,
        })
    }

    /// Per route, in `Vm::load`: sets `moongate.durable` in `env` (after
    /// `DurableTimers::install` made `moongate`).
    pub fn install(&self, lua: &Lua, env: &Table) -> mlua::Result<()> {
        let sync: Function = lua
            .load(
                "local ticket, await = ...\n\
                 return function()\n\
                   local t, err = ticket()\n\
                   if not t then return nil, err end\n\
                   local ok, res = await(t)\n\
                   if ok then return res end\n\
                   return nil, res\n\
                 end",
            )
            .set_name("=moongate.durable")
            .set_environment(lua.create_table()?)
            .call((self.ticket.clone(), self.wait.clone()))?;
        let durable = lua.create_table()?;
        durable.set("last_seq", self.last_seq.clone())?;
        durable.set("committed_seq", self.committed_seq.clone())?;
        durable.set("sync", sync)?;
        let moongate: Table = env.raw_get("moongate")?;
        moongate.set("durable", durable)
    }
}
