//! Generated Rust for the `moongate.v1` protobuf package.
#![forbid(unsafe_code)]

pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/moongate.v1.rs"));
}
