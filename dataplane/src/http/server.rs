//! Listeners and connections. Every worker thread gets its own SO_REUSEPORT
//! socket on the listen address and serves its connections with hyper
//! (HTTP/1.1 with keep-alive, and h2c by prior knowledge) on a current-thread
//! runtime, so a request's Lua VM and futures never cross threads.

use std::cell::Cell;
use std::future::Future;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use socket2::{Domain, Protocol, Socket, Type};
use std::task::Poll;

use tokio::sync::{mpsc, watch};

use super::LocalExec;
use crate::error::{Error, Result};
use crate::phase::{self, ConnInfo, Response};
use crate::proxy::endpoints::EndpointTable;
use crate::shdict::DictStore;
use crate::worker::{Control, Settings, Shared, Worker, Workers};

/// Binds `workers` SO_REUSEPORT sockets on `addr` (all on the same port, even
/// for port 0) and starts a worker thread on each.
pub fn start(addr: SocketAddr, settings: Arc<Settings>, dicts: Arc<DictStore>) -> Result<(Workers, SocketAddr)> {
    let listen_err = |source| Error::Listen {
        what: "listen",
        addr: addr.to_string(),
        source,
    };
    // SO_REUSEPORT would let us share a port with another process of the same
    // user without an error; a plain bind first makes "address in use" an error.
    let addr = std::net::TcpListener::bind(addr)
        .and_then(|probe| probe.local_addr())
        .map_err(listen_err)?;
    let first = bind_reuseport(addr).map_err(listen_err)?;
    let bound = first.local_addr().map_err(listen_err)?;
    let mut sockets = vec![first];
    for _ in 1..settings.workers {
        sockets.push(bind_reuseport(bound).map_err(listen_err)?);
    }
    // The port actually bound (the flag may say 0) is never a proxy peer:
    // proxying to itself would loop.
    let settings = {
        let mut s = (*settings).clone();
        s.egress = Arc::new(s.egress.with_own(bound));
        Arc::new(s)
    };
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let endpoints = Arc::new(EndpointTable::default());
    let mut senders = Vec::new();
    let mut threads = Vec::new();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<()>>();
    for (id, socket) in sockets.into_iter().enumerate() {
        let (tx, rx) = mpsc::unbounded_channel();
        senders.push(tx);
        let shared = Shared {
            settings: settings.clone(),
            dicts: dicts.clone(),
            endpoints: endpoints.clone(),
        };
        let shutdown = shutdown_rx.clone();
        let ready = ready_tx.clone();
        let thread = std::thread::Builder::new()
            .name(format!("moongate-worker-{id}"))
            .stack_size(crate::lua::stack::WORKER_STACK)
            .spawn(move || worker_main(id, socket, shared, rx, shutdown, ready))
            .map_err(|source| Error::Listen {
                what: "spawn worker for",
                addr: addr.to_string(),
                source,
            })?;
        threads.push(thread);
    }
    drop(ready_tx);
    for _ in 0..threads.len() {
        ready_rx.recv().map_err(|_| Error::WorkerGone(0))??;
    }
    Ok((Workers::new(senders, shutdown_tx, threads, dicts, endpoints), bound))
}

fn bind_reuseport(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_tcp_nodelay(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

fn worker_main(
    id: usize,
    socket: std::net::TcpListener,
    shared: Shared,
    mut control: mpsc::UnboundedReceiver<Control>,
    mut shutdown: watch::Receiver<bool>,
    ready: std::sync::mpsc::Sender<Result<()>>,
) {
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(source) => {
            let _ = ready.send(Err(Error::Listen {
                what: "runtime for",
                addr: format!("worker {id}"),
                source,
            }));
            return;
        }
    };
    let _watched = crate::lua::watchdog::watch_this_thread();
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let settings = shared.settings.clone();
        let worker = match Worker::new(id, shared) {
            Ok(w) => Rc::new(w),
            Err(e) => {
                let _ = ready.send(Err(e));
                return;
            }
        };
        let listener = match tokio::net::TcpListener::from_std(socket) {
            Ok(l) => l,
            Err(source) => {
                let _ = ready.send(Err(Error::Listen { what: "listen", addr: format!("worker {id}"), source }));
                return;
            }
        };
        let _ = ready.send(Ok(()));
        tokio::task::spawn_local(worker.sched.clone().dispatch());
        let active = Rc::new(Cell::new(0usize));
        let (idle_tx, mut idle_rx) = watch::channel(());
        // Control messages run in their own task, one after another, so the
        // worker keeps accepting while a config's init code runs (it is
        // preemptible). Its end (the control thread is gone) ends the worker.
        let (handled_tx, mut handled) = watch::channel(());
        tokio::task::spawn_local({
            let worker = worker.clone();
            async move {
                while let Some(msg) = control.recv().await {
                    worker.handle(msg).await;
                    let _ = handled_tx.send(());
                    // Let work the new config started (0 ms timers from
                    // init_worker) run before the next message.
                    tokio::task::yield_now().await;
                }
            }
        });
        loop {
            tokio::select! {
                // A config may have been committed: `serving` is read again.
                changed = handled.changed() => if changed.is_err() { break },
                // Accept only once the first config is committed.
                accepted = listener.accept(), if worker.serving() => match accepted {
                    Ok((stream, remote)) => {
                        let _ = stream.set_nodelay(true);
                        let local = stream.local_addr().unwrap_or(remote);
                        let conn = ConnInfo { remote, local };
                        active.set(active.get() + 1);
                        let guard = ActiveGuard { active: active.clone(), idle: idle_tx.clone() };
                        tokio::task::spawn_local(serve_connection(worker.clone(), stream, conn, shutdown.clone(), guard));
                    }
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(worker = id, "accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                _ = shutdown.changed() => break,
            }
        }
        drop(listener);
        crate::context::set_exiting();
        worker.timers.shutdown();
        let deadline = tokio::time::sleep(settings.shutdown_timeout);
        tokio::pin!(deadline);
        while active.get() > 0 || worker.timers.active() > 0 {
            tokio::select! {
                _ = idle_rx.changed() => {}
                _ = tokio::time::sleep(Duration::from_millis(10)), if active.get() == 0 => {}
                _ = &mut deadline => {
                    tracing::warn!(worker = id, connections = active.get(), "shutdown deadline reached; closing connections");
                    break;
                }
            }
        }
    });
}

struct ActiveGuard {
    active: Rc<Cell<usize>>,
    idle: watch::Sender<()>,
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.active.set(self.active.get() - 1);
        let _ = self.idle.send(());
    }
}

/// The connection was closed on purpose (`ngx.exit(444)`).
#[derive(Debug)]
struct Closed;

impl std::fmt::Display for Closed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection closed by handler")
    }
}

impl std::error::Error for Closed {}

async fn serve_connection(
    worker: Rc<Worker>,
    stream: tokio::net::TcpStream,
    conn: ConnInfo,
    mut shutdown: watch::Receiver<bool>,
    _guard: ActiveGuard,
) {
    let settings = worker.settings.clone();
    let service = service_fn(move |req: http::Request<Incoming>| {
        let worker = worker.clone();
        async move {
            // The lifecycle runs inline until the response head is ready; if it
            // still has work then (streaming a body), the rest of it moves to
            // its own task so the head can go out now.
            let slot = phase::HeadSlot::default();
            let mut lifecycle = Box::pin(phase::run(worker, req, conn, slot.clone()));
            let head = std::future::poll_fn(|cx| {
                let done = lifecycle.as_mut().poll(cx).is_ready();
                match slot.take() {
                    Some(head) => Poll::Ready(Some((head, done))),
                    None if done => Poll::Ready(None),
                    None => Poll::Pending,
                }
            })
            .await;
            match head {
                Some((head, done)) => {
                    if !done {
                        tokio::task::spawn_local(lifecycle);
                    }
                    Ok::<Response, Closed>(head)
                }
                None => Err(Closed),
            }
        }
    });
    let mut builder = auto::Builder::new(LocalExec);
    builder
        .http1()
        .keep_alive(true)
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(60))
        .max_buf_size(settings.max_header.max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(settings.max_header as u32);
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
    tokio::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => log_conn_error(result),
        _ = shutdown.changed() => {
            connection.as_mut().graceful_shutdown();
            log_conn_error(connection.await);
        }
    }
}

fn log_conn_error(result: std::result::Result<(), Box<dyn std::error::Error + Send + Sync>>) {
    if let Err(e) = result {
        tracing::debug!("connection ended: {e}");
    }
}
