//! `Config::parse` on any text: it returns a configuration or a list of
//! problems, and never panics. Every `${VAR}` is set, so interpolation runs.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match backstop::config::Config::parse(text, |name| {
        (name.len() % 2 == 0).then(|| format!("value-of-{name}"))
    }) {
        Ok(config) => {
            // A valid configuration builds every probe without the network.
            for p in &config.probes {
                let _ = p.build();
            }
        }
        Err(errors) => {
            assert!(!errors.0.is_empty(), "an error without a problem");
            let _ = errors.to_string();
        }
    }
});
