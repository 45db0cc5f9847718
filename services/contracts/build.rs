//! Compiles `proto/tocsin/v1/*.proto` into Rust types (prost) with serde impls that follow
//! the proto3 JSON mapping (pbjson). `protox` parses the files, so no system `protoc` is
//! needed.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let proto_root = manifest_dir.join("../../proto");
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);

    let mut files = Vec::new();
    for entry in std::fs::read_dir(proto_root.join("tocsin/v1"))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "proto") {
            println!("cargo:rerun-if-changed={}", path.display());
            files.push(path);
        }
    }
    files.sort();
    println!(
        "cargo:rerun-if-changed={}",
        proto_root.join("tocsin/v1").display()
    );

    let descriptors = protox::compile(&files, [&proto_root])?;
    let descriptor_path = out_dir.join("tocsin_descriptor.bin");
    std::fs::write(
        &descriptor_path,
        prost::Message::encode_to_vec(&descriptors),
    )?;

    prost_build::Config::new()
        .compile_well_known_types()
        .extern_path(".google.protobuf", "::pbjson_types")
        .file_descriptor_set_path(&descriptor_path)
        .compile_fds(descriptors)?;

    let descriptor_bytes = std::fs::read(&descriptor_path)?;
    pbjson_build::Builder::new()
        .register_descriptors(&descriptor_bytes)?
        .build(&[".tocsin"])?;
    Ok(())
}
