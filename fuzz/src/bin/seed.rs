//! Writes the seed corpora under `fuzz/corpus/<target>/`: valid inputs of
//! each format, so the fuzzer starts past the first byte of each parser.
//! Usage: `cargo run --bin seed` (from `fuzz/`); `fuzz/run.sh` does it.

use std::path::Path;

use moongate_controller::snapshot;
use moongate_controller::source::{self, SourcedRoute};
use moongate_dataplane::durable_timer::codec::{self, Arg, Record};
use moongate_proto::v1 as pb;
use prost::Message;

const ROUTES: &str = r#"apiVersion: moongate.dev/v1alpha1
kind: LuaRoute
metadata: {name: shop, namespace: team-a}
spec:
  hostnames: [shop.example.com, "*.shop.example.com"]
  allowedNamespaces: [team-b]
  sharedDicts:
  - {name: sessions, capacity: 2Mi, persistence: Durable}
  - {name: cache, capacity: 64Ki}
  modules:
    util: |
      local M = {}
      function M.twice(x) return x * 2 end
      return M
  init: |
    ngx.shared.cache:set("boot", 1)
  initWorker: |
    ngx.timer.at(0, function() end)
  limits: {maxBodySize: 512Ki, instructionBudget: 1000000}
  locations:
  - path: /api/
    match: PrefixPriority
    vars: {tier: gold}
    rewrite: ngx.req.set_uri("/api/v2" .. ngx.var.uri)
    access: if not ngx.var.http_authorization then return ngx.exit(401) end
    content: ngx.say(require("util").twice(21))
    headerFilter: ngx.header["X-Tier"] = ngx.var.tier
    bodyFilter: ngx.arg[1] = string.upper(ngx.arg[1] or "")
    log: ngx.log(ngx.INFO, "done")
  - path: '^/items/(\d+)$'
    match: Regex
    needRequestBody: true
    content: ngx.say(ngx.var[1])
  - path: /internal
    internal: true
    allowFrom: [{namespace: team-b, name: front}]
    content: ngx.say("inside")
  - path: /up
    upstream: {service: backend, port: 8080}
---
apiVersion: moongate.dev/v1alpha1
kind: LuaRoute
metadata: {name: front, namespace: team-b}
spec:
  hostnames: [shop.example.com]
  locations:
  - path: /b/
    match: RegexCaseInsensitive
    content: |
      local res = ngx.location.capture("/internal")
      ngx.print(res.body)
"#;

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::create_dir_all(dir).expect("create the corpus directory");
    std::fs::write(dir.join(name), bytes).expect("write a seed");
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut yamls = vec![("routes.yaml".to_string(), ROUTES.to_string())];
    for entry in std::fs::read_dir(&examples).expect("examples/") {
        let path = entry.expect("an entry").path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let name = path.file_name().expect("a name").to_string_lossy().into_owned();
            yamls.push((name, std::fs::read_to_string(&path).expect("read an example")));
        }
    }
    for (name, text) in &yamls {
        write(&root.join("route_yaml"), name, text.as_bytes());
        let routes = source::parse_routes(text, None).expect("the seed routes parse");
        let sources: Vec<SourcedRoute> = routes
            .into_iter()
            .map(|route| SourcedRoute {
                file: name.into(),
                route,
            })
            .collect();
        let built = snapshot::from_sources(&sources, 7)
            .expect("the seed routes compile")
            .snapshot;
        let dir = root.join("snapshot");
        write(&dir, &format!("{name}.stored"), &built.encode_to_vec());
        let delta = pb::Delta {
            version: 8,
            base_version: 7,
            content_hash: built.content_hash.clone(),
            upserted: built.routes.clone(),
            removed: vec![pb::RouteKey {
                namespace: "x".into(),
                name: "y".into(),
            }],
        };
        let kinds = [
            ("snapshot", pb::controller_message::Kind::Snapshot(built)),
            ("delta", pb::controller_message::Kind::Delta(delta)),
        ];
        for (kind, k) in kinds {
            let message = pb::ControllerMessage { kind: Some(k) };
            write(&dir, &format!("{name}.{kind}"), &message.encode_to_vec());
        }
    }

    // Durable dict records: [version 1][flags u32][expires u64][tag][payload].
    let head = |tag: u8| {
        let mut r = vec![1u8];
        r.extend_from_slice(&7u32.to_le_bytes());
        r.extend_from_slice(&1_900_000_000_000u64.to_le_bytes());
        r.push(tag);
        r
    };
    let dir = root.join("shdict_record");
    write(&dir, "false", &head(0));
    write(&dir, "true", &head(1));
    write(&dir, "number", &[head(2), 3.5f64.to_le_bytes().to_vec()].concat());
    write(&dir, "string", &[head(3), b"hello".to_vec()].concat());
    let mut list = head(4);
    list.push(2);
    list.extend_from_slice(&(-1.0f64).to_le_bytes());
    list.push(3);
    list.extend_from_slice(&3u32.to_le_bytes());
    list.extend_from_slice(b"abc");
    write(&dir, "list", &list);

    let dir = root.join("timer_record");
    let record = |args: Vec<Arg>| Record {
        namespace: "team-a".into(),
        route: "shop".into(),
        callback: "jobs.run".into(),
        fire_at_ms: 1_900_000_000_000,
        args,
    };
    write(&dir, "none", &codec::encode(&record(vec![])));
    let nested = Arg::Table(vec![
        (Arg::Str(b"k".to_vec()), Arg::Number(1.0)),
        (
            Arg::Number(2.0),
            Arg::Table(vec![(Arg::Str(b"deep".to_vec()), Arg::Bool(true))]),
        ),
    ]);
    let args = vec![
        Arg::Nil,
        Arg::Bool(false),
        Arg::Number(0.25),
        Arg::Str(b"payload".to_vec()),
        nested,
    ];
    write(&dir, "args", &codec::encode(&record(args)));

    // ngx.re: [function][options \0 regex \0 subject \0 replacement].
    let dir = root.join("re_options");
    let cases: [(u8, &str, &str, &str, &str); 6] = [
        (0, "jo", r"(\d+)-(?<name>\w+)", "id 42-moon", ""),
        (1, "ijsu", "^h.llo$", "HELLO", ""),
        (2, "x", r"(a) \s* (b)", "ab ab", "[$1$2]"),
        (3, "dmU", "^a|b$", "a\nb\na", "${0}!"),
        (4, "aD", "(?<n>a)|(?<n>b)", "abba", ""),
        (5, "J", "(?:)", "xyz", ""),
    ];
    for (i, (call, options, regex, subject, replacement)) in cases.into_iter().enumerate() {
        let input = [
            &[call][..],
            options.as_bytes(),
            b"\0",
            regex.as_bytes(),
            b"\0",
            subject.as_bytes(),
            b"\0",
            replacement.as_bytes(),
        ]
        .concat();
        write(&dir, &format!("case{i}"), &input);
    }
    println!("seeds written under {}", root.display());
}
