#![no_main]
// See megafsd::fuzz_targets::mega_json.
libfuzzer_sys::fuzz_target!(|data: &[u8]| megafsd::fuzz_targets::mega_json(data));
