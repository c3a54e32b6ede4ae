//! The results table and verdict, and the formatting of durations and sizes.

use std::time::Duration;

use crate::Args;
use crate::bench::Results;

impl Results {
    pub(crate) fn print(&self, args: &Args, snapshot_bytes: usize) {
        let n = args.streams;
        println!();
        println!(
            "| measurement ({n} streams, {} routes) | rounds | median | max | last client Ack sent (median) | controller CPU (median) | dataplanes CPU (median) | worst scheduling delay, controller / dataplanes runtime | pushed per round |",
            args.routes
        );
        println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
        let connect = stats(&self.connect);
        println!(
            "| connect {n} streams + Hello (until fleet.len() == {n}) | {} | {} | {} | | | | | |",
            self.connect.len(),
            ms(connect.0),
            ms(connect.1)
        );
        for (name, rounds, size) in [
            (
                "full snapshot to all (until all acked, per fleet)",
                &self.snapshot,
                snapshot_bytes,
            ),
            (
                "one-route delta to all (until all acked, per fleet)",
                &self.delta,
                self.delta_bytes,
            ),
        ] {
            let fleet = stats(&rounds.iter().map(|r| r.fleet).collect::<Vec<_>>());
            let client = stats(&rounds.iter().map(|r| r.client).collect::<Vec<_>>());
            let ctl = median_f64(rounds.iter().map(|r| r.controller_cpu).collect());
            let dp = median_f64(rounds.iter().map(|r| r.dataplane_cpu).collect());
            let ctl_lag = rounds.iter().map(|r| r.controller_lag).max().unwrap_or_default();
            let dp_lag = rounds.iter().map(|r| r.dataplane_lag).max().unwrap_or_default();
            println!(
                "| {name} | {} | {} | {} | {} | {:.2} s | {:.2} s | {} / {} | {} x {n} = {} |",
                rounds.len(),
                ms(fleet.0),
                ms(fleet.1),
                ms(client.0),
                ctl,
                dp,
                ms(ctl_lag),
                ms(dp_lag),
                bytes(size),
                bytes(size * n)
            );
        }
        println!();
        println!(
            "Timed from latest.send_replace(v) until fleet.dataplanes() shows all {n} on v. Each snapshot round \
             reconnects every stream (a new stream starts with a snapshot) and publishes only once all have said Hello; \
             delta rounds change one route and run on the last snapshot round's streams."
        );
        println!();
        println!(
            "Per round: all acked (fleet-confirmed) [when the 1st / 50% / 90% / 99% of streams had sent their Ack]:"
        );
        for (name, rounds) in [("snapshot", &self.snapshot), ("delta", &self.delta)] {
            let list: Vec<String> = rounds
                .iter()
                .map(|r| {
                    let at = |q: f64| ms(r.acks[((r.acks.len() - 1) as f64 * q) as usize]);
                    format!(
                        "{} [{} / {} / {} / {}]",
                        ms(r.fleet),
                        at(0.0),
                        at(0.5),
                        at(0.9),
                        at(0.99)
                    )
                })
                .collect();
            println!("- {name}: {}", list.join("; "));
        }
        println!();
        println!(
            "Published::new (once per version: hashes every route; not in the times above): {}",
            us(self.publish)
        );
        println!();
        let worst = stats(&self.delta.iter().map(|r| r.fleet).collect::<Vec<_>>()).1;
        let scope = if n == 1000 {
            String::new()
        } else {
            format!(" (measured with {n} streams, not 1000)")
        };
        let verdict = if worst < Duration::from_secs(1) {
            "MEETS"
        } else {
            "MISSES"
        };
        println!(
            "Verdict: {verdict} the goal \"1000-stream delta under 1 s\"{scope}: one-route delta to all {n} streams took {} median, {} worst of {} rounds ({} routes).",
            ms(stats(&self.delta.iter().map(|r| r.fleet).collect::<Vec<_>>()).0),
            ms(worst),
            self.delta.len(),
            args.routes
        );
    }
}

/// Median and max.
fn stats(values: &[Duration]) -> (Duration, Duration) {
    let mut sorted = values.to_vec();
    sorted.sort();
    let median = match sorted.len() {
        0 => Duration::ZERO,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2,
    };
    (median, sorted.last().copied().unwrap_or_default())
}

fn median_f64(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => 0.0,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

pub(crate) fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn us(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}

pub(crate) fn bytes(n: usize) -> String {
    match n {
        n if n >= 1 << 30 => format!("{:.2} GiB", n as f64 / (1u64 << 30) as f64),
        n if n >= 1 << 20 => format!("{:.2} MiB", n as f64 / (1u64 << 20) as f64),
        n if n >= 1 << 10 => format!("{:.1} KiB", n as f64 / 1024.0),
        n => format!("{n} B"),
    }
}
