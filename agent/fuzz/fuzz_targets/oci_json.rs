//! Arbitrary bytes as the JSON documents requests carry: the OCI spec of
//! CreateContainer (`container::validate_create`), the OCI process of ExecProcess
//! (`Containers::exec`, which parses before it looks the container up) and the
//! `linux.resources` of UpdateContainer (`container::parse_resources`).
//! request_decode reaches these too, but wrapped in protobuf, where most mutations
//! break the length prefix; here every input is a document. A bad document must be
//! a JSON or range error (INVALID_ARGUMENT), never a panic or a hang.
#![no_main]

use husk_agent::container::{self, ContainerError, Containers, Paths};
use husk_agent::oom::OomWatcher;
use husk_agent::reaper::Reaper;
use husk_agent::validate::{ValidationError, MAX_JSON_LEN};
use husk_agent_fuzz::Tree;
use libfuzzer_sys::fuzz_target;
use std::sync::{Arc, OnceLock};

struct Scratch {
    _tree: Tree,
    paths: Paths,
    containers: Containers,
}

static SCRATCH: OnceLock<Scratch> = OnceLock::new();

fn scratch() -> Scratch {
    let tree = Tree::new().expect("build the scratch tree");
    std::fs::create_dir_all(tree.base.join("c1/rootfs")).expect("mkdir rootfs");
    let paths = Paths {
        state: tree.root.join("state"),
        bundles: tree.root.join("bundles"),
        shared: tree.base.clone(),
        consoles: tree.root.join("console"),
        no_pivot: false,
    };
    let containers = Containers::new(
        paths.clone(),
        Arc::new(Reaper::default()),
        OomWatcher::start().expect("OOM watcher"),
    );
    Scratch {
        _tree: tree,
        paths,
        containers,
    }
}

/// Errors a document may cause: bad JSON, a size out of range, or (spec) no process.
fn is_document_error(e: &ContainerError) -> bool {
    matches!(
        e,
        ContainerError::Json { .. }
            | ContainerError::Unsupported(_)
            | ContainerError::Invalid(ValidationError::Range { .. })
    )
}

fuzz_target!(|data: &[u8]| {
    let s = SCRATCH.get_or_init(scratch);
    let size_ok = (2..=MAX_JSON_LEN).contains(&data.len());

    match container::validate_create(&s.paths, "c1", data, "c1/rootfs", false) {
        Ok(params) => {
            assert!(size_ok, "spec of {} bytes accepted", data.len());
            assert!(params.spec.process().is_some(), "spec without process");
            assert_eq!(params.rootfs, s.paths.shared.join("c1/rootfs"));
        }
        Err(e) => assert!(is_document_error(&e), "spec: {e:?}"),
    }

    match container::parse_resources(data) {
        Ok(_) => assert!(size_ok, "resources of {} bytes accepted", data.len()),
        Err(e) => assert!(is_document_error(&e), "resources: {e:?}"),
    }

    // No container exists: a document that parses ends in NOT_FOUND.
    match s.containers.exec("c1", "e1", data, false) {
        Err(ContainerError::NotFound(_)) => assert!(size_ok),
        Err(e) => assert!(is_document_error(&e), "process: {e:?}"),
        Ok(()) => panic!("exec in a container that does not exist"),
    }
    assert!(!s.paths.bundles.exists(), "a bundle was written");
});
