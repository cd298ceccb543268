//! Build script: compiles `proto/chat.proto` and `proto/admin.proto` with a vendored `protoc`
//! (nothing to install). The `ChatService` server is not generated: its route
//! (`src/edge/route.rs`) sends the rooms' pre-encoded bytes as they are.

use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; protoc is looked up through this variable.
    unsafe { env::set_var("PROTOC", protoc) };
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);

    // Messages, clients and the AdminService server, plus the descriptor set that reflection
    // serves. The prost-generated ChatService server is left unused (see `src/edge/route.rs`).
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("chat_descriptor.bin"))
        .compile_protos(&["proto/chat.proto", "proto/admin.proto"], &["proto"])?;

    println!("cargo:rerun-if-changed=proto/chat.proto");
    println!("cargo:rerun-if-changed=proto/admin.proto");
    Ok(())
}
