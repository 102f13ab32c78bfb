//! Compiles `proto/payment.proto` with protox, a pure-Rust proto compiler, so a fresh machine
//! needs no `protoc`; and records the compiler's version (`PIZZERIA_RUSTC_VERSION`) for the
//! lab's report, so the binary never needs `rustc` at run time.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/payment.proto");
    println!("cargo:rerun-if-env-changed=RUSTC");
    // Cargo gives a build script the compiler it uses in `RUSTC`.
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_owned());
    if let Ok(output) = std::process::Command::new(rustc).arg("--version").output() {
        let version = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        if output.status.success() && !version.is_empty() {
            println!("cargo:rustc-env=PIZZERIA_RUSTC_VERSION={version}");
        }
    }
    let fds = protox::compile(["payment.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // A request that is not protobuf is INVALID_ARGUMENT, as on tabgrab's own service.
        .codec_path("tabgrab_call::grpc::ProtoCodec")
        .compile_fds(fds)?;
    Ok(())
}
