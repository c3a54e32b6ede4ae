//! The `moongate.v1` protobuf contract between controller and dataplane, and
//! the rules over it that both sides must compute identically.
#![forbid(unsafe_code)]

pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/moongate.v1.rs"));
}

pub mod snapshot;
