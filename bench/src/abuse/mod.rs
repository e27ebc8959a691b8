//! The abuse bench (`bench/abuse`): issue 14's fault-finding abuse repeated
//! as one command. Each part (CNI plugin, DNS over TCP, ingress protocol)
//! returns rows: what was done, the figure measured, the target and
//! whether the figure meets it. A row never passes on something unmeasured.

pub mod cni;
mod cni_cases;
mod cni_host;
pub mod dns;
pub mod ingress;

use serde::Serialize;

/// One measured check.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// cni, dns or ingress.
    pub part: &'static str,
    /// The abuse, in a few words.
    pub check: String,
    /// What was measured, with its numbers.
    pub measured: String,
    /// The target.
    pub target: String,
    pub pass: bool,
}

impl Row {
    pub fn new(
        part: &'static str,
        check: impl Into<String>,
        measured: impl Into<String>,
        target: impl Into<String>,
        pass: bool,
    ) -> Row {
        Row {
            part,
            check: check.into(),
            measured: measured.into(),
            target: target.into(),
            pass,
        }
    }
}

/// Every row of a run, with how long each part took.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub rows: Vec<Row>,
    /// (part, seconds).
    pub durations: Vec<(&'static str, f64)>,
}

impl Report {
    pub fn passed(&self) -> usize {
        self.rows.iter().filter(|r| r.pass).count()
    }
}

/// The table: one line per row; long measurements wrap under their row.
pub fn print_table(report: &Report) {
    println!(
        "podwire abuse bench: issue 14's abuse repeated; {} of {} checks pass",
        report.passed(),
        report.rows.len()
    );
    println!(
        "{:<7} {:<46} {:<4} {:<40} measured",
        "part", "check", "", "target"
    );
    for row in &report.rows {
        let verdict = if row.pass { "ok" } else { "FAIL" };
        let mut lines = wrap(&row.measured, 70).into_iter();
        let first = lines.next().unwrap_or_default();
        let mut check = wrap(&row.check, 46).into_iter();
        let mut target = wrap(&row.target, 40).into_iter();
        println!(
            "{:<7} {:<46} {:<4} {:<40} {first}",
            row.part,
            check.next().unwrap_or_default(),
            verdict,
            target.next().unwrap_or_default(),
        );
        loop {
            let (c, t, m) = (check.next(), target.next(), lines.next());
            if c.is_none() && t.is_none() && m.is_none() {
                break;
            }
            let line = format!(
                "{:<7} {:<46} {:<4} {:<40} {}",
                "",
                c.unwrap_or_default(),
                "",
                t.unwrap_or_default(),
                m.unwrap_or_default()
            );
            println!("{}", line.trim_end());
        }
    }
    let took: Vec<String> = report
        .durations
        .iter()
        .map(|(part, s)| format!("{part} {s:.0} s"))
        .collect();
    println!("took: {}", took.join(", "));
}

/// Splits `text` into lines of at most `width` characters at spaces (a word
/// longer than that gets a line of its own).
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut line = String::new();
    for word in text.split(' ') {
        if !line.is_empty() && line.chars().count() + 1 + word.chars().count() > width {
            lines.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() {
        lines.push(line);
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::wrap;

    #[test]
    fn wrap_at_spaces() {
        assert_eq!(wrap("aa bb cc", 5), ["aa bb", "cc"]);
        assert_eq!(wrap("abcdefgh x", 4), ["abcdefgh", "x"]);
        assert!(wrap("", 4).is_empty());
    }
}
