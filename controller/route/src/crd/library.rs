//! The `LuaLibrary` custom resource: Lua modules that every LuaRoute of its
//! namespace may share, by naming the library in `spec.libraries`.
//!
//! A library is compiled once per generation and travels to dataplanes as one
//! entry of the config, not copied into each route; each route that names it
//! still loads it into its own sandbox (its own `require` space), so routes
//! never share Lua state through a library.

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Lua modules shared by the LuaRoutes of a namespace.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "moongate.dev",
    version = "v1alpha1",
    kind = "LuaLibrary",
    namespaced,
    shortname = "llib",
    status = "LuaLibraryStatus",
    doc = "LuaLibrary is a set of Lua modules (module name to source) that the LuaRoutes of its namespace load by naming the library in `spec.libraries`. It is compiled once; each route that names it gets its own instance of the modules in its own sandbox. An edit is hot-swapped into every route naming it; an edit that does not compile is refused (`Accepted=False`) and the routes keep its last good generation.",
    printcolumn = r#"{"name":"Modules","type":"string","jsonPath":".status.modules"}"#,
    printcolumn = r#"{"name":"Accepted","type":"string","jsonPath":".status.conditions[?(@.type==\"Accepted\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LuaLibrarySpec {
    /// Lua modules by name: the key is the name given to `require`, the value
    /// the module's Lua source, which returns the module table. Names are as
    /// in a LuaRoute's `modules` (`resty.jwt-validators`, `resty.jit-uuid`).
    /// A route naming this library may not define a module of the same name
    /// itself, nor name another library defining one: the route is refused
    /// rather than one module silently hiding the other. 1 to 128 modules.
    #[schemars(extend("minProperties" = 1, "maxProperties" = 128, "x-kubernetes-validations" = super::module_names_rule()))]
    pub modules: BTreeMap<String, String>,
}

/// What the controller observed of a LuaLibrary.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LuaLibraryStatus {
    /// The generation these conditions describe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Accepted`: the generation compiled (reason `Accepted`), or not
    /// (reason `Invalid`, the message naming each module and Lua line); then
    /// the routes naming the library keep its last good generation.
    /// `Programmed`: every connected dataplane serves this generation
    /// (`NotReferenced` while no accepted route names the library).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>,
    /// The generation the routes naming this library are served with: the
    /// current one, or the last good one while the current is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serving_generation: Option<i64>,
    /// The LuaRoutes of the namespace naming this library, at most 16, then `…`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<String>,
    /// The module names, comma-separated (for `kubectl get`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modules: Option<String>,
}
