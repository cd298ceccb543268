//! Build script: compiles `proto/chat.proto` and `proto/admin.proto` with a vendored `protoc`
//! (nothing to install), and generates the server side of `ChatService` by hand-description so
//! that its responses can be pre-encoded bytes (see `src/edge/codec.rs`) while clients keep the plain
//! prost types.

use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; protoc is looked up through this variable.
    unsafe { env::set_var("PROTOC", protoc) };
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);

    // Messages, clients and the AdminService server, plus the descriptor set that reflection
    // serves. The prost-generated ChatService server is left unused in favour of the one below.
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("chat_descriptor.bin"))
        .compile_protos(&["proto/chat.proto", "proto/admin.proto"], &["proto"])?;

    // The server stub: requests decode to `Message`, responses are already-encoded `Bytes`,
    // so a broadcast is encoded once and only copied per member.
    let chat_stream = tonic_build::manual::Method::builder()
        .name("chat_stream")
        .route_name("ChatStream")
        .input_type("crate::proto::Message")
        .output_type("bytes::Bytes")
        .codec_path("crate::edge::codec::ChatCodec")
        .client_streaming()
        .server_streaming()
        .build();
    let service = tonic_build::manual::Service::builder()
        .name("ChatService")
        .package("chat.v1")
        .method(chat_stream)
        .build();
    tonic_build::manual::Builder::new()
        .build_client(false)
        .compile(&[service]);

    println!("cargo:rerun-if-changed=proto/chat.proto");
    println!("cargo:rerun-if-changed=proto/admin.proto");
    Ok(())
}
