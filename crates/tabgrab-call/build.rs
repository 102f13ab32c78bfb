//! Compiles `proto/tabgrab_call.proto` with protox, a pure-Rust proto compiler, so a fresh
//! machine needs no `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/tabgrab_call.proto");
    #[cfg(feature = "grpc")]
    compile()?;
    Ok(())
}

/// Compiles the proto (only with the `grpc` feature).
#[cfg(feature = "grpc")]
fn compile() -> Result<(), Box<dyn std::error::Error>> {
    let fds = protox::compile(["tabgrab_call.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .bytes(".")
        // Decoding errors as INVALID_ARGUMENT (src/grpc/codec.rs).
        .codec_path("crate::grpc::ProtoCodec")
        .compile_fds(fds)?;
    Ok(())
}
