#![no_main]
// See megafsd::fuzz_targets::commit.
libfuzzer_sys::fuzz_target!(|data: &[u8]| megafsd::fuzz_targets::commit(data));
