//! The JSON-pointer capture of a `scenario` step and the filling-in of the
//! captured value, on any body, pointer and template: a value or an error,
//! never a panic, and a captured string is filled in as it is.
//!
//! The input is `pointer \n template \n body`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::json;

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(3, |&c| c == b'\n');
    let (Some(pointer), Some(template), Some(body)) = (parts.next(), parts.next(), parts.next())
    else {
        return;
    };
    let (Ok(pointer), Ok(template)) = (std::str::from_utf8(pointer), std::str::from_utf8(template))
    else {
        return;
    };
    let body_template = json!({ "a": "{{value}}", "b": ["x {{ value }} y", 1, null] });
    if let Ok((text, doc)) =
        backstop_probes::scenario::capture_and_render(body, pointer, template, &body_template)
    {
        let whole: serde_json::Value = serde_json::from_slice(body).expect("captured from JSON");
        let value = whole.pointer(pointer).expect("captured at the pointer");
        assert_eq!(&doc["a"], value, "a sole placeholder keeps the JSON value");
        if template == "{{value}}" {
            if let Some(s) = value.as_str() {
                assert_eq!(text, s);
            }
        }
    }
});
