//! The rule-expression parser on any text: it never panics, and what it
//! accepts prints (`Display`) to a canonical form that parses back to the
//! same expression, which prints the same again.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(expr) = backstop_judge::rules::parse(text) {
        let shown = expr.to_string();
        let again = backstop_judge::rules::parse(&shown)
            .unwrap_or_else(|e| panic!("{text:?} printed as {shown:?}, which does not parse: {e}"));
        assert_eq!(again, expr, "{text:?} printed as {shown:?}");
        assert_eq!(again.to_string(), shown);
    }
});
