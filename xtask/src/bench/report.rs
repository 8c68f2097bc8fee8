//! The bench's output: `docs/benchmarks.md` (the machine, one table of every figure with its
//! baseline, ratio and goal, then how each section measured) and `docs/benchmarks.json` (the
//! same, with the raw figures). Both files are rewritten whole by each run.

use std::{
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, Result};
use serde_json::{json, Value};

use super::{Machine, Row, Section};

pub struct Report<'a> {
    pub machine: &'a Machine,
    pub sections: &'a [Section],
    pub took: Duration,
    pub other_agents: &'a [String],
    pub left_behind: &'a [String],
}

pub struct Written {
    pub markdown: PathBuf,
    pub json: PathBuf,
    /// The results table, for the terminal.
    pub table: String,
}

/// A figure with as many decimals as it needs to show three or four significant digits.
fn number(v: f64) -> String {
    let a = v.abs();
    if a >= 1000.0 {
        format!("{v:.0}")
    } else if a >= 100.0 {
        format!("{v:.1}")
    } else if a >= 10.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

fn goal_text(row: &Row) -> String {
    match &row.goal {
        None => String::new(),
        Some(g) if g.met => format!("goal {}: met ({})", g.text, g.measured),
        Some(g) => format!("goal {}: **missed** (measured {})", g.text, g.measured),
    }
}

/// One row as a line for the terminal.
pub fn row_line(row: &Row) -> String {
    match (row.faultline, row.baseline) {
        (Some(f), Some(b)) => format!(
            "{}: faultline {} {}, {} {}; {} {}",
            row.figure,
            number(f),
            row.unit,
            row.baseline_name,
            number(b),
            row.ratio_text,
            goal_text(row).replace("**", "")
        ),
        _ => format!("{}: {}", row.figure, row.note),
    }
}

fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}

fn table(sections: &[Section]) -> String {
    let mut out = String::from(
        "| figure | faultline | baseline | ratio | unit | goal |\n| --- | --: | --- | --- | --- | --- |\n",
    );
    for section in sections {
        let _ = writeln!(out, "| **{}** | | | | | |", cell(&section.title));
        for row in &section.rows {
            let (faultline, baseline) = match (row.faultline, row.baseline) {
                (Some(f), Some(b)) => (number(f), format!("{} ({})", number(b), row.baseline_name)),
                (Some(f), None) => (number(f), String::new()),
                _ => (String::new(), String::new()),
            };
            let figure = if row.note.is_empty() {
                row.figure.clone()
            } else {
                format!("{} — {}", row.figure, row.note)
            };
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} |",
                cell(&figure),
                faultline,
                cell(&baseline),
                cell(&row.ratio_text),
                cell(&row.unit),
                cell(&goal_text(row))
            );
        }
    }
    out
}

fn markdown(r: &Report, table: &str) -> String {
    let m = r.machine;
    let mut out = String::from(
        "# Benchmarks\n\nWritten by `cargo xtask bench` (xtask/src/bench/); run it again to \
         update this file and `benchmarks.json` beside it. Every figure below was measured in \
         one run on the machine described, side by side with its baseline, measured in the same \
         run: the ratios carry over to other machines better than the absolute times do. The \
         gRPC calls are timed by the bench's own client, built with optimizations, in the \
         same process as the timer.\n\n",
    );
    let _ = writeln!(out, "| | |\n| --- | --- |");
    let _ = writeln!(
        out,
        "| machine | {}, {} cores, {:.1} GiB of memory |",
        cell(&m.cpu_model),
        m.cores,
        m.memory_bytes as f64 / (1u64 << 30) as f64
    );
    let _ = writeln!(out, "| kernel | {} |", cell(&m.kernel));
    let _ = writeln!(out, "| date | {} |", m.date);
    let _ = writeln!(out, "| commit | {} |", cell(&m.commit));
    let _ = writeln!(
        out,
        "| agents' journal on | {} |",
        cell(&m.state_filesystem)
    );
    let _ = writeln!(
        out,
        "| the bench took | {}m{:02}s |",
        r.took.as_secs() / 60,
        r.took.as_secs() % 60
    );
    let _ = writeln!(
        out,
        "| other faultline agents running | {} |",
        if r.other_agents.is_empty() {
            "none".to_owned()
        } else {
            cell(&r.other_agents.join("; "))
        }
    );
    let _ = write!(out, "\n## Results\n\n{table}");
    out.push_str("\n## How each section measured\n");
    for section in r.sections.iter().filter(|s| !s.method.is_empty()) {
        let _ = write!(out, "\n### {}\n\n{}\n", section.title, section.method);
    }
    out.push_str("\n## Left behind\n\n");
    if r.left_behind.is_empty() {
        out.push_str(
            "Nothing: after the run no network namespace, bpffs pin directory, cgroup or \
             directory named `faultline-bench-<pid>` remained (checked by the bench itself).\n",
        );
    } else {
        let _ = writeln!(
            out,
            "The bench found these still present at its end: {}.",
            r.left_behind.join(", ")
        );
    }
    out
}

fn json_row(row: &Row) -> Value {
    json!({
        "figure": row.figure,
        "faultline": row.faultline,
        "baseline": row.baseline,
        "baseline_name": row.baseline_name,
        "ratio": row.ratio,
        "ratio_text": row.ratio_text,
        "unit": row.unit,
        "goal": row.goal.as_ref().map(|g| json!({ "goal": g.text, "met": g.met, "measured": g.measured })),
        "note": row.note,
    })
}

fn json_report(r: &Report) -> Value {
    let m = r.machine;
    json!({
        "generated_by": "cargo xtask bench",
        "date": m.date,
        "machine": { "cpu_model": m.cpu_model, "cores": m.cores, "memory_bytes": m.memory_bytes },
        "kernel": m.kernel,
        "commit": m.commit,
        "journal_filesystem": m.state_filesystem,
        "took_seconds": r.took.as_secs_f64(),
        "other_agents": r.other_agents,
        "sections": r.sections.iter().map(|s| json!({
            "title": s.title,
            "method": s.method,
            "rows": s.rows.iter().map(json_row).collect::<Vec<_>>(),
            "details": s.details,
        })).collect::<Vec<_>>(),
        "left_behind": r.left_behind,
    })
}

/// Writes `benchmarks.md` and `benchmarks.json` into `dir`.
pub fn write(dir: &Path, r: &Report) -> Result<Written> {
    let table = table(r.sections);
    let markdown_path = dir.join("benchmarks.md");
    let json_path = dir.join("benchmarks.json");
    fs::write(&markdown_path, markdown(r, &table))
        .with_context(|| format!("writing {}", markdown_path.display()))?;
    let json = serde_json::to_string_pretty(&json_report(r)).context("encoding the report")?;
    fs::write(&json_path, json + "\n")
        .with_context(|| format!("writing {}", json_path.display()))?;
    Ok(Written {
        markdown: markdown_path,
        json: json_path,
        table,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missed_goals_say_so_with_the_measured_value() {
        let row = Row::new("block apply p50", "ms")
            .values(1.5, 10.0, "`nft` binary")
            .speedup()
            .goal("≥ 20x faster", false, "6.7x");
        let sections = [Section {
            title: "Latency".to_owned(),
            method: String::new(),
            rows: vec![row],
            details: Value::Null,
        }];
        let t = table(&sections);
        assert!(
            t.contains(
                "| block apply p50 | 1.500 | 10.00 (`nft` binary) | 6.7x faster | ms | goal ≥ 20x \
                 faster: **missed** (measured 6.7x) |"
            ),
            "{t}"
        );
        assert_eq!(number(1234.4), "1234");
        assert_eq!(number(0.01234), "0.012");
    }
}
