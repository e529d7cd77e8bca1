//! The operator's TOML config: any text is a config or an error naming what
//! is wrong, never a panic (validation included).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    if let Ok(c) = toml::from_str::<nexuspipe::config::Config>(text) {
        let _ = c.validate();
    }
});
