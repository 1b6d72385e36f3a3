//! Arbitrary strings through the agent's id and path validation
//! (`husk_agent::validate`), checked against independent oracles, and resolved under
//! a scratch base directory full of symlinks that lead outside it. The invariant
//! that matters: a path `resolve_under` accepts is, by device and inode, inside the
//! base. Input that is not UTF-8 is skipped: ids and paths arrive as protobuf
//! `string`s, which the decoder refuses unless they are UTF-8.
#![no_main]

use husk_agent::validate::{self, ValidationError};
use husk_agent_fuzz::{id_is_valid, is_inside, relative_components, Tree};
use libfuzzer_sys::fuzz_target;
use std::path::{Component, PathBuf};
use std::sync::OnceLock;

static TREE: OnceLock<Tree> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    check_ids(s);
    let expected = relative_components(s).map(|parts| parts.iter().collect::<PathBuf>());
    check_relative(s, expected.as_ref());
    check_resolve(s, expected.as_ref());
});

fn check_ids(s: &str) {
    let valid = id_is_valid(s);
    match validate::container_id(s) {
        Ok(id) => assert!(valid && id == s, "container id {s:?} accepted"),
        Err(ValidationError::Id { .. }) => assert!(!valid, "container id {s:?} refused"),
        Err(e) => panic!("container id {s:?}: unexpected error {e:?}"),
    }
    let exec_valid = s.is_empty() || valid;
    assert_eq!(
        validate::exec_id(s).is_ok(),
        exec_valid,
        "exec id {s:?}: validator and oracle disagree"
    );
}

fn check_relative(s: &str, expected: Option<&PathBuf>) {
    match (validate::relative_path(s), expected) {
        (Ok(p), Some(want)) => {
            assert_eq!(&p, want, "relative path {s:?}");
            assert!(
                p.components().all(|c| matches!(c, Component::Normal(_))),
                "relative path {s:?} -> {p:?} has a non-normal component"
            );
        }
        (Err(ValidationError::Path(_)), None) => {}
        (got, want) => panic!("relative path {s:?}: got {got:?}, oracle says {want:?}"),
    }
}

fn check_resolve(s: &str, expected: Option<&PathBuf>) {
    let tree = TREE.get_or_init(|| {
        let tree = Tree::new().expect("build the scratch tree");
        husk_agent_fuzz::self_check(&tree);
        tree
    });
    let base = &tree.base;
    let result = validate::resolve_under(base, s);
    let Some(rel) = expected else {
        assert!(
            matches!(result, Err(ValidationError::Path(_))),
            "resolve {s:?}: refused path got {result:?}"
        );
        return;
    };
    // What the kernel makes of the same path (the tree does not change).
    let target = base.join(rel).canonicalize();
    match result {
        Ok(real) => {
            assert!(
                is_inside(&real, base),
                "ESCAPE: {s:?} accepted as {real:?}, outside {base:?}"
            );
            assert_eq!(
                target.as_ref().ok(),
                Some(&real),
                "resolve {s:?}: not the object the path names"
            );
        }
        Err(ValidationError::Escape { .. }) => {
            let target = target.expect("an escape names an existing object");
            assert!(
                !is_inside(&target, base),
                "resolve {s:?}: {target:?} is inside {base:?} but was refused"
            );
        }
        Err(ValidationError::Resolve { .. }) => {
            assert!(
                target.is_err(),
                "resolve {s:?}: {target:?} exists but failed"
            );
        }
        Err(e) => panic!("resolve {s:?}: unexpected error {e:?}"),
    }
}
