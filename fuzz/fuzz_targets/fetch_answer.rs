#![no_main]
// See megafsd::fuzz_targets::fetch_answer.
libfuzzer_sys::fuzz_target!(|data: &[u8]| megafsd::fuzz_targets::fetch_answer(data));
