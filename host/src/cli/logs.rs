//! `berth logs [SERVICE]`: a service's recent log lines — its guests'
//! stdout and stderr and the host's lines about its invocations — from
//! the host's buffer, and with `-f` each new one as it comes (`GET
//! /v1/logs`, streamed as one JSON object per line).

use super::ClientArgs;
use crate::values::units::{parse_time, rfc3339};
use clap::Args;
use http_body_util::BodyExt;
use std::io::Write;

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// The service (every service's lines without one).
    service: Option<String>,
    /// Keep following: print each new line as it comes, until interrupted.
    #[arg(short, long)]
    follow: bool,
    /// Lines from this time on: RFC 3339, a date, or a duration ago (`10m`).
    #[arg(long, value_parser = parse_time)]
    since: Option<i64>,
    /// Lines about this invocation only.
    #[arg(long)]
    invocation: Option<String>,
    /// Lines at this level or above: debug, info, warn, error.
    #[arg(long)]
    level: Option<String>,
    /// Only the last N lines kept (then, with -f, every new one).
    #[arg(long, value_name = "N")]
    tail: Option<usize>,
    #[command(flatten)]
    client: ClientArgs,
}

pub async fn run(args: LogsArgs) -> anyhow::Result<()> {
    let mut query: Vec<(&str, String)> = Vec::new();
    if let Some(service) = &args.service {
        query.push(("service", service.clone()));
    }
    // An absolute time, so that `10m` means ten minutes before now here.
    if let Some(since) = args.since {
        query.push(("since", rfc3339(since)));
    }
    if let Some(invocation) = &args.invocation {
        query.push(("invocation", invocation.clone()));
    }
    if let Some(level) = &args.level {
        query.push(("level", level.clone()));
    }
    if let Some(tail) = args.tail {
        query.push(("tail", tail.to_string()));
    }
    if args.follow {
        query.push(("follow", "1".into()));
    }
    let query = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(query)
        .finish();
    let client = args.client.client()?;
    let mut body = client.stream(&format!("/v1/logs?{query}")).await?;
    let mut pending: Vec<u8> = Vec::new();
    let stdout = std::io::stdout();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| anyhow::anyhow!("the admin API's stream broke: {e}"))?;
        let Some(data) = frame.data_ref() else {
            continue;
        };
        pending.extend_from_slice(data);
        let mut text = Vec::new();
        while let Some(end) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line[..end]);
            // Blank lines keep a quiet stream alive.
            if line.trim().is_empty() {
                continue;
            }
            if args.client.json {
                writeln!(text, "{line}")?;
            } else {
                print_line(&mut text, &line)?;
            }
        }
        let mut out = stdout.lock();
        match out.write_all(&text).and_then(|()| out.flush()) {
            Ok(()) => {}
            // Whoever reads (`| head`) has seen enough.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// One line for people: `TIME NODE SERVICE INVOCATION STREAM LEVEL: TEXT`.
fn print_line(out: &mut impl Write, line: &str) -> std::io::Result<()> {
    let Ok(value) = serde_json::from_str::<serde_json::Value>(line) else {
        return writeln!(out, "{line}");
    };
    if let Some(skipped) = value["skipped"].as_u64() {
        eprintln!("berth logs: {skipped} lines skipped: this follower fell behind");
        return Ok(());
    }
    if let Some(nodes) = value["unanswered"].as_array() {
        let nodes: Vec<&str> = nodes.iter().filter_map(|n| n.as_str()).collect();
        eprintln!(
            "berth logs: no answer from node {} in time: its lines are not shown",
            nodes.join(", ")
        );
        return Ok(());
    }
    let text = |key: &str| value[key].as_str().unwrap_or("-").to_owned();
    let time = value["time_ms"]
        .as_i64()
        .map_or_else(|| "-".to_owned(), rfc3339);
    let level = text("level").to_ascii_uppercase();
    writeln!(
        out,
        "{time} {} {} {} {} {level}: {}",
        text("node"),
        text("service"),
        text("invocation"),
        text("stream"),
        text("text")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_printed_with_their_tags() {
        let mut out = Vec::new();
        print_line(
            &mut out,
            r#"{"seq":3,"time_ms":0,"node":"n1","service":"hello","invocation":"01ABC","stream":"stdout","level":"info","text":"hi there"}"#,
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "1970-01-01T00:00:00.000Z n1 hello 01ABC stdout INFO: hi there\n"
        );
    }
}
