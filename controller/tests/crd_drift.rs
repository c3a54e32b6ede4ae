//! The committed CRDs in `crds/` must be what the Rust types generate.
//! Regenerate with `cargo run --release -p moongate-controller -- crd > crds/luaroute.yaml`
//! and `cargo run --release -p moongate-controller -- crd lualibrary > crds/lualibrary.yaml`.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;
use moongate_route::crd::{LuaLibrary, LuaRoute};

fn assert_committed(file: &str, kind: &str, crd: CustomResourceDefinition) {
    let path = format!("{}/../crds/{file}", env!("CARGO_MANIFEST_DIR"));
    let committed = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let generated = serde_saphyr::to_string(&crd).expect("the CRD serializes");
    assert!(
        committed == generated,
        "crds/{file} is stale: run `cargo run --release -p moongate-controller -- crd {kind} > crds/{file}`"
    );
}

#[test]
fn committed_crd_matches_the_rust_types() {
    assert_committed("luaroute.yaml", "luaroute", LuaRoute::crd());
}

#[test]
fn committed_library_crd_matches_the_rust_types() {
    assert_committed("lualibrary.yaml", "lualibrary", LuaLibrary::crd());
}

#[test]
fn every_spec_field_is_described() {
    for crd in [LuaRoute::crd(), LuaLibrary::crd()] {
        every_spec_field_of_is_described(crd);
    }
}

fn every_spec_field_of_is_described(crd: CustomResourceDefinition) {
    let crd = serde_json::to_value(crd).unwrap();
    let spec = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
    fn walk(at: &str, schema: &serde_json::Value, missing: &mut Vec<String>) {
        if let Some(props) = schema.get("properties").and_then(|p| p.as_object()) {
            for (name, s) in props {
                let here = format!("{at}.{name}");
                if s.get("description").is_none() {
                    missing.push(here.clone());
                }
                walk(&here, s, missing);
                if let Some(items) = s.get("items") {
                    walk(&here, items, missing);
                }
            }
        }
    }
    let mut missing = Vec::new();
    walk("spec", spec, &mut missing);
    assert!(
        missing.is_empty(),
        "fields without a description (kubectl explain shows nothing): {missing:?}"
    );
}
