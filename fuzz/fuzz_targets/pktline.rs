#![no_main]
// See megafsd::fuzz_targets::pktline.
libfuzzer_sys::fuzz_target!(|data: &[u8]| megafsd::fuzz_targets::pktline(data));
