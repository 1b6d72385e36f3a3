//! Container ids name directories under the runtime root, so they are checked before
//! anything touches the file system.

/// Longest id accepted. Engines use 64 hex digits; this leaves room for prefixes while
/// keeping `<root>/<id>/<file>` well below PATH_MAX and the id below NAME_MAX.
pub const MAX_ID_LEN: usize = 128;

/// Why an id was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ContainerIdError {
    /// The id is the empty string.
    #[error("container id must not be empty")]
    Empty,
    /// The id is longer than [`MAX_ID_LEN`].
    #[error("container id is {len} bytes long; the limit is {MAX_ID_LEN}")]
    TooLong { len: usize },
    /// The id holds a character outside `[A-Za-z0-9_.+-]` or starts with a dot.
    #[error(
        "container id {id:?} is invalid: use letters, digits, '_', '+', '-' and '.', \
         not starting with '.'"
    )]
    InvalidCharacters { id: String },
}

/// Checks that `id` can safely name a directory under the runtime root.
pub fn validate(id: &str) -> Result<(), ContainerIdError> {
    if id.is_empty() {
        return Err(ContainerIdError::Empty);
    }
    if id.len() > MAX_ID_LEN {
        return Err(ContainerIdError::TooLong { len: id.len() });
    }
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '+' | '-' | '.');
    if id.starts_with('.') || !id.chars().all(allowed) {
        return Err(ContainerIdError::InvalidCharacters { id: id.to_string() });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_engine_ids() {
        validate("a3f1c0de9b2e4f6a8c7d5e3b1a0f9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f").unwrap();
        validate("web-1_test.v2+x").unwrap();
    }

    #[test]
    fn refuses_path_tricks_and_extremes() {
        assert_eq!(validate(""), Err(ContainerIdError::Empty));
        for bad in ["..", ".", "../x", "a/b", "x y", ".hidden", "a\0b", "é"] {
            assert!(
                matches!(
                    validate(bad),
                    Err(ContainerIdError::InvalidCharacters { .. })
                ),
                "{bad:?} accepted"
            );
        }
        let long = "a".repeat(MAX_ID_LEN + 1);
        assert_eq!(
            validate(&long),
            Err(ContainerIdError::TooLong {
                len: MAX_ID_LEN + 1
            })
        );
        validate(&"a".repeat(MAX_ID_LEN)).unwrap();
    }
}
