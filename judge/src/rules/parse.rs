//! The parser of `when` expressions and their canonical printing.
//!
//! Grammar, with `and` binding tighter than `or`:
//!
//! ```text
//! expr       := all ("or" all)*
//! all        := primary ("and" primary)*
//! primary    := "(" expr ")" | comparison
//! comparison := SIGNAL OP value ["for" DURATION]
//! OP         := ">" | ">=" | "<" | "<=" | "==" | "!="
//! value      := ["-"] NUMBER ["%"]          a number; 5% is 0.05
//!             | NUMBER "x" "baseline"       N times the baseline
//!             | "baseline" "+" NUMBER "%"   the baseline plus N percent
//! ```

use std::fmt;
use std::time::Duration;

use super::{Comparison, Expr, Op, ParseError, Value};

const KEYWORDS: &[&str] = &["and", "or", "for", "baseline"];

/// Parses a `when` expression.
pub fn parse(text: &str) -> Result<Expr, ParseError> {
    let mut p = Parser {
        text,
        pos: 0,
        depth: 0,
    };
    let expr = p.any()?;
    p.skip_ws();
    if p.pos < text.len() {
        let found = p.peek_token();
        return Err(p.error_at(
            p.pos,
            format!("expected \"and\", \"or\" or the end of the expression, found {found:?}"),
        ));
    }
    Ok(expr)
}

struct Parser<'a> {
    text: &'a str,
    /// Byte offset of the next character.
    pos: usize,
    /// Parentheses open around the current position.
    depth: usize,
}

/// The deepest nesting of parentheses accepted: far beyond what a rule
/// needs, and far below what would exhaust the stack.
const MAX_DEPTH: usize = 32;

impl Parser<'_> {
    fn error_at(&self, byte: usize, message: impl Into<String>) -> ParseError {
        ParseError {
            column: self.text[..byte.min(self.text.len())].chars().count() + 1,
            message: message.into(),
        }
    }

    fn rest(&self) -> &str {
        &self.text[self.pos..]
    }

    fn skip_ws(&mut self) {
        let trimmed = self.rest().trim_start();
        self.pos = self.text.len() - trimmed.len();
    }

    /// The next word or symbol, for error messages.
    fn peek_token(&self) -> String {
        let rest = self.rest();
        let end = rest
            .char_indices()
            .find(|&(i, c)| c.is_whitespace() || (i > 0 && matches!(c, '(' | ')')))
            .map_or(rest.len(), |(i, _)| i);
        rest[..end.max(rest.chars().next().map_or(0, char::len_utf8))].to_string()
    }

    /// Consumes `word` when it is the next whole word.
    fn keyword(&mut self, word: &str) -> bool {
        self.skip_ws();
        let rest = self.rest();
        if rest.starts_with(word)
            && !rest[word.len()..]
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            self.pos += word.len();
            true
        } else {
            false
        }
    }

    fn symbol(&mut self, s: &str) -> bool {
        self.skip_ws();
        if self.rest().starts_with(s) {
            self.pos += s.len();
            true
        } else {
            false
        }
    }

    fn any(&mut self) -> Result<Expr, ParseError> {
        let mut parts = vec![self.all()?];
        while self.keyword("or") {
            parts.push(self.all()?);
        }
        Ok(parts
            .into_iter()
            .reduce(Expr::or)
            .expect("one part at least"))
    }

    fn all(&mut self) -> Result<Expr, ParseError> {
        let mut parts = vec![self.primary()?];
        while self.keyword("and") {
            parts.push(self.primary()?);
        }
        Ok(parts
            .into_iter()
            .reduce(Expr::and)
            .expect("one part at least"))
    }

    fn primary(&mut self) -> Result<Expr, ParseError> {
        self.skip_ws();
        let open = self.pos;
        if self.symbol("(") {
            if self.depth >= MAX_DEPTH {
                return Err(self.error_at(
                    open,
                    format!("parentheses nested more than {MAX_DEPTH} deep"),
                ));
            }
            self.depth += 1;
            let inner = self.any();
            self.depth -= 1;
            let inner = inner?;
            if !self.symbol(")") {
                let found = self.found();
                return Err(self.error_at(
                    self.pos,
                    format!(
                        "expected \")\" to close the \"(\" at column {}, found {found}",
                        self.error_at(open, "").column
                    ),
                ));
            }
            return Ok(inner);
        }
        self.comparison().map(Expr::Cmp)
    }

    /// What comes next, quoted, or "the end".
    fn found(&mut self) -> String {
        self.skip_ws();
        if self.pos >= self.text.len() {
            "the end".into()
        } else {
            format!("{:?}", self.peek_token())
        }
    }

    fn identifier(&mut self) -> Option<&str> {
        self.skip_ws();
        let rest = self.rest();
        let first = rest.chars().next()?;
        if !(first.is_ascii_alphabetic() || first == '_') {
            return None;
        }
        let len = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        let start = self.pos;
        self.pos += len;
        Some(&self.text[start..start + len])
    }

    fn comparison(&mut self) -> Result<Comparison, ParseError> {
        self.skip_ws();
        let start = self.pos;
        let signal = match self.identifier() {
            Some(s) if !KEYWORDS.contains(&s) => s.to_string(),
            _ => {
                self.pos = start;
                let found = self.found();
                return Err(self.error_at(start, format!("expected a signal name, found {found}")));
            }
        };
        self.skip_ws();
        let op_at = self.pos;
        let op = self.op().ok_or_else(|| {
            let found = self.found();
            self.error_at(
                op_at,
                format!(
                    "expected an operator (>, >=, <, <=, ==, !=) after {signal:?}, found {found}"
                ),
            )
        })?;
        let value = self.value(op, op_at)?;
        if value.is_baseline() && signal == super::CONSECUTIVE_FAILURES {
            return Err(self.error_at(
                start,
                "consecutive_failures cannot be compared with the baseline",
            ));
        }
        let window = if self.keyword("for") {
            Some(self.duration()?)
        } else {
            None
        };
        Ok(Comparison {
            signal,
            op,
            value,
            window,
        })
    }

    fn op(&mut self) -> Option<Op> {
        // Two-character operators first, so ">=" is not read as ">".
        for (s, op) in [
            (">=", Op::Ge),
            ("<=", Op::Le),
            ("==", Op::Eq),
            ("!=", Op::Ne),
            (">", Op::Gt),
            ("<", Op::Lt),
        ] {
            if self.symbol(s) {
                return Some(op);
            }
        }
        None
    }

    /// A number as written: digits with an optional fraction.
    fn number(&mut self, negative_ok: bool) -> Option<f64> {
        self.skip_ws();
        let rest = self.rest();
        let sign = usize::from(negative_ok && rest.starts_with('-'));
        let digits = rest[sign..]
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len() - sign);
        if digits == 0 {
            return None;
        }
        let mut len = sign + digits;
        if rest[len..].starts_with('.') {
            let frac = rest[len + 1..]
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(rest.len() - len - 1);
            if frac == 0 {
                return None;
            }
            len += 1 + frac;
        }
        let n: f64 = rest[..len].parse().ok()?;
        if !n.is_finite() {
            return None;
        }
        self.pos += len;
        Some(n)
    }

    fn value(&mut self, op: Op, op_at: usize) -> Result<Value, ParseError> {
        self.skip_ws();
        let at = self.pos;
        let needs_order = |p: &Self| {
            p.error_at(
                op_at,
                format!(
                    "{:?} cannot compare with the baseline; use >, >=, < or <=",
                    op.as_str()
                ),
            )
        };
        if self.keyword("baseline") {
            if !matches!(op, Op::Gt | Op::Ge) {
                return Err(self.error_at(
                    op_at,
                    "\"baseline + N%\" needs > or >= (write \"Nx baseline\" for < and <=)",
                ));
            }
            if !self.symbol("+") {
                let found = self.found();
                return Err(self.error_at(
                    self.pos,
                    format!(
                        "expected \"+\" after \"baseline\" (as in baseline + 20%), found {found}"
                    ),
                ));
            }
            let n_at = {
                self.skip_ws();
                self.pos
            };
            let n = self.number(false).ok_or_else(|| {
                self.error_at(
                    n_at,
                    "expected a percentage after \"baseline +\" (as in baseline + 20%)",
                )
            })?;
            if !self.symbol("%") {
                return Err(self.error_at(
                    self.pos,
                    "expected \"%\" after the number (as in baseline + 20%)",
                ));
            }
            return Ok(Value::BaselinePlus(n));
        }
        let n = self.number(true).ok_or_else(|| {
            let found = self.found();
            self.error_at(
                at,
                format!("expected a number after {:?}, found {found}", op.as_str()),
            )
        })?;
        if self.rest().starts_with('%') {
            self.pos += 1;
            return Ok(Value::Percent(n));
        }
        let x_at = self.pos;
        if self.keyword("x") {
            if !matches!(op, Op::Gt | Op::Ge | Op::Lt | Op::Le) {
                return Err(needs_order(self));
            }
            if n <= 0.0 {
                return Err(
                    self.error_at(at, "the factor before \"x baseline\" must be more than 0")
                );
            }
            if !self.keyword("baseline") {
                let found = self.found();
                return Err(self.error_at(
                    self.pos,
                    format!("expected \"baseline\" after \"{n}x\", found {found}"),
                ));
            }
            return Ok(Value::TimesBaseline(n));
        }
        self.pos = x_at;
        // A number glued to a word ("5m", "3xyz") is a typo, not two tokens.
        if self
            .rest()
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            let found = self.peek_token();
            return Err(self.error_at(
                x_at,
                format!("unexpected {found:?} after the number (write N%, Nx baseline or a plain number)"),
            ));
        }
        Ok(Value::Number(n))
    }

    fn duration(&mut self) -> Result<Duration, ParseError> {
        self.skip_ws();
        let at = self.pos;
        let rest = self.rest();
        let len = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '.'))
            .unwrap_or(rest.len());
        if len == 0 {
            let found = self.found();
            return Err(self.error_at(
                at,
                format!("expected a duration after \"for\" (as in for 5m), found {found}"),
            ));
        }
        let d = crate::duration::parse(&rest[..len]).map_err(|e| self.error_at(at, e))?;
        if d.is_zero() {
            return Err(self.error_at(at, "the duration after \"for\" must be more than 0s"));
        }
        self.pos += len;
        Ok(d)
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Number(n) => write!(f, "{n}"),
            Value::Percent(n) => write!(f, "{n}%"),
            Value::TimesBaseline(n) => write!(f, "{n}x baseline"),
            Value::BaselinePlus(n) => write!(f, "baseline + {n}%"),
        }
    }
}

impl fmt::Display for Comparison {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {}", self.signal, self.op.as_str(), self.value)?;
        if let Some(w) = self.window {
            write!(f, " for {}", crate::duration::format(w))?;
        }
        Ok(())
    }
}

impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expr::Cmp(c) => c.fmt(f),
            Expr::All(parts) => {
                for (i, p) in parts.iter().enumerate() {
                    if i > 0 {
                        f.write_str(" and ")?;
                    }
                    match p {
                        Expr::Any(_) => write!(f, "({p})")?,
                        _ => p.fmt(f)?,
                    }
                }
                Ok(())
            }
            Expr::Any(parts) => {
                for (i, p) in parts.iter().enumerate() {
                    if i > 0 {
                        f.write_str(" or ")?;
                    }
                    p.fmt(f)?;
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmp(signal: &str, op: Op, value: Value, window: Option<u64>) -> Expr {
        Expr::Cmp(Comparison {
            signal: signal.into(),
            op,
            value,
            window: window.map(Duration::from_secs),
        })
    }

    #[test]
    fn parses_every_operator() {
        let cases = [
            ("status > 499", Op::Gt),
            ("status >= 500", Op::Ge),
            ("status < 200", Op::Lt),
            ("status <= 199", Op::Le),
            ("status == 503", Op::Eq),
            ("status != 200", Op::Ne),
        ];
        for (text, op) in cases {
            let e = parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            let Expr::Cmp(c) = &e else { panic!("{text}") };
            assert_eq!(c.op, op, "{text}");
            assert_eq!(c.signal, "status");
            assert_eq!(e.to_string(), text);
        }
    }

    #[test]
    fn parses_the_kinds_of_value() {
        let cases = [
            ("memory_percent > 95", Value::Number(95.0), None),
            ("latency_ms > 200.5", Value::Number(200.5), None),
            ("delta > -3", Value::Number(-3.0), None),
            ("error_rate > 5%", Value::Percent(5.0), None),
            ("error_rate > 0.5%", Value::Percent(0.5), None),
            ("p95_ms > 2x baseline", Value::TimesBaseline(2.0), None),
            (
                "p95_ms > 1.5x baseline for 5m",
                Value::TimesBaseline(1.5),
                Some(300),
            ),
            ("p95_ms < 0.5 x baseline", Value::TimesBaseline(0.5), None),
            ("p95_ms > baseline + 20%", Value::BaselinePlus(20.0), None),
            (
                "p95_ms >= baseline+20% for 10m",
                Value::BaselinePlus(20.0),
                Some(600),
            ),
            ("error_rate > 5% for 5m", Value::Percent(5.0), Some(300)),
            (
                "pool_utilization > 90% for 1h30m",
                Value::Percent(90.0),
                Some(5400),
            ),
        ];
        for (text, value, window) in cases {
            let e = parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            let Expr::Cmp(c) = e else { panic!("{text}") };
            assert_eq!(c.value, value, "{text}");
            assert_eq!(c.window, window.map(Duration::from_secs), "{text}");
        }
        assert_eq!(Value::Percent(5.0).as_fraction(), Some(0.05));
    }

    #[test]
    fn and_binds_tighter_than_or() {
        let a = || cmp("a", Op::Gt, Value::Number(1.0), None);
        let b = || cmp("b", Op::Gt, Value::Number(2.0), None);
        let c = || cmp("c", Op::Gt, Value::Number(3.0), None);
        let cases = [
            (
                "a > 1 or b > 2 and c > 3",
                Expr::Any(vec![a(), Expr::All(vec![b(), c()])]),
            ),
            (
                "a > 1 and b > 2 or c > 3",
                Expr::Any(vec![Expr::All(vec![a(), b()]), c()]),
            ),
            (
                "(a > 1 or b > 2) and c > 3",
                Expr::All(vec![Expr::Any(vec![a(), b()]), c()]),
            ),
            (
                "a > 1 and (b > 2 and c > 3)",
                Expr::All(vec![a(), b(), c()]),
            ),
            ("((a > 1))", a()),
            ("a > 1 or b > 2 or c > 3", Expr::Any(vec![a(), b(), c()])),
        ];
        for (text, want) in cases {
            assert_eq!(parse(text), Ok(want), "{text}");
        }
    }

    #[test]
    fn prints_the_canonical_form() {
        let cases = [
            ("error_rate>5%   for 300s", "error_rate > 5% for 5m"),
            ("(a > 1 or b > 2) and c > 3", "(a > 1 or b > 2) and c > 3"),
            ("(a > 1 and b > 2) or c > 3", "a > 1 and b > 2 or c > 3"),
            ("p95_ms > 2 x baseline", "p95_ms > 2x baseline"),
            ("p95_ms > baseline+20%", "p95_ms > baseline + 20%"),
            ("latency_ms > 200.50", "latency_ms > 200.5"),
            (
                "pool_utilization > 90% for 5m and latency_ms > 200",
                "pool_utilization > 90% for 5m and latency_ms > 200",
            ),
        ];
        for (text, want) in cases {
            assert_eq!(parse(text).unwrap().to_string(), want, "{text}");
        }
    }

    #[test]
    fn errors_point_at_the_problem() {
        let cases = [
            ("", 1, "expected a signal name, found the end"),
            ("error_rate", 11, "expected an operator"),
            ("error_rate = 5", 12, "expected an operator"),
            (
                "error_rate > x% for 5m",
                14,
                "expected a number after \">\", found \"x%\"",
            ),
            (
                "error_rate > 5% for",
                20,
                "expected a duration after \"for\"",
            ),
            ("error_rate > 5% for 5", 21, "invalid duration \"5\""),
            ("error_rate > 5% for 0s", 21, "must be more than 0s"),
            ("error_rate > 5m", 15, "unexpected \"m\" after the number"),
            ("p95_ms > 2x", 12, "expected \"baseline\" after \"2x\""),
            ("p95_ms > 0x baseline", 10, "must be more than 0"),
            (
                "p95_ms == 2x baseline",
                8,
                "cannot compare with the baseline",
            ),
            ("p95_ms < baseline + 5%", 8, "needs > or >="),
            (
                "p95_ms > baseline * 2",
                19,
                "expected \"+\" after \"baseline\"",
            ),
            ("p95_ms > baseline + 5", 22, "expected \"%\""),
            ("a > 1 and", 10, "expected a signal name, found the end"),
            (
                "a > 1 and or b > 2",
                11,
                "expected a signal name, found \"or\"",
            ),
            (
                "(a > 1 or b > 2",
                16,
                "expected \")\" to close the \"(\" at column 1",
            ),
            ("a > 1 b > 2", 7, "expected \"and\", \"or\" or the end"),
            (
                "a > 1)",
                6,
                "expected \"and\", \"or\" or the end of the expression, found \")\"",
            ),
            ("9lives > 1", 1, "expected a signal name"),
            ("é > 1", 1, "expected a signal name"),
            (
                "consecutive_failures > 2x baseline",
                1,
                "cannot be compared with the baseline",
            ),
            (
                "latency_ms > 1 and é > 1",
                20,
                "expected a signal name, found \"é\"",
            ),
        ];
        for (text, column, message) in cases {
            let e = parse(text).expect_err(text);
            assert!(
                e.message.contains(message),
                "{text:?}: got {:?}, want {message:?}",
                e.message
            );
            assert_eq!(e.column, column, "{text:?}: {e}");
        }
        assert_eq!(
            parse("error_rate > x% for 5m").unwrap_err().to_string(),
            "expected a number after \">\", found \"x%\" at column 14"
        );
    }

    #[test]
    fn deep_parentheses_are_an_error_not_a_stack_overflow() {
        // Found by the `rules` fuzz target: 2,000 "(" overflowed the stack.
        let deep = format!("{}a > 1{}", "(".repeat(100_000), ")".repeat(100_000));
        let err = parse(&deep).unwrap_err().to_string();
        assert!(err.contains("nested more than 32 deep"), "{err}");
        let ok = format!("{}a > 1{}", "(".repeat(32), ")".repeat(32));
        assert_eq!(parse(&ok), parse("a > 1"));
    }

    #[test]
    fn a_window_finer_than_a_millisecond_is_an_error_not_a_silent_rounding() {
        // Found by the `rules` fuzz target: it used to parse, and print back
        // as "x == 0 for 248s", a different rule.
        let err = parse("x == 0 for 248.0005s").unwrap_err().to_string();
        assert!(err.contains("whole milliseconds"), "{err}");
        let e = parse("x == 0 for 248.5s").unwrap();
        assert_eq!(parse(&e.to_string()), Ok(e));
    }

    #[test]
    fn keywords_are_whole_words() {
        // A signal may start with a keyword's letters.
        let e = parse("order_count > 1 and forks > 2 or baseline_ms > 3").unwrap();
        assert_eq!(
            e.to_string(),
            "order_count > 1 and forks > 2 or baseline_ms > 3"
        );
        assert_eq!(e.comparisons().count(), 3);
    }
}

#[cfg(test)]
mod span_tests {
    use std::time::Duration;

    use super::parse;
    use crate::rules::Settings;

    #[test]
    fn the_span_needed_is_the_longest_window() {
        let s = Settings::default();
        let cases = [
            ("consecutive_failures >= 3", 0, false),
            (
                "error_rate > 5% for 5m and latency_ms > 200 for 10m",
                600,
                false,
            ),
            ("p95_ms > 2x baseline", 300, true),
            ("p95_ms > 2x baseline for 15m or status >= 500", 900, true),
        ];
        for (text, secs, baseline) in cases {
            let e = parse(text).unwrap();
            assert_eq!(e.span_needed(&s), Duration::from_secs(secs), "{text}");
            assert_eq!(e.uses_baseline(), baseline, "{text}");
        }
    }
}
