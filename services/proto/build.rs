//! Generates the Rust code of the wire contract from every `.proto` file under
//! `<workspace>/proto` with `tonic-prost-build` (messages and, when a file
//! declares one, gRPC services), using the vendored `protoc` and its bundled
//! `google/protobuf/*.proto` includes, so nothing needs to be installed.

use std::io;
use std::path::{Path, PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let proto_root = manifest_dir.join("../../proto");
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);

    println!("cargo:rerun-if-changed={}", proto_root.display());
    println!("cargo:rerun-if-changed=build.rs");

    let mut protos = Vec::new();
    collect_protos(&proto_root, &mut protos)?;
    protos.sort();
    if protos.is_empty() {
        return Err(format!("no .proto files under {}", proto_root.display()).into());
    }

    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    let well_known = protoc_bin_vendored::include_path()?;

    let mut config = prost_build::Config::new();
    config
        .protoc_executable(protoc)
        // Identity numbers must not leak through `{:?}`: Debug is written by hand.
        .skip_debug([".duijie.v1.IdentityDocument"])
        .file_descriptor_set_path(out_dir.join("duijie_descriptor.bin"));

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_with_config(config, &protos, &[proto_root, well_known])?;
    Ok(())
}

/// Pushes every `*.proto` file below `dir` (recursively) onto `out`.
fn collect_protos(dir: &Path, out: &mut Vec<PathBuf>) -> io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect_protos(&path, out)?;
        } else if path.extension().is_some_and(|ext| ext == "proto") {
            out.push(path);
        }
    }
    Ok(())
}
