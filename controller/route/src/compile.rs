//! Validation and compilation of LuaRoutes into the `moongate.v1` protobuf `Route`.
//!
//! This is the one implementation shared by the controller and the dataplane's
//! standalone mode: a spec goes in, a `Route` with LuaJIT bytecode (or every
//! problem found, each naming route, location, phase and line) comes out.
//!
//! The one difference between the modes is [`FileAccess`]: a standalone
//! compiler reads the files a route names (`upstream.tls.caFile`...), a
//! cluster's refuses them. Upstreams are checked in `upstream`.

mod library;
mod upstream;

pub use library::compile_library;
pub use upstream::{FileAccess, parse_duration_ms, parse_host_port};

use mlua::Lua;
use mlua::chunk::ChunkMode;
use moongate_proto::v1 as pb;
use sha2::{Digest, Sha256};

use std::sync::{LazyLock, OnceLock};

use crate::RouteKey;
use crate::crd::{
    LocationSpec, LuaRoute, LuaRouteRef, MAX_MODULE_NAME, MODULE_NAME_MESSAGE, MODULE_NAME_PATTERN,
    NAMESPACE_OR_ANY_PATTERN, OBJECT_NAME_PATTERN, Persistence, ROUTE_NAME_OR_ANY_PATTERN,
};
use crate::error::Problem;
use crate::location::{LocationKey, LocationKind};
use crate::quantity::parse_bytes;

/// Compiles Lua source to bytecode with the same LuaJIT build the dataplane runs.
pub struct Compiler {
    lua: Lua,
    files: FileAccess,
}

impl Default for Compiler {
    fn default() -> Self {
        Self::new()
    }
}

impl Compiler {
    /// A compiler for LuaRoutes from the Kubernetes API: file fields are refused.
    pub fn new() -> Self {
        Compiler {
            lua: Lua::new(),
            files: FileAccess::Refused,
        }
    }

    /// A compiler for standalone mode's route files, which reads the files
    /// they name.
    pub fn standalone() -> Self {
        Compiler {
            files: FileAccess::Allowed,
            ..Compiler::new()
        }
    }

    /// Compiles one chunk. `name` is what Lua prints before line numbers in errors.
    /// On a syntax error returns the 1-based line (when Lua names one) and message.
    pub fn chunk(&self, name: &str, source: &str) -> Result<pb::Chunk, (Option<u32>, String)> {
        let chunk_name = format!("={name}");
        let function = self
            .lua
            .load(source)
            .set_name(&chunk_name)
            .set_mode(ChunkMode::Text)
            .into_function()
            .map_err(|e| split_lua_error(name, &e.to_string()))?;
        // Keep debug info: runtime errors must name the line.
        let bytecode = function.dump(false);
        let digest = Sha256::digest(&bytecode).to_vec();
        Ok(pb::Chunk {
            name: chunk_name,
            bytecode,
            digest,
        })
    }

    /// The bytecode format this build produces; a dataplane must report the
    /// same. Computed once per process: it is a property of the binary.
    pub fn abi() -> &'static pb::BytecodeAbi {
        static ABI: OnceLock<pb::BytecodeAbi> = OnceLock::new();
        ABI.get_or_init(|| Compiler::new().probe_abi())
    }

    fn probe_abi(&self) -> pb::BytecodeAbi {
        let jit: mlua::Table = self.lua.globals().get("jit").expect("LuaJIT always has the jit table");
        let version: String = jit.get("version").unwrap_or_default();
        let arch: String = jit.get("arch").unwrap_or_default();
        let probe = self
            .lua
            .load("return 1")
            .into_function()
            .expect("a constant chunk compiles");
        let header = probe.dump(true);
        // LuaJIT dump header: ESC 'L' 'J' <version> <flags>; flags carry FR2/FFI bits.
        let format = format!(
            "bc{}-flags{}",
            header.get(3).copied().unwrap_or(0),
            header.get(4).copied().unwrap_or(0) & !0x02
        );
        pb::BytecodeAbi {
            luajit_version: version,
            arch,
            format,
        }
    }
}

/// Splits "NAME:LINE: message" as LuaJIT formats syntax errors.
fn split_lua_error(name: &str, text: &str) -> (Option<u32>, String) {
    let text = text.strip_prefix("syntax error: ").unwrap_or(text);
    let text = text.lines().next().unwrap_or(text);
    let rest = text.strip_prefix(name).and_then(|r| r.strip_prefix(':'));
    if let Some((line, msg)) = rest.and_then(|r| r.split_once(": "))
        && let Ok(line) = line.parse()
    {
        return (Some(line), msg.to_string());
    }
    (None, text.to_string())
}

/// The schema's patterns for `allowedNamespaces` and `allowFrom`, compiled once:
/// standalone mode has no apiserver to check them.
static NAMESPACE_OR_ANY: LazyLock<pcre2::bytes::Regex> =
    LazyLock::new(|| pcre2::bytes::Regex::new(NAMESPACE_OR_ANY_PATTERN).expect("a valid pattern"));
static ROUTE_NAME_OR_ANY: LazyLock<pcre2::bytes::Regex> =
    LazyLock::new(|| pcre2::bytes::Regex::new(ROUTE_NAME_OR_ANY_PATTERN).expect("a valid pattern"));

static MODULE_NAME: LazyLock<pcre2::bytes::Regex> =
    LazyLock::new(|| pcre2::bytes::Regex::new(MODULE_NAME_PATTERN).expect("a valid pattern"));
static OBJECT_NAME: LazyLock<pcre2::bytes::Regex> =
    LazyLock::new(|| pcre2::bytes::Regex::new(OBJECT_NAME_PATTERN).expect("a valid pattern"));

/// The schema's bounds, repeated for standalone mode.
const MAX_ALLOWED_NAMESPACES: usize = 32;
const MAX_ALLOW_FROM: usize = 16;
const MAX_MODULES: usize = 128;
const MAX_LIBRARIES: usize = 16;

/// `re` matches the whole of `s`. PCRE's `$` also matches before a final
/// newline, RE2's (the apiserver's) does not: this is RE2's reading.
fn whole_match(re: &pcre2::bytes::Regex, s: &str) -> bool {
    re.find(s.as_bytes()).ok().flatten().is_some_and(|m| m.end() == s.len())
}

/// `name` is a module name by the schema's rule ([`MODULE_NAME_PATTERN`]),
/// the one rule for routes' and libraries' modules.
pub fn is_module_name(name: &str) -> bool {
    name.len() <= MAX_MODULE_NAME && whole_match(&MODULE_NAME, name)
}

/// Compiles a `modules` map (a route's or a library's); `chunk_name` names a
/// module's chunk as Lua prints it in errors. Problems carry the phase
/// `module NAME` and the Lua line.
fn compile_modules<'a>(
    compiler: &Compiler,
    modules: impl ExactSizeIterator<Item = (&'a String, &'a String)>,
    chunk_name: impl Fn(&str) -> String,
    problems: &mut Vec<Problem>,
) -> Vec<pb::Module> {
    if modules.len() > MAX_MODULES {
        problems.push(Problem {
            phase: Some("modules".into()),
            ..Problem::new(format!("at most {MAX_MODULES} modules"))
        });
    }
    let mut out = Vec::with_capacity(modules.len());
    for (module, source) in modules {
        let phase = Some(format!("module {module}"));
        if !is_module_name(module) {
            problems.push(Problem {
                phase,
                ..Problem::new(format!("invalid module name {module:?}: {MODULE_NAME_MESSAGE}"))
            });
            continue;
        }
        match compiler.chunk(&chunk_name(module), source) {
            Ok(chunk) => out.push(pb::Module {
                name: module.clone(),
                chunk: Some(chunk),
            }),
            Err((line, message)) => problems.push(Problem {
                phase,
                line,
                ..Problem::new(message)
            }),
        }
    }
    out
}

/// `s` is a namespace name or `*`.
fn is_namespace_or_any(s: &str) -> bool {
    s.len() <= 63 && NAMESPACE_OR_ANY.is_match(s.as_bytes()).unwrap_or(false)
}

/// `s` is a LuaRoute name or `*`.
fn is_route_name_or_any(s: &str) -> bool {
    s.len() <= 253 && ROUTE_NAME_OR_ANY.is_match(s.as_bytes()).unwrap_or(false)
}

/// Chunk name for a location's phase handler, in nginx's style:
/// `content_by_lua(default/hello /hello)`.
pub fn handler_chunk_name(route: &str, path: &str, phase: &str) -> String {
    format!("{phase}_by_lua({route} {path})")
}

/// Validates and compiles one LuaRoute. `created_at` orders routes sharing a hostname.
pub fn compile_route(compiler: &Compiler, route: &LuaRoute, created_at: i64) -> Result<pb::Route, Vec<Problem>> {
    let namespace = route
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".to_string());
    let name = route.metadata.name.clone().unwrap_or_default();
    let key = RouteKey::new(&namespace, &name);
    let route_id = key.to_string();
    let spec = &route.spec;
    let mut problems = Vec::new();
    let problem = |location: Option<&str>, phase: Option<&str>, line: Option<u32>, message: String| Problem {
        route: Some(key.clone()),
        location: location.map(str::to_string),
        phase: phase.map(str::to_string),
        line,
        message,
        file: None,
        library: None,
    };

    if name.is_empty() {
        problems.push(problem(None, None, None, "metadata.name is required".into()));
    }
    if spec.locations.is_empty() {
        problems.push(problem(None, None, None, "spec.locations must not be empty".into()));
    }
    for host in &spec.hostnames {
        if host.is_empty() || host.contains(['/', ' ', ':']) {
            problems.push(problem(None, None, None, format!("invalid hostname {host:?}")));
        }
    }
    if spec.allowed_namespaces.len() > MAX_ALLOWED_NAMESPACES {
        problems.push(problem(
            None,
            Some("allowedNamespaces"),
            None,
            format!("at most {MAX_ALLOWED_NAMESPACES} namespaces"),
        ));
    }
    for allowed in &spec.allowed_namespaces {
        if !is_namespace_or_any(allowed) {
            problems.push(problem(
                None,
                Some("allowedNamespaces"),
                None,
                format!("invalid namespace {allowed:?}: a namespace name (a DNS-1123 label) or \"*\""),
            ));
        }
    }

    let mut locations = Vec::with_capacity(spec.locations.len());
    for (i, loc) in spec.locations.iter().enumerate() {
        let same = |l: &LocationSpec| {
            LocationKey::new(l.match_kind.into(), &l.path) == LocationKey::new(loc.match_kind.into(), &loc.path)
        };
        if let Some(earlier) = spec.locations[..i].iter().find(|l| same(l)) {
            problems.push(problem(
                Some(&loc.path),
                None,
                None,
                format!("duplicate location {:?} {}", earlier.match_kind, loc.path),
            ));
        }
        match compile_location(compiler, &namespace, &route_id, loc) {
            Ok(l) => locations.push(l),
            Err(errs) => problems.extend(errs.into_iter().map(|p| Problem {
                route: Some(key.clone()),
                location: Some(loc.path.clone()),
                ..p
            })),
        }
    }

    let mut shared_dicts = Vec::new();
    for (i, dict) in spec.shared_dicts.iter().enumerate() {
        let at = Some(format!("sharedDicts[{}]", dict.name));
        if dict.name.is_empty()
            || !dict
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            problems.push(problem(
                None,
                at.as_deref(),
                None,
                format!("invalid shared dict name {:?}", dict.name),
            ));
        }
        if spec.shared_dicts[..i].iter().any(|d| d.name == dict.name) {
            problems.push(problem(
                None,
                at.as_deref(),
                None,
                format!("shared dict {:?} declared twice", dict.name),
            ));
        }
        match parse_bytes(&dict.capacity) {
            Ok(bytes) if bytes >= 8 << 10 => shared_dicts.push(pb::SharedDict {
                name: dict.name.clone(),
                capacity_bytes: bytes,
                persistence: match dict.persistence {
                    Persistence::Memory => pb::Persistence::Memory,
                    Persistence::Durable => pb::Persistence::Durable,
                } as i32,
            }),
            Ok(_) => problems.push(problem(
                None,
                at.as_deref(),
                None,
                format!("capacity {:?} is below the 8k minimum", dict.capacity),
            )),
            Err(e) => problems.push(problem(None, at.as_deref(), None, e)),
        }
    }

    let mut module_problems = Vec::new();
    let modules = compile_modules(
        compiler,
        spec.modules.iter(),
        |module| format!("{module}({route_id})"),
        &mut module_problems,
    );
    problems.extend(module_problems.into_iter().map(|p| Problem {
        route: Some(key.clone()),
        ..p
    }));
    if spec.libraries.len() > MAX_LIBRARIES {
        problems.push(problem(
            None,
            Some("libraries"),
            None,
            format!("at most {MAX_LIBRARIES} libraries"),
        ));
    }
    for (i, library) in spec.libraries.iter().enumerate() {
        if !(library.len() <= 253 && whole_match(&OBJECT_NAME, library)) {
            problems.push(problem(
                None,
                Some("libraries"),
                None,
                format!("invalid library name {library:?}: a LuaLibrary name (a DNS-1123 subdomain)"),
            ));
        }
        if spec.libraries[..i].contains(library) {
            problems.push(problem(
                None,
                Some("libraries"),
                None,
                format!("library {library:?} named twice"),
            ));
        }
    }

    let mut whole_route_chunk = |phase: &str, source: &Option<String>| -> Option<pb::Chunk> {
        let source = source.as_ref()?;
        match compiler.chunk(&format!("{phase}_by_lua({route_id})"), source) {
            Ok(chunk) => Some(chunk),
            Err((line, msg)) => {
                problems.push(problem(None, Some(phase), line, msg));
                None
            }
        }
    };
    let init = whole_route_chunk("init", &spec.init);
    let init_worker = whole_route_chunk("init_worker", &spec.init_worker);

    let mut limits = pb::Limits::default();
    if let Some(l) = &spec.limits {
        if let Some(size) = &l.max_body_size {
            match parse_bytes(size) {
                Ok(b) => limits.max_body_bytes = b,
                Err(e) => problems.push(problem(None, Some("limits.maxBodySize"), None, e)),
            }
        }
        limits.instruction_budget = l.instruction_budget.unwrap_or(0);
    }

    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(pb::Route {
        namespace,
        name,
        generation: route.metadata.generation.unwrap_or(0),
        hostnames: spec.hostnames.iter().map(|h| h.to_ascii_lowercase()).collect(),
        locations,
        shared_dicts,
        modules,
        init,
        init_worker,
        limits: Some(limits),
        created_at,
        allowed_namespaces: spec.allowed_namespaces.clone(),
        libraries: spec.libraries.clone(),
    })
}

/// A problem of one location, before the route and location are filled in.
fn location_problem(part: Option<&str>, line: Option<u32>, message: String) -> Problem {
    Problem {
        phase: part.map(str::to_string),
        line,
        ..Problem::new(message)
    }
}

/// `allowFrom` with the defaults filled in: an omitted namespace is the route's
/// own, an omitted name is `*`.
fn compile_allow_from(namespace: &str, allow_from: &[LuaRouteRef], problems: &mut Vec<Problem>) -> Vec<pb::RouteRef> {
    let at = Some("allowFrom");
    if allow_from.len() > MAX_ALLOW_FROM {
        problems.push(location_problem(at, None, format!("at most {MAX_ALLOW_FROM} entries")));
    }
    let mut out = Vec::with_capacity(allow_from.len());
    for (i, r) in allow_from.iter().enumerate() {
        if let Some(ns) = &r.namespace
            && !is_namespace_or_any(ns)
        {
            problems.push(location_problem(
                at,
                None,
                format!("entry {i}: invalid namespace {ns:?}: a namespace name (a DNS-1123 label) or \"*\""),
            ));
        }
        if let Some(name) = &r.name
            && !is_route_name_or_any(name)
        {
            problems.push(location_problem(
                at,
                None,
                format!("entry {i}: invalid route name {name:?}: a LuaRoute name (a DNS-1123 subdomain) or \"*\""),
            ));
        }
        out.push(pb::RouteRef {
            namespace: r.namespace.clone().unwrap_or_else(|| namespace.to_string()),
            name: r.name.clone().unwrap_or_else(|| "*".to_string()),
        });
    }
    out
}

fn compile_location(
    compiler: &Compiler,
    namespace: &str,
    route_id: &str,
    loc: &LocationSpec,
) -> Result<pb::Location, Vec<Problem>> {
    let mut problems: Vec<Problem> = Vec::new();
    let allow_from = compile_allow_from(namespace, &loc.allow_from, &mut problems);
    let kind = LocationKind::from(loc.match_kind);
    // The schema's CEL rules, repeated for standalone mode.
    if loc.content.is_some() && loc.upstream.is_some() {
        problems.push(location_problem(
            Some("upstream"),
            None,
            "a location has either content (content_by_lua) or upstream, not both".into(),
        ));
    }
    if loc.balancer.is_some() && loc.upstream.is_none() {
        problems.push(location_problem(
            Some("balancer"),
            None,
            "balancer (balancer_by_lua) requires upstream".into(),
        ));
    }
    let upstream = loc
        .upstream
        .as_ref()
        .map(|u| upstream::compile_upstream(u, compiler.files, &mut problems));
    match kind {
        LocationKind::Regex { caseless } => {
            if let Err(e) = pcre2::bytes::RegexBuilder::new().caseless(caseless).build(&loc.path) {
                problems.push(Problem::new(format!("invalid regex {:?}: {e}", loc.path)));
            }
            // nginx: "proxy_pass cannot have URI part in location given by regular expression".
            if upstream.as_ref().is_some_and(|u| u.uri.is_some()) {
                problems.push(location_problem(
                    Some("upstream"),
                    None,
                    "a regex location cannot have a URI part (upstream uri, or a url with a path), as in nginx".into(),
                ));
            }
        }
        _ if !loc.path.starts_with('/') => {
            problems.push(Problem::new(format!("path {:?} must start with '/'", loc.path)))
        }
        _ => {}
    }
    for name in loc.vars.keys() {
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            problems.push(Problem::new(format!("invalid variable name {name:?}")));
        }
    }
    let mut handler = |phase: &str, source: &Option<String>| -> Option<pb::Chunk> {
        let source = source.as_ref()?;
        match compiler.chunk(&handler_chunk_name(route_id, &loc.path, phase), source) {
            Ok(chunk) => Some(chunk),
            Err((line, msg)) => {
                problems.push(location_problem(Some(phase), line, msg));
                None
            }
        }
    };
    let location = pb::Location {
        path: loc.path.clone(),
        match_kind: kind.to_wire() as i32,
        vars: loc
            .vars
            .iter()
            .map(|(name, value)| pb::Var {
                name: name.clone(),
                value: value.clone(),
            })
            .collect(),
        rewrite: handler("rewrite", &loc.rewrite),
        access: handler("access", &loc.access),
        content: handler("content", &loc.content),
        header_filter: handler("header_filter", &loc.header_filter),
        body_filter: handler("body_filter", &loc.body_filter),
        log: handler("log", &loc.log),
        default_type: loc.default_type.clone(),
        need_request_body: loc.need_request_body,
        upstream,
        balancer: handler("balancer", &loc.balancer),
        internal: loc.internal,
        allow_from,
    };
    if problems.is_empty() {
        Ok(location)
    } else {
        Err(problems)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::parse_routes;

    fn compile_yaml(yaml: &str) -> Result<pb::Route, Vec<Problem>> {
        let routes = parse_routes(yaml, None).expect("valid yaml");
        compile_route(&Compiler::new(), &routes[0], 0)
    }

    #[test]
    fn compiles_handlers_to_bytecode_with_digest() {
        let route = compile_yaml(
            "apiVersion: moongate.dev/v1alpha1\nkind: LuaRoute\nmetadata: {name: hello}\nspec:\n  locations:\n  - path: /hello\n    match: Exact\n    content: ngx.say('hi')\n",
        )
        .unwrap();
        assert_eq!(route.namespace, "default");
        let chunk = route.locations[0].content.as_ref().unwrap();
        assert_eq!(&chunk.bytecode[..3], b"\x1bLJ");
        assert_eq!(chunk.digest, Sha256::digest(&chunk.bytecode).to_vec());
        assert_eq!(route.locations[0].match_kind, pb::MatchKind::Exact as i32);
    }

    #[test]
    fn a_regex_location_cannot_replace_a_uri_prefix() {
        let route = |upstream: &str| {
            format!(
                "apiVersion: moongate.dev/v1alpha1\nkind: LuaRoute\nmetadata: {{name: r}}\nspec:\n  locations:\n  - path: '\\.php$'\n    match: Regex\n    upstream: {upstream}\n"
            )
        };
        let errs = compile_yaml(&route("{url: 'http://10.0.0.1:8080/app/'}")).unwrap_err();
        assert!(
            errs.iter()
                .any(|p| p.message.contains("regex location cannot have a URI part")),
            "{errs:?}"
        );
        compile_yaml(&route("{url: 'http://10.0.0.1:8080'}")).expect("no URI part: fine");
    }

    #[test]
    fn syntax_error_names_route_location_phase_and_line() {
        let errs = compile_yaml(
            "apiVersion: moongate.dev/v1alpha1\nkind: LuaRoute\nmetadata: {name: bad, namespace: team}\nspec:\n  locations:\n  - path: /x\n    access: |\n      local a = 1\n      if a then\n",
        )
        .unwrap_err();
        assert_eq!(errs.len(), 1);
        let p = &errs[0];
        assert_eq!(p.route.as_ref().map(ToString::to_string).as_deref(), Some("team/bad"));
        assert_eq!(p.location.as_deref(), Some("/x"));
        assert_eq!(p.phase.as_deref(), Some("access"));
        assert_eq!(p.line, Some(3));
        assert!(p.message.contains("'end' expected"), "{}", p.message);
    }

    #[test]
    fn bad_regex_and_bad_capacity_are_reported_together() {
        let errs = compile_yaml(
            "apiVersion: moongate.dev/v1alpha1\nkind: LuaRoute\nmetadata: {name: r}\nspec:\n  sharedDicts: [{name: d, capacity: 12Xi}]\n  locations:\n  - path: '^/(a'\n    match: Regex\n    content: ngx.say(1)\n",
        )
        .unwrap_err();
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert!(
            errs.iter()
                .any(|p| p.location.as_deref() == Some("^/(a") && p.message.contains("invalid regex"))
        );
        assert!(errs.iter().any(|p| p.message.contains("unknown unit")));
    }

    #[test]
    fn allow_from_gets_its_defaults_and_allowed_namespaces_are_kept() {
        let route = compile_yaml(
            "apiVersion: moongate.dev/v1alpha1\nkind: LuaRoute\nmetadata: {name: r, namespace: team}\nspec:\n  allowedNamespaces: [other, '*']\n  locations:\n  - path: /private\n    internal: true\n    allowFrom: [{}, {name: sibling}, {namespace: b}, {namespace: '*', name: x}]\n  - path: /open\n",
        )
        .unwrap();
        assert_eq!(route.allowed_namespaces, ["other", "*"]);
        let private = &route.locations[0];
        assert!(private.internal);
        let refs: Vec<(&str, &str)> = private
            .allow_from
            .iter()
            .map(|r| (r.namespace.as_str(), r.name.as_str()))
            .collect();
        assert_eq!(refs, [("team", "*"), ("team", "sibling"), ("b", "*"), ("*", "x")]);
        assert!(!route.locations[1].internal && route.locations[1].allow_from.is_empty());
    }

    #[test]
    fn bad_namespaces_and_route_names_are_named_with_their_site() {
        let errs = compile_yaml(
            "apiVersion: moongate.dev/v1alpha1\nkind: LuaRoute\nmetadata: {name: r, namespace: team}\nspec:\n  allowedNamespaces: [Other]\n  locations:\n  - path: /p\n    allowFrom: [{namespace: a.b}, {name: 'Bad_Name'}]\n",
        )
        .unwrap_err();
        let lines: Vec<String> = errs.iter().map(ToString::to_string).collect();
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert!(
            lines[0].contains("allowedNamespaces") && lines[0].contains("\"Other\""),
            "{lines:?}"
        );
        assert!(
            lines[1].contains("location /p: allowFrom: entry 0: invalid namespace \"a.b\""),
            "{lines:?}"
        );
        assert!(
            lines[2].contains("location /p: allowFrom: entry 1: invalid route name \"Bad_Name\""),
            "{lines:?}"
        );
    }

    #[test]
    fn abi_names_this_luajit_build() {
        let abi = Compiler::abi();
        assert!(abi.luajit_version.starts_with("LuaJIT 2."), "{abi:?}");
        assert!(!abi.arch.is_empty());
    }

    #[test]
    fn route_modules_follow_the_module_name_rule_with_hyphens() {
        let route = |modules: &str| {
            format!(
                "apiVersion: moongate.dev/v1alpha1\nkind: LuaRoute\nmetadata: {{name: r, namespace: team}}\nspec:\n  libraries: [jwt, jwt]\n  modules:\n{modules}  locations: [{{path: /}}]\n"
            )
        };
        let errs = compile_yaml(&route(
            "    resty.jwt-validators: 'return {}'\n    resty.jit-uuid: 'return {'\n    'a..b': 'return {}'\n",
        ))
        .unwrap_err();
        let lines: Vec<String> = errs.iter().map(ToString::to_string).collect();
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert!(
            lines[0].starts_with("route team/r: module a..b: invalid module name \"a..b\""),
            "{lines:?}"
        );
        assert!(
            lines[1].starts_with("route team/r: module resty.jit-uuid: line 1: "),
            "the hyphenated name compiles as far as its Lua: {lines:?}"
        );
        assert_eq!(lines[2], "route team/r: libraries: library \"jwt\" named twice");
        assert!(is_module_name("resty.jwt-validators") && is_module_name("resty.jit-uuid"));
        assert!(!is_module_name("resty.http\n"), "RE2's $, not PCRE's");
        assert!(!is_module_name(&"a".repeat(129)));
    }
}
