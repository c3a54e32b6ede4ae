//! The patterns and bounds of the schema, public so `compile` can apply the
//! same ones where it repeats a check (the `allowFrom` namespace and route
//! names). The apiserver reads schema patterns as Go RE2; each is kept simple
//! enough that RE2 and PCRE agree on it (the tests match them with pcre2).

/// A DNS-1123 subdomain (lowercase labels of at most 63 characters), optionally
/// with a leading `*.` wildcard label. The whole name is at most 253
/// characters.
pub const HOSTNAME_PATTERN: &str =
    r"^(\*\.)?[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*$";
/// A DNS-1035 label, as Kubernetes requires of Service names.
pub const SERVICE_NAME_PATTERN: &str = r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$";
/// What `quantity::parse_bytes` accepts: a whole number of bytes with an
/// optional binary unit, Kubernetes-style (`Ki`, `Mi`, `Gi`) or nginx-style
/// (`k`, `m`, `g`).
pub const SIZE_PATTERN: &str = r"^[0-9]+([kKmMgG]|Ki|Mi|Gi)?$";
/// Shared dict names, as `compile` accepts them (nginx allows `lua_shared_dict
/// my-cache`, read from Lua as `ngx.shared["my-cache"]`).
pub const SHARED_DICT_NAME_PATTERN: &str = r"^[A-Za-z0-9_-]+$";
/// A media type for `default_type`: `type/subtype`, optionally with parameters.
pub const MEDIA_TYPE_PATTERN: &str = r"^[A-Za-z0-9][-A-Za-z0-9!#$&^_.+]*/[A-Za-z0-9][-A-Za-z0-9!#$&^_.+]*( *;[ -~]*)?$";
/// Lua module names for `require`, as Lua's package searchers treat them:
/// names joined by dots, each dot a directory separator (`resty.http`). A
/// name is letters, digits, `_` and `-`, not starting with `-`: real modules
/// use hyphens (`resty.jwt-validators`, `resty.jit-uuid`), and Lua passes
/// them to `require` as any other string. Nothing else is allowed: no empty
/// names (`a..b`), no `/`, no spaces. At most [`MAX_MODULE_NAME`] bytes.
/// Written with `[.]` rather than `\.` so it needs no escaping inside a CEL
/// string literal. The schemas of LuaRoute and LuaLibrary and `compile` all
/// use this one pattern, through [`module_names_rule`](super::module_names_rule).
pub const MODULE_NAME_PATTERN: &str = "^[A-Za-z0-9_][-A-Za-z0-9_]*([.][A-Za-z0-9_][-A-Za-z0-9_]*)*$";
/// The longest module name.
pub const MAX_MODULE_NAME: usize = 128;
/// What a module name that breaks [`MODULE_NAME_PATTERN`] is told, by the
/// apiserver and by `compile` alike.
pub const MODULE_NAME_MESSAGE: &str = "module names must be names of letters, digits, '_' and '-' (not starting with '-') joined by dots, such as resty.mylib or resty.jit-uuid, at most 128 characters";
/// A Kubernetes object name (a DNS-1123 subdomain), as LuaLibrary names are.
pub const OBJECT_NAME_PATTERN: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";
/// nginx variable names (`set $name`), as `compile` accepts them.
pub const VAR_NAME_PATTERN: &str = "^[A-Za-z0-9_]+$";
/// A namespace name (a DNS-1123 label, at most 63 characters by `maxLength`),
/// or `*` for any namespace.
pub const NAMESPACE_OR_ANY_PATTERN: &str = r"^(\*|[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)$";
/// A LuaRoute name (a DNS-1123 subdomain as the apiserver checks custom
/// resource names: no per-label limit, at most 253 characters by `maxLength`),
/// or `*` for any.
pub const ROUTE_NAME_OR_ANY_PATTERN: &str = r"^(\*|[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*)$";

/// The fewest Lua VM instructions a route may budget per handler.
pub const MIN_INSTRUCTION_BUDGET: u64 = 1000;

/// What `compile` parses as a duration: a whole number and a unit, `ms`, `s`,
/// `m` or `h` (`250ms`, `5s`, `1m`). The range, 1ms to 1h, is `compile`'s.
pub const DURATION_PATTERN: &str = "^[0-9]{1,7}(ms|s|m|h)$";
/// An upstream URL's shape: `http://` or `https://`, an authority without
/// user info, an optional path; no query or fragment. `compile` parses it.
pub const UPSTREAM_URL_PATTERN: &str = r"^https?://[^/?#@\s]+(/[^?#\s]*)?$";
/// A `proxy_pass` URI part or a health-check path: `/` and then no space,
/// query or fragment.
pub const UPSTREAM_URI_PATTERN: &str = r"^/[^?#\s]*$";
/// A server address: `host:port` or `[ipv6]:port`.
pub const ADDRESS_PATTERN: &str = r"^([A-Za-z0-9]([-A-Za-z0-9.]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\]):[0-9]{1,5}$";
/// The upstream Host header: `$proxy_host`, or a literal `host[:port]`.
pub const UPSTREAM_HOST_PATTERN: &str =
    r"^(\$proxy_host|([A-Za-z0-9]([-A-Za-z0-9.]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\])(:[0-9]{1,5})?)$";
/// An HTTP token (RFC 9110), as header and cookie names are.
pub const HTTP_TOKEN_PATTERN: &str = r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$";
