#![no_main]
//! The node configuration file from arbitrary text.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    if let Ok(s) = std::str::from_utf8(input)
        && let Ok(cfg) = serde_yaml::from_str::<strait_node::config::NodeConfig>(s)
    {
        let _ = cfg.validate();
    }
});
