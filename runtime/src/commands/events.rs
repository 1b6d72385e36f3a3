//! `husk events`: resource statistics as runc's event stream (`{"type":"stats",…}`).

use std::time::Duration;

use anyhow::Result;
use clap::Args;
use husk_runtime::container::Container;
use husk_runtime::shared_kernel::Access;

use super::GlobalOpts;

#[derive(Debug, Args)]
pub struct EventsArgs {
    /// Print statistics once and exit.
    #[arg(long)]
    pub stats: bool,
    /// Time between statistics (e.g. 5s, 500ms, 1m).
    #[arg(long, default_value = "5s", value_parser = parse_interval)]
    pub interval: Duration,
    pub container_id: String,
}

fn parse_interval(text: &str) -> Result<Duration, String> {
    let invalid = || format!("invalid interval {text:?}: use e.g. 5s, 500ms or 1m");
    let (number, unit) = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .map(|at| text.split_at(at))
        .unwrap_or((text, "s"));
    let value: f64 = number.parse().map_err(|_| invalid())?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(invalid()),
    };
    if !(seconds > 0.0 && seconds.is_finite()) {
        return Err(invalid());
    }
    Ok(Duration::from_secs_f64(seconds))
}

pub fn run(args: EventsArgs, global: &GlobalOpts) -> Result<()> {
    let id = &args.container_id;
    loop {
        // Opened afresh each round: the status (and a vm container's state) moves.
        let stats = Container::open(&global.root, id, Access::Shared)?.stats()?;
        let event = serde_json::json!({ "type": "stats", "id": id, "data": stats });
        println!("{}", serde_json::to_string(&event)?);
        if args.stats {
            return Ok(());
        }
        std::thread::sleep(args.interval);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals() {
        assert_eq!(parse_interval("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_interval("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_interval("2").unwrap(), Duration::from_secs(2));
        assert!(parse_interval("0s").is_err());
        assert!(parse_interval("5x").is_err());
    }
}
