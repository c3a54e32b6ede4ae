//! Durable timers against the real binary: a timer created just before a
//! kill -9 is re-armed on the next start and fires there, exactly once.

mod common;

use std::time::Duration;

use common::{Server, route, wait_for};

#[test]
fn durable_timer_survives_kill_9_and_fires_once() {
    let data = tempfile::tempdir().unwrap();
    let data_dir = data.path().to_str().unwrap().to_string();
    let yaml = route(
        "jobs",
        r#"  sharedDicts:
  - {name: state, capacity: 1Mi, persistence: Durable}
  modules:
    jobs: |
      return {
        run = function(premature, arg)
          ngx.shared.state:set("fired", arg)
          ngx.shared.state:incr("count", 1, 0)
        end,
      }
  locations:
  - path: /arm
    content: |
      local id, err = moongate.timer.at_durable(1, "jobs.run", "x")
      ngx.say(id or ("error: " .. tostring(err)))
  - path: /state
    content: |
      ngx.say(tostring(ngx.shared.state:get("fired")), " ", tostring(ngx.shared.state:get("count")))
"#,
    );
    let start = || Server::builder(&yaml).durable(&data_dir).start();

    let s = start();
    let armed = s.get("/arm");
    assert_eq!(armed.status, 200, "{}", s.logs());
    assert!(!armed.text().starts_with("error"), "{}", armed.text());
    // Long enough for the creation to be committed (10 ms window), well
    // short of the 1 s delay: the timer must not have fired yet.
    std::thread::sleep(Duration::from_millis(200));
    s.signal(libc::SIGKILL);
    drop(s);

    let s = start();
    let state = wait_for(Duration::from_secs(10), || {
        let t = s.get("/state").text();
        t.starts_with("x ").then_some(t)
    });
    assert_eq!(
        state.as_deref().map(str::trim),
        Some("x 1"),
        "the timer did not fire after the restart; logs:\n{}",
        s.logs()
    );
    // Let its completion be committed, then stop gracefully.
    std::thread::sleep(Duration::from_millis(200));
    s.signal(libc::SIGTERM);
    let mut s = s;
    assert!(s.wait_exit(Duration::from_secs(30)).is_some(), "no exit on SIGTERM");
    drop(s);

    let s = start();
    // Past its fire time, a timer still stored would fire at once.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(s.get("/state").text().trim(), "x 1", "fired twice; logs:\n{}", s.logs());
}
