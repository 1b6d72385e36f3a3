//! Signal names and numbers as `kill` accepts them: `9`, `KILL`, `SIGKILL`, `sigkill`.

use std::str::FromStr;

use nix::sys::signal::Signal;

/// A signal argument that names no signal.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown signal {0:?}: use a name such as TERM, SIGKILL or a number such as 15")]
pub struct UnknownSignal(pub String);

/// Parses a signal given by name (with or without `SIG`, any case) or by number.
pub fn parse_signal(text: &str) -> Result<Signal, UnknownSignal> {
    let unknown = || UnknownSignal(text.to_string());
    let trimmed = text.trim();
    if let Ok(number) = trimmed.parse::<i32>() {
        return Signal::try_from(number).map_err(|_| unknown());
    }
    let upper = trimmed.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    Signal::from_str(&name).map_err(|_| unknown())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_and_numbers() {
        assert_eq!(parse_signal("9"), Ok(Signal::SIGKILL));
        assert_eq!(parse_signal("KILL"), Ok(Signal::SIGKILL));
        assert_eq!(parse_signal("SIGTERM"), Ok(Signal::SIGTERM));
        assert_eq!(parse_signal("usr1"), Ok(Signal::SIGUSR1));
        assert_eq!(parse_signal("SIGHUP"), Ok(Signal::SIGHUP));
    }

    #[test]
    fn refuses_unknown_signals() {
        for bad in ["SIGFOO", "FOO", "0", "999", "-1", ""] {
            assert!(parse_signal(bad).is_err(), "{bad:?} accepted");
        }
    }
}
