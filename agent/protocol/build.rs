//! Generates the protobuf messages and ttrpc client/server for `proto/agent.proto`
//! with pure-Rust parsing (no `protoc` needed).
//!
//! The generated files start with inner attributes (`#![...]`) and inner doc
//! comments, which `include!` cannot take inside a `mod { }`; they are stripped here
//! and the equivalent allows are put on the modules in `lib.rs`.

use std::path::PathBuf;

fn main() -> std::io::Result<()> {
    println!("cargo:rerun-if-changed=proto/agent.proto");
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    ttrpc_codegen::Codegen::new()
        .out_dir(&out_dir)
        .input("proto/agent.proto")
        .include("proto")
        .rust_protobuf()
        .customize(ttrpc_codegen::Customize::default())
        .run()?;
    for name in ["agent.rs", "agent_ttrpc.rs"] {
        let path = out_dir.join(name);
        let text = std::fs::read_to_string(&path)?;
        let kept: Vec<&str> = text
            .lines()
            .filter(|l| !l.starts_with("#![") && !l.starts_with("//!"))
            .collect();
        std::fs::write(&path, kept.join("\n"))?;
    }
    Ok(())
}
