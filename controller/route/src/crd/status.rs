//! The status subresource, where the controller reports what it and the
//! dataplanes made of a LuaRoute.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// What the controller observed of a LuaRoute.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LuaRouteStatus {
    /// The generation these conditions describe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Accepted`, `ResolvedRefs` and `Programmed`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>,
    /// Dataplanes that ACKed a version containing this generation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("format" = "int64"))]
    pub programmed_dataplanes: Option<u32>,
    /// Dataplanes connected to the controller.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("format" = "int64"))]
    pub total_dataplanes: Option<u32>,
    /// The first rejection a dataplane reported for this route's current
    /// generation: `dataplane NAME: MESSAGE`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nack_message: Option<String>,
}
