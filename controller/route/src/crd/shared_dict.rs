//! `lua_shared_dict` declarations.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::patterns::{SHARED_DICT_NAME_PATTERN, SIZE_PATTERN};

/// A `lua_shared_dict`.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SharedDictSpec {
    /// The dict's name, as in `lua_shared_dict NAME SIZE`: letters, digits, `_` and
    /// `-`, at most 64 characters. Lua reads it as `ngx.shared.NAME` (or
    /// `ngx.shared["NAME"]`). Unique within the route.
    #[schemars(length(min = 1, max = 64), regex(pattern = SHARED_DICT_NAME_PATTERN))]
    pub name: String,
    /// The dict's size: whole bytes with an optional binary unit, Kubernetes-style
    /// (`512Ki`, `1Mi`, `2Gi`) or nginx-style (`512k`, `10m`, `1g`, either case);
    /// `m` is always mebibytes, never milli. At least 8k.
    #[schemars(length(min = 1, max = 32), regex(pattern = SIZE_PATTERN))]
    pub capacity: String,
    /// `Memory` (default: in memory, lost on restart, as in OpenResty) or `Durable`
    /// (written behind to disk and restored at start).
    #[serde(default)]
    pub persistence: Persistence,
}

/// Where a shared dict lives.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum Persistence {
    /// In memory only, lost on restart (as in OpenResty).
    #[default]
    Memory,
    /// Written behind to disk and restored at start.
    Durable,
}
