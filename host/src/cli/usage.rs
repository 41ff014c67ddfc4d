//! `berth usage`: what the services used, from the host's usage ledger —
//! totals per service (and per hour or day) for billing, or the records
//! themselves.

use super::{ClientArgs, output};
use crate::values::units::{parse_time, rfc3339};
use crate::values::usage::{Period, Record, Report, Totals};
use clap::Args;

#[derive(Debug, Args)]
pub struct UsageArgs {
    /// Only this service.
    #[arg(long)]
    service: Option<String>,
    /// From this time: RFC 3339, a date, or a duration ago (`1h`, `7d`).
    #[arg(long, value_parser = parse_time)]
    since: Option<i64>,
    /// Until this time (exclusive), in the same forms.
    #[arg(long, value_parser = parse_time)]
    until: Option<i64>,
    /// Totals per hour or per day (UTC) instead of per service only.
    #[arg(long, value_parser = clap::value_parser!(Period))]
    by: Option<Period>,
    /// List the records (one per invocation) instead of totals.
    #[arg(long, conflicts_with = "by")]
    records: bool,
    /// Most records listed.
    #[arg(long, default_value_t = 1000, requires = "records")]
    limit: usize,
    #[command(flatten)]
    client: ClientArgs,
}

impl clap::builder::ValueParserFactory for Period {
    type Parser = fn(&str) -> Result<Period, crate::values::usage::InvalidPeriod>;
    fn value_parser() -> Self::Parser {
        |s| s.parse()
    }
}

pub async fn run(args: UsageArgs) -> anyhow::Result<()> {
    let mut query = Vec::new();
    if let Some(service) = &args.service {
        query.push(format!("service={service}"));
    }
    // Absolute times, so that `1h` means an hour before now here.
    if let Some(since) = args.since {
        query.push(format!("since={}", rfc3339(since)));
    }
    if let Some(until) = args.until {
        query.push(format!("until={}", rfc3339(until)));
    }
    let client = args.client.client()?;
    if args.records {
        query.push(format!("limit={}", args.limit));
        let records: Vec<Record> = client
            .get(&format!("/v1/usage/records?{}", query.join("&")))
            .await?;
        if args.client.json {
            return output::json(&records);
        }
        print_records(&records);
        return Ok(());
    }
    if let Some(by) = args.by {
        query.push(format!("by={}", period_name(by)));
    }
    let report: Report = client
        .get(&format!("/v1/usage?{}", query.join("&")))
        .await?;
    if args.client.json {
        return output::json(&report);
    }
    print_report(&report, args.by.is_some());
    Ok(())
}

fn period_name(p: Period) -> &'static str {
    match p {
        Period::Hour => "hour",
        Period::Day => "day",
    }
}

fn print_report(report: &Report, by_period: bool) {
    let mut headers = vec!["SERVICE"];
    if by_period {
        headers.push("PERIOD");
    }
    headers.extend([
        "INVOCATIONS",
        "OK",
        "FAILED",
        "REJECTED",
        "COLD",
        "FUEL",
        "GB-S",
        "CPU MS",
        "WALL MS",
        "IN",
        "OUT",
    ]);
    let row = |t: &Totals, name: &str| {
        let mut cells = vec![name.to_owned()];
        if by_period {
            cells.push(t.period.clone().unwrap_or_default());
        }
        cells.extend([
            t.invocations.to_string(),
            t.ok.to_string(),
            t.failed.to_string(),
            t.rejected.to_string(),
            t.cold_starts.to_string(),
            t.fuel.to_string(),
            format!("{:.6}", t.gb_seconds),
            format!("{:.1}", t.cpu_ms),
            format!("{:.1}", t.wall_ms),
            output::size(t.bytes_in),
            output::size(t.bytes_out),
        ]);
        cells
    };
    let mut rows: Vec<Vec<String>> = report
        .rows
        .iter()
        .map(|t| row(t, t.service.as_deref().unwrap_or("")))
        .collect();
    if report.rows.len() > 1 {
        rows.push(row(&report.total, "TOTAL"));
    }
    output::table(&headers, &rows);
}

fn print_records(records: &[Record]) {
    let rows: Vec<Vec<String>> = records
        .iter()
        .map(|r| {
            vec![
                r.invocation.clone(),
                r.service.clone(),
                r.revision.to_string(),
                r.trigger.as_str().to_owned(),
                rfc3339(r.started_ms),
                r.outcome.to_string(),
                r.status.map(|s| s.to_string()).unwrap_or_default(),
                format!("{:.2}", r.wall_us as f64 / 1000.0),
                format!("{:.2}", r.cpu_us as f64 / 1000.0),
                r.fuel.to_string(),
                output::size(r.peak_memory),
                if r.cold { "cold" } else { "" }.to_owned(),
            ]
        })
        .collect();
    output::table(
        &[
            "INVOCATION",
            "SERVICE",
            "REV",
            "TRIGGER",
            "STARTED",
            "OUTCOME",
            "STATUS",
            "WALL MS",
            "CPU MS",
            "FUEL",
            "MEMORY",
            "",
        ],
        &rows,
    );
}
