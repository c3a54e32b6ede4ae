//! Compiles `moongate/v1/*.proto` with protox (pure Rust), so no `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["moongate/v1/config.proto", "moongate/v1/discovery.proto"];
    let fds = protox::compile(files, ["."])?;
    tonic_prost_build::configure().compile_fds(fds)?;
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    Ok(())
}
