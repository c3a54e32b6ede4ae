//! Crash test for durable shared dicts and timers, stated in commits, not in
//! milliseconds: a real dataplane under a write load is killed with SIGKILL
//! after a random number of acknowledged writes, again and again, and
//! restarted on the same data directory — all while busy-loop threads load
//! every core, because the promise must hold on a loaded machine.
//!
//! Every acknowledged write carries its sequence number (the handler puts
//! `moongate.durable.last_seq()` in `X-Seq`). After each restart the
//! dataplane reports the sequence number it recovered from the file (the cut
//! of the last completed commit, `GET /durable` → `recovered`), and that
//! number splits the killed process's writes:
//! - every acknowledged write numbered at or below it is present, with its
//!   value (the promise: a write is lost only if it was in no completed
//!   commit);
//! - writes above it may be present or lost: a commit reads the current value
//!   of each changed key, so writes that landed while it was reading ride
//!   along. The design does not promise "none above"; the test counts them;
//! - every write made with `{sync = true}` is at or below it (its
//!   acknowledgement waited for its commit);
//! - the recovered number never goes down, and the file opens cleanly (no
//!   corrupt-store count, no "corrupt" log line).
//!
//! Durable timers created along the way whose creation is at or below the
//! next recovered number all fire after the restarts (the number that fired
//! twice — possible only when a kill came before the commit of their
//! completion — is printed).
//!
//! There are no wall-clock bounds: the kill comes after a count of
//! acknowledgements, and waits are for events (a response, a log line, a
//! fired timer), their timeouts only guarding against a hang.
//! `MOONGATE_CRASH_ROUNDS` sets the number of kills (default 200: about a
//! minute on the 2-core CI machine, under the hog).

mod common;

use std::io::{BufReader, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{Response, Server, read_response, route};

fn rounds() -> usize {
    std::env::var("MOONGATE_CRASH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200)
}

/// A tiny deterministic PRNG (xorshift), so a failing round can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Busy-loop threads, one per core, until dropped (also on a panic).
struct CpuHog {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<u64>>,
}

impl CpuHog {
    fn start() -> CpuHog {
        let stop = Arc::new(AtomicBool::new(false));
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let threads = (0..cores)
            .map(|i| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mut x = i as u64 + 1;
                    while !stop.load(Ordering::Relaxed) {
                        for _ in 0..10_000 {
                            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
                        }
                    }
                    x
                })
            })
            .collect();
        CpuHog { stop, threads }
    }
}

impl Drop for CpuHog {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// One acknowledged request of the writer.
enum Ack {
    Write { key: u64, seq: u64, sync: bool },
    Timer { id: u64, seq: u64 },
}

fn seq_of(r: &Response) -> u64 {
    r.header("x-seq")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no X-Seq in {r:?}"))
}

/// A number field of the admin's `/durable` JSON.
fn durable_field(s: &Server, name: &str) -> u64 {
    let text = s.admin_get("/durable").text();
    let key = format!("\"{name}\":");
    let at = text.find(&key).unwrap_or_else(|| panic!("no {name} in {text}")) + key.len();
    text[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .unwrap_or_else(|_| panic!("bad {name} in {text}"))
}

fn corrupt_count(s: &Server) -> u64 {
    let text = s.admin_get("/metrics").text();
    text.lines()
        .find_map(|l| l.strip_prefix("moongate_shared_dict_store_corrupt_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no corrupt-store counter in\n{text}"))
}

/// Writes keys from `first` on one keep-alive connection until the server
/// goes away, sending each acknowledgement; every 16th key also creates a
/// durable timer, every 32nd is written with `{sync = true}`.
fn write_until_killed(addr: String, first: u64, timer_ms: Vec<u64>, acks: mpsc::Sender<Ack>) -> u64 {
    let Ok(stream) = TcpStream::connect(&addr) else {
        return first;
    };
    stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    stream.set_nodelay(true).unwrap();
    let mut conn = BufReader::new(stream);
    let mut request = |path: String| -> Option<Response> {
        conn.get_mut()
            .write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .ok()?;
        read_response(&mut conn).ok()
    };
    let mut key = first;
    loop {
        if key.is_multiple_of(16) {
            let ms = timer_ms[(key / 16) as usize % timer_ms.len()];
            let Some(r) = request(format!("/timer?id={key}&ms={ms}")) else {
                return key;
            };
            assert_eq!(r.text(), "ok", "timer {key} was refused");
            let _ = acks.send(Ack::Timer {
                id: key,
                seq: seq_of(&r),
            });
        }
        let sync = key.is_multiple_of(32);
        let Some(r) = request(format!("/w?k={key}&sync={}", if sync { 1 } else { 0 })) else {
            return key;
        };
        assert_eq!(r.text(), "ok", "write {key} failed");
        if acks
            .send(Ack::Write {
                key,
                seq: seq_of(&r),
                sync,
            })
            .is_err()
        {
            return key;
        }
        key += 1;
    }
}

#[test]
fn acknowledged_durable_writes_survive_repeated_kill_9_up_to_the_committed_watermark() {
    let started = Instant::now();
    let _hog = CpuHog::start();
    let data = tempfile::tempdir().unwrap();
    let data_dir = data.path().to_str().unwrap().to_string();
    let yaml = route(
        "crash",
        "  sharedDicts:
  - {name: log, capacity: 512Mi, persistence: Durable}
  modules:
    jobs: |
      local M = {}
      function M.run(premature, id) ngx.shared.log:incr('fired:' .. id, 1, 0) end
      return M
  locations:
  - path: /w
    content: |
      local k = ngx.var.arg_k
      local opts = ngx.var.arg_sync == '1' and {sync = true} or nil
      local ok, err, forcible = ngx.shared.log:set(k, tonumber(k), 0, 0, opts)
      ngx.header['X-Seq'] = moongate.durable.last_seq()
      ngx.print(ok and not forcible and 'ok' or ('failed: ' .. tostring(err) .. ' forcible=' .. tostring(forcible)))
  - path: /g
    content: ngx.print(tostring(ngx.shared.log:get(ngx.var.arg_k)))
  - path: /timer
    content: |
      assert(moongate.timer.at_durable(tonumber(ngx.var.arg_ms) / 1000, 'jobs.run', ngx.var.arg_id))
      ngx.header['X-Seq'] = moongate.durable.last_seq()
      ngx.print('ok')
",
    );
    let start = || {
        Server::builder(&yaml)
            .durable(&data_dir)
            .arg("--admin")
            .arg("127.0.0.1:0")
            .start()
    };
    let mut rng = Rng(0x5eed_1234_abcd_9876);
    // Acknowledged writes of the killed process: (key, seq, sync).
    let mut last_round: Vec<(u64, u64, bool)> = Vec::new();
    // Durable timers of the killed process: (id, creation seq).
    let mut round_timers: Vec<(u64, u64)> = Vec::new();
    // Durable timers whose creation was committed: they must fire.
    let mut guaranteed_timers: Vec<u64> = Vec::new();
    let mut verified: Vec<u64> = Vec::new();
    let (mut at_or_below, mut above_kept, mut above_lost, mut synced) = (0usize, 0usize, 0usize, 0usize);
    let mut recovered_before = 0u64;
    let mut killed_logs = String::new();
    let mut next_key = 1u64;
    for round in 0..rounds() {
        let mut s = start();
        let recovered = durable_field(&s, "recovered");
        assert!(
            recovered >= recovered_before,
            "round {round}: the recovered sequence went down from {recovered_before} to {recovered}"
        );
        recovered_before = recovered;
        assert_eq!(
            corrupt_count(&s),
            0,
            "round {round}: the store did not open cleanly:\n{}",
            s.logs()
        );
        assert!(!s.logs().contains("corrupt"), "round {round}:\n{}", s.logs());

        let mut conn = BufReader::new(s.connect());
        let mut get = |k: String| -> String {
            conn.get_mut()
                .write_all(format!("GET /g?k={k} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
                .unwrap();
            read_response(&mut conn).unwrap().text()
        };
        // The killed process's writes, split by the recovered cut.
        for &(k, seq, sync) in &last_round {
            let got = get(k.to_string());
            if sync {
                assert!(
                    seq <= recovered,
                    "round {round}: sync write {k} (#{seq}) was acknowledged, yet the last commit is #{recovered}"
                );
                synced += 1;
            }
            if seq <= recovered {
                assert_eq!(
                    got,
                    k.to_string(),
                    "round {round}: write {k} is #{seq}, at or below the recovered commit #{recovered}, but lost; \
                     the killed process logged:\n{killed_logs}"
                );
                at_or_below += 1;
                verified.push(k);
            } else if got == "nil" {
                above_lost += 1;
            } else {
                assert_eq!(
                    got,
                    k.to_string(),
                    "round {round}: write {k} came back with another value"
                );
                above_kept += 1;
                verified.push(k);
            }
        }
        // A timer is stored exactly when its creation's number is committed.
        guaranteed_timers.extend(
            round_timers
                .drain(..)
                .filter(|&(_, seq)| seq <= recovered)
                .map(|(id, _)| id),
        );
        // A sample of older writes, each verified after an earlier crash, is still here.
        for _ in 0..verified.len().min(20) {
            let k = verified[(rng.next() % verified.len() as u64) as usize];
            assert_eq!(
                get(k.to_string()),
                k.to_string(),
                "round {round}: key {k}, verified earlier, was lost by a later crash"
            );
        }

        // Write from another thread; kill -9 after a random number of acknowledgements.
        last_round.clear();
        let kill_after = 40 + (rng.next() % 160) as usize;
        let timer_ms: Vec<u64> = (0..8).map(|_| rng.next() % 300).collect();
        let (tx, rx) = mpsc::channel();
        let writer = std::thread::spawn({
            let (addr, first) = (s.addr(), next_key);
            move || write_until_killed(addr, first, timer_ms, tx)
        });
        let mut writes = 0usize;
        while writes < kill_after {
            match rx.recv_timeout(Duration::from_secs(120)) {
                Ok(Ack::Write { key, seq, sync }) => {
                    last_round.push((key, seq, sync));
                    writes += 1;
                }
                Ok(Ack::Timer { id, seq }) => round_timers.push((id, seq)),
                Err(e) => panic!("round {round}: the writer stopped ({e}):\n{}", s.logs()),
            }
        }
        s.signal(libc::SIGKILL);
        let _ = s.wait_exit(Duration::from_secs(30));
        killed_logs = s.logs();
        // What the writer got acknowledged before the connection died counts too.
        next_key = writer.join().expect("writer") + 1;
        for ack in rx.try_iter() {
            match ack {
                Ack::Write { key, seq, sync } => last_round.push((key, seq, sync)),
                Ack::Timer { id, seq } => round_timers.push((id, seq)),
            }
        }
    }
    assert!(at_or_below > rounds(), "too few writes were checked ({at_or_below})");
    assert!(synced > 0, "no sync write was checked");

    // Every durable timer whose creation was committed fires after the restarts.
    let s = start();
    let recovered = durable_field(&s, "recovered");
    // The last kill's writes were checked above for every round but this one.
    for &(k, seq, _) in &last_round {
        if seq <= recovered {
            assert_eq!(
                s.get(&format!("/g?k={k}")).text(),
                k.to_string(),
                "last round: write {k} (#{seq}) lost"
            );
        }
    }
    guaranteed_timers.extend(
        round_timers
            .iter()
            .filter(|&&(_, seq)| seq <= recovered)
            .map(|&(id, _)| id),
    );
    let mut conn = BufReader::new(s.connect());
    let mut fired = |id: u64| -> String {
        let req = format!("GET /g?k=fired:{id} HTTP/1.1\r\nHost: x\r\n\r\n");
        conn.get_mut().write_all(req.as_bytes()).unwrap();
        read_response(&mut conn).unwrap().text()
    };
    let mut twice = 0;
    for &id in &guaranteed_timers {
        // Re-armed timers fire at once; the timeout only guards a hang.
        let count = common::wait_for(Duration::from_secs(120), || {
            let count = fired(id);
            (count != "nil").then_some(count)
        });
        let count =
            count.unwrap_or_else(|| panic!("durable timer {id}, stored by a commit, never fired:\n{}", s.logs()));
        twice += usize::from(count != "1");
    }
    assert!(!guaranteed_timers.is_empty(), "no durable timer was checked");
    eprintln!(
        "{} kills in {:.0?} under a CPU hog; {next_key} writes; after each restart {at_or_below} acknowledged writes \
         at or below the recovered commit were all present ({synced} of them sync writes), above it {above_kept} \
         were present (rode along) and {above_lost} lost; {} durable timers stored by a commit all fired, {twice} twice",
        rounds(),
        started.elapsed(),
        guaranteed_timers.len()
    );
}
