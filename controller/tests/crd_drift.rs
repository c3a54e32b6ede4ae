//! The committed CRD in `crds/` must be what the Rust types generate.
//! Regenerate with `cargo run -p moongate-controller -- crd > crds/luaroute.yaml`.

use kube::CustomResourceExt;
use moongate_route::crd::LuaRoute;

#[test]
fn committed_crd_matches_the_rust_types() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../crds/luaroute.yaml");
    let committed = std::fs::read_to_string(path).expect("crds/luaroute.yaml exists");
    let generated = serde_saphyr::to_string(&LuaRoute::crd()).expect("the CRD serializes");
    assert!(
        committed == generated,
        "crds/luaroute.yaml is stale: run `cargo run -p moongate-controller -- crd > crds/luaroute.yaml`"
    );
}

#[test]
fn every_spec_field_is_described() {
    let crd = serde_json::to_value(LuaRoute::crd()).unwrap();
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
