//! The sample lines of the Prometheus text format (0.0.4) and of
//! OpenMetrics 1.0, read one line at a time:
//!
//! ```text
//! name{label="value",…} value [timestamp] [# {exemplar labels} value [timestamp]]
//! ```
//!
//! Comments (`# HELP`, `# TYPE`, `# UNIT`, `# EOF`, any other `#` line) and
//! blank lines are no samples. Reading a line never panics and allocates
//! only the label pairs it returns; a line that is not a sample is an error
//! of one line saying what was expected where.

/// One sample line.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample<'a> {
    pub name: &'a str,
    /// In the order written; escapes resolved.
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

/// Reads one line: `Ok(None)` for a comment or a blank line.
pub fn parse_line(line: &str) -> Result<Option<Sample<'_>>, String> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return Ok(None);
    }
    let mut p = Cursor { s: line, at: 0 };
    let name = p.name(true).ok_or("expected a metric name")?;
    let mut labels = Vec::new();
    let mut spaced = p.spaces();
    if p.eat('{') {
        loop {
            p.spaces();
            if p.eat('}') {
                break;
            }
            let key = p.name(false).ok_or("expected a label name or '}'")?;
            p.spaces();
            if !p.eat('=') {
                return Err(format!("expected '=' after label {key}"));
            }
            p.spaces();
            let value = p.quoted().ok_or_else(|| {
                format!("expected a quoted value for label {key}, closed by '\"'")
            })?;
            if labels.iter().any(|(k, _)| k == key) {
                return Err(format!("label {key} is given twice"));
            }
            labels.push((key.to_string(), value));
            p.spaces();
            if p.eat(',') {
                continue;
            }
            if p.eat('}') {
                break;
            }
            return Err("expected ',' or '}' after a label".into());
        }
        spaced = p.spaces();
    }
    if !spaced {
        return Err("expected a space and a value after the metric".into());
    }
    let value = p.word();
    let value = number(value).ok_or_else(|| format!("{value:?} is not a number"))?;
    if p.spaces() && !p.rest().is_empty() && !p.rest().starts_with('#') {
        let stamp = p.word();
        if number(stamp).is_none_or(|t| !t.is_finite()) {
            return Err(format!("{stamp:?} is not a timestamp"));
        }
        p.spaces();
    }
    // What follows is an exemplar (OpenMetrics), which no signal uses.
    if !p.rest().is_empty() && !p.rest().starts_with('#') {
        return Err("unexpected text after the value".into());
    }
    Ok(Some(Sample {
        name,
        labels,
        value,
    }))
}

/// A sample value or label value as a number: Go's and the formats'
/// spellings (`+Inf`, `-Inf`, `NaN`, `1e3`, `.5`), no hex and no `_`.
pub fn number(s: &str) -> Option<f64> {
    let ok = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'));
    if !ok {
        return None;
    }
    let unsigned = s.trim_start_matches(['+', '-']);
    if unsigned.len() + 1 < s.len() {
        return None;
    }
    match unsigned.to_ascii_lowercase().as_str() {
        "inf" | "infinity" | "nan" => s.parse().ok(),
        u if u
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'+' | b'-')) =>
        {
            s.parse().ok()
        }
        _ => None,
    }
}

struct Cursor<'a> {
    s: &'a str,
    at: usize,
}

impl<'a> Cursor<'a> {
    fn rest(&self) -> &'a str {
        &self.s[self.at..]
    }

    fn eat(&mut self, c: char) -> bool {
        if self.rest().starts_with(c) {
            self.at += c.len_utf8();
            true
        } else {
            false
        }
    }

    /// Skips spaces and tabs; whether there were any.
    fn spaces(&mut self) -> bool {
        let n = self.rest().len() - self.rest().trim_start_matches([' ', '\t']).len();
        self.at += n;
        n > 0
    }

    /// `[a-zA-Z_][a-zA-Z0-9_]*`, and `:` too in a metric name.
    fn name(&mut self, metric: bool) -> Option<&'a str> {
        let rest = self.rest();
        let ok = |i: usize, b: u8| {
            b.is_ascii_alphabetic()
                || b == b'_'
                || (metric && b == b':')
                || (i > 0 && b.is_ascii_digit())
        };
        let n = rest
            .bytes()
            .enumerate()
            .take_while(|&(i, b)| ok(i, b))
            .count();
        (n > 0).then(|| {
            self.at += n;
            &rest[..n]
        })
    }

    /// A double-quoted label value with `\\`, `\"` and `\n` escapes; any
    /// other escaped character stands for itself.
    fn quoted(&mut self) -> Option<String> {
        if !self.eat('"') {
            return None;
        }
        let mut out = String::new();
        let mut chars = self.rest().char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '"' => {
                    self.at += i + 1;
                    return Some(out);
                }
                '\\' => match chars.next() {
                    Some((_, 'n')) => out.push('\n'),
                    Some((_, e)) => out.push(e),
                    None => return None,
                },
                c => out.push(c),
            }
        }
        None
    }

    /// Up to the next space or tab.
    fn word(&mut self) -> &'a str {
        let rest = self.rest();
        let n = rest.find([' ', '\t']).unwrap_or(rest.len());
        self.at += n;
        &rest[..n]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels<'a>(s: &'a Sample) -> Vec<(&'a str, &'a str)> {
        s.labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect()
    }

    #[test]
    fn reads_the_forms_of_both_formats() {
        let s = parse_line(r#"http_requests_total{method="post",code="200"} 1027 1395066363000"#)
            .unwrap()
            .unwrap();
        assert_eq!(s.name, "http_requests_total");
        assert_eq!(labels(&s), [("method", "post"), ("code", "200")]);
        assert_eq!(s.value, 1027.0);

        let s = parse_line("up 1").unwrap().unwrap();
        assert_eq!((s.name, s.value, s.labels.len()), ("up", 1.0, 0));

        let s = parse_line(r#"lat_bucket{le="+Inf",} 3 # {trace_id="a # b"} 0.5 1.0"#)
            .unwrap()
            .unwrap();
        assert_eq!(labels(&s), [("le", "+Inf")]);
        assert_eq!(s.value, 3.0);

        let s = parse_line("ns:rate_5m { a = \"x\" }\t-Inf")
            .unwrap()
            .unwrap();
        assert_eq!((s.name, s.value), ("ns:rate_5m", f64::NEG_INFINITY));
        assert!(parse_line("x NaN").unwrap().unwrap().value.is_nan());
        assert_eq!(parse_line("x 1.5e3 1.7e9").unwrap().unwrap().value, 1500.0);
        assert_eq!(parse_line("x{} .5").unwrap().unwrap().value, 0.5);
    }

    #[test]
    fn resolves_escapes_in_label_values() {
        let s = parse_line(r#"m{path="C:\\dir\"q\"\nx",u="é\z"} 1"#)
            .unwrap()
            .unwrap();
        assert_eq!(labels(&s), [("path", "C:\\dir\"q\"\nx"), ("u", "éz")]);
    }

    #[test]
    fn comments_and_blank_lines_are_no_samples() {
        for line in ["", "   ", "# HELP x y", "# TYPE x counter", "# EOF", "#"] {
            assert_eq!(parse_line(line).unwrap(), None, "{line:?}");
        }
    }

    #[test]
    fn says_what_was_expected() {
        let cases = [
            ("{a=\"b\"} 1", "expected a metric name"),
            ("9lives 1", "expected a metric name"),
            ("m{a=b} 1", "expected a quoted value for label a"),
            ("m{a=\"b} 1", "expected a quoted value for label a"),
            ("m{a=\"b\" c=\"d\"} 1", "expected ',' or '}'"),
            ("m{a=\"b\",a=\"c\"} 1", "label a is given twice"),
            ("m{1=\"b\"} 1", "expected a label name"),
            ("m{a} 1", "expected '=' after label a"),
            ("m", "expected a space and a value"),
            ("m{a=\"b\"}", "expected a space and a value"),
            ("m 0x10", "\"0x10\" is not a number"),
            ("m 1_000", "\"1_000\" is not a number"),
            ("m ++1", "\"++1\" is not a number"),
            ("m one", "\"one\" is not a number"),
            ("m 1 yesterday", "\"yesterday\" is not a timestamp"),
            ("m 1 2 3", "unexpected text after the value"),
            ("<html> 1", "expected a metric name"),
        ];
        for (line, want) in cases {
            let err = parse_line(line).unwrap_err();
            assert!(err.contains(want), "{line:?}: {err}");
        }
    }

    #[test]
    fn never_panics_on_cut_utf8_or_odd_bytes() {
        for line in [
            "m{a=\"\\",
            "m{a=\"é",
            "m{é=\"x\"} 1",
            "m{a=\"x\"}é 1",
            "m\u{a0}1",
            "m 1 \u{2028}",
        ] {
            let _ = parse_line(line);
        }
    }
}
